"""TRX (Perrett et al., CVPR 2021): temporal-relational cross-transformers over frame tuples.

Per video (``encode``): a sinusoidal position code scaled by ``pe_scale`` is added to the frame features,
then dropout; for each cardinality k in ``temporal_set`` every ordered k-frame combination (``itertools``
order: (0, 1), (0, 2), ...) is concatenated and mapped by that cardinality's key and value linears, keys
followed by a LayerNorm. Values get none: the released code builds a value LayerNorm but never applies it
[code], so none is built here (it would be a parameter without gradient, which DDP refuses).

Per episode (``head``): each query tuple attends over every support tuple of a class, all its shots
together (scaled dot product, ``1/√d``, softmax over that class's tuples), which gives a query-specific
prototype per class and tuple; distance = squared distance between the query's tuple values and that
prototype, summed over tuples and divided by the tuple count; logits = −distance averaged over the
cardinalities, divided by ``temperature``.

The tuples depend on the frame count T while the linears depend only on k·D, so tuple indices are built
lazily per T (cached) rather than from a ``num_frames`` knob: one trained model reads any clip length with
T ≥ max(temporal_set), and no knob has to be kept equal to the store's frame count.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.methods.base import FewShotMethod, HeadOutput, Supervision
from fsar.methods.parts import LogitScale, check_metric_knobs, make_projection, sinusoid_code
from fsar.methods.registry import register_method
from fsar.ops.precision import full_precision


@dataclass
class TRXConfig:
    """Knobs of TRX; [code] marks the released defaults."""

    temporal_set: list[int] = field(default_factory=lambda: [2, 3])  # tuple cardinalities: pairs and triples [code]
    trans_linear_out_dim: int = 1152  # width of every tuple key and value [code]
    dropout: float = 0.1  # dropout on the position-coded frames, training only [code]
    pe_scale: float = 0.1  # amplitude of the sinusoidal position code [code]
    proj_dim: int = 0  # 0: features as stored [code]; > 0: a learned Linear(feature_dim, proj_dim) per frame first
    temperature: float = 1.0  # logits = -distance / temperature (1.0: the released logits)
    learn_scale: bool = False  # train the logit scale 1/temperature (it starts at 1/temperature)

    def __post_init__(self) -> None:
        ks = self.temporal_set
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise ConfigError(f"trx: temporal_set must be a non-empty list of tuple sizes >= 1 (e.g. [2, 3]), got {ks}")
        if len(set(ks)) != len(ks):
            raise ConfigError(f"trx: temporal_set must not repeat a cardinality, got {ks}")
        if self.trans_linear_out_dim < 1:
            raise ConfigError(f"trx: trans_linear_out_dim must be >= 1, got {self.trans_linear_out_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"trx: dropout must lie in [0, 1), got {self.dropout}")
        if not self.pe_scale >= 0.0:
            raise ConfigError(f"trx: pe_scale must be >= 0 (0 = no position code), got {self.pe_scale}")
        check_metric_knobs("trx", temperature=self.temperature, proj_dim=self.proj_dim)


class TRXEncoding(NamedTuple):
    """Tuple keys and values of every cardinality, concatenated along the tuple axis in ``temporal_set`` order
    (C(T, k) tuples for cardinality k; ``tuple_counts`` splits them again)."""

    keys: Tensor  # (..., ΣC(T, k), d) LayerNorm-ed tuple keys
    values: Tensor  # (..., ΣC(T, k), d) tuple values


ATTENTION_BLOCK = 1 << 23  # (query tuple, support tuple) pairs the head holds at once, all episodes of a block


@functools.lru_cache(maxsize=64)
def tuple_index(frames: int, cardinality: int) -> Tensor:
    """Frame indices of every ordered ``cardinality``-frame combination, in ``itertools.combinations`` order:
    ``(C(frames, cardinality), cardinality)`` int64 on the CPU."""
    return torch.tensor(list(itertools.combinations(range(frames), cardinality)), dtype=torch.long)


def tuple_counts(total: int, temporal_set: list[int]) -> list[int]:
    """Tuples per cardinality of an encoding with ``total`` tuples in all: the frame count T is the one whose
    ``sum(C(T, k))`` is ``total`` (the sum grows strictly with T, so T is unique)."""
    frames = max(temporal_set)
    while (counts := [math.comb(frames, k) for k in temporal_set]) and sum(counts) < total:
        frames += 1
    if sum(counts) != total:
        raise ValueError(f"trx: {total} tuples is no frame count's tuples for temporal_set={temporal_set}")
    return counts


@full_precision
def tuple_attention_distance(query_keys: Tensor, query_values: Tensor, support_keys: Tensor, support_values: Tensor,
                             way: int) -> Tensor:
    """TRX distance of each query to each class, from class-grouped supports (every class the same shots).

    Args:
        query_keys, query_values: ``(B, N_q, L_q, d)``.
        support_keys, support_values: ``(B, way·shot, L_s, d)``, class 0's shots first, then class 1's, ….

    Returns:
        ``(B, N_q, way)``: ``Σ_t ‖v_t − p_t‖² / L_q`` with ``p_t`` query tuple t's attention-weighted sum of the
        class's support tuple values.

    The prototype ``p`` (``(B, N_q, way, L_q, d)``) is never formed: ``‖v − p‖² = ‖v‖² − 2⟨v, p⟩ + ‖p‖²``, where
    ``⟨v, p⟩`` reads the query–support value products (the size of the attention scores) and ``‖p‖²`` the
    products of a class's own support values, so memory follows the attention, not ``d`` times it.
    """
    b, n_q, l_q, d = query_keys.shape
    n_s, l_s = support_keys.shape[1:3]
    shots_len = n_s // way * l_s  # tuples of one class, all shots
    q_keys, q_values = query_keys.reshape(b, n_q * l_q, d), query_values.reshape(b, n_q * l_q, d)
    s_keys, s_values = support_keys.reshape(b, n_s * l_s, d), support_values.reshape(b, n_s * l_s, d)
    scores = (q_keys @ s_keys.transpose(1, 2)).view(b, n_q, l_q, way, shots_len) / math.sqrt(d)
    attention = scores.softmax(dim=-1)  # over each class's own tuples: the last axis holds one class
    cross = (q_values @ s_values.transpose(1, 2)).view(b, n_q, l_q, way, shots_len)
    query_sq = q_values.pow(2).sum(-1).view(b, n_q, l_q).sum(-1)  # (B, N_q)
    query_proto = (attention * cross).sum(dim=(2, 4))  # (B, N_q, way): Σ_t ⟨v_t, p_t⟩
    class_values = s_values.view(b, way, shots_len, d)
    class_gram = class_values @ class_values.transpose(-1, -2)  # (B, way, S·L_s, S·L_s)
    per_class = attention.permute(0, 3, 1, 2, 4).reshape(b, way, n_q * l_q, shots_len)
    proto_sq = ((per_class @ class_gram) * per_class).sum(-1).view(b, way, n_q, l_q).sum(-1).transpose(1, 2)
    return (query_sq.unsqueeze(-1) - 2 * query_proto + proto_sq) / l_q


@register_method(
    "trx", config=TRXConfig, input_kind="frames",
    description="TRX: query-specific class prototypes by attention over frame pairs and triples",
)
class TRX(FewShotMethod):
    """Cross-attention between query and support frame tuples of several cardinalities (Perrett et al. 2021)."""

    def __init__(self, config: TRXConfig, *, feature_dim: int, text_dim: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.proj = make_projection(feature_dim, config.proj_dim)
        width = config.proj_dim or feature_dim
        out = config.trans_linear_out_dim
        self.dropout = nn.Dropout(config.dropout)
        # One key and one value map per cardinality, shared by every tuple of that cardinality [code].
        self.key_maps = nn.ModuleList(nn.Linear(k * width, out) for k in config.temporal_set)
        self.value_maps = nn.ModuleList(nn.Linear(k * width, out) for k in config.temporal_set)
        self.key_norms = nn.ModuleList(nn.LayerNorm(out) for _ in config.temporal_set)
        self.scale = LogitScale(config.temperature, learn=config.learn_scale)

    def encode(self, videos: Tensor) -> TRXEncoding:
        """Frames ``(..., T, D)`` → keys and values ``(..., ΣC(T, k), d)``; T must be ≥ max(temporal_set)."""
        frames = videos.shape[-2]
        if frames < max(self.config.temporal_set):
            raise ValueError(f"trx: {frames} frames per video, fewer than the largest tuple size in "
                             f"temporal_set={self.config.temporal_set}; sample more frames or use smaller tuples")
        x = self.proj(videos)
        code = sinusoid_code(torch.arange(frames, device=x.device), x.shape[-1]).to(x.dtype)
        # The released code applies its dropout once per cardinality (each transformer owns one): so here.
        coded = x + self.config.pe_scale * code
        keys, values = [], []
        for k, key_map, value_map, norm in zip(self.config.temporal_set, self.key_maps, self.value_maps,
                                               self.key_norms, strict=True):
            index = tuple_index(frames, k).to(x.device)
            tuples = self.dropout(coded)[..., index, :].flatten(-2)  # (..., C(T, k), k·D): frames concatenated
            keys.append(norm(key_map(tuples)))
            values.append(value_map(tuples))
        return TRXEncoding(torch.cat(keys, dim=-2), torch.cat(values, dim=-2))

    def head(self, support: TRXEncoding, support_labels: Tensor, query: TRXEncoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        """Encodings ``(B, N_s, ΣL, d)`` / ``(B, N_q, ΣL, d)``, labels ``(B, N_s)`` → logits ``(B, N_q, way)``.

        Supports are regrouped class by class (a stable sort of the labels), so each class's tuples are one
        contiguous block and the softmax over them is a plain last-axis softmax; this needs every class to
        have the same number of support videos, as the episode sampler gives."""
        self._check_balanced(support_labels, way)
        order = support_labels.argsort(dim=1, stable=True)  # (B, N_s): class 0's shots, then class 1's, ...
        rows = torch.arange(order.shape[0], device=order.device).unsqueeze(1)
        s_keys, s_values = support.keys[rows, order], support.values[rows, order]
        ks = self.config.temporal_set
        q_counts, s_counts = tuple_counts(query.keys.shape[-2], ks), tuple_counts(s_keys.shape[-2], ks)
        # Each (query tuple, support tuple) pair holds a few floats per episode (scores, attention, value products):
        # blocks of episodes keep those near ATTENTION_BLOCK elements, whatever batch the evaluator passes.
        per_episode = query.keys.shape[1] * max(q_counts) * s_keys.shape[1] * max(s_counts)
        step = max(1, ATTENTION_BLOCK // per_episode)
        blocks = []
        for start in range(0, s_keys.shape[0], step):
            block = slice(start, start + step)
            pieces = zip(query.keys[block].split(q_counts, -2), query.values[block].split(q_counts, -2),
                         s_keys[block].split(s_counts, -2), s_values[block].split(s_counts, -2), strict=True)
            blocks.append(sum(tuple_attention_distance(qk, qv, sk, sv, way) for qk, qv, sk, sv in pieces))
        return HeadOutput(self.scale(torch.cat(blocks) / len(ks)))

    @staticmethod
    def _check_balanced(support_labels: Tensor, way: int) -> None:
        """Every class must have N_s / way support videos (checked where labels are on the host: reading
        them on an accelerator would wait for it)."""
        if support_labels.device.type != "cpu":
            return
        n_s = support_labels.shape[-1]
        counts = torch.nn.functional.one_hot(support_labels.long(), way).sum(-2)  # (B, way)
        if n_s % way or not bool((counts == n_s // way).all()):
            raise ValueError(f"trx: every class needs the same number of support videos (balanced shots), got "
                             f"per-class counts {counts.tolist() if counts.numel() <= 64 else tuple(counts.shape)}")
