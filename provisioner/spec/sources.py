"""Where each value comes from besides the spec file: the site defaults file (VKP_SITE_DEFAULTS),
merged under the spec, and the environment, which fills what is still unset; each records
{field path: origin} so a problem in such a value can name the file or variable behind it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provisioner.errors import SpecError
from provisioner.spec.migrations import _migrate_artifact_source, _resolve_paths
from provisioner.spec.reader import _Reader
from provisioner.spec.schema import ENV_SETTINGS, SITE_DEFAULTS_ENV
from provisioner.spec.values import key_text, parse_int, show
from provisioner.spec.yamlfile import _read_yaml


def _site_defaults(env: Mapping[str, str], r: _Reader) -> tuple[Path, dict[str, Any]] | None:
    """The file VKP_SITE_DEFAULTS names, read like a spec (relative paths against its own
    directory), or None when the variable is unset."""
    value = (env.get(SITE_DEFAULTS_ENV) or "").strip()
    if not value:
        return None
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~nosuchuser
        raise SpecError(
            [(SITE_DEFAULTS_ENV, f"{show(value)} names no home directory; give the full path")]
        ) from None
    raw = _read_yaml(path, missing=f"no such file; check {SITE_DEFAULTS_ENV}, which names it")
    if "name" in raw:
        r.add(
            f"{path}: name",
            f"a site defaults file ({SITE_DEFAULTS_ENV}) is shared by every cluster, so it cannot name "
            "one; put the name in the spec or on the command line",
        )
        del raw["name"]
    site_r = _Reader(str(path))
    _migrate_artifact_source(raw, site_r)
    r.problems += [(f"{path}: {fp}", m) for fp, m in site_r.problems]
    _resolve_paths(raw, path.parent)
    return path, raw


def _merge_under(
    raw: dict[str, Any], defaults: dict[str, Any], origin: str, prefix: str = ""
) -> dict[str, str]:
    """Fill raw from defaults where raw leaves a value unset (absent or null), section by section;
    return {field path: origin} for every value taken from defaults."""
    origins: dict[str, str] = {}
    for k, dv in defaults.items():
        kp = f"{prefix}{key_text(k)}"
        cur = raw.get(k)
        if cur is None:
            if dv is not None:
                raw[k] = dv
                origins.update(_paths(dv, kp, origin))
        elif isinstance(cur, dict) and isinstance(dv, dict):
            origins.update(_merge_under(cur, dv, origin, f"{kp}."))
    return origins


def _paths(value: Any, path: str, origin: str) -> dict[str, str]:
    out = {path: origin}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(_paths(v, f"{path}.{key_text(k)}", origin))
    return out


def _fill_from_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Fill settings the file leaves out from the environment; return {field path: variable}."""
    origins: dict[str, str] = {}
    vs = raw.get("vsphere")
    tls = vs.get("tls") if isinstance(vs, dict) else None
    # TLS verification is one choice: a file that makes it must not be contradicted by env.
    file_chose_tls = isinstance(tls, dict) and any(v is not None for v in tls.values())
    net = raw.get("network")
    api = net.get("api_endpoint") if isinstance(net, dict) else None
    # A spec whose endpoint is its master's own address has no use for a virtual address; one
    # exported for the clusters that do (`vkp lab env` offers one) is not an error for it.
    direct = isinstance(api, dict) and api.get("mode") == "direct"
    for keys, var in ENV_SETTINGS:
        value = env.get(var)
        if value is None or value.strip() == "":
            continue
        if keys[:2] == ("vsphere", "tls") and file_chose_tls:
            continue
        if keys == ("network", "api_endpoint", "address") and direct:
            continue
        d: Any = raw
        for k in keys[:-1]:
            if d.get(k) is None:
                d[k] = {}
            d = d[k]
            if not isinstance(d, dict):
                break
        else:
            if d.get(keys[-1]) is None:
                d[keys[-1]] = _env_value(keys[-1], value.strip())
                origins[".".join(keys)] = var
    return origins


def _env_value(key: str, value: str) -> Any:
    if key == "prefix" and (n := parse_int(value)) is not None:
        return n
    if key == "insecure":
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    if key == "dns":
        return [s.strip() for s in value.split(",") if s.strip()]
    return value


def _annotate(problems: list[tuple[str, str]], origins: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for p, m in problems:
        var = origins.get(p) or next((v for o, v in origins.items() if p.startswith(o + "[")), None)
        out.append((p, f"{m} (the value came from {var})" if var else m))
    return out
