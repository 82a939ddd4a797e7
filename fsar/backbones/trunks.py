"""Trainable frame encoders run in pieces: per-frame feature maps and the open_clip ViT block by block.

``ResNetMaps``: torchvision ResNet-50 up to layer4 → ``(M, 2048, H/32, W/32)`` (the released DMGAL-FT
backbone), weights from a local state-dict file or a seeded random init.

``ClipViTTrunk``: an open_clip ``VisionTransformer`` taken apart — patch embedding, its blocks one at a
time, final norm and projection — so adapters can act between blocks without editing open_clip. The
positional embedding is resized to the input's patch grid, so any input size works (bicubic, as usual
for ViTs; at the model's own size it is used unchanged).

``ViTMaps``: the trunk's final patch tokens, normed and projected like the pooled embedding, as
``(M, D, g, g)`` maps (the same space as the feature store's patch grids).

Every encoder carries ``preprocess`` (a ``FramePreprocess``): the resize and normalisation its pixels
must have been through.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from fsar.backbones import BackboneUnavailableError
from fsar.backbones.open_clip_backbone import vit_tokens
from fsar.backbones.weights import parse_weights
from fsar.data.transforms import FramePreprocess

RESNET50 = "resnet50"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def no_weights(pretrained: str | None) -> bool:
    """Whether ``pretrained`` asks for a random init (``fsar.backbones.weights``)."""
    return parse_weights(pretrained).random


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, loaded safely (``weights_only``); unwraps ``state_dict``/``model`` and ``module.``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BackboneUnavailableError(f"checkpoint {path} does not exist; pass an existing file (or no weights)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise BackboneUnavailableError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class ResNetMaps(nn.Module):
    """torchvision ResNet-50 trunk: pixels ``(M, 3, H, W)`` → layer4 maps ``(M, 2048, ⌈H/32⌉, ⌈W/32⌉)``."""

    channels = 2048

    def __init__(self, *, weights: str | None = None, init_seed: int = 0) -> None:
        super().__init__()
        import torchvision

        # Seeded without touching the global RNG: every worker of a job starts from the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            net = torchvision.models.resnet50(weights=None)
        # The classifier (avgpool, fc) is dropped: DMGAL works on the last feature map.
        self.body = nn.Sequential(OrderedDict(list(net.named_children())[:-2]))
        if not no_weights(weights):
            self.load_weights(weights)
        self.preprocess = FramePreprocess(size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear")

    def load_weights(self, path: str | Path) -> None:
        """Load a torchvision-layout ResNet-50 state dict (``fc.*`` entries are ignored)."""
        state = {k: v for k, v in load_state_dict_file(path).items() if not k.startswith("fc.")}
        expected = self.body.state_dict()
        # Older checkpoints lack BatchNorm's batch counters; those are not weights.
        missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in expected]
        reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or reshaped:
            raise BackboneUnavailableError(
                f"{path} is not a torchvision ResNet-50 state dict: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, wrong shapes {reshaped[:5]}"
            )
        self.body.load_state_dict(state, strict=False)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.body(pixels)


def _vision_tower(name: str, pretrained: str | None, init_seed: int) -> tuple[nn.Module, FramePreprocess]:
    """open_clip's vision tower of ``name`` (text tower discarded) and its preprocessing."""
    from open_clip.transformer import VisionTransformer

    from fsar.backbones import build_backbone

    clip = build_backbone(name, pretrained=pretrained, init_seed=init_seed)
    visual = clip.model.visual
    if not isinstance(visual, VisionTransformer):
        raise BackboneUnavailableError(
            f"{name}: DMGAL needs an open_clip ViT (its vision tower is a {type(visual).__name__}); "
            f"choose a ViT model or {RESNET50!r}"
        )
    if visual.attn_pool is not None:
        raise BackboneUnavailableError(f"{name}: vision towers with attentional pooling are not supported")
    return visual, clip.preprocess


class ClipViTTrunk(nn.Module):
    """An open_clip ``VisionTransformer`` run in pieces.

    ``embed``: pixels ``(M, 3, H, W)`` → tokens ``(M, 1 + g_h·g_w, width)`` (class token first);
    ``block(i, tokens)``: the i-th transformer block; ``head``: final norm → ``(M, 1 + L, out_dim)``
    tokens projected like the pooled embedding. Patch dropout is not applied (it would break the grid).
    """

    def __init__(self, visual: nn.Module, *, preprocess: FramePreprocess | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.preprocess = preprocess
        self.width = int(visual.conv1.out_channels)
        self.depth = len(visual.transformer.resblocks)
        self.patch_size = tuple(int(p) for p in visual.patch_size)
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.out_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width

    @classmethod
    def build(cls, name: str, *, pretrained: str | None = None, init_seed: int = 0) -> ClipViTTrunk:
        visual, preprocess = _vision_tower(name, pretrained, init_seed)
        return cls(visual, preprocess=preprocess)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(g_h, g_w)`` of an ``height × width`` input."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def embed(self, pixels: Tensor) -> Tensor:
        return vit_tokens(self.visual, pixels)

    def block(self, index: int, tokens: Tensor) -> Tensor:
        transformer = self.visual.transformer
        if not transformer.batch_first:  # older open_clip: sequence-first blocks
            return transformer.resblocks[index](tokens.transpose(0, 1)).transpose(0, 1)
        return transformer.resblocks[index](tokens)

    def head(self, tokens: Tensor) -> Tensor:
        x = self.visual.ln_post(tokens)
        return x @ self.visual.proj if self.visual.proj is not None else x

    def forward(self, pixels: Tensor) -> Tensor:
        """All blocks: pixels ``(M, 3, H, W)`` → projected tokens ``(M, 1 + g_h·g_w, out_dim)``."""
        x = self.embed(pixels)
        for i in range(self.depth):
            x = self.block(i, x)
        return self.head(x)


class ViTMaps(nn.Module):
    """Projected final patch tokens of an open_clip ViT as maps: ``(M, 3, H, W)`` → ``(M, out_dim, g_h, g_w)``."""

    def __init__(self, trunk: ClipViTTrunk) -> None:
        super().__init__()
        self.trunk = trunk
        self.channels = trunk.out_dim
        self.preprocess = trunk.preprocess

    def forward(self, pixels: Tensor) -> Tensor:
        gh, gw = self.trunk.grid(*pixels.shape[-2:])
        patches = self.trunk(pixels)[:, 1:]
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, gh, gw)


def build_feature_maps(name: str, *, pretrained: str | None = None, init_seed: int = 0) -> nn.Module:
    """A per-frame feature-map encoder with ``channels`` and ``preprocess``: ``RESNET50`` or an open_clip ViT.

    ``pretrained``: None/"none" = seeded random init; a local file; or (ViTs only) an open_clip tag.
    """
    if name == RESNET50:
        if not no_weights(pretrained) and not Path(parse_weights(pretrained).value).is_file():
            raise BackboneUnavailableError(
                f"{RESNET50} loads weights from a local torchvision state-dict file only; {pretrained!r} is not a file"
            )
        return ResNetMaps(weights=pretrained, init_seed=init_seed)
    return ViTMaps(ClipViTTrunk.build(name, pretrained=pretrained, init_seed=init_seed))
