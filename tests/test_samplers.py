"""fsar.sources.samplers: a run's training and validation samplers follow its settings, drop_small_classes too."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fsar.config import from_dict
from fsar.data.episodes import EpisodeError
from fsar.sources.samplers import training_sampler, validation_sampler
from fsar.training.config import TrainConfig


def settings(**kw):
    defaults = {"way": 2, "shot": 1, "query": 2, "seed": 0, "val_split": "val", "drop_small_classes": False}
    return SimpleNamespace(**(defaults | kw))


def test_the_advice_for_small_classes_is_a_key_a_run_takes_and_it_works(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1, 2])  # class 2 has one video, shot + query = 3
    names = {0: "a", 1: "b", 2: "c"}
    with pytest.raises(EpisodeError, match="set drop_small_classes=true") as refused:
        training_sampler(settings(), labels, names)
    assert "c (1)" in str(refused.value)
    config = from_dict(TrainConfig, {"method": "protonet", "out": str(tmp_path), "data": {"store": str(tmp_path)},
                                     "drop_small_classes": True})  # the key the advice names is accepted
    sampler = training_sampler(settings(drop_small_classes=config.drop_small_classes), labels, names)
    assert list(sampler.classes) == [0, 1]
    validation = validation_sampler(settings(drop_small_classes=True, shot=2), np.repeat([0, 1, 2], [6, 6, 2]), names)
    assert list(validation.classes) == [0, 1] and validation.seed == 1  # 1 query per class: shot + 1 = 3 > 2
