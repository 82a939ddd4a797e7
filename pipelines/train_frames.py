"""Ray Data → Ray Train for end-to-end (pixels) methods: decoded, augmented episodes streamed to each worker.

``pipelines/train.py`` runs the same TorchTrainer for every method; for a manifest run it adds the
datasets built here and its workers run ``frame_worker``. Worker ``r`` of ``W`` gets its own dataset
``train_rank{r}``: the records of exactly the episodes ``EpisodeSampler.stream(rank=r)`` gives it (episode
e depends only on (seed, e)), decoded by Ray Data tasks (``map_batches``, only the sampled frames) and
delivered in order. Per-rank datasets (not one ``streaming_split``) keep a run reproducible: a dynamic split
would hand episodes to whichever worker asks first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fsar.data.episodes import EpisodeSampler
from fsar.frame_episodes import EpisodeDecoder, decode_records, episode_table, read_split_videos
from fsar.training import TrainConfig, build_for_training, episodes_per_worker

DATASET_PREFIX = "train_rank"


def episode_datasets(config: TrainConfig, *, preprocess: Any = None) -> dict[str, Any]:
    """One lazy Ray Dataset of decoded training episodes per worker (``train_rank{r}``)."""
    import ray.data

    videos = read_split_videos(config.manifest, "train")
    if preprocess is None:
        preprocess = build_for_training(config, 0).preprocess
    sampler = EpisodeSampler(videos.labels, way=config.way, shot=config.shot, query=config.query, seed=config.seed,
                             class_names=videos.class_names, split="train")
    decoder = EpisodeDecoder(videos, config.frames, preprocess, seed=config.seed, train=True)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver follows metrics.jsonl instead
    out = {}
    per_worker = episodes_per_worker(config, config.workers)
    for rank in range(config.workers):
        table = episode_table(sampler, rank=rank, world_size=config.workers, episodes_per_step=per_worker,
                              steps=config.steps)
        items = [{"episode": int(e), "rows": r} for e, r in zip(table["episode"], table["rows"], strict=True)]
        # One episode per task: decoding ~25 videos is the unit of work, and small tasks keep a worker fed early.
        ds = ray.data.from_items(items).map_batches(decode_records, fn_kwargs={"decoder": decoder}, batch_size=1,
                                                    batch_format="numpy")
        ds.context.execution_options.preserve_order = True  # steps arrive in order, whoever consumes them
        out[f"{DATASET_PREFIX}{rank}"] = ds
    return out


def trainer_kwargs(config: TrainConfig) -> dict[str, Any]:
    """Extra ``TorchTrainer`` arguments: the per-rank episode datasets of a manifest run with Ray workers."""
    if config.manifest is None or config.workers < 1:
        return {}
    from ray.data import ExecutionOptions
    from ray.train import DataConfig

    # Not split: each worker reads only its own dataset; preserve_order keeps step order.
    return {"datasets": episode_datasets(config),
            "dataset_config": DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))}


def shard_batches(config: TrainConfig, rank: int, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """This worker's decoded steps from its dataset shard; a resumed worker skips the steps it has done
    (the dataset restarts from the first episode, so those are decoded again and dropped)."""
    import ray.train

    shard = ray.train.get_dataset_shard(f"{DATASET_PREFIX}{rank}")
    per_worker = episodes_per_worker(config, config.workers)
    batches = shard.iter_batches(batch_size=per_worker, batch_format="numpy", prefetch_batches=2)
    for step, batch in enumerate(batches):
        expected = (step * config.workers + rank) * per_worker
        if int(batch["episode"][0]) != expected:
            raise RuntimeError(f"rank {rank}: step {step} got episode {int(batch['episode'][0])}, expected {expected}")
        if step >= start_step:
            yield batch


def frame_worker(config: TrainConfig, *, rank: int, world_size: int, start_step: int = 0, **kw: Any) -> None:
    """Ray Train worker body of a manifest run: the episode stream from Ray Data (or a local thread pool in
    ``workers=0`` mode), then ``frame_train_worker`` (``kw``: report, wrap, the worker's device, state)."""
    from fsar.frame_training import frame_train_worker

    batches = shard_batches(config, rank, start_step) if config.workers > 0 else None
    frame_train_worker(config, rank=rank, world_size=world_size, start_step=start_step, batches=batches, **kw)
