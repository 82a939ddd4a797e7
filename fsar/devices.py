"""Devices: which one a job runs on, and how host data reaches it.

Shared by the sources, training and evaluation, which import it rather than each other. Every tensor made
here is made on the device of the data it meets: small host arrays (episode indices, labels) travel
through pinned memory so a copy to CUDA never waits for the work already queued there.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from fsar.config import ConfigError
from fsar.data.episodes import Episodes, episode_labels


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as named (refused when absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but this machine has no CUDA device; use device=cpu (or auto)")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: fsar trains on cpu or cuda")
    return device


def autocast(device: torch.device, enabled: bool = True) -> Any:
    """bf16 autocast on CUDA when ``enabled``; nothing elsewhere (bf16 matmuls on a CPU are slower than fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array (indices, labels) as a tensor on ``device``. Bound for CUDA it goes through pinned
    memory: a copy from pageable memory would first wait for everything queued on the device."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_device(features: np.ndarray | torch.Tensor, device: torch.device, *, dtype: torch.dtype | None = None
              ) -> torch.Tensor:
    """Host (or device) data onto ``device``, cast there (fp16 and uint8 travel as they are: fewer bytes).

    A host tensor bound for CUDA is pinned first, so the copy is asynchronous (``non_blocking``) instead of
    a synchronous copy from pageable memory. A numpy array is copied once: store arrays are read-only
    views of Parquet buffers, which torch must not alias.
    """
    tensor = torch.from_numpy(np.array(features)) if isinstance(features, np.ndarray) else features
    if tensor.device != device:
        if tensor.device.type == "cpu" and device.type == "cuda":
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=True)
    return tensor if dtype is None else tensor.to(dtype)


def episode_indices(episodes: Episodes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Split rows of each episode's support ``(E, way·shot)`` and query ``(E, way·query)`` videos, on ``device``."""
    e = len(episodes)
    return host_to_device(episodes.support.reshape(e, -1), device), host_to_device(episodes.query.reshape(e, -1), device)


def episode_label_tensors(episodes: Episodes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode-local support ``(E, way·shot)`` and query ``(E, way·query)`` labels, on ``device``."""
    e, way, shot = episodes.support.shape
    query = episodes.query.shape[2]
    return (host_to_device(episode_labels(way, shot), device).expand(e, -1),
            host_to_device(episode_labels(way, query), device).expand(e, -1))


def episode_class_text(class_text: torch.Tensor | None, episodes: Episodes) -> torch.Tensor | None:
    """Text embedding of each episode's classes in label order: table ``(n_labels, E)`` → ``(E, way, E_dim)``,
    on the table's device."""
    if class_text is None:
        return None
    return class_text[host_to_device(episodes.classes, class_text.device)]
