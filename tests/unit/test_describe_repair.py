"""describe-cluster flags the nodes that need repair, from three quick looks (day2/survey.py).

vCenter, etcd and the API are stand-ins: a provider whose census holds the cluster's VMs (or
not), etcd members that answer healthy, unhealthy or not at all, and describe's Kubernetes view.
Also here: a create-cluster that fails once the cluster exists offers `vkp support-bundle`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import provisioner.cluster
from provisioner.bootstrap import etcd_client
from provisioner.bootstrap.etcd_client import EtcdError, Member
from provisioner.bootstrap.pki import load_pki
from provisioner.errors import ExitCode, SSHError
from provisioner.infra import SeenCluster, SeenNode
from provisioner.spec import load_spec
from provisioner.state import ClusterState, NodeRecord
from tests.unit.test_cli_plan import vkp as _vkp
from tests.unit.test_spec import LAB_ENV

NODES = {
    "demo-etcd-1": ("etcd", "198.18.0.10"),
    "demo-etcd-2": ("etcd", "198.18.0.11"),
    "demo-etcd-3": ("etcd", "198.18.0.12"),
    "demo-master-1": ("master", "198.18.0.13"),
    "demo-worker-1": ("worker", "198.18.0.14"),
    "demo-worker-2": ("worker", "198.18.0.15"),
}
VIEW = {"version": "1.30.2", "endpoint": "https://198.18.0.251:6443"}
CREDS = {k: LAB_ENV[k] for k in ("VKP_VSPHERE_USER", "VKP_VSPHERE_PASSWORD")}


class World:
    """What the looks find: VMs in vCenter, etcd members' answers, the API's view."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self.vms = {n: "poweredOn" for n in NODES}
        self.etcd: dict[str, bool | str] = {n: True for n in NODES if n.startswith("demo-etcd")}
        self.listed = [n for n in NODES if n.startswith("demo-etcd")]
        self.kubernetes: dict[str, Any] = {
            **VIEW,
            "phase": "done",
            "readyz": "ok",
            "nodes": {n: "Ready" for n, (role, _) in NODES.items() if role != "etcd"},
        }
        self.surveys = 0


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    st = ClusterState.create_or_load("demo")
    st.save_spec(load_spec(None, name="demo", plan="dev", env=LAB_ENV).to_dict())
    for i, (name, (role, address)) in enumerate(NODES.items()):
        st.save_node(NodeRecord(name, role, address, "esx-1", f"vm-{i}", f"uuid-{i}"))
    for phase in ("vms", "etcd", "runtime", "kubernetes"):
        st.record_phase(phase, "done", 1.0)
    pki = load_pki(st)
    for p in (pki.path("etcd-ca"), pki.path("vkp-etcd-client"), pki.key_path("vkp-etcd-client")):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")
    w = World(st)

    class Provider:
        def survey(self) -> list[SeenCluster]:
            w.surveys += 1
            nodes = [
                SeenNode(
                    n, NODES[n][0], power, NODES[n][1], "guest", "esx-1", f"vm-{list(NODES).index(n)}", None
                )
                for n, power in w.vms.items()
            ]
            stranger = SeenNode("demo-worker-2", "worker", "poweredOn", None, None, None, "vm-99", None)
            other = SeenCluster("demo", "another-id", [stranger])
            return [SeenCluster("demo", st.cluster_id, nodes), other]

        def where(self) -> str:
            return "vCenter fake"

    class Infra:
        @contextmanager
        def open_cluster(self, name: str, env: Any = None) -> Iterator[Provider]:
            assert name == "demo"
            yield Provider()

    class Etcd:
        def __init__(self, endpoint: str, *files: Any, timeout: float = 5) -> None:
            self.node = next(n for n, (_, a) in NODES.items() if f"//{a}:" in endpoint)
            assert all(Path(f).is_file() for f in files) and timeout <= 3

        def health(self) -> bool:
            answer = w.etcd[self.node]
            if isinstance(answer, str):
                raise EtcdError(answer)
            return answer

        def members(self) -> list[Member]:
            return [Member(n, (), (), str(i)) for i, n in enumerate(w.listed)]

    monkeypatch.setattr("provisioner.infra.get", lambda name="vsphere": Infra())
    monkeypatch.setattr(etcd_client, "EtcdClient", Etcd)
    monkeypatch.setattr(provisioner.cluster, "_kubernetes_view", lambda st: dict(w.kubernetes))
    return w


