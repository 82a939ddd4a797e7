"""``python -m pipelines.bench``: the throughput benchmark (``pipelines.bench.throughput``)."""

from pipelines.bench.throughput import main

raise SystemExit(main())
