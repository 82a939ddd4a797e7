"""One copy of a store's split per node, shared by every training worker and Tune trial on that node.

The job's driver starts one ``NodeFeatures`` actor on each node (pinned there, no CPU) before the workers
start, and stops them when the job ends; it never touches feature bytes itself. The first worker on a node
that asks for a split makes that node's actor read it (``FeatureStore.load_split``: one split, one column)
straight into a file-backed memory map in the node's shared memory (``/dev/shm``, or the temporary folder
when that is too small); the ids and labels go to Ray's object store. Every worker on the node then maps
the same pages read-only. A node's memory thus holds one copy of each split its workers read, whatever the
number of workers or trials on it, and never two, not even while it loads: ``ray.put`` of a loaded array
would copy it into the object store while the original still exists.

Each actor counts what it read; the driver writes the counts to ``<run>/feature_loads.json`` so a run
shows where its features came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

NAMESPACE = "fsar"


def shared_path(job: str, index: int, nbytes: int) -> str:
    """Where a node's copy of a split of ``nbytes`` lives: shared memory when it has room for twice that (Ray's
    object store lives there too), else the temporary folder (a disk file, whose pages are still shared
    through the page cache)."""
    import shutil
    import tempfile

    folder = "/dev/shm"
    if not os.path.isdir(folder) or shutil.disk_usage(folder).free < 2 * nbytes:
        folder = tempfile.gettempdir()
    return os.path.join(folder, f"fsar-features-{job}-{os.getpid()}-{index}.npy")


def remove_orphans(folders: tuple[str, ...] | None = None) -> list[str]:
    """Delete the split copies whose actor process is gone (a hard-killed job leaves its memory maps in
    ``/dev/shm``, which would fill up over days); returns the paths removed. A copy is named by its actor's
    pid (``shared_path``), so one whose pid no longer runs has no reader left: its workers died with the job."""
    import tempfile

    from fsar.lease import process_runs

    removed = []
    for folder in folders if folders is not None else ("/dev/shm", tempfile.gettempdir()):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            parts = name.split("-")
            if not (name.startswith("fsar-features-") and name.endswith(".npy") and len(parts) == 5
                    and parts[3].isdigit()):
                continue
            if process_runs(parts[3]) is False:
                path = os.path.join(folder, name)
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass  # taken by another node's sweep, or not ours to remove
    return removed


def actor_name(node_id: str, job: str) -> str:
    return f"fsar-features-{job}-{node_id}"


def _actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class NodeFeatures:
        """Holds this node's copies: (store, split, view, as_grid) → a one-element list with the object ref (a
        list, so that returning it hands out the ref, not the data)."""

        def __init__(self, job: str) -> None:
            remove_orphans()  # what hard-killed jobs left on this node
            self.job = job
            self.refs: dict[tuple[str, str, str, bool], list[Any]] = {}
            self.loads: dict[str, int] = {}
            self.files: list[str] = []

        def get(self, store: str, split: str, view: str, as_grid: bool) -> list[Any]:
            """``[ref of the split without its features, path of their memory map, their shape]``."""
            import dataclasses

            from fsar.data.feature_store import FeatureStore

            key = (store, split, view, as_grid)
            if key not in self.refs:
                def allocate(shape: tuple[int, ...]) -> Any:
                    self.files.append(shared_path(self.job, len(self.files), int(np.prod(shape)) * 2))
                    return np.lib.format.open_memmap(self.files[-1], mode="w+", dtype="<f2", shape=shape)

                loaded = FeatureStore(store).load_split(split, view=view, as_grid=as_grid, allocate=allocate)  # type: ignore[arg-type]
                loaded.features.flush()
                self.refs[key] = [ray.put(dataclasses.replace(loaded, features=None)), self.files[-1],
                                  loaded.features.shape]
                del loaded  # the actor keeps no mapping: the workers' mappings hold the pages
                name = f"{split}/{view}"
                self.loads[name] = self.loads.get(name, 0) + 1
            return self.refs[key]

        def close(self) -> None:
            for path in self.files:
                if os.path.exists(path):
                    os.unlink(path)  # the workers' open mappings stay valid until they end
            self.files.clear()

        def stats(self) -> dict[str, Any]:
            return {"node": ray.get_runtime_context().get_node_id(), "loads": dict(self.loads)}

    return NodeFeatures


def _registry_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class NodeFeatureRegistry:
        """The job's one place that makes node actors (it runs the calls one at a time: no race), owned by the
        driver so every actor it makes ends with the job, on nodes alive at the start or joined later."""

        def __init__(self, job: str) -> None:
            self.job, self.actors = job, {}

        def actor_for(self, node_id: str) -> list[Any]:
            """``[handle]`` of ``node_id``'s actor, made on first ask (a list: the handle, not a call on it)."""
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            if node_id not in self.actors:
                self.actors[node_id] = _actor_class().options(
                    name=actor_name(node_id, self.job), namespace=NAMESPACE,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(self.job)
            return [self.actors[node_id]]

        def all(self) -> dict[str, Any]:
            return dict(self.actors)

    return NodeFeatureRegistry


def registry_name(job: str) -> str:
    return f"fsar-features-{job}-registry"


class NodeFeatureActors:
    """The driver's side, for the length of a job (a context manager): the job's registry, and through it an
    actor on each node alive now; a worker on a node that joins later has the registry make that node's
    (``node_split_loader``). On leaving, every actor the registry made is closed."""

    def __init__(self, job: str) -> None:
        self.job, self.registry = job, None

    def __enter__(self) -> NodeFeatureActors:
        import ray

        self.registry = _registry_class().options(name=registry_name(self.job), namespace=NAMESPACE).remote(self.job)
        ray.get([self.registry.actor_for.remote(n["NodeID"]) for n in ray.nodes() if n["Alive"]])
        return self

    @property
    def actors(self) -> dict[str, Any]:
        import ray

        return ray.get(self.registry.all.remote())

    def stats(self) -> dict[str, dict[str, int]]:
        import ray

        return {s["node"]: s["loads"] for s in ray.get([a.stats.remote() for a in self.actors.values()])}

    def write_stats(self, path: str | Path) -> None:
        from fsar import storage

        storage.write_text(path, json.dumps(self.stats(), indent=2, sort_keys=True) + "\n")

    def __exit__(self, *exc: Any) -> None:
        import ray

        actors = self.actors
        try:
            ray.get([actor.close.remote() for actor in actors.values()])  # the shared files go first
        finally:
            for actor in actors.values():
                ray.kill(actor)
            ray.kill(self.registry)


def node_split_loader(job: str | None) -> Any:
    """In a worker: a ``SplitLoader`` that reads through this node's actor of ``job`` (see the module
    docstring); None when the job shares nothing (the worker then reads the store's files itself)."""
    if job is None:
        return None
    import ray

    registry = ray.get_actor(registry_name(job), namespace=NAMESPACE)
    (actor,) = ray.get(registry.actor_for.remote(ray.get_runtime_context().get_node_id()))

    def load(store: Any, split: str, view: str, as_grid: bool) -> Any:
        import dataclasses

        ref, path, shape = ray.get(actor.get.remote(str(store.root), split, view, as_grid))
        return dataclasses.replace(ray.get(ref), features=np.load(path, mmap_mode="r").reshape(shape))

    return load
