"""fsar.methods registry and base contract, checked on every registered method.

The per-method tests iterate ``list_methods()``, so a newly registered method is covered without
editing this file: each is built with every parameter-bearing option switched on (``SMALL_KNOBS``),
on small random episodes of its declared input kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F

from fsar.config import ConfigError
from fsar.methods import (
    FewShotMethod,
    UnknownMethodError,
    build_method,
    list_methods,
    method_info,
    register_method,
)
from fsar.methods.base import Supervision
from fsar.methods.parts import LogitScale, class_average, class_prototypes
from fsar.methods.registry import MethodInfo

FEATURE_DIM = 12
# Knobs that switch on a method's learned parts at a small size; applied where the config has the field.
# A new method with a size knob that defaults large can add it here.
# num_frames: methods with a fixed clip length get make_episodes' 4 frames; gate_init: residual gates that
# start at 0 would leave the weights behind them without gradient on the first step.
# reduction: DMGAL's motion tokens get D / reduction channels, which must be > 1 for their LayerNorm to pass
# a gradient (at D = 12 the released 8 leaves one channel).
# scales: A2M2's windows must fit the 4-frame clips (its default [4, 8] gives two whole-clip windows there).
SMALL_KNOBS = {"proj_dim": 16, "learn_scale": True, "num_frames": 4, "gate_init": 0.1, "reduction": 2, "scales": [2, 4]}
PER_VIDEO = {"frames": (FEATURE_DIM,), "patches": (2, 2, FEATURE_DIM), "pixels": (3, 16, 16)}
METHODS = list_methods()


def knob_names(info: MethodInfo) -> set[str]:
    return {f.name for f in dataclasses.fields(info.config)}


def build_small(name: str, *, text_dim: int | None = None, **extra) -> FewShotMethod:
    """The method at a small size; one that needs class text is built for ``FEATURE_DIM``-wide text."""
    info = method_info(name)
    if info.needs_text and text_dim is None:
        text_dim = FEATURE_DIM
    knobs = {k: v for k, v in SMALL_KNOBS.items() if k in knob_names(info)} | extra
    torch.manual_seed(0)
    return build_method(name, feature_dim=FEATURE_DIM, text_dim=text_dim, **knobs)


# Settings under which a method builds fewer parts; each must still give every parameter it builds a gradient
# (DDP fails a step on a parameter that got none).
LEAN_VARIANTS = {"i2st": [{"layers": 0, "match_features": "frame"}, {"layers": 0, "match_features": "instances"}],
                 "a2m2": [{"marginals": "uniform", "time_encoding": False}, {"text_weight": 0.0, "text_loss": 0.0}]}
GRADIENT_CASES = [(name, text, knobs) for name in METHODS
                  for text in ((FEATURE_DIM,) if method_info(name).needs_text else (None, FEATURE_DIM))
                  for knobs in [{}, *LEAN_VARIANTS.get(name, [])]]
# Class-name embeddings of up to 4 episodes of 3 classes, for the methods that read text.
EPISODE_TEXT = torch.randn(4, 3, FEATURE_DIM, generator=torch.Generator().manual_seed(7))


def run(method: FewShotMethod, support, labels, query, way: int, *, episode: int | None = None) -> torch.Tensor:
    """``method(support, labels, query, way)``, with class text when the method reads it: the first episodes'
    text for a batch, episode ``episode``'s for a single episode."""
    text = None
    if method.uses_text:
        text = EPISODE_TEXT[: labels.shape[0], :way] if episode is None else EPISODE_TEXT[episode, :way]
    return method(support, labels, query, way, class_text=text)


def make_episodes(name: str, *, batch: int = 3, way: int = 3, shot: int = 2, n_query: int = 2, frames: int = 4, seed: int = 0):
    """Random balanced episodes, labels shuffled within each episode; returns support, labels, query, query labels."""
    gen = torch.Generator().manual_seed(seed)
    per_video = (frames, *PER_VIDEO[method_info(name).input_kind])

    def labels(per_class: int) -> torch.Tensor:
        base = torch.arange(way).repeat_interleave(per_class)
        return torch.stack([base[torch.randperm(len(base), generator=gen)] for _ in range(batch)])

    support_labels, query_labels = labels(shot), labels(n_query)
    support = torch.randn(batch, way * shot, *per_video, generator=gen)
    query = torch.randn(batch, way * n_query, *per_video, generator=gen)
    return support, support_labels, query, query_labels



