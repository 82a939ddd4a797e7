"""Plain helpers shared by the test modules: files and tiny videos, synthetic feature stores, small training
and embedding configs, and local Ray clusters. Fixtures live in ``conftest.py``; no test module imports
another one (``test_layering`` checks).

Test modules import this one as ``from helpers import ...``: ``tests/`` has no ``__init__.py``, so pytest's
default "prepend" import mode puts ``tests/`` first on ``sys.path`` (with ``python -m pytest`` or ``pytest``,
from any folder); a subprocess that imports test modules puts it there itself (see ``test_gpu_check``).

At the top this module imports only the standard library and numpy; everything else is imported inside the
helper that needs it. ``test_gpu`` imports it on GPU machines that have no Ray, MLflow or video decoder,
and ``conftest`` imports it before its environment set-up is done.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.bench.local_s3 import free_port  # noqa: F401  (the tests' servers take ports from the same helper)

if TYPE_CHECKING:
    from fsar.embedding import EmbedConfig
    from fsar.training.config import TrainConfig


# ---------------------------------------------------------------- files and videos
def touch(path: Path) -> Path:
    """An empty file at ``path`` (parents created): enough for manifest code, which never opens videos."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def class_tree(root: Path, classes: int, per_class: int = 3) -> None:
    """``root/classNN/clipV.mp4`` empty files: a class-per-folder video tree."""
    for c in range(classes):
        for v in range(per_class):
            touch(root / f"class{c:02d}" / f"clip{v}.mp4")


def frame_value(i: int) -> int:
    """Grey level of frame ``i`` in ``counter_video``: far apart, so codec noise cannot confuse two frames."""
    return 20 + (i * 23) % 216


