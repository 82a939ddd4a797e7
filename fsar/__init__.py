"""fsar: few-shot action recognition on Ray."""

__version__ = "0.1.0"
