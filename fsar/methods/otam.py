"""OTAM (Cao et al., CVPR 2020): ordered temporal alignment of frames by soft-DTW with free start and end.

Distance of a query to a support video: soft-DTW cost over the frame-distance matrix (1 - cos) with the
support axis padded so the alignment may start and end anywhere along it (``fsar.ops.otam_cumulative``);
with ``bidirectional`` the cost with the roles swapped is added, as most FSAR codebases do. A class's
distance is the mean over its support videos; logits = -distance / temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fsar.config import ConfigError
from fsar.methods.parts import FrameAlignmentMethod, check_metric_knobs
from fsar.methods.registry import register_method
from fsar.ops.soft_dtw import otam_distance


@dataclass
class OTAMConfig:
    """Knobs of OTAM."""

    gamma: float = 0.1  # soft-min temperature of the soft-DTW; 0 = hard minimum-cost path
    bidirectional: bool = True  # add the support→query alignment cost to the query→support one
    temperature: float = 1.0  # logits = -distance / temperature (1.0: logits = -distance, the usual choice)
    proj_dim: int = 0  # 0: features as stored; > 0: a learned Linear(feature_dim, proj_dim) per frame
    temporal_centre: bool = False  # subtract each video's mean frame first: match motion, not static appearance
    learn_scale: bool = False  # train the logit scale 1/temperature (it starts at 1/temperature)

    def __post_init__(self) -> None:
        if self.gamma < 0:
            raise ConfigError(f"otam: gamma must be >= 0 (0 = hard DTW), got {self.gamma}")
        check_metric_knobs("otam", temperature=self.temperature, proj_dim=self.proj_dim)


@register_method(
    "otam", config=OTAMConfig, input_kind="frames",
    description="OTAM: soft-DTW frame alignment with free start/end, both directions",
)
class OTAM(FrameAlignmentMethod):
    """Temporal-order-aware metric: soft-DTW alignment cost between query and support frame sequences."""

    def alignment_cost(self, dist: Tensor) -> Tensor:
        """OTAM cost of every (query, support) pair: ``(B, N_q, N_s, L, M)`` frame distances → ``(B, N_q, N_s)``."""
        return otam_distance(dist, self.config.gamma, bidirectional=self.config.bidirectional)
