"""Hand a cluster's local state to another machine as one passphrase-encrypted file.

The state directory holds what only its machine can do for the cluster: the SSH login key,
the pinned host keys, the PKI with its CAs, the admin kubeconfig, the saved spec. CI creates
a cluster, exports it; a person imports it and can ssh, get credentials, resize or delete.

File format (version 1), all of it authenticated:

    magic "VKPSTATE" (8) | version (1) | scrypt log2(n), r, p (1 each) | salt (16) | nonce (12)
    | AES-256-GCM ciphertext of zlib(JSON), whose tag covers the header above

The key is derived from the passphrase with scrypt (cryptography's, the parameters in the
header so they can grow); AES-GCM is cryptography's AEAD. A wrong passphrase, a changed byte
or a cut file fail the tag check alike, and nothing is written. The JSON holds the cluster's
name and id, where and when it was exported, and every file (relative path, base64), except
logs/ (this machine's history) and lock and temporary files.

Import unpacks into a private temporary directory next to the state (files 0600, directories
0700) and renames it into place, so the cluster's state is there whole or not at all.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from provisioner import runlock
from provisioner.errors import ExitCode, ProvisionerError, SettingsMissing
from provisioner.output import current_output, structured
from provisioner.state import STATE_DIR_ENV, ClusterState, check_name, private_dir, state_home

PASSPHRASE_ENV = "VKP_STATE_PASSPHRASE"
MAGIC = b"VKPSTATE"
FORMAT_VERSION = 1
SUFFIX = ".vkpstate"
# scrypt at n=2**17, r=8: 128 MiB and about half a second per try, so guessing is slow.
SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P = 17, 8, 1
# What an import accepts from a header: a file must not make this machine spend gigabytes.
_MAX_LOG2N, _MAX_R, _MAX_P = 20, 16, 4
_HEADER = struct.Struct(">8sBBBB16s12s")
_TAG = 16
MIN_PASSPHRASE = 12
# A path inside the state: plain names, no "..", nothing hidden (locks, temporary files).
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=-]{0,254}")
# Snapshots (vkp etcd snapshot) are as large as etcd's database: backups, not state.
SKIPPED_DIRS = ("logs", "snapshots")

Log = Callable[[str], None]


class HandoverError(ProvisionerError):
    """A state file that cannot be read: not one, a newer format, a wrong passphrase, or
    changed or cut short since it was written."""

    exit_code = ExitCode.HANDOVER


class ClusterExists(ProvisionerError):
    """Import over a cluster that already has state here. Exit 2, as a kubeconfig conflict:
    the command line did not say to replace it (--overwrite)."""

    exit_code = ExitCode.USAGE


# -- the passphrase -------------------------------------------------------------------------


def passphrase(env: Mapping[str, str] | None = None, *, confirm: bool) -> str:
    """VKP_STATE_PASSPHRASE, else asked on the terminal without echo (twice when confirm).
    Never an argument: argv is visible to every user of the machine."""
    env = os.environ if env is None else env
    value = env.get(PASSPHRASE_ENV)
    if value:
        return _long_enough(value) if confirm else value
    output = current_output()
    if not sys.stdin.isatty() or (output is not None and structured(output)):
        why = f"with -o {output} vkp does not prompt" if sys.stdin.isatty() else "no terminal to ask on"
        raise SettingsMissing(
            [(PASSPHRASE_ENV, f"not set ({why}): export the passphrase that protects the state file")],
            hint=f"read it without echo: `read -rs {PASSPHRASE_ENV} && export {PASSPHRASE_ENV}`",
        )
    first = getpass.getpass("passphrase for the state file: ", stream=sys.stderr)
    if confirm:
        _long_enough(first)
        if getpass.getpass("the same passphrase again: ", stream=sys.stderr) != first:
            raise HandoverError("the two passphrases differ; nothing was written", hint="run it again")
    if not first:
        raise HandoverError("an empty passphrase", hint=f"type it, or set {PASSPHRASE_ENV}")
    return first


def _long_enough(secret: str) -> str:
    """An export's passphrase: the file holds the cluster's CAs and keys, so not a short one."""
    if len(secret) < MIN_PASSPHRASE:
        raise HandoverError(
            f"the passphrase is {len(secret)} characters long; an export needs at least {MIN_PASSPHRASE}",
            hint="the file holds the cluster's CA and keys: use a long passphrase (several words)",
        )
    return secret


# -- encryption -----------------------------------------------------------------------------


def _key(secret: str, salt: bytes, log2n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**log2n, r=r, p=p).derive(secret.encode())


def seal(payload: dict[str, Any], secret: str) -> bytes:
    """The state file's bytes for payload."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P, salt, nonce)
    body = zlib.compress(json.dumps(payload).encode(), 9)
    key = _key(secret, salt, SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P)
    return header + AESGCM(key).encrypt(nonce, body, header)


