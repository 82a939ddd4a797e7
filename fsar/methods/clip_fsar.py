"""CLIP-FSAR (Wang et al., IJCV 2023) on cached CLIP features, registered as ``clip_fsar``.

One temporal transformer layer (``TemporalTransformer``) adapts the frame embeddings of every video:

- a **query**'s frames go through it alone (no text: query labels never reach the logits), once per video in
  ``encode``;
- a **support** video's frames go through it with one extra token, the CLIP text embedding of its class name,
  appended after the frames; the frame outputs are kept and the text token's own output is dropped (as in the
  released code). This runs in ``head``: the token depends on the support's episode label.

Query and (text-modulated) support frames are then matched by bidirectional OTAM (soft-DTW over 1 − cos
with free start and end), distances are averaged over each class's support videos, logits = −distance / T.

Training adds the video–text cross-entropy ``text_ce``: each video's mean adapted frame (the text-free
output, for supports and queries alike) against the episode's class-name embeddings, cosine times a learned
scale, weighted by ``text_loss_weight``. The released code compares the mean of the *fine-tuned backbone's*
frames with every training class's text; the backbone is frozen here, so the text-free transformer output is
what can learn from it, and the store provides the episode's classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.methods.base import FewShotMethod, HeadOutput, Supervision
from fsar.methods.parts import LogitScale, class_average, class_prototypes
from fsar.methods.registry import register_method
from fsar.ops.frame_distance import pairwise_frame_distance
from fsar.ops.soft_dtw import otam_distance


class ClipFSAREncoding(NamedTuple):
    """What CLIP-FSAR keeps of one video (leading axes ``(...)`` shared)."""

    frames: Tensor  # (..., T, D) the stored frame embeddings: a support's input to the text-conditioned pass
    adapted: Tensor  # (..., T, D) the transformer's output without text: what a query is matched with


@dataclass
class ClipFSARConfig:
    """Knobs of CLIP-FSAR (defaults: the released code's)."""

    heads: int = 8  # attention heads of the temporal transformer; each head is feature_dim // heads wide
    mlp_dim: int = 2048  # hidden width of the transformer's feed-forward block
    attn_dropout: float = 0.2  # dropout on the attention output (training only)
    ffn_dropout: float = 0.05  # dropout inside the feed-forward block (training only)
    gamma: float = 0.5  # OTAM soft-min temperature (the released OTAM's 0.5)
    bidirectional: bool = True  # add the support→query alignment cost to the query→support one
    merge_support: bool = False  # average each class's support frames before the text-conditioned pass, one prototype per class (the released 5-shot configs' MERGE_BEFORE); False: each support video with its class token, then the class mean of the OTAM distances (identical at 1-shot)
    text_loss_weight: float = 1.5  # weight of the video-text cross-entropy; released: 3.0 SSv2, 1.5 Kinetics and UCF101, 1.2 HMDB51 (1.5: the middle of that range); 0 = off
    text_scale: float = 1.0  # starting value of the learned scale of the video-text cosine logits
    temperature: float = 1.0  # logits = -distance / temperature (released: logits = -distance)
    learn_scale: bool = False  # train the logit scale 1/temperature (it starts at 1/temperature)

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"clip_fsar: {what}")

        need(self.heads >= 1, f"heads must be >= 1, got {self.heads}")
        need(self.mlp_dim >= 1, f"mlp_dim must be >= 1, got {self.mlp_dim}")
        for name in ("attn_dropout", "ffn_dropout"):
            need(0.0 <= getattr(self, name) < 1.0, f"{name} must lie in [0, 1), got {getattr(self, name)}")
        need(self.gamma >= 0, f"gamma must be >= 0 (0 = hard DTW), got {self.gamma}")
        need(self.text_loss_weight >= 0, f"text_loss_weight must be >= 0 (0 = no video-text loss), got {self.text_loss_weight}")
        need(self.text_scale > 0, f"text_scale must be > 0, got {self.text_scale}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")


