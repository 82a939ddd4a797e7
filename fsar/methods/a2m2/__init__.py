"""A2M2-Net (``a2m2``): the M2 block (``moments``), the A2 module (``alignment``) and the method (``method``)."""

from fsar.methods.a2m2.method import A2M2, A2M2Config

__all__ = ["A2M2", "A2M2Config"]
