"""fsar.training.checkpoint: a damaged, missing or foreign checkpoint is refused with its path."""

from __future__ import annotations

import pytest
import torch

from fsar.config import ConfigError
from fsar.training.checkpoint import load_checkpoint, read_checkpoint


def test_a_truncated_checkpoint_is_refused_with_its_path(tmp_path):
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    torch.save({"format": 1, "state_dict": {"w": torch.randn(64, 64)}}, path)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ConfigError, match=f"checkpoint {path} does not read .*truncated or damaged"):
        read_checkpoint(path)
    with pytest.raises(ConfigError, match=f"checkpoint {path} does not read"):
        load_checkpoint(tmp_path / "run")  # through the run folder


def test_a_missing_or_foreign_checkpoint_is_refused_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint at .*nowhere.*run folder holding best.pt"):
        load_checkpoint(tmp_path / "nowhere")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ConfigError, match=f"{other} is not an fsar checkpoint"):
        load_checkpoint(other)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ConfigError, match="holds a Tensor, not an fsar checkpoint"):
        read_checkpoint(tmp_path / "tensor.pt")
