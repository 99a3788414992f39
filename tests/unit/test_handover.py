"""vkp state export / import: a cluster's state handed to another machine as one encrypted file.

What the person taking a cluster over checks: every file arrives with the same content and
private modes, the logs stay behind, a wrong passphrase or a damaged file is a clear error
that writes nothing, and an existing cluster is not overwritten unless asked.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from provisioner import handover
from provisioner.cli import main
from provisioner.errors import SettingsMissing
from provisioner.handover import HandoverError
from provisioner.output import remember_output
from provisioner.state import ClusterState, NodeRecord

SECRET = "correct horse battery staple"


@pytest.fixture(autouse=True)
def quick_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    # The file carries its scrypt cost; a cheap one keeps these tests fast and reads the same way.
    monkeypatch.setattr(handover, "SCRYPT_LOG2N", 12)


@pytest.fixture
def ci(tmp_path: Path) -> Path:
    """The state home of the machine that made cluster demo, with what a created cluster has."""
    home = tmp_path / "ci"
    st = ClusterState.create_or_load("demo", home=home)
    st.save_spec({"name": "demo", "ssh": {"user": "vkp", "port": 22}})
    st.ssh_keypair()
    for node, role, address in (
        ("demo-etcd-1", "etcd", "10.0.0.11"),
        ("demo-master-1", "master", "10.0.0.12"),
    ):
        st.host_key(node)
        st.save_node(NodeRecord(node, role, address, "esx-1", "vm-1", "uuid-1"))
    st.write_known_hosts([(n.name, n.address) for n in st.nodes.values()])
    st.write_hosts_inventory()
    st.record_phase("vms", "done", 12.5)
    pki = st.path / "pki" / "etcd"
    pki.mkdir(parents=True, mode=0o700)
    (st.path / "pki" / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\nCAKEY\n-----END PRIVATE KEY-----\n")
    (pki / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nETCDCA\n-----END CERTIFICATE-----\n")
    (st.path / "admin.conf").write_text("apiVersion: v1\nkind: Config\n")
    (st.path / "playbooks").mkdir(mode=0o700)
    (st.path / "playbooks" / "cluster.json").write_text('{"done": []}\n')
    (st.path / "logs").mkdir(mode=0o700)
    (st.path / "logs" / "20260101T000000Z-create-cluster.log").write_text("a run of the CI machine\n")
    return home


def vkp(home: Path, *args: str, passphrase: str | None = SECRET) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("VKP_")}
    env |= {"VKP_STATE_DIR": str(home), "VKP_STATE_PASSPHRASE": passphrase}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def export(ci: Path, tmp_path: Path, *more: str) -> Path:
    out = tmp_path / "demo.vkpstate"
    r = vkp(ci, "state", "export", "demo", "--file", str(out), *more)
    assert r.exit_code == 0, r.output
    return out


def test_round_trip_carries_every_file_with_private_modes_and_leaves_the_logs(
    ci: Path, tmp_path: Path
) -> None:
    out = tmp_path / "demo.vkpstate"
    r = vkp(ci, "state", "export", "demo", "--file", str(out), "-o", "json")
    assert r.exit_code == 0, r.output
    exported = json.loads(r.stdout)
    assert exported["cluster_id"] == ClusterState.load("demo", home=ci).cluster_id
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = out.read_bytes()
    assert data.startswith(b"VKPSTATE\x01")
    assert b"CAKEY" not in data and b"demo-etcd-1" not in data, "the content must be encrypted"
    source = ClusterState.load("demo", home=ci).path
    assert sorted(exported["files"]) == sorted(p for p in tree(source) if not p.startswith("logs/"))

    laptop = tmp_path / "laptop"
    r = vkp(laptop, "state", "import", str(out), "-o", "json")
    assert r.exit_code == 0, r.output
    imported = json.loads(r.stdout)
    target = laptop / "demo"
    assert imported["state_dir"] == str(target) and imported["replaced"] is None

    want = {p: b for p, b in tree(source).items() if not p.startswith("logs/")}
    got = tree(target)
    assert set(got) == set(want)
    for p, content in want.items():
        if p != "hosts.yaml":
            assert got[p] == content, p
    # The inventory names the key by its path on this machine, not on the CI machine.
    assert str(target / "ssh" / "id_ed25519") in got["hosts.yaml"].decode()
    assert str(ci) not in got["hosts.yaml"].decode()
    assert not (target / "logs").exists()
    for p in target.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert [p.name for p in laptop.iterdir() if p.name.startswith(".demo")] == [], "no staging left"

    st = ClusterState.load("demo", home=laptop)
    assert st.cluster_id == exported["cluster_id"]
    assert sorted(st.nodes) == ["demo-etcd-1", "demo-master-1"]
    listed = json.loads(vkp(laptop, "list-clusters", "-o", "json").stdout)["clusters"]
    assert [(c["name"], c["cluster_id"]) for c in listed] == [("demo", st.cluster_id)]


def test_a_wrong_passphrase_is_refused_and_writes_nothing(ci: Path, tmp_path: Path) -> None:
    out = export(ci, tmp_path)
    laptop = tmp_path / "laptop"
    r = vkp(laptop, "state", "import", str(out), "-o", "json", passphrase="not the passphrase at all")
    assert r.exit_code == 16
    err = json.loads(r.stdout)["error"]
    assert "passphrase is wrong" in err["message"] and "VKP_STATE_PASSPHRASE" in err["hint"]
    assert not (laptop / "demo").exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda b: b[:-200] + bytes([b[-200] ^ 1]) + b[-199:], id="a changed byte in the content"
        ),
        pytest.param(lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:], id="a changed salt in the header"),
        pytest.param(lambda b: b[: len(b) // 2], id="cut in half"),
        pytest.param(lambda b: b[:-1], id="its last byte lost"),
    ],
)
def test_a_changed_or_cut_file_is_refused(ci: Path, tmp_path: Path, damage: Any) -> None:
    out = export(ci, tmp_path)
    out.write_bytes(damage(out.read_bytes()))
    laptop = tmp_path / "laptop"
    r = vkp(laptop, "state", "import", str(out))
    assert r.exit_code == 16, r.output
    assert "changed or cut short" in r.stderr
    assert not (laptop / "demo").exists()


def test_files_that_are_not_a_state_file_say_what_they_are(ci: Path, tmp_path: Path) -> None:
    out = export(ci, tmp_path)
    data = out.read_bytes()
    cases = {
        "short": (data[:30], "cut short"),
        "other": (b"apiVersion: v1\nkind: Config\n", "not a vkp state file"),
        "newer": (data[:8] + b"\x02" + data[9:], "version 2 state file"),
    }
    for name, (content, said) in cases.items():
        f = tmp_path / f"{name}.vkpstate"
        f.write_bytes(content)
        r = vkp(tmp_path / "laptop", "state", "import", str(f))
        assert r.exit_code == 16 and said in r.stderr, (name, r.output)


def test_import_over_an_existing_cluster_needs_overwrite(ci: Path, tmp_path: Path) -> None:
    out = export(ci, tmp_path)
    laptop = tmp_path / "laptop"
    assert vkp(laptop, "state", "import", str(out)).exit_code == 0
    mine = laptop / "demo" / "admin.conf"
    mine.write_text("changed on this machine\n")
    (laptop / "demo" / "logs").mkdir()
    (laptop / "demo" / "logs" / "20260102T000000Z-ssh.log").write_text("a run here\n")

    r = vkp(laptop, "state", "import", str(out), "-o", "json")
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert "already has state" in err["message"] and "--overwrite" in err["hint"]
    assert mine.read_text() == "changed on this machine\n", "a refused import changes nothing"

    r = vkp(laptop, "state", "import", str(out), "--overwrite", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["replaced"] == ClusterState.load("demo", home=ci).cluster_id
    assert mine.read_text() == "apiVersion: v1\nkind: Config\n"
    assert (laptop / "demo" / "logs" / "20260102T000000Z-ssh.log").read_text() == "a run here\n"
    assert [p.name for p in laptop.iterdir() if p.name.startswith(".demo")] == []


def test_without_the_variable_json_output_names_it(ci: Path, tmp_path: Path) -> None:
    r = vkp(
        ci, "state", "export", "demo", "--file", str(tmp_path / "x.vkpstate"), "-o", "json", passphrase=None
    )
    assert r.exit_code == 3
    assert "VKP_STATE_PASSPHRASE" in json.loads(r.stdout)["error"]["message"]
    assert not (tmp_path / "x.vkpstate").exists()
    out = export(ci, tmp_path)
    r = vkp(tmp_path / "laptop", "state", "import", str(out), "-o", "json", passphrase=None)
    assert r.exit_code == 3 and "VKP_STATE_PASSPHRASE" in json.loads(r.stdout)["error"]["message"]


class _Terminal:
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_json_output_still_does_not_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(handover.getpass, "getpass", lambda *a, **k: pytest.fail("prompted"))
    with click.Context(main):
        remember_output("json")
        with pytest.raises(SettingsMissing) as missing:
            handover.passphrase({}, confirm=True)
    assert "VKP_STATE_PASSPHRASE" in str(missing.value) and "-o json" in str(missing.value)


def test_the_prompt_asks_twice_on_export_and_wants_a_long_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal())
    answers: list[str] = []
    monkeypatch.setattr(handover.getpass, "getpass", lambda *a, **k: answers.pop(0))
    answers[:] = [SECRET, SECRET]
    assert handover.passphrase({}, confirm=True) == SECRET and answers == []
    answers[:] = [SECRET, SECRET + "x"]
    with pytest.raises(HandoverError, match="differ"):
        handover.passphrase({}, confirm=True)
    answers[:] = ["short"]
    with pytest.raises(HandoverError, match="at least 12"):
        handover.passphrase({}, confirm=True)
    answers[:] = [SECRET]
    assert handover.passphrase({}, confirm=False) == SECRET  # import asks once
    with pytest.raises(HandoverError, match="at least 12"):
        handover.passphrase({"VKP_STATE_PASSPHRASE": "short"}, confirm=True)


def test_export_never_replaces_a_file(ci: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.vkpstate"
    out.write_text("something else\n")
    r = vkp(ci, "state", "export", "demo", "--file", str(out))
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert out.read_text() == "something else\n"


def test_export_waits_for_no_one_while_a_run_holds_the_lock(ci: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from provisioner import runlock\n"
            "with runlock.hold('demo', 'vkp create-cluster demo', log=print, home=Path(sys.argv[1])):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
            str(ci),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        deadline = time.monotonic() + 10
        while not (ci / ".locks" / "demo.holder.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = vkp(ci, "state", "export", "demo", "--file", str(tmp_path / "demo.vkpstate"))
        assert r.exit_code == 15 and "vkp create-cluster demo" in r.stderr
        assert not (tmp_path / "demo.vkpstate").exists()
    finally:
        holder.kill()
        holder.wait()


def test_export_of_an_unknown_cluster_is_not_found(ci: Path, tmp_path: Path) -> None:
    r = vkp(ci, "state", "export", "nosuch", "--file", str(tmp_path / "n.vkpstate"))
    assert r.exit_code == 4 and not (tmp_path / "n.vkpstate").exists()
