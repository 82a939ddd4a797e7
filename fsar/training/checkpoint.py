"""Checkpoints that carry their own config: plain data (tensors, numbers, strings) loadable with
``torch.load(weights_only=True)``, since a checkpoint from a shared folder is untrusted input.

A method with frozen parameters (DMGAL-Adapter's backbone) saves only the others and ``frozen_rebuilt:
True``; ``load_checkpoint`` rebuilds the frozen part from the config (pretrained weights or init seed) and
checks that nothing else is missing.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fsar import storage
from fsar.config import ConfigError, from_dict, to_dict
from fsar.data.sections import StageSettings
from fsar.methods import FewShotMethod, build_method
from fsar.run_folder import RunFolder
from fsar.storage import Location
from fsar.training.config import TrainConfig

CHECKPOINT_FORMAT = "fsar-checkpoint/1"


def trainable_state(method: nn.Module) -> tuple[dict[str, Tensor], bool]:
    """The state dict without frozen parameters (CPU copies), and whether anything was left out."""
    frozen = {name for name, p in method.named_parameters() if not p.requires_grad}
    state = {k: v.detach().cpu() for k, v in method.state_dict().items() if k not in frozen}
    return state, bool(frozen)


def load_partial_state(method: nn.Module, state: dict[str, Tensor], *, where: str = "checkpoint") -> None:
    """Load a ``trainable_state`` into a freshly built method; anything missing must be a frozen parameter."""
    result = method.load_state_dict(state, strict=False)
    frozen = {name for name, p in method.named_parameters() if not p.requires_grad}
    missing = [k for k in result.missing_keys if k not in frozen]
    if missing or result.unexpected_keys:
        raise ValueError(f"{where}: does not fit the method it names: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


def checkpoint_payload(config: TrainConfig, method: FewShotMethod, *, step: int, val_accuracy: float,
                       data_fields: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of ``method`` at ``step``; ``data_fields``: what the episode source records about the data
    (``feature_dim``, ``text_dim``, ``view``, ``resolved_view``, ``store_meta``; a manifest and its ``frames``)."""
    state, partial = trainable_state(method)
    return {
        "format": CHECKPOINT_FORMAT,
        "method": config.method,
        "configuration": method.configuration,
        "knobs": to_dict(method.config),
        **data_fields,
        "state_dict": state,
        "frozen_rebuilt": partial,
        "train_config": to_dict(config),
        "step": step,
        "val_accuracy": val_accuracy,
    }


def best_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint as ``best.pt`` keeps it: weights and config, without the optimiser and schedule."""
    return {k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")}


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Location:
    """Write a checkpoint atomically to a local path or a URI."""
    with storage.open_output(path) as f:
        torch.save(payload, f)
    return storage.as_location(path)


def no_checkpoint(path: str | Path) -> ConfigError:
    return ConfigError(f"no checkpoint at {path}; pass a run folder holding best.pt, or the .pt file")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a checkpoint file (local or a URI), as plain data (untrusted input: ``weights_only``);
    a file that does not read (truncated, damaged, not a checkpoint) is refused with its path."""
    try:
        if storage.is_uri(path):
            payload = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise no_checkpoint(path) from None
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"checkpoint {path} does not read ({type(exc).__name__}: {str(exc)[:120]}): it is truncated "
                          "or damaged; point at another checkpoint, or rerun the training that wrote it") from None
    if not isinstance(payload, dict):
        raise ConfigError(f"{path} holds a {type(payload).__name__}, not an fsar checkpoint")
    return payload


def load_checkpoint(path: str | Path) -> tuple[FewShotMethod, dict[str, Any]]:
    """Rebuild a trained method from its checkpoint: a ``.pt`` file or a run folder holding ``best.pt``,
    local or a URI (untrusted input: ``weights_only=True``)."""
    path = storage.as_location(path)
    if not storage.is_file(path) and storage.is_dir(path):
        path = RunFolder(path).best_checkpoint
    if not storage.is_file(path):
        raise no_checkpoint(path)
    payload = read_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not an fsar checkpoint (format {payload.get('format')!r})")
    # The knobs are the resolved config: they set every field, whatever the configuration adds.
    stage = from_dict(StageSettings, payload["stage"], where=f"{path}: stage") if payload.get("stage") else None
    method = build_method(payload["method"], feature_dim=payload["feature_dim"], text_dim=payload.get("text_dim"),
                          configuration=payload.get("configuration") or None, stage=stage, **payload["knobs"])
    method.configuration = payload.get("configuration", "")  # runs from before configurations existed: none
    if payload.get("frozen_rebuilt"):  # frozen weights were left out: rebuilt from pretrained/init_seed above
        load_partial_state(method, payload["state_dict"], where=str(path))
    else:
        method.load_state_dict(payload["state_dict"])
    method.eval()
    return method, payload


def warm_start(method: FewShotMethod, location: str | Path) -> None:
    """Start ``method`` from a trained run of the same method (``init_from``): its weights are loaded into the
    method's own parts. The cheap cached stage does most of the learning; an end-to-end run on a backbone stage
    then refines it, so a cached run (a store made by the same encoder) warm-starts the head on the stage.

    Refused, naming the difference: another method, another encoder than the stage's, or widths that differ."""
    cached, payload = load_checkpoint(location)
    name = method.method_name
    if payload["method"] != name:
        raise ConfigError(f"init_from={location}: that run trained {payload['method']}, this one trains {name}")
    stage = getattr(method, "stage", None)
    target = method.method if stage is not None else method  # type: ignore[attr-defined]
    store = payload.get("store_meta") or {}
    if stage is not None and store:
        settings = stage.settings
        ours = {"backbone": settings.backbone, "pretrained": stage.encoder_weights, "patch_grid": settings.patch_grid}
        theirs = {"backbone": store.get("backbone"), "pretrained": store.get("pretrained"),
                  "patch_grid": store.get("patch_grid")}
        if stage.view == "pooled":  # a pooled view does not depend on the grid
            ours.pop("patch_grid"), theirs.pop("patch_grid")
        if ours["pretrained"] is None and theirs["pretrained"] is None:  # random inits: the seed tells them apart
            ours["init_seed"], theirs["init_seed"] = settings.init_seed, store.get("init_seed")
        differ = {k: (theirs[k], ours[k]) for k in ours if ours[k] != theirs[k]}
        if differ:
            raise ConfigError(f"init_from={location}: its store's encoder differs from this run's stage in "
                              + ", ".join(f"{k} (store {a!r}, stage {b!r})" for k, (a, b) in differ.items())
                              + "; set data.stage to match, or warm-start from a run on a store of this encoder")
    source = cached.method if getattr(cached, "stage", None) is not None else cached  # type: ignore[attr-defined]
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as exc:
        raise ConfigError(f"init_from={location}: its {name} does not fit this run's (different knobs, or a view of "
                          f"another width: the stage gives {getattr(stage, 'output_dim', '?')}): {str(exc)[:300]}") from exc
