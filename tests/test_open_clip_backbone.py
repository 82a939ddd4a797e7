import pytest
import torch

from fsar.backbones import TINY_MODEL, BackboneUnavailableError, build_backbone, list_backbones
from fsar.backbones.open_clip_backbone import vit_positions


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_backbone(TINY_MODEL)


def test_tiny_model_is_listed_and_described(tiny):
    assert TINY_MODEL in list_backbones()
    d = tiny.describe()
    assert d == {"backbone": TINY_MODEL, "pretrained": None, "init_seed": 0, "embed_dim": 64, "image_size": 64,
                 "patch_grid": 8}


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(tiny):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = build_backbone(TINY_MODEL)
    assert torch.equal(torch.rand(1), before)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), tiny.state_dict().values(), strict=True))
    other = build_backbone(TINY_MODEL, init_seed=1)
    assert not torch.equal(other.model.visual.proj, tiny.model.visual.proj)


def test_patch_grid_is_projected_tokens_and_consistent_with_pooled(tiny):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled, grid = tiny.encode(x, patches=True)
        pooled_only, none = tiny.encode(x)
        tokens = tiny.model.visual
    assert none is None and grid.shape == (3, 8, 8, 64) and pooled.shape == (3, 64)
    assert torch.allclose(pooled, pooled_only, atol=1e-5)
    assert tokens.output_tokens is False  # restored after the call


def test_patch_grid_follows_the_image_layout(tiny):
    """Changing only the top-left patch of the image changes the top-left patch token the most."""
    x = torch.randn(1, 3, 64, 64)
    y = x.clone()
    y[..., :8, :8] += 3.0
    with torch.no_grad():
        _, gx = tiny.encode(x, patches=True)
        _, gy = tiny.encode(y, patches=True)
    change = (gx - gy).norm(dim=-1)[0]
    assert change.argmax().item() == 0


def test_text_embeddings(tiny):
    with torch.no_grad():
        emb = tiny.encode_text(["moving left", "moving right", "moving left"])
    assert emb.shape == (3, 64)
    assert torch.allclose(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])


def test_local_checkpoint_round_trip(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = build_backbone(TINY_MODEL, pretrained=str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x)[0], tiny.encode(x)[0], atol=1e-6)
    assert loaded.pretrained == str(path)


def test_clear_errors():
    with pytest.raises(BackboneUnavailableError, match="unknown backbone"):
        build_backbone("ViT-Q-99")
    with pytest.raises(BackboneUnavailableError, match="does not exist"):
        build_backbone(TINY_MODEL, pretrained="/nonexistent/weights.pt")
    with pytest.raises(BackboneUnavailableError, match="known tags"):
        build_backbone("ViT-B-16", pretrained="no-such-tag")


def test_offline_pretrained_tag_names_the_offline_choices():
    with pytest.raises(BackboneUnavailableError, match=f"--backbone {TINY_MODEL}"):
        build_backbone("ViT-B-16", pretrained="openai")


def test_running_block_by_block_reproduces_open_clip_at_the_native_size(tiny):
    x = torch.randn(3, 3, 64, 64)
    visual = tiny.model.visual
    with torch.no_grad():
        visual.output_tokens = True
        try:
            reference_pooled, reference_tokens = visual(x)  # open_clip's own forward, whole
        finally:
            visual.output_tokens = False
        pooled, grid = tiny.encode(x, patches=True)
        final = tiny.finish_tokens(tiny.tokens_until(x, 1), 1)  # (3, 1 + 64, D)
    torch.testing.assert_close(pooled, reference_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grid.flatten(1, 2), reference_tokens @ visual.proj, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final[:, 0], reference_pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final[:, 1:], reference_tokens @ visual.proj, atol=1e-5, rtol=1e-5)


def test_other_input_sizes_resize_the_patch_positions(tiny):
    visual = tiny.model.visual
    native = vit_positions(visual, (8, 8), torch.float32)
    assert torch.equal(native, visual.positional_embedding)
    small = vit_positions(visual, (2, 4), torch.float32)
    assert small.shape == (9, 64)
    assert torch.equal(small[0], native[0])  # the class token's position is kept
    constant = build_backbone(TINY_MODEL, init_seed=3)
    with torch.no_grad():  # a constant positional grid stays constant when resized
        constant.model.visual.positional_embedding[1:] = 0.25
    resized = vit_positions(constant.model.visual, (3, 5), torch.float32)[1:]
    torch.testing.assert_close(resized, torch.full((15, 64), 0.25))
    with torch.no_grad():
        _, grid = tiny.encode(torch.randn(2, 3, 16, 32), patches=True)
    assert grid.shape == (2, 2, 4, 64)
