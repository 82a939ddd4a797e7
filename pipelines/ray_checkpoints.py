"""Resuming from, and reporting with, a Ray checkpoint: shared by Ray Train workers and Ray Tune trials.

Ray keeps a run's latest checkpoints (weights, optimiser and schedule state, the step) so a replaced worker
group, or a resumed sweep, carries on where it stopped. Both hand a checkpoint over as a folder holding one
file, ``checkpoint.pt``, loaded as plain data (``weights_only``: a checkpoint is untrusted input).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESUME_FILE = "checkpoint.pt"


def resume_state(checkpoint: Any) -> tuple[dict[str, Any] | None, int]:
    """The payload of a Ray checkpoint (``ray.train.get_checkpoint()`` or ``tune.get_checkpoint()``) and the step
    to resume at; ``(None, 0)`` for a fresh start."""
    if checkpoint is None:
        return None, 0
    import torch

    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / RESUME_FILE, map_location="cpu", weights_only=True)
    return state, int(state["step"])


def report_with_checkpoint(report: Callable[..., None], checkpoint_type: Any, metrics: dict[str, Any],
                           payload: dict[str, Any]) -> None:
    """``report(metrics, checkpoint=...)`` with ``payload`` saved as a checkpoint of ``checkpoint_type`` (Ray Train's
    or Tune's ``Checkpoint``), from a temporary folder Ray copies into the run's storage."""
    from fsar.training.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(payload, Path(folder) / RESUME_FILE)
        report(metrics, checkpoint=checkpoint_type.from_directory(folder))
