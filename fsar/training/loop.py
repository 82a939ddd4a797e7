"""The episodic training loop, for every method and both kinds of data, independent of Ray.

``pipelines/train.py`` runs ``train_worker`` in each Ray Train worker (or in this process); the loop takes
the worker's rank, world size, device and a ``report`` callback, nothing Ray-specific::

    source = open_source(config)                      store → cached features | manifest → decoded clips
    method = source.build_method()                    seeded, sized for the data, on the worker's device
    for step: batch = next(source.steps(...))         this worker's share of the global episodes_per_step
              training_step(...)                      episodes_per_forward at a time, gradients accumulated
              every val_every steps: report(metrics, checkpoint on rank 0 after validating)

Each worker runs ``episodes_per_step / world_size`` episodes per step and DDP averages the gradients, so
the worker count changes speed, not the experiment. Losses stay on the device until a report: nothing
waits for the device within a step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fsar.config import ConfigError
from fsar.data.episodes import episode_labels
from fsar.devices import autocast, host_to_device
from fsar.evaluation.results import accuracy_ci
from fsar.evaluation.scoring import episode_accuracies
from fsar.methods import FewShotMethod
from fsar.methods.base import Supervision
from fsar.sources import open_source
from fsar.sources.base import EpisodeSource, StepBatch, Validation
from fsar.training.checkpoint import checkpoint_payload, load_partial_state, warm_start
from fsar.training.config import TrainConfig, check_device_settings, episodes_per_worker, training_device

Report = Callable[[dict[str, float], dict[str, Any] | None], None]


class EpisodicLoss(nn.Module):
    """Cross-entropy of a method's query logits plus its auxiliary losses — the module DDP wraps, so
    gradient all-reduce sees one forward per step whatever the method returns."""

    def __init__(self, method: FewShotMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor,
                way: int, class_text: Tensor | None = None,
                supervision: Supervision | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Batched episodes in; (total loss, query accuracy, auxiliary losses) out."""
        supervision = supervision or Supervision()
        supervision.query_labels = query_labels
        out = self.method.forward_with_aux(support, support_labels, query, way, class_text=class_text,
                                           supervision=supervision)
        loss = nn.functional.cross_entropy(out.logits.reshape(-1, way), query_labels.reshape(-1))
        accuracy = (out.logits.argmax(-1) == query_labels).float().mean()
        total = loss + sum(out.aux.values(), torch.zeros((), device=loss.device))
        return total, accuracy, {"ce": loss.detach(), **{k: v.detach() for k, v in out.aux.items()}}


def check_training_inputs(config: TrainConfig) -> None:
    """Everything a training job can get wrong, found before any worker starts and without reading feature
    bytes or decoding videos: devices and the global batch, the data against the method, impossible episodes."""
    check_device_settings(config)
    source = open_source(config)
    source.check()
    if config.init_from is not None:
        warm_start(source.build_method(), config.init_from)


def parameter_groups(config: TrainConfig, method: nn.Module) -> list[dict[str, Any]]:
    """The optimiser's groups: the method's trainable parameters at ``lr`` and, for a method on a backbone stage,
    the encoder's at ``lr × data.stage.lr_scale`` (its own group, so the schedule scales both alike)."""
    stage = getattr(method, "stage", None)
    encoder = stage.encoder_parameters() if stage is not None else []
    taken = {id(p) for p in encoder}
    groups = [{"params": [p for p in method.parameters() if p.requires_grad and id(p) not in taken], "lr": config.lr}]
    if encoder:
        groups.append({"params": encoder, "lr": config.lr * stage.settings.lr_scale})
    return [g for g in groups if g["params"]]