def test_builtin_methods_are_registered():
    assert {"protonet", "otam", "bimhm"} <= set(METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_info_describes_the_method(name):
    info = method_info(name)
    assert info.name == name
    assert info.input_kind in PER_VIDEO
    assert isinstance(info.needs_text, bool)
    assert info.description.strip()
    assert issubclass(info.cls, FewShotMethod)
    assert info.cls.method_name == name and info.cls.input_kind == info.input_kind
    missing = [f.name for f in dataclasses.fields(info.config)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    assert not missing, f"{name}: knobs without defaults {missing}; `build_method(name)` must work with none"
    method = build_method(name, feature_dim=FEATURE_DIM)
    assert type(method) is info.cls
    assert isinstance(method.config, info.config)


@pytest.mark.parametrize("name", METHODS)
def test_output_shapes_and_values(name):
    method = build_small(name).eval()
    support, labels, query, _ = make_episodes(name)
    batched = run(method, support, labels, query, 3)
    assert batched.shape == (3, 6, 3)
    assert torch.isfinite(batched).all()
    single = run(method, support[0], labels[0], query[0], 3, episode=0)
    assert single.shape == (6, 3)
    text = EPISODE_TEXT[:3] if method.uses_text else None
    logits, aux = method.forward_with_aux(support, labels, query, 3, class_text=text)
    torch.testing.assert_close(logits, batched)
    assert isinstance(aux, Mapping)
    for key, value in aux.items():
        assert isinstance(key, str) and value.dim() == 0 and torch.isfinite(value), key


@pytest.mark.parametrize(("name", "text_dim", "knobs"), GRADIENT_CASES)
def test_gradients_reach_every_parameter(name, text_dim, knobs):
    """On a store with class text and on one without, and in the methods' lean settings: every parameter a
    method builds gets a gradient from one training step, so DDP needs no unused-parameter search."""
    method = build_small(name, text_dim=text_dim, **knobs).train()
    support, labels, query, query_labels = make_episodes(name)
    assert not method.uses_text or text_dim is not None, f"{name} reads text it was not offered"
    # Text-reading methods get class-name embeddings and training-only labels, so their text parts train too.
    text = torch.randn(support.shape[0], 3, FEATURE_DIM) if method.uses_text else None
    logits, aux = method.forward_with_aux(support, labels, query, 3, class_text=text,
                                          supervision=Supervision(query_labels=query_labels))
    loss = F.cross_entropy(logits.reshape(-1, 3), query_labels.reshape(-1)) + sum(aux.values())
    loss.backward()
    params = {n: p for n, p in method.named_parameters() if p.requires_grad}  # frozen backbones do not train
    if "proj_dim" in knob_names(method_info(name)):
        assert params, f"{name} built with proj_dim=16 has no parameters"
    for pname, param in params.items():
        assert param.grad is not None, f"{name}.{pname} got no gradient"
        assert param.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"


# Methods whose training-mode encoding couples the videos of a batch: DMGAL keeps the released code's
# BatchNorm (S-MGA, and ResNet-50's in FT). Across GPUs the trainer turns it into SyncBatchNorm, so the worker
# count still does not change the statistics; on CPU workers (gloo) it does. Every other method encodes each
# video alone.
BATCH_COUPLED = {"dmgal", "dmgal_ft", "dmgal_adapter"}


@pytest.mark.parametrize("name", METHODS)
def test_training_encodes_each_video_alone(name):
    """In training mode a video's encoding does not depend on the other videos of its batch (no batch
    statistics), except for the documented BatchNorm methods, which must indeed hold BatchNorm."""
    method = build_small(name).train()
    has_batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in method.modules())
    assert has_batch_norm == (name in BATCH_COUPLED), name
    if name in BATCH_COUPLED:
        return
    # Dropout draws its masks per element, so it couples no videos, but it makes two encodings differ: off here.
    for module in method.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    support, _, query, _ = make_episodes(name)
    videos = torch.cat([support[0], query[0]])
    with torch.no_grad():
        together = method.encode(videos)
        alone = method.encode(videos[:1])
        others = method.encode(torch.cat([videos[:1], 3.0 * videos[1:] + 1.0]))
    first = (lambda e: tuple(p[:1] for p in e)) if isinstance(together, tuple) else (lambda e: e[:1])
    for reference in (alone, first(others)):
        for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (first(together), reference)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_batched_equals_one_episode_at_a_time(name):
    method = build_small(name).eval()
    support, labels, query, _ = make_episodes(name, batch=4)
    with torch.no_grad():
        batched = run(method, support, labels, query, 3)
        for b in range(4):
            torch.testing.assert_close(run(method, support[b], labels[b], query[b], 3, episode=b), batched[b],
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_support_order_does_not_matter_and_query_order_permutes_rows(name):
    method = build_small(name).eval()
    support, labels, query, _ = make_episodes(name, batch=2)
    gen = torch.Generator().manual_seed(1)
    s_perm = torch.randperm(support.shape[1], generator=gen)
    q_perm = torch.randperm(query.shape[1], generator=gen)
    with torch.no_grad():
        logits = run(method, support, labels, query, 3)
        torch.testing.assert_close(run(method, support[:, s_perm], labels[:, s_perm], query, 3), logits,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run(method, support, labels, query[:, q_perm], 3), logits[:, q_perm],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_unknown_knob_is_rejected_with_the_valid_ones(name):
    with pytest.raises(ConfigError) as err:
        build_method(name, feature_dim=FEATURE_DIM, not_a_knob=1)
    message = str(err.value)
    assert "not_a_knob" in message
    for knob in knob_names(method_info(name)):
        assert knob in message


@pytest.mark.parametrize("name", METHODS)
def test_out_of_range_knobs_are_rejected(name):
    names = knob_names(method_info(name))
    if "temperature" in names:
        with pytest.raises(ConfigError, match="temperature"):
            build_method(name, feature_dim=FEATURE_DIM, temperature=0.0)
    if "proj_dim" in names:
        with pytest.raises(ConfigError, match="proj_dim"):
            build_method(name, feature_dim=FEATURE_DIM, proj_dim=-1)
        with pytest.raises(ConfigError, match="proj_dim"):
            build_method(name, feature_dim=FEATURE_DIM, proj_dim="16")


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(UnknownMethodError) as err:
        build_method("otma", feature_dim=8)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert message.startswith("unknown method 'otma'")
    for name in METHODS:
        assert name in message
    with pytest.raises(KeyError):
        method_info("nope")


def test_registration_errors():
    class Stray(FewShotMethod):
        pass

    @dataclasses.dataclass
    class Knobs:
        x: int = 1

    with pytest.raises(ValueError, match="already registered"):
        register_method("otam", config=Knobs)(Stray)
    with pytest.raises(TypeError, match="not a FewShotMethod"):
        register_method("stray-module", config=Knobs)(torch.nn.Linear)
    with pytest.raises(ValueError, match="input_kind"):
        register_method("stray-kind", config=Knobs, input_kind="audio")
    with pytest.raises(TypeError, match="dataclass"):
        register_method("stray-config", config=dict)
    assert "stray-module" not in list_methods() and "stray-kind" not in list_methods()


def test_inputs_are_checked_with_clear_messages():
    method = build_method("protonet", feature_dim=FEATURE_DIM)
    support, labels, query, _ = make_episodes("protonet", batch=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        method(support, labels + 1, query, 3)
    with pytest.raises(ValueError, match="at least one support video"):
        method(support, labels.clamp(max=1), query, 3)
    with pytest.raises(ValueError, match="episode axis"):
        method(support, labels, query[0], 3)
    with pytest.raises(ValueError, match="per-frame shapes differ"):
        method(support, labels, query[..., :5], 3)
    with pytest.raises(ValueError, match="must be integers"):
        method(support, labels.float(), query, 3)
    with pytest.raises(ValueError, match=r"\(N_s, T, \.\.\.\)"):
        method(support[0, 0], labels[0, :1], query[0, 0], 3)


def test_class_average_handles_unequal_shots():
    values = torch.tensor([[[1.0, 2.0, 3.0, 10.0]]])  # one query, four support videos
    labels = torch.tensor([[0, 0, 0, 1]])
    torch.testing.assert_close(class_average(values, labels, 2), torch.tensor([[[2.0, 10.0]]]))
    support = torch.arange(8.0).reshape(1, 4, 2)
    torch.testing.assert_close(class_prototypes(support, labels, 2), torch.tensor([[[2.0, 3.0], [6.0, 7.0]]]))


def test_logit_scale():
    fixed = LogitScale(0.5)
    assert not list(fixed.parameters())
    torch.testing.assert_close(fixed(torch.tensor([1.0, 2.0])), torch.tensor([-2.0, -4.0]))
    learned = LogitScale(0.5, learn=True)
    assert len(list(learned.parameters())) == 1
    torch.testing.assert_close(learned(torch.tensor([1.0])), torch.tensor([-2.0]))
    with pytest.raises(ValueError, match="temperature"):
        LogitScale(0.0)


def test_temporal_centre_ignores_static_appearance():
    """For every method with the knob: adding a per-video constant (background, colour) changes nothing."""
    names = [n for n in list_methods() if "temporal_centre" in method_info(n).config.__dataclass_fields__]
    assert {"otam", "bimhm"} <= set(names)
    for name in names:
        torch.manual_seed(0)
        per_frame = (*PER_VIDEO[method_info(name).input_kind][:-1], 16)
        support, query = torch.randn(2, 5, 6, *per_frame), torch.randn(2, 5, 6, *per_frame)
        labels = torch.arange(5).expand(2, 5)
        shifted_s = support + 5 * torch.randn(2, 5, 1, *per_frame)
        shifted_q = query + 5 * torch.randn(2, 5, 1, *per_frame)
        frames = {"num_frames": 6} if "num_frames" in method_info(name).config.__dataclass_fields__ else {}
        method = build_method(name, feature_dim=16, temporal_centre=True, **frames).eval()
        torch.testing.assert_close(method(shifted_s, labels, shifted_q, 5), method(support, labels, query, 5))
        plain = build_method(name, feature_dim=16, temporal_centre=False, **frames).eval()
        assert not torch.allclose(plain(shifted_s, labels, shifted_q, 5), plain(support, labels, query, 5)), name


@pytest.mark.parametrize("name", [n for n in METHODS if method_info(n).configurations])
def test_every_named_configuration_builds_and_is_remembered(name):
    info = method_info(name)
    assert info.default_configuration in info.configurations
    for label in info.configurations:
        method = build_method(name, feature_dim=FEATURE_DIM, configuration=label)
        assert method.configuration == label
        assert all(getattr(method.config, k) == v for k, v in info.configurations[label].knobs.items())


def test_configuration_errors_name_the_fix():
    from fsar.config import ConfigError
    from fsar.methods.registry import knobs_beside_configuration

    with pytest.raises(ConfigError, match="no configuration 'papper'; its configurations: fsar, paper"):
        build_method("a2m2", feature_dim=FEATURE_DIM, configuration="papper")
    with pytest.raises(ConfigError, match="'otam' has no named configurations"):
        build_method("otam", feature_dim=FEATURE_DIM, configuration="paper")
    fsar = build_method("a2m2", feature_dim=FEATURE_DIM, configuration="fsar", fusion=0.0)
    from fsar.config import to_dict

    assert knobs_beside_configuration("a2m2", "fsar", to_dict(fsar.config)) == {"fusion": 0.0}
