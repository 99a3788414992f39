"""The cluster's admin kubeconfig, built on this machine from vkp's own PKI.

vkp issues the admin client certificate itself (pki.ensure_admin: CN kubernetes-admin,
O system:masters, signed by the cluster CA), so the kubeconfig exists as soon as the PKI does,
before the API server is up; it never has to be fetched from a master.

    <state>/admin.conf        0600, cluster, user and context named after the cluster

merge_kubeconfig puts the same cluster, user and context into a user's kubeconfig, the way
`az aks get-credentials` and `gcloud container clusters get-credentials` do:

- every other entry and every top-level key vkp does not know is kept;
- the current context becomes the cluster's (switch=False keeps the one there is, and sets it
  only when the file has none);
- an entry of the same name that differs is a conflict: vkp changes nothing and says which
  entries, unless overwrite=True replaces them; an identical entry is no conflict, so a re-run
  changes nothing;
- the read-modify-write holds `<file>.lock`, the lock file kubectl's client-go takes around its
  own writes (created exclusively, removed afterwards), so neither vkp runs nor `kubectl config`
  lose each other's entries;
- the file is written atomically (temporary file and rename) with mode 0600: it holds a
  private key.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import yaml

from provisioner.bootstrap.pki import PKIError, ensure_admin
from provisioner.errors import Busy, ExitCode, ProvisionerError
from provisioner.plan import make_plan
from provisioner.spec import PKISpec, spec_from_dict
from provisioner.state import ClusterState, atomic_write

ADMIN_CONF = "admin.conf"
# How long a merge waits for another writer's `<file>.lock`. kubectl holds it for milliseconds;
# a lock still there after this was most likely left by a killed process.
LOCK_TIMEOUT = 10.0
_KINDS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))


class KubeconfigConflict(ProvisionerError):
    """The kubeconfig already holds differing entries of the names vkp would write.

    Exit code 2 (usage): nothing is wrong with the cluster, its spec or the file; the command
    line did not say what to do with the existing entries, and a flag (--overwrite) or another
    target (--file) is the fix, as with click's own usage errors. The spec code (3) would send
    the user to a cluster spec that is fine.
    """

    exit_code = ExitCode.USAGE

    def __init__(self, path: Path, conflicts: list[str], context: str) -> None:
        self.path, self.conflicts = path, conflicts
        super().__init__(
            f"{path} already has {_join(conflicts)}, different from what vkp would write; "
            "vkp changed nothing",
            hint="replace them with --overwrite (see them first: kubectl config view --kubeconfig "
            f"{path} --minify --context {context}), or write elsewhere with --file PATH",
        )


@dataclass(frozen=True)
class MergeResult:
    changed: bool  # the file was written
    switched: bool  # current-context is now the cluster's and was not before
    previous_context: str | None  # current-context before the merge
    replaced: tuple[str, ...]  # differing entries replaced (overwrite=True), e.g. "cluster 'kc'"


@dataclass(frozen=True)
class Names:
    cluster: str
    user: str
    context: str

    @classmethod
    def of(cls, cluster: str) -> Names:
        return cls(cluster=cluster, user=f"{cluster}-admin", context=cluster)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build_kubeconfig(
    cluster: str, server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> dict[str, Any]:
    """A kubeconfig with everything embedded (no file references, so it can be copied). Pure."""
    n = Names.of(cluster)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": n.cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [
            {
                "name": n.user,
                "user": {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)},
            }
        ],
        "contexts": [{"name": n.context, "context": {"cluster": n.cluster, "user": n.user}}],
        "current-context": n.context,
        "preferences": {},
    }


def dump(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)


def _entries(config: Mapping[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ProvisionerError(
            f"{path}: {key} is not a list of named entries; vkp leaves the file as it is",
            hint="fix the file (`kubectl config view` shows what kubectl makes of it), or use "
            "`vkp get-credentials NAME` without --merge and KUBECONFIG=<the path it prints>",
        )
    return list(value)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _difference(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs, in words and without key material (the message may land in a CI log)."""
    before, after = old.get(kind), new.get(kind)
    if not isinstance(before, dict) or not isinstance(after, dict):
        return "has no settings" if not before else "is not a mapping"
    if kind == "cluster" and before.get("server") != after.get("server"):
        return f"server {before.get('server')}, vkp's is {after.get('server')}"
    if kind == "context" and (before.get("cluster"), before.get("user")) != (after["cluster"], after["user"]):
        return (
            f"cluster {before.get('cluster')!r} and user {before.get('user')!r}, vkp's are "
            f"{after['cluster']!r} and {after['user']!r}"
        )
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return "different " + ", ".join(keys)


