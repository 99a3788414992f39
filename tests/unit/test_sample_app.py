"""The sample app (vkp sample-app): its API and UI over a fake redis that speaks RESP on a real
socket, the manifests vkp applies, and deploy/delete against a fake Kubernetes API."""

from __future__ import annotations

import http.client
import json
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from provisioner.errors import ArtifactError, ExitCode
from provisioner.sampleapp import LAB_REPOSITORY, NAMESPACE
from provisioner.sampleapp import deploy as deploy_mod
from provisioner.sampleapp.app import api, ui
from provisioner.state import NodeRecord

# -- a fake redis: the commands the API sends, over RESP --------------------------------------


class FakeRedis(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RedisHandler)
        self.hashes: dict[str, dict[str, int]] = {}
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _RedisHandler(socketserver.StreamRequestHandler):
    server: FakeRedis

    def handle(self) -> None:
        while line := self.rfile.readline():
            assert line.startswith(b"*"), line
            args = []
            for _ in range(int(line[1:])):
                size = int(self.rfile.readline()[1:])
                args.append(self.rfile.read(size + 2)[:-2].decode())
            self.wfile.write(self._answer(args))

    def _answer(self, args: list[str]) -> bytes:
        cmd = args[0].upper()
        with self.server.lock:
            if cmd == "PING":
                return b"+PONG\r\n"
            if cmd == "HINCRBY":
                h = self.server.hashes.setdefault(args[1], {})
                h[args[2]] = h.get(args[2], 0) + int(args[3])
                return b":%d\r\n" % h[args[2]]
            if cmd == "HGETALL":
                items = [x for k, v in self.server.hashes.get(args[1], {}).items() for x in (k, str(v))]
                return b"*%d\r\n" % len(items) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(i), i.encode()) for i in items
                )
        return b"-ERR unknown command '%s'\r\n" % cmd.encode()


@pytest.fixture
def redis() -> Iterator[FakeRedis]:
    server = FakeRedis()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _start(server: Any) -> tuple[str, int]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "127.0.0.1", int(server.server_address[1])


def _stop(server: Any) -> None:
    server.shutdown()
    server.server_close()