def make_optimizer(config: TrainConfig, params: list[nn.Parameter] | list[dict[str, Any]]
                   ) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and its schedule: linear warm-up, then cosine decay to 0. ``params``: parameters, or
    groups with their own ``lr`` (``parameter_groups``)."""
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def validate(method: nn.Module, validation: Validation, device: torch.device) -> tuple[float, float]:
    """Validation accuracy and its 95% CI, percent; every video encoded once, on ``device``."""
    return accuracy_ci(episode_accuracies(method, validation.split, validation.episodes, device=device,
                                          class_text=validation.class_text, batch_size=validation.batch_size))


def window_metrics(window: list[tuple[Tensor, Tensor]], *, step: int, lr: float, episodes: int,
                   started: float) -> dict[str, float]:
    """The training metrics of one validation interval: mean loss and accuracy (%) of its steps' (loss,
    accuracy) pairs — device scalars, read here once per interval rather than once per step — the learning
    rate, and episodes/s since ``started`` (a ``perf_counter`` time).

    Under DDP every worker calls this at the same step, and the loss and accuracy are averaged over the
    workers (equal shares of each step's episodes), so they describe the whole global batch whatever the
    worker count."""
    means = torch.stack([torch.stack([w[0] for w in window]).float().mean(),
                         torch.stack([w[1] for w in window]).float().mean()])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(means)  # SUM: gloo has no AVG
        means = means / torch.distributed.get_world_size()
    loss, accuracy = means.tolist()
    return {"step": step, "train_loss": loss, "train_accuracy": 100.0 * accuracy, "lr": lr,
            "episodes_per_s": episodes / (time.perf_counter() - started)}


class TrainingDiverged(ConfigError):
    """Too many steps in a row had a non-finite loss or gradient (``max_nonfinite_steps``)."""


def any_rank_has_episodes(weight: float, *, may_skip: bool, device: torch.device) -> bool:
    """Whether some worker's share of this step holds a complete episode. Gradients are averaged over the
    workers, so every worker must take the same decision: with DDP the weights are summed over them (one
    small all-reduce, made only by sources that can yield an empty step)."""
    if not may_skip:
        return True
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        total = torch.tensor([weight], device=device)
        torch.distributed.all_reduce(total)
        return bool(total.item() > 0)
    return weight > 0


def training_step(loss_module: nn.Module, opt: torch.optim.Optimizer, method: FewShotMethod, source: EpisodeSource,
                  batch: StepBatch, config: TrainConfig, s_lab: Tensor, q_lab: Tensor, *, per_forward: int,
                  device: torch.device) -> tuple[Tensor, Tensor, bool, bool]:
    """One optimiser step on a step's episodes (the scheduler is stepped by the caller).

    ``per_forward`` episodes at a time go to the device as the method's input and through the loss, under
    bf16 autocast when the source asks for it on CUDA, gradients accumulated (DDP synchronises on the last
    micro-batch only). A step in which no worker has a complete episode (``batch.weight`` 0 everywhere)
    still runs its backward pass, so DDP ranks stay in step, but is not applied: the optimiser does not
    step, so weight decay, momentum and moment estimates leave every weight and optimiser state as it was.
    ``s_lab`` ``(way·shot,)`` and ``q_lab`` ``(way·query,)`` are on ``device``. Returns the step's loss and
    accuracy as detached device scalars, whether the step was applied, and whether its gradients were finite
    (a step with a NaN or Inf gradient is not applied either). Nothing here waits for the device but the
    gradient norm's check, and a source that can yield empty steps asking the workers whether any had episodes."""
    n_support, k = config.way * config.shot, len(batch.inputs)
    method.train()
    opt.zero_grad(set_to_none=True)
    losses, accuracies = [], []
    starts = list(range(0, k, per_forward))
    for i, start in enumerate(starts):
        videos = source.method_inputs(batch.inputs[start : start + per_forward], method, device)
        episodes = None if batch.episodes is None else batch.episodes[start : start + per_forward]
        class_text, supervision = source.episode_extras(episodes, method, device)
        e = videos.shape[0]
        last = i + 1 == len(starts)
        sync = contextlib.nullcontext() if last or not hasattr(loss_module, "no_sync") else loss_module.no_sync()
        with sync:
            with autocast(device, enabled=source.autocast):
                loss, acc, _ = loss_module(videos[:, :n_support], s_lab.expand(e, -1), videos[:, n_support:],
                                           q_lab.expand(e, -1), config.way, class_text, supervision)
            (loss * (batch.weight * e / k)).backward()
        losses.append(loss.detach() * e)
        accuracies.append(acc.detach() * e)
    applied = any_rank_has_episodes(batch.weight, may_skip=source.may_skip_steps, device=device)
    finite = True
    if applied:
        # The gradient norm (all-reduced by DDP: every rank decides alike) tells a NaN or Inf loss or gradient,
        # which would poison every weight it reached: such a step is skipped and counted, never applied.
        # Reading it back waits for the step, as AMP's inf check does.
        norm = torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip if config.grad_clip > 0
                                              else float("inf"))
        finite = norm.device.type == "meta" or bool(torch.isfinite(norm).item())  # meta tensors hold no values
        if finite:
            opt.step()
    return torch.stack(losses).sum() / k, torch.stack(accuracies).sum() / k, applied and finite, finite


