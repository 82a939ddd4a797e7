"""Starting or joining Ray the same way from every job: a local instance on a laptop or in tests, the
cluster named by ``address`` / ``RAY_ADDRESS`` otherwise. Local instances bind 127.0.0.1 and run no
dashboard."""

from __future__ import annotations

import os
from typing import Any


def init_ray(*, address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to (or start) Ray once per process; a second call reuses the running instance.

    ``address`` (else ``RAY_ADDRESS``) is what ``ray.init`` takes: ``host:6379`` (the head's GCS, from a
    node of the cluster), ``ray://host:10001`` (Ray Client, from outside) or ``auto``. Inside a job that
    ``ray job submit`` started, Ray sets ``RAY_ADDRESS`` itself, so jobs need no flag.
    """
    import ray

    from fsar.config import ConfigError

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Token authentication stays as Ray sets it: on for a local instance (Ray makes the token), and on a
    # cluster whatever RAY_AUTH_MODE / RAY_AUTH_TOKEN say (cluster/README.md hands them over).
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        # The dashboard's address is for `ray job submit`; a driver cannot connect through it.
        raise ConfigError(f"{address} is a job-submission (dashboard) address: submit the job with "
                         f"`ray job submit --address {address} -- python -m pipelines...`, or give this "
                         "command the cluster's GCS address (host:6379) or a Ray Client address (ray://host:10001)")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": always a new instance of our own, never another Ray that happens to run on this
        # machine (ray.init() alone would join the most recent one it finds in /tmp/ray).
        ray.init(address="local", include_dashboard=False, num_cpus=num_cpus, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
    return ray
