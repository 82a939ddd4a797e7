"""Episodic training on cached features, independent of Ray: the loss module, one optimiser step,
validation on fixed episodes, and checkpoints that carry their own config.

``pipelines/train.py`` runs ``train_worker`` in each Ray Train worker (or in this process); the
functions here take the worker's rank and world size and a ``report`` callback, nothing Ray-specific.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from fsar.atomic import atomic_path
from fsar.config import ConfigError
from fsar.data.episodes import Episodes, EpisodeSampler
from fsar.data.feature_store import FeatureStore, SplitFeatures, View
from fsar.eval import (
    accuracy_ci,
    episode_accuracies,
    episode_class_text,
    episode_indices,
    episode_label_tensors,
    to_device,
)
from fsar.mask_supervision import check_mask_inputs, load_mask_table
from fsar.methods import FewShotMethod, build_method, method_info
from fsar.methods.base import Supervision

CHECKPOINT_FORMAT = "fsar-checkpoint/1"


@dataclass
class TrainConfig:
    """``fsar train``: one method trained episodically on a feature store's train split (pixels methods:
    on a manifest's decoded videos, see ``fsar.frame_training``)."""

    method: str  # registered method name (`fsar methods`)
    out: Path  # run folder: best.pt, train_config.yaml, metrics, mlflow.db
    store: Path | None = None  # feature store folder (from `fsar embed`), for cached-feature methods
    manifest: Path | None = None  # manifest.parquet, for end-to-end (input kind pixels) methods instead of a store
    knobs: dict[str, Any] = field(default_factory=dict)  # the method's config fields, e.g. {proj_dim: 256}
    way: int = 5  # classes per training episode
    shot: int = 1  # support videos per class
    query: int = 4  # query videos per class in training episodes
    steps: int = 500  # optimiser steps
    episodes_per_step: int = 8  # episodes per optimiser step over all workers together, split evenly across them
    lr: float = 1e-3  # learning rate
    optimizer: Literal["adamw", "sgd"] = "adamw"  # optimiser
    weight_decay: float = 1e-4  # decoupled weight decay (AdamW) or L2 (SGD)
    warmup_steps: int = 20  # linear warm-up, then cosine decay to 0
    grad_clip: float = 5.0  # max gradient norm (0 = off)
    val_every: int = 50  # validate every this many steps (and at the last step)
    val_episodes: int = 500  # fixed validation episodes (seed `seed + 1`), 1 query per class
    val_split: str = "val"  # split validated on; never the test split
    seed: int = 0  # training episodes and initialisation seed
    view: Literal["auto", "pooled", "grid", "patches"] = "auto"  # features read: pooled, flattened grid, or patch grid (auto: what the method takes)
    backbone: str | None = None  # if set, refuse a store built with another backbone
    workers: int = 0  # Ray Train workers (0 = run the loop in this process)
    use_gpu: bool = False  # one GPU per Ray Train worker
    device: str = "auto"  # auto (the worker's GPU with use_gpu, CUDA in-process when present, else CPU), cpu, cuda, cuda:N
    feature_placement: Literal["auto", "device", "host"] = "auto"  # cached features: whole splits on the device, or fp16 on the host with each step's episodes copied over; auto = device when they fit in a quarter of its free memory
    threads_per_worker: int = 1  # torch CPU threads per worker
    mlflow_uri: str | None = None  # MLflow tracking URI (default: sqlite file in the run folder)
    experiment: str = "fsar"  # MLflow experiment name
    mlflow_parent_run_id: str | None = None  # set by a sweep: the run is logged as this run's child
    frames: int = 8  # pixels methods: frames decoded per video (TSN segments; random offsets in training)
    episodes_per_forward: int = 0  # pixels methods: episodes per forward/backward, gradients accumulated (0 = a whole step)
    decode_threads: int = 0  # pixels methods, workers=0: parallel decodes in this process (0 = number of CPUs)
    encode_chunk: int = 32  # pixels methods: videos per no-grad encoder forward at validation


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
        logits, aux = self.method.forward_with_aux(support, support_labels, query, way, class_text=class_text,
                                                   supervision=supervision)
        loss = nn.functional.cross_entropy(logits.reshape(-1, way), query_labels.reshape(-1))
        accuracy = (logits.argmax(-1) == query_labels).float().mean()
        total = loss + sum(aux.values(), torch.zeros((), device=loss.device))
        return total, accuracy, {"ce": loss.detach(), **{k: v.detach() for k, v in aux.items()}}


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


