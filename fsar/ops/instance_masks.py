"""Instance-mask operations: mask-weighted pooling, text pseudo-masks, and the matched BCE + Dice mask loss.

Shapes name P patches per frame (a flattened g×g grid), K instance queries, D / E feature widths. Masks
are probabilities in [0, 1]; predictions come as logits (the loss works in log space for stability).
"""

from __future__ import annotations

import functools
import itertools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-6  # floor on a mask's total weight and on a similarity range: an empty mask pools to 0, not NaN
_DICE_SMOOTH = 1.0  # Dice smoothing: an empty target and an empty prediction score a perfect 0 loss

MaskMatch = Literal["best", "union"]


def mask_pool(features: Tensor, masks: Tensor) -> Tensor:
    """Mask-weighted mean of patch features, one vector per mask.

    Args:
        features: ``(..., P, D)`` patch features of one frame (leading dims broadcast with ``masks``).
        masks: ``(..., K, P)`` non-negative weights, e.g. sigmoid mask probabilities.

    Returns:
        ``(..., K, D)``: ``Σ_p m_kp x_p / Σ_p m_kp``. A one-hot mask returns exactly that patch's feature;
        an all-zero mask returns zeros.
    """
    # Clamp the denominator rather than adding ε, so a mask summing to 1 (one-hot) divides by exactly 1.
    weight = masks.sum(dim=-1, keepdim=True).clamp_min(_EPS)
    return (masks @ features) / weight


def text_pseudo_masks(patches: Tensor, text: Tensor, *, threshold: float = 0.0) -> Tensor:
    """Pseudo foreground masks from patch–text cosine similarity (patches and text in one CLIP space).

    Per frame the similarity is min-max normalised to [0, 1], so the patch most like the text gets 1 and
    the least like it 0 whatever the backbone's similarity range; ``threshold > 0`` then binarises.

    Args:
        patches: ``(..., P, D)`` the frame's patch features as the backbone produced them.
        text: ``(..., D)`` the class name's text embedding, leading dims broadcast with ``patches``'.
        threshold: 0 keeps the soft values; in (0, 1) gives 1 where the normalised similarity is ≥ it.

    Returns:
        ``(..., P)`` in [0, 1] (no gradient: these are targets). A frame whose patches are all equally
        similar (e.g. a 1×1 grid) gets an all-zero mask: it carries no spatial information.
    """
    with torch.no_grad():
        sim = F.cosine_similarity(patches, text.unsqueeze(-2), dim=-1, eps=1e-8)
        low = sim.amin(dim=-1, keepdim=True)
        span = sim.amax(dim=-1, keepdim=True) - low
        soft = torch.where(span > _EPS, (sim - low) / span.clamp_min(_EPS), torch.zeros_like(sim))
        return (soft >= threshold).to(soft.dtype) if threshold > 0 else soft


def dice_loss(probs: Tensor, target: Tensor) -> Tensor:
    """Soft Dice loss per mask: ``(..., P)`` probabilities and targets → ``(...)`` in [0, 1]."""
    overlap = (probs * target).sum(-1)
    return 1.0 - (2.0 * overlap + _DICE_SMOOTH) / (probs.sum(-1) + target.sum(-1) + _DICE_SMOOTH)


def union_log_probs(logits: Tensor) -> tuple[Tensor, Tensor]:
    """log p and log(1 − p) of the soft union ``p = 1 − Π_k (1 − σ(l_k))`` over the K axis (-2).

    ``(..., K, P)`` logits → two ``(..., P)`` tensors, computed without leaving log space:
    ``log(1 − p) = −Σ_k softplus(l_k)`` and ``log p = log(−expm1(log(1 − p)))``.
    """
    log_not = -F.softplus(logits).sum(dim=-2)
    log_p = torch.log(-torch.expm1(log_not.clamp_max(-_EPS)))
    return log_p, log_not


@functools.lru_cache(maxsize=16)
def _assignments(queries: int, instances: int) -> Tensor:
    """Every injective map of ``instances`` targets to ``queries`` queries: ``(A, instances)`` query indices."""
    return torch.tensor(list(itertools.permutations(range(queries), instances)), dtype=torch.long).reshape(-1, instances)


