"""A2M2's A2 module: motion-guided candidate weights and the optimal-transport distance between videos.

*[recon]* (DESIGN "A2M2-Net"): the paper states that the A2 module adaptively selects and weights the
M2 candidates per instance, guided by the video's own motion pattern, and that optimal transport
refines the alignment. Our reconstruction:

- motion summary of a video: the mean absolute difference of consecutive frames' reduced features,
  averaged over the patch grid, ``(d,)``;
- weight of each candidate: a small MLP on ``[candidate; motion summary]`` → one logit, softmax over the
  video's candidates → the video's marginal (``marginals="learned"``), or uniform weights;
- distance of a query to a support video: entropic OT between their candidate sets with cost
  ``1 − cos`` and those marginals, solved for every (query, support) pair of every episode in one
  batched log-domain Sinkhorn call; distance = ⟨P, C⟩.

The weights are computed per candidate and the transport is blind to the order of its points, so a
video's distances do not depend on the order of its candidates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fsar.ops.precision import full_precision
from fsar.ops.sinkhorn import sinkhorn


def motion_summary(reduced: Tensor) -> Tensor:
    """``(..., T, g, g, d)`` reduced patch features → ``(..., d)`` mean |frame t+1 − frame t| over time and grid.

    A video of one frame has no motion: its summary is zero.
    """
    if reduced.shape[-4] < 2:
        return reduced.new_zeros(*reduced.shape[:-4], reduced.shape[-1])
    return (reduced[..., 1:, :, :, :] - reduced[..., :-1, :, :, :]).abs().mean(dim=(-4, -3, -2))


class CandidateWeights(nn.Module):
    """Per-candidate weight logits from the candidate and its video's motion summary.

    ``forward(candidates (..., K, e), motion (..., d))`` → logits ``(..., K)``; ``marginals`` gives the
    softmax over K (or uniform weights when built with ``learned=False``).
    """

    def __init__(self, *, embed_dim: int, motion_dim: int, hidden: int, learned: bool) -> None:
        super().__init__()
        self.learned = learned
        # No bias on the last layer: the softmax over candidates ignores a shift shared by all of them, so such a
        # bias could never get a gradient (DDP and the gradient test refuse parameters that cannot learn).
        self.mlp = nn.Sequential(nn.Linear(embed_dim + motion_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1, bias=False)) if learned else None
        if self.mlp is not None:
            # Start from nearly uniform marginals (a zero last layer would also zero the first layer's gradient).
            with torch.no_grad():
                self.mlp[-1].weight.mul_(0.01)

    def forward(self, candidates: Tensor, motion: Tensor) -> Tensor:
        if self.mlp is None:
            return candidates.new_zeros(candidates.shape[:-1])
        motion = motion[..., None, :].expand(*candidates.shape[:-1], motion.shape[-1])
        return self.mlp(torch.cat([candidates, motion], dim=-1)).squeeze(-1)


@full_precision
def transport_distance(query: Tensor, query_logits: Tensor, support: Tensor, support_logits: Tensor, *,
                       epsilon: float, iterations: int, backend: str = "scaling", unit: bool = False,
                       extra_cost: Tensor | None = None, extra_spread: float = 0.0) -> Tensor:
    """Entropic-OT distance of every (query, support) pair of every episode.

    Args:
        query: ``(B, N_q, K, e)`` candidates; ``query_logits`` ``(B, N_q, K)`` their weight logits.
        support: ``(B, N_s, K', e)``; ``support_logits`` ``(B, N_s, K')``.
        epsilon: entropic regularisation ε (costs lie in [0, 2]).
        iterations: Sinkhorn iterations.
        backend: ``"scaling"`` / ``"torch"`` (our solver, multiplicative or log-domain form) or ``"pot"``.
        unit: the candidates are already unit vectors (skips normalising them again for every pair).
        extra_cost: ``(K, K')`` added to every pair's cost (e.g. a temporal-order prior), ≥ 0; None: none.
        extra_spread: an upper bound on ``extra_cost`` (the solver picks its precision from the cost spread).

    Returns:
        ``(B, N_q, N_s)`` transport costs ⟨P, C⟩ with C = 1 − cos (+ ``extra_cost``).
    """
    b, nq, ns = query.shape[0], query.shape[1], support.shape[1]
    _, total = transport_plans(query, query_logits, support, support_logits, epsilon=epsilon, iterations=iterations,
                               backend=backend, unit=unit, extra_cost=extra_cost, extra_spread=extra_spread)
    return total.reshape(b, nq, ns).to(query.dtype)


def transport_plans(query: Tensor, query_logits: Tensor, support: Tensor, support_logits: Tensor, *,
                    epsilon: float, iterations: int, backend: str = "scaling", unit: bool = False,
                    extra_cost: Tensor | None = None, extra_spread: float = 0.0) -> tuple[Tensor, Tensor]:
    """``transport_distance``'s problems solved: plans ``(B·N_q·N_s, K, K')`` (how much of each query candidate goes
    to each support candidate) and their costs ``(B·N_q·N_s,)``."""
    b, nq, k, _ = query.shape
    ns, k2 = support.shape[1], support.shape[2]
    q = query if unit else nn.functional.normalize(query, dim=-1, eps=1e-8)
    s = support if unit else nn.functional.normalize(support, dim=-1, eps=1e-8)
    # The transport runs in at least fp32 (half-precision log-weights lose the small marginals).
    work = torch.promote_types(query.dtype, torch.float32)
    cost = 1.0 - torch.einsum("bqke,bsle->bqskl", q.to(work), s.to(work))  # (B, N_q, N_s, K, K')
    spread = 2.0  # 1 − cos lies in [0, 2]: no device sync to measure it
    if extra_cost is not None:
        cost = cost + extra_cost.to(work)
        spread += extra_spread
    a = torch.softmax(query_logits.to(work), dim=-1)[:, :, None].expand(b, nq, ns, k)
    w = torch.softmax(support_logits.to(work), dim=-1)[:, None].expand(b, nq, ns, k2)
    return sinkhorn(cost.reshape(-1, k, k2), a.reshape(-1, k), w.reshape(-1, k2), epsilon=epsilon,
                    iterations=iterations, backend=backend, validate=False, spread_bound=spread)  # type: ignore[arg-type]
