"""One-command GPU check: the GPU tests, then throughput and memory on one device, everything made locally.

    python -m pipelines.bench.gpu_check --out DIR [--device cuda] [--quick]

It imports only the ``fsar`` library (no Ray, MLflow or video decoder: the GPU machines this project is
checked on have none of them) and runs training in-process (``workers=0``), the same library code every
Ray Train worker runs. Clips are random uint8 tensors, the backbone a random-init ``ViT-B-16`` at 224 px,
stores are written with ``fsar.data.feature_store``: no download, no file but its own.

It writes ``DIR/gpu_check.json`` and prints a table:

- ``tests``: ``pytest -m gpu tests/test_gpu.py`` (GPU against CPU for embedding, cached training with
  validation, end-to-end bf16 training and evaluation), passed / failed / skipped;
- ``embed``: frames/s of the embedding path (uint8 clips of 256×340 → pinned copy → resize, crop and
  normalise on the device → bf16 encoder → fp16 features back on the host) on ``clips`` clips, divided by
  the encoder alone on ready-made 224-px tensors already on the device: the cost of preprocessing there;
- ``train``: cached-feature training episodes/s of OTAM and A2M2 (5-way 1-shot, 16 episodes per step)
  from a synthetic store of ViT-B-16 size (4×4 grid of 512-d fp16 patches);
- ``e2e``: end-to-end training episodes/s and peak GPU memory at 8 frames, 224 px, bf16: DMGAL-Adapter, and
  OTAM and A2M2 on the backbone stage under ``full``, ``last:2`` and ``lora:8``;
- ``stage``: frames/s of a frozen backbone stage (the view a method reads), divided by the encoder alone;
- ``eval``: evaluation episodes/s of OTAM and A2M2 on 10,000 5-way 1-shot test episodes.

``--quick`` shrinks everything (``fsar-tiny``, a few clips, steps and episodes) so that CI can run it on a
CPU to keep it working; its figures mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.command import Command, run_alone

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GpuCheckConfig:
    """``python -m pipelines.bench.gpu_check``: where to write, on which device, at which size."""

    out: Path  # output folder: gpu_check.json
    device: str = "cuda"  # the device measured (cpu only makes sense with quick)
    quick: bool = False  # tiny sizes, for a smoke run on a CPU
    tests: bool = True  # run the gpu-marked tests first
    backbone: str = "ViT-B-16"  # encoder of the embedding and end-to-end measures (random init)
    clips: int = 512  # clips embedded
    clip_frames: int = 8  # frames per clip
    source_size: tuple[int, int] = (256, 340)  # decoded frame size (height, width) before preprocessing
    embed_batch: int = 32  # clips per encoder call
    train_steps: int = 60  # cached training steps measured (after as many warm-up steps)
    e2e_steps: int = 6  # end-to-end steps measured (after one warm-up step)
    eval_episodes: int = 10000  # evaluation episodes per method

    @classmethod
    def quick_settings(cls, out: Path, device: str) -> GpuCheckConfig:
        return cls(out=out, device=device, quick=True, backbone="fsar-tiny", clips=8, source_size=(72, 96),
                   embed_batch=4, train_steps=4, e2e_steps=1, eval_episodes=200)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` takes, the device drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def run_gpu_tests(config: GpuCheckConfig) -> dict[str, Any]:
    """``pytest -m gpu tests/test_gpu.py`` in a subprocess; counts parsed from its summary line."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_gpu.py")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error")}
    for part in summary.replace(" in ", ", ").split(", "):
        words = part.strip().split()
        if len(words) >= 2 and words[0].isdigit() and words[1].rstrip("s") in counts:
            counts[words[1].rstrip("s")] = int(words[0])
    return {**counts, "returncode": proc.returncode, "summary": summary,
            "output_tail": (proc.stdout + proc.stderr)[-4000:] if proc.returncode else ""}


