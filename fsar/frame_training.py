"""End-to-end episodic training of pixels methods (DMGAL-FT, DMGAL-Adapter) on a manifest's videos.

The loop mirrors ``fsar.training.train_worker`` — same config, episode streams, loss module, optimiser,
schedule, validation cadence, report callback and checkpoint format — with decoded clips in place of
cached features:

    episodes (EpisodeSampler on the manifest's train split; episode e depends only on (seed, e))
      → decoded uint8 clips (``fsar.frame_episodes``: Ray Data tasks, or a thread pool in-process)
      → normalised on the worker's device → the method (backbone inside) → cross-entropy
      → gradients over ``episodes_per_step`` episodes (``episodes_per_forward`` at a time), one step

bf16 autocast on CUDA, none on CPU. Rank 0 validates on fixed val-split episodes at segment centres,
every val video decoded once (kept as uint8) and encoded once per validation.

Checkpoints: a method with frozen parameters (DMGAL-Adapter's backbone) saves only the others and
``frozen_rebuilt: True``; ``load_checkpoint`` rebuilds the frozen part from the config (pretrained /
init_seed) and checks that nothing else is missing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fsar.config import ConfigError, to_dict
from fsar.data.episodes import EpisodeSampler, episode_labels
from fsar.eval import accuracy_ci, host_to_device, to_device
from fsar.frame_episodes import (
    EpisodeDecoder,
    SplitVideos,
    autocast,
    decode_split,
    episode_table,
    local_episode_stream,
    normalise,
    pixel_episode_accuracies,
    read_split_videos,
)
from fsar.methods import FewShotMethod, method_info
from fsar.training import (
    CHECKPOINT_FORMAT,
    EpisodicLoss,
    Report,
    TrainConfig,
    build_for_training,
    check_clip_length,
    episodes_per_worker,
    make_optimizer,
    training_device,
    validation_sampler,
    window_metrics,
)

VAL_EPISODE_BATCH = 50  # validation episodes per per-task forward (C-MGA runs per episode)


def check_data_source(config: TrainConfig) -> str:
    """Exactly one of store / manifest, matching the method's input kind; returns that kind."""
    kind = method_info(config.method).input_kind
    if config.store is not None and config.manifest is not None:
        raise ConfigError("give either --store (cached-feature methods) or --manifest (end-to-end methods), not both")
    if kind == "pixels" and config.manifest is None:
        raise ConfigError(
            f"method {config.method} is end-to-end (input: pixels): it trains on decoded videos, not on a feature "
            f"store; pass --manifest MANIFEST.parquet (from `fsar manifest` or `fsar synth`) instead of --store"
        )
    if kind != "pixels" and config.store is None:
        raise ConfigError(
            f"method {config.method} reads cached features (input: {kind}): pass --store STORE (build one with "
            f"`fsar embed --manifest ...`); --manifest alone is for end-to-end methods (dmgal_ft, dmgal_adapter)"
        )
    return kind


