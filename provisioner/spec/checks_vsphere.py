"""Checks of the vsphere section: which vCenter, how its certificate is verified, which
variables hold the credentials, and the names of the inventory objects a cluster uses
(vsphere_name_problem, which checks.host_name_problem applies to ESXi host names too)."""

from __future__ import annotations

import re

from provisioner.spec.schema import ENV_FOR, LIMITS, VSphereSpec
from provisioner.spec.values import _bad_character, _ip, show

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_THUMB = re.compile(r"([0-9A-F]{2}:){31}[0-9A-F]{2}")
_REQUIRED_VSPHERE = ("server", "datacenter", "cluster", "datastore", "network", "template")
# Settings that name a vSphere inventory object; each is a name or an inventory path.
_VSPHERE_OBJECT_FIELDS = (
    "datacenter",
    "cluster",
    "datastore",
    "network",
    "template",
    "resource_pool",
    "folder",
)
# vCenter's address once vsphere.server's scheme, port and path are taken off (or an IP address).
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")


def vsphere_name_problem(value: str, *, path: bool) -> str | None:
    """Why value cannot name a vSphere object, or None. path: a name or an inventory path
    ("templates/debian-12", "/DC0/host/C0"), where '/' separates levels and each level must be
    a valid name (a '/' inside a name is written %2f, as vSphere does); otherwise one name."""
    limit = LIMITS["inventory_name"]
    bad = _bad_character(value)
    if bad:
        return f"{bad}; use the name exactly as vCenter shows it"
    if path:
        levels = value.strip("/").split("/")
        if any(not level for level in levels):
            return f"has an empty level ('//') in {show(value)}; separate levels with one '/'"
    else:
        if "/" in value:
            return f"{show(value)} holds '/', which no name may; write a '/' inside a name as %2f"
        levels = [value]
    for level in levels:
        if len(level) > limit.maximum:
            what = "a level of the path" if path else "the name"
            return (
                f"{what} {show(level)} has {len(level)} characters; {limit.why}, so shorten it to "
                f"the name vCenter shows"
            )
    return None


def _check_vsphere(vs: VSphereSpec) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    for k in _REQUIRED_VSPHERE:
        if not getattr(vs, k):
            p.append(
                (f"vsphere.{k}", f"required: set vsphere.{k} in the spec or export {ENV_FOR[f'vsphere.{k}']}")
            )
    if not 1 <= vs.port <= 65535:
        p.append(("vsphere.port", f"must be a TCP port (1-65535); got {show(vs.port)}"))
    if vs.server and not (_HOST_NAME.fullmatch(vs.server) or _ip(vs.server) is not None):
        p.append(
            (
                "vsphere.server",
                f"must be vCenter's host name or IP address (host:port and https://host/sdk work too); "
                f"got {show(vs.server)}",
            )
        )
    for k in _VSPHERE_OBJECT_FIELDS:
        value = getattr(vs, k)
        if value and (why := vsphere_name_problem(value, path=True)) is not None:
            p.append((f"vsphere.{k}", why))
    tls = vs.tls
    if tls.insecure and (tls.thumbprint or tls.ca_file):
        p.append(
            (
                "vsphere.tls.insecure",
                "contradicts vsphere.tls.thumbprint/ca_file; remove insecure and the certificate is verified",
            )
        )
    elif not (tls.insecure or tls.thumbprint or tls.ca_file):
        p.append(
            (
                "vsphere.tls",
                "say how to verify vCenter's certificate: thumbprint (SHA-256; VKP_VSPHERE_THUMBPRINT), "
                "ca_file (VKP_VSPHERE_CA_FILE), or insecure: true (VKP_VSPHERE_INSECURE=1) to skip it",
            )
        )
    if tls.thumbprint and not _THUMB.fullmatch(tls.thumbprint):
        h = re.sub(r"[\s:]", "", tls.thumbprint)
        sha1 = " (that looks like a SHA-1 thumbprint)" if len(h) == 40 else ""
        p.append(
            (
                "vsphere.tls.thumbprint",
                f"must be a SHA-256 fingerprint, 32 hex bytes{sha1}; get it with `openssl s_client -connect "
                f"{vs.server or 'VCENTER'}:{vs.port} </dev/null | openssl x509 -noout -fingerprint -sha256`",
            )
        )
    cred = vs.credentials
    for k in ("user_env", "password_env"):
        v = getattr(cred, k)
        if not _ENV_NAME.fullmatch(v):
            p.append(
                (
                    f"vsphere.credentials.{k}",
                    f"must name an environment variable (e.g. VKP_VSPHERE_USER); got {show(v)}",
                )
            )
    if cred.user_env == cred.password_env:
        # One variable for both would print the password wherever the user name is shown.
        p.append(
            (
                "vsphere.credentials.password_env",
                f"is the same variable as user_env ({show(cred.user_env)}), so the password would be "
                "shown as the user name; name two different variables",
            )
        )
    return p
