"""The episode samplers of a training run: its train split's stream and its fixed validation episodes."""

from __future__ import annotations

import numpy as np

from fsar.data.episodes import EpisodeSampler
from fsar.sources.base import SourceSettings


def training_sampler(settings: SourceSettings, labels: np.ndarray, class_names: dict[int, str]) -> EpisodeSampler:
    """The training episode sampler of the train split (seed ``seed``)."""
    return EpisodeSampler(labels, way=settings.way, shot=settings.shot, query=settings.query, seed=settings.seed,
                          class_names=class_names, split="train", drop_small_classes=settings.drop_small_classes)


def validation_sampler(settings: SourceSettings, labels: np.ndarray, class_names: dict[int, str]) -> EpisodeSampler:
    """The validation episode sampler: 1 query per class, seed ``seed + 1`` (never the training stream)."""
    return EpisodeSampler(labels, way=settings.way, shot=settings.shot, query=1, seed=settings.seed + 1,
                          class_names=class_names, split=settings.val_split,
                          drop_small_classes=settings.drop_small_classes)
