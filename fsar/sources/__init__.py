"""Where a run's episodes come from: a feature store (cached features) or a manifest (decoded videos).

``open_source(config)`` picks the source of ``config.data``; see ``fsar.sources.base`` for the interface.
"""

from __future__ import annotations

from typing import Any


def open_source(config: Any, *, split_loader: Any = None) -> Any:
    """The ``EpisodeSource`` of a TrainConfig's ``data`` section (a store or a manifest). ``split_loader``: how a
    store's split is read (``fsar.sources.features.SplitLoader``; default: from the store's files)."""
    from fsar.training.config import StoreData

    if isinstance(config.data, StoreData):
        from fsar.sources.features import FeatureSource

        return FeatureSource(config, split_loader=split_loader)
    from fsar.sources.pixels import PixelSource

    return PixelSource(config)
