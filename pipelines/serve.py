"""``fsar serve``: a trained run behind HTTP, as a Ray Serve application (install ``fsar[serve]``).

    fsar serve --run RUN --supports DIR_OR_URI [--support-folder FOLDER] [--port 8000] [--replicas 2]

Endpoints (JSON answers; a 4xx carries ``{"detail": "..."}`` that says what to fix, and the service keeps
serving):

- ``POST /classify``: the body is one video file → ``label`` (a class or ``unknown``), ``top_classes``,
  ``top_scores``, ``unknown``, ``threshold``.
- ``PUT /classes/{name}``: the body is one clip, or a zip of clips → the class is added (or replaced), encoded
  once, with no retraining and no restart. Every class must have the same number of clips (a few-shot episode
  has one shot).
- ``DELETE /classes/{name}``, ``GET /classes``, ``GET /health``.

The support set lives on storage (``--supports``: a path or a URI, one file per class): every replica reads
it, a restarted replica finds it again, and a class one replica adds is seen by the others within
``refresh_s``. Concurrent requests share the encoder through Serve's batching (``max_batch_size``,
``batch_wait_s``). The service binds 127.0.0.1 unless told otherwise, and refuses bodies over
``max_request_mb``.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (``Request``, imported inside
# build_app so that this module imports without Serve) as objects at definition time.
import asyncio
import io
import time
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from fsar import storage
from fsar.config import ConfigError, resolve
from fsar.storage import Location, as_location
from pipelines.command import Command, flags, run_alone


@dataclass
class ServeConfig:
    """``fsar serve``: which run, where the support set lives, how to serve it."""

    run: Location  # a training run folder (or its best.pt), trained on a feature store
    supports: Location  # the support set's folder or URI (one file per class; created, kept across restarts)
    support_folder: Location | None = None  # classes to add at start from a folder of class folders (or a manifest)
    host: str = "127.0.0.1"  # address to bind: loopback unless told otherwise
    port: int = 8000
    replicas: int = 1  # Serve replicas (each holds the method, the encoder and the support set)
    max_replicas: int = 0  # > replicas: Serve autoscales between the two on ongoing requests per replica
    max_batch_size: int = 8  # clips encoded in one forward across concurrent requests
    batch_wait_s: float = 0.02  # how long a request waits for others to batch with
    max_request_mb: float = 64.0  # larger bodies are refused (413)
    refresh_s: float = 1.0  # how often a replica looks for classes another replica added or dropped
    top_k: int = 3
    threshold: float | None = None  # open-set score below which a clip is "unknown" (None: the run's calibration)
    open_set_score: str = "max_logit"  # what the threshold applies to: max_logit or max_softmax
    target_far: float = 0.05  # calibration's wanted false-accept rate on classes not in the support set
    calibration_episodes: int = 500
    device: str = "auto"  # cpu, cuda, or auto (a GPU per replica when the cluster has them)

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.max_batch_size < 1 or self.max_request_mb <= 0:
            raise ConfigError("serve: replicas and max_batch_size must be at least 1, max_request_mb positive")


class UserError(Exception):
    """A request the service refuses with a 4xx and a message."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Classifier:
    """What one replica does, without HTTP: the run's predictor and the support set kept in step with storage."""

    def __init__(self, config: ServeConfig) -> None:
        from fsar.devices import resolve_device
        from fsar.prediction.predictor import Predictor

        self.config = config
        self.predictor, self.payload = Predictor.from_run(config.run, 0.0, config.top_k, resolve_device(config.device),
                                                          score=config.open_set_score)  # type: ignore[arg-type]
        self.root = config.supports
        self._listing: tuple[tuple[str, int], ...] | None = None
        self._checked = 0.0
        self.open_set: dict[str, Any] = {}
        self.sync(force=True)

    def sync(self, *, force: bool = False) -> None:
        """Reload the support set when its files changed (at most every ``refresh_s`` unless ``force``)."""
        from fsar.prediction.support_set import listing, load_classes

        now = time.monotonic()
        if not force and now - self._checked < self.config.refresh_s:
            return
        self._checked = now
        found = listing(self.root)
        if found == self._listing:
            return
        classes = load_classes(self.root)
        if classes:
            self.predictor.set_supports(classes)
            try:
                self._set_threshold(len(classes), len(classes[0].video_ids))
            except ConfigError as exc:  # the run's store is out of reach: say so to the client, keep serving
                raise UserError(503, f"no threshold for {len(classes)} classes: {exc}") from None
        else:
            self.predictor.clear_supports()
        self._listing = found

    def _set_threshold(self, way: int, shot: int) -> None:
        if self.config.threshold is not None:
            self.predictor.threshold, self.open_set = self.config.threshold, {"source": "given"}
            return
        import dataclasses

        from fsar.prediction.open_set import calibration_for

        calibration = calibration_for(self.config.run, self.predictor.method, self.payload, way=way, shot=shot,
                                      target_far=self.config.target_far, score=self.config.open_set_score,  # type: ignore[arg-type]
                                      episodes=self.config.calibration_episodes, device=self.predictor.device)
        self.predictor.threshold = calibration.threshold
        self.open_set = dataclasses.asdict(calibration) | {"source": "calibrated"}

    def check_size(self, length: int | None) -> None:
        limit = int(self.config.max_request_mb * 2**20)
        if length is not None and length > limit:
            raise UserError(413, f"the body is {length} bytes, over this service's limit of {limit} "
                                 f"(max_request_mb={self.config.max_request_mb}); send a shorter clip")

    def decode(self, body: bytes) -> np.ndarray:
        """One uploaded video → the centre squares of its sampled frames, as ``fsar embed`` decodes them."""
        from fsar.data.video import VideoDecodeError

        if not body:
            raise UserError(400, "the body is empty: send the bytes of a video file")
        try:
            return self.predictor.decode(body)
        except VideoDecodeError as exc:
            raise UserError(400, str(exc)) from None

    def answer(self, features: np.ndarray) -> dict[str, Any]:
        self.sync()
        if not self.predictor.class_names:
            raise UserError(409, "the support set is empty: add a class first (PUT /classes/{name} with its clips)")
        prediction = self.predictor.predictions(["upload"], self.predictor.logits(features[None]))[0]
        row = prediction.row()
        return {k: row[k] for k in ("label", "unknown", "top_classes", "top_scores", "match_score")} | {
            "threshold": self.predictor.threshold, "classes": len(self.predictor.class_names)}

    def clips_of(self, body: bytes) -> list[bytes]:
        """A zip of clips, or one clip."""
        if zipfile.is_zipfile(io.BytesIO(body)):
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                clips = [archive.read(n) for n in sorted(archive.namelist()) if not n.endswith("/")]
            if not clips:
                raise UserError(400, "the zip holds no files: put the class's clips in it")
            return clips
        return [body]

    def add_class(self, name: str, features: np.ndarray, ids: list[str]) -> dict[str, Any]:
        from fsar.prediction.support_set import SupportClass, check_class_name, load_classes, save_class

        try:
            check_class_name(name)
        except ConfigError as exc:
            raise UserError(400, str(exc)) from None
        others = [c for c in load_classes(self.root) if c.name != name]
        if others and len(others[0].video_ids) != len(ids):
            raise UserError(400, f"class {name!r} has {len(ids)} clip(s) but the other classes have "
                                 f"{len(others[0].video_ids)}: send {len(others[0].video_ids)} (a few-shot episode "
                                 "has one shot)")
        save_class(self.root, SupportClass(name, ids, features))
        self.sync(force=True)
        return {"class": name, "clips": len(ids), "classes": self.predictor.class_names}

    def drop_class(self, name: str) -> dict[str, Any]:
        from fsar.prediction.support_set import check_class_name, delete_class

        try:
            check_class_name(name)
        except ConfigError as exc:
            raise UserError(400, str(exc)) from None
        if not delete_class(self.root, name):
            raise UserError(404, f"no class {name!r} (GET /classes lists them)")
        self.sync(force=True)
        return {"deleted": name, "classes": self.predictor.class_names}