class TemporalTransformer(nn.Module):
    """The released code's one-layer temporal transformer: ``x + Attn(LN(x))``, then ``y + FFN(y)``.

    The LayerNorm sits before the attention only (the released feed-forward has none). Queries are the frames;
    keys and values are the frames plus any ``extra`` tokens (a support's class text), which are normalised and
    projected with the same weights but not returned. No position code: the released model has none.
    """

    def __init__(self, dim: int, *, heads: int, mlp_dim: int, attn_dropout: float, ffn_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = max(1, dim // heads)  # the released width; the output projection maps back to dim
        inner = heads * self.head_dim
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(attn_dropout))
        self.ffn = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(ffn_dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(ffn_dropout))

    def forward(self, frames: Tensor, extra: Tensor | None = None) -> Tensor:
        """``frames (..., T, D)`` and ``extra (..., X, D)`` key/value-only tokens → adapted frames ``(..., T, D)``."""
        normed = self.norm(frames)
        tokens = normed if extra is None else torch.cat([normed, self.norm(extra)], dim=-2)
        q = self._split(self.to_q(normed))
        k, v = (self._split(t) for t in self.to_kv(tokens).chunk(2, dim=-1))
        # Fused softmax attention over the T (+ X) keys; no dropout on the weights (the released code has none).
        attended = nn.functional.scaled_dot_product_attention(q, k, v).transpose(-2, -3).flatten(-2)
        x = frames + self.to_out(attended)
        return x + self.ffn(x)

    def _split(self, x: Tensor) -> Tensor:
        """``(..., N, H·d)`` → ``(..., H, N, d)``."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(-2, -3)


@register_method(
    "clip_fsar", config=ClipFSARConfig, input_kind="frames", needs_text=True,
    description="CLIP-FSAR: class-name text token modulates support frames in a temporal transformer; OTAM matching",
)
class ClipFSAR(FewShotMethod):
    """Text-modulated support frames and text-free query frames, matched by bidirectional OTAM."""

    def __init__(self, config: ClipFSARConfig, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.transformer = TemporalTransformer(feature_dim, heads=config.heads, mlp_dim=config.mlp_dim,
                                               attn_dropout=config.attn_dropout, ffn_dropout=config.ffn_dropout)
        # CLIP's image and text towers share one embedding space, so the text token enters as it is; a store
        # whose text width differs gets a learned map into the frame space (trained by both uses of the text).
        same_space = text_dim is None or text_dim == feature_dim
        self.text_projection = nn.Identity() if same_space else nn.Linear(text_dim, feature_dim)
        self.feature_dim = feature_dim
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)
        # Built only when the loss is on: a scale no loss reads would get no gradient (which DDP refuses).
        self.text_log_scale = (nn.Parameter(torch.tensor(config.text_scale).log())
                               if config.text_loss_weight > 0 else None)

    def encode(self, videos: Tensor) -> ClipFSAREncoding:
        """``(..., T, D)`` → the stored frames and their text-free adaptation (a query's side, per video)."""
        return ClipFSAREncoding(videos, self.transformer(videos))

    def head(self, support: ClipFSAREncoding, support_labels: Tensor, query: ClipFSAREncoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        """Encodings ``(B, N_s, T, D)`` / ``(B, N_q, T, D)``, labels ``(B, N_s)``, class text ``(B, way, E)`` →
        logits ``(B, N_q, way)``, and ``text_ce`` when training labels are given."""
        text = self._text(class_text, way)
        frames, labels = support.frames, support_labels
        if self.config.merge_support:  # one prototype sequence per class, label c at position c
            frames = class_prototypes(frames, labels, way)
            labels = torch.arange(way, device=labels.device).expand(labels.shape[0], way)
        # Each support sequence's class-name token: (B, N, 1, D), gathered in label order.
        token = text.gather(1, labels[..., None].expand(-1, -1, text.shape[-1]).long())[..., None, :]
        modulated = self.transformer(frames, token)
        distance = otam_distance(pairwise_frame_distance(query.adapted, modulated), self.config.gamma,
                                 bidirectional=self.config.bidirectional)  # (B, N_q, N)
        logits = self.scale(class_average(distance, labels, way))
        if supervision is None or self.text_log_scale is None:
            return HeadOutput(logits)
        return HeadOutput(logits, {"text_ce": self._text_loss(support, support_labels, query, text, supervision)})

    def _text(self, class_text: Tensor | None, way: int) -> Tensor:
        """Class-name embeddings ``(B, way, E)`` in the frame space ``(B, way, D)``; a clear error without them."""
        if class_text is None:
            raise ValueError(
                "clip_fsar needs class_text, each episode class's name embedding (B, way, E): embed the videos "
                "with a CLIP backbone that has a text tower and class names (fsar embed writes class_text.parquet)"
            )
        projected = self.text_projection(class_text.to(self.transformer.norm.weight.dtype))
        if projected.shape[-1] != self.feature_dim:
            raise ValueError(f"clip_fsar: class_text has width {class_text.shape[-1]} but the method was built for "
                             f"text_dim={self.feature_dim}: build it with the store's text_dim")
        return projected

    def _text_loss(self, support: ClipFSAREncoding, support_labels: Tensor, query: ClipFSAREncoding, text: Tensor,
                   supervision: Supervision) -> Tensor:
        """Weighted cross-entropy of each video's mean adapted frame against the episode's class texts (cosine
        times the learned scale): supports, and queries when their training labels are given."""
        videos, labels = support.adapted, support_labels
        if supervision.query_labels is not None:
            videos = torch.cat([videos, query.adapted], dim=1)
            labels = torch.cat([labels, supervision.query_labels.to(labels.device)], dim=1)
        embedding = nn.functional.normalize(videos.mean(dim=-2), dim=-1)
        cosine = embedding @ nn.functional.normalize(text, dim=-1).transpose(-1, -2)  # (B, N, way)
        logits = cosine * self.text_log_scale.exp()
        loss = nn.functional.cross_entropy(logits.reshape(-1, text.shape[1]), labels.reshape(-1).long())
        return self.config.text_loss_weight * loss
