"""Training-time mask supervision (I2ST): up-front checks, the train split's masks, per-episode targets.

A method declares the masks it trains with (``FewShotMethod.mask_request``): ``files`` — masks read here
from the request's folder (``fsar.data.masks`` format) at the store's sampled frames and patch grid, then
passed to the method in ``Supervision`` each step; ``pseudo`` — the method computes them from the store's
class-name text embeddings, which must exist; no request — nothing. Only training
calls this module: evaluation never reads a mask source.

With Ray workers on several machines ``mask_files`` must be a path every worker can read (absolute, on
shared storage), like the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fsar.config import ConfigError
from fsar.data.episodes import Episodes
from fsar.data.feature_store import FeatureStore, SplitFeatures
from fsar.data.masks import MASK_SUFFIX, load_masks
from fsar.devices import episode_indices
from fsar.methods.base import FewShotMethod, Supervision


def check_mask_inputs(method: FewShotMethod, store: FeatureStore) -> None:
    """Refuse, before training starts, a mask source the method cannot be given."""
    request, name = method.mask_request, method.method_name
    if request is None:
        return
    if request.source == "files":
        root = Path(request.folder)
        if not root.is_dir():
            raise ConfigError(f"{name}: mask_source=files but mask_files={root} is not a folder; convert PNG masks "
                              f"with `fsar masks --png DIR --out {root}`, or set knobs.mask_source=pseudo or none")
    elif not store.has_class_text():
        raise ConfigError(f"{name}: mask_source=pseudo needs class-name text embeddings but store {store.root} has "
                          "none: re-embed with a backbone that has a text tower, or set knobs.mask_source=files or none")


@dataclass(frozen=True)
class MaskTable:
    """The masks of every video of a split, indexed like its features."""

    masks: Tensor  # (N, T, g, g) foreground fraction of each patch cell, in [0, 1]; (N, T, I, g, g) per instance
    valid: Tensor  # (N,) bool: the video has a mask file

    def supervision(self, episodes: Episodes) -> Supervision:
        """Targets of a batch of episodes: masks ``(E, N_s|N_q, T, [I,] g, g)`` and validity ``(E, N_s|N_q)``."""
        s_idx, q_idx = episode_indices(episodes, self.masks.device)
        return Supervision(support_masks=self.masks[s_idx], query_masks=self.masks[q_idx],
                           support_mask_valid=self.valid[s_idx], query_mask_valid=self.valid[q_idx])


def load_mask_table(method: FewShotMethod, store: FeatureStore, split: SplitFeatures, *,
                    device: torch.device | None = None) -> MaskTable | None:
    """The split's masks when the method trains on mask files, else None.

    ``split.features`` is ``(N, T, g, g, D)`` (patch methods); the masks are pooled to that grid at the
    split's sampled frames. Videos without a mask file only lose their mask loss (the count is logged);
    a folder with no mask for any video is a configuration error.
    """
    check_mask_inputs(method, store)
    request = method.mask_request
    if request is None or request.source != "files":
        return None
    if split.features.ndim != 5 or split.frame_indices is None:
        raise ConfigError(f"{method.method_name}: mask files need patch-grid features (N, T, g, g, D) with their "
                          "sampled frame numbers")
    root = request.folder
    masks, valid = load_masks(root, split.video_ids, split.frame_indices, split.features.shape[2],
                              instances=request.instances)
    if not valid.any():
        raise ConfigError(f"{method.method_name}: none of the {len(valid)} videos has a usable mask under {root} "
                          f"(looked for {Path(root) / ('<video_id>' + MASK_SUFFIX)}); check mask_files")
    return MaskTable(torch.from_numpy(masks).to(device), torch.from_numpy(valid).to(device))