def conflicts(existing: Mapping[str, Any], new: Mapping[str, Any], path: Path) -> list[str]:
    """new's entries that existing holds under the same name with other settings. Pure.

    An entry equal to vkp's is no conflict: re-running get-credentials is harmless.
    """
    found = []
    for key, kind in _KINDS:
        for entry in new[key]:
            for old in _entries(existing, key, path):
                if old.get("name") == entry["name"] and old != entry:
                    found.append(f"{kind} {entry['name']!r} ({_difference(kind, old, entry)})")
                    break
    return found


def merge(
    existing: Mapping[str, Any], new: Mapping[str, Any], path: Path, *, switch: bool = True
) -> dict[str, Any]:
    """existing with new's clusters, users and contexts put in by name, replacing same-name
    entries; current-context becomes new's (with switch=False only when existing has none).
    Every other key of existing is kept, in its place. Pure."""
    out = dict(existing)
    out.setdefault("apiVersion", "v1")
    out.setdefault("kind", "Config")
    for key, _ in _KINDS:
        entries = _entries(existing, key, path)
        for entry in new[key]:
            for i, old in enumerate(entries):
                if old.get("name") == entry["name"]:
                    entries[i] = entry
                    break
            else:
                entries.append(entry)
        out[key] = entries
    if switch or not existing.get("current-context"):
        out["current-context"] = new["current-context"]
    return out


def default_kubeconfig_path(env: Mapping[str, str]) -> Path:
    """$KUBECONFIG's first file (kubectl writes new entries there too), else ~/.kube/config."""
    for part in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if part.strip():
            return Path(part.strip()).expanduser()
    return Path.home() / ".kube" / "config"


def _make_parents(directory: Path) -> None:
    """Create directory and its missing parents, each 0700 (mkdir -p would leave them 0755)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another merge made it meanwhile
            d.mkdir(mode=0o700)


def lock_path(path: Path) -> Path:
    """The lock kubectl takes: `<file>.lock` next to the file as named (not where a symlink
    points), created exclusively and removed when done."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    lock = lock_path(path)
    # A marker file (O_EXCL), not flock: that is client-go's protocol, and a lock file left in
    # place would make every later `kubectl config` fail with "file exists".
    soft = filelock.SoftFileLock(str(lock), timeout=timeout)
    try:
        soft.acquire()
    except filelock.Timeout:
        raise Busy(
            f"{lock} has been held for {timeout:g}s: another kubectl or vkp is writing {path}",
            hint=f"run the command again; if nothing else writes {path}, the lock was left by a killed "
            f"process: remove {lock}",
        ) from None
    try:
        yield
    finally:
        soft.release()


def merge_kubeconfig(
    config: Mapping[str, Any],
    path: Path,
    *,
    switch: bool = True,
    overwrite: bool = False,
    lock_timeout: float = LOCK_TIMEOUT,
) -> MergeResult:
    """Merge config into the kubeconfig at path (created 0600, parents 0700, if absent).

    Raises KubeconfigConflict, leaving the file untouched, when path holds differing entries of
    the same names and overwrite is False.
    """
    if not path.parent.exists():
        _make_parents(path.parent)
    with _locked(path, lock_timeout):
        return _merge_locked(config, path, switch=switch, overwrite=overwrite)


