"""The few-shot method contract: a per-video ``encode``, a per-episode ``head``, and declared capabilities.

A method maps one episode (or a batch of episodes) to class logits::

    logits = method(support, support_labels, query, way)

    support         (N_s, T, ...)  or (B, N_s, T, ...)   the method's input kind per video
    support_labels  (N_s,)         or (B, N_s)           int64 in [0, way)
    query           (N_q, T, ...)  or (B, N_q, T, ...)
    logits          (N_q, way)     or (B, N_q, way)

The per-video trailing shape is (T, D) for ``frames``, (T, g, g, d) for ``patches`` and (T, 3, H, W) for
``pixels``. Every method is two parts, and ``forward`` is their composition:

- ``encode(videos (..., T, ...))`` → an **encoding**: a NamedTuple of tensors sharing the leading ``(...)``
  axes. It depends on each video alone (no episode context, no batch statistics unless documented), so
  evaluation encodes every video of a split once instead of once per episode it appears in (through
  ``encode_for_scoring``: ``encode`` unless the method keeps another, exact form for its head there).
- ``head(support_encoding, support_labels, query_encoding, way, class_text=, supervision=)`` →
  ``HeadOutput(logits (B, N_q, way), aux)``: the per-episode part, batched over episodes. ``aux`` holds
  named training-only losses. A query's logits never depend on another query.

Two optional keyword inputs travel beside the episode:

    class_text      (way, E)  or (B, way, E)   text embedding of each episode class's name, in label
                                               order (the store's CLIP text tower); None when absent
    supervision     Supervision or None        training-only targets (query labels, masks); never
                                               given at evaluation, so logits must not depend on it

A method **declares** what training must give it beyond the episode, so a source reads the declaration and
never a knob by name: ``uses_text`` (class-name text), ``clip_length`` (a fixed number of frames per video,
or None for any) and ``mask_request`` (mask supervision: files from a folder, or pseudo-masks it makes
itself from class text; None for none).

A method may also **declare** a capability the evaluator uses (``fsar.evaluation.scoring``), instead of the
evaluator guessing from the class: ``pair_table = True`` (``PairTableMethod``) says the logits come from a
distance per (query, support) pair plus the encoding fields ``pair_table_reads``, so evaluation solves each
pair once per split and reuses it in every episode the pair meets in. ``one_shot_pair_table = True`` says
the same only of 1-shot episodes (TRX: a class's attention spans all its shots, so only a one-video class's
distance is a pair's); such a method also has ``pair_distance``, ``logits_from_pairs`` and
``pair_table_reads``, used on 1-shot episodes, and its ``head`` serves the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

# Dimensions of one video per input kind (time first): frames (T, D), patches (T, g, g, d), pixels (T, 3, H, W).
VIDEO_DIMS = {"frames": 2, "patches": 4, "pixels": 4}

Encoding = Any  # a NamedTuple of tensors (or None for fields a caller did not gather), leading axes shared


class FrameEncoding(NamedTuple):
    """The encoding of methods that compare per-frame vectors."""

    frames: Tensor  # (..., T, F)


@dataclass(frozen=True)
class MaskRequest:
    """The mask supervision a method trains with (training only; evaluation never reads masks)."""

    source: Literal["files", "pseudo"]  # files: read from ``folder``; pseudo: made by the method from class text
    folder: str = ""  # files: the mask folder (``fsar.data.masks`` format)
    instances: int = 0  # files: read instance ids 1..instances apart, (…, I, g, g); 0: one foreground mask (…, g, g)


@dataclass
class Supervision:
    """Training-only targets for auxiliary losses, batched like the episode (B first).

    Logits must never depend on these: evaluation passes no supervision.
    """

    query_labels: Tensor | None = None  # (B, N_q) episode-local labels of the queries
    support_masks: Tensor | None = None  # (B, N_s, T, g, g) in [0, 1]: per-patch foreground; (B, N_s, T, I, g, g) per instance
    query_masks: Tensor | None = None  # (B, N_q, T, g, g) or (B, N_q, T, I, g, g)
    support_mask_valid: Tensor | None = None  # (B, N_s) bool: whether that video has a mask
    query_mask_valid: Tensor | None = None  # (B, N_q) bool


NO_AUX: Mapping[str, Tensor] = MappingProxyType({})  # a head without auxiliary losses (read-only: shared)


class HeadOutput(NamedTuple):
    """What a head returns: logits ``(B, N_q, way)`` and named auxiliary losses (scalars; training only).
    Unpacks as ``logits, aux = method.forward_with_aux(...)``."""

    logits: Tensor
    aux: Mapping[str, Tensor] = NO_AUX


def index_encoding(encoding: Encoding, index: Tensor) -> Encoding:
    """``encoding[index]`` field by field (a None field stays None): ``(N, ...)`` → ``index.shape + (...)``."""
    return type(encoding)(*(None if part is None else part[index] for part in encoding))


def concat_encodings(parts: list[Encoding]) -> Encoding:
    """Encodings of consecutive chunks of videos → one encoding of them all (along the first axis)."""
    return type(parts[0])(*(torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))))


def keep_fields(encoding: Encoding, names: tuple[str, ...]) -> Encoding:
    """The encoding with every field not in ``names`` set to None (so a caller gathers only what is read)."""
    return encoding._replace(**{f: None for f in encoding._fields if f not in names})


@dataclass(frozen=True)
class Explanation:
    """Why one query matched one support video, in the method's own terms (``FewShotMethod.explain``).

    ``weights`` ``(I, J)``: how strongly query item i meets support item j (≥ 0), where items are what the method
    aligns: frames (OTAM's path, Bi-MHM's matches), temporal candidates (A2M2's transport plan), frame tuples
    (TRX). ``query_items`` ``(I, k)`` and ``support_items`` ``(J, k)``: each item's frame positions in [0, 1]
    (a frame's centre; a candidate's window centre; a tuple's frames), so a picture can place it on the clips.
    ``query_masks`` ``(T, g, g)`` in [0, 1]: where in each query frame the method looked (I2ST's instance masks),
    or None."""

    kind: str  # frame path, transport plan, tuple attention, instance masks
    weights: Tensor
    query_items: Tensor
    support_items: Tensor
    query_masks: Tensor | None = None


def frame_positions(frames: int, device: torch.device | None = None) -> Tensor:
    """Centres in [0, 1] of ``frames`` frames, as ``(T, 1)`` item positions."""
    return ((torch.arange(frames, device=device, dtype=torch.float32) + 0.5) / frames)[:, None]


class FewShotMethod(nn.Module):
    """Base of every registered method; see the module docstring for the contract.

    Subclasses implement ``encode`` and ``head``. ``register_method`` fills ``method_name``, ``input_kind``
    and ``needs_text``.
    """

    method_name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "frames"
    needs_text: ClassVar[bool] = False
    pair_table: ClassVar[bool] = False  # declared: logits from per-pair distances (see PairTableMethod)
    one_shot_pair_table: ClassVar[bool] = False  # declared: the same, at one shot per class only
    # How the evaluator fills a pair table: pair_distance gets rows of one query and pair_table_row supports, and
    # of the supports only the fields pair_table_support_reads (None: all), so a query's costly fields are
    # gathered once per row and a support's once per pair only where read.
    pair_table_row: ClassVar[int] = 1
    pair_table_support_reads: ClassVar[tuple[str, ...] | None] = None

    config: Any  # the method's resolved config dataclass, saved next to a run to rebuild the method
    configuration: str = ""  # the named configuration it was built from (registry), "" for none

    @property
    def uses_text(self) -> bool:
        """Whether this instance reads ``class_text`` when the store has it (``needs_text`` methods must)."""
        return self.needs_text

    @property
    def clip_length(self) -> int | None:
        """Frames per video this instance was built for (a time MLP of fixed size), or None for any length."""
        return None

    @property
    def mask_request(self) -> MaskRequest | None:
        """The mask supervision this instance trains with, or None."""
        return None

    def explain(self, support: Encoding, query: Encoding, *, query_video: Tensor | None = None) -> Explanation | None:
        """The alignment behind one (query, support) pair: encodings of one video each (no leading axes), and the
        query's input ``(T, ...)`` for a method that shows where in a frame it looked. None: the method aligns
        nothing (ProtoNet compares one vector per video); a picture then shows the class scores."""
        return None

    def encode(self, videos: Tensor) -> Encoding:
        """Per video: ``(..., T, ...)`` → an encoding (NamedTuple) sharing the leading ``(...)`` axes."""
        raise NotImplementedError

    def encode_for_scoring(self, videos: Tensor) -> Encoding:
        """The encoding evaluation keeps per video and gathers per episode (``fsar.evaluation.scoring``):
        ``encode``'s, unless a method's head has an exact, faster form that reads another per-video encoding
        (TRX); ``head`` must accept what this returns."""
        return self.encode(videos)

    def head(self, support: Encoding, support_labels: Tensor, query: Encoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        """Per episode: encodings ``(B, N_s, ...)`` / ``(B, N_q, ...)``, labels ``(B, N_s)`` → logits and aux."""
        raise NotImplementedError

    def forward(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int, *,
                class_text: Tensor | None = None) -> Tensor:
        """Class logits ``(N_q, way)``, or ``(B, N_q, way)`` for a batch of episodes."""
        return self.forward_with_aux(support, support_labels, query, way, class_text=class_text).logits

    def forward_with_aux(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int, *,
                         class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        """``encode`` both sides, then ``head``; shapes checked, the episode axis added when missing."""
        batched = self._check(support, support_labels, query, way)
        if class_text is not None:
            self._check_text(class_text, support, way, batched)
        if not batched:
            support, support_labels, query = support.unsqueeze(0), support_labels.unsqueeze(0), query.unsqueeze(0)
            class_text = None if class_text is None else class_text.unsqueeze(0)
        out = self.head(self.encode(support), support_labels, self.encode(query), way, class_text=class_text,
                        supervision=supervision)
        return out if batched else HeadOutput(out.logits.squeeze(0), out.aux)

    def _check_text(self, class_text: Tensor, support: Tensor, way: int, batched: bool) -> None:
        name = self.method_name or type(self).__name__
        expected = ((support.shape[0],) if batched else ()) + (way,)
        if class_text.dim() != len(expected) + 1 or tuple(class_text.shape[:-1]) != expected:
            raise ValueError(
                f"{name}: class_text must be {'(B, way, E)' if batched else '(way, E)'} = "
                f"{expected + ('E',)}, got {tuple(class_text.shape)}"
            )

    def _check(self, support: Tensor, support_labels: Tensor, query: Tensor, way: int) -> bool:
        """Validate one call's shapes and labels; returns whether the inputs carry an episode axis."""
        name = self.method_name or type(self).__name__
        video_dims = VIDEO_DIMS[self.input_kind]
        if support.dim() not in (video_dims + 1, video_dims + 2):
            raise ValueError(
                f"{name}: support must be (N_s, T, ...) or (B, N_s, T, ...) with {self.input_kind} of "
                f"{video_dims} dims per video, got shape {tuple(support.shape)}"
            )
        batched = support.dim() == video_dims + 2
        if query.dim() != support.dim() or support_labels.dim() != (2 if batched else 1):
            raise ValueError(
                f"{name}: support {tuple(support.shape)}, labels {tuple(support_labels.shape)} and query "
                f"{tuple(query.shape)} must all have an episode axis or all lack one"
            )
        lead = 2 if batched else 1
        if support.shape[:lead] != support_labels.shape:
            raise ValueError(f"{name}: {tuple(support_labels.shape)} labels for support of shape {tuple(support.shape)}")
        if batched and query.shape[0] != support.shape[0]:
            raise ValueError(f"{name}: {query.shape[0]} query episodes but {support.shape[0]} support episodes")
        # Time may differ between query and support (OTAM aligns L×M); the per-frame shape may not.
        if support.shape[lead + 1 :] != query.shape[lead + 1 :]:
            raise ValueError(
                f"{name}: per-frame shapes differ: support {tuple(support.shape[lead + 1:])}, "
                f"query {tuple(query.shape[lead + 1:])}"
            )
        if support_labels.dtype.is_floating_point or support_labels.dtype == torch.bool:
            raise ValueError(f"{name}: support_labels must be integers, got {support_labels.dtype}")
        if way < 1:
            raise ValueError(f"{name}: way must be >= 1, got {way}")
        if support_labels.device.type != "cpu":
            # Reading label values on an accelerator waits for the device (a host sync every training step),
            # and meta tensors have no values; labels that reach a device come from the episode sampler.
            return batched
        if support_labels.numel():
            low, high = torch.aminmax(support_labels)
            if low < 0 or high >= way:
                raise ValueError(f"{name}: support labels must lie in [0, {way}), got [{int(low)}, {int(high)}]")
        present = torch.zeros(*support_labels.shape[:-1], way, dtype=torch.bool, device=support_labels.device)
        present.scatter_(-1, support_labels.long(), True)
        if not bool(present.all()):
            raise ValueError(f"{name}: every one of the {way} classes needs at least one support video")
        return batched


class PairTableMethod(FewShotMethod):
    """A method whose logits come from a distance between each (query, support) video pair, plus terms that
    read only the encoding fields ``pair_table_reads`` (and class text).

    Declares ``pair_table``: evaluation computes each pair's distance once for the whole split and reuses
    it in every episode the pair meets in, gathering only ``pair_table_reads`` per episode. Subclasses
    implement ``pair_distance`` and ``logits_from_pairs`` (and ``auxiliary_losses`` for training losses).
    """

    pair_table: ClassVar[bool] = True
    pair_table_reads: ClassVar[tuple[str, ...]] = ()  # encoding fields logits_from_pairs reads

    def head(self, support: Encoding, support_labels: Tensor, query: Encoding, way: int, *,
             class_text: Tensor | None = None, supervision: Supervision | None = None) -> HeadOutput:
        logits = self.logits_from_pairs(self.pair_distance(support, query), support, support_labels, query, way,
                                        class_text=class_text)
        return HeadOutput(logits, self.auxiliary_losses(support, support_labels, query, way, class_text=class_text,
                                                        supervision=supervision))

    def pair_distance(self, support: Encoding, query: Encoding) -> Tensor:
        """Encoded support ``(B, N_s, ...)`` and query ``(B, N_q, ...)`` → distances ``(B, N_q, N_s)``.

        Entry [b, i, j] must depend on query i and support j of episode b only."""
        raise NotImplementedError

    def logits_from_pairs(self, distance: Tensor, support: Encoding, support_labels: Tensor, query: Encoding,
                          way: int, *, class_text: Tensor | None = None) -> Tensor:
        """Pair distances ``(B, N_q, N_s)`` (and the ``pair_table_reads`` fields) → logits ``(B, N_q, way)``."""
        raise NotImplementedError

    def auxiliary_losses(self, support: Encoding, support_labels: Tensor, query: Encoding, way: int, *,
                         class_text: Tensor | None = None,
                         supervision: Supervision | None = None) -> dict[str, Tensor]:
        """Training-only losses; none by default."""
        return {}
