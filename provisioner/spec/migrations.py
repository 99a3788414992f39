"""Rewriting a raw spec before it is read: the old spelling kubernetes.artifact_source becomes
kubernetes.artifacts.source, and relative paths (vsphere.tls.ca_file, local: artifacts, image
tarballs) are made absolute against the directory of the file that wrote them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provisioner.spec.reader import _Reader
from provisioner.spec.values import text_problem


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    _resolve_ca_file(raw, base)
    _resolve_artifact_paths(raw, base)
    _resolve_etcd_artifact(raw, base)


def _resolve_ca_file(raw: dict[str, Any], base: Path) -> None:
    # Relative to the spec, so an inventory directory can carry its CA and still be moved.
    tls = raw.get("vsphere", {}).get("tls") if isinstance(raw.get("vsphere"), dict) else None
    ca = tls.get("ca_file") if isinstance(tls, dict) else None
    if isinstance(tls, dict) and isinstance(ca, str) and (resolved := _against(base, ca.strip())):
        tls["ca_file"] = resolved


def _against(base: Path, text: str) -> str | None:
    """text made absolute against base when it is a relative path; None to leave it as written:
    absolute already, or no usable path (~nosuchuser/x, a control character), which is
    reported when the value is read or checked."""
    if not text or text_problem(text) is not None:
        return None
    try:
        p = Path(text).expanduser()
        return None if p.is_absolute() else str((base / p).resolve())
    except (RuntimeError, ValueError, OSError):
        return None


def _migrate_artifact_source(raw: dict[str, Any], r: _Reader) -> dict[str, str]:
    """kubernetes.artifact_source (before artifacts: existed) becomes kubernetes.artifacts.source.

    Done before the environment is read, so the file's value keeps winning over VKP_K8S_ARTIFACTS.
    """
    kd = raw.get("kubernetes")
    if not isinstance(kd, dict) or "artifact_source" not in kd:
        return {}
    old = kd.pop("artifact_source")
    ad = kd.get("artifacts")
    if ad is None:
        ad = kd["artifacts"] = {}
    if not isinstance(ad, dict):
        return {}  # the section's own problem is reported when it is read
    if ad.get("source") is not None:
        r.add(
            "kubernetes.artifact_source",
            "is the old name of kubernetes.artifacts.source, which is set too; keep only artifacts.source",
        )
        return {}
    ad["source"] = old
    return {"kubernetes.artifacts.source": "kubernetes.artifact_source, the old name of this field"}


def _resolve_artifact_paths(raw: dict[str, Any], base: Path) -> None:
    # Relative to the spec, like ca_file, so an inventory directory can carry its artifacts.
    kd = raw.get("kubernetes")
    ad = kd.get("artifacts") if isinstance(kd, dict) else None
    if not isinstance(ad, dict):
        return
    src = ad.get("source")
    if isinstance(src, str) and src.strip().startswith("local:"):
        rest = src.strip()[len("local:") :].strip()
        if rest and (resolved := _against(base, rest)) is not None:
            ad["source"] = f"local:{resolved}"
    tarballs = ad.get("image_tarballs")
    if isinstance(tarballs, str) and (resolved := _against(base, tarballs.strip())):
        ad["image_tarballs"] = resolved


def _resolve_etcd_artifact(raw: dict[str, Any], base: Path) -> None:
    # Relative to the spec, like kubernetes.artifacts.source.
    ed = raw.get("etcd")
    if not isinstance(ed, dict):
        return
    src = ed.get("artifact")
    if isinstance(src, str) and src.strip().startswith("local:"):
        rest = src.strip()[len("local:") :].strip()
        if rest and (resolved := _against(base, rest)) is not None:
            ed["artifact"] = f"local:{resolved}"
