"""fsar.prediction.predictor: the encoder a run needs, its features in the run's view, and top-k predictions with
"unknown" below the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsar.config import ConfigError
from fsar.data.feature_store import StoreMeta
from fsar.methods.registry import build_method
from fsar.prediction.predictor import EncoderSettings, Predictor, in_view
from fsar.prediction.support_set import SupportClass

META = {"backbone": "fsar-tiny", "pretrained": None, "init_seed": 0, "frames": 8, "patch_grid": 4}


def test_settings_come_from_the_runs_store_and_name_each_difference():
    settings = EncoderSettings.of_run({"store_meta": META, "resolved_view": "grid"}, "run", input_kind="frames")
    assert (settings.view, settings.as_grid, settings.frames) == ("grid", False, 8)
    other = StoreMeta(backbone="fsar-tiny", pretrained=None, frames=4, embed_dim=8, patch_grid=2, image_size=64,
                      init_seed=1)
    assert settings.differences(other) == ["random weights seeded 1 instead of 0", "4 frames per video instead of 8",
                                           "patch grid 2 instead of 4"]
    with pytest.raises(ConfigError, match="end to end on decoded frames"):
        EncoderSettings.of_run({"store_meta": None, "method": "otam"}, "run", input_kind="pixels")


@pytest.mark.parametrize("view,as_grid,shape", [("pooled", False, (2, 8, 6)), ("grid", False, (2, 8, 96)),
                                                ("patches", False, (2, 8, 4, 4, 6)), ("pooled", True, (2, 8, 1, 1, 6))])
def test_encoder_outputs_take_the_runs_view(view, as_grid, shape):
    frames, patches = np.zeros((2, 8, 6)), np.arange(2 * 8 * 16 * 6).reshape(2, 8, 4, 4, 6)
    settings = EncoderSettings("fsar-tiny", None, 0, 8, 4, view, as_grid)
    out = in_view(frames, patches, settings)
    assert out.shape == shape
    if view == "grid":
        assert np.array_equal(out[1, 3], patches[1, 3].reshape(-1))  # the store's flattening: row-major grid


@pytest.mark.parametrize("score,threshold", [("max_logit", 1.0), ("max_softmax", 0.5)])
def test_predictions_are_top_k_and_unknown_below_the_threshold(score, threshold):
    rng = np.random.default_rng(0)
    method = build_method("protonet", feature_dim=6)
    settings = EncoderSettings("fsar-tiny", None, 0, 4, 0, "pooled", False)
    predictor = Predictor(method, settings, threshold=threshold, top_k=2, score=score)
    predictor.set_supports([SupportClass(n, ["a", "b"], rng.standard_normal((2, 4, 6)).astype(np.float16))
                            for n in ("b", "a", "c")])
    assert predictor.class_names == ["b", "a", "c"]
    # Query 1: a clear winner with a high logit; query 2: low logits, nearly tied (far from every class).
    logits = torch.tensor([[3.0, 0.5, 0.1], [0.3, 0.4, 0.2]])
    first, second = predictor.predictions(["q1", "q2"], logits, spans=[(0.0, 2.0), None])
    assert (first.top_classes, first.unknown, first.start_s) == (["b", "a"], False, 0.0)
    assert first.top_scores == pytest.approx(torch.softmax(logits[0], 0)[:2].tolist())
    assert (second.top_classes, second.unknown, second.row()["label"]) == (["a", "b"], True, "unknown")
    expected = 3.0 if score == "max_logit" else float(torch.softmax(logits[0], 0)[0])
    assert first.row()["match_score"] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="run reads 4"):
        predictor.set_supports([SupportClass("x", ["a"], np.zeros((1, 8, 6), np.float16))])