def check_frame_inputs(config: TrainConfig) -> FewShotMethod:
    """Everything an end-to-end job can get wrong, before any worker starts and without decoding a video:
    data source, method and knobs, frame count, impossible training or validation episodes."""
    check_data_source(config)
    if config.val_split == "test":
        raise ConfigError("val_split=test: model selection on the test split is not allowed; validate on 'val'")
    for name in ("frames", "episodes_per_step", "encode_chunk"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.episodes_per_forward < 0:
        raise ConfigError(f"episodes_per_forward must be >= 0 (0 = a whole step), got {config.episodes_per_forward}")
    method = build_for_training(config, 0)
    check_frames(config, method)
    train = read_split_videos(config.manifest, "train")
    EpisodeSampler(train.labels, way=config.way, shot=config.shot, query=config.query, seed=config.seed,
                   class_names=train.class_names, split="train")
    val = read_split_videos(config.manifest, config.val_split)
    validation_sampler(config, val.labels, val.class_names)
    return method


def check_frames(config: TrainConfig, method: FewShotMethod) -> None:
    """A method with a fixed clip length (DMGAL's time mixer: ``num_frames``) must get that many frames."""
    check_clip_length(method, config.frames, source="are decoded per video (frames)")


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


def frame_checkpoint_payload(config: TrainConfig, method: FewShotMethod, *, step: int,
                             val_accuracy: float) -> dict[str, Any]:
    """The cached path's checkpoint format with the manifest in place of the store's metadata."""
    state, partial = trainable_state(method)
    return {
        "format": CHECKPOINT_FORMAT,
        "method": config.method,
        "knobs": to_dict(method.config),
        "feature_dim": 0,
        "view": "auto",
        "resolved_view": "pixels",
        "state_dict": state,
        "frozen_rebuilt": partial,
        "train_config": to_dict(config),
        "store_meta": None,
        "manifest": str(config.manifest),
        "frames": config.frames,
        "step": step,
        "val_accuracy": val_accuracy,
    }


def train_stream(config: TrainConfig, sampler: EpisodeSampler, videos: SplitVideos, preprocess: Any, *,
                 rank: int, world_size: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This worker's decoded training episodes, decoded in a local thread pool (``workers=0``)."""
    decoder = EpisodeDecoder(videos, config.frames, preprocess, seed=config.seed, train=True)
    per_worker = episodes_per_worker(config, world_size)
    table = episode_table(sampler, rank=rank, world_size=world_size, episodes_per_step=per_worker,
                          steps=config.steps, start_step=start_step)
    return local_episode_stream(decoder, table, episodes_per_step=per_worker, threads=config.decode_threads)


def pixel_training_step(loss_module: nn.Module, opt: torch.optim.Optimizer, method: nn.Module, pixels: Tensor,
                        s_lab: Tensor, q_lab: Tensor, config: TrainConfig, *, per_forward: int, device: torch.device,
                        preprocess: Any, weight: float = 1.0) -> tuple[Tensor, Tensor]:
    """One optimiser step on a step's decoded episodes (the scheduler is stepped by the caller).

    ``pixels`` ``(k, V, T, 3, S, S)`` uint8 on the host, support videos first in each episode; ``s_lab``
    ``(way·shot,)`` and ``q_lab`` ``(way·query,)`` on ``device``. ``per_forward`` episodes at a time are
    copied from pinned memory, normalised on the device and run under bf16 autocast on CUDA, gradients
    accumulated (DDP synchronises on the last micro-batch only); ``weight`` 0 makes the step a no-op for the
    weights (a step with no complete episode, kept so every DDP rank runs the same passes). Returns the
    step's mean loss and accuracy as detached device scalars: nothing here waits for the device.
    """
    n_support = config.way * config.shot
    method.train()
    opt.zero_grad(set_to_none=True)
    losses, accs = [], []
    chunks = list(range(0, len(pixels), per_forward))
    for i, start in enumerate(chunks):
        clips = normalise(to_device(pixels[start : start + per_forward], device), preprocess)
        e = clips.shape[0]
        sync = loss_module.no_sync() if i + 1 < len(chunks) and hasattr(loss_module, "no_sync") else contextlib.nullcontext()
        with sync:
            with autocast(device):
                loss, acc, _ = loss_module(clips[:, :n_support], s_lab.expand(e, -1), clips[:, n_support:],
                                           q_lab.expand(e, -1), config.way)
            (loss * (weight * e / len(pixels))).backward()
        losses.append(loss.detach() * e)
        accs.append(acc.detach() * e)
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
    opt.step()
    return torch.stack(losses).sum() / len(pixels), torch.stack(accs).sum() / len(pixels)


def frame_train_worker(config: TrainConfig, *, rank: int = 0, world_size: int = 1, report: Report,
                       wrap: Any = lambda m: m, device: torch.device | None = None, start_step: int = 0,
                       state: dict[str, Any] | None = None,
                       batches: Iterable[dict[str, np.ndarray]] | None = None) -> None:
    """``fsar.training.train_worker`` for pixels methods (same reports and checkpoint payloads).

    ``batches``: this worker's decoded steps from ``start_step`` on (dicts with ``episode`` ``(k,)``,
    ``pixels`` ``(k, V, T, 3, S, S)`` uint8, ``ok`` ``(k,)``, ``failed`` ``(k,)``), ``k`` = this worker's
    share of ``episodes_per_step``), e.g. a Ray Data shard; None decodes them here in a thread pool.

    On CUDA each step's uint8 clips are pinned and copied asynchronously, the backbone runs under bf16
    autocast (the metric in fp32, see ``fsar.ops.precision``), and losses stay on the device until a report:
    nothing waits for the device within a step.
    """
    torch.set_num_threads(max(1, config.threads_per_worker))
    device = training_device(config, assigned=device)
    per_worker = episodes_per_worker(config, world_size)
    train = read_split_videos(config.manifest, "train")
    method = build_for_training(config, 0)
    check_frames(config, method)
    best = -1.0
    if state is not None:
        load_partial_state(method, state["state_dict"], where="resume checkpoint")
        best = float(state.get("best_val_accuracy", state.get("val_accuracy", -1.0)))
    method.to(device)
    preprocess = method.preprocess
    loss_module = wrap(EpisodicLoss(method))
    opt, schedule = make_optimizer(config, [p for p in method.parameters() if p.requires_grad])
    if state is not None and "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
    sampler = EpisodeSampler(train.labels, way=config.way, shot=config.shot, query=config.query, seed=config.seed,
                             class_names=train.class_names, split="train")
    if batches is None:
        batches = train_stream(config, sampler, train, preprocess, rank=rank, world_size=world_size,
                               start_step=start_step)
    val_pixels = val_eps = None
    if rank == 0:  # the val split decoded once (segment centres), reused by every validation
        val = read_split_videos(config.manifest, config.val_split)
        val_pixels, ok, errors = decode_split(val, frames=config.frames, preprocess=preprocess,
                                              threads=config.decode_threads, desc="decode val")
        if errors:
            print(f"validation: {len(errors)} video(s) could not be decoded and are left out, e.g. "
                  f"{next(iter(errors.values()))}")
        val = val.subset(ok)
        val_pixels = val_pixels[ok]
        val_eps = validation_sampler(config, val.labels, val.class_names).batch(0, config.val_episodes)
    way = config.way
    s_lab = host_to_device(episode_labels(way, config.shot), device)
    q_lab = host_to_device(episode_labels(way, config.query), device)
    per_forward = config.episodes_per_forward or per_worker
    window: list[tuple[Tensor, Tensor]] = []
    failed_videos = incomplete = 0
    started = time.perf_counter()
    batch_iter = iter(batches)
    for step in range(start_step, config.steps):
        batch = next(batch_iter)
        pixels = torch.from_numpy(np.asarray(batch["pixels"]))
        ok = np.asarray(batch["ok"], dtype=bool)
        failed_videos += int(np.asarray(batch["failed"]).sum())
        incomplete += int((~ok).sum())
        # An episode that could not be filled is swapped for a complete one of the step (DDP needs every rank
        # to run the same number of backward passes, so the step is never skipped; weight 0 when none is good).
        weight = 1.0 if ok.any() else 0.0
        if not ok.all() and ok.any():
            pixels = pixels[np.where(ok, np.arange(len(ok)), np.flatnonzero(ok)[0])]
        window.append(pixel_training_step(loss_module, opt, method, pixels, s_lab, q_lab, config, weight=weight,
                                          per_forward=per_forward, device=device, preprocess=preprocess))
        schedule.step()
        last = step + 1 == config.steps
        if (step + 1) % config.val_every == 0 or last:
            metrics = window_metrics(window, step=step + 1, lr=float(schedule.get_last_lr()[0]),
                                     episodes=len(window) * config.episodes_per_step, started=started)
            metrics |= {"failed_videos": float(failed_videos), "incomplete_episodes": float(incomplete)}
            window.clear()
            payload = None
            if rank == 0:
                acc = pixel_episode_accuracies(method, val_pixels, val_eps, preprocess=preprocess,
                                               chunk=config.encode_chunk, batch_size=VAL_EPISODE_BATCH, device=device)
                val_acc, val_ci = accuracy_ci(acc)
                improved = val_acc > best
                best = max(best, val_acc)
                metrics |= {"val_accuracy": val_acc, "val_ci95": val_ci, "best_val_accuracy": best,
                            "is_best": float(improved)}
                payload = frame_checkpoint_payload(config, method, step=step + 1, val_accuracy=val_acc)
                payload |= {"optimizer": opt.state_dict(), "scheduler": schedule.state_dict(),
                            "best_val_accuracy": best}
            report(metrics, payload)
            started = time.perf_counter()

