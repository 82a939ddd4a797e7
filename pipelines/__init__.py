"""Ray jobs: each runnable as `python -m pipelines.<name> --config FILE.yaml [key=value ...]`."""