def train_worker(config: TrainConfig, *, rank: int = 0, world_size: int = 1, report: Report,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m, device: torch.device | None = None,
                 start_step: int = 0, state: dict[str, Any] | None = None, split_loader: Any = None) -> None:
    """Train on this worker's episode stream; call ``report(metrics, checkpoint_or_None)`` every ``val_every``
    steps. Rank 0 validates and passes the checkpoint payload (latest weights, optimiser state;
    ``metrics["is_best"]`` says whether validation improved); other ranks pass None.

    ``device``: the device Ray assigned this worker (None in-process; see ``training_device``). ``wrap`` makes
    the loss module distributed (DDP) once it is on its device; ``state`` resumes from a checkpoint payload,
    and the episode stream then starts at its step (a resumed end-to-end run decodes no completed step again).
    ``split_loader``: how store splits are read (a Ray job shares one copy per node: pipelines.node_features).
    """
    torch.set_num_threads(max(1, config.threads_per_worker))
    device = training_device(config, assigned=device)
    per_worker = episodes_per_worker(config, world_size)
    source = open_source(config, split_loader=split_loader)
    method = source.build_method()
    best = -1.0
    if state is not None:
        load_partial_state(method, state["state_dict"], where="resume checkpoint")
        best = float(state.get("best_val_accuracy", state.get("val_accuracy", -1.0)))
    elif config.init_from is not None:  # a resumed run has its own weights; only a fresh one warm-starts
        warm_start(method, config.init_from)
    method.to(device)
    loss_module = wrap(EpisodicLoss(method))
    opt, schedule = make_optimizer(config, parameter_groups(config, method))
    if state is not None and "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
    steps = source.steps(method, rank=rank, world_size=world_size, per_worker=per_worker, start_step=start_step,
                         device=device)
    validation = source.validation(method, device) if rank == 0 else None
    s_lab = host_to_device(episode_labels(config.way, config.shot), device)
    q_lab = host_to_device(episode_labels(config.way, config.query), device)
    per_forward = config.episodes_per_forward or per_worker
    window: list[tuple[Tensor, Tensor]] = []
    # Videos that failed to decode, episodes that could not be filled, steps with no episode (not applied),
    # steps whose loss or gradients were not finite (not applied).
    failed = np.zeros(4, dtype=np.int64)
    in_a_row = 0
    started = time.perf_counter()
    for step in range(start_step, config.steps):
        batch = next(steps)
        loss, accuracy, applied, finite = training_step(loss_module, opt, method, source, batch, config, s_lab, q_lab,
                                                        per_forward=per_forward, device=device)
        failed += (batch.failed_videos, batch.incomplete_episodes, not applied and finite, not finite)
        in_a_row = 0 if finite else in_a_row + 1
        if config.max_nonfinite_steps and in_a_row >= config.max_nonfinite_steps:
            raise TrainingDiverged(
                f"training stopped at step {step + 1}: {in_a_row} steps in a row had a NaN or Inf loss or gradient "
                f"(none was applied; the best checkpoint so far is kept). Lower lr, set grad_clip, or check the "
                f"inputs; max_nonfinite_steps={config.max_nonfinite_steps} sets how many in a row stop a run")
        window.append((loss, accuracy))
        schedule.step()  # the schedule follows the step number: a skipped step does not shift later ones
        if (step + 1) % config.val_every and step + 1 != config.steps:
            continue
        metrics = window_metrics(window, step=step + 1, lr=float(schedule.get_last_lr()[0]),
                                 episodes=len(window) * config.episodes_per_step, started=started)
        if config.source == "manifest":
            metrics |= {"failed_videos": float(failed[0]), "incomplete_episodes": float(failed[1]),
                        "skipped_steps": float(failed[2])}
        metrics["nonfinite_steps"] = float(failed[3])
        window.clear()
        payload = None
        if validation is not None:
            val_acc, val_ci = validate(method, validation, device)
            improved = val_acc > best
            best = max(best, val_acc)
            metrics |= {"val_accuracy": val_acc, "val_ci95": val_ci, "best_val_accuracy": best,
                        "is_best": float(improved)}
            payload = checkpoint_payload(config, method, step=step + 1, val_accuracy=val_acc,
                                         data_fields=source.checkpoint_fields())
            payload |= {"optimizer": opt.state_dict(), "scheduler": schedule.state_dict(), "best_val_accuracy": best}
        report(metrics, payload)
        started = time.perf_counter()