def _merge_locked(config: Mapping[str, Any], path: Path, *, switch: bool, overwrite: bool) -> MergeResult:
    # A symlinked kubeconfig (dotfile managers) stays a symlink: write where it points.
    target = path.resolve() if path.is_symlink() else path
    existing: dict[str, Any] = {}
    before = ""
    if target.exists():
        before = target.read_text()
        try:
            loaded = yaml.safe_load(before)
        except yaml.YAMLError as exc:
            raise ProvisionerError(
                f"{target} is not valid YAML ({exc}); vkp leaves it as it is",
                hint="fix it, or write the credentials elsewhere: KUBECONFIG=/other/file vkp get-credentials "
                "NAME --merge",
            ) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ProvisionerError(f"{target} is not a kubeconfig (a YAML mapping); vkp leaves it as it is")
        existing = loaded or {}
    found = conflicts(existing, config, target)
    if found and not overwrite:
        raise KubeconfigConflict(target, found, config["current-context"])
    previous = existing.get("current-context") or None
    merged_config = merge(existing, config, target, switch=switch)
    current = merged_config.get("current-context")
    result = MergeResult(
        changed=True,
        switched=current == config["current-context"] and previous != current,
        previous_context=previous,
        replaced=tuple(found),
    )
    merged = dump(merged_config)
    # Unchanged content is not rewritten (its inode and mtime stay), unless only its mode is wrong.
    if merged == before and (target.stat().st_mode & 0o777) == 0o600:
        return dataclasses.replace(result, changed=False)
    if not target.parent.exists():
        _make_parents(target.parent)
    atomic_write(target, merged, 0o600)
    return result


# -- get-credentials --------------------------------------------------------------------------


def admin_kubeconfig(state: ClusterState) -> tuple[dict[str, Any], str]:
    """(the admin kubeconfig, the API server URL) from the cluster's saved spec and PKI."""
    spec = spec_from_dict(state.load_spec_dict())
    server = make_plan(spec).api_endpoint.url
    pki_spec = spec.pki if spec.pki else PKISpec()
    try:
        pki = ensure_admin(state, pki_spec)
    except PKIError as exc:
        raise ProvisionerError(exc.message, hint=exc.hint) from None
    config = build_kubeconfig(
        state.name, server, pki.cert_pem("ca"), pki.cert_pem("admin"), pki.key_pem("admin")
    )
    return config, server


def get_credentials(
    name: str, *, merge_into: Path | None = None, switch: bool = True, overwrite: bool = False
) -> dict[str, Any]:
    """`vkp get-credentials`: write <state>/admin.conf (0600), and merge it into merge_into."""
    state = ClusterState.load(name)
    config, server = admin_kubeconfig(state)
    path = state.path / ADMIN_CONF
    text = dump(config)
    current = ""
    with contextlib.suppress(FileNotFoundError):
        current = path.read_text()
    if current != text or (path.stat().st_mode & 0o777) != 0o600:
        atomic_write(path, text, 0o600)
    result: dict[str, Any] = {
        "cluster": name,
        "server": server,
        "path": str(path),
        "context": Names.of(name).context,
        "user": Names.of(name).user,
        "warnings": [],
    }
    if merge_into is not None:
        merged = merge_kubeconfig(config, merge_into, switch=switch, overwrite=overwrite)
        result["merged_into"] = str(merge_into)
        result["changed"] = merged.changed
        result["switched"] = merged.switched
        result["previous_context"] = merged.previous_context
        result["replaced"] = list(merged.replaced)
    phase = state.phase("kubernetes")
    if phase is None or phase.status != "done":
        status = "has not run" if phase is None else f"is {phase.status}"
        result["warnings"].append(
            f"the kubernetes phase of cluster {name} {status}: the API at {server} does not answer yet; "
            "these credentials work once `vkp create-cluster` has finished it"
        )
    return result