def instance_matching_loss(logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """BCE + Dice between K query masks and I instance masks per video, after the optimal one-to-one matching.

    The cost of (query k, instance i) is the BCE + Dice of query k's masks against instance i's, averaged
    over frames (a query follows one instance through the clip). Instances absent from a video (an empty
    mask in every frame) take no part; every present instance is matched to its own query (the Hungarian
    assignment minimising the summed cost, found exactly by scoring every injective assignment at once, on
    the device: K!/(K−I)! of them, 24 at K = I = 4), and every matched query is supervised.

    Args:
        logits: ``(V, T, K, P)`` mask logits of V videos.
        target: ``(V, T, I, P)`` instance masks in [0, 1], instance i = id i + 1 of the mask files; I ≤ K.
        valid: ``(V,)`` bool: videos without a mask take no part.

    Returns:
        A scalar: the mean over valid videos of the matched cost per present instance; 0 (attached to the
        graph) when no video is valid.
    """
    videos, frames, queries, cells = logits.shape
    instances = target.shape[2]
    if target.shape != (videos, frames, instances, cells) or valid.shape != (videos,):
        raise ValueError(f"instance_matching_loss: logits (V, T, K, P), target (V, T, I, P), valid (V,); got "
                         f"{tuple(logits.shape)}, {tuple(target.shape)}, {tuple(valid.shape)}")
    if instances > queries:
        raise ValueError(f"instance_matching_loss: {instances} instances cannot be matched one to one to {queries} "
                         f"queries; raise the method's instances to at least {instances}")
    target = target.to(logits.dtype)
    pred = logits.unsqueeze(3).expand(videos, frames, queries, instances, cells)
    truth = target.unsqueeze(2).expand_as(pred)
    bce = F.binary_cross_entropy_with_logits(pred, truth, reduction="none").mean(-1)
    cost = (bce + dice_loss(pred.sigmoid(), truth)).mean(1)  # (V, K, I)
    present = target.amax(dim=(1, 3)) > 0  # (V, I)
    options = _assignments(queries, instances).to(logits.device)  # (A, I)
    chosen = cost[:, options, torch.arange(instances, device=logits.device)]  # (V, A, I): cost of query a_i for i
    summed = (chosen * present[:, None, :]).sum(-1)  # (V, A)
    # argmin then gather, not amin: amin spreads the gradient over tied assignments, and a matched query
    # must be the only one an instance supervises.
    total = summed.gather(-1, summed.argmin(dim=-1, keepdim=True)).squeeze(-1)  # (V,)
    per_video = total / present.sum(-1).clamp_min(1)
    weights = (valid & present.any(-1)).to(per_video.dtype)
    return (per_video * weights).sum() / weights.sum().clamp_min(1.0)


def matched_mask_loss(logits: Tensor, target: Tensor, valid: Tensor, *, match: MaskMatch = "best") -> Tensor:
    """BCE + Dice between predicted instance masks and one foreground mask per frame, after matching.

    ``best``: the single query (per video, the same in every frame, so it follows one instance) whose
    masks cost least is matched to the foreground — Hungarian matching with one target — and only it
    is supervised. ``union``: the soft union of all K query masks is supervised against the foreground.

    Args:
        logits: ``(V, T, K, P)`` mask logits of V videos.
        target: ``(V, T, P)`` foreground in [0, 1].
        valid: ``(V,)`` bool: videos without a mask take no part.

    Returns:
        A scalar: the mean over valid videos of (BCE + Dice) averaged over frames; 0 (still attached to
        the graph) when no video is valid.
    """
    if logits.dim() != 4 or target.shape != logits.shape[:2] + logits.shape[3:] or valid.shape != logits.shape[:1]:
        raise ValueError(f"matched_mask_loss: logits (V, T, K, P), target (V, T, P), valid (V,); got "
                         f"{tuple(logits.shape)}, {tuple(target.shape)}, {tuple(valid.shape)}")
    target = target.to(logits.dtype)
    if match == "best":
        expanded = target.unsqueeze(2).expand_as(logits)
        bce = F.binary_cross_entropy_with_logits(logits, expanded, reduction="none").mean(-1)  # (V, T, K)
        cost = (bce + dice_loss(logits.sigmoid(), expanded)).mean(1)  # (V, K)
        per_video = cost.amin(dim=-1)  # the matched query's cost; its gradient reaches that query only
    elif match == "union":
        log_p, log_not = union_log_probs(logits)  # (V, T, P)
        bce = -(target * log_p + (1.0 - target) * log_not).mean(-1)
        per_video = (bce + dice_loss(log_p.exp(), target)).mean(1)
    else:
        raise ValueError(f"matched_mask_loss: match must be 'best' or 'union', got {match!r}")
    weights = valid.to(per_video.dtype)
    return (per_video * weights).sum() / weights.sum().clamp_min(1.0)
