"""The admin kubeconfig: built from vkp's PKI, written 0600, merged into a user's kubeconfig."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.bootstrap.kubeconfig import (
    KubeconfigConflict,
    default_kubeconfig_path,
    get_credentials,
    merge_kubeconfig,
)
from provisioner.bootstrap.pki import ensure_pki, load_pki
from provisioner.errors import Busy, ExitCode, ProvisionerError
from provisioner.plan import make_plan
from provisioner.spec import load_spec, spec_from_dict
from provisioner.state import ClusterState
from tests.unit.test_spec import LAB_ENV

NAME = "kc"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ClusterState:
    home = tmp_path / "clusters"
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    spec_file = tmp_path / "cluster.yaml"
    # ECDSA keeps the test fast; the admin certificate follows the spec's key type.
    spec_file.write_text(f"name: {NAME}\nplan: dev\npki: {{key_type: ecdsa}}\n")
    spec = load_spec(spec_file, env=LAB_ENV)
    st = ClusterState.create_or_load(NAME, home=home)
    st.save_spec(spec.to_dict())
    return st


@pytest.fixture
def with_pki(state: ClusterState) -> ClusterState:
    spec = spec_from_dict(state.load_spec_dict())
    ensure_pki(state, make_plan(spec), spec.pki)
    return state


def _cert(b64: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def test_admin_kubeconfig_structure_and_trust(with_pki: ClusterState) -> None:
    result = get_credentials(NAME)
    path = Path(result["path"])
    assert path == with_pki.path / "admin.conf"
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = yaml.safe_load(path.read_text())
    assert (cfg["apiVersion"], cfg["kind"], cfg["current-context"]) == ("v1", "Config", NAME)
    [cluster], [user], [context] = cfg["clusters"], cfg["users"], cfg["contexts"]
    # The dev plan has one master, whose own address is the API endpoint.
    master = make_plan(spec_from_dict(with_pki.load_spec_dict())).by_role("master")[0]
    assert cluster["name"] == NAME
    assert sorted(cluster["cluster"]) == ["certificate-authority-data", "server"]
    assert cluster["cluster"]["server"] == f"https://{master.address}:6443"
    assert result["server"] == f"https://{master.address}:6443"
    assert context == {"name": NAME, "context": {"cluster": NAME, "user": f"{NAME}-admin"}}
    pki = load_pki(with_pki)
    ca = _cert(cluster["cluster"]["certificate-authority-data"])
    assert ca == x509.load_pem_x509_certificate(pki.cert_pem("ca"))
    admin = _cert(user["user"]["client-certificate-data"])
    admin.verify_directly_issued_by(ca)
    assert admin.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    eku = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(base64.b64decode(user["user"]["client-key-data"]), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == admin.public_key().public_bytes(der, spki)
    assert pki.key_path("admin").stat().st_mode & 0o777 == 0o600
    assert "admin" in pki.names()


def test_get_credentials_is_idempotent(with_pki: ClusterState) -> None:
    first = Path(get_credentials(NAME)["path"])
    before, inode = first.read_bytes(), first.stat().st_ino
    again = Path(get_credentials(NAME)["path"])
    assert again.read_bytes() == before
    assert again.stat().st_ino == inode, "an unchanged admin.conf is not rewritten"


def test_warns_until_the_kubernetes_phase_is_done(with_pki: ClusterState) -> None:
    [warning] = get_credentials(NAME)["warnings"]
    assert "kubernetes phase of cluster kc has not run" in warning
    with_pki.record_phase("kubernetes", "failed", 3.0, "no artifacts")
    assert "is failed" in get_credentials(NAME)["warnings"][0]
    with_pki.record_phase("kubernetes", "done", 60.0)
    assert get_credentials(NAME)["warnings"] == []


def test_no_pki_yet_says_where_it_comes_from(state: ClusterState) -> None:
    with pytest.raises(ProvisionerError) as ei:
        get_credentials(NAME)
    assert "no cluster CA yet" in ei.value.message
    assert ei.value.hint is not None and "etcd phase" in ei.value.hint


def _other() -> dict[str, Any]:
    """A user's kubeconfig with two contexts of its own and settings vkp does not know."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "prod", "cluster": {"server": "https://prod:6443"}},
            {
                "name": "staging",
                "cluster": {"server": "https://staging:6443", "insecure-skip-tls-verify": True},
            },
        ],
        "users": [{"name": "prod-user", "user": {"token": "keep-me"}}, {"name": "sso", "user": {"exec": {}}}],
        "contexts": [
            {"name": "prod", "context": {"cluster": "prod", "user": "prod-user", "namespace": "apps"}},
            {"name": "staging", "context": {"cluster": "staging", "user": "sso"}},
        ],
        "current-context": "prod",
        "preferences": {"colors": True},
        "extensions": [{"name": "tool", "extension": {"x": 1}}],
    }


