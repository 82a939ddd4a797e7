""""None of these": a threshold on a query's best class score, chosen on a run's validation classes.

Open-set episodes are drawn from classes the run never trained on: ``way + 1`` classes, of which the first ``way``
give supports and the last gives only queries (an *unknown* class). A query's score (``open_set_score``) is its
best logit by default (the method's scaled similarity to the nearest class), or its best softmax probability. The
threshold is the ``1 - target_far`` quantile of the unknown queries' scores, so that about ``target_far`` of them
are accepted as some known class; below it a prediction answers ``unknown``.

The choice is stored with the run (``<run>/open_set-<way>way-<shot>shot-far<F>.json``: the best score of a query
depends on how many classes compete) and reported with what it costs on the known classes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

from fsar import storage
from fsar.config import ConfigError
from fsar.data.episodes import Episodes, EpisodeSampler
from fsar.devices import episode_class_text, episode_indices, episode_label_tensors
from fsar.storage import Location

OPEN_SET_PATTERN = "open_set-*.json"


@dataclass(frozen=True)
class OpenSetCalibration:
    """A threshold on the best class score and what it gave on the episodes it was chosen on."""

    threshold: float  # a query whose score is below this is unknown
    target_far: float  # wanted fraction of unknown queries accepted as a known class
    false_accept_rate: float  # measured: unknown queries at or above the threshold
    known_accuracy: float  # known queries accepted and correctly classified
    closed_set_accuracy: float  # known queries correctly classified, whatever their score
    known_rejected: float  # known queries answered unknown
    way: int
    shot: int
    episodes: int
    split: str
    score: str = "max_logit"  # what the threshold applies to (open_set_score)


def calibration_file(run: Location, *, way: int, shot: int, target_far: float, score: str) -> Location:
    """Where a run keeps the calibration for episodes of ``way`` classes and ``shot`` clips each."""
    from fsar.run_folder import RunFolder

    return RunFolder.of_checkpoint(run).file(f"open_set-{score}-{way}way-{shot}shot-far{target_far:g}.json")


def calibration_files(run: Location) -> list[Location]:
    from fsar.run_folder import RunFolder

    return storage.list_files(RunFolder.of_checkpoint(run).root, OPEN_SET_PATTERN)


def calibration_for(run: Location, method: torch.nn.Module, payload: dict, *, way: int, shot: int,
                    target_far: float, score: OpenSetScore = "max_logit", episodes: int = 500, seed: int = 0,
                    device: torch.device | str = "cpu") -> OpenSetCalibration:
    """The run's calibration for ``way`` classes of ``shot`` clips: read back when the run has it, else made now on
    the validation split of the store the run trained on, and stored with the run. With fewer validation classes
    than ``way + 1``, episodes have as many as there are (minus the unknown one); ``way`` in the result says so."""
    from fsar.data.sections import StoreData
    from fsar.sources.features import StoreEvaluation

    path = calibration_file(run, way=way, shot=shot, target_far=target_far, score=score)
    if storage.is_file(path):
        try:
            return OpenSetCalibration(**json.loads(storage.read_text(path)))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} does not read ({exc}): delete it, and it is made again") from None
    train = payload.get("train_config", {})
    store = train.get("data", {}).get("store")
    split = train.get("val_split", "val")
    if not store:
        raise ConfigError(f"run {run} names no feature store to calibrate on: give threshold=T (a best-class score "
                          "in [0, 1] below which a query is unknown)")
    try:
        data = StoreEvaluation(StoreData(store=store), split)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot calibrate run {run} on its store {store} ({str(exc)[:160]}): make the store "
                          "reachable, or give threshold=T") from None
    key = data.accept(method, payload, str(run))
    counts = np.bincount(np.unique(data.labels, return_inverse=True)[1])
    classes = int((counts > shot).sum())
    if classes < 2:
        raise ConfigError(f"run {run}: its {split} split has {classes} class(es) with more than {shot} videos; "
                          f"open-set calibration needs 2 (one known, one unknown): give threshold=T")
    query = int(max(1, min(5, np.median(counts) - shot)))
    features = torch.as_tensor(data.split_for(key).features).to(device)
    text = data.class_text.to(device) if getattr(method, "uses_text", False) and data.class_text is not None else None
    result = calibrate(method.to(device), features, data.labels, way=min(way, classes - 1), shot=shot, query=query,
                       episodes=episodes, seed=seed, target_far=target_far, score=score, class_text=text,
                       class_names=data.class_names, split=split)
    storage.write_text(path, json.dumps(asdict(result), indent=1) + "\n")
    return result


def open_set_episodes(labels: np.ndarray, *, way: int, shot: int, query: int, episodes: int, seed: int,
                      class_names: dict[int, str] | None = None, split: str = "val") -> Episodes:
    """Episodes of ``way + 1`` classes: the last class of each is the unknown one (queries only)."""
    sampler = EpisodeSampler(labels, way=way + 1, shot=shot, query=query, seed=seed, class_names=class_names,
                             split=split, drop_small_classes=True)
    return sampler.batch(0, episodes)


OpenSetScore = Literal["max_logit", "max_softmax"]


def open_set_score(logits: torch.Tensor, kind: OpenSetScore) -> torch.Tensor:
    """A query's "is it one of these" score from its logits ``(..., C)``: the best logit (the method's scaled
    similarity to the nearest class: a query of an unseen class is far from all of them) or the best softmax
    probability (how much the nearest class wins over the others)."""
    if kind == "max_logit":
        return logits.max(dim=-1).values
    if kind == "max_softmax":
        return torch.softmax(logits, dim=-1).max(dim=-1).values
    raise ConfigError(f"open_set_score must be max_logit or max_softmax, got {kind!r}")


def open_set_scores(method: torch.nn.Module, features: torch.Tensor, episodes: Episodes, *, score: OpenSetScore,
                    class_text: torch.Tensor | None = None, batch: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over open-set episodes: the known queries' scores ``(E·way·query,)`` and whether their best class is right,
    and the unknown queries' scores ``(E·query,)``. ``features`` ``(N, T, ...)`` on the device."""
    known_best, known_right, unknown_best = [], [], []
    way = episodes.classes.shape[1] - 1
    with torch.no_grad():
        for start in range(0, len(episodes), batch):
            part = episodes[start : start + batch]
            known = Episodes(part.classes[:, :way], part.support[:, :way], part.query[:, :way])
            s_idx, _ = episode_indices(known, features.device)
            s_lab, q_lab = episode_label_tensors(known, features.device)
            q_idx = torch.as_tensor(part.query.reshape(len(part), -1), device=features.device)
            text = episode_class_text(class_text, known)
            logits = method(features[s_idx].float(), s_lab, features[q_idx].float(), way, class_text=text).float()
            best, which = open_set_score(logits, score), logits.argmax(dim=-1)  # (E, (way + 1)·query)
            n_known = q_lab.shape[1]
            known_best.append(best[:, :n_known].reshape(-1).cpu().numpy())
            known_right.append((which[:, :n_known] == q_lab).reshape(-1).cpu().numpy())
            unknown_best.append(best[:, n_known:].reshape(-1).cpu().numpy())
    return np.concatenate(known_best), np.concatenate(known_right), np.concatenate(unknown_best)