def episodes_per_worker(config: TrainConfig, world_size: int) -> int:
    """Each worker's share of the global ``episodes_per_step``; a count the workers cannot split evenly is
    refused (uneven shares would weigh the workers' gradients unequally)."""
    if config.episodes_per_step < 1:
        raise ConfigError(f"episodes_per_step must be >= 1, got {config.episodes_per_step}")
    if config.episodes_per_step % world_size:
        raise ConfigError(
            f"episodes_per_step={config.episodes_per_step} (episodes per optimiser step, over all workers) does not "
            f"divide among {world_size} workers; use a multiple of {world_size}"
        )
    return config.episodes_per_step // world_size


def check_device_settings(config: TrainConfig) -> None:
    """``device`` and ``use_gpu`` must agree, and the global batch must split across the workers."""
    episodes_per_worker(config, max(1, config.workers))
    named = config.device.split(":")[0]
    if named not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={config.device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if config.use_gpu and named == "cpu":
        raise ConfigError("use_gpu=true trains on a GPU but device=cpu on the CPU; drop one of them")
    if config.workers > 0 and named == "cuda" and not config.use_gpu:
        raise ConfigError(f"device={config.device} with Ray workers needs use_gpu=true (Ray assigns the GPUs)")


def training_device(config: TrainConfig, *, assigned: torch.device | None = None) -> torch.device:
    """Where one worker trains. ``assigned``: the device Ray gave this worker (``ray.train.torch.get_device()``
    in a Ray Train worker, the trial's GPU or CPU in a Tune trial), None in-process.

    A named ``device`` wins; ``auto`` takes the assigned device, else CUDA when ``use_gpu`` or when present.
    """
    if config.device != "auto":
        return resolve_device(config.device)
    if assigned is not None:
        return assigned
    return resolve_device("cuda" if config.use_gpu else "auto")


def open_store(config: TrainConfig) -> tuple[FeatureStore, View]:
    """Open the store and check it and the config against each other; the per-frame view to read."""
    from fsar.frame_training import check_data_source

    check_data_source(config)  # a pixels method given a store (or the reverse) is told what to pass
    info = method_info(config.method)
    if config.val_split == "test":
        raise ConfigError("val_split=test: model selection on the test split is not allowed; validate on 'val'")
    store = FeatureStore(config.store)
    view = store.meta.view_for(info.input_kind, config.view)
    store.check(backbone=config.backbone, view=view)
    return store, view


def load_features(config: TrainConfig) -> tuple[FeatureStore, View, SplitFeatures, SplitFeatures]:
    """Open and check the store; the train and validation splits' features (fp16, host memory), shaped
    for the method's input kind."""
    store, view = open_store(config)
    as_grid = method_info(config.method).input_kind == "patches"
    return (store, view, store.load_split("train", view=view, as_grid=as_grid),
            store.load_split(config.val_split, view=view, as_grid=as_grid))


def class_text_table(store: FeatureStore, method_name: str) -> Tensor | None:
    """The store's class-name embeddings ``(n_labels, E)`` (a small table), or None when it has none.

    A method that cannot work without text (``needs_text``) on a store without it is refused. The method is
    then built with ``text_dim`` set from this table, so it owns text parameters only when there is text."""
    table = store.class_text()
    if table is None:
        if method_info(method_name).needs_text:
            raise ConfigError(f"method {method_name} needs class-name text embeddings but store {store.root} "
                              "has none: re-embed with a CLIP backbone that has a text tower")
        return None
    return torch.from_numpy(table)


def check_training_inputs(config: TrainConfig) -> None:
    """Everything a training job can get wrong, found before any worker starts and without reading
    feature bytes: method and knobs, store and backbone, view, impossible training or validation episodes."""
    check_device_settings(config)
    if config.manifest is not None:  # end-to-end (pixels) methods train on decoded videos
        from fsar.frame_training import check_frame_inputs

        check_frame_inputs(config)
        return
    store, view = open_store(config)
    text = class_text_table(store, config.method)
    method = build_for_training(config, store.meta.view_dim(view), text_dim=None if text is None else text.shape[-1])
    check_clip_length(method, store.meta.frames, source=f"per video are in store {store.root}")
    check_mask_inputs(method, store)
    labels, names = store.split_labels("train")
    EpisodeSampler(labels, way=config.way, shot=config.shot, query=config.query, seed=config.seed,
                   class_names=names, split="train")
    validation_sampler(config, *store.split_labels(config.val_split))


def build_for_training(config: TrainConfig, feature_dim: int, *, text_dim: int | None = None) -> FewShotMethod:
    """The method with the run's seeded initialisation; one without learnable parameters is refused."""
    torch.manual_seed(config.seed)
    method = build_method(config.method, feature_dim=feature_dim, text_dim=text_dim, **config.knobs)
    if not any(p.requires_grad for p in method.parameters()):
        raise ConfigError(
            f"method {config.method} has no learnable parameters with knobs {config.knobs}; "
            "give it some (e.g. knobs.proj_dim=256) or evaluate it untrained with `fsar eval`"
        )
    return method


def check_clip_length(method: FewShotMethod, frames: int, *, source: str) -> None:
    """A method with a fixed clip length (DMGAL's time mixer: ``num_frames``) must get that many frames;
    ``source`` says where the count comes from, for the message."""
    wanted = getattr(method.config, "num_frames", None)
    if wanted is not None and wanted != frames:
        raise ConfigError(f"{method.method_name}: knobs.num_frames={wanted} but {frames} frames {source}; "
                          f"set knobs.num_frames={frames}")


def make_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
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


def validation_sampler(config: TrainConfig, labels: np.ndarray, class_names: dict[int, str]) -> EpisodeSampler:
    """The validation episode sampler: 1 query per class, seed ``seed + 1`` (never the training stream)."""
    return EpisodeSampler(labels, way=config.way, shot=config.shot, query=1, seed=config.seed + 1,
                          class_names=class_names, split=config.val_split)


def validation_episodes(config: TrainConfig, split: SplitFeatures) -> Episodes:
    """The fixed validation episodes of ``split``."""
    return validation_sampler(config, split.labels, split.class_names).batch(0, config.val_episodes)


def validate(method: nn.Module, features: Tensor, episodes: Episodes, *, device: torch.device,
             class_text: Tensor | None = None) -> tuple[float, float]:
    """Validation accuracy and its 95% CI, percent; every video encoded once, on ``device``."""
    return accuracy_ci(episode_accuracies(method, features, episodes, class_text=class_text, batch_size=500,
                                          device=device))


def checkpoint_payload(config: TrainConfig, method: FewShotMethod, *, feature_dim: int, text_dim: int | None,
                       step: int, val_accuracy: float, store_meta: dict[str, Any], resolved_view: str) -> dict[str, Any]:
    """A checkpoint is plain data (tensors, numbers, strings), loadable with ``weights_only=True``."""
    from fsar.config import to_dict

    return {
        "format": CHECKPOINT_FORMAT,
        "method": config.method,
        "knobs": to_dict(method.config),
        "feature_dim": feature_dim,
        "text_dim": text_dim,
        "view": config.view,
        "resolved_view": resolved_view,
        "state_dict": {k: v.detach().cpu() for k, v in method.state_dict().items()},
        "train_config": to_dict(config),
        "store_meta": store_meta,
        "step": step,
        "val_accuracy": val_accuracy,
    }


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | Path) -> tuple[FewShotMethod, dict[str, Any]]:
    """Rebuild a trained method from its checkpoint (untrusted input: ``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass a run folder holding best.pt, or the .pt file")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an fsar checkpoint (format {payload.get('format')!r})")
    method = build_method(payload["method"], feature_dim=payload["feature_dim"], text_dim=payload.get("text_dim"),
                          **payload["knobs"])
    if payload.get("frozen_rebuilt"):  # frozen weights were left out: rebuilt from pretrained/init_seed above
        from fsar.frame_training import load_partial_state

        load_partial_state(method, payload["state_dict"], where=str(path))
    else:
        method.load_state_dict(payload["state_dict"])
    method.eval()
    return method, payload


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
    return {
        "step": step,
        "train_loss": loss,
        "train_accuracy": 100.0 * accuracy,
        "lr": lr,
        "episodes_per_s": episodes / (time.perf_counter() - started),
    }


Report = Callable[[dict[str, float], dict[str, Any] | None], None]


def place_features(features: np.ndarray, device: torch.device, placement: str) -> Tensor:
    """A split's fp16 features ``(N, T, ...)`` where training reads them: on ``device`` (``placement=device``,
    or ``auto`` when they fit in a quarter of its free memory) or on the host. They stay fp16 either way and
    are cast per batch, so memory holds one fp16 copy, not a float32 one."""
    tensor = torch.from_numpy(np.array(features))  # a copy: store arrays are read-only views of Parquet buffers
    if device.type == "cpu" or placement == "host":
        return tensor
    if placement == "auto" and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if tensor.numel() * tensor.element_size() > free / 4:
            return tensor
    return to_device(tensor, device)


def episode_batch(features: Tensor, episodes: Episodes, device: torch.device) -> tuple[Tensor, Tensor]:
    """Support ``(E, way·shot, T, ...)`` and query ``(E, way·query, T, ...)`` of a batch of episodes, gathered
    where the features are and delivered to ``device`` in fp32 (a host gather is copied from pinned memory)."""
    s_idx, q_idx = episode_indices(episodes, features.device)
    return (to_device(features[s_idx], device, dtype=torch.float32),
            to_device(features[q_idx], device, dtype=torch.float32))


def train_worker(config: TrainConfig, *, rank: int = 0, world_size: int = 1, report: Report,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m, device: torch.device | None = None,
                 start_step: int = 0, state: dict[str, Any] | None = None) -> None:
    """Train on this worker's episode stream; call ``report(metrics, checkpoint_or_None)`` every
    ``val_every`` steps. Rank 0 validates and passes the checkpoint payload (latest weights, optimiser
    state; ``metrics["is_best"]`` says whether validation improved); other ranks pass None.

    ``device``: the device Ray assigned this worker (None in-process; see ``training_device``). ``wrap`` makes
    the loss module distributed (DDP) once it is on its device; ``state`` resumes from a checkpoint payload.
    Each of the ``world_size`` workers runs ``episodes_per_step / world_size`` episodes per step, so the
    worker count changes speed, not the experiment.
    """
    if config.manifest is not None:  # end-to-end (pixels) methods: decoded episodes instead of cached features
        from fsar.frame_training import frame_train_worker

        return frame_train_worker(config, rank=rank, world_size=world_size, report=report, wrap=wrap, device=device,
                                  start_step=start_step, state=state)
    torch.set_num_threads(max(1, config.threads_per_worker))
    device = training_device(config, assigned=device)
    per_worker = episodes_per_worker(config, world_size)
    store, view, train, val = load_features(config)
    feature_dim = train.features.shape[-1]
    text = class_text_table(store, config.method)
    text_dim = None if text is None else text.shape[-1]
    method = build_for_training(config, feature_dim, text_dim=text_dim)
    best = -1.0
    if state is not None:
        method.load_state_dict(state["state_dict"])
        best = float(state.get("best_val_accuracy", state.get("val_accuracy", -1.0)))
    method.to(device)
    loss_module = wrap(EpisodicLoss(method))
    opt, schedule = make_optimizer(config, [p for p in method.parameters() if p.requires_grad])
    if state is not None and "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
    text = None if text is None or not method.uses_text else text.to(device)
    masks = load_mask_table(method, store, train, device=device)  # mask files (I2ST mask_source=files), else None
    train_feats = place_features(train.features, device, config.feature_placement)
    val_feats = place_features(val.features, device, config.feature_placement) if rank == 0 else None
    sampler = EpisodeSampler(train.labels, way=config.way, shot=config.shot, query=config.query, seed=config.seed,
                             class_names=train.class_names, split="train")
    val_eps = validation_episodes(config, val) if rank == 0 else None
    stream = sampler.stream(rank=rank, world_size=world_size, episodes_per_step=per_worker)
    for _ in range(start_step):  # a resumed run continues the same episode stream
        next(stream)
    s_lab, q_lab = episode_label_tensors(sampler.batch(0, per_worker), device)  # the same every step
    window: list[tuple[Tensor, Tensor]] = []
    started = time.perf_counter()
    for step in range(start_step, config.steps):
        episodes = next(stream)
        support, query = episode_batch(train_feats, episodes, device)
        loss, acc = training_step(loss_module, opt, method, support, s_lab, query, q_lab, config,
                                  class_text=episode_class_text(text, episodes),
                                  supervision=None if masks is None else masks.supervision(episodes))
        schedule.step()
        window.append((loss, acc))
        last = step + 1 == config.steps
        if (step + 1) % config.val_every == 0 or last:
            metrics = window_metrics(window, step=step + 1, lr=float(schedule.get_last_lr()[0]),
                                     episodes=len(window) * config.episodes_per_step, started=started)
            window.clear()
            payload = None
            if rank == 0:
                val_acc, val_ci = validate(method, val_feats, val_eps, class_text=text, device=device)
                metrics |= {"val_accuracy": val_acc, "val_ci95": val_ci}
                improved = val_acc > best
                best = max(best, val_acc)
                metrics |= {"best_val_accuracy": best, "is_best": float(improved)}
                payload = checkpoint_payload(config, method, feature_dim=feature_dim, text_dim=text_dim, step=step + 1,
                                             val_accuracy=val_acc, store_meta=dataclasses.asdict(store.meta),
                                             resolved_view=view)
                payload |= {"optimizer": opt.state_dict(), "scheduler": schedule.state_dict(),
                            "best_val_accuracy": best}
            report(metrics, payload)
            started = time.perf_counter()


def training_step(loss_module: nn.Module, opt: torch.optim.Optimizer, method: nn.Module, support: Tensor,
                  s_lab: Tensor, query: Tensor, q_lab: Tensor, config: TrainConfig, *,
                  class_text: Tensor | None = None, supervision: Supervision | None = None) -> tuple[Tensor, Tensor]:
    """One optimiser step on a batch of episodes (the scheduler is stepped by the caller); returns the loss
    and query accuracy as detached device scalars, so nothing here waits for the device."""
    method.train()
    loss, acc, _ = loss_module(support, s_lab, query, q_lab, config.way, class_text, supervision)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
    opt.step()
    return loss.detach(), acc.detach()
