"""torchvision ResNet-50 as per-frame feature maps, and loading local state-dict files.

``ResNetEncoder``: those maps as a frame encoder with ``ClipBackbone``'s ``encode`` and ``describe`` (the stage's
and ``fsar embed``'s ResNet-50).

``ResNetMaps``: torchvision ResNet-50 up to layer4 → ``(M, 2048, H/32, W/32)`` (the released DMGAL-FT
backbone), weights from a local state-dict file or a seeded random init; it carries ``preprocess`` (a
``FramePreprocess``): the resize and normalisation its pixels must have been through. (open_clip ViTs run
block by block in ``ClipBackbone.tokens_until`` and ``finish_tokens``.)
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from fsar.backbones import BackboneUnavailableError
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


def build_feature_maps(name: str, *, pretrained: str | None = None, init_seed: int = 0) -> ResNetMaps:
    """``RESNET50`` as per-frame feature maps (open_clip models are built by ``build_backbone``).

    ``pretrained``: None/"none" = seeded random init, or a local torchvision state-dict file.
    """
    if name != RESNET50:
        raise BackboneUnavailableError(f"unknown backbone {name!r} for feature maps: only {RESNET50!r} builds here; "
                                       "open_clip models build with fsar.backbones.build_backbone")
    if not no_weights(pretrained) and not Path(parse_weights(pretrained).value).is_file():
        raise BackboneUnavailableError(
            f"{RESNET50} loads weights from a local torchvision state-dict file only; {pretrained!r} is not a file"
        )
    return ResNetMaps(weights=pretrained, init_seed=init_seed)


class ResNetEncoder(nn.Module):
    """torchvision ResNet-50 as a frame encoder with ``ClipBackbone``'s ``encode``: pooled = the mean of the layer4
    maps ``(N, 2048)``, patches = the maps as a grid ``(N, S/32, S/32, 2048)``; its ``blocks`` are its 4 stages."""

    name = RESNET50
    has_text = False

    def __init__(self, *, weights: str | None, init_seed: int) -> None:
        super().__init__()
        self.maps = build_feature_maps(RESNET50, pretrained=weights, init_seed=init_seed)  # checks the weights file
        self.preprocess = self.maps.preprocess
        self.embed_dim = ResNetMaps.channels
        self.image_size = self.preprocess.size
        self.patch_grid = self.preprocess.size // 32
        self.blocks = 4
        self.pretrained = None if no_weights(weights) else weights
        self.init_seed = init_seed if self.pretrained is None else None

    def describe(self) -> dict[str, object]:
        """What a feature store records (``ClipBackbone.describe``'s keys)."""
        return {"backbone": RESNET50, "pretrained": self.pretrained, "init_seed": self.init_seed,
                "embed_dim": self.embed_dim, "image_size": self.image_size, "patch_grid": self.patch_grid}

    def stages(self) -> list[nn.Module]:
        body = self.maps.body
        return [body.layer1, body.layer2, body.layer3, body.layer4]

    def encode(self, pixels: Tensor, *, patches: bool = False, autograd_from: int = 0,
               before_block: object = None) -> tuple[Tensor, Tensor | None]:
        if before_block is not None:
            raise BackboneUnavailableError(f"{RESNET50} takes no block adapters: they act on a ViT's patch tokens")
        grad = torch.is_grad_enabled()
        body = self.maps.body
        with torch.set_grad_enabled(grad and autograd_from <= 0):
            x = body.maxpool(body.relu(body.bn1(body.conv1(pixels))))
        for i, stage in enumerate(self.stages()):
            with torch.set_grad_enabled(grad and i >= autograd_from):
                x = stage(x)
        pooled = x.mean(dim=(-2, -1))
        return pooled, (x.permute(0, 2, 3, 1) if patches else None)
