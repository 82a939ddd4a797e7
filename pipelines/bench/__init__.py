"""Benchmarks and checks, each runnable as ``python -m pipelines.bench.<name>``: figures measured in one run
on this machine, printed as ratios and rates (never asserted by timed unit tests).

``throughput`` (also ``python -m pipelines.bench``): embed, train and evaluation rates; ``frames``: end-to-end
training; ``manifest``: ``fsar manifest`` at 10⁶ files; ``scale``: memory against store size; ``seeds``: the
seed methods' mechanisms; ``workers``: 1 against 2 Ray Train workers; ``gpu_check``: the one-command GPU check.
"""
