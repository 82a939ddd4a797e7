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

Evaluation (``encode_for_scoring`` in eval mode) reads a factored form instead of the width-d tuples: a
tuple's key and value are linear in its frames, so every key and value product is a sum of frame-pair
products under a (D+1)×(D+1) metric per position pair, and the LayerNorm enters only through a per-tuple
scale and shift. Per video it keeps the frames and those metrics applied to them (``TRXFactorEncoding``);
per episode ``factored_distance`` forms the same scores, attention and distances from frame-level products
(same logits up to float rounding, at a fraction of the tuple × tuple × d work and of the memory gathered).
At one shot a class is one video, so a query's logits are its distances to single support videos: the
evaluator keeps a table of them (``one_shot_pair_table``), each (query, support) pair solved once per split
however many 1-shot episodes it meets in, in rows of one query and ``pair_table_row`` supports.

The tuples depend on the frame count T while the linears depend only on k·D, so tuple indices are built
lazily per T (cached) rather than from a ``num_frames`` knob: one trained model reads any clip length with
T ≥ max(temporal_set), and no knob has to be kept equal to the store's frame count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.methods.base import Explanation, FewShotMethod, HeadOutput, Supervision
from fsar.methods.parts import LogitScale, check_metric_knobs, make_projection, sinusoid_code
from fsar.methods.registry import register_method
from fsar.methods.trx_tuples import (
    ATTENTION_BLOCK,
    FACTOR_BLOCK,
    TRXEncoding,
    TRXFactorEncoding,
    factored_distance,
    frames_of,
    tuple_attention_distance,
    tuple_counts,
    tuple_frames,
    tuple_index,
)
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


