"""Where a run's videos come from: a feature store (cached features) or a manifest (decoded videos).

``open_source(config)`` gives a training run's ``EpisodeSource``, ``open_evaluation(data, split)`` an
evaluation's ``EvaluationSource``; see ``fsar.sources.base`` for both interfaces.
"""

from __future__ import annotations

from typing import Any

from fsar.data.sections import ManifestData, StoreData
from fsar.sources.base import EpisodeSource, EvaluationSource, SourceSettings


def open_source(config: SourceSettings, *, split_loader: Any = None) -> EpisodeSource:
    """The ``EpisodeSource`` of a training config's ``data`` section (a store or a manifest). ``split_loader``: how
    a store's split is read (``fsar.sources.features.SplitLoader``; default: from the store's files)."""
    if isinstance(config.data, StoreData):
        from fsar.sources.features import FeatureSource

        return FeatureSource(config, split_loader=split_loader)
    from fsar.sources.pixels import PixelSource

    return PixelSource(config)


def open_evaluation(data: StoreData | ManifestData, split: str) -> EvaluationSource:
    """The ``EvaluationSource`` of one split of a store or a manifest."""
    if isinstance(data, StoreData):
        from fsar.sources.features import StoreEvaluation

        return StoreEvaluation(data, split)
    from fsar.sources.pixels import PixelEvaluation

    return PixelEvaluation(data, split)