def build_app(config: ServeConfig) -> Any:
    """The Serve application: a FastAPI ingress over ``Classifier`` replicas, the encoder batched across requests."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    api = FastAPI(title="fsar", description="few-shot action recognition: classify clips against named classes")

    @api.exception_handler(UserError)
    async def refused(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

    gpus = 1 if config.device in ("auto", "cuda") and _cluster_gpus() else 0

    scaling: dict[str, Any] = {"num_replicas": config.replicas}
    if config.max_replicas > config.replicas:  # a replica per max_batch_size waiting requests, within the bounds
        scaling = {"autoscaling_config": {"min_replicas": config.replicas, "max_replicas": config.max_replicas,
                                          "target_ongoing_requests": config.max_batch_size}}

    @serve.deployment(**scaling, ray_actor_options={"num_cpus": 1, "num_gpus": gpus},
                      max_ongoing_requests=4 * config.max_batch_size)
    @serve.ingress(api)
    class FsarService:
        def __init__(self, config: ServeConfig) -> None:
            self.core = Classifier(config)

        @serve.batch(max_batch_size=config.max_batch_size, batch_wait_timeout_s=config.batch_wait_s)
        async def encode(self, clips: list[np.ndarray]) -> list[np.ndarray]:
            return list(await asyncio.to_thread(self.core.predictor.encode, clips))

        async def body(self, request: Request) -> bytes:
            length = request.headers.get("content-length")
            self.core.check_size(int(length) if length and length.isdigit() else None)
            body = await request.body()
            self.core.check_size(len(body))
            return body

        @api.post("/classify")
        async def classify(self, request: Request) -> dict[str, Any]:
            clip = await asyncio.to_thread(self.core.decode, await self.body(request))
            return self.core.answer(await self.encode(clip))

        @api.put("/classes/{name}")
        async def put_class(self, name: str, request: Request) -> dict[str, Any]:
            clips = self.core.clips_of(await self.body(request))
            decoded = [await asyncio.to_thread(self.core.decode, c) for c in clips]
            features = np.stack(list(await asyncio.gather(*(self.encode(c) for c in decoded))))
            return self.core.add_class(name, features, [f"{name}/{i}" for i in range(len(clips))])

        @api.delete("/classes/{name}")
        async def delete_class(self, name: str) -> dict[str, Any]:
            return self.core.drop_class(name)

        @api.get("/classes")
        async def classes(self) -> dict[str, Any]:
            self.core.sync()
            return {"classes": self.core.predictor.class_names, "threshold": self.core.predictor.threshold,
                    "open_set": self.core.open_set}

        @api.get("/health")
        async def health(self) -> dict[str, Any]:
            return {"status": "ok", "classes": len(self.core.predictor.class_names)}

    return FsarService.bind(config)


def _cluster_gpus() -> float:
    import ray

    return ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0


def start(config: ServeConfig, *, address: str | None = None) -> str:
    """Check the run, add the seed classes, deploy; returns the service's base URL. ``serve.shutdown()`` stops it."""
    from ray import serve

    from fsar.prediction.inputs import encode_support_clips, support_clips
    from pipelines.ray_runtime import init_ray

    config.run, config.supports = storage.absolute(config.run), storage.absolute(config.supports)
    storage.make_dirs(config.supports)
    # Here, before Ray starts: a wrong run or support set fails at once, the classes of support_folder that the
    # support set lacks are encoded once, and without threshold= the calibration for the classes is made (or
    # refused) now and then read back by every replica.
    try:
        core = Classifier(config)
        if config.support_folder is not None:
            encode_support_clips(core.predictor, support_clips(config.support_folder), config.supports, batch_size=16)
            core.sync(force=True)
    except UserError as exc:
        raise ConfigError(exc.detail) from None
    init_ray(address=address)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config), name="fsar", route_prefix="/", blocking=False)
    return f"http://{config.host}:{config.port}"


