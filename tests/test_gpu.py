"""GPU against CPU: embedding, cached training with validation, end-to-end bf16 training and evaluation.

Every test here is marked ``gpu`` and skips without CUDA. This module imports only what the GPU machines
this project is checked on have (torch, numpy, pyarrow, pytest, open_clip, the ``fsar`` library and the
tests' own ``helpers``): no Ray, MLflow or video decoder, so ``python -m pipelines.gpu_check`` can run it
there. Clips are made as tensors and stores are written with ``fsar.data.feature_store``.

Tolerances, and why:
- fp32 paths (cached training, evaluation): CUDA and CPU kernels sum in different orders; 1e-4 on logits
  and 1e-3 on weights after 20 AdamW steps.
- bf16 paths (embedding, end-to-end training): bf16 keeps 8 significant bits, so features agree to a
  cosine similarity of 0.99 and a first-step loss to 2 % relative; the metric on top stays fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_shifting_patch_store

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def train(store: Path, out: Path, *, method: str, knobs: dict, device: str, placement: str = "auto"):
    from fsar.data.sections import StoreData
    from fsar.training.config import TrainConfig
    from fsar.training.loop import train_worker

    reports = []
    config = TrainConfig(data=StoreData(store=store, feature_placement=placement),  # type: ignore[arg-type]
                         out=out, method=method, knobs=knobs, steps=20, val_every=10, val_episodes=200,
                         episodes_per_step=4, lr=1e-2, warmup_steps=2, device=device)
    train_worker(config, report=lambda m, p: reports.append((m, p)))
    return reports


@pytest.mark.parametrize(("method", "knobs"), [("otam", {"proj_dim": 16, "temporal_centre": True}),
                                               ("a2m2", {"reduce_dim": 8, "embed_dim": 16})])
def test_cached_training_with_validation_matches_cpu(tmp_path, method, knobs):
    store = make_shifting_patch_store(tmp_path / "store", dim=16, noise=0.5, text=False)
    on_cpu = train(store, tmp_path / "cpu", method=method, knobs=knobs, device="cpu")
    for placement in ("device", "host"):
        on_gpu = train(store, tmp_path / placement, method=method, knobs=knobs, device="cuda", placement=placement)
        for (m_gpu, p_gpu), (m_cpu, p_cpu) in zip(on_gpu, on_cpu, strict=True):
            assert m_gpu["train_loss"] == pytest.approx(m_cpu["train_loss"], rel=1e-3)
            assert abs(m_gpu["val_accuracy"] - m_cpu["val_accuracy"]) <= 1.0  # near-ties may flip
            for name, value in p_cpu["state_dict"].items():
                torch.testing.assert_close(p_gpu["state_dict"][name], value, atol=1e-3, rtol=1e-3, msg=name)


@pytest.mark.parametrize(("method", "tune"), [("otam", "lora:2"), ("a2m2", "last:1"), ("i2st", "full")])
def test_stage_composition_matches_cpu_and_trains_on_the_gpu(method, tune):
    """A method on the backbone stage (fsar-tiny): the same weights give the same logits on CUDA as on the CPU
    (fp32), and a bf16 training step on CUDA gives every trainable parameter a gradient there."""
    from fsar.data.sections import StageSettings
    from fsar.methods import build_method

    torch.manual_seed(0)
    knobs = {"proj_dim": 8} if method == "otam" else {}
    model = build_method(method, feature_dim=0, stage=StageSettings(tune=tune, patch_grid=2), **knobs).eval()
    gen = torch.Generator().manual_seed(0)
    support, query = torch.randn(2, 3, 4, 3, 64, 64, generator=gen), torch.randn(2, 3, 4, 3, 64, 64, generator=gen)
    labels = torch.arange(3).expand(2, -1)
    text = torch.randn(2, 3, model.stage.text_dim) if model.uses_text else None
    with torch.no_grad():
        on_cpu = model(support, labels, query, 3, class_text=text)
        model.to(CUDA)
        on_gpu = model(support.to(CUDA), labels.to(CUDA), query.to(CUDA), 3,
                       class_text=None if text is None else text.to(CUDA))
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(support.to(CUDA), labels.to(CUDA), query.to(CUDA), 3,
                       class_text=None if text is None else text.to(CUDA))
    logits.float().logsumexp(-1).mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.device.type == "cuda", name


@pytest.mark.parametrize("method", ["protonet", "otam", "bimhm", "a2m2", "i2st"])
def test_evaluation_matches_cpu(method):
    from fsar.data.episodes import EpisodeSampler
    from fsar.evaluation.scoring import FeatureSplit, episode_accuracies, episode_scorer
    from fsar.methods import build_method, method_info

    torch.manual_seed(0)
    patches = method_info(method).input_kind == "patches"
    features = torch.randn(60, 4, 2, 2, 16) if patches else torch.randn(60, 4, 16)
    labels = np.repeat(np.arange(10), 6)
    episodes = EpisodeSampler(labels, way=5, shot=2, query=1, seed=0).batch(0, 300)
    knobs = {"proj_dim": 8} if method in ("protonet", "otam", "bimhm") else {}
    model = build_method(method, feature_dim=16, **knobs).eval()
    with torch.no_grad():
        split = FeatureSplit(features.half())
        on_cpu = episode_scorer(model, split.encode(model, CPU), 5)(episodes)
        on_gpu = episode_scorer(model.to(CUDA), split.encode(model, CUDA), 5)(episodes)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
    accuracy = episode_accuracies(model, features.half(), episodes, device=CUDA)
    assert accuracy.shape == (300,) and ((accuracy >= 0) & (accuracy <= 1)).all()


def test_end_to_end_bf16_training_matches_cpu():
    """DMGAL-Adapter (frozen fsar-tiny ViT) on uint8 clips: bf16 autocast on the GPU, the same steps in fp32
    on the CPU; first-step losses agree to bf16 precision and the adapters move the same way."""
    from fsar.data.episodes import episode_labels
    from fsar.data.sections import ManifestData
    from fsar.devices import host_to_device
    from fsar.methods import build_method
    from fsar.sources.base import StepBatch
    from fsar.sources.pixels import PixelInputs
    from fsar.training.config import TrainConfig
    from fsar.training.loop import EpisodicLoss, make_optimizer, training_step

    config = TrainConfig(method="dmgal_adapter", out=Path("unused"), data=ManifestData(manifest=Path("unused")),
                         way=3, shot=1, query=2, steps=5, lr=1e-2, warmup_steps=1, episodes_per_step=2)
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randint(0, 256, (2, 9, 4, 3, 64, 64), generator=gen, dtype=torch.uint8) for _ in range(3)]
    results = {}
    for device in (CPU, CUDA):
        torch.manual_seed(0)
        method = build_method("dmgal_adapter", feature_dim=0, gate_init=0.1, dropout=0.0).to(device)
        before = {n: p.detach().clone() for n, p in method.named_parameters() if p.requires_grad}
        opt, _ = make_optimizer(config, [p for p in method.parameters() if p.requires_grad])
        s_lab = host_to_device(episode_labels(3, 1), device)
        q_lab = host_to_device(episode_labels(3, 2), device)
        losses = [training_step(EpisodicLoss(method), opt, method, PixelInputs(), StepBatch(pixels, None), config,
                                s_lab, q_lab, per_forward=1, device=device)[0] for pixels in steps]
        moved = torch.cat([(p.detach() - before[n]).flatten().cpu() for n, p in method.named_parameters()
                           if p.requires_grad])
        results[device.type] = ([float(v) for v in losses], moved)
    cpu_losses, cpu_moved = results["cpu"]
    gpu_losses, gpu_moved = results["cuda"]
    assert all(np.isfinite(gpu_losses))
    assert gpu_losses[0] == pytest.approx(cpu_losses[0], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(gpu_moved, cpu_moved, dim=0) > 0.9


def test_embedding_matches_cpu():
    """uint8 clips of two sizes → device preprocessing → encoder: bf16 on the GPU, fp32 on the CPU."""
    from fsar.backbones import TINY_MODEL, build_backbone
    from fsar.backbones.encode import encode_clips

    gen = np.random.default_rng(0)
    clips = [gen.integers(0, 256, size=(4, side, side, 3), dtype=np.uint8) for side in (64, 96, 96, 80)]
    features = {}
    for device in (CPU, CUDA):
        backbone = build_backbone(TINY_MODEL, pretrained=None, device=device, init_seed=0)
        features[device.type] = encode_clips(backbone, clips, patch_grid=2)
    for cpu, gpu in zip(features["cpu"], features["cuda"], strict=True):
        a, b = torch.from_numpy(cpu).float().flatten(2), torch.from_numpy(gpu).float().flatten(2)
        assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.99
