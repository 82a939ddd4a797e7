"""TRX's frame tuples and their attention: the tuple index, the tuple × tuple attention distance of the training
head, and the factored evaluation head (``factored_distance``) that forms the same distances from frame-level
products. See ``fsar.methods.trx`` for the method."""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from fsar.ops.precision import full_precision


class TRXEncoding(NamedTuple):
    """Tuple keys and values of every cardinality, concatenated along the tuple axis in ``temporal_set`` order
    (C(T, k) tuples for cardinality k; ``tuple_counts`` splits them again)."""

    keys: Tensor  # (..., ΣC(T, k), d) LayerNorm-ed tuple keys
    values: Tensor  # (..., ΣC(T, k), d) tuple values


class TRXFactorEncoding(NamedTuple):
    """The evaluation form of a video (``encode_for_scoring`` in eval mode): what the exact tuple attention
    needs, at frame level and in ``D + 1`` dimensions instead of ``ΣC(T, k)`` tuples of width d.

    A tuple's key before its LayerNorm is ``x_τ = Σ_p Ã_p f̃_{τ_p}`` with ``f̃ = (f, 1)`` the coded frame
    and ``Ã_p = [A_p, a/k]`` position p's column block of the key linear and its bias split over the k
    positions; likewise the value ``V_τ = Σ_p B̃_p f̃_{τ_p}``. So every key and value product is a sum over
    position pairs (p, p') of frame-pair products ``f̃_t · M_{pp'} f̃'_{t'}`` (``query_tuple_products``)."""

    frames: Tensor  # (..., T, D + 1) position-coded frames with a constant 1 (the biases' input)
    key_maps: Tensor  # (..., Σ_k k·k·T, D + 1) per cardinality, rows (p, p', t): M^K_{pp'} f̃_t
    value_maps: Tensor  # (..., Σ_k k·k·T, D + 1) the same with the value metric M^V_{pp'}
    key_scale: Tensor  # (..., ΣC(T, k)) 1 / (s_τ d^¼): s_τ the key LayerNorm's root variance of tuple τ
    key_shift: Tensor  # (..., ΣC(T, k)) (γ⊙β)·(C x_τ) / (s_τ √d): the score term of a support tuple alone
    value_sq: Tensor  # (..., len(temporal_set)) Σ_τ ‖V_τ‖² per cardinality
    value_gram: Tensor  # (..., Σ_k (k·T)²) per cardinality the frame Gram [(p, t), (p', t')] = f̃_t · M^V_{pp'} f̃_t'


ATTENTION_BLOCK = 1 << 23  # (query tuple, support tuple) pairs the head holds at once, all episodes of a block
FACTOR_BLOCK = 1 << 23  # the same for the factored evaluation head (its small matrix products gain from big batches)


@functools.lru_cache(maxsize=64)
def tuple_index(frames: int, cardinality: int) -> Tensor:
    """Frame indices of every ordered ``cardinality``-frame combination, in ``itertools.combinations`` order:
    ``(C(frames, cardinality), cardinality)`` int64 on the CPU."""
    return torch.tensor(list(itertools.combinations(range(frames), cardinality)), dtype=torch.long)


def frames_of(total: int, temporal_set: list[int]) -> int:
    """The frame count T of an encoding with ``total`` tuples in all: the one whose ``sum(C(T, k))`` is ``total``
    (the sum grows strictly with T, so T is unique)."""
    frames = max(temporal_set)
    while sum(math.comb(frames, k) for k in temporal_set) < total:
        frames += 1
    if sum(math.comb(frames, k) for k in temporal_set) != total:
        raise ValueError(f"trx: {total} tuples is no frame count's tuples for temporal_set={temporal_set}")
    return frames


def tuple_counts(total: int, temporal_set: list[int]) -> list[int]:
    """Tuples per cardinality of an encoding with ``total`` tuples in all (see ``frames_of``)."""
    frames = frames_of(total, temporal_set)
    return [math.comb(frames, k) for k in temporal_set]


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


@functools.lru_cache(maxsize=64)
def tuple_frames(frames: int, cardinality: int) -> Tensor:
    """One-hot ``(cardinality·frames, C(frames, cardinality))`` float32 on the CPU: row ``(p, t)``, column τ
    is 1 where tuple τ has frame t at position p (a sum over a tuple's frames as a matrix product)."""
    index = tuple_index(frames, cardinality)
    hot = torch.zeros(cardinality, frames, len(index))
    hot[torch.arange(cardinality).expand_as(index), index, torch.arange(len(index))[:, None].expand_as(index)] = 1
    return hot.view(cardinality * frames, len(index))


