"""``python -m pipelines.bench_end_to_end``: the end-to-end benchmark under the name its issue gives; it lives in
``pipelines.bench.end_to_end``."""

from pipelines.bench.end_to_end import main

if __name__ == "__main__":
    raise SystemExit(main())
