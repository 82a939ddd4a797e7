"""What a ``pretrained`` setting asks for, read one way everywhere (``fsar embed``, the backbone factory, the
end-to-end methods' trunks).

``None``, ``""`` or ``none``: a seeded random init. ``default``: the model's ``openai`` tag when open_clip has
one, else its first tag, else a random init. A name ending in ``.pt``/``.pth``/``.bin``/``.safetensors`` or
holding a ``/``: a local weights file. Anything else: an open_clip pretrained tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class Weights:
    """A parsed ``pretrained`` setting."""

    kind: Literal["random", "default", "file", "tag"]
    value: str = ""  # file: the path (``~`` expanded); tag: the tag

    @property
    def random(self) -> bool:
        return self.kind == "random"


def parse_weights(pretrained: str | None) -> Weights:
    """Read a ``pretrained`` setting (see the module docstring); nothing is checked or loaded here."""
    text = "" if pretrained is None else pretrained.strip()
    if text.lower() in ("", "none"):
        return Weights("random")
    if text == "default":
        return Weights("default")
    if Path(text).suffix in WEIGHT_FILE_SUFFIXES or "/" in text:
        return Weights("file", str(Path(text).expanduser()))
    return Weights("tag", text)


def pretrained_tags(model: str) -> list[str]:
    """open_clip's pretrained tags of ``model``."""
    import open_clip

    return [tag for name, tag in open_clip.list_pretrained() if name == model]


def resolve_weights(model: str, pretrained: str | None) -> str | None:
    """What open_clip is asked to load for ``model``: a tag or a file path, None for a random init
    (``default`` resolved to ``openai`` when the model has it)."""
    weights = parse_weights(pretrained)
    if weights.kind == "random":
        return None
    if weights.kind == "default":
        tags = pretrained_tags(model)
        return "openai" if "openai" in tags else (tags[0] if tags else None)
    return weights.value
