"""The DMGAL methods (``dmgal_ft``, ``dmgal_adapter``): knobs, logits, transduction-freeness and training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import vit_maps_reference

from fsar.backbones import build_backbone
from fsar.config import ConfigError
from fsar.methods import build_method

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def episode(way: int = 3, shot: int = 1, n_query: int = 1, frames: int = 4, size: int = 32, batch: int = 2,
            seed: int = 0):
    """Random pixel episodes: support ``(B, way·shot, T, 3, S, S)``, labels, query, query labels."""
    gen = torch.Generator().manual_seed(seed)
    support = torch.randn(batch, way * shot, frames, 3, size, size, generator=gen)
    query = torch.randn(batch, way * n_query, frames, 3, size, size, generator=gen)
    labels = torch.arange(way).repeat_interleave(shot).expand(batch, -1)
    query_labels = torch.arange(way).repeat_interleave(n_query).expand(batch, -1)
    return support, labels, query, query_labels


@pytest.mark.parametrize("knobs, match", [
    ({"reduction": 0}, "reduction"),
    ({"dropout": 1.0}, "dropout"),
    ({"temperature": 0.0}, "temperature"),
    ({"gate_init": float("nan")}, "gate_init"),
    ({"backbone": " "}, "backbone"),
])
def test_shared_knobs_are_checked(knobs, match):
    for name in ("dmgal_ft", "dmgal_adapter"):
        with pytest.raises(ConfigError, match=match):
            build_method(name, feature_dim=0, **knobs)


def test_variant_knobs_are_checked():
    with pytest.raises(ConfigError, match="num_frames"):
        build_method("dmgal_ft", feature_dim=0, num_frames=0)
    with pytest.raises(ConfigError, match="ViT"):
        build_method("dmgal_adapter", feature_dim=0, backbone="resnet50")
    with pytest.raises(ConfigError, match="bottleneck"):
        build_method("dmgal_adapter", feature_dim=0, bottleneck=-1)
    with pytest.raises(ConfigError, match="distinct"):
        build_method("dmgal_adapter", feature_dim=0, adapter_blocks=[0, 0])
    with pytest.raises(ConfigError, match="out of range"):
        build_method("dmgal_adapter", feature_dim=0, adapter_blocks=[5])  # fsar-tiny has 2 blocks
    with pytest.raises(ConfigError, match="pool"):
        build_method("dmgal_adapter", feature_dim=0, pool="max")


def test_ft_on_resnet50_maps():
    torch.manual_seed(0)
    method = build_method("dmgal_ft", feature_dim=0, backbone="resnet50", num_frames=2, gate_init=0.5).eval()
    support, labels, query, _ = episode(way=2, frames=2, size=64, batch=1)
    with torch.no_grad():
        maps = method.stage(support)
        logits = method(support, labels, query, 2)
    assert maps.shape == (1, 2, 2, 2, 2, 2048)  # 64 px → 2×2 layer4 grid, as (B, N, T, g, g, C)
    assert logits.shape == (1, 2, 2) and torch.isfinite(logits).all()
    assert method.preprocess.size == 224


def bimhm_reference(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, way: int, temperature: float):
    """Bi-MHM by loops: mean nearest-frame 1−cos both ways, class mean, logits = −distance / temperature."""
    batch, n_query = query.shape[:2]
    logits = torch.zeros(batch, n_query, way)
    for b in range(batch):
        for i in range(n_query):
            per_class = [[] for _ in range(way)]
            for j in range(support.shape[1]):
                cos = F.cosine_similarity(query[b, i][:, None], support[b, j][None], dim=-1)
                dist = 1 - cos
                per_class[int(labels[b, j])].append(dist.min(1).values.mean() + dist.min(0).values.mean())
            logits[b, i] = torch.stack([-torch.stack(d).mean() / temperature for d in per_class])
    return logits


@pytest.mark.parametrize("name", ["dmgal_ft", "dmgal_adapter"])
def test_logits_are_bimhm_of_the_frame_embeddings(name):
    torch.manual_seed(0)
    knobs = {"num_frames": 4} if name == "dmgal_ft" else {}
    method = build_method(name, feature_dim=0, gate_init=0.5, temperature=0.25, **knobs).eval()
    support, labels, query, _ = episode(way=3, shot=2)
    labels = labels[:, torch.randperm(6)]  # any support order
    with torch.no_grad():
        logits = method(support, labels, query, 3)
        s_frames, q_frames = method.frame_embeddings(method.encode(support), method.encode(query))
    assert s_frames.shape[:3] == (2, 6, 4) and q_frames.shape[:3] == (2, 3, 4)
    torch.testing.assert_close(logits, bimhm_reference(s_frames, labels, q_frames, 3, 0.25), atol=1e-5, rtol=1e-5)


def test_ft_with_closed_gates_and_no_mixer_is_the_backbones_mean_patch():
    torch.manual_seed(0)
    method = build_method("dmgal_ft", feature_dim=0, num_frames=4, mixer=False).eval()
    visual = build_backbone("fsar-tiny", init_seed=0).model.visual.eval()
    support, _, query, _ = episode()
    with torch.no_grad():
        s_frames, q_frames = method.frame_embeddings(method.encode(support), method.encode(query))
        expected = vit_maps_reference(visual, support.flatten(0, 2)).mean(dim=(-2, -1)).view(*support.shape[:3], -1)
    torch.testing.assert_close(s_frames, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [64, 32])  # fsar-tiny's own 8×8 grid, and a 4×4 one (positions resized)
def test_ft_is_the_released_pipeline_on_the_same_weights(size):
    """dmgal_ft, the head on a full stage, gives the logits of the released composition on the same weights:
    ViT maps → S-MGA → mixer per video, C-MGA on both sides at once, spatial mean, Bi-MHM."""
    torch.manual_seed(0)
    method = build_method("dmgal_ft", feature_dim=0, num_frames=4, gate_init=0.5, temperature=0.25).eval()
    visual = method.stage.encoder.model.visual
    head = method.method
    support, labels, query, _ = episode(way=3, size=size)

    def per_video(videos: torch.Tensor) -> torch.Tensor:  # (B, N, T, 3, S, S) → (B, N, T, C, g, g)
        maps = vit_maps_reference(visual, videos.flatten(0, 2))
        maps = head.mixer(head.smga(maps.view(-1, videos.shape[2], *maps.shape[1:])))
        return maps.view(*videos.shape[:3], *maps.shape[2:])

    with torch.no_grad():
        s_maps, q_maps = head.cmga(per_video(support), per_video(query))
        expected = bimhm_reference(s_maps.mean(dim=(-2, -1)), labels, q_maps.mean(dim=(-2, -1)), 3, 0.25)
        torch.testing.assert_close(method(support, labels, query, 3), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["dmgal_ft", "dmgal_adapter"])
def test_queries_do_not_influence_each_other_or_the_supports(name):
    torch.manual_seed(0)
    knobs = {"num_frames": 4} if name == "dmgal_ft" else {}
    method = build_method(name, feature_dim=0, gate_init=0.5, **knobs).eval()
    support, labels, query, _ = episode(n_query=2, batch=1)
    other = query.clone()
    other[:, 3] = torch.randn_like(other[:, 3])
    changed_support = support.clone()
    changed_support[:, 1] = torch.randn_like(support[:, 1])
    with torch.no_grad():
        encoded_s = method.encode(support)
        s_a, _ = method.frame_embeddings(encoded_s, method.encode(query))
        s_b, _ = method.frame_embeddings(encoded_s, method.encode(other))
        a, b = method(support, labels, query, 3), method(support, labels, other, 3)
        c = method(changed_support, labels, query, 3)
    keep = [0, 1, 2, 4, 5]
    torch.testing.assert_close(a[:, keep], b[:, keep])
    assert not torch.allclose(a[:, 3], b[:, 3])
    torch.testing.assert_close(s_a, s_b)
    # C-MGA does let every query see the supports: a query's logits move with any support video.
    assert not torch.allclose(a[:, :, 0], c[:, :, 0])
    with torch.no_grad():
        encoded_q, encoded_o = method.encode(query), method.encode(other)
    for part_q, part_o in zip(as_tuple(encoded_q), as_tuple(encoded_o), strict=True):
        torch.testing.assert_close(part_q[:, :3], part_o[:, :3])  # encoding is per video


def as_tuple(encoded: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return encoded if isinstance(encoded, tuple) else (encoded,)


@pytest.mark.parametrize("name", ["dmgal_ft", "dmgal_adapter"])
def test_methods_run_in_other_dtypes(name):
    """Nothing inside is tied to float32 (mixed precision on GPUs comes later)."""
    torch.manual_seed(0)
    knobs = {"num_frames": 4} if name == "dmgal_ft" else {}
    method = build_method(name, feature_dim=0, gate_init=0.5, **knobs).eval()
    support, labels, query, _ = episode(size=16, batch=1)
    with torch.no_grad():
        single = method(support, labels, query, 3)
        double = method.double()(support.double(), labels, query.double(), 3)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-4, rtol=1e-4)


def test_frozen_adapter_trains_far_fewer_parameters_than_ft():
    ft = build_method("dmgal_ft", feature_dim=0)
    adapter = build_method("dmgal_adapter", feature_dim=0)
    assert all(p.requires_grad for p in ft.parameters())
    ft_trainable = sum(p.numel() for p in ft.parameters())
    adapter_trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    assert adapter_trainable < 0.1 * ft_trainable


def moving_squares(classes: int, per_class: int, *, frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Videos ``(classes, per_class, T, 3, S, S)``: a bright square moving right / left / down / up per class."""
    gen = torch.Generator().manual_seed(seed)
    directions = [(0, 1), (0, -1), (1, 0), (-1, 0)][:classes]
    side, step = size // 4, size // 8
    videos = 0.2 * torch.randn(classes, per_class, frames, 3, size, size, generator=gen)
    travel = step * (frames - 1)
    for c, (dy, dx) in enumerate(directions):
        for v in range(per_class):
            y0, x0 = (int(torch.randint(0, size - side - travel + 1, (1,), generator=gen)) for _ in range(2))
            y0, x0 = (y0 + travel if dy < 0 else y0), (x0 + travel if dx < 0 else x0)
            for t in range(frames):
                y, x = y0 + dy * step * t, x0 + dx * step * t
                videos[c, v, t, :, y : y + side, x : x + side] += 2.0
    return videos