def write_counter_video(path: Path, num_frames: int, *, size: tuple[int, int] = (48, 64), fps: int = 10) -> Path:
    """An H.264 mp4 whose frame i is uniformly grey at ``frame_value(i)``: decoded pixels reveal the index.
    ``size`` = (height, width); every frame is (H, W, 3) uint8 RGB before encoding."""
    import av

    h, w = size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10", "bf": "0", "preset": "ultrafast"}
        for i in range(num_frames):
            img = np.full((h, w, 3), frame_value(i), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_pattern_video(path: Path, num_frames: int, *, size: tuple[int, int], fps: int = 10) -> Path:
    """An H.264 mp4 of a textured pattern (diagonal stripes per channel, shifting per frame): resizing it
    changes pixels, unlike the uniform grey of ``write_counter_video``. ``size`` = (height, width), even."""
    import av

    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10", "bf": "0", "preset": "ultrafast"}
        for i in range(num_frames):
            img = np.stack([(x * 9 + y * 5 + 17 * i + 60 * c) % 256 for c in range(3)], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_index(frame: np.ndarray, num_frames: int) -> int:
    """Which counter-video frame a decoded frame (any shape, e.g. (H, W, 3)) is (nearest grey level)."""
    values = np.array([frame_value(i) for i in range(num_frames)])
    return int(np.abs(values - frame.mean()).argmin())


MIXED_SIZES = ((48, 64), (80, 96), (64, 80), (48, 64), (96, 80), (40, 40))  # (H, W): up, down, equal to S=64


def embed_config(manifest: Path, out: Path, **kw: Any) -> EmbedConfig:
    """A small embed config over the ``videos`` fixture: 4 frames, 2×2 patches, shards of 3 videos."""
    from fsar.backbones import TINY_MODEL
    from fsar.embedding import EmbedConfig

    settings = {"backbone": TINY_MODEL, "pretrained": "none", "frames": 4, "patch_grid": 2, "batch_size": 2,
                "shard_size": 3, "engine": "local", "mlflow": False} | kw
    return EmbedConfig(manifest=manifest, out=out, **settings)


# ---------------------------------------------------------------- synthetic families
def family_class(family: str, name: str):
    """The class called ``name`` in the library of synthetic family ``family``."""
    from fsar.data.synthetic import family_classes

    return next(c for c in family_classes(family) if c.name == name)


def family_video(family: str, name: str, seed: int, *, index: int = 0, frames: int = 12, size: int = 48, **variants):
    """Video ``index`` (seed ``seed``) of the class called ``name`` in ``family``: a ``Rendering``."""
    from fsar.data.synthetic import FAMILIES, video_rng

    motion_class = family_class(family, name)
    return FAMILIES[family].render(motion_class, video_rng(seed, motion_class.id, index), frames=frames, size=size,
                                   **variants)


def check_family_library(family: str) -> list:
    """Checks a family's library (at least 100 classes, ids in order, unique readable names and slugs, every
    class ``2k`` the forward member of a pair whose reverse is ``2k + 1``) and returns it."""
    from fsar.data.synthetic import family_classes

    classes = family_classes(family)
    assert len(classes) >= 100 and len(classes) % 2 == 0
    assert [c.id for c in classes] == list(range(len(classes)))
    assert len({c.name for c in classes}) == len(classes) and len({c.slug for c in classes}) == len(classes)
    assert len({c.motion for c in classes}) == len(classes) // 2
    for c in classes:
        partner = classes[c.partner]
        assert partner.partner == c.id and c.reversed == bool(c.id % 2) and partner.reversed != c.reversed
        assert partner.motion == c.motion and partner.family == c.family
        assert c.name == c.name.strip() and c.name[0].islower() and "  " not in c.name and c.slug
    return classes


def check_reverse_pairs(family: str, pairs, seed: int = 0, **variants) -> None:
    """For the given pair numbers: the reversed class's video (and masks) is the forward one played backwards."""
    from fsar.data.synthetic import FAMILIES, family_classes

    classes = family_classes(family)
    render = FAMILIES[family].render
    for k in pairs:
        fwd, bwd = (render(classes[i], np.random.default_rng([seed, k]), frames=10, size=32, **variants)
                    for i in (2 * k, 2 * k + 1))
        assert np.array_equal(bwd.frames, fwd.frames[::-1]), classes[2 * k].name
        if variants.get("masks"):
            assert fwd.masks is not None and fwd.masks.shape == fwd.frames.shape[:3]
            assert np.array_equal(bwd.masks, fwd.masks[::-1]), classes[2 * k].name


def idle_ends(video: np.ndarray) -> int:
    """Frames at the start identical to the first plus frames at the end identical to the last."""
    same = [np.array_equal(a, b) for a, b in zip(video[:-1], video[1:], strict=True)]
    lead = next((i for i, s in enumerate(same) if not s), len(same))
    trail = next((i for i, s in enumerate(same[::-1]) if not s), len(same))
    return lead + trail


def motion_energy(video: np.ndarray) -> np.ndarray:
    """Per pixel, how much consecutive frames differ: (T − 1, H, W) float."""
    return np.abs(np.diff(video.astype(np.float64), axis=0)).sum(axis=-1)


def separated(a, b) -> bool:
    """True when a threshold splits the values ``a`` from ``b`` (every one of a below every one of b, or above)."""
    return max(a) < min(b) or max(b) < min(a)


def check_determinism(family: str, picks) -> None:
    """Videos of the classes at positions ``picks`` are the same rendered in either order with the same seed
    (frames and masks), and another seed gives another video."""
    from fsar.data.synthetic import FAMILIES, family_classes, video_rng

    classes, render = family_classes(family), FAMILIES[family].render
    picked = [classes[i] for i in picks]
    first = [render(c, video_rng(3, c.id, 1), frames=10, size=32, masks=True) for c in picked]
    again = [render(c, video_rng(3, c.id, 1), frames=10, size=32, masks=True) for c in picked[::-1]][::-1]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    other = render(picked[0], video_rng(4, picked[0].id, 1), frames=10, size=32)
    assert not np.array_equal(other.frames[0], first[0].frames[0])


def check_misalignment_retimes(family: str, name: str, seeds=range(6)) -> None:
    """``misalign`` keeps the video's scene and its start and end poses, and idles around a shorter action."""
    idle_plain = idle_shifted = 0
    for seed in seeds:
        plain = family_video(family, name, seed, frames=20, size=32).frames
        shifted = family_video(family, name, seed, frames=20, size=32, misalign=1.0).frames
        assert shifted.shape == plain.shape
        assert np.array_equal(shifted[0], plain[0]) and np.array_equal(shifted[-1], plain[-1]), (name, seed)
        idle_plain += idle_ends(plain)
        idle_shifted += idle_ends(shifted)
    assert idle_shifted > idle_plain + len(seeds), (idle_plain, idle_shifted)


def check_family_refused_on_other_folder(family: str, other: str, out: Path) -> None:
    """A dataset folder made with family ``other`` refuses a rerun with ``family``, naming the setting."""
    import pytest

    from fsar.data.synthetic import SynthConfig, SynthError, generate

    tiny = {"classes": 3, "class_split": (1, 1, 1), "videos_per_class": 1, "frames": 6, "size": 32, "workers": 1}
    generate(SynthConfig(out=out, family=other, **tiny), progress=False)
    with pytest.raises(SynthError, match=rf"differ: family \(folder: '{other}', asked: '{family}'\)"):
        generate(SynthConfig(out=out, family=family, **tiny), progress=False)


# ---------------------------------------------------------------- feature stores
def make_signal_store(root, *, dim=32, signal=6, frames=4, seed=0, text=False):
    """Classes differ only inside the first ``signal`` dims; the rest is loud shared noise, so an untrained
    cosine metric is poor and a learned projection can find the signal subspace (same for unseen classes).
    With ``text`` the store also gets class-name embeddings: each class's mean plus a little noise.

    24 classes (12 train, 6 val, 6 test) × 8 videos; pooled ``frames`` of shape (frames, dim), no patch
    grid; class text, with ``text``, of shape (24, dim). Returns ``root``."""
    from fsar.data.feature_store import StoreMeta, write_meta, write_shard

    rng = np.random.default_rng(seed)
    rows, texts = [], {}
    for split, classes in (("train", range(0, 12)), ("val", range(12, 18)), ("test", range(18, 24))):
        for c in classes:
            mean = np.zeros(dim)
            mean[:signal] = rng.normal(size=signal) * 1.0
            texts[c] = mean + rng.normal(scale=0.1, size=dim)
            for v in range(8):
                feats = rng.normal(scale=0.15, size=(frames, dim)) + mean
                feats[:, signal:] += rng.normal(scale=2.0, size=(1, dim - signal))
                rows.append({"video_id": f"c{c}v{v}", "label": c, "class_name": f"class{c}", "split": split,
                             "num_frames": 16, "frame_indices": list(range(frames)), "frames": feats})
    write_meta(root, StoreMeta(backbone="fsar-tiny", pretrained=None, frames=frames, embed_dim=dim, patch_grid=0,
                               image_size=64))
    write_shard(root, 0, rows)
    if text:
        from fsar.data.feature_store import write_class_text

        write_class_text(root, list(texts), [f"class{c}" for c in texts], np.stack(list(texts.values())),
                         template="a video of {}")
    return root


def make_shifting_patch_store(root, *, dim=8, grid=2, frames=4, seed=0, noise=0.3, text=True):
    """A store with a patch grid: each class is a fixed pattern over the grid that shifts over time, plus
    Gaussian noise of scale ``noise``; with ``text`` the class-name text embedding of a class is a noisy
    copy of its pattern's mean.

    20 classes (10 train, 5 val, 5 test) × 6 videos; ``patches`` of shape (frames, grid, grid, dim),
    pooled ``frames`` (their mean over the grid) of shape (frames, dim); class text of shape (20, dim).
    ``text=False`` also skips the text's random draws, so the features differ from those of ``text=True``
    (it is the GPU tests' store: ``dim=16, noise=0.5, text=False``). Returns ``root``."""
    from fsar.data.feature_store import StoreMeta, write_class_text, write_meta, write_shard

    rng = np.random.default_rng(seed)
    rows, texts = [], {}
    for split, classes in (("train", range(0, 10)), ("val", range(10, 15)), ("test", range(15, 20))):
        for c in classes:
            pattern = rng.normal(size=(grid, grid, dim))
            if text:
                texts[c] = pattern.mean(axis=(0, 1)) + rng.normal(scale=0.1, size=dim)
            for v in range(6):
                feats = np.stack([np.roll(pattern, t, axis=1) for t in range(frames)])
                feats = feats + rng.normal(scale=noise, size=feats.shape)
                rows.append({"video_id": f"c{c}v{v}", "label": c, "class_name": f"class{c}", "split": split,
                             "num_frames": 16, "frame_indices": list(range(frames)), "frames": feats.mean(axis=(1, 2)),
                             "patches": feats})
    write_meta(root, StoreMeta(backbone="fsar-tiny", pretrained=None, frames=frames, embed_dim=dim, patch_grid=grid,
                               image_size=64))
    write_shard(root, 0, rows)
    if text:
        write_class_text(root, list(texts), [f"class{c}" for c in texts], np.stack(list(texts.values())),
                         template="a video of {}")
    return root


def make_actor_patch_store(root, *, masks_root=None, grid=3, dim=16, frames=4, videos=6, classes=(8, 5, 5),
                           text=True, seed=0):
    """A tiny store with a g×g patch grid: in each frame one "actor" cell holds the class's vector (plus
    noise) on a class-specific path through the grid; every other cell is noise around a per-video
    background. ``class_text`` holds the class vectors (so pseudo-masks find the actor), and with
    ``masks_root`` each video gets a mask file marking the actor's cell at its sampled frames.

    ``classes`` = (train, val, test) class counts, ``videos`` per class; ``patches`` of shape
    (frames, grid, grid, dim), pooled ``frames`` of shape (frames, dim); sampled frame numbers
    offset + 3·t (t < frames) out of 30; class text (sum(classes), dim), unit vectors; masks
    (frames, 4·grid, 4·grid) uint8, 4×4 pixels per cell. Returns ``root``."""
    from fsar.data.feature_store import StoreMeta, write_class_text, write_meta, write_shard
    from fsar.data.masks import write_mask_file

    rng = np.random.default_rng(seed)
    rows, vectors = [], []
    label = 0
    for split, count in zip(("train", "val", "test"), classes, strict=True):
        for _ in range(count):
            vector = rng.normal(size=dim)
            vector /= np.linalg.norm(vector)
            vectors.append(vector)
            path = rng.integers(0, grid * grid, size=frames)
            for v in range(videos):
                video_id = f"c{label}v{v}"
                patches = 0.5 * rng.normal(size=(frames, grid, grid, dim)) + 0.3 * rng.normal(size=(1, 1, 1, dim))
                rows_, cols_ = np.divmod(path, grid)
                patches[np.arange(frames), rows_, cols_] = 3.0 * vector + 0.3 * rng.normal(size=(frames, dim))
                frame_indices = int(rng.integers(0, 10)) + 3 * np.arange(frames)
                rows.append({"video_id": video_id, "label": label, "class_name": f"class{label}", "split": split,
                             "num_frames": 30, "frame_indices": frame_indices.tolist(),
                             "frames": patches.mean(axis=(1, 2)), "patches": patches})
                if masks_root is not None:
                    cell = np.zeros((frames, grid, grid), dtype=np.uint8)
                    cell[np.arange(frames), rows_, cols_] = 255
                    pixels = cell.repeat(4, axis=1).repeat(4, axis=2)  # 4×4 pixels per patch cell
                    write_mask_file(masks_root, video_id, pixels, frame_indices)
            label += 1
    write_meta(root, StoreMeta(backbone="fsar-tiny", pretrained=None, frames=frames, embed_dim=dim, patch_grid=grid,
                               image_size=4 * grid))
    write_shard(root, 0, rows)
    if text:
        write_class_text(root, range(label), [f"class{c}" for c in range(label)], np.stack(vectors),
                         template="a video of {}")
    return root


# ---------------------------------------------------------------- training configs
def config(store, out, **kw) -> TrainConfig:
    """A short cached-feature training run on ``store``: ProtoNet (proj_dim 16), 60 steps of 4 episodes,
    validated every 20 on 300 episodes. ``view``, ``backbone`` and ``feature_placement`` go to the
    ``StoreData``; every other keyword overrides a ``TrainConfig`` field."""
    from fsar.data.sections import StoreData
    from fsar.training.config import TrainConfig

    base = {"method": "protonet", "knobs": {"proj_dim": 16}, "steps": 60, "episodes_per_step": 4, "lr": 3e-2,
            "val_every": 20, "val_episodes": 300, "warmup_steps": 5}
    data = {k: kw.pop(k) for k in ("view", "backbone", "feature_placement") if k in kw}
    return TrainConfig(data=StoreData(store=store, **data), out=out, **(base | kw))


I2ST_SMALL = {"dim": 16, "heads": 2, "instances": 3}  # I2ST knobs at a test size


def i2st_config(store, out, **knobs) -> TrainConfig:
    """A short I2ST training run on ``store`` (5-way 1-shot, 2 queries, 30 steps of 4 episodes, validated
    every 10 on 20 episodes); ``knobs`` override ``I2ST_SMALL``."""
    from fsar.data.sections import StoreData
    from fsar.training.config import TrainConfig

    return TrainConfig(data=StoreData(store=store), out=out, method="i2st", knobs=I2ST_SMALL | knobs, way=5, shot=1,
                       query=2, steps=30, episodes_per_step=4, lr=1e-2, warmup_steps=3, val_every=10, val_episodes=20)


def pixels_config(manifest: Path, out: Path, *, decode: str = "auto", **kw) -> TrainConfig:
    """A tiny end-to-end (pixels) run on a video manifest: DMGAL-Adapter, 3-way 1-shot 1 query, 4 frames a
    clip, 4 steps of 1 episode, validated every 2 on 6 episodes; keywords override ``TrainConfig`` fields."""
    from fsar.data.sections import ManifestData
    from fsar.training.config import TrainConfig

    base = {"method": "dmgal_adapter", "knobs": {"temperature": 0.05}, "way": 3, "shot": 1, "query": 1, "steps": 4,
            "episodes_per_step": 1, "lr": 1e-2, "val_every": 2, "val_episodes": 6, "warmup_steps": 2}
    data = ManifestData(manifest=manifest, frames=4, decode_threads=2, decode=decode)
    return TrainConfig(data=data, out=out, **(base | kw))


# ---------------------------------------------------------------- local Ray clusters
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
# What every Ray process of these tests sees (no hub, no auth token, no usage report).
RAY_ENV = {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _psutil() -> Any:
    """psutil as Ray bundles it (``import ray`` puts it on sys.path; the project does not depend on it)."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _own_processes(temp_dir: Path) -> list:
    """Processes of this cluster only: those naming its temporary folder, and their descendants (never
    this process or its parents)."""
    psutil = _psutil()
    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid not in spared and str(temp_dir) in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return [p for pid, p in found.items() if pid not in spared]


def stop_cluster(temp_dir: Path) -> None:
    """Stops a cluster started with ``--temp-dir=temp_dir`` by ending only its own processes (``ray stop``
    would stop every Ray process on the machine): terminate, then kill what is left after 5 s."""
    psutil = _psutil()
    procs = _own_processes(temp_dir)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def vit_maps_reference(visual: Any, pixels: Any) -> Any:
    """An open_clip ViT's final patch tokens, normed and projected, as maps ``(M, D, g_h, g_w)``: written out here,
    block by block with no hooks, as an independent reference for the stage's patches view."""
    import torch

    from fsar.backbones.open_clip_backbone import vit_tokens

    x = vit_tokens(visual, pixels)
    for block in visual.transformer.resblocks:
        x = block(x) if visual.transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
    patches = visual.ln_post(x[:, 1:]) @ visual.proj
    patch = visual.conv1.kernel_size
    gh, gw = pixels.shape[-2] // patch[0], pixels.shape[-1] // patch[1]
    return torch.movedim(patches, -1, 1).reshape(patches.shape[0], -1, gh, gw)


def moto_server_process() -> Any:
    """The psutil handle of the session's moto S3 server (to pause it: SIGSTOP / SIGCONT)."""
    psutil = _psutil()
    return next(p for p in psutil.process_iter(["cmdline"]) if "moto_server" in " ".join(p.info["cmdline"] or []))


def pause_s3_server(seconds: float, *, after: float) -> None:
    """Wait ``after`` seconds, then stop the session's moto S3 server (SIGSTOP) for ``seconds``: a server away."""
    import signal
    import time

    server = moto_server_process()
    time.sleep(after)
    server.send_signal(signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        server.send_signal(signal.SIGCONT)


def open_set_case(root: Path) -> Any:
    """``pipelines.bench.predict.build_case`` at test size: 20 synthetic classes (10 train / 4 val / 6 test) × 10
    videos of 64 px, fsar-tiny with a 4×4 grid, OTAM trained 300 steps (~10 s); 5 test classes give 5 example clips
    each, and the queries are their other 5 clips and the sixth test class's 10."""
    from pipelines.bench.predict import build_case

    return build_case(root)