def choose_threshold(unknown_best: np.ndarray, target_far: float) -> float:
    """The smallest threshold that accepts at most ``target_far`` of the unknown queries' best scores."""
    if not 0.0 <= target_far < 1.0:
        raise ConfigError(f"target_far must be in [0, 1), got {target_far}")
    ranked = np.sort(unknown_best)[::-1]
    allowed = int(np.floor(target_far * len(ranked)))  # unknown queries that may stay accepted
    if allowed >= len(ranked):
        return 0.0
    # Strictly above the first score that must be rejected (ties are rejected together).
    return float(np.nextafter(ranked[allowed], np.inf))


def rates(known_best: np.ndarray, known_right: np.ndarray, unknown_best: np.ndarray, threshold: float
          ) -> dict[str, float]:
    """What ``threshold`` gives: the false-accept rate on unknown queries, the accepted-and-right rate on known ones
    (and the closed-set accuracy and rejected fraction beside it)."""
    accepted = known_best >= threshold
    return {"false_accept_rate": float((unknown_best >= threshold).mean()),
            "known_accuracy": float((accepted & known_right).mean()),
            "closed_set_accuracy": float(known_right.mean()),
            "known_rejected": float((~accepted).mean())}


def calibrate(method: torch.nn.Module, features: torch.Tensor, labels: np.ndarray, *, way: int, shot: int,
              query: int = 5, episodes: int = 500, seed: int = 0, target_far: float = 0.05,
              score: OpenSetScore = "max_logit",
              class_text: torch.Tensor | None = None, class_names: dict[int, str] | None = None,
              split: str = "val") -> OpenSetCalibration:
    """Choose the threshold on ``episodes`` open-set episodes of one split (``features`` ``(N, T, ...)``)."""
    eps = open_set_episodes(labels, way=way, shot=shot, query=query, episodes=episodes, seed=seed,
                            class_names=class_names, split=split)
    known_best, known_right, unknown_best = open_set_scores(method, features, eps, score=score, class_text=class_text)
    threshold = choose_threshold(unknown_best, target_far)
    return OpenSetCalibration(threshold=threshold, target_far=target_far, way=way, shot=shot, episodes=episodes,
                              split=split, score=score, **rates(known_best, known_right, unknown_best, threshold))
