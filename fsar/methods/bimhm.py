"""Bi-MHM (bidirectional mean Hausdorff metric, as used in HyRSM): nearest-frame matching both ways.

Each query frame is matched to its nearest support frame (1 - cos) and the matches are averaged over
the query frames; the same from the support frames to the query; the two are summed. Unlike OTAM the
matching ignores temporal order. HyRSM sums over frames; the mean used here differs by the factor T
only, which the temperature absorbs, and keeps the distance's scale independent of T.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fsar.methods.parts import FrameAlignmentMethod, check_metric_knobs
from fsar.methods.registry import register_method
from fsar.ops.frame_distance import mean_hausdorff


@dataclass
class BiMHMConfig:
    """Knobs of Bi-MHM."""

    temperature: float = 0.1  # logits = -distance / temperature; the distance lies in [0, 4]
    proj_dim: int = 0  # 0: features as stored; > 0: a learned Linear(feature_dim, proj_dim) per frame
    temporal_centre: bool = False  # subtract each video's mean frame first: match motion, not static appearance
    learn_scale: bool = False  # train the logit scale 1/temperature (it starts at 1/temperature)

    def __post_init__(self) -> None:
        check_metric_knobs("bimhm", temperature=self.temperature, proj_dim=self.proj_dim)


@register_method(
    "bimhm", config=BiMHMConfig, input_kind="frames",
    description="Bi-MHM: bidirectional mean nearest-frame cosine distance",
)
class BiMHM(FrameAlignmentMethod):
    """Order-free frame matching metric: mean nearest-frame distance, query→support plus support→query."""

    def alignment_cost(self, dist: Tensor) -> Tensor:
        """Bidirectional mean nearest-frame distance: ``(B, N_q, N_s, L, M)`` → ``(B, N_q, N_s)``."""
        return mean_hausdorff(dist)