def _names(cfg: dict[str, Any], key: str) -> list[str]:
    return [e["name"] for e in cfg[key]]


def _write(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_merge_keeps_other_entries_and_switches_the_current_context(
    with_pki: ClusterState, tmp_path: Path
) -> None:
    kubeconfig = _write(tmp_path / "home" / ".kube" / "config", _other())
    kubeconfig.chmod(0o644)
    result = get_credentials(NAME, merge_into=kubeconfig)
    assert result["changed"] is True and result["merged_into"] == str(kubeconfig)
    assert (result["switched"], result["previous_context"], result["replaced"]) == (True, "prod", [])
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert _names(cfg, "clusters") == ["prod", "staging", NAME]
    assert _names(cfg, "users") == ["prod-user", "sso", f"{NAME}-admin"]
    assert _names(cfg, "contexts") == ["prod", "staging", NAME]
    other = _other()
    for key in ("clusters", "users", "contexts"):
        assert cfg[key][:2] == other[key], f"the user's own {key} are kept as they were"
    assert cfg["preferences"] == {"colors": True} and cfg["extensions"] == other["extensions"]
    assert cfg["current-context"] == NAME, "plain kubectl now talks to the new cluster"
    assert not (kubeconfig.parent / "config.lock").exists(), "kubectl would refuse a left-over lock"


def test_merge_no_switch_keeps_the_current_context(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _other())
    result = get_credentials(NAME, merge_into=kubeconfig, switch=False)
    assert (result["changed"], result["switched"], result["previous_context"]) == (True, False, "prod")
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert cfg["current-context"] == "prod" and _names(cfg, "contexts") == ["prod", "staging", NAME]
    # A file without a current context gets the cluster's even with --no-switch: there is
    # nothing to keep, and kubectl would otherwise need --context for everything.
    bare = _other()
    del bare["current-context"]
    kubeconfig = _write(tmp_path / "bare", bare)
    result = get_credentials(NAME, merge_into=kubeconfig, switch=False)
    assert (result["switched"], result["previous_context"]) == (True, None)
    assert yaml.safe_load(kubeconfig.read_text())["current-context"] == NAME


def test_rerun_is_unchanged_and_says_so(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _other())
    get_credentials(NAME, merge_into=kubeconfig)
    before, inode = kubeconfig.read_bytes(), kubeconfig.stat().st_ino
    again = get_credentials(NAME, merge_into=kubeconfig)
    assert (again["changed"], again["switched"], again["previous_context"]) == (False, False, NAME)
    assert kubeconfig.read_bytes() == before and kubeconfig.stat().st_ino == inode
    # The entries are there but another context was chosen since: a re-run switches back, no conflict.
    cfg = yaml.safe_load(before)
    cfg["current-context"] = "staging"
    _write(kubeconfig, cfg)
    back = get_credentials(NAME, merge_into=kubeconfig)
    assert (back["changed"], back["switched"], back["previous_context"], back["replaced"]) == (
        True, True, "staging", []
    )  # fmt: skip


def _stale() -> dict[str, Any]:
    """_other() plus a cluster and context named like vkp's from an earlier cluster of that name."""
    cfg = _other()
    cfg["clusters"].append({"name": NAME, "cluster": {"server": "https://old:6443"}})
    cfg["contexts"].append({"name": NAME, "context": {"cluster": NAME, "user": "someone-else"}})
    return cfg


def test_a_differing_entry_is_refused_without_overwrite(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _stale())
    before, mtime = kubeconfig.read_bytes(), kubeconfig.stat().st_mtime_ns
    with pytest.raises(KubeconfigConflict) as ei:
        get_credentials(NAME, merge_into=kubeconfig)
    err = ei.value
    assert err.exit_code == ExitCode.USAGE == 2
    assert str(kubeconfig) in err.message and "changed nothing" in err.message
    assert "cluster 'kc' (server https://old:6443" in err.message
    assert "context 'kc' (cluster 'kc' and user 'someone-else'" in err.message
    assert "user 'kc-admin'" not in err.message, "the user entry is new, no conflict"
    assert err.hint is not None and "--overwrite" in err.hint and "--file" in err.hint
    assert kubeconfig.read_bytes() == before and kubeconfig.stat().st_mtime_ns == mtime
    assert not (tmp_path / "config.lock").exists()


def test_overwrite_replaces_differing_entries(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _stale())
    result = get_credentials(NAME, merge_into=kubeconfig, overwrite=True)
    assert [r.split(" (")[0] for r in result["replaced"]] == ["cluster 'kc'", "context 'kc'"]
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert _names(cfg, "clusters") == ["prod", "staging", NAME], "replaced in place, not duplicated"
    assert cfg["clusters"][2]["cluster"]["server"] == result["server"] != "https://old:6443"
    assert cfg["contexts"][2] == {"name": NAME, "context": {"cluster": NAME, "user": f"{NAME}-admin"}}
    assert cfg["current-context"] == NAME
    # Now identical: no conflict any more, even without --overwrite.
    assert get_credentials(NAME, merge_into=kubeconfig)["changed"] is False


def test_merge_into_a_new_file_with_private_directories(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "deeper" / "config"
    assert merge_kubeconfig(_other(), fresh).changed is True
    assert fresh.stat().st_mode & 0o777 == 0o600
    for d in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert d.stat().st_mode & 0o777 == 0o700, f"{d} holds a private key's file"
    assert yaml.safe_load(fresh.read_text())["current-context"] == "prod"


def test_concurrent_merges_both_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two merges racing on one file: the lock makes the second read what the first wrote."""
    import provisioner.bootstrap.kubeconfig as kc

    real_merge = kc.merge

    def slow_merge(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # Widen the read-modify-write window so that, without the lock, one merge would
        # always overwrite the other's entries.
        time.sleep(0.3)
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(kc, "merge", slow_merge)
    kubeconfig = _write(tmp_path / "config", _other())
    configs = [kc.build_kubeconfig(n, f"https://{n}:6443", b"ca", b"cert", b"key") for n in ("one", "two")]
    errors: list[BaseException] = []

    def worker(cfg: dict[str, Any]) -> None:
        try:
            merge_kubeconfig(cfg, kubeconfig)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert sorted(_names(cfg, "contexts")) == ["one", "prod", "staging", "two"]
    assert sorted(_names(cfg, "users")) == ["one-admin", "prod-user", "sso", "two-admin"]
    assert not (tmp_path / "config.lock").exists()


def test_a_held_lock_is_waited_for_then_reported(tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _other())
    before = kubeconfig.read_bytes()
    # kubectl's client-go holds `<file>.lock` (an exclusively created file) while it writes.
    (tmp_path / "config.lock").write_text("")
    with pytest.raises(Busy) as ei:
        merge_kubeconfig(_other() | {"current-context": "staging"}, kubeconfig, lock_timeout=0.3)
    assert ei.value.exit_code == ExitCode.BUSY
    assert "config.lock" in ei.value.message and ei.value.hint and "remove" in ei.value.hint
    assert kubeconfig.read_bytes() == before
    assert (tmp_path / "config.lock").exists(), "someone else's lock is not ours to remove"


def test_merge_into_a_new_file_and_through_a_symlink(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(_other()))
    fresh = tmp_path / "new" / ".kube" / "config"
    assert merge_kubeconfig(config, fresh).changed is True
    assert fresh.stat().st_mode & 0o777 == 0o600 and fresh.parent.stat().st_mode & 0o777 == 0o700
    real = tmp_path / "dotfiles" / "kubeconfig"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "link-config"
    link.symlink_to(real)
    assert merge_kubeconfig(config, link).changed is True
    assert link.is_symlink() and yaml.safe_load(real.read_text())["current-context"] == "prod"


def test_merge_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "config"
    bad.write_text("clusters: [unclosed\n")
    with pytest.raises(ProvisionerError, match="not valid YAML"):
        merge_kubeconfig(_other(), bad)
    assert bad.read_text() == "clusters: [unclosed\n"


def test_default_kubeconfig_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert default_kubeconfig_path({"KUBECONFIG": f"{first}{os.pathsep}{second}"}) == first
    assert default_kubeconfig_path({"KUBECONFIG": ""}) == Path.home() / ".kube" / "config"


def test_cli_get_credentials(with_pki: ClusterState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["get-credentials", NAME])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == str(with_pki.path / "admin.conf")
    kubeconfig = tmp_path / "kc-merged"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    out = runner.invoke(main, ["get-credentials", NAME, "--merge", "-o", "json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["merged_into"] == str(kubeconfig) and doc["context"] == NAME
    assert (doc["changed"], doc["switched"], doc["previous_context"], doc["replaced"]) == (
        True,
        True,
        None,
        [],
    )
    assert {"cluster", "server", "path", "user", "warnings"} <= set(doc)
    assert doc["warnings"] and "kubernetes phase" in doc["warnings"][0]
    assert "client-key-data" not in out.stdout, "no key material on stdout"
    assert yaml.safe_load(kubeconfig.read_text())["current-context"] == NAME
    missing = runner.invoke(main, ["get-credentials", "nope"])
    assert missing.exit_code == 4


def _vkp(*args: str) -> Any:
    from provisioner.cli import main

    return CliRunner().invoke(main, list(args))


def test_cli_merge_switches_and_says_so(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _other())
    out = _vkp("get-credentials", NAME, "--file", str(kubeconfig))
    assert out.exit_code == 0, out.output
    assert f"context {NAME} merged into {kubeconfig}" in out.stdout
    assert f"current context: {NAME} (was prod)" in out.stdout
    again = _vkp("get-credentials", NAME, "--file", str(kubeconfig))
    assert (
        f"context {NAME} already in {kubeconfig}" in again.stdout
        and f"current context: {NAME}" in again.stdout
    )
    kept = _write(tmp_path / "kept", _other())
    out = _vkp("get-credentials", NAME, "--file", str(kept), "--no-switch")
    assert out.exit_code == 0, out.output
    assert f"current context stays prod; use kubectl --context {NAME}" in out.stdout
    assert yaml.safe_load(kept.read_text())["current-context"] == "prod"


def test_cli_conflict_exits_2_and_overwrite_replaces(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = _write(tmp_path / "config", _stale())
    before = kubeconfig.read_bytes()
    out = _vkp("get-credentials", NAME, "--file", str(kubeconfig))
    assert out.exit_code == 2, out.output
    assert f"error: {kubeconfig} already has cluster 'kc' (server https://old:6443" in out.stderr
    assert "--overwrite" in out.stderr and kubeconfig.read_bytes() == before
    out = _vkp("get-credentials", NAME, "--file", str(kubeconfig), "-o", "json")
    assert out.exit_code == 2
    doc = json.loads(out.stdout)
    assert doc["ok"] is False and doc["error"]["type"] == "KubeconfigConflict" and doc["exit_code"] == 2
    out = _vkp("get-credentials", NAME, "--file", str(kubeconfig), "--overwrite", "-o", "json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert len(doc["replaced"]) == 2 and doc["switched"] is True and doc["previous_context"] == "prod"
    assert yaml.safe_load(kubeconfig.read_text())["clusters"][2]["cluster"]["server"] == doc["server"]


def test_cli_file_creates_a_private_file(with_pki: ClusterState, tmp_path: Path) -> None:
    target = tmp_path / "made" / "here" / "kubeconfig"
    out = _vkp("get-credentials", NAME, "--file", str(target), "-o", "json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["merged_into"] == str(target)
    assert target.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o700
    cfg = yaml.safe_load(target.read_text())
    assert cfg["current-context"] == NAME and _names(cfg, "users") == [f"{NAME}-admin"]


def test_cli_merge_flags_need_a_merge(with_pki: ClusterState) -> None:
    for flag in ("--overwrite", "--no-switch"):
        out = _vkp("get-credentials", NAME, flag)
        assert out.exit_code == 2 and f"{flag} applies to a merge" in out.stderr


_RACER = """
import sys, time
from pathlib import Path
import provisioner.bootstrap.kubeconfig as kc
real = kc.merge
def slow(*a, **k):
    time.sleep(0.5)  # every racer reads before any writes, unless the lock orders them
    return real(*a, **k)
kc.merge = slow
name = sys.argv[2]
kc.merge_kubeconfig(kc.build_kubeconfig(name, f"https://{name}:6443", b"ca", b"c", b"k"), Path(sys.argv[1]))
"""


def test_concurrent_merges_from_separate_processes(tmp_path: Path) -> None:
    """Three vkp processes merging at once: every cluster ends up in the file."""
    import subprocess
    import sys

    kubeconfig = _write(tmp_path / "config", _other())
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(kubeconfig), n], cwd=repo, stderr=subprocess.PIPE)
        for n in ("one", "two", "three")
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert sorted(_names(cfg, "contexts")) == ["one", "prod", "staging", "three", "two"]
    assert kubeconfig.stat().st_mode & 0o777 == 0o600 and not (tmp_path / "config.lock").exists()