def request(addr: tuple[str, int], method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    conn = http.client.HTTPConnection(*addr, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


# -- the RESP client ------------------------------------------------------------------------


def test_the_resp_client_round_trips_the_commands_the_api_uses(redis: FakeRedis) -> None:
    client = api.Redis("127.0.0.1", redis.port)
    assert client.command("PING") == "PONG"
    assert client.command("HINCRBY", "h", "a b", 1) == 1, "an argument with a space is one argument"
    assert client.command("HINCRBY", "h", "a b", 2) == 3
    assert client.command("HGETALL", "h") == ["a b", "3"]
    assert client.command("HGETALL", "empty") == []
    with pytest.raises(api.RedisError, match="unknown command 'NOPE'"):
        client.command("NOPE")


def test_an_unreachable_redis_is_a_redis_error_naming_it() -> None:
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as s:
        port = s.server_address[1]
    with pytest.raises(api.RedisError, match=f"127.0.0.1:{port}"):
        api.Redis("127.0.0.1", port, timeout=1).command("PING")


def test_redis_is_found_through_the_service_variables_or_named() -> None:
    assert api.redis_address({"REDIS_SERVICE_HOST": "198.19.128.7", "REDIS_SERVICE_PORT": "6379",
                              "REDIS_PORT": "tcp://198.19.128.7:6379"}) == ("198.19.128.7", 6379)  # fmt: skip
    assert api.redis_address({"VKP_SAMPLE_REDIS": "redis.vkp-sample.svc:6380"}) == (
        "redis.vkp-sample.svc",
        6380,
    )
    assert ui.api_address({"API_SERVICE_HOST": "198.19.128.9", "API_SERVICE_PORT": "80",
                           "API_PORT": "tcp://198.19.128.9:80"}) == ("198.19.128.9", 80)  # fmt: skip
    with pytest.raises(SystemExit, match="REDIS_SERVICE_HOST"):
        api.redis_address({})


# -- the API and the UI ---------------------------------------------------------------------


def _votes(addr: tuple[str, int]) -> dict[str, int]:
    status, _, body = request(addr, "GET", "/api/votes")
    assert status == 200, body
    return dict(json.loads(body)["votes"])


def test_votes_are_kept_in_redis_when_the_api_is_replaced(redis: FakeRedis) -> None:
    first = api.serve(api.Redis("127.0.0.1", redis.port), 0, "127.0.0.1")
    addr = _start(first)
    status, _, body = request(addr, "GET", "/api/restaurants")
    assert status == 200
    listed = json.loads(body)["restaurants"]
    assert {r["id"] for r in listed} == {r["id"] for r in api.RESTAURANTS}
    assert all(r["votes"] == 0 for r in listed)
    for _ in range(2):
        status, _, body = request(addr, "POST", "/api/restaurants/sakura/vote", b"")
    assert (status, json.loads(body)) == (200, {"id": "sakura", "votes": 2})
    _stop(first)
    second = api.serve(api.Redis("127.0.0.1", redis.port), 0, "127.0.0.1")
    addr = _start(second)
    try:
        assert _votes(addr) == {"sakura": 2}
        status, _, body = request(addr, "GET", "/api/restaurants")
        assert {r["id"]: r["votes"] for r in json.loads(body)["restaurants"]}["sakura"] == 2
    finally:
        _stop(second)


def test_the_api_refuses_unknown_restaurants_and_says_when_redis_is_gone(redis: FakeRedis) -> None:
    server = api.serve(api.Redis("127.0.0.1", redis.port, timeout=1), 0, "127.0.0.1")
    addr = _start(server)
    try:
        status, _, body = request(addr, "POST", "/api/restaurants/nowhere/vote", b"")
        assert status == 404 and "nowhere" in json.loads(body)["error"]
        assert request(addr, "GET", "/healthz")[0] == 200
        assert _votes(addr) == {}, "a refused vote is not counted"
        _stop(redis)
        status, _, body = request(addr, "POST", "/api/restaurants/sakura/vote", b"")
        assert status == 503 and "vote store is unavailable" in json.loads(body)["error"]
        assert request(addr, "GET", "/healthz")[0] == 503, "not ready without redis"
    finally:
        _stop(server)


@pytest.fixture
def app(redis: FakeRedis) -> Iterator[tuple[str, int]]:
    """The UI in front of the API in front of the fake redis: the UI's address."""
    api_server = api.serve(api.Redis("127.0.0.1", redis.port), 0, "127.0.0.1")
    ui_server = ui.serve(_start(api_server), 0, "127.0.0.1")
    yield _start(ui_server)
    _stop(ui_server)
    _stop(api_server)


def test_a_vote_from_the_page_form_is_counted_and_shown(app: tuple[str, int]) -> None:
    status, _, page = request(app, "GET", "/")
    assert status == 200 and b"La Tavola" in page and b'action="/vote"' in page
    form = urllib.parse.urlencode({"id": "el-fogon"}).encode()
    status, headers, _ = request(
        app, "POST", "/vote", form, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert (status, headers.get("Location")) == (303, "/")
    _, _, page = request(app, "GET", "/")
    assert b'id="votes-el-fogon">1<' in page
    # The JSON API answers through the UI too (the NodePort is the UI's).
    status, _, body = request(app, "POST", "/api/restaurants/el-fogon/vote", b"")
    assert (status, json.loads(body)["votes"]) == (200, 2)
    assert _votes(app) == {"el-fogon": 2}


def test_a_crafted_form_id_is_not_counted_as_another_restaurants_vote(app: tuple[str, int]) -> None:
    form = urllib.parse.urlencode({"id": "sakura/vote?"}).encode()
    status, _, _ = request(app, "POST", "/vote", form)
    assert status == 404
    assert _votes(app) == {}


def test_the_page_escapes_what_the_api_says_and_reports_an_unreachable_api() -> None:
    html = ui.page([{"id": 'x"><script>', "name": "<script>alert(1)</script>", "cuisine": "&", "votes": 3}])
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as s:
        gone = ("127.0.0.1", int(s.server_address[1]))
    server = ui.serve(gone, 0, "127.0.0.1")
    addr = _start(server)
    try:
        status, _, page = request(addr, "GET", "/")
        assert status == 503 and b"API cannot be reached" in page
        assert request(addr, "GET", "/healthz")[0] == 200, "the UI itself is up"
    finally:
        _stop(server)


# -- the manifests ----------------------------------------------------------------------------


def _containers(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: c
        for o in objs
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }


def test_manifests_take_the_image_repository_and_expose_the_ui_on_a_nodeport() -> None:
    objs = deploy_mod.manifests("registry.example.com:5000/vkp-sample")
    kinds = [o["kind"] for o in objs]
    assert kinds[0] == "Namespace" and objs[0]["metadata"]["name"] == NAMESPACE
    # Services before Deployments: pods learn Service addresses from variables set at their start.
    assert max(i for i, k in enumerate(kinds) if k == "Service") < min(i for i, k in enumerate(kinds)
                                                                         if k == "Deployment")  # fmt: skip
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in objs[1:])
    images = {n: c["image"] for n, c in _containers(objs).items()}
    assert images == {
        "redis": "registry.example.com:5000/vkp-sample/redis:0.1",
        "api": "registry.example.com:5000/vkp-sample/app:0.1",
        "ui": "registry.example.com:5000/vkp-sample/app:0.1",
    }
    services = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "Service"}
    assert services["ui"]["type"] == "NodePort"
    assert services["api"].get("type", "ClusterIP") == "ClusterIP"
    assert services["redis"].get("type", "ClusterIP") == "ClusterIP"
    # The names the app reads its Services' variables by (API_SERVICE_HOST, REDIS_SERVICE_HOST).
    assert {"api", "redis"} <= set(services)
    for o in objs:
        if o["kind"] == "Deployment":
            spec = o["spec"]["template"]["spec"]
            c = spec["containers"][0]
            assert c["resources"]["requests"], "small requests, so a small cluster schedules it"
            assert spec["securityContext"]["runAsNonRoot"] is True
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    assert deployments["api"]["spec"]["replicas"] == 2
    assert deploy_mod.manifests()[-1]["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        LAB_REPOSITORY + "/"
    )


def test_object_paths_are_the_objects_own_urls() -> None:
    paths = [deploy_mod.object_path(o) for o in deploy_mod.manifests()]
    assert paths[0] == f"/api/v1/namespaces/{NAMESPACE}"
    assert f"/api/v1/namespaces/{NAMESPACE}/services/ui" in paths
    assert f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/api" in paths


@pytest.mark.parametrize(
    "value", ["registry.example.com/vkp-sample", "registry:5000/a/b", "vkp.local/sample-app/"]
)
def test_image_repositories_accepted(value: str) -> None:
    assert deploy_mod.check_repository(value) == value.rstrip("/")


@pytest.mark.parametrize(
    ("value", "says"),
    [("https://registry.example.com/x", "scheme"), ("registry.example.com/x:0.1", "no tag"),
     ("registry.example.com/Upper", "lower-case"), ("", "not an image repository")],
)  # fmt: skip
def test_bad_image_repositories_say_what_is_wrong(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        deploy_mod.check_repository(value)


def test_a_bad_image_repository_is_a_usage_error_before_anything_is_contacted() -> None:
    result = CliRunner().invoke(main, ["sample-app", "deploy", "demo", "--image-repository", "http://x/y"])
    assert result.exit_code == ExitCode.USAGE and "scheme" in result.output


# -- deploy and delete against a fake API ------------------------------------------------------


class FakeAPI:
    """What deploy and delete ask of the Kubernetes API: applied objects become ready after a few
    polls, unless pods are told to fail."""

    def __init__(self, node_port: int, *, pod_state: dict[str, Any] | None = None) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.applied: list[str] = []
        self.polls = 0
        self.node_port = node_port
        self.pod_state = pod_state
        self.deleting = 0

    def apply(self, path: str, obj: dict[str, Any]) -> Any:
        self.applied.append(path)
        self.objects[path] = obj
        return obj

    def find(self, path: str) -> Any:
        if path.endswith(f"/namespaces/{NAMESPACE}") and self.deleting:
            self.deleting -= 1
            if not self.deleting:
                self.objects.pop(path, None)
            return {"status": {"phase": "Terminating"}}
        return self.objects.get(path)

    def delete(self, path: str) -> bool:
        if path not in self.objects:
            return False
        self.deleting = 3
        return True

    def get(self, path: str) -> Any:
        if path.endswith("/deployments"):
            self.polls += 1
            items = []
            for o in self.objects.values():
                if o["kind"] == "Deployment":
                    n = o["spec"]["replicas"]
                    ready = n if self.polls >= 3 and self.pod_state is None else 0
                    items.append({"metadata": {"name": o["metadata"]["name"], "generation": 1},
                                  "spec": {"replicas": n},
                                  "status": {"observedGeneration": 1, "replicas": n, "updatedReplicas": n,
                                             "availableReplicas": ready}})  # fmt: skip
            return {"items": items}
        if path.endswith("/pods"):
            if self.pod_state is None:
                return {"items": []}
            image = self.objects[f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/api"]["spec"]["template"][
                "spec"]["containers"][0]["image"]  # fmt: skip
            return {
                "items": [
                    {
                        "metadata": {"name": "api-5d8f-x2"},
                        "spec": {"containers": [{"name": "api", "image": image}]},
                        "status": {"containerStatuses": [{"name": "api", "state": self.pod_state}]},
                    }
                ]
            }
        if path.endswith("/services/ui"):
            return {"spec": {"ports": [{"nodePort": self.node_port}]}}
        raise AssertionError(path)


class FakeState:
    def __init__(self, nodes: dict[str, NodeRecord]) -> None:
        self.nodes = nodes


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy_mod.stop, "sleep", lambda _s, _w="": None)


def test_deploy_applies_everything_waits_and_gives_a_url_this_machine_reaches(
    monkeypatch: pytest.MonkeyPatch, no_sleep: None, app: tuple[str, int]
) -> None:
    # The "node" is this machine and the NodePort the UI's port: the URL printed answers here.
    fake = FakeAPI(app[1])
    nodes = {"c-master-1": NodeRecord("c-master-1", "master", "127.0.0.2"),
             "c-worker-1": NodeRecord("c-worker-1", "worker", "127.0.0.1"),
             "c-etcd-1": NodeRecord("c-etcd-1", "etcd", "127.0.0.3")}  # fmt: skip
    monkeypatch.setattr(deploy_mod, "_cluster_api", lambda name: (FakeState(nodes), fake))
    lines: list[str] = []
    result = deploy_mod.deploy("c", log=lines.append)
    assert fake.applied == [deploy_mod.object_path(o) for o in deploy_mod.manifests()]
    assert result["url"] == f"http://127.0.0.1:{app[1]}/", "a worker's address first"
    assert result["urls"] == [f"http://127.0.0.1:{app[1]}/", f"http://127.0.0.2:{app[1]}/"], "no etcd node"
    assert result["deployments"] == {"redis": "1/1", "api": "2/2", "ui": "1/1"}
    assert result["warnings"] == []
    assert any("api 0/2" in ln for ln in lines) and any("api 2/2" in ln for ln in lines), lines


def test_an_image_no_node_can_get_stops_the_deploy_naming_it_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, no_sleep: None, tmp_path: Path
) -> None:
    said = 'Back-off pulling image "vkp.local/sample-app/app:0.1"'
    fake = FakeAPI(30080, pod_state={"waiting": {"reason": "ImagePullBackOff", "message": said}})
    monkeypatch.setattr(deploy_mod, "_cluster_api", lambda name: (FakeState({}), fake))
    with pytest.raises(ArtifactError) as err:
        deploy_mod.deploy("c", log=lambda _m: None)
    assert "vkp.local/sample-app/app:0.1" in err.value.message and said in err.value.message
    assert "--image-repository" in (err.value.hint or "") and "vkp lab prepare" in (err.value.hint or "")
    # Through the CLI: exit 12 and one JSON document naming the image.
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["sample-app", "deploy", "c", "--image-repository",
                                       "registry.example.com/vkp-sample", "-o", "json"])  # fmt: skip
    assert result.exit_code == ExitCode.ARTIFACTS, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and "registry.example.com/vkp-sample/app:0.1" in doc["error"]["message"]
    assert "push the images" in doc["error"]["hint"]


