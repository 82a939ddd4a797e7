"""A trained run ready to label new videos: its method, the encoder its store was embedded with, a support set
and a threshold.

``Predictor`` encodes clips exactly as ``fsar embed`` did for the run's store (same backbone, weights, frames
and patch grid, read in the run's view), scores them against the encoded supports and turns the scores into
prediction rows. It needs no Ray: ``fsar predict`` runs one per worker, ``fsar serve`` one per replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fsar.config import ConfigError
from fsar.prediction.open_set import OpenSetScore, open_set_score
from fsar.prediction.support_set import SupportClass, class_logits, encode_supports

TEXT_TEMPLATE = "a video of {}"  # fsar embed's default prompt: what text methods were trained with


@dataclass(frozen=True)
class EncoderSettings:
    """What produced the run's features (from its store's metadata): the encoder predictions must use."""

    backbone: str
    pretrained: str | None
    init_seed: int | None
    frames: int
    patch_grid: int
    view: str  # pooled, grid or patches: what the method reads
    as_grid: bool  # the pooled view as a 1×1 grid (a patch method that trained on pooled features)

    @classmethod
    def of_run(cls, payload: dict[str, Any], where: str, *, input_kind: str) -> EncoderSettings:
        meta = payload.get("store_meta")
        if meta is None:
            raise ConfigError(f"run {where} trained {payload['method']} end to end on decoded frames; fsar predict "
                              "takes runs trained on a feature store (fsar train --store ...), or such a run "
                              "warm-started from this one")
        view = payload.get("resolved_view") or "pooled"
        return cls(backbone=meta["backbone"], pretrained=meta["pretrained"], init_seed=meta.get("init_seed"),
                   frames=int(meta["frames"]), patch_grid=int(meta["patch_grid"]), view=view,
                   as_grid=view == "pooled" and input_kind == "patches")

    def describe(self) -> str:
        weights = self.pretrained or f"random weights seeded {self.init_seed}"
        grid = f", patch grid {self.patch_grid}" if self.patch_grid else ""
        return f"{self.backbone} ({weights}), {self.frames} frames{grid}"

    def differences(self, meta: Any) -> list[str]:
        """How a store's metadata (``StoreMeta``) differs from these settings, in words; empty when it matches."""
        out = []
        if (meta.backbone, meta.pretrained) != (self.backbone, self.pretrained):
            out.append(f"backbone {meta.backbone}/{meta.pretrained} instead of {self.backbone}/{self.pretrained}")
        elif self.pretrained is None and meta.init_seed != self.init_seed:
            out.append(f"random weights seeded {meta.init_seed} instead of {self.init_seed}")
        if meta.frames != self.frames:
            out.append(f"{meta.frames} frames per video instead of {self.frames}")
        if self.view != "pooled" and meta.patch_grid != self.patch_grid:
            out.append(f"patch grid {meta.patch_grid} instead of {self.patch_grid}")
        return out


def in_view(frames: np.ndarray, patches: np.ndarray | None, settings: EncoderSettings) -> np.ndarray:
    """Encoder outputs (frames ``(N, T, D)``, patches ``(N, T, g, g, D)``) in the run's view: ``(N, T, D)`` pooled,
    ``(N, T, g·g·D)`` grid, ``(N, T, g, g, D)`` patches, or ``(N, T, 1, 1, D)`` pooled as a grid."""
    if settings.view == "pooled":
        return frames[:, :, None, None, :] if settings.as_grid else frames
    if patches is None:
        raise ConfigError(f"the run reads the {settings.view} view but no patch grid was encoded")
    return patches.reshape(*patches.shape[:2], -1) if settings.view == "grid" else patches


@dataclass
class Prediction:
    """One query (or one window of it): its top classes with scores, and whether it is none of them."""

    video_id: str
    top_classes: list[str]
    top_scores: list[float]
    unknown: bool
    start_s: float | None = None
    end_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"video_id": self.video_id, "label": "unknown" if self.unknown else self.top_classes[0],
                "top_classes": self.top_classes, "top_scores": self.top_scores, "unknown": self.unknown,
                "start_s": self.start_s, "end_s": self.end_s, **self.extra}


