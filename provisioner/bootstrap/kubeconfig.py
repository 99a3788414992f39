"""The cluster's admin kubeconfig, built on this machine from vkp's own PKI.

vkp issues the admin client certificate itself (pki.ensure_admin: CN kubernetes-admin,
O system:masters, signed by the cluster CA), so the kubeconfig exists as soon as the PKI does,
before the API server is up; it never has to be fetched from a master.

    <state>/admin.conf        0600, cluster, user and context named after the cluster

merge_kubeconfig puts the same cluster, user and context into a user's kubeconfig: entries of
that name are replaced, every other entry is kept, current-context is set only when the file
had none, and the file is written atomically with mode 0600 (it holds a private key).
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provisioner.bootstrap.pki import PKIError, ensure_admin
from provisioner.errors import ProvisionerError
from provisioner.plan import make_plan
from provisioner.spec import PKISpec, spec_from_dict
from provisioner.state import ClusterState, atomic_write

ADMIN_CONF = "admin.conf"


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


def merge(existing: Mapping[str, Any], new: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """existing with new's clusters, users and contexts put in by name. Pure."""
    out = dict(existing)
    out.setdefault("apiVersion", "v1")
    out.setdefault("kind", "Config")
    for key in ("clusters", "users", "contexts"):
        entries = _entries(existing, key, path)
        for entry in new[key]:
            for i, old in enumerate(entries):
                if old.get("name") == entry["name"]:
                    entries[i] = entry
                    break
            else:
                entries.append(entry)
        out[key] = entries
    if not existing.get("current-context"):
        out["current-context"] = new["current-context"]
    return out


def default_kubeconfig_path(env: Mapping[str, str]) -> Path:
    """$KUBECONFIG's first file (kubectl writes new entries there too), else ~/.kube/config."""
    for part in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if part.strip():
            return Path(part.strip()).expanduser()
    return Path.home() / ".kube" / "config"


def merge_kubeconfig(config: Mapping[str, Any], path: Path) -> bool:
    """Merge config into the kubeconfig at path (created 0600 if absent); True if it changed."""
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
    merged = dump(merge(existing, config, target))
    if merged == before and (target.stat().st_mode & 0o777) == 0o600:
        return False
    if not target.parent.exists():
        target.parent.mkdir(mode=0o700, parents=True)
    atomic_write(target, merged, 0o600)
    return True


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


def get_credentials(name: str, *, merge_into: Path | None = None) -> dict[str, Any]:
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
        result["merged_into"] = str(merge_into)
        result["changed"] = merge_kubeconfig(config, merge_into)
    phase = state.phase("kubernetes")
    if phase is None or phase.status != "done":
        status = "has not run" if phase is None else f"is {phase.status}"
        result["warnings"].append(
            f"the kubernetes phase of cluster {name} {status}: the API at {server} does not answer yet; "
            "these credentials work once `vkp create-cluster` has finished it"
        )
    return result