def test_a_crashing_pod_stops_the_deploy_with_its_message(
    monkeypatch: pytest.MonkeyPatch, no_sleep: None
) -> None:
    fake = FakeAPI(30080, pod_state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}})
    monkeypatch.setattr(deploy_mod, "_cluster_api", lambda name: (FakeState({}), fake))
    with pytest.raises(deploy_mod.SampleAppError, match="api-5d8f-x2.*CrashLoopBackOff") as err:
        deploy_mod.deploy("c", log=lambda _m: None)
    assert "logs" in (err.value.hint or "")


def test_delete_waits_until_the_namespace_is_gone_and_again_is_a_no_op(
    monkeypatch: pytest.MonkeyPatch, no_sleep: None
) -> None:
    fake = FakeAPI(30080)
    fake.objects[f"/api/v1/namespaces/{NAMESPACE}"] = {"kind": "Namespace"}
    monkeypatch.setattr(deploy_mod, "_cluster_api", lambda name: (FakeState({}), fake))
    lines: list[str] = []
    assert deploy_mod.delete("c", log=lines.append)["deleted"] is True
    assert fake.find(f"/api/v1/namespaces/{NAMESPACE}") is None, (
        "it returned only once the namespace was gone"
    )
    assert any("waiting for namespace" in ln for ln in lines)
    assert deploy_mod.delete("c", log=lines.append)["deleted"] is False


def test_deploy_to_a_cluster_without_kubernetes_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from provisioner.state import ClusterState

    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    ClusterState.create_or_load("half")
    result = CliRunner().invoke(main, ["sample-app", "deploy", "half", "-o", "json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == ExitCode.ERROR and "kubernetes phase has not run" in doc["error"]["message"]
    result = CliRunner().invoke(main, ["sample-app", "delete", "nosuch"])
    assert result.exit_code == ExitCode.NOT_FOUND and "nosuch" in result.output