def one_hot_pair(frames: int, cardinality: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``tuple_frames`` ``(k·T, L)`` and its transpose ``(L, k·T)``, both contiguous on ``device`` (the
    right operands of the frame → tuple and tuple → frame matrix products)."""
    hot = tuple_frames(frames, cardinality).to(device)
    return hot, hot.T.contiguous()


def query_tuple_products(support_frames: Tensor, query_maps: Tensor, hot: Tensor, cardinality: int) -> Tensor:
    """Every support frame against every query tuple, per support position.

    Args:
        support_frames: ``(B, N_s, T, D + 1)``; query_maps: ``(B, N_q, k·k·T, D + 1)``, rows ``(p', p, t)``
            (``M_{p'p} f̃^q_t``); hot: ``tuple_frames`` ``(k·T, L)``.

    Returns:
        ``(B, N_s, T, N_q, k, L)``: entry ``[s, u, q, p', τ] = Σ_p f̃^s_u · M_{p'p} f̃^q_{τ_p}``, the query
        positions already summed onto the query's tuples (one matrix product with the one-hot for all pairs).
    """
    b, n_s, frames, width = support_frames.shape
    n_q = query_maps.shape[1]
    k, n_tuples = cardinality, hot.shape[1]
    products = support_frames.reshape(b, n_s * frames, width) @ query_maps.reshape(b, -1, width).transpose(1, 2)
    return (products.view(-1, k * frames) @ hot).view(b, n_s, frames, n_q, k, n_tuples)


@full_precision
def factored_distance(query: TRXFactorEncoding, support: TRXFactorEncoding, way: int, cardinality: int,
                      rows: slice, tuples: slice, grams: slice, position: int) -> Tensor:
    """TRX distance ``(B, N_q, way)`` of one cardinality from factored encodings, equal to
    ``tuple_attention_distance`` on the full keys and values (up to float rounding).

    Args:
        query: fields ``(B, N_q, ...)``; support: fields ``(B, way·shot, ...)``, class 0's shots first, ….
            Of the supports it reads ``frames``, ``key_scale``, ``key_shift`` and, at one shot, ``value_gram``
            (beyond one shot ``value_maps`` instead).
        rows, tuples, grams, position: this cardinality's rows of ``key_maps``/``value_maps``, its tuples of
            ``key_scale``/``key_shift``, its entries of ``value_gram`` and its entry of ``value_sq``.

    Scores: ``K^q_τ·K^s_σ / √d = [Σ_{p,p'} f̃^q_{τ_p} M^K_{pp'} f̃^s_{σ_p'}] / (s_τ s_σ √d) + shift_σ + (terms of
    τ alone, which the softmax over σ drops)``. Distances: ``‖V_τ‖² − 2⟨V_τ, P_τ⟩ + ‖P_τ‖²`` with
    ``P_τ = Σ_σ α_τσ V_σ = Σ_{s,p',u} β_τ(s, p', u) v^s_{p',u}``, β the attention summed onto the support frames
    it selects, so both products are frame-level: ``Y_τ = ⟨V_τ, v^s_{p',u}⟩`` and the class's own frame Gram g
    (kept per video at one shot); per query tuple ``‖P‖² − 2⟨V, P⟩ = (β g − 2Y)·β``. Every sum over a tuple's
    frames is a product with the one-hot ``tuple_frames`` (dense products over all pairs at once beat gathers
    on the CPU). Work is laid out support-major ``[s, q, τ, ...]``, so at one shot each support's block is
    contiguous and the Gram product needs no copy; the softmax is unnormalised until β (k·T wide, not L).
    """
    k = cardinality
    b, n_q, frames, _ = query.frames.shape
    n_s = support.frames.shape[1]
    shots, kt = n_s // way, k * frames
    hot, hot_t = one_hot_pair(frames, k, query.frames.device)
    n_tuples = hot.shape[1]
    # Scores. Query positions first, all pairs in one product: [s, u, q, p', τ]; then times 1/(s_τ d^¼) while
    # moving to [s, q, τ, p', u], so the support positions sum onto σ by one more product with the one-hot.
    keys = query_tuple_products(support.frames, query.key_maps[..., rows, :], hot, k)
    moved = keys.new_empty(b, n_s, n_q, n_tuples, k, frames)
    torch.mul(keys.permute(0, 1, 3, 5, 4, 2), query.key_scale[:, None, :, tuples, None, None], out=moved)
    scores = (moved.view(-1, kt) @ hot).view(b, way, shots, n_q, n_tuples, n_tuples)
    per_support = (b, way, shots, 1, 1, n_tuples)
    torch.addcmul(support.key_shift[..., tuples].view(per_support), scores,
                  support.key_scale[..., tuples].view(per_support), out=scores)
    # exp(score − max) over each class's tuples, all its shots; the sum normalises β below.
    scores.sub_(scores.amax(dim=(2, 5), keepdim=True)).exp_()
    total = scores.sum(dim=(2, 5))  # (B, way, N_q, L)
    # β: each query tuple's attention on support tuple σ credited to σ's frame at each position, [s, q, τ, p', u].
    frame_attention = (scores.view(-1, n_tuples) @ hot_t).view(b, way, shots, n_q, n_tuples, kt)
    frame_attention.div_(total.view(b, way, 1, n_q, n_tuples, 1))
    by_class = frame_attention.permute(0, 1, 3, 4, 2, 5).reshape(b * way, n_q * n_tuples, shots * kt)  # a view at 1 shot
    if shots == 1:
        gram = support.value_gram[..., grams].reshape(b * way, kt, kt)
    else:  # the class's frame Gram, rows and columns (shot, p', u)
        width = support.frames.shape[-1]
        class_frames = support.frames.reshape(b, way, shots * frames, width)
        class_maps = support.value_maps[..., rows, :].reshape(b, way, shots * k * kt, width)
        gram = (class_frames @ class_maps.transpose(-1, -2)).view(b, way, shots, frames, shots, k, k, frames)
        gram = gram.permute(0, 1, 2, 5, 3, 4, 6, 7).reshape(b * way, shots * kt, shots * kt)
    # Y = ⟨V^q_τ, v^s_{p',u}⟩ [s, u, q, p', τ], read in β's order by the subtraction.
    values = query_tuple_products(support.frames, query.value_maps[..., rows, :], hot, k)
    combined = torch.bmm(by_class, gram)  # β g
    combined.view(b, way, n_q, n_tuples, shots, k, frames).sub_(
        values.view(b, way, shots, frames, n_q, k, n_tuples).permute(0, 1, 4, 6, 2, 5, 3), alpha=2)
    flat = n_tuples * shots * kt
    proto_terms = torch.bmm(combined.view(-1, 1, flat), by_class.view(-1, flat, 1)).view(b, way, n_q)
    query_sq = query.value_sq[..., position]
    return ((query_sq.unsqueeze(1) + proto_terms) / n_tuples).transpose(1, 2)