def measure_embedding(config: GpuCheckConfig, device: torch.device) -> dict[str, float]:
    """Frames/s of uint8 clips → device preprocessing → bf16 encoder, and of the encoder alone."""
    from fsar.backbones import build_backbone
    from fsar.backbones.encode import encode_clips
    from fsar.data.transforms import centre_square

    backbone = build_backbone(config.backbone, pretrained=None, device=device, init_seed=0).eval()
    gen = np.random.default_rng(0)
    h, w = config.source_size
    decoded = [gen.integers(0, 256, size=(config.clip_frames, h, w, 3), dtype=np.uint8) for _ in range(config.embed_batch)]
    squares = [centre_square(c) for c in decoded]  # what decode tasks ship
    batches = max(1, config.clips // config.embed_batch)
    size = backbone.preprocess.size
    ready = torch.randn(config.embed_batch * config.clip_frames, 3, size, size, device=device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def pipeline() -> None:
        for _ in range(batches):
            encode_clips(backbone, squares)

    def encoder_only() -> None:
        with torch.no_grad(), amp:
            for _ in range(batches):
                backbone.encode(ready)

    encoder_only(), pipeline()  # warm-up: kernels, allocator, pinned host blocks
    frames = batches * config.embed_batch * config.clip_frames
    pipeline_rate = frames / _timed(device, pipeline)
    encoder_rate = frames / _timed(device, encoder_only)
    return {"frames": frames, "pipeline_frames_per_s": pipeline_rate, "encoder_frames_per_s": encoder_rate,
            "ratio": pipeline_rate / encoder_rate}


def synthetic_store(root: Path, *, quick: bool, dim: int = 512) -> Path:
    """Random fp16 features: ``dim``-d (ViT-B-16: 512; fsar-tiny: 64), 4×4 patch grid, 8 frames; 64/12/24
    classes of 20 videos (``quick``: 16-d, 2×2, 4 frames, 6 videos)."""
    from fsar.data.feature_store import StoreMeta, write_meta, write_shard

    dim, grid, frames = (16, 2, 4) if quick else (dim, 4, 8)
    per_class = 6 if quick else 20
    gen = np.random.default_rng(0)
    shard, rows = 0, []
    for split, classes in (("train", range(0, 64)), ("val", range(64, 76)), ("test", range(76, 100))):
        for c in classes:
            for v in range(per_class):
                patches = gen.standard_normal((frames, grid, grid, dim), dtype=np.float32).astype(np.float16)
                rows.append({"video_id": f"c{c}v{v}", "label": c, "class_name": f"class {c}", "split": split,
                             "num_frames": 32, "frame_indices": list(range(frames)),
                             "frames": patches.mean(axis=(1, 2)), "patches": patches})
            if len(rows) >= 256:
                write_shard(root, shard, rows)
                shard, rows = shard + 1, []
    if rows:
        write_shard(root, shard, rows)
    write_meta(root, StoreMeta(backbone="synthetic", pretrained=None, frames=frames, embed_dim=dim, patch_grid=grid,
                               image_size=224))
    return root


TRAINED = {"otam": {"proj_dim": 256, "temporal_centre": True}, "a2m2": {}}


def measure_training(config: GpuCheckConfig, store: Path, work: Path) -> dict[str, float]:
    """Cached-feature training episodes/s per method, in-process on the device: the second validation
    window's rate (the first one includes warm-up)."""
    from fsar.data.sections import StoreData
    from fsar.training.config import TrainConfig
    from fsar.training.loop import train_worker

    out = {}
    for method, knobs in TRAINED.items():
        reports: list[dict[str, float]] = []
        train_config = TrainConfig(data=StoreData(store=store), out=work / method, method=method, knobs=knobs,
                                   steps=2 * config.train_steps, val_every=config.train_steps, val_episodes=100,
                                   episodes_per_step=16, device=config.device, lr=1e-3, warmup_steps=1)
        train_worker(train_config, report=lambda m, p, reports=reports: reports.append(m))
        out[f"{method}_episodes_per_s"] = reports[-1]["episodes_per_s"]
    return out


# End-to-end cases: label → (method, knobs, the stage's tune; None: a pixels method with its own encoder).
E2E_CASES: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "DMGAL-Adapter": ("dmgal_adapter", {}, None),
    "OTAM full": ("otam", {"proj_dim": 256}, "full"),
    "OTAM last:2": ("otam", {"proj_dim": 256}, "last:2"),
    "OTAM lora:8": ("otam", {"proj_dim": 256}, "lora:8"),
    "A2M2 full": ("a2m2", {}, "full"),
    "A2M2 last:2": ("a2m2", {}, "last:2"),
    "A2M2 lora:8": ("a2m2", {}, "lora:8"),
}


def measure_end_to_end(config: GpuCheckConfig, device: torch.device, method_name: str, knobs: dict[str, Any],
                       tune: str | None) -> dict[str, float]:
    """Training steps of one end-to-end case on uint8 clips (5-way 1-shot, 2 queries per class, 4 episodes per
    step, one episode per forward): episodes/s and peak device memory. ``tune``: the backbone stage's regime
    for a frames or patches method (encoder ``config.backbone``, random init), None for a pixels method."""
    from fsar.data.episodes import episode_labels
    from fsar.data.sections import ManifestData, StageSettings
    from fsar.devices import host_to_device
    from fsar.methods import build_method
    from fsar.sources.base import StepBatch
    from fsar.sources.pixels import PixelInputs
    from fsar.training.config import TrainConfig
    from fsar.training.loop import EpisodicLoss, make_optimizer, parameter_groups, training_step

    train_config = TrainConfig(method=method_name, out=Path("unused"), data=ManifestData(manifest=Path("unused")),
                               way=5, shot=1, query=2, episodes_per_step=4, steps=config.e2e_steps + 1, lr=1e-3,
                               warmup_steps=1)
    if tune is None:
        method = build_method(method_name, feature_dim=0, backbone=config.backbone, **knobs)
    else:
        method = build_method(method_name, feature_dim=0, stage=StageSettings(backbone=config.backbone, tune=tune), **knobs)
    method = method.to(device)
    size = method.preprocess.size
    videos = train_config.way * (train_config.shot + train_config.query)
    pixels = torch.randint(0, 256, (train_config.episodes_per_step, videos, config.clip_frames, 3, size, size),
                           dtype=torch.uint8)
    opt, _ = make_optimizer(train_config, parameter_groups(train_config, method))
    loss_module = EpisodicLoss(method)
    s_lab = host_to_device(episode_labels(5, 1), device)
    q_lab = host_to_device(episode_labels(5, 2), device)

    inputs, batch = PixelInputs(), StepBatch(pixels, None)

    def step() -> None:  # the code every Ray Train worker of an end-to-end run runs for a step
        training_step(loss_module, opt, method, inputs, batch, train_config, s_lab, q_lab, per_forward=1,
                      device=device)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(device, lambda: [step() for _ in range(config.e2e_steps)])
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    return {"episodes_per_s": config.e2e_steps * train_config.episodes_per_step / seconds, "peak_memory_gib": peak,
            "frames": config.clip_frames, "image_size": size, "trainable_params": trainable}


def measure_stage(config: GpuCheckConfig, device: torch.device, encoder_frames_per_s: float) -> dict[str, float]:
    """Frames/s of a frozen backbone stage on normalised pixels (the view a method reads), against the encoder
    alone (``embed``'s encoder-only bound)."""
    from fsar.backbones.stage import BackboneStage
    from fsar.data.sections import StageSettings

    stage = BackboneStage(StageSettings(backbone=config.backbone, tune="frozen"), view="patches").to(device)
    size = stage.preprocess.size
    pixels = torch.randn(config.embed_batch, config.clip_frames, 3, size, size, device=device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    batches = max(1, config.clips // config.embed_batch)

    def forward() -> None:
        with amp:
            for _ in range(batches):
                stage(pixels)

    forward()  # warm-up
    rate = batches * config.embed_batch * config.clip_frames / _timed(device, forward)
    return {"stage_frames_per_s": rate, "ratio": rate / encoder_frames_per_s}


def measure_evaluation(config: GpuCheckConfig, store: Path, device: torch.device) -> dict[str, float]:
    """Episodes/s of untrained OTAM and A2M2 on the test split, every video encoded once on the device."""
    from fsar.data.episodes import EpisodeSampler
    from fsar.data.feature_store import FeatureStore
    from fsar.evaluation.scoring import FeatureSplit, episode_correct, episode_scorer
    from fsar.methods import build_method, method_info

    opened = FeatureStore(store)
    out = {}
    for method, knobs in TRAINED.items():
        patches = method_info(method).input_kind == "patches"
        split = opened.load_split("test", view="patches" if patches else "grid")
        model = build_method(method, feature_dim=split.features.shape[-1], **knobs).to(device)
        episodes = EpisodeSampler(split.labels, way=5, shot=1, query=1, seed=0).batch(0, config.eval_episodes)

        def evaluate(model: Any = model, split: Any = split, episodes: Any = episodes) -> None:
            episode_correct(model, lambda: episode_scorer(model, FeatureSplit(split.features).encode(model, device), 5),
                            episodes, batch_size=1000).cpu()

        evaluate()  # warm-up
        out[f"{method}_episodes_per_s"] = config.eval_episodes / _timed(device, evaluate)
    return out


def run(config: GpuCheckConfig) -> dict[str, Any]:
    from fsar.devices import resolve_device

    device = resolve_device(config.device)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__}
    started = time.perf_counter()
    if config.tests:
        report["tests"] = run_gpu_tests(config)
    report["embed"] = measure_embedding(config, device)
    with tempfile.TemporaryDirectory(prefix="fsar-gpu-check-") as tmp:
        store = synthetic_store(Path(tmp) / "store", quick=config.quick)
        report["train"] = measure_training(config, store, Path(tmp))
        report["e2e"] = {label: measure_end_to_end(config, device, *case) for label, case in E2E_CASES.items()}
        report["stage"] = measure_stage(config, device, report["embed"]["encoder_frames_per_s"])
        report["eval"] = measure_evaluation(config, store, device)
    report["seconds"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The Markdown table ``gpu_check`` prints."""
    rows = [("device", f"{report['device']} (torch {report['torch']})")]
    if "tests" in report:
        t = report["tests"]
        rows.append(("GPU tests", f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped"))
    e = report["embed"]
    rows += [("embed: pipeline frames/s", f"{e['pipeline_frames_per_s']:,.0f}"),
             ("embed: encoder-only frames/s", f"{e['encoder_frames_per_s']:,.0f}"),
             ("embed: pipeline ÷ encoder", f"{e['ratio']:.2f}")]
    rows += [(f"train: {k.split('_')[0]} episodes/s (cached, 1 worker)", f"{v:,.1f}") for k, v in report["train"].items()]
    precision = "bf16" if report["device"] != "cpu" else "fp32"
    for label, d in report["e2e"].items():
        rows += [(f"e2e: {label} episodes/s ({d['frames']} frames, {d['image_size']} px, {precision}; "
                  f"{d['trainable_params']:,} trainable)", f"{d['episodes_per_s']:,.2f}"),
                 (f"e2e: {label} peak GPU memory (GiB)", f"{d['peak_memory_gib']:.1f}")]
    st = report["stage"]
    rows += [("stage (frozen): frames/s", f"{st['stage_frames_per_s']:,.0f}"),
             ("stage ÷ encoder-only", f"{st['ratio']:.2f}")]
    episodes = report["config"]["eval_episodes"]
    rows += [(f"eval: {k.split('_')[0]} episodes/s ({episodes:,} 5-way 1-shot)", f"{v:,.0f}")
             for k, v in report["eval"].items()]
    rows.append(("wall time (s)", f"{report['seconds']:.0f}"))
    return "\n".join(["| measure | value |", "|---|---:|", *[f"| {a} | {b} |" for a, b in rows]])


def _arguments(p: Any) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder for gpu_check.json")
    p.add_argument("--device", default="cuda", help="device to measure (default cuda)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (e.g. on a CPU in CI)")
    p.add_argument("--no-tests", dest="tests", action="store_false", help="skip the gpu-marked tests")


def _run(args: Any) -> int:
    config = (GpuCheckConfig.quick_settings(args.out, args.device) if args.quick
              else GpuCheckConfig(out=args.out, device=args.device))
    config.tests = args.tests
    report = run(config)
    return 0 if report.get("tests", {}).get("failed", 0) == 0 and report.get("tests", {}).get("returncode", 0) in (0, 5) else 1


COMMAND = Command("gpu_check", "one-command GPU check: the GPU tests, then throughput and memory on one device", _arguments, _run, takes_config=False)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv, module="pipelines.bench.gpu_check")


if __name__ == "__main__":
    raise SystemExit(main())