def sample_episodes(pool: torch.Tensor, batch: int, gen: torch.Generator):
    """``batch`` way-way 1-shot 1-query episodes from a pool ``(way, per_class, ...)``; classes in a random order."""
    way, per_class = pool.shape[:2]
    support, query, labels = [], [], []
    for _ in range(batch):
        order = torch.randperm(way, generator=gen)
        picks = [torch.randperm(per_class, generator=gen)[:2] for _ in range(way)]
        support.append(torch.stack([pool[c, p[0]] for c, p in zip(order, picks, strict=True)]))
        query.append(torch.stack([pool[c, p[1]] for c, p in zip(order, picks, strict=True)]))
        labels.append(torch.arange(way))
    return torch.stack(support), torch.stack(labels), torch.stack(query)


@pytest.mark.parametrize("name, lr", [("dmgal_adapter", 3e-2), ("dmgal_ft", 1e-3)])
def test_a_short_training_run_lowers_the_loss(name, lr):
    """30 Adam steps of 2 episodes (3-way 1-shot, 4 frames of 16 px) on a pool of moving-square videos."""
    torch.manual_seed(0)
    knobs = {"num_frames": 4} if name == "dmgal_ft" else {}
    method = build_method(name, feature_dim=0, **knobs)
    pool = moving_squares(3, 6, size=16)
    gen = torch.Generator().manual_seed(0)
    fixed = sample_episodes(pool, 8, gen)

    def fixed_loss() -> float:
        method.eval()
        with torch.no_grad():
            support, labels, query = fixed
            return F.cross_entropy(method(support, labels, query, 3).reshape(-1, 3), labels.reshape(-1)).item()

    optimiser = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=lr)
    before = fixed_loss()
    method.train()
    for _ in range(30):
        support, labels, query = sample_episodes(pool, 2, gen)
        loss = F.cross_entropy(method(support, labels, query, 3).reshape(-1, 3), labels.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)
