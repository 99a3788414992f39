import os
import stat
import threading

import paramiko
import pytest
import yaml

from provisioner import state as state_mod
from provisioner.errors import NotFound, ProvisionerError, SpecError
from provisioner.state import ClusterState, NodeRecord, atomic_write


def mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "clusters"
    monkeypatch.setenv("VKP_STATE_DIR", str(h))
    return h


def no_temp_files(root) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_atomic_write_modes_and_no_temp_left(tmp_path):
    os.umask(0o022)
    atomic_write(tmp_path / "secret", b"k", 0o600)
    atomic_write(tmp_path / "public", "p", 0o644)
    assert mode(tmp_path / "secret") == 0o600 and mode(tmp_path / "public") == 0o644
    atomic_write(tmp_path / "secret", b"k2", 0o600)
    assert (tmp_path / "secret").read_bytes() == b"k2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public", "secret"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    atomic_write(target, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_state_home_follows_env(home):
    assert home == state_mod.STATE_HOME


def test_create_dirs_0700_and_id_stable(home):
    s = ClusterState.create_or_load("demo")
    assert s.path == home / "demo"
    assert mode(home) == 0o700 and mode(s.path) == 0o700
    again = ClusterState.create_or_load("demo")
    assert again.cluster_id == s.cluster_id
    assert ClusterState.load("demo").cluster_id == s.cluster_id
    assert ClusterState.exists("demo") and not ClusterState.exists("other")
    ClusterState.create_or_load("alpha")
    assert ClusterState.list_all() == ["alpha", "demo"]


def test_names_cannot_escape_the_state_dir(home):
    for bad in ("../x", "a/b", "", "UPPER", "x" * 64):
        with pytest.raises(SpecError):
            ClusterState.create_or_load(bad)
    s = ClusterState.create_or_load("demo")
    with pytest.raises(SpecError):
        s.host_key("../../etc")


def test_load_missing_is_not_found(home):
    with pytest.raises(NotFound):
        ClusterState.load("nope")


def test_ssh_keypair_generated_once_private_0600(home):
    s = ClusterState.create_or_load("demo")
    path, public = s.ssh_keypair()
    assert mode(path) == 0o600 and mode(s.path / "ssh") == 0o700
    assert public.startswith("ssh-ed25519 ") and public.endswith(" vkp-demo")
    key = paramiko.Ed25519Key.from_private_key_file(str(path))
    assert public.split()[1] == key.get_base64()
    assert ClusterState.create_or_load("demo").ssh_keypair() == (path, public)


def test_host_key_per_node_0600_and_stable(home):
    s = ClusterState.create_or_load("demo")
    priv, pub = s.host_key("demo-master-1")
    assert "BEGIN OPENSSH PRIVATE KEY" in priv and pub.startswith("ssh-ed25519 ")
    assert mode(s.path / "hostkeys" / "demo-master-1") == 0o600
    assert s.host_key("demo-master-1") == (priv, pub)
    assert s.host_key("demo-worker-1")[1] != pub


def test_known_hosts_pins_stored_keys_by_name_and_address(home):
    s = ClusterState.create_or_load("demo")
    _, pub1 = s.host_key("n1")
    _, pub2 = s.host_key("n2")
    path = s.write_known_hosts([("n1", "198.18.0.11"), ("n2", "198.18.0.12")])
    assert path == s.known_hosts_path
    lines = path.read_text().splitlines()
    key1, key2 = (" ".join(p.split()[:2]) for p in (pub1, pub2))
    assert lines == [f"n1,198.18.0.11 {key1}", f"n2,198.18.0.12 {key2}"]
    # paramiko (the connector) reads it back under both names.
    hk = paramiko.HostKeys(str(path))
    by_address, by_name = hk.lookup("198.18.0.11"), hk.lookup("n2")
    assert by_address is not None and by_name is not None
    assert by_address["ssh-ed25519"].get_base64() == pub1.split()[1]
    assert by_name["ssh-ed25519"].get_base64() == pub2.split()[1]
    with pytest.raises(NotFound):
        s.write_known_hosts([("never-made", "198.18.0.99")])


def test_nodes_and_phases_round_trip(home):
    s = ClusterState.create_or_load("demo")
    s.save_node(NodeRecord("demo-etcd-1", "etcd", "198.18.0.10", "host-1", "vm-42", "uuid-1"))
    s.save_node(NodeRecord("demo-master-1", "master"))
    s.record_phase("vms", "running")
    s.record_phase("vms", "done", 12.5, "3 clones")
    s.record_phase("ssh", "failed", 1.0, "timeout")
    again = ClusterState.create_or_load("demo")
    assert again.nodes["demo-etcd-1"].moid == "vm-42"
    assert again.nodes["demo-master-1"].address is None
    assert [p.name for p in again.phases()] == ["vms", "ssh"]
    vms = again.phase("vms")
    assert vms is not None and (vms.status, vms.seconds, vms.detail) == ("done", 12.5, "3 clones")
    assert again.phase("health") is None
    again.remove_node("demo-master-1")
    assert list(s.nodes) == ["demo-etcd-1"]
    with pytest.raises(ValueError):
        s.record_phase("x", "weird")  # type: ignore[arg-type]
    assert no_temp_files(s.path)


def test_parallel_node_saves_lose_nothing(home):
    s = ClusterState.create_or_load("demo")
    threads = [
        threading.Thread(target=s.save_node, args=(NodeRecord(f"w{i}", "worker", f"198.18.0.{20 + i}"),))
        for i in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(s.nodes) == 16
    assert no_temp_files(s.path)


def test_hosts_inventory(home):
    s = ClusterState.create_or_load("demo")
    s.save_spec({"name": "demo", "ssh": {"user": "ops", "port": 2222}})
    s.save_node(NodeRecord("demo-etcd-1", "etcd", "198.18.0.10"))
    s.save_node(NodeRecord("demo-master-1", "master", "198.18.0.11"))
    s.save_node(NodeRecord("demo-worker-1", "worker", "198.18.0.12"))
    path = s.write_hosts_inventory()
    text = path.read_text()
    assert text.startswith("# Generated by vkp")
    inv = yaml.safe_load(text)
    children = inv["all"]["children"]
    assert set(children) == {"etcd", "master", "worker"}
    m = children["master"]["hosts"]["demo-master-1"]
    key_path, _ = s.ssh_keypair()
    assert m["ansible_host"] == "198.18.0.11"
    assert m["ansible_user"] == "ops" and m["ansible_port"] == 2222
    assert m["ansible_ssh_private_key_file"] == str(key_path)
    assert "StrictHostKeyChecking=yes" in m["ansible_ssh_common_args"]
    assert str(s.known_hosts_path) in m["ansible_ssh_common_args"]
    assert list(children["etcd"]["hosts"]) == ["demo-etcd-1"]


def test_spec_round_trip_and_no_secrets(home):
    s = ClusterState.create_or_load("demo")
    spec = {"name": "demo", "vsphere": {"credentials": {"user_env": "U", "password_env": "P"}}}
    s.save_spec(spec)
    assert s.load_spec_dict() == spec
    with pytest.raises(ProvisionerError, match=r"vsphere\.password"):
        s.save_spec({"vsphere": {"password": "hunter2"}})
    assert "hunter2" not in (s.path / "spec.yaml").read_text()


def test_every_file_is_0600_or_public(home):
    s = ClusterState.create_or_load("demo")
    s.ssh_keypair()
    s.host_key("n1")
    s.write_known_hosts([("n1", "198.18.0.11")])
    s.save_node(NodeRecord("n1", "master", "198.18.0.11"))
    s.write_hosts_inventory()
    for p in s.path.rglob("*"):
        if p.is_dir():
            assert mode(p) == 0o700, p
        elif p.name in ("id_ed25519", "n1", ".lock"):
            assert mode(p) == 0o600, p
        else:
            assert p.suffix in (".pub", ".json", ".yaml") or p.name == "known_hosts", p
            assert "PRIVATE KEY" not in p.read_text(), p


def test_remove(home):
    s = ClusterState.create_or_load("demo")
    s.ssh_keypair()
    s.remove()
    assert not s.path.exists() and not ClusterState.exists("demo")
    s.remove()  # a second delete is a no-op


# -- who may change the state directory ------------------------------------------------------


def test_fresh_home_and_missing_parents_are_0700_whatever_the_umask(tmp_path, monkeypatch):
    home = tmp_path / "a" / "b" / "clusters"
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    old = os.umask(0o002)
    try:
        s = ClusterState.create_or_load("demo")
        s.ssh_keypair()
        s.host_key("n1")
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", home, s.path, s.path / "ssh", s.path / "hostkeys"):
        assert mode(d) == 0o700, d


def test_existing_0755_home_is_used_and_not_chmodded(tmp_path, monkeypatch):
    home = tmp_path / "clusters"
    home.mkdir()
    os.chmod(home, 0o755)
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    s = ClusterState.create_or_load("demo")
    assert mode(home) == 0o755
    assert mode(s.path) == 0o700
    # A cluster directory the user opened up for reading is left alone too.
    os.chmod(s.path, 0o750)
    ClusterState.create_or_load("demo").ssh_keypair()
    ClusterState.load("demo")
    assert mode(s.path) == 0o750


def test_home_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    home = tmp_path / "clusters"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    with pytest.raises(state_mod.UnsafeStateDir) as e:
        ClusterState.create_or_load("demo")
    msg = str(e.value)
    assert str(home) in msg and "uid 65534" in msg and "uid 0" in msg
    assert "chown" in msg and "VKP_STATE_DIR" in msg
    assert e.value.exit_code == 1
    assert not (home / "demo").exists()


def test_group_writable_home_is_refused_and_left_as_it_is(tmp_path, monkeypatch):
    home = tmp_path / "clusters"
    home.mkdir()
    os.chmod(home, 0o770)
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    with pytest.raises(state_mod.UnsafeStateDir) as e:
        ClusterState.create_or_load("demo")
    msg = str(e.value)
    assert str(home) in msg and "group-writable" in msg and "0770" in msg
    assert f"chmod go-w {home}" in msg
    assert mode(home) == 0o770 and not (home / "demo").exists()


def test_world_writable_cluster_dir_is_refused_on_create_and_load(home):
    s = ClusterState.create_or_load("demo")
    os.chmod(s.path, 0o777)
    for attempt in (lambda: ClusterState.create_or_load("demo"), lambda: ClusterState.load("demo")):
        with pytest.raises(state_mod.UnsafeStateDir) as e:
            attempt()
        assert str(s.path) in str(e.value) and "group and world-writable" in str(e.value)
        assert "(mode 0777)" in str(e.value)
    os.chmod(s.path, 0o757)
    with pytest.raises(state_mod.UnsafeStateDir, match="world-writable"):
        ClusterState.load("demo")


def test_group_writable_ssh_and_hostkeys_dirs_are_refused(home):
    s = ClusterState.create_or_load("demo")
    s.ssh_keypair()
    s.host_key("n1")
    os.chmod(s.path / "ssh", 0o720)
    with pytest.raises(state_mod.UnsafeStateDir, match="ssh"):
        s.ssh_keypair()
    os.chmod(s.path / "hostkeys", 0o770)
    with pytest.raises(state_mod.UnsafeStateDir, match="hostkeys"):
        s.host_key("n1")


def test_state_path_that_is_a_file_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "clusters"
    home.write_text("")
    monkeypatch.setenv("VKP_STATE_DIR", str(home))
    with pytest.raises(state_mod.UnsafeStateDir, match="not a directory"):
        ClusterState.create_or_load("demo")


def test_has_spec(home):
    s = ClusterState.create_or_load("demo")
    assert not s.has_spec()
    s.save_spec({"name": "demo"})
    assert s.has_spec()
