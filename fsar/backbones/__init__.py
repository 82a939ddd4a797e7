"""Frame encoders: open_clip models by name (pretrained tag, local checkpoint, or the shipped tiny config)."""

from fsar.backbones.open_clip_backbone import (
    TINY_MODEL,
    BackboneUnavailableError,
    ClipBackbone,
    build_backbone,
    list_backbones,
)

__all__ = ["TINY_MODEL", "BackboneUnavailableError", "ClipBackbone", "build_backbone", "list_backbones"]
