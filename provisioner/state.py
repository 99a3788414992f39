"""The per-cluster state directory: identity, keys, nodes, progress and the generated inventory.

Layout of STATE_HOME/<name>/ (the directory and its sub-directories are created 0700):

    state.json              cluster id, nodes, phases, repairs under way       0644
    spec.yaml               the spec the cluster was created from             0644
    hosts.yaml              Ansible-style inventory                           0644
    ssh/id_ed25519          the cluster's SSH login key                        0600
    ssh/id_ed25519.pub                                                         0644
    ssh/known_hosts         the pinned host keys of all nodes                 0644
    hostkeys/<node>         a node's pre-generated SSH host key (private)     0600
    hostkeys/<node>.pub                                                        0644
    playbooks/<playbook>.json  what a playbook's current or last failed run did  0644

STATE_HOME, the cluster's directory, ssh/ and hostkeys/ must be owned by the running user and
not group- or world-writable, or they are refused (UnsafeStateDir), as ssh refuses such a
~/.ssh: whoever can write them can swap the keys vkp trusts. An existing directory is never
chmodded; only directories vkp creates are set to 0700.

Every write goes through atomic_write, so a crash leaves the old file or the new one, never a
torn one. No password is ever stored here: vCenter credentials are read from the environment
at connect time, and save_spec refuses a spec that carries one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provisioner.errors import Interrupted, NotFound, ProvisionerError, SpecError

STATE_DIR_ENV = "VKP_STATE_DIR"
STATE_VERSION = 1
PhaseStatus = Literal["running", "done", "failed", "interrupted"]
PHASE_STATUSES = ("running", "done", "failed", "interrupted")
PROGRESS_DIR = "playbooks"
# Where vkp kept the cluster playbook's resume record before each playbook had its own.
LEGACY_PROGRESS = {"cluster": "bootstrap.json"}


def ended_status(exc: BaseException) -> PhaseStatus:
    """What a phase that ended with exc is recorded as: interrupted by a signal, else failed."""
    return "interrupted" if isinstance(exc, Interrupted | KeyboardInterrupt) else "failed"


# Names become directory and file names here: one DNS label, so nothing can escape the tree.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Keys a spec must never carry a value under (credentials are referenced by env var name only).
_SECRET_KEYS = {"password", "passwd", "pass", "secret", "token", "private_key", "privatekey"}


def state_home() -> Path:
    """STATE_HOME, read from the environment at call time so tests and CI can redirect it."""
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".vkp" / "clusters"


def __getattr__(name: str) -> Any:
    # STATE_HOME follows VKP_STATE_DIR even when it is set after import.
    if name == "STATE_HOME":
        return state_home()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o600) -> None:
    """Replace path with data: the file is the old one or the new one, never partial.

    The temporary file is created in the same directory (so the rename is atomic) and has the
    final mode before the first byte is written, so a secret is never readable by others even
    for a moment.
    """
    if mode not in (0o600, 0o644):
        raise ValueError(f"atomic_write mode must be 0o600 or 0o644, got {oct(mode)}")
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename is only durable once the directory entry is.
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class UnsafeStateDir(ProvisionerError):
    """A state directory others could change: its SSH keys, CA and pinned host keys would not be
    the user's alone. Refused, as ssh refuses a group-writable ~/.ssh."""


def private_dir(path: Path) -> Path:
    """path as a directory only the running user can change.

    Missing directories (and missing parents) are created 0700. An existing one is never
    chmodded (it may be a directory the user set up on purpose, e.g. VKP_STATE_DIR), but it is
    refused with UnsafeStateDir unless the running user owns it and neither group nor others can
    write it.
    """
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            # Made by someone else in the meantime: not ours to chmod; check_private_dir judges it.
            continue
        # mkdir's mode is filtered by the umask; only a directory made just now is set to 0700.
        os.chmod(d, 0o700)
    check_private_dir(path)
    return path