@register_method(
    "trx", config=TRXConfig, input_kind="frames",
    description="TRX: query-specific class prototypes by attention over frame pairs and triples",
)
class TRX(FewShotMethod):
    """Cross-attention between query and support frame tuples of several cardinalities (Perrett et al. 2021)."""

    # At one shot a class is one video, so a query's logits are its distances to single videos: evaluation
    # solves each (query, support) pair once per split (``pair_distance``) and reuses it in every 1-shot
    # episode that pair meets in; k-shot episodes run ``head`` (a class's softmax spans all its shots).
    one_shot_pair_table: ClassVar[bool] = True
    pair_table_reads: ClassVar[tuple[str, ...]] = ()
    # A query's key and value maps (k²·T rows each) are the large fields, read once per row of supports; of a
    # 1-shot support the head reads its frames, tuple scales and shifts and value Gram only.
    pair_table_row: ClassVar[int] = 16
    pair_table_support_reads: ClassVar[tuple[str, ...]] = ("frames", "key_scale", "key_shift", "value_gram")

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
        coded = self._coded_frames(videos)
        frames = coded.shape[-2]
        keys, values = [], []
        for k, key_map, value_map, norm in zip(self.config.temporal_set, self.key_maps, self.value_maps,
                                               self.key_norms, strict=True):
            index = tuple_index(frames, k).to(coded.device)
            # The released code applies its dropout once per cardinality (each transformer owns one): so here.
            tuples = self.dropout(coded)[..., index, :].flatten(-2)  # (..., C(T, k), k·D): frames concatenated
            keys.append(norm(key_map(tuples)))
            values.append(value_map(tuples))
        return TRXEncoding(torch.cat(keys, dim=-2), torch.cat(values, dim=-2))

    def _coded_frames(self, videos: Tensor) -> Tensor:
        """Frames ``(..., T, D)`` → projected and position-coded ``(..., T, D')``; T must be ≥ max(temporal_set)."""
        frames = videos.shape[-2]
        if frames < max(self.config.temporal_set):
            raise ValueError(f"trx: {frames} frames per video, fewer than the largest tuple size in "
                             f"temporal_set={self.config.temporal_set}; sample more frames or use smaller tuples")
        x = self.proj(videos)
        return x + self.config.pe_scale * sinusoid_code(torch.arange(frames, device=x.device), x.shape[-1]).to(x.dtype)

    def encode_for_scoring(self, videos: Tensor) -> TRXEncoding | TRXFactorEncoding:
        """In eval mode the factored encoding (``encode_factored``), which ``head`` reads exactly and far
        faster; in training mode ``encode`` (dropout draws differ per cardinality there)."""
        return self.encode(videos) if self.training else self.encode_factored(videos)

    def position_metrics(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per cardinality k, from the parameters: the key metric ``M^K`` and value metric ``M^V``
        ``(k, D+1, k, D+1)`` (``M[p, :, p', :] = Ã_pᵀ C Γ² C Ã_p'`` and ``B̃_pᵀ B̃_p'``), the centred key blocks
        ``C Ã_p`` ``(k, d, D+1)`` (``C x_τ = Σ_p C Ã_p f̃_{τ_p}``, whose norm gives the LayerNorm's variance) and
        the shift vector ``(k(D+1),)`` (``(γ⊙β)·C x_τ``), x̃_τ the tuple's frames f̃ concatenated."""
        out = []
        for k, key_map, value_map, norm in zip(self.config.temporal_set, self.key_maps, self.value_maps,
                                               self.key_norms, strict=True):
            def blocks(linear: nn.Linear, k: int = k) -> Tensor:
                """(k, d, D+1): position p's column block of the weight, beside the bias over k."""
                d = linear.out_features
                weight = linear.weight.float().view(d, k, -1).transpose(0, 1)
                return torch.cat([weight, (linear.bias.float() / k).expand(k, d).unsqueeze(-1)], dim=-1)

            keys = blocks(key_map)
            centred = keys - keys.mean(dim=1, keepdim=True)  # C Ã_p: LayerNorm centres over the d features
            scaled = centred * norm.weight.float()[:, None]  # Γ C Ã_p
            values = blocks(value_map)
            key_metric = torch.einsum("pdi,qdj->piqj", scaled, scaled)
            value_metric = torch.einsum("pdi,qdj->piqj", values, values)
            shift = centred.transpose(0, 1).flatten(1).T @ (norm.weight.float() * norm.bias.float())
            out.append((key_metric, value_metric, centred, shift))
        return out

    @full_precision
    def encode_factored(self, videos: Tensor) -> TRXFactorEncoding:
        """Frames ``(..., T, D)`` → the factored encoding (``TRXFactorEncoding``), without dropout: the
        evaluation form, which ``head`` turns into the same logits as from ``encode``."""
        coded = self._coded_frames(videos)
        frames, lead = coded.shape[-2], coded.shape[:-2]
        coded = torch.cat([coded, coded.new_ones(*lead, frames, 1)], dim=-1)  # f̃ = (f, 1)
        width = coded.shape[-1]
        d = self.config.trans_linear_out_dim
        key_maps, value_maps, scales, shifts, value_sq, grams = [], [], [], [], [], []
        for k, norm, (key_metric, value_metric, centred, shift) in zip(
                self.config.temporal_set, self.key_norms, self.position_metrics(), strict=True):
            # rows (p, p', t): M_{pp'} f̃_t, so query frame · row = f̃^q M_{pp'} f̃^s
            key_maps.append(torch.einsum("piqj,...tj->...pqti", key_metric, coded).reshape(*lead, k * k * frames, width))
            value_maps.append(torch.einsum("piqj,...tj->...pqti", value_metric, coded).reshape(*lead, k * k * frames,
                                                                                                width))
            # A one-video class's own value Gram [(p, t), (p', t')], which 1-shot episodes read instead of forming
            # it per episode; Σ_τ ‖V_τ‖² is its sum weighted by how many tuples hold each frame pair.
            hot = tuple_frames(frames, k).to(coded.device)  # (k·T, L)
            gram = (coded @ value_maps[-1].transpose(-1, -2)).view(*lead, frames, k, k, frames).transpose(-4, -3)
            gram = gram.reshape(*lead, k * frames, k * frames)
            grams.append(gram.flatten(-2))
            value_sq.append((gram * (hot @ hot.T)).sum(dim=(-1, -2)))
            # The LayerNorm's s_τ: ‖C x_τ‖² = Σ_{p,p'} z_{p,τ_p}·z_{p',τ_p'} with z_{p,t} = C Ã_p f̃_t, so a (k·T)²
            # Gram of z per video read through the one-hot, not a k(D+1)-wide quadratic form per tuple.
            centred_frames = torch.einsum("pdi,...ti->...ptd", centred, coded).reshape(*lead, k * frames, d)
            variance = ((hot.T @ (centred_frames @ centred_frames.transpose(-1, -2))) * hot.T).sum(-1)  # (..., L)
            root = variance.div(d).add(norm.eps).sqrt()
            scales.append(root.reciprocal() * d ** -0.25)
            per_frame = torch.einsum("pi,...ti->...pt", shift.view(k, width), coded).reshape(*lead, k * frames)
            shifts.append((per_frame @ hot) / root / math.sqrt(d))
        return TRXFactorEncoding(coded, torch.cat(key_maps, -2), torch.cat(value_maps, -2), torch.cat(scales, -1),
                                 torch.cat(shifts, -1), torch.stack(value_sq, -1), torch.cat(grams, -1))

    def head(self, support: TRXEncoding | TRXFactorEncoding, support_labels: Tensor,
             query: TRXEncoding | TRXFactorEncoding, way: int, *, class_text: Tensor | None = None,
             supervision: Supervision | None = None) -> HeadOutput:
        """Encodings ``(B, N_s, ΣL, d)`` / ``(B, N_q, ΣL, d)``, labels ``(B, N_s)`` → logits ``(B, N_q, way)``;
        or factored encodings (``TRXFactorEncoding``), which give the same logits.

        Supports are regrouped class by class (a stable sort of the labels), so each class's tuples are one
        contiguous block and the softmax over them is a plain last-axis softmax; this needs every class to
        have the same number of support videos, as the episode sampler gives."""
        self._check_balanced(support_labels, way)
        order = support_labels.argsort(dim=1, stable=True)  # (B, N_s): class 0's shots, then class 1's, ...
        rows = torch.arange(order.shape[0], device=order.device).unsqueeze(1)
        if isinstance(query, TRXFactorEncoding):
            # The evaluator's supports come class by class already: then no copy of the support fields.
            grouped = support_labels.device.type == "cpu" and bool((support_labels.diff(dim=1) >= 0).all())
            support = support if grouped else type(support)(*(f[rows, order] for f in support))
            return HeadOutput(self.scale(self._factored_head(support, query, way)))
        return HeadOutput(self.scale(self._plain_distance(TRXEncoding(support.keys[rows, order],
                                                                      support.values[rows, order]), query, way)))

    def explain(self, support: TRXEncoding, query: TRXEncoding, *, query_video: Tensor | None = None) -> Explanation:
        """TRX's tuple attention of one query against one support video: how much each query tuple (a pair or a
        triple of frames) attends to each support tuple, cardinality by cardinality (the blocks of the matrix);
        items placed at their frames' positions."""
        counts = tuple_counts(query.keys.shape[-2], self.config.temporal_set)
        frames = frames_of(query.keys.shape[-2], self.config.temporal_set)
        weights = query.keys.new_zeros(sum(counts), sum(counts))
        items, start = [], 0
        for k, n, q_keys, s_keys in zip(self.config.temporal_set, counts, query.keys.split(counts, -2),
                                        support.keys.split(counts, -2), strict=True):
            block = slice(start, start + n)
            weights[block, block] = (q_keys @ s_keys.T / math.sqrt(q_keys.shape[-1])).softmax(dim=-1)
            positions = (tuple_index(frames, k).float() + 0.5) / frames  # (C(T, k), k)
            items.append(positions.mean(dim=1, keepdim=True).to(weights.device))
            start += n
        centres = torch.cat(items)
        return Explanation("tuple attention", weights.float(), centres, centres)

    def pair_distance(self, support: TRXEncoding | TRXFactorEncoding, query: TRXEncoding | TRXFactorEncoding
                      ) -> Tensor:
        """Encoded support ``(B, N_s, ...)`` and query ``(B, N_q, ...)`` → distances ``(B, N_q, N_s)``, each
        support video its own class: a 1-shot episode's distances, whose entry [b, i, j] reads query i and
        support j alone (so evaluation keeps a table of them, ``one_shot_pair_table``)."""
        n_s = support[0].shape[1]
        if isinstance(query, TRXFactorEncoding):
            return self._factored_head(support, query, n_s)
        return self._plain_distance(support, query, n_s)

    def logits_from_pairs(self, distance: Tensor, support: TRXEncoding | TRXFactorEncoding, support_labels: Tensor,
                          query: TRXEncoding | TRXFactorEncoding, way: int, *,
                          class_text: Tensor | None = None) -> Tensor:
        """1-shot pair distances ``(B, N_q, way)`` (``pair_distance``), labels ``(B, way)`` → logits
        ``(B, N_q, way)``: class c's logit is its one support video's distance, scaled."""
        if distance.shape[-1] != way:
            raise ValueError(f"trx: pair distances are 1-shot logits only: {distance.shape[-1]} support videos "
                             f"for {way} classes")
        order = support_labels.argsort(dim=1)  # (B, way): class c's support video
        return self.scale(distance.gather(-1, order.unsqueeze(1).expand(-1, distance.shape[1], -1)))

    def _plain_distance(self, support: TRXEncoding, query: TRXEncoding, way: int) -> Tensor:
        """Distance ``(B, N_q, way)`` averaged over the cardinalities, from class-grouped plain encodings,
        in blocks of episodes (``ATTENTION_BLOCK`` tuple pairs each)."""
        s_keys, s_values = support
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
        return torch.cat(blocks) / len(ks)

    def _factored_head(self, support: TRXFactorEncoding, query: TRXFactorEncoding, way: int) -> Tensor:
        """Distance ``(B, N_q, way)`` averaged over the cardinalities, from class-grouped factored supports,
        in blocks of episodes (``FACTOR_BLOCK`` tuple pairs each)."""
        frames = query.frames.shape[-2]
        ks = self.config.temporal_set
        sizes = [k * k * frames for k in ks]
        counts = [math.comb(frames, k) for k in ks]
        gram_sizes = [k * k * frames * frames for k in ks]
        per_episode = query.frames.shape[1] * max(counts) * support.frames.shape[1] * max(counts)
        step = max(1, FACTOR_BLOCK // per_episode)
        blocks = []
        for start in range(0, query.frames.shape[0], step):
            q, s = (type(e)(*(None if f is None else f[start : start + step] for f in e)) for e in (query, support))
            total = 0
            for i, k in enumerate(ks):
                rows = slice(sum(sizes[:i]), sum(sizes[: i + 1]))
                tuples = slice(sum(counts[:i]), sum(counts[: i + 1]))
                grams = slice(sum(gram_sizes[:i]), sum(gram_sizes[: i + 1]))
                total = total + factored_distance(q, s, way, k, rows, tuples, grams, i)
            blocks.append(total)
        return torch.cat(blocks) / len(ks)

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
