"""``fsar eval --manifest``: end-to-end (pixels) methods and runs on fixed, seeded episodes of decoded videos.

The split is decoded once at segment centres (uint8, centre crop), videos that cannot be decoded are left
out before the episodes are drawn (as ``fsar embed`` leaves them out of a store), each candidate encodes
every video once (``encode_videos``, no grad, in chunks) and only the per-task part (DMGAL's C-MGA and
metric) runs per episode. Same episode file, ``results.json``, ``results.md`` and plot as the store path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsar.config import ConfigError, dump_yaml
from fsar.data.episodes import EpisodeSampler, read_episode_file, write_episode_file
from fsar.eval import PER_EPISODE_FILE, ResultRecord, accuracy_ci, write_per_episode
from fsar.frame_episodes import decode_split, pixel_episode_accuracies, read_split_videos
from fsar.methods import FewShotMethod, build_method, method_info
from fsar.training import load_checkpoint, resolve_device
from pipelines.evaluate import EvalConfig, episode_file_name, write_report

EPISODE_BATCH = 64  # episodes per per-task forward (DMGAL's last stage runs on every video of each episode)


@dataclass
class PixelCandidate:
    """One pixels method or run to score."""

    label: str  # row name in the results table
    run: str | None  # run folder or checkpoint, None for an untrained method
    method: FewShotMethod  # built (and, for a run, loaded) method
    frames: int  # frames per video it takes


def _candidates(config: EvalConfig) -> list[PixelCandidate]:
    out = []
    for name in config.methods:
        if method_info(name).input_kind != "pixels":
            raise ConfigError(f"method {name} reads cached features: evaluate it with --store STORE, not --manifest")
        knobs = config.knobs.get(name, {})
        label = name + (f"[{', '.join(f'{k}={v}' for k, v in sorted(knobs.items()))}]" if knobs else "")
        out.append(PixelCandidate(label, None, build_method(name, feature_dim=0, **knobs), config.frames))
    for run_path in config.runs:
        method, payload = load_checkpoint(run_path)
        if payload.get("store_meta") is not None or method.input_kind != "pixels":
            raise ConfigError(f"run {run_path} was trained on a feature store: evaluate it with --store, not --manifest")
        folder = Path(run_path).parent.name if Path(run_path).suffix == ".pt" else Path(run_path).name
        label = f"{payload['method']} (trained" + ("" if folder == payload["method"] else f": {folder}") + ")"
        out.append(PixelCandidate(label, str(run_path), method, int(payload.get("frames", config.frames))))
    if not out:
        raise ConfigError("nothing to evaluate: give --method NAME and/or --run RUN")
    return out


def run_frames(config: EvalConfig, *, progress: bool = True) -> list[ResultRecord]:
    """Evaluate every pixels method and run of ``config`` on the same episodes of the manifest's ``split``."""
    if (config.manifest is None) == (config.store is None):
        raise ConfigError("give --store STORE (cached-feature methods) or --manifest MANIFEST (end-to-end methods): "
                          f"{'both were' if config.manifest is not None else 'neither was'} given")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    candidates = _candidates(config)
    videos = read_split_videos(config.manifest, config.split)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml(config, out / f"eval_config-{config.shot}shot.yaml")
    decoded: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    def pixels_for(cand: PixelCandidate) -> tuple[np.ndarray, np.ndarray]:
        pre = cand.method.preprocess
        key = (cand.frames, pre.size, pre.interpolation)
        if key not in decoded:
            pixels, ok, errors = decode_split(videos, frames=cand.frames, preprocess=pre, progress=progress,
                                              desc=f"decode {config.split}")
            if errors:
                print(f"{len(errors)} {config.split} video(s) could not be decoded and are left out, e.g. "
                      f"{next(iter(errors.values()))}")
            decoded[key] = (pixels, ok)
        return decoded[key]

    _, ok = pixels_for(candidates[0])
    good = videos.subset(ok)
    episode_path = out / episode_file_name(config)
    if episode_path.is_file():
        episodes, _ = read_episode_file(episode_path, good.video_ids.tolist(), good.labels)
    else:
        sampler = EpisodeSampler(good.labels, way=config.way, shot=config.shot, query=config.query, seed=config.seed,
                                 class_names=good.class_names, split=config.split)
        episodes = sampler.batch(0, config.episodes)
        write_episode_file(episode_path, episodes, good.video_ids.tolist(),
                           meta={"seed": config.seed, "split": config.split, "manifest": str(config.manifest)})
    records, per_episode = [], {}
    for cand in candidates:
        pixels, cand_ok = pixels_for(cand)
        if not np.array_equal(cand_ok, ok):
            raise ConfigError(f"{cand.label}: another frame count decodes a different set of videos; "
                              "evaluate runs with different `frames` into separate folders")
        start = time.perf_counter()
        acc = pixel_episode_accuracies(cand.method.to(device), pixels[ok], episodes,
                                       preprocess=cand.method.preprocess, batch_size=min(config.batch_size, EPISODE_BATCH),
                                       device=device, progress=progress, desc=cand.label)
        mean, ci = accuracy_ci(acc)
        per_episode[(cand.label, config.shot)] = acc
        records.append(ResultRecord(
            method=cand.label, dataset=config.dataset or Path(config.manifest).resolve().parent.name,
            split=config.split, way=config.way, shot=config.shot, episodes=len(episodes), accuracy=mean, ci95=ci,
            seed=config.seed, store=str(config.manifest), run=cand.run, seconds=time.perf_counter() - start,
        ))
    write_per_episode(out / PER_EPISODE_FILE, per_episode)
    write_report(records, out, reference=config.reference or None)
    return records