def _arguments(p: Any) -> None:
    p.add_argument("--run", dest="run_folder", type=as_location, help="training run folder (or its best.pt)")
    p.add_argument("--supports", type=as_location, help="where the support set lives (path or URI)")
    p.add_argument("--support-folder", dest="support_folder", type=as_location,
                   help="classes to add at start: a folder of class folders, or a manifest")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int)
    p.add_argument("--replicas", type=int)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")


def _run(args: Any) -> int:
    try:
        from ray import serve  # noqa: F401
    except ImportError:
        raise ConfigError("fsar serve needs Ray Serve: pip install 'fsar[serve]'") from None
    config = resolve(ServeConfig, file=args.config, overrides=args.overrides,
                     flags=flags(args, "supports", "support_folder", "host", "port", "replicas")
                     | ({"run": args.run_folder} if args.run_folder is not None else {}))
    url = start(config, address=args.address)
    print(f"fsar serve: {url} (POST /classify, PUT/DELETE /classes/NAME, GET /classes, GET /health); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


COMMAND = Command("serve", "serve a trained run over HTTP (Ray Serve): classify clips, add and drop classes",
                  _arguments, _run)


def main(argv: list[str] | None = None) -> int:
    return run_alone(COMMAND, argv)


if __name__ == "__main__":
    raise SystemExit(main())
