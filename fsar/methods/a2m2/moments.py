"""A2M2's M2 block: second-order moment descriptors of a video at several spatio-temporal scales.

*[recon]* (DESIGN "A2M2-Net"): the paper states "a collection of second-order descriptors at several
spatio-temporal scales"; how they are built is our reconstruction:

1. optionally, subtract the video's mean over time at every patch position (``temporal_centre``), so
   the moments describe what changes rather than the static scene (background, object appearance);
2. channel reduction of every patch feature, ``Linear(D, d)`` + normalisation + ReLU (a 1×1 convolution).
   The normalisation is a per-token LayerNorm by default (``reduce_norm="layer"``): each video's
   candidates then depend on that video alone, in training as at evaluation, support and query alike,
   and on any number of workers. ``"batch"`` is iSQRT-COV's BatchNorm, kept as an option: in training
   it normalises with the statistics of whichever videos share the batch (support and query of every
   episode on that worker), so a video's candidates change with its batch-mates and with the worker
   count, and evaluation (running statistics) sees a different function from training;
3. for every temporal scale ``s`` (non-overlapping windows of ``s`` consecutive frames) and spatial
   scale ``p`` (non-overlapping ``p×p`` blocks of the ``g×g`` grid; 0 = the whole grid), the
   ``n = s·p·p`` local features of each window give one ``d×d`` centred covariance (the raw second
   moment ``x xᵀ`` when ``n = 1``, where a centred one would be zero);
4. matrix square root by Newton–Schulz in fp32 (``fsar.ops.matrix_sqrt``), upper-triangle vector;
5. a learned projection to the candidate size ``e``, plus a learned embedding of the candidate's scale
   and an encoding of where in time its window lies (so the transport can prefer temporally
   corresponding windows, and a motion is told from its reverse).

Every candidate is a function of its own window only; their order carries no meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fsar.ops.matrix_sqrt import centred_covariance, newton_schulz_sqrt, upper_triangle

TIME_FREQUENCIES = 4  # Fourier features of a window's centre time: sin/cos at 1..4 half-periods per clip


@dataclass(frozen=True)
class Scale:
    """One temporal × spatial scale: windows of ``frames`` frames and ``block``×``block`` patches."""

    frames: int  # s: consecutive frames per window
    block: int  # p: patch-block side; 0 = the whole grid


def window_samples(x: Tensor, scale: Scale) -> tuple[Tensor, Tensor]:
    """Local feature sets of every window of one scale.

    Args:
        x: ``(V, T, g, g, d)`` reduced patch features of V videos.
        scale: window length in frames and block side (must divide g; 0 = g). A window longer than the clip
            covers the whole clip (the default scales [4, 8] give one whole-clip window on 4-frame stores).

    Returns:
        samples ``(V, W, n, d)`` with ``W = (T // s) · (g / p)²`` windows of ``n = s·p·p`` features
        (trailing frames that do not fill a window are left out), and the centre time of each window
        in [0, 1] ``(W,)``.
    """
    v, t, g, _, d = x.shape
    s, p = min(scale.frames, t), scale.block or g
    if g % p:
        raise ValueError(f"a2m2: spatial scale {p} does not divide the {g}x{g} patch grid; use a divisor of {g} or 0")
    nt, nb = t // s, g // p
    x = x[:, : nt * s].reshape(v, nt, s, nb, p, nb, p, d)
    samples = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(v, nt * nb * nb, s * p * p, d)
    centres = (torch.arange(nt, device=x.device, dtype=x.dtype) * s + (s - 1) / 2) / max(t - 1, 1)
    return samples, centres.repeat_interleave(nb * nb)


def second_moment(samples: Tensor) -> Tensor:
    """``(..., n, d)`` → ``(..., d, d)``: centred covariance, or the raw second moment when n = 1."""
    if samples.shape[-2] == 1:
        return samples.transpose(-1, -2) @ samples
    return centred_covariance(samples)


def time_features(centres: Tensor) -> Tensor:
    """Fourier features of window centre times ``(W,)`` in [0, 1] → ``(W, 2·TIME_FREQUENCIES)``."""
    k = torch.arange(1, TIME_FREQUENCIES + 1, device=centres.device, dtype=centres.dtype)
    angle = math.pi * centres[:, None] * k
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


MOMENT_INPUTS = ("features", "motion", "position")


def moment_samples(reduced: Tensor, inputs: tuple[str, ...]) -> Tensor:
    """The per-patch vectors whose second-order moments the windows take: ``(V, T, g, g, d)`` → ``(V, T, g, g, d')``.

    - ``features``: the reduced patch features (d);
    - ``motion``: their temporal difference, frame t minus frame t−1 (frame 0 repeats frame 1's), (d) —
      the cross-moments of features and motion change sign when a video is played backwards, so a window
      knows which way things move;
    - ``position``: the patch's row and column in [−1, 1] (2), as in region covariance descriptors — the
      cross-moments of features and position say where in the frame things are, which the moments of an
      unordered set of patches otherwise lose.
    """
    parts = []
    if "features" in inputs:
        parts.append(reduced)
    if "motion" in inputs:
        if reduced.shape[1] < 2:
            parts.append(torch.zeros_like(reduced))
        else:
            diff = reduced[:, 1:] - reduced[:, :-1]
            parts.append(torch.cat([diff[:, :1], diff], dim=1))
    if "position" in inputs:
        v, t, g, _, _ = reduced.shape
        axis = torch.linspace(-1.0, 1.0, g, device=reduced.device, dtype=reduced.dtype) if g > 1 else reduced.new_zeros(1)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        parts.append(torch.stack([rows, cols], dim=-1).expand(v, t, g, g, 2))
    return torch.cat(parts, dim=-1)


class M2Block(nn.Module):
    """Patch features of videos → multi-scale second-order candidates.

    ``forward(x)`` with ``x`` ``(..., T, g, g, D)`` returns

    - candidates ``(..., K, e)``, ``K = Σ_scales (T // s) · (g / p)²``;
    - the reduced patch features ``(..., T, g, g, d)`` (the A2 module's motion summary and the optional
      frame-level metric read them).
    """

    def __init__(self, *, feature_dim: int, reduce_dim: int, embed_dim: int, scales: list[Scale],
                 ns_iterations: int, temporal_centre: bool, time_encoding: bool, norm: str = "layer",
                 inputs: tuple[str, ...] = ("features",)) -> None:
        super().__init__()
        if not scales:
            raise ValueError("a2m2: at least one scale is needed")
        if not inputs or any(i not in MOMENT_INPUTS for i in inputs):
            raise ValueError(f"a2m2: moment_inputs must be a non-empty subset of {list(MOMENT_INPUTS)}, got {inputs}")
        self.inputs = tuple(inputs)
        width = reduce_dim * (("features" in inputs) + ("motion" in inputs)) + 2 * ("position" in inputs)
        self.scales = list(scales)
        self.ns_iterations = ns_iterations
        self.temporal_centre = temporal_centre
        self.reduce = nn.Linear(feature_dim, reduce_dim)
        if norm not in ("layer", "batch"):
            raise ValueError(f"a2m2: reduce_norm must be 'layer' or 'batch', got {norm!r}")
        self.norm = nn.LayerNorm(reduce_dim) if norm == "layer" else nn.BatchNorm1d(reduce_dim)
        self.project = nn.Linear(width * (width + 1) // 2, embed_dim)
        self.scale_embedding = nn.Parameter(torch.zeros(len(self.scales), embed_dim))
        self.time_projection = nn.Linear(2 * TIME_FREQUENCIES, embed_dim, bias=False) if time_encoding else None

    def reduce_channels(self, x: Tensor) -> Tensor:
        """``(..., D)`` → ``(..., d)``: the 1×1 reduction, the normalisation (per token, or BatchNorm over every
        patch of the batch), ReLU."""
        y = self.reduce(x)
        y = self.norm(y.reshape(-1, y.shape[-1])).reshape(y.shape)
        return torch.relu(y)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lead, (t, g, g2, _) = x.shape[:-4], x.shape[-4:]
        if g != g2:
            raise ValueError(f"a2m2: patch grids must be square, got {g}x{g2}")
        x = x.reshape(-1, t, g, g, x.shape[-1])
        if self.temporal_centre:
            x = x - x.mean(dim=1, keepdim=True)
        reduced = self.reduce_channels(x)
        vectors = moment_samples(reduced, self.inputs)
        moments, times, scale_ids = [], [], []
        for i, scale in enumerate(self.scales):
            samples, centres = window_samples(vectors, scale)
            moments.append(second_moment(samples))
            times.append(centres)
            scale_ids.append(torch.full_like(centres, i, dtype=torch.long))
        # One Newton–Schulz call for the windows of every scale: fewer, larger batched products.
        root = newton_schulz_sqrt(torch.cat(moments, dim=1), iterations=self.ns_iterations)
        candidates = self.project(upper_triangle(root).to(x.dtype)) + self.scale_embedding[torch.cat(scale_ids)]
        if self.time_projection is not None:
            candidates = candidates + self.time_projection(time_features(torch.cat(times)))
        return candidates.reshape(*lead, *candidates.shape[1:]), reduced.reshape(*lead, *reduced.shape[1:])

    def candidate_times(self, frames: int, grid: int, *, device: torch.device | None = None) -> Tensor:
        """Centre time in [0, 1] of each of the ``K`` candidates of a video (the order ``forward`` gives)."""
        probe = torch.zeros(1, frames, grid, grid, 1, device=device)
        return torch.cat([window_samples(probe, scale)[1] for scale in self.scales])

    def num_candidates(self, frames: int, grid: int) -> int:
        """K for videos of ``frames`` frames on a ``grid``×``grid`` patch grid."""
        return sum((frames // s.frames) * (grid // (s.block or grid)) ** 2 for s in self.scales)
