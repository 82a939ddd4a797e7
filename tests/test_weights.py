"""fsar.backbones.weights: one reading of ``pretrained`` for every place that loads an encoder."""

from __future__ import annotations

import pytest

from fsar.backbones import TINY_MODEL
from fsar.backbones.weights import Weights, parse_weights, resolve_weights


@pytest.mark.parametrize("text", [None, "", "none", "None", " NONE "])
def test_random_init_spellings(text):
    assert parse_weights(text) == Weights("random") and parse_weights(text).random


@pytest.mark.parametrize("text, kind", [("openai", "tag"), ("laion2b_s34b_b88k", "tag"), ("default", "default"),
                                        ("w.pt", "file"), ("w.safetensors", "file"), ("dir/w", "file")])
def test_tags_files_and_default_are_told_apart(text, kind):
    assert parse_weights(text).kind == kind


def test_a_file_path_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_weights("~/w.pt") == Weights("file", str(tmp_path / "w.pt"))


def test_default_resolves_to_the_models_openai_tag_or_random():
    assert resolve_weights("ViT-B-16", "default") == "openai"
    assert resolve_weights(TINY_MODEL, "default") is None
    assert resolve_weights("ViT-B-16", "none") is None and resolve_weights("ViT-B-16", "/w.pt") == "/w.pt"