def unseal(data: bytes, secret: str, source: str) -> dict[str, Any]:
    """The payload of a state file; HandoverError when it is not one or does not verify."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise HandoverError(
            f"{source} is not a vkp state file (it does not start with {MAGIC.decode()})",
            hint="give the file `vkp state export` wrote",
        )
    if len(data) < _HEADER.size + _TAG:
        raise HandoverError(
            f"{source} is cut short ({len(data)} bytes; even an empty state takes more)",
            hint="copy it again from the machine that exported it",
        )
    _magic, version, log2n, r, p, salt, nonce = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise HandoverError(
            f"{source} is a version {version} state file; this vkp reads version {FORMAT_VERSION}",
            hint="import it with the vkp version that exported it, or a newer one",
        )
    if not (1 <= log2n <= _MAX_LOG2N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise HandoverError(
            f"{source}: key derivation parameters out of range (n=2^{log2n}, r={r}, p={p})",
            hint="the header was changed: copy the file again from the machine that exported it",
        )
    header = data[: _HEADER.size]
    try:
        body = AESGCM(_key(secret, salt, log2n, r, p)).decrypt(nonce, data[_HEADER.size :], header)
    except InvalidTag:
        raise HandoverError(
            f"{source} does not open with this passphrase: the passphrase is wrong, or the file "
            "was changed or cut short since it was exported; nothing was written",
            hint=f"check {PASSPHRASE_ENV} (or what you typed); if it is right, copy the file again",
        ) from None
    try:
        payload = json.loads(zlib.decompress(body))
    except (zlib.error, ValueError) as exc:
        # Authenticated, so written like this by a vkp: a bug, not damage on the way.
        raise HandoverError(f"{source}: its content does not unpack ({exc})") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("files"), dict):
        raise HandoverError(f"{source}: its content is not a cluster's state")
    return payload


# -- export ---------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file of the state directory by relative path, but logs/, hidden files
    (the lock file, an interrupted write's temporary) and anything not a plain file."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(
            d for d in dirnames if _PART.fullmatch(d) and not (rel_dir == Path(".") and d in SKIPPED_DIRS)
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not _PART.fullmatch(name) or path.is_symlink() or not path.is_file():
                continue
            out[(rel_dir / name).as_posix()] = path.read_bytes()
    return out


def export_state(
    name: str, out: Path | None, log: Log, *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Write cluster NAME's state to out (default ./NAME.vkpstate), encrypted; never replaces
    a file. Holds the cluster's run lock, so no run is halfway through changing the state."""
    check_name("name", name)
    target = out if out is not None else Path(f"{name}{SUFFIX}")
    if target.exists() or target.is_symlink():
        raise ClusterExists(
            f"{target} already exists; vkp does not replace it",
            hint="remove it, or name another file with --file",
        )
    ClusterState.load(name)  # NotFound before anyone is asked for a passphrase
    secret = passphrase(env, confirm=True)
    with runlock.hold(name, runlock.command_line(), log=log):
        state = ClusterState.load(name)
        files = _files(state.path)
        payload = {
            "format": FORMAT_VERSION,
            "cluster": name,
            "cluster_id": state.cluster_id,
            "exported_at": time.time(),
            "exported_from": socket.gethostname(),
            "files": {p: base64.b64encode(b).decode() for p, b in files.items()},
        }
        data = seal(payload, secret)
    _write_new(target, data)
    log(f"cluster {name}: {len(files)} file(s) of {state.path} written to {target}, encrypted")
    return {
        "cluster": name,
        "cluster_id": state.cluster_id,
        "file": str(target.resolve()),
        "files": sorted(files),
        "bytes": len(data),
    }