def describe(*args: str, env: dict[str, str] | None = None) -> Any:
    return _vkp(
        "describe-cluster", "demo", *args, env={"VKP_STATE_DIR": os.environ["VKP_STATE_DIR"]} | (env or {})
    )


def test_a_healthy_cluster_needs_no_repair_after_one_look_each(world: World) -> None:
    r = describe("-o", "json", env=CREDS)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["needs_repair"] == []
    assert {k: v["status"] for k, v in doc["checks"].items()} == {
        "vcenter": "ok",
        "etcd": "ok",
        "kubernetes": "ok",
    }
    assert world.surveys == 1
    assert "NEEDS REPAIR" not in describe(env=CREDS).stdout


def test_broken_nodes_are_flagged_with_why_and_the_repair_command(world: World) -> None:
    world.vms.pop("demo-worker-2")  # destroyed behind vkp's back (another cluster's VM of that name stays)
    world.vms["demo-etcd-1"] = "poweredOff"
    world.etcd["demo-etcd-1"] = "https://198.18.0.10:2379: ConnectionRefusedError: refused"
    world.etcd["demo-etcd-2"] = False
    world.kubernetes["nodes"]["demo-worker-1"] = "NotReady"
    world.kubernetes["nodes"].pop("demo-worker-2")
    r = describe("-o", "json", env=CREDS)
    assert r.exit_code == 0, r.output
    repair = {e["node"]: e for e in json.loads(r.stdout)["needs_repair"]}
    assert list(repair) == ["demo-etcd-1", "demo-etcd-2", "demo-worker-1", "demo-worker-2"]
    assert repair["demo-etcd-1"]["reason"] == (
        "its VM is poweredOff in vCenter fake; etcd member not answering: "
        "https://198.18.0.10:2379: ConnectionRefusedError: refused"
    )
    assert repair["demo-etcd-2"]["reason"] == "etcd member reports unhealthy (no leader or not serving)"
    assert repair["demo-worker-1"]["reason"] == "NotReady in Kubernetes"
    assert (
        repair["demo-worker-2"]["reason"] == "its VM is gone from vCenter fake; not registered in Kubernetes"
    )
    assert repair["demo-worker-2"]["command"] == "vkp repair demo demo-worker-2"
    text = describe(env=CREDS).stdout
    assert (
        "  NEEDS REPAIR demo-worker-2: its VM is gone from vCenter fake; not registered in Kubernetes; "
        "run `vkp repair demo demo-worker-2`"
    ) in text
    assert text.count("NEEDS REPAIR") == 4


def test_a_member_missing_from_etcds_list_needs_repair(world: World) -> None:
    world.listed.remove("demo-etcd-3")
    doc = json.loads(describe("-o", "json", env=CREDS).stdout)
    assert doc["needs_repair"] == [
        {
            "node": "demo-etcd-3",
            "reason": "not in etcd's member list (as demo-etcd-1 sees it)",
            "command": "vkp repair demo demo-etcd-3",
        }
    ]


