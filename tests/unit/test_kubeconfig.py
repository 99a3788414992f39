"""The admin kubeconfig: built from vkp's PKI, written 0600, merged into a user's kubeconfig."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.bootstrap.kubeconfig import default_kubeconfig_path, get_credentials, merge_kubeconfig
from provisioner.bootstrap.pki import ensure_pki, load_pki
from provisioner.errors import ProvisionerError
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
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "prod", "cluster": {"server": "https://prod:6443"}}],
        "users": [{"name": "prod-user", "user": {"token": "keep-me"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "prod-user"}}],
        "current-context": "prod",
        "preferences": {"colors": True},
    }


def test_merge_keeps_other_entries_and_the_current_context(with_pki: ClusterState, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "home" / ".kube" / "config"
    kubeconfig.parent.mkdir(parents=True)
    kubeconfig.write_text(yaml.safe_dump(_other()))
    kubeconfig.chmod(0o644)
    result = get_credentials(NAME, merge_into=kubeconfig)
    assert result["changed"] is True and result["merged_into"] == str(kubeconfig)
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in cfg["clusters"]] == ["prod", NAME]
    assert [u["name"] for u in cfg["users"]] == ["prod-user", f"{NAME}-admin"]
    assert [c["name"] for c in cfg["contexts"]] == ["prod", NAME]
    assert cfg["users"][0] == _other()["users"][0] and cfg["preferences"] == {"colors": True}
    assert cfg["current-context"] == "prod", "a context the user chose is not switched"
    # Merging again changes nothing, byte for byte.
    before = kubeconfig.read_bytes()
    assert get_credentials(NAME, merge_into=kubeconfig)["changed"] is False
    assert kubeconfig.read_bytes() == before


def test_merge_replaces_a_stale_entry_and_sets_a_missing_current_context(
    with_pki: ClusterState, tmp_path: Path
) -> None:
    stale = _other()
    stale["clusters"].append({"name": NAME, "cluster": {"server": "https://old:6443"}})
    del stale["current-context"]
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump(stale))
    get_credentials(NAME, merge_into=kubeconfig)
    cfg = yaml.safe_load(kubeconfig.read_text())
    assert [c["name"] for c in cfg["clusters"]] == ["prod", NAME]
    assert cfg["clusters"][1]["cluster"]["server"] != "https://old:6443"
    assert cfg["current-context"] == NAME


def test_merge_into_a_new_file_and_through_a_symlink(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_dump(_other()))
    fresh = tmp_path / "new" / ".kube" / "config"
    assert merge_kubeconfig(config, fresh) is True
    assert fresh.stat().st_mode & 0o777 == 0o600 and fresh.parent.stat().st_mode & 0o777 == 0o700
    real = tmp_path / "dotfiles" / "kubeconfig"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "link-config"
    link.symlink_to(real)
    assert merge_kubeconfig(config, link) is True
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
    assert doc["warnings"] and "kubernetes phase" in doc["warnings"][0]
    assert "client-key-data" not in out.stdout, "no key material on stdout"
    assert yaml.safe_load(kubeconfig.read_text())["current-context"] == NAME
    missing = runner.invoke(main, ["get-credentials", "nope"])
    assert missing.exit_code == 4
