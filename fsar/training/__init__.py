"""Episodic training: the run's configuration (``config``), the one training loop (``loop``) and its
checkpoints (``checkpoint``). The data behind a run is an episode source (``fsar.sources``)."""
