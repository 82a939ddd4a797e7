"""Memory-sized end-to-end settings for a ViT backbone stage, estimated without a GPU.

``python -m pipelines.bench.stage_memory [--backbone ViT-B-16 --frames 8 --write DIR]``

For each tuning regime (``full``, ``last:2``, ``lora:8``) this measures, on the CPU under bf16 autocast (the
dtype the GPU path runs the encoder in), what one frame's forward keeps for the backward pass: the bytes of
every tensor autograd saves (``torch.autograd.graph.saved_tensors_hooks``, each storage counted once), with
and without activation checkpointing (which then holds the block inputs plus one block's activations while it
recomputes). With the trainable weights' fp32 copy, gradient and AdamW moments
(16 bytes a weight), the frozen weights (4 bytes) and what a forward saves whatever its size (autocast's bf16
copies of the weights: the intercept of the saved bytes over 2 and 4 frames), it then sizes, for GPUs of 24, 48 and 80 GB, the
episodes one forward can hold (``episodes_per_forward``) at 5-way 1-shot with 2 queries per class and
``frames`` frames per video, keeping a quarter of the card for the allocator, the method, cuDNN workspaces and
evaluation. ``--write DIR`` writes one ``TrainConfig`` overlay per card and regime (``vit-b16-24gb-full.yaml``
…), used as ``fsar train --config FILE --manifest M --method NAME``.

These are estimates from measured activation bytes, not runs on the cards: the GPU check
(``python -m pipelines.gpu_check``) reports the peak memory actually reached.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.command import Command, run_alone

REGIMES = ("full", "last:2", "lora:8")
CARDS_GB = (24, 48, 80)
HEADROOM = 0.75  # of a card's memory the estimate may plan for
EPISODES_PER_STEP = 16  # the released DMGAL run's episodes per optimiser step


def build_stage(backbone: str, tune: str, *, checkpointing: bool = False) -> Any:
    """A training-mode ``BackboneStage`` of ``backbone`` tuned ``tune``, pooled view, without its text tower."""
    from fsar.backbones.stage import BackboneStage
    from fsar.data.sections import StageSettings

    stage = BackboneStage(StageSettings(backbone=backbone, tune=tune, checkpointing=checkpointing, view="pooled"),
                          view="pooled").train()
    stage.drop_text()
    return stage


def measure_saved(stage: Any, frames: int) -> float:
    """Bytes autograd keeps for the backward pass of one forward of ``frames`` frames through ``stage`` (at the
    encoder's own size, bf16 autocast, each storage counted once)."""
    import torch

    size = stage.preprocess.size
    pixels = torch.randn(1, frames, 3, size, size)
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage(pixels)
    del out
    return float(sum(seen.values()))


def saved_bytes(backbone: str, tune: str, *, checkpointing: bool, frames: int) -> float:
    """``measure_saved`` of a fresh stage of ``backbone`` tuned ``tune``."""
    return measure_saved(build_stage(backbone, tune, checkpointing=checkpointing), frames)


def saved_bytes_per_frame(backbone: str, tune: str, *, checkpointing: bool) -> tuple[float, float]:
    """(bytes per frame, bytes per forward): the slope and intercept of the saved bytes over 2 and 4 frames (one
    stage measured twice). The intercept is what a forward keeps whatever its size, such as autocast's bf16
    copies of the trainable weights."""
    stage = build_stage(backbone, tune, checkpointing=checkpointing)
    two, four = measure_saved(stage, 2), measure_saved(stage, 4)
    return (four - two) / 2, 2 * two - four


def weight_bytes(backbone: str, tune: str) -> tuple[float, int, int, int]:
    """Resident bytes of the stage's weights and optimiser state (16 B a trainable weight: fp32 copy, gradient,
    two AdamW moments; 4 B a frozen one), the trainable and total weight counts, and the encoder's blocks."""
    stage = build_stage(backbone, tune)
    trainable = sum(p.numel() for p in stage.parameters() if p.requires_grad)
    total = sum(p.numel() for p in stage.parameters())
    return 16.0 * trainable + 4.0 * (total - trainable), trainable, total, max(1, stage.encoder.blocks)


def plan(backbone: str, frames: int, way: int = 5, shot: int = 1, query: int = 2) -> list[dict[str, Any]]:
    """One row per regime and card: the episodes one forward holds, and whether checkpointing is needed."""
    import torch

    torch.manual_seed(0)
    frames_per_episode = way * (shot + query) * frames
    rows = []
    for tune in REGIMES:
        static, trainable, total, blocks = weight_bytes(backbone, tune)
        plain, per_forward = saved_bytes_per_frame(backbone, tune, checkpointing=False)
        static += per_forward
        # With checkpointing the backward pass recomputes one block at a time, for every frame of the forward:
        # its peak is the kept block inputs plus one block's activations.
        checkpointed = saved_bytes_per_frame(backbone, tune, checkpointing=True)[0] + plain / blocks
        for card in CARDS_GB:
            room = card * 1e9 * HEADROOM - static
            fits = int(room // (plain * frames_per_episode))
            use_checkpointing = fits < 1
            if use_checkpointing:
                fits = int(room // (checkpointed * frames_per_episode))
            rows.append({"tune": tune, "card_gb": card, "trainable_m": trainable / 1e6, "weights_m": total / 1e6,
                         "static_gib": static / 2**30, "saved_mib_per_frame": plain / 2**20,
                         "saved_mib_per_frame_checkpointed": checkpointed / 2**20,
                         "episode_gib": plain * frames_per_episode / 2**30,
                         "episodes_per_forward": min(max(fits, 0), EPISODES_PER_STEP),
                         "checkpointing": use_checkpointing})
    return rows


def format_plan(rows: list[dict[str, Any]], backbone: str, frames: int) -> str:
    lines = [f"{backbone}, {frames} frames, 5-way 1-shot, 2 queries per class (15 videos an episode), bf16 encoder, "
             f"AdamW; {int(HEADROOM * 100)}% of each card planned for. Estimated from autograd's saved bytes "
             "measured on the CPU, not run on the cards.", "",
             "| tune | card | trainable (M) | weights, optimiser, casts (GiB) | saved per frame (MiB) | one episode (GiB) "
             "| episodes_per_forward | checkpointing |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        fits = r["episodes_per_forward"]
        lines.append(f"| {r['tune']} | {r['card_gb']} GB | {r['trainable_m']:.1f} | {r['static_gib']:.2f} | "
                     f"{r['saved_mib_per_frame']:.1f} ({r['saved_mib_per_frame_checkpointed']:.1f} checkpointed) | "
                     f"{r['episode_gib']:.2f} | {fits if fits else 'does not fit'} | "
                     f"{'yes' if r['checkpointing'] else 'no'} |")
    return "\n".join(lines)


def write_overlays(rows: list[dict[str, Any]], backbone: str, frames: int, folder: Path) -> list[Path]:
    """One TrainConfig overlay per card and regime: the stage, the frames and the gradient accumulation."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for r in rows:
        if not r["episodes_per_forward"]:
            continue
        name = f"{backbone.lower().replace('-', '')}-{r['card_gb']}gb-{r['tune'].replace(':', '')}.yaml"
        overlay = {
            "way": 5, "shot": 1, "query": 2, "episodes_per_step": EPISODES_PER_STEP,
            "episodes_per_forward": r["episodes_per_forward"], "use_gpu": True,
            "data": {"frames": frames, "stage": {"backbone": backbone, "tune": r["tune"],
                                                 "checkpointing": r["checkpointing"], "view": "auto"}},
        }
        header = (f"# {backbone} stage, tune {r['tune']}, sized for one {r['card_gb']} GB GPU per worker "
                  f"({frames} frames at the encoder's size, 5-way 1-shot, 2 queries per class).\n"
                  f"# Estimated by python -m pipelines.bench.stage_memory (autograd's saved bytes, measured on the "
                  f"CPU): {r['episode_gib']:.2f} GiB an episode,\n# {r['static_gib']:.2f} GiB of weights and "
                  "optimiser state; set data.stage.pretrained to your weights file.\n")
        path = folder / name
        path.write_text(header + yaml.safe_dump(overlay, sort_keys=False))
        written.append(path)
    return written


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="ViT-B-16")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--write", type=Path, help="write the TrainConfig overlays into this folder")


def _run(args: Any) -> int:
    rows = plan(args.backbone, args.frames)
    print(format_plan(rows, args.backbone, args.frames))
    if args.write is not None:
        for path in write_overlays(rows, args.backbone, args.frames, args.write):
            print(f"wrote {path}")
    return 0


COMMAND = Command("bench_stage_memory", "memory-sized end-to-end settings for a ViT stage, estimated on the CPU",
                  _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.stage_memory")


if __name__ == "__main__":
    raise SystemExit(main())