def test_looks_that_cannot_be_taken_are_unknown_not_failures(world: World) -> None:
    for n in world.etcd:
        world.etcd[n] = f"https://{NODES[n][1]}:2379: TimeoutError: timed out"
    world.kubernetes = {
        **VIEW,
        "phase": "done",
        "readyz": "https://198.18.0.251:6443/readyz: refused",
        "nodes": {},
    }
    r = describe("-o", "json")  # no vCenter credentials in the environment: no prompt either
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["needs_repair"] == []
    checks = doc["checks"]
    assert checks["vcenter"] == {
        "status": "unknown",
        "detail": "VKP_VSPHERE_USER and VKP_VSPHERE_PASSWORD not set (describe does not prompt)",
    }
    assert checks["etcd"]["status"] == "unknown" and "no etcd member answered" in checks["etcd"]["detail"]
    assert checks["kubernetes"]["status"] == "unknown" and "refused" in checks["kubernetes"]["detail"]
    assert world.surveys == 0
    text = describe().stdout
    assert "  check vcenter    unknown: VKP_VSPHERE_USER and VKP_VSPHERE_PASSWORD not set" in text


def test_a_vcenter_that_refuses_is_unknown(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        @contextmanager
        def open_cluster(self, name: str, env: Any = None) -> Iterator[Any]:
            raise SSHError("vCenter 127.0.0.1 refused the connection")
            yield

    monkeypatch.setattr("provisioner.infra.get", lambda name="vsphere": Refusing())
    doc = json.loads(describe("-o", "json", env=CREDS).stdout)
    assert doc["checks"]["vcenter"] == {
        "status": "unknown",
        "detail": "vCenter 127.0.0.1 refused the connection",
    }


def test_phases_not_done_are_skipped(world: World) -> None:
    world.state.record_phase("etcd", "failed", 2.0, "boom")
    world.kubernetes = {**VIEW, "phase": "not started"}
    doc = json.loads(describe("-o", "json", env=CREDS).stdout)
    assert doc["checks"]["etcd"]["status"] == doc["checks"]["kubernetes"]["status"] == "skipped"
    assert doc["needs_repair"] == []


# -- a failed create offers the bundle ---------------------------------------------------------


def test_a_create_that_fails_after_the_cluster_exists_offers_a_support_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VKP_STATE_DIR", str(tmp_path / "state"))
    env = LAB_ENV | {"VKP_STATE_DIR": str(tmp_path / "state")}
    made = []

    def failing(spec: Any, log: Any, **_: Any) -> dict[str, Any]:
        if made:
            ClusterState.create_or_load(spec.name).save_spec(spec.to_dict())
        raise SSHError("demo-etcd-1: `systemctl start etcd` exited 1")

    monkeypatch.setattr(provisioner.cluster, "create_cluster", failing)
    # Before the cluster exists (no session to vCenter yet): nothing to bundle, nothing offered.
    r = _vkp("create-cluster", "demo", "--plan", "dev", "--yes", env=env)
    assert r.exit_code == ExitCode.SSH and "support-bundle" not in r.stderr
    made.append(True)
    r = _vkp("create-cluster", "demo", "--plan", "dev", "--yes", env=env)
    assert r.exit_code == ExitCode.SSH
    assert "  bug report: `vkp support-bundle demo` bundles the logs" in r.stderr
    r = _vkp("create-cluster", "demo", "--plan", "dev", "--yes", "-o", "json", env=env)
    assert json.loads(r.stdout)["error"]["support_bundle"] == "vkp support-bundle demo"
    # Other commands failing on it do not offer it.
    r = _vkp("certs", "nope", env=env)
    assert r.exit_code == ExitCode.NOT_FOUND and "support-bundle" not in r.stderr


def test_a_node_the_vm_phase_never_finished_is_shown_without_its_address(world: World) -> None:
    world.state.save_node(NodeRecord("demo-worker-3", "worker"))  # cloned never: no address, no VM
    r = describe(env=CREDS)
    assert r.exit_code == 0, r.output
    assert any(line.split() == ["demo-worker-3", "worker", "-", "-", "-"] for line in r.stdout.splitlines())
    # No VM was made for it, so vCenter's look does not call it gone; the API's does miss it.
    repair = json.loads(describe("-o", "json", env=CREDS).stdout)["needs_repair"]
    assert repair == [
        {
            "node": "demo-worker-3",
            "reason": "not registered in Kubernetes",
            "command": "vkp repair demo demo-worker-3",
        }
    ]
