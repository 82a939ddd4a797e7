"""pipelines.explain: a picture per prediction, with the method's alignment or, without one, the class scores."""

from __future__ import annotations

import numpy as np
import torch

from fsar.methods.base import Explanation
from fsar.methods.registry import build_method
from fsar.prediction.predictor import EncoderSettings, Predictor
from pipelines.explain import best_support, draw


def test_a_picture_is_drawn_with_an_alignment_and_without_one(tmp_path):
    frames = np.full((4, 16, 16, 3), 120, np.uint8)
    path = Explanation("frame alignment", torch.eye(4), (torch.arange(4.0)[:, None] + 0.5) / 4,
                       (torch.arange(4.0)[:, None] + 0.5) / 4)
    for name, explanation in (("with.png", path), ("without.png", None)):
        draw(tmp_path / name, query_frames=frames, support_frames=frames, explanation=explanation,
             scores={"run": 0.7, "jump": 0.2}, title="q: run")
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_the_matched_support_is_the_closest_clip_of_the_class():
    torch.manual_seed(0)
    method = build_method("otam", feature_dim=8).eval()
    predictor = Predictor(method, EncoderSettings("fsar-tiny", None, 0, 4, 0, "pooled", False), threshold=0.5)
    rng = np.random.default_rng(0)
    clips = rng.standard_normal((3, 4, 8)).astype(np.float32)
    query = clips[2] + 0.01 * rng.standard_normal((4, 8)).astype(np.float32)
    index, support, _ = best_support(predictor, query, clips)
    assert index == 2 and torch.allclose(support.frames, method.encode(torch.from_numpy(clips[2])).frames)
