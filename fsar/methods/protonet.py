"""ProtoNet / TSN baseline: a video is the temporal mean of its frame features, a class the mean of its shots."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fsar.methods.base import FewShotMethod, FrameEncoding, HeadOutput, Supervision
from fsar.methods.parts import LogitScale, check_metric_knobs, class_prototypes, make_projection
from fsar.methods.registry import register_method
from fsar.ops.frame_distance import cosine_distance


@dataclass
class ProtoNetConfig:
    """Knobs of the ProtoNet/TSN baseline."""

    temperature: float = 0.1  # logits = -(1 - cos) / temperature; cosine needs a small one to be trainable
    proj_dim: int = 0  # 0: features as stored; > 0: a learned Linear(feature_dim, proj_dim) per frame
    learn_scale: bool = False  # train the logit scale 1/temperature (it starts at 1/temperature)

    def __post_init__(self) -> None:
        check_metric_knobs("protonet", temperature=self.temperature, proj_dim=self.proj_dim)


@register_method(
    "protonet", config=ProtoNetConfig, input_kind="frames",
    description="ProtoNet/TSN: temporal mean pooling, cosine to the class mean",
)
class ProtoNet(FewShotMethod):
    """Order-blind baseline: cosine distance between mean-pooled query and class prototypes."""

    def __init__(self, config: ProtoNetConfig, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.proj = make_projection(feature_dim, config.proj_dim)
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)

    def encode(self, videos: Tensor) -> FrameEncoding:
        """Temporal mean, then the projection: ``(..., T, D)`` → frames ``(..., 1, D')``."""
        # The projection is affine, so projecting the temporal mean equals averaging projected frames, T× cheaper.
        return FrameEncoding(self.proj(videos.mean(dim=-2, keepdim=True)))

    def head(self, support: FrameEncoding, support_labels: Tensor, query: FrameEncoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        """Cosine distance of each query to each class prototype (the mean of its support videos) → logits."""
        prototypes = class_prototypes(support.frames[:, :, 0], support_labels, way)  # (B, way, D')
        return HeadOutput(self.scale(cosine_distance(query.frames[:, :, 0], prototypes)))
