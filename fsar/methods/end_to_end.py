"""A frames or patches method trained end to end: the backbone stage, then the method, as one pixels method.

    encode(pixels (..., T, 3, S, S)) = method.encode(stage(pixels))      per video, as the method's own encode
    head(...)                        = method.head(...)                  unchanged

The method is built exactly as on cached features (same knobs, same configuration) for the stage's view and
width, so a cached run's weights load into it (``init_from``), and everything it declares (text, clip length,
masks, pair tables) is declared by the composition too.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fsar.backbones.stage import BackboneStage
from fsar.data.transforms import FramePreprocess
from fsar.methods.base import Encoding, FewShotMethod, HeadOutput, MaskRequest, Supervision


class EndToEnd(FewShotMethod):
    """``stage`` (a ``BackboneStage``) composed with ``method`` (a frames or patches method); input: pixels."""

    input_kind = "pixels"

    def __init__(self, stage: BackboneStage, method: FewShotMethod) -> None:
        super().__init__()
        self.stage = stage
        self.method = method
        self.config = method.config
        self.configuration = method.configuration
        self.method_name = method.method_name
        self.needs_text = method.needs_text
        # The evaluator's fast paths read these declarations; the composition keeps the method's.
        self.pair_table = method.pair_table
        self.one_shot_pair_table = method.one_shot_pair_table
        self.pair_table_row = method.pair_table_row
        self.pair_table_support_reads = method.pair_table_support_reads
        self.pair_table_reads = getattr(method, "pair_table_reads", ())

    @property
    def preprocess(self) -> FramePreprocess:
        """The pixel pipeline inputs must have been through (the stage encoder's size, mean and std)."""
        return self.stage.preprocess

    @property
    def uses_text(self) -> bool:
        return self.method.uses_text

    @property
    def clip_length(self) -> int | None:
        return self.method.clip_length

    @property
    def mask_request(self) -> MaskRequest | None:
        return self.method.mask_request

    def encode(self, videos: Tensor) -> Encoding:
        return self.method.encode(self.stage(videos))

    def encode_for_scoring(self, videos: Tensor) -> Encoding:
        return self.method.encode_for_scoring(self.stage(videos))

    def head(self, support: Encoding, support_labels: Tensor, query: Encoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        return self.method.head(support, support_labels, query, way, class_text=class_text, supervision=supervision)

    def pair_distance(self, support: Encoding, query: Encoding) -> Tensor:
        return self.method.pair_distance(support, query)  # type: ignore[attr-defined]

    def logits_from_pairs(self, distance: Tensor, support: Encoding, support_labels: Tensor, query: Encoding,
                          way: int, *, class_text: Tensor | None = None) -> Tensor:
        return self.method.logits_from_pairs(distance, support, support_labels, query, way,  # type: ignore[attr-defined]
                                             class_text=class_text)

    def auxiliary_losses(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        return self.method.auxiliary_losses(*args, **kwargs)  # type: ignore[attr-defined]
