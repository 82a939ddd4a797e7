"""The embedded default dataset: synthetic motion videos (H.264 mp4) plus a manifest.

Something-Something-like: a class is a *motion* (moving left to right, falling over, pushing an object
into another, ...), never an appearance. ``family`` picks the generator (:mod:`fsar.data.synthetic.families`):
``shapes`` (the default, described below), ``figures`` (stick figures moving their joints), ``camera`` (a
camera moving over a still scene) or ``swarm`` (3–6 objects moving as a group); each has its own library of at
least 100 classes in time-reverse pairs and follows every rule below (ids, pairs, splits, variants, masks;
what the masks mark is in each family's docstring). Benchmark on several: a method tuned on one generator's
quirks shows it on the others. Every video draws its own shapes, colours, sizes, textured
background, clip length, and the start, duration and extent of the motion from a generator seeded by
``(seed, class id, video index)``, so two videos of a class share nothing but the motion, and the result
does not depend on how many workers render it.

Classes come in **time-reverse pairs**: each base motion has a forward class and a reversed partner
whose video is, literally, the forward rendering played backwards (:func:`render_clip` renders forward
and reverses the frame list). A method that ignores frame order cannot tell the partners apart, so test
splits that hold whole pairs measure temporal modelling.

Library (``shapes``): :func:`motion_classes` lists 128 classes (64 pairs) in 11 motion groups (a class's
``family`` in classes.json: translate, rotate, ...; the other generators name their own); class ``2k`` is the
forward member of pair ``k`` and ``2k + 1`` its reverse. Those ids (and the video ids ``c017_v003``)
are stable across configs; the manifest's ``label`` follows the manifest convention instead (train
classes first, then val, then test, natural order of names; see :mod:`fsar.data.manifest`).

Class choice and splits (:func:`select_classes`): the pairs are shuffled by a generator seeded with
``seed``; whole pairs fill train, then val, then test (``count // 2`` pairs each); a split with an odd
count takes one member (chosen by the same generator) of a further pair, so no pair straddles two
splits unless ``classes`` is so close to 128 that no spare pair is left. Fewer classes than the library
thus means "the first pairs of a seeded shuffle"; the same seed always picks the same classes.

Mechanism variants (``SynthConfig`` fields; all off by default, and off means the videos above, bit
for bit): ``masks`` writes the renderer's ground-truth instance masks; ``clutter`` adds that many
distractors moving at random, independently of the class; ``misalign`` (strength in [0, 1]) squeezes
the action into a random sub-interval of the clip, idle at its start and end poses around it. The
exact laws are in :mod:`fsar.data.synthetic.variants` (misalignment, clutter) and
:func:`fsar.data.synthetic.scene._compose` (masks). A reversed class stays the literal time reverse of
its partner with every variant on (frames, masks and distractors are all reversed together).

Masks (``fsar-masks/1``, :mod:`fsar.data.masks`): one file per video, every frame, at the video's
size; pixel value = instance id: ``1, 2, ...`` = the class's objects in their scene order (shapes: the
mover first; in two-object classes the other object is 2, since the class is defined by both; figures:
the figure; camera: the scene's static objects; swarm: each object), ``0`` = background and
distractors. A pixel belongs to an instance when the class's objects make up at least half of its
rendered colour (so a distractor in front hides the actor in the mask too). Train I2ST on
them with ``knobs.mask_source=files knobs.mask_files=<out>/masks`` (an absolute path).

Output of :func:`generate` (all paths relative to ``out``)::

    videos/<split>/<class_slug>/<video_id>.mp4   one video, written atomically
    masks/<video_id>.npz                         with ``masks``: its instance masks (fsar-masks/1), atomically
    classes.json                                 chosen classes: id, name, family (the class's motion group
                                                 within the generator), partner, split, label
    synth.json                                   the settings the videos were made with (checked on rerun),
                                                 the generator among them: ``family``, ``family_version``
    manifest.parquet                             written last: its presence means the dataset is complete
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsar.atomic import atomic_write_text
from fsar.config import ConfigError
from fsar.data.synthetic.families import DEFAULT_FAMILY, FAMILIES, Family
from fsar.data.synthetic.library import MotionClass
from fsar.data.synthetic.render import clip_length, video_rng, write_mp4

# Part of synth.json: bump whenever the shapes rendering or class library changes, or what every family
# shares (clip lengths, variants), so that a rerun into an old folder refuses to mix videos of two versions
# instead of silently resuming. The other families also stamp their own ``family_version``.
RENDER_VERSION = 2

DEFAULT_FRACTIONS = (0.64, 0.12, 0.24)
SPLITS = ("train", "val", "test")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
TAU = 2.0 * math.pi
MASKS_DIR = "masks"  # under ``out``: <video_id>.npz per video when ``masks`` is on
# Settings added since the first synth.json, at the values a folder written before them was made with: the
# mechanism variants at their neutral values, the shapes family.
VARIANT_DEFAULTS: dict[str, Any] = {"masks": False, "clutter": 0, "misalign": 0.0, "family": DEFAULT_FAMILY,
                                    "family_version": 0}


class SynthError(ConfigError):
    """A synthetic-data setting is invalid or clashes with an existing output folder (a ConfigError, so
    the command line reports it as a one-line error)."""


# ---------------------------------------------------------------- configuration
def _default_workers() -> int:
    return min(2, os.cpu_count() or 1)


@dataclass
class SynthConfig:
    """``fsar synth``: the synthetic motion dataset and how to write it."""

    out: Path  # output folder: videos/, manifest.parquet, classes.json, synth.json
    classes: int = 100  # motion classes taken from the family's library (whole reverse pairs where possible)
    videos_per_class: int = 20  # videos per class
    frames: int = 32  # longest clip in frames; each clip has between ceil(0.75·frames) and frames
    size: int = 112  # frame side in pixels (square, even: yuv420p halves the chroma planes)
    fps: int = 12  # frame rate stored in the mp4
    seed: int = 0  # seeds the class choice, the splits and every video
    class_split: tuple[int, int, int] | None = None  # train/val/test class counts; None: 64/12/24 % of classes
    workers: int = field(default_factory=_default_workers)  # rendering+encoding processes (1: in-process)
    crf: int = 18  # x264 constant rate factor: lower is closer to the rendered frames and bigger
    preset: str = "veryfast"  # x264 speed preset
    masks: bool = False  # also write each video's ground-truth instance masks to <out>/masks/<video_id>.npz
    clutter: int = 0  # distractors per video, moving at random independently of the class (0: none)
    misalign: float = 0.0  # 0..1: the action fills a random 100 %..(100 − 60·misalign) % of the clip, idle around it
    family: str = DEFAULT_FAMILY  # generator: shapes | figures | camera | swarm (fsar.data.synthetic.families)

    def generator(self) -> Family:
        """The family this config renders (SynthError naming the choices for an unknown one)."""
        if self.family not in FAMILIES:
            raise SynthError(f"family={self.family!r} is not a synthetic family; pick one of {', '.join(FAMILIES)}")
        return FAMILIES[self.family]

    def split_counts(self) -> tuple[int, int, int]:
        """Train/val/test class counts: ``class_split`` if given, else the default fractions of ``classes``."""
        if self.class_split is not None:
            counts = tuple(int(c) for c in self.class_split)
            if len(counts) != 3 or any(c < 0 for c in counts) or sum(counts) != self.classes:
                raise SynthError(f"class_split {self.class_split!r} must be three non-negative counts (train, val, "
                                 f"test) summing to classes={self.classes}")
            return counts  # type: ignore[return-value]
        # Largest-remainder rounding, shared with class-per-folder manifests: 100 -> 64/12/24.
        from fsar.data.folder_tree import class_split_counts

        return class_split_counts(self.classes, DEFAULT_FRACTIONS)

    def validate(self) -> None:
        """Raise SynthError naming the first bad setting and the fix."""
        library = len(self.generator().classes)
        if not 1 <= self.classes <= library:
            raise SynthError(f"classes={self.classes}: the {self.family} library has {library} classes; pick "
                             f"1..{library}")
        if self.classes < 3 and self.class_split is None:
            raise SynthError(f"classes={self.classes} cannot fill train/val/test; use at least 3 or give class_split")
        if self.videos_per_class < 1:
            raise SynthError(f"videos_per_class={self.videos_per_class} must be at least 1")
        if self.frames < 2:
            raise SynthError(f"frames={self.frames} must be at least 2")
        if self.size < 16 or self.size % 2:
            raise SynthError(f"size={self.size} must be an even number of pixels, at least 16")
        if self.seed < 0:
            raise SynthError(f"seed={self.seed} must be a non-negative integer")
        if self.fps < 1:
            raise SynthError(f"fps={self.fps} must be at least 1")
        if not 0 <= self.crf <= 51:
            raise SynthError(f"crf={self.crf} must be in 0..51 (x264)")
        if self.preset not in X264_PRESETS:
            raise SynthError(f"preset={self.preset!r} is not an x264 preset; pick one of {', '.join(X264_PRESETS)}")
        if self.workers < 1:
            raise SynthError(f"workers={self.workers} must be at least 1")
        if self.clutter < 0:
            raise SynthError(f"clutter={self.clutter} must be a non-negative number of distractors")
        if not 0.0 <= self.misalign <= 1.0:  # also refuses NaN
            raise SynthError(f"misalign={self.misalign} must be a strength in [0, 1] (0: the action fills the clip)")
        self.split_counts()

    def stamp(self) -> dict[str, Any]:
        """The settings that decide what lands on disk (not ``out`` or ``workers``), for synth.json."""
        return {"render_version": RENDER_VERSION, "classes": self.classes, "videos_per_class": self.videos_per_class,
                "frames": self.frames, "size": self.size, "fps": self.fps, "seed": self.seed,
                "class_split": list(self.split_counts()), "crf": self.crf, "preset": self.preset,
                "masks": self.masks, "clutter": self.clutter, "misalign": self.misalign,
                "family": self.family, "family_version": self.generator().version}


# ---------------------------------------------------------------- class choice and splits
def select_classes(config: SynthConfig) -> dict[str, list[MotionClass]]:
    """The classes of each split (train/val/test), sorted by id; see the module docstring for the rule."""
    counts = dict(zip(SPLITS, config.split_counts(), strict=True))
    library = config.generator().classes
    rng = np.random.default_rng([config.seed, 0x5EED])  # its own stream: no video draws from it
    pairs = [(library[2 * k], library[2 * k + 1]) for k in rng.permutation(len(library) // 2)]
    chosen: dict[str, list[MotionClass]] = {s: [] for s in SPLITS}
    cursor = 0
    for split in SPLITS:
        for pair in pairs[cursor:cursor + counts[split] // 2]:
            chosen[split].extend(pair)
        cursor += counts[split] // 2
    odd = [s for s in SPLITS if counts[s] % 2]
    spare = len(pairs) - cursor
    broken = max(0, len(odd) - spare)  # only when the library is nearly used up: a pair serves two splits
    for i in range(broken):
        fwd, rev = pairs[cursor]
        chosen[odd[2 * i]].append(fwd)
        chosen[odd[2 * i + 1]].append(rev)
        cursor += 1
    for split in odd[2 * broken:]:
        chosen[split].append(pairs[cursor][int(rng.integers(2))])
        cursor += 1
    return {s: sorted(cs, key=lambda c: c.id) for s, cs in chosen.items()}


# ---------------------------------------------------------------- dataset generation
def video_id(class_id: int, index: int, videos_per_class: int) -> str:
    """``c017_v003``: library class id and video index, zero-padded."""
    width = max(3, len(str(videos_per_class - 1)))
    return f"c{class_id:03d}_v{index:0{width}d}"


@dataclass(frozen=True)
class _Task:
    """One video to (re)write: its index in its class and the files still missing (None: present)."""

    index: int
    video: Path | None  # the mp4 to write
    masks: Path | None  # the mask file to write


@dataclass(frozen=True)
class _Job:
    """What one worker renders: the missing files of one class (picklable, for spawned processes)."""

    motion_class: MotionClass
    tasks: list[_Task]
    config: SynthConfig


def _render_job(job: _Job) -> int:
    """Worker: render and write the listed files of one class; returns how many videos it handled."""
    mc, cfg = job.motion_class, job.config
    for task in job.tasks:
        # Another run may have finished a file meanwhile.
        video_path = task.video if task.video is not None and not _complete(task.video) else None
        masks_path = task.masks if task.masks is not None and not task.masks.is_file() else None
        if video_path is None and masks_path is None:
            continue
        try:
            rendering = cfg.generator().render(mc, video_rng(cfg.seed, mc.id, task.index), frames=cfg.frames,
                                               size=cfg.size, clutter=cfg.clutter, misalign=cfg.misalign,
                                               masks=masks_path is not None)
            if masks_path is not None:  # fsar.data.masks imports torch: only workers that write masks pay for it
                from fsar.data.masks import MASK_SUFFIX, write_mask_file

                assert rendering.masks is not None
                write_mask_file(masks_path.parent, masks_path.name.removesuffix(MASK_SUFFIX), rendering.masks,
                                np.arange(len(rendering.masks)))
            if video_path is not None:
                write_mp4(video_path, rendering.frames, cfg.fps, crf=cfg.crf, preset=cfg.preset)
        except Exception as exc:
            raise RuntimeError(f"synthetic video {task.video or task.masks} (class {mc.id} {mc.name!r}, "
                               f"index {task.index}): {exc}") from exc
    return len(job.tasks)


def _complete(path: Path) -> bool:
    # Videos are renamed into place only once fully written, so any non-empty file is a finished one.
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _check_stamp(out: Path, stamp: dict[str, Any]) -> None:
    path = out / "synth.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):
            old = VARIANT_DEFAULTS | old  # written before the variants existed: made without them
        if old != stamp:
            old = old if isinstance(old, dict) else {}
            diff = [f"{k} (folder: {old.get(k)!r}, asked: {stamp.get(k)!r})"
                    for k in sorted(stamp.keys() | old.keys()) if old.get(k) != stamp.get(k)]
            raise SynthError(f"{out} holds a synthetic dataset made with other settings (differ: {'; '.join(diff)}; "
                             f"see {path}); write to a new --out folder or delete {out}")
        return
    atomic_write_text(path, json.dumps(stamp, indent=2) + "\n")


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return  # a rerun leaves finished outputs untouched
    atomic_write_text(path, text)


def generate(config: SynthConfig, *, progress: bool = True) -> Path:
    """Write the dataset under ``config.out`` and return the manifest path.

    Resumable: finished videos (and mask files) are kept (never re-encoded), missing ones are written,
    and the manifest comes last. Refuses (SynthError) a folder made with different settings. Parallel over classes in
    ``config.workers`` spawned processes; the files do not depend on the worker count. Spawned workers
    re-import the calling script, so a script calling this with ``workers > 1`` needs the usual
    ``if __name__ == "__main__":`` guard (the ``fsar`` command and pytest have it).
    """
    from tqdm.auto import tqdm

    from fsar.data.manifest import assign_labels, manifest_table, write_manifest

    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_stamp(out, config.stamp())
    by_split = select_classes(config)
    labels = assign_labels({s: [c.name for c in cs] for s, cs in by_split.items()})
    split_of = {c.id: s for s, cs in by_split.items() for c in cs}

    records: list[dict[str, Any]] = []
    jobs = []
    for split, classes in by_split.items():
        for mc in classes:
            todo = []
            for index in range(config.videos_per_class):
                vid = video_id(mc.id, index, config.videos_per_class)
                rel = f"videos/{split}/{mc.slug}/{vid}.mp4"
                records.append({"video_id": vid, "path": rel, "label": labels[mc.name], "class_name": mc.name,
                                "split": split, "num_frames": clip_length(video_rng(config.seed, mc.id, index),
                                                                         config.frames)})
                video_path = out / rel
                masks_path = out / MASKS_DIR / f"{vid}.npz" if config.masks else None  # fsar.data.masks.mask_path
                task = _Task(index, None if _complete(video_path) else video_path,
                             None if masks_path is None or masks_path.is_file() else masks_path)
                if task.video is not None or task.masks is not None:
                    todo.append(task)
            if todo:
                jobs.append(_Job(mc, todo, config))

    total = len(records)
    pending = sum(len(j.tasks) for j in jobs)
    with tqdm(total=total, initial=total - pending, unit="video", desc="synth", disable=not progress) as bar:
        if config.workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                bar.update(_render_job(job))
        else:
            # spawn: no inherited locks or threads from a parent that may run Ray or torch.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(config.workers, len(jobs))) as pool:
                for done in pool.imap_unordered(_render_job, jobs):
                    bar.update(done)

    class_rows = []
    for mc in sorted((c for cs in by_split.values() for c in cs), key=lambda c: labels[c.name]):
        partner = config.generator().classes[mc.partner]
        class_rows.append({"label": labels[mc.name], "id": mc.id, "name": mc.name, "slug": mc.slug,
                           "family": mc.family, "motion": mc.motion, "reversed": mc.reversed,
                           "partner": mc.partner, "partner_name": partner.name,
                           "partner_split": split_of.get(mc.partner), "split": split_of[mc.id]})
    _write_if_changed(out / "classes.json", json.dumps(class_rows, indent=1) + "\n")

    manifest = out / "manifest.parquet"
    table = manifest_table(records)
    if manifest.is_file():
        import pyarrow.parquet as pq

        try:
            if pq.read_table(manifest).equals(table):
                return manifest
        except Exception:  # noqa: BLE001 — an unreadable old manifest is simply rewritten
            pass
    write_manifest(table, manifest)
    return manifest