class Predictor:
    """A run's method with an encoded support set: ``predict(features)`` → scores; ``rows`` → predictions.

    ``device``: where the method, the supports and (when ``encode`` is used) the encoder live."""

    def __init__(self, method: torch.nn.Module, settings: EncoderSettings, *, threshold: float, top_k: int = 3,
                 score: OpenSetScore = "max_logit", device: torch.device | str = "cpu") -> None:
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        self.method = method.to(device).eval()
        self.settings, self.threshold, self.top_k, self.score = settings, float(threshold), top_k, score
        self.device = torch.device(device)
        self._backbone: Any = None
        self._supports: Any = None
        self._class_text: torch.Tensor | None = None

    @classmethod
    def from_run(cls, run: Any, threshold: float, top_k: int, device: torch.device | str, *,
                 score: OpenSetScore = "max_logit") -> tuple[Predictor, dict[str, Any]]:
        """The run's method (its best checkpoint) and encoder settings, with no supports yet; and its payload."""
        from fsar.training.checkpoint import load_checkpoint

        method, payload = load_checkpoint(run)
        settings = EncoderSettings.of_run(payload, str(run), input_kind=method.input_kind)
        return cls(method, settings, threshold=threshold, top_k=top_k, score=score, device=device), payload

    @property
    def class_names(self) -> list[str]:
        return [] if self._supports is None else list(self._supports.names)

    def set_supports(self, classes: Sequence[SupportClass]) -> None:
        """Encode the support clips once (and, for a text method, the class names with the encoder's text tower)."""
        for c in classes:
            if c.features.shape[1] != self.settings.frames:
                raise ConfigError(f"class {c.name}: its clips hold {c.features.shape[1]} frames but the run reads "
                                  f"{self.settings.frames}: encode them again with this run")
        self._supports = encode_supports(self.method, list(classes), self.device)
        if getattr(self.method, "uses_text", False):
            backbone = self.backbone()
            if not getattr(backbone, "has_text", False):
                raise ConfigError(f"{self.settings.backbone} has no text tower for the class names this method reads")
            with torch.no_grad():
                self._class_text = backbone.encode_text(self.class_names, template=TEXT_TEMPLATE).float()

    def clear_supports(self) -> None:
        """No classes: scoring is refused until ``set_supports``."""
        self._supports, self._class_text = None, None

    def backbone(self) -> Any:
        """The run's encoder, built on first use (fsar embed's own builder, so features match the store's)."""
        if self._backbone is None:
            from fsar.embedding import EmbedConfig, load_backbone

            s = self.settings
            config = EmbedConfig(manifest="", out="", backbone=s.backbone, pretrained=s.pretrained or "none",
                                 frames=s.frames, patch_grid=s.patch_grid, init_seed=s.init_seed or 0)
            self._backbone = load_backbone(config, device=str(self.device))
        return self._backbone

    def decode(self, video: str | bytes) -> np.ndarray:
        """One video (a path, a URI, or its bytes) → the centre squares of the run's frames ``(T, s, s, 3)`` uint8,
        as ``fsar embed`` decodes them. Raises ``VideoDecodeError`` naming the video."""
        from fsar.data.transforms import centre_square
        from fsar.data.video import load_clip

        return centre_square(load_clip(video, num_segments=self.settings.frames).frames)

    def encode(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 centre squares ``(T, s, s, 3)`` per clip (``decode_record``'s) → features in the run's view, fp16."""
        from fsar.backbones.encode import encode_clips

        frames, patches = encode_clips(self.backbone(), list(clips), patch_grid=self.settings.patch_grid
                                       if self.settings.view != "pooled" else 0)
        return in_view(frames, patches, self.settings)

    def logits(self, features: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The method's logits ``(N, C)`` for features ``(N, T, ...)`` in the run's view."""
        if self._supports is None:
            raise ConfigError("no support set: add classes first")
        queries = torch.as_tensor(features).to(self.device)
        return class_logits(self.method, self._supports, queries, class_text=self._class_text)

    def predictions(self, video_ids: Sequence[str], logits: torch.Tensor, *,
                    spans: Sequence[tuple[float, float] | None] | None = None) -> list[Prediction]:
        """Top-k classes per query with their softmax probabilities; ``unknown`` when the open-set score (the best
        logit, or the best probability) is below the threshold."""
        probabilities = torch.softmax(logits, dim=-1)
        k = min(self.top_k, logits.shape[1])
        top_scores, top = probabilities.topk(k, dim=-1)
        match = open_set_score(logits, self.score).tolist()
        names = self.class_names
        out = []
        for i, vid in enumerate(video_ids):
            span = spans[i] if spans is not None else None
            prediction = Prediction(vid, [names[j] for j in top[i].tolist()], [float(v) for v in top_scores[i].cpu()],
                                    match[i] < self.threshold, *(span or (None, None)))
            prediction.extra["match_score"] = float(match[i])
            out.append(prediction)
        return out