def check_private_dir(path: Path) -> None:
    """Raise UnsafeStateDir unless path is a directory owned by the running user and not group-
    or world-writable. Only the state home and below are checked: whoever can write one of them
    can swap the cluster's keys, while a sticky /tmp above it cannot be used for that."""
    elsewhere = f"set {STATE_DIR_ENV} to a directory of your own"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnsafeStateDir(
            f"state directory {path} is a symbolic link to nothing", hint=f"remove the link, or {elsewhere}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateDir(f"state path {path} is not a directory", hint=f"move it away, or {elsewhere}")
    uid = os.geteuid()
    if st.st_uid != uid:
        raise UnsafeStateDir(
            f"state directory {path} is owned by {_user(st.st_uid)}, not by {_user(uid)} who runs vkp:"
            " its owner could replace the cluster's keys",
            hint=f"if it is yours, `chown -R {_user_name(uid)} {path}`; otherwise {elsewhere}",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        bits = ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "world"))
        who = " and ".join(w for bit, w in bits if st.st_mode & bit)
        raise UnsafeStateDir(
            f"state directory {path} is {who}-writable (mode {stat.S_IMODE(st.st_mode):04o}):"
            " others could replace the cluster's keys",
            hint=f"`chmod go-w {path}`, or {elsewhere}",
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    name = _user_name(uid)
    return f"uid {uid}" if name == str(uid) else f"{name} (uid {uid})"


def check_name(kind: str, name: str) -> str:
    """name, if it is one DNS label (so it is safe as a file name); SpecError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(
            [(kind, f"must be one DNS label (lowercase letters, digits, '-', at most 63); got {name!r}")]
        )
    return name


def _new_ed25519(comment: str) -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {comment}"


@dataclass(frozen=True)
class NodeRecord:
    """A node vkp created: its plan identity and what vCenter assigned (None until known)."""

    name: str
    role: str
    address: str | None = None
    esxi_host: str | None = None
    moid: str | None = None
    instance_uuid: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class PhaseRecord:
    name: str
    status: PhaseStatus
    seconds: float | None
    detail: str | None
    updated_at: float


class ClusterState:
    """One cluster's state directory. Safe to share between threads of one process; writes from
    several processes are serialized with a lock file."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._lock = threading.RLock()
        data = self._read()
        self.cluster_id: str = data["cluster_id"]

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def create_or_load(cls, name: str, *, home: Path | None = None) -> ClusterState:
        """The cluster's state, created (with a new cluster id) on first use and kept forever."""
        check_name("name", name)
        root = private_dir(home or state_home())
        path = private_dir(root / name)
        state_file = path / "state.json"
        with file_lock(path):
            if not state_file.exists():
                data = {
                    "version": STATE_VERSION,
                    "name": name,
                    "cluster_id": str(uuid.uuid4()),
                    "created_at": time.time(),
                    "nodes": {},
                    "phases": {},
                }
                atomic_write(state_file, json.dumps(data, indent=2) + "\n", 0o644)
        return cls(name, path)

    @classmethod
    def load(cls, name: str, *, home: Path | None = None) -> ClusterState:
        """An existing cluster's state; NotFound when there is none."""
        check_name("name", name)
        path = (home or state_home()) / name
        if not (path / "state.json").is_file():
            hint = f"create the cluster first, or check {STATE_DIR_ENV}"
            raise NotFound("cluster state", str(path), hint=hint)
        check_private_dir(path.parent)
        check_private_dir(path)
        return cls(name, path)

    @staticmethod
    def exists(name: str, *, home: Path | None = None) -> bool:
        check_name("name", name)
        return ((home or state_home()) / name / "state.json").is_file()

    @staticmethod
    def list_all(*, home: Path | None = None) -> list[str]:
        """Names of the clusters that have state, sorted."""
        root = home or state_home()
        if not root.is_dir():
            return []
        return sorted(
            p.name for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / "state.json").is_file()
        )

    def remove(self) -> None:
        """Delete the whole state directory (delete-cluster's last step). Missing is fine."""
        if self.path.name != self.name or not _NAME.fullmatch(self.path.name):
            raise ProvisionerError(f"refusing to remove {self.path}: not a cluster state directory")
        if self.path.exists():
            shutil.rmtree(self.path)

    # -- state.json -------------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.path / "state.json"

    def _read(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            raise NotFound("cluster state", str(self.path)) from None
        except json.JSONDecodeError as exc:
            raise ProvisionerError(
                f"{self._state_file} is not valid JSON: {exc}",
                hint="it is written atomically, so this is damage from outside vkp; restore or remove it",
            ) from exc
        if data.get("version") != STATE_VERSION:
            raise ProvisionerError(f"{self._state_file}: unsupported state version {data.get('version')!r}")
        return data

    def _mutate(self, change: Callable[[dict[str, Any]], None]) -> None:
        # Node clones run in parallel threads, and each saves its node: read-modify-write under
        # both locks so no update is lost.
        with self._lock, file_lock(self.path):
            data = self._read()
            change(data)
            atomic_write(self._state_file, json.dumps(data, indent=2) + "\n", 0o644)

    @property
    def nodes(self) -> dict[str, NodeRecord]:
        return {n: NodeRecord.from_dict(d) for n, d in self._read()["nodes"].items()}

    def save_node(self, record: NodeRecord) -> None:
        """Insert or replace the node's record."""
        check_name("node name", record.name)

        def change(data: dict[str, Any]) -> None:
            data["nodes"][record.name] = asdict(record)

        self._mutate(change)

    def remove_node(self, name: str) -> None:
        """Forget a node and its host key. Missing is fine."""

        def change(data: dict[str, Any]) -> None:
            data["nodes"].pop(name, None)

        self._mutate(change)
        for p in (self._hostkey_dir / name, self._hostkey_dir / f"{name}.pub"):
            p.unlink(missing_ok=True)

    def record_phase(
        self, name: str, status: PhaseStatus, seconds: float | None = None, detail: str | None = None
    ) -> None:
        """Record where a phase stands, so a re-run can resume and timings can be reported."""
        if status not in PHASE_STATUSES:
            raise ValueError(f"phase status must be one of {PHASE_STATUSES}, got {status!r}")

        def change(data: dict[str, Any]) -> None:
            data["phases"][name] = {
                "status": status,
                "seconds": seconds,
                "detail": detail,
                "updated_at": time.time(),
            }

        self._mutate(change)

    def phases(self) -> list[PhaseRecord]:
        """Phases in the order they were first recorded (the flow's order, also on a re-run)."""
        return [PhaseRecord(name=n, **d) for n, d in self._read()["phases"].items()]

    def phase(self, name: str) -> PhaseRecord | None:
        """One phase's record, or None if it never ran (a resuming run skips the done ones)."""
        d = self._read()["phases"].get(name)
        return PhaseRecord(name=name, **d) if d else None

    # -- repairs (vkp repair: provisioner/day2/repair.py) -------------------------------------

    def repair(self, node: str) -> dict[str, Any] | None:
        """The record of an unfinished repair of node (what it found, which stages it did), or
        None when no repair of it is under way."""
        record = self._read().get("repairs", {}).get(node)
        return dict(record) if isinstance(record, dict) else None

    def update_repair(self, node: str, **fields_: Any) -> dict[str, Any]:
        """Start or update node's repair record with fields (JSON values); the record as saved."""
        check_name("node name", node)
        saved: dict[str, Any] = {}

        def change(data: dict[str, Any]) -> None:
            record = data.setdefault("repairs", {}).setdefault(node, {"started_at": time.time()})
            record.update(fields_)
            saved.update(record)

        self._mutate(change)
        return saved

    def end_repair(self, node: str) -> None:
        """Forget node's repair record (the repair finished). Missing is fine."""

        def change(data: dict[str, Any]) -> None:
            data.get("repairs", {}).pop(node, None)

        self._mutate(change)

    def etcd_rejoined(self) -> set[str]:
        """The etcd members that joined the running cluster (a repair) instead of forming it:
        their configuration says initial-cluster-state existing from then on."""
        return set(self._read().get("etcd_rejoined", []))

    def mark_etcd_rejoined(self, node: str) -> None:
        def change(data: dict[str, Any]) -> None:
            data["etcd_rejoined"] = sorted({*data.get("etcd_rejoined", []), node})

        self._mutate(change)

    # -- playbook progress (the runner's resume records) ---------------------------------------

    def progress_path(self, playbook: str) -> Path:
        """playbooks/<playbook>.json: where a playbook's runs keep what they completed."""
        check_name("playbook name", playbook)
        return self.path / PROGRESS_DIR / f"{playbook}.json"

    def legacy_progress_path(self, playbook: str) -> Path | None:
        """Where an older vkp kept this playbook's record, if it kept one (see LEGACY_PROGRESS)."""
        old = LEGACY_PROGRESS.get(playbook)
        return self.path / old if old else None

    # -- spec -------------------------------------------------------------------------------

    def save_spec(self, spec: dict[str, Any]) -> None:
        """Keep the spec the cluster was created from (delete and re-run read it back)."""
        leaked = _secret_paths(spec)
        if leaked:
            raise ProvisionerError(
                f"refusing to store a spec with credentials in it ({', '.join(leaked)})",
                hint="the spec names the environment variables that hold credentials; it never holds them",
            )
        atomic_write(self.path / "spec.yaml", yaml.safe_dump(spec, sort_keys=False), 0o644)

    def has_spec(self) -> bool:
        """Whether a spec was saved (a run got that far); load_spec_dict raises NotFound otherwise."""
        return (self.path / "spec.yaml").is_file()

    def load_spec_dict(self) -> dict[str, Any]:
        path = self.path / "spec.yaml"
        if not path.is_file():
            raise NotFound("saved spec", str(path))
        data = yaml.safe_load(path.read_text())
        return data if isinstance(data, dict) else {}

    # -- SSH keys ---------------------------------------------------------------------------

    @property
    def _ssh_dir(self) -> Path:
        return private_dir(self.path / "ssh")

    @property
    def _hostkey_dir(self) -> Path:
        return private_dir(self.path / "hostkeys")

    def ssh_keypair(self) -> tuple[Path, str]:
        """(private key path, public OpenSSH line) of the cluster's login key; generated once."""
        return self._keypair(self._ssh_dir / "id_ed25519", f"vkp-{self.name}")

    def host_key(self, node_name: str) -> tuple[str, str]:
        """(private OpenSSH PEM, public OpenSSH line) of a node's SSH host key; generated once.

        Generated here rather than on the VM so it can be handed over through cloud-init and
        pinned before the first connection: there is never a moment of trust-on-first-use.
        """
        check_name("node name", node_name)
        path, public = self._keypair(self._hostkey_dir / node_name, f"vkp-{self.name}-{node_name}")
        return path.read_text(), public

    def _keypair(self, private_path: Path, comment: str) -> tuple[Path, str]:
        public_path = private_path.with_name(private_path.name + ".pub")
        with self._lock, file_lock(self.path):
            if not private_path.exists():
                private, public = _new_ed25519(comment)
                # Public first: an orphaned .pub (crash in between) is overwritten next time,
                # while an orphaned private key would need its .pub derived by hand.
                atomic_write(public_path, public + "\n", 0o644)
                atomic_write(private_path, private, 0o600)
            elif not public_path.exists():
                raise ProvisionerError(
                    f"{public_path} is missing while its private key exists",
                    hint="restore it, or derive it with `ssh-keygen -y -f` from the private key",
                )
        return private_path, public_path.read_text().strip()

    @property
    def known_hosts_path(self) -> Path:
        return self._ssh_dir / "known_hosts"

    def write_known_hosts(self, nodes: list[tuple[str, str | None]]) -> Path:
        """Write known_hosts pinning each node's stored host key under its name and address.

        Raises NotFound for a node without a stored host key: generating one now would pin a
        key the VM never received.
        """
        lines = []
        for name, address in nodes:
            check_name("node name", name)
            pub = self._hostkey_dir / f"{name}.pub"
            if not pub.is_file():
                raise NotFound("host key of node", name, hint="host keys are made before the VM is cloned")
            keytype, key = pub.read_text().split()[:2]
            patterns = ",".join(p for p in (name, address) if p)
            lines.append(f"{patterns} {keytype} {key}\n")
        atomic_write(self.known_hosts_path, "".join(lines), 0o644)
        return self.known_hosts_path

    # -- inventory --------------------------------------------------------------------------

    def write_hosts_inventory(self, *, ssh_user: str | None = None, ssh_port: int | None = None) -> Path:
        """Write hosts.yaml (Ansible style) from the recorded nodes; user and port default to the
        saved spec's ssh section (or vkp / 22)."""
        saved_ssh: dict[str, Any] = {}
        if (self.path / "spec.yaml").is_file():
            saved_ssh = self.load_spec_dict().get("ssh") or {}
        user = ssh_user or saved_ssh.get("user") or "vkp"
        port = int(ssh_port or saved_ssh.get("port") or 22)
        key_path, _ = self.ssh_keypair()
        # Ansible must check against the pinned keys too, never accept-new.
        common_args = f"-o UserKnownHostsFile={self.known_hosts_path} -o StrictHostKeyChecking=yes"
        groups: dict[str, dict[str, Any]] = {role: {"hosts": {}} for role in ("etcd", "master", "worker")}
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            host: dict[str, Any] = {
                "ansible_host": node.address or node.name,
                "ansible_user": user,
                "ansible_ssh_private_key_file": str(key_path),
                "ansible_ssh_common_args": common_args,
            }
            if port != 22:
                host["ansible_port"] = port
            groups.setdefault(node.role, {"hosts": {}})["hosts"][node.name] = host
        doc = {"all": {"children": groups}}
        path = self.path / "hosts.yaml"
        header = f"# Generated by vkp for cluster {self.name} ({self.cluster_id}); changes are overwritten\n"
        atomic_write(path, header + yaml.safe_dump(doc, sort_keys=False), 0o644)
        return path


@contextlib.contextmanager
def file_lock(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _secret_paths(value: Any, path: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            p = f"{path}.{k}" if path else str(k)
            if str(k).lower() in _SECRET_KEYS and v not in (None, ""):
                out.append(p)
            else:
                out.extend(_secret_paths(v, p))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_secret_paths(v, f"{path}[{i}]"))
    return out
