"""Metrics in full precision under mixed-precision training.

Under ``torch.autocast(dtype=bfloat16)`` every matmul runs in bf16, whose 8-bit mantissa puts an error
of about 4e-3 on ``1 − cos`` — as large as the differences between the frames an alignment metric ranks —
and loses the small eigenvalues of a Newton–Schulz root and the small marginals of a Sinkhorn plan.
The backbone gains from bf16; the metric on top of it does not, and costs little in fp32. Functions
decorated with :func:`full_precision` therefore run with autocast off and their half-precision tensor
arguments promoted to fp32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
_HALF = (torch.float16, torch.bfloat16)


def to_fp32(value: Any) -> Any:
    """A half-precision tensor promoted to fp32; anything else (fp32/fp64 tensors, numbers) unchanged."""
    if isinstance(value, torch.Tensor) and value.dtype in _HALF:
        return value.float()
    return value


def full_precision(fn: F) -> F:
    """Decorator: run ``fn`` with CPU and CUDA autocast disabled and its fp16/bf16 tensor arguments as fp32.

    Results are then fp32 (or fp64 for fp64 inputs) whatever autocast is active around the call.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*[to_fp32(a) for a in args], **{k: to_fp32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
