"""fsar serve: the Ray Serve app on 127.0.0.1 with real mp4 bytes — classify, add a class and classify a clip of
it, delete it, refuse a broken file (and keep serving), and keep the support set across a replica restart."""

from __future__ import annotations

import io
import json
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import pytest
from helpers import free_port, open_set_case

pytest.importorskip("ray.serve")


def call(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(urllib.parse.quote(url, safe=":/"), data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def service(tmp_path_factory, ray_local):
    from ray import serve

    from pipelines.serve import ServeConfig, start

    root = tmp_path_factory.mktemp("serve")
    case = open_set_case(root)
    seed = root / "seed"
    shutil.copytree(case.support, seed)
    added = sorted(p.name for p in seed.iterdir())[-1]
    shutil.rmtree(seed / added)  # added later, over HTTP
    config = ServeConfig(run=case.run, supports=root / "supports", support_folder=seed, port=free_port(),
                         max_request_mb=1.0, refresh_s=0.0)
    url = start(config)
    yield case, url, added, root / "supports"
    serve.shutdown()


def test_classify_add_classify_delete_and_a_broken_file(service):
    case, url, added, _ = service
    status, health = call("GET", f"{url}/health")
    assert status == 200 and health == {"status": "ok", "classes": 4}
    query = next(p for p in sorted(case.query.iterdir()))
    status, answer = call("POST", f"{url}/classify", query.read_bytes())
    assert status == 200 and answer["classes"] == 4 and len(answer["top_classes"]) == 3
    assert answer["label"] == ("unknown" if answer["unknown"] else answer["top_classes"][0])
    assert answer["unknown"] == (answer["match_score"] < answer["threshold"])

    clips = sorted((case.support / added).iterdir())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for clip in clips:
            z.write(clip, clip.name)
    status, put = call("PUT", f"{url}/classes/{added}", archive.getvalue())
    assert status == 200 and put["clips"] == 5 and added in put["classes"]
    status, answer = call("POST", f"{url}/classify", clips[0].read_bytes())  # one of its own clips
    assert status == 200 and answer["top_classes"][0] == added and answer["classes"] == 5

    status, refused = call("PUT", f"{url}/classes/{added}-two", clips[0].read_bytes())  # one clip, others have 5
    assert status == 400 and "send 5" in refused["detail"]
    status, refused = call("PUT", f"{url}/classes/bad\tname", clips[0].read_bytes())
    assert status == 400 and "is not allowed" in refused["detail"]

    status, gone = call("DELETE", f"{url}/classes/{added}")
    assert status == 200 and added not in gone["classes"]
    assert call("DELETE", f"{url}/classes/{added}")[0] == 404
    assert call("GET", f"{url}/classes")[1]["classes"] == sorted(p.name for p in case.support.iterdir() if p.name != added)

    status, broken = call("POST", f"{url}/classify", b"\x00\x00\x00 this is not an mp4" * 10)
    assert status == 400 and "cannot be decoded" in broken["detail"]
    assert call("POST", f"{url}/classify", b"x" * (2 * 2**20))[0] == 413  # over max_request_mb
    assert call("POST", f"{url}/classify", query.read_bytes())[0] == 200  # and it keeps serving


def test_the_support_set_survives_a_replica_restart(service):
    import ray

    case, url, _, supports = service
    before = call("GET", f"{url}/classes")[1]["classes"]
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
    assert replicas
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            status, body = call("GET", f"{url}/classes")
            if status == 200:
                break
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        time.sleep(1)
    assert body["classes"] == before and len(list((supports / "classes").glob("*.npz"))) == len(before)
