"""``python -m pipelines.gpu_check``: the one-command GPU check, kept at the name the GPU machines are told to
run; it lives in ``pipelines.bench.gpu_check``."""

from pipelines.bench.gpu_check import main

if __name__ == "__main__":
    raise SystemExit(main())
