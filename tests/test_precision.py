"""fsar.ops.precision: metrics stay fp32 under bf16 autocast (checked with CPU autocast, which CI has)."""

from __future__ import annotations

import pytest
import torch

from fsar.methods.a2m2.alignment import transport_distance
from fsar.ops.frame_distance import cosine_distance, mean_hausdorff, pairwise_frame_distance
from fsar.ops.precision import full_precision, to_fp32
from fsar.ops.sinkhorn import sinkhorn
from fsar.ops.soft_dtw import otam_distance


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_decorated_function_runs_without_autocast_and_promotes_half_inputs():
    @full_precision
    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with bf16_autocast():
        assert (a @ b).dtype == torch.bfloat16  # what an undecorated metric would compute in
        assert product(a, b).dtype == torch.float32
        assert product(a.bfloat16(), b=b.half()).dtype == torch.float32
    torch.testing.assert_close(product(a, b), a @ b, atol=0, rtol=0)
    assert to_fp32(3) == 3 and to_fp32(a.double()).dtype == torch.float64


def test_frame_metrics_under_autocast_equal_fp32():
    torch.manual_seed(0)
    query, support = torch.randn(2, 3, 8, 64), torch.randn(2, 5, 8, 64)
    reference = pairwise_frame_distance(query, support)
    with bf16_autocast():
        dist = pairwise_frame_distance(query, support)
        otam = otam_distance(dist, 0.1)
        hausdorff = mean_hausdorff(dist)
        cos = cosine_distance(query[0], support[0, 0])
    assert dist.dtype == otam.dtype == hausdorff.dtype == cos.dtype == torch.float32
    torch.testing.assert_close(dist, reference, atol=0, rtol=0)
    torch.testing.assert_close(otam, otam_distance(reference, 0.1), atol=0, rtol=0)
    torch.testing.assert_close(hausdorff, mean_hausdorff(reference), atol=0, rtol=0)
    # What bf16 would have cost: errors of the size the issue measured (~4e-3 on 1 − cos).
    bf16 = 1.0 - torch.nn.functional.cosine_similarity(query[0].bfloat16()[:, None], support[0, 0].bfloat16()[None], -1)
    assert (bf16.float() - cos).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["scaling", "torch"])
def test_transport_under_autocast_equals_fp32(backend):
    torch.manual_seed(1)
    q, s = torch.randn(2, 3, 6, 16), torch.randn(2, 4, 5, 16)
    ql, sl = torch.randn(2, 3, 6), torch.randn(2, 4, 5)
    reference = transport_distance(q, ql, s, sl, epsilon=0.05, iterations=20, backend=backend)
    with bf16_autocast():
        got = transport_distance(q, ql, s, sl, epsilon=0.05, iterations=20, backend=backend)
        cost = torch.rand(3, 4, 5)
        _, total = sinkhorn(cost, torch.full((3, 4), 0.25), torch.full((3, 5), 0.2), epsilon=0.1, backend=backend)
    assert got.dtype == total.dtype == torch.float32
    torch.testing.assert_close(got, reference, atol=0, rtol=0)


def test_known_spread_skips_the_measurement_but_not_the_answer():
    torch.manual_seed(2)
    cost = 2 * torch.rand(6, 4, 5)
    a, b = torch.softmax(torch.randn(6, 4), -1), torch.softmax(torch.randn(6, 5), -1)
    measured = sinkhorn(cost, a, b, epsilon=0.05, backend="scaling")[1]
    bounded = sinkhorn(cost, a, b, epsilon=0.05, backend="scaling", spread_bound=2.0)[1]
    torch.testing.assert_close(bounded, measured)
    log = sinkhorn(cost, a, b, epsilon=0.05, backend="torch")[1]
    torch.testing.assert_close(bounded, log, atol=1e-5, rtol=1e-5)