def _write_new(target: Path, data: bytes) -> None:
    """Create target 0600 with data, atomically, failing if it exists by then."""
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    except OSError as exc:
        raise HandoverError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, target)  # unlike a rename, fails if the target appeared meanwhile
    except FileExistsError:
        raise ClusterExists(f"{target} appeared meanwhile; vkp does not replace it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- import ---------------------------------------------------------------------------------


def _check_paths(files: dict[str, Any], source: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for rel, b64 in files.items():
        parts = rel.split("/")
        if not isinstance(b64, str) or not all(_PART.fullmatch(p) for p in parts) or parts[0] in SKIPPED_DIRS:
            raise HandoverError(f"{source}: refusing the path {rel!r} in it (not a state file's)")
        try:
            out[rel] = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise HandoverError(f"{source}: {rel} in it is not base64 ({exc})") from exc
    if "state.json" not in out:
        raise HandoverError(f"{source}: it holds no state.json, so no cluster")
    return out


def _unpack(files: dict[str, bytes], into: Path) -> None:
    for rel, content in sorted(files.items()):
        path = into / rel
        for parent in reversed(path.relative_to(into).parents[:-1]):
            d = into / parent
            if not d.is_dir():
                d.mkdir(mode=0o700)
                os.chmod(d, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())


def import_state(
    source: Path, log: Log, *, overwrite: bool = False, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Unpack a state file into this machine's state home as the cluster it holds.

    Refuses (exit 2) a cluster that has state here already, unless overwrite: then the old
    state is replaced whole, its logs/ kept. Holds the cluster's run lock while it does.
    """
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise HandoverError(f"cannot read {source}: {exc.strerror or exc}") from exc
    secret = passphrase(env, confirm=False)
    payload = unseal(data, secret, str(source))
    name = check_name("cluster", str(payload.get("cluster")))
    files = _check_paths(payload["files"], str(source))
    try:
        cluster_id = json.loads(files["state.json"])["cluster_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise HandoverError(f"{source}: its state.json does not name a cluster id") from exc
    if cluster_id != payload.get("cluster_id"):
        raise HandoverError(
            f"{source}: its state.json is of cluster id {cluster_id}, not {payload.get('cluster_id')}"
        )

    home = private_dir(state_home())
    target = home / name
    with runlock.hold(name, runlock.command_line(), log=log):
        previous = ClusterState.load(name).cluster_id if ClusterState.exists(name) else None
        if (previous is not None or target.exists()) and not overwrite:
            if previous == cluster_id:
                same = " (the same cluster id)"
            else:
                same = f" (cluster id {previous}, the file's is {cluster_id})" if previous else ""
            raise ClusterExists(
                f"cluster {name} already has state on this machine, in {target}{same}; nothing was written",
                hint="replace it with --overwrite, or import with another "
                f"{STATE_DIR_ENV} (e.g. `{STATE_DIR_ENV}=~/.vkp/other vkp state import ...`)",
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.import-", dir=home))
        try:
            _unpack(files, staging)
            if target.exists():
                aside = Path(tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=home))
                os.rename(target, aside / name)
                if (aside / name / "logs").is_dir():
                    os.rename(aside / name / "logs", staging / "logs")  # this machine's history
                os.rename(staging, target)
                shutil.rmtree(aside)
            else:
                os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        state = ClusterState.load(name)
        if "hosts.yaml" in files:
            # It names the key files by their path on the exporting machine.
            os.chmod(state.write_hosts_inventory(), 0o600)
    log(f"cluster {name} (id {cluster_id}): {len(files)} file(s) imported into {target}")
    return {
        "cluster": name,
        "cluster_id": cluster_id,
        "state_dir": str(target),
        "files": sorted(files),
        "replaced": previous,
        "exported_at": payload.get("exported_at"),
        "exported_from": payload.get("exported_from"),
    }
