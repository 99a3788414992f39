"""Loading a spec: the plans file, a spec file, the environment, and merging them; then the
check."""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import SpecError
from provisioner.spec.checks import (
    _check,
    _check_topology,
    _dedupe,
    _ip,
    key_text,
    normalize_thumbprint,
    parse_int,
    show,
    text_problem,
)
from provisioner.spec.schema import (
    DEFAULT_ETCD_VERSION,
    DEFAULT_PLANS_FILE,
    ENV_SETTINGS,
    ETCD_PACKAGE,
    LIMITS,
    PLANS_FILE_ENV,
    ROLES,
    SITE_DEFAULTS_ENV,
    TLS,
    AddressRange,
    ApiEndpointSpec,
    ArtifactsSpec,
    ClusterSpec,
    Credentials,
    EtcdSpec,
    KubernetesSpec,
    NetworkSpec,
    NodeSettingsSpec,
    PKISpec,
    PlacementSpec,
    RoleSpec,
    SizePreset,
    SSHSpec,
    Topology,
    VSphereSpec,
)
from provisioner.vsphere import endpoint


def load_size_presets(path: Path | str | None = None) -> dict[str, SizePreset]:
    """The size presets that `--plan` and a spec's plan: name, checked: the plans file
    (inventory/plans.yaml unless VKP_PLANS_FILE names another)."""
    p = Path(path) if path else DEFAULT_PLANS_FILE
    raw = _read_yaml(p)
    r = _Reader(p.name)
    r.check_keys(raw, "", {"plans"})
    plans_raw = raw.get("plans")
    if not isinstance(plans_raw, dict) or not plans_raw:
        raise SpecError([(f"{p}: plans", "must map plan names to their sizes (see inventory/plans.yaml)")])
    out: dict[str, SizePreset] = {}
    for pname, body in plans_raw.items():
        ppath = f"plans.{key_text(pname)}"
        if not isinstance(body, dict):
            r.add(ppath, "must be a mapping with description, etcd, master and worker")
            continue
        r.check_keys(body, ppath, {"description", *ROLES})
        roles = {}
        for role in ROLES:
            rpath = f"{ppath}.{role}"
            rd = r.section(body, role, ppath, {"count", "cpus", "memory_mb", "disk_gb"})
            vals = {
                k: r.get_int(rd, k, rpath, None, required=True)
                for k in ("count", "cpus", "memory_mb", "disk_gb")
            }
            roles[role] = RoleSpec(
                count=vals["count"] or 0,
                cpus=vals["cpus"] or 0,
                memory_mb=vals["memory_mb"] or 0,
                disk_gb=vals["disk_gb"] or 0,
            )
        topo = Topology(**roles)
        r.problems += _check_topology(topo, path_prefix=f"{ppath}.")
        out[key_text(pname)] = SizePreset(key_text(pname), str(body.get("description") or ""), topo)
    if r.problems:
        raise SpecError([(f"{p}: {fp}", m) for fp, m in r.problems])
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec(
    path: Path | None,
    *,
    name: str | None = None,
    plan: str | None = None,
    env: Mapping[str, str],
    check: bool = True,
    presets: Mapping[str, SizePreset] | None = None,
) -> ClusterSpec:
    """Read, merge and (unless check=False) validate a spec; raise SpecError with every problem.

    path None builds the spec from name/plan, the site defaults and the environment alone.
    Problems in values that came from the environment name the variable that set them, and
    those from the site defaults file name that file.
    """
    r = _Reader(str(path) if path else None)
    raw: dict[str, Any] = _read_yaml(path) if path is not None else {}
    legacy = _migrate_artifact_source(raw, r)
    if path is not None:
        _resolve_paths(raw, path.parent)
    origins: dict[str, str] = {}
    site = _site_defaults(env, r)
    if site is not None:
        site_path, site_raw = site
        origins = _merge_under(raw, site_raw, f"{site_path} ({SITE_DEFAULTS_ENV})")
    if name is not None:
        raw["name"] = name
        origins.pop("name", None)
    if plan is not None:
        raw["plan"] = plan
        origins.pop("plan", None)
    origins.update(_fill_from_env(raw, env))
    if legacy:
        origins.update(legacy)
    if presets is None:
        presets = load_size_presets(env.get(PLANS_FILE_ENV) or None)

    spec = _build(raw, r, presets)
    problems = list(r.problems)
    if check:
        broken = [p for p, _ in problems] + r.unknown
        for p, m in _check(spec):
            if not any(p == b or p.startswith(b + ".") or p.startswith(b + "[") for b in broken):
                problems.append((p, m))
    if problems:
        raise SpecError(_annotate(_dedupe(problems), origins))
    return spec


def spec_from_dict(data: Mapping[str, Any]) -> ClusterSpec:
    """A spec back from ClusterSpec.to_dict() (the state's spec.yaml), without re-validating it
    or reading the environment: it is what the cluster was built from, not a new request."""
    raw = {k: v for k, v in dict(data).items() if k not in ("source", "plan")}
    r = _Reader(str(data.get("source") or "spec.yaml in the cluster state"))
    _migrate_artifact_source(raw, r)
    spec = _build(raw, r, {})
    if r.problems:
        raise SpecError(r.problems)
    plan = data.get("plan")
    return dataclasses.replace(spec, plan=str(plan) if plan else None)


class _SpecLoader(yaml.SafeLoader):
    """A SafeLoader for input vkp does not trust. Besides what SafeLoader refuses, it refuses
    what would exhaust memory or the stack, each with the line it is on:

    - nesting deeper than a spec ever is (composing recurses once per level);
    - aliases (*name) standing for more than a few sections' worth in all, which is how a
      300-byte "billion laughs" document becomes gigabytes once anything walks or prints it;
    - an alias inside the node it names, which makes an endless (recursive) value;
    - a value a constructor cannot build (a 5000-digit number, a 13th month): a clear error,
      not a Python exception;
    - two equal keys in a mapping: YAML silently keeps the last, which hides a mistake.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: set[str] = set()  # anchors of collections still being composed
        self._sizes: dict[yaml.Node, int] = {}
        self._expanded = 0  # what the aliases so far stand for (values and characters)

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        mark: Any = event.start_mark  # the stubs mix in the C parser's Mark type
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"alias *{event.anchor} is inside the node &{event.anchor} names, which makes an "
                    "endless value; write the value out instead",
                    mark,
                )
            node = super().compose_node(parent, index)
            self._expanded += self._size(node) if node is not None else 0
            limit = LIMITS["yaml_alias_expansion"]
            if self._expanded > limit.maximum:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"YAML aliases (*name) here stand for more than {limit.maximum} values and "
                    "characters in all; write the values out instead of repeating aliases",
                    mark,
                )
            return node
        limit = LIMITS["yaml_depth"]
        if self._depth >= limit.maximum:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested more than {limit.maximum} levels deep ({limit.why}); "
                "check the brackets and indentation here",
                mark,
            )
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def _size(self, node: yaml.Node) -> int:
        # Memoised per node, so a chain of aliases costs its length, not what it stands for; the
        # depth limit bounds the recursion.
        size = self._sizes.get(node)
        if size is None:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
            else:
                size = 1 + len(str(node.value))
            self._sizes[node] = size
        return size

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({exc}); quote it if it is text", node.start_mark
            ) from None


# A YAML int past this many characters is no size, count or port; int() would refuse it past
# 4300 digits anyway, and str() a hex one as long. Shorter absurd numbers (10^30) reach the
# field's own limit, whose message names the field.
_YAML_INT_CHARS = 100


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    if len(node.value) > _YAML_INT_CHARS:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"a number of {len(node.value)} characters; no setting is anywhere near that large",
            node.start_mark,
        )
    return loader.construct_yaml_int(node)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {show(key)} (first on line {seen[key] + 1})", key_node.start_mark
            )
        if isinstance(key, str):
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _read_text(path: Path, missing: str) -> str:
    """The file's text, refusing what is not a spec file: a device or pipe (/dev/zero never
    ends, a FIFO blocks), a file over the size limit, bytes that are not UTF-8."""
    limit = LIMITS["file_bytes"]
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat can refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpecError([(str(path), missing)]) from None
    except OSError as exc:
        raise SpecError([(str(path), f"cannot be read: {exc.strerror or exc}; check the path")]) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "is a directory" if stat.S_ISDIR(mode) else "is not a regular file (a device, pipe or socket)"
        raise SpecError([(str(path), f"{what}; give the path of a YAML file")])
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit.maximum + 1)  # + 1: the size is checked on what was read, not stat
        except OSError as exc:
            raise SpecError([(str(path), f"cannot be read: {exc.strerror or exc}")]) from None
    if len(data) > limit.maximum:
        raise SpecError([(str(path), f"is larger than {limit.maximum} bytes ({limit.why}); check the path")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError(
            [
                (
                    f"{path}:{line}",
                    f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                    "save the file as UTF-8",
                )
            ]
        ) from None


def _read_yaml(path: Path, *, missing: str = "no such file; check the path given to -f") -> dict[str, Any]:
    text = _read_text(path, missing)
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark and exc.context_mark.line != (mark.line if mark else -1):
            # The parser notices a missing ']' or quote lines later; point at where it began too.
            what += f" ({exc.context} started on line {exc.context_mark.line + 1})"
        # The composer's and constructor's refusals (limits, duplicate keys) are not syntax.
        kind = (
            "YAML syntax error"
            if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError)
            else "YAML error"
        )
        raise SpecError([(where, f"{kind}: {what}; fix the file at that line")]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise SpecError(
            [
                (
                    f"{path}:{line}",
                    f"holds the character U+{exc.character:04X}, which YAML does not allow; remove it"
                    if isinstance(exc.character, int)
                    else f"YAML error: {exc}",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError([(str(path), f"YAML error: {show(str(exc))}")]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            [(str(path), f"must be a YAML mapping (name:, plan:, vsphere: ...), got {type(data).__name__}")]
        )
    return data


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    _resolve_ca_file(raw, base)
    _resolve_artifact_paths(raw, base)
    _resolve_etcd_artifact(raw, base)


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


class _Reader:
    """Reads raw YAML into typed values, collecting problems instead of stopping at the first."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = []
        self.unknown: list[str] = []  # fields left without a value because of another problem

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    @staticmethod
    def join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def check_keys(self, d: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in d:
            if k in allowed:
                continue
            kp = self.join(path, key_text(k))
            if isinstance(k, str) and k.lower() in _CREDENTIAL_KEYS:
                self.add(
                    kp,
                    "credentials never go in the spec: export VKP_VSPHERE_USER and VKP_VSPHERE_PASSWORD "
                    "(`vkp lab env` does for the lab), or name other variables in "
                    "vsphere.credentials.user_env / password_env",
                )
                continue
            close = difflib.get_close_matches(key_text(k), sorted(allowed), n=1, cutoff=0.6)
            hint = (
                f"did you mean {show(close[0])}?"
                if close
                else f"known keys here: {', '.join(sorted(allowed))}"
            )
            self.add(kp, f"unknown key; {hint}")

    def section(self, d: dict[str, Any], key: str, path: str, allowed: set[str]) -> dict[str, Any]:
        value = d.get(key)
        if value is None:
            return {}
        kp = self.join(path, key)
        if not isinstance(value, dict):
            self.add(kp, f"must be a mapping with keys {', '.join(sorted(allowed))}; got {show(value)}")
            return {}
        self.check_keys(value, kp, allowed)
        return value

    def get_str(self, d: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = d.get(key)
        if value is None:
            return default
        s = self.text(value, self.join(path, key))
        if s is None:
            return default
        s = s.strip()
        return s if s else default

    def text(self, value: Any, path: str) -> str | None:
        """value as a setting's text (numbers are taken as written), or None with a problem."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(path, f"must be a string; got {show(value)}")
            return None
        if isinstance(value, int) and value.bit_length() > 128:
            self.add(path, f"must be a string; got {show(value)}")
            return None
        s = str(value)
        why = text_problem(s)
        if why is not None:
            self.add(path, why)
            return None
        return s

    def get_int(
        self, d: dict[str, Any], key: str, path: str, default: int | None, *, required: bool = False
    ) -> int | None:
        value = d.get(key)
        kp = self.join(path, key)
        if value is None:
            if required and default is None:
                self.add(kp, "required")
            return default
        n = parse_int(value)
        if n is None:
            unit = {"memory_mb": " of MiB, e.g. 4096", "disk_gb": " of GiB, e.g. 40"}.get(key, "")
            self.add(kp, f"must be a whole number{unit}; got {show(value)}")
            return default
        return n

    def get_bool(self, d: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = d.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(self.join(path, key), f"must be true or false; got {show(value)}")
            return default
        return value

    def get_str_list(self, d: dict[str, Any], key: str, path: str) -> tuple[list[str], bool]:
        """(items, was_a_list); a comma-separated string is accepted too."""
        value = d.get(key)
        kp = self.join(path, key)
        if value is None:
            return [], False
        if isinstance(value, str):
            text = self.text(value, kp)
            return ([s.strip() for s in text.split(",") if s.strip()] if text else []), False
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                if isinstance(item, str | int) and not isinstance(item, bool):
                    text = self.text(item, f"{kp}[{i}]")
                    if text is not None:
                        out.append(text.strip())
                else:
                    self.add(f"{kp}[{i}]", f"must be a string; got {show(item)}")
            return out, True
        self.add(kp, f"must be a list (or a comma-separated string); got {show(value)}")
        return [], False


_CREDENTIAL_KEYS = {"user", "username", "password", "pass", "passwd", "secret"}
_TOP_KEYS = {
    "name",
    "plan",
    "vsphere",
    "topology",
    "network",
    "placement",
    "ssh",
    "kubernetes",
    "etcd",
    "pki",
}
_VSPHERE_KEYS = {
    "server", "port", "datacenter", "cluster", "datastore", "network", "template", "folder",
    "resource_pool", "linked_clone", "credentials", "tls",
}  # fmt: skip
_ROLE_KEYS = {"count", "cpus", "memory_mb", "disk_gb", "addresses"}
_K8S_KEYS = {
    "version", "pod_cidr", "service_cidr", "cni", "cni_version", "cni_plugins_version", "dns",
    "vsphere_csi", "node", "artifacts",
}  # fmt: skip
_NODE_KEYS = {
    "cgroup_driver",
    "restrict_oom_score_adj",
    "conntrack_max_per_core",
    "ignore_preflight_errors",
    "skip_preflight",
}
_ARTIFACT_KEYS = {"source", "image_repository", "image_tarballs", "sandbox_image"}


def _build(raw: dict[str, Any], r: _Reader, presets: Mapping[str, SizePreset]) -> ClusterSpec:
    r.check_keys(raw, "", _TOP_KEYS)
    name = r.get_str(raw, "name", "") or ""
    plan_name = r.get_str(raw, "plan", "")
    preset = None
    if plan_name is not None:
        preset = presets.get(plan_name)
        if preset is None:
            close = difflib.get_close_matches(plan_name, list(presets), n=1, cutoff=0.5)
            hint = f"did you mean {show(close[0])}? " if close else ""
            r.add(
                "plan",
                f"unknown plan {show(plan_name)}; {hint}known plans: {', '.join(presets)} (see `vkp plans`)",
            )

    # vsphere
    vs = r.section(raw, "vsphere", "", _VSPHERE_KEYS)
    server = r.get_str(vs, "server", "vsphere")
    port = r.get_int(vs, "port", "vsphere", 443) or 443
    if server:
        server, port = _split_server(server, port, "port" in vs, r)
    cred = r.section(vs, "credentials", "vsphere", {"user_env", "password_env"})
    tls_raw = r.section(vs, "tls", "vsphere", {"ca_file", "thumbprint", "insecure"})
    ca_file = r.get_str(tls_raw, "ca_file", "vsphere.tls")
    thumb = r.get_str(tls_raw, "thumbprint", "vsphere.tls")
    vsphere = VSphereSpec(
        server=server,
        port=port,
        datacenter=r.get_str(vs, "datacenter", "vsphere"),
        cluster=r.get_str(vs, "cluster", "vsphere"),
        datastore=r.get_str(vs, "datastore", "vsphere"),
        network=r.get_str(vs, "network", "vsphere"),
        template=r.get_str(vs, "template", "vsphere"),
        folder=(r.get_str(vs, "folder", "vsphere") or "").strip("/") or None,
        resource_pool=r.get_str(vs, "resource_pool", "vsphere"),
        linked_clone=r.get_bool(vs, "linked_clone", "vsphere", True),
        credentials=Credentials(
            user_env=r.get_str(cred, "user_env", "vsphere.credentials") or Credentials.user_env,
            password_env=r.get_str(cred, "password_env", "vsphere.credentials") or Credentials.password_env,
        ),
        tls=TLS(
            ca_file=ca_file,
            thumbprint=(normalize_thumbprint(thumb) or thumb) if thumb else None,
            insecure=r.get_bool(tls_raw, "insecure", "vsphere.tls", False),
        ),
    )

    # topology: the plan's sizes, overridden field by field by the file
    topo_raw = r.section(raw, "topology", "", set(ROLES))
    roles = {}
    for role in ROLES:
        rpath = f"topology.{role}"
        rd = r.section(topo_raw, role, "topology", _ROLE_KEYS)
        base = preset.topology.role(role) if preset else None
        vals: dict[str, int] = {}
        for k in ("count", "cpus", "memory_mb", "disk_gb"):
            v = r.get_int(rd, k, rpath, getattr(base, k) if base else None)
            if v is None:
                v = 0
                if plan_name is not None:
                    r.unknown.append(f"{rpath}.{k}")  # the unknown-plan problem already covers it
                else:
                    r.add(
                        f"{rpath}.{k}",
                        f"required when no plan is named; set it, or name a plan ({', '.join(presets)})",
                    )
            vals[k] = v
        addrs, is_list = r.get_str_list(rd, "addresses", rpath)
        for i, a in enumerate(addrs):
            ap = f"{rpath}.addresses[{i}]" if is_list else f"{rpath}.addresses"
            if _ip(a) is None:
                r.add(ap, f"{show(a)} is not an IP address")
        roles[role] = RoleSpec(
            count=vals["count"],
            cpus=vals["cpus"],
            memory_mb=vals["memory_mb"],
            disk_gb=vals["disk_gb"],
            addresses=tuple(a for a in addrs if _ip(a) is not None),
        )
    topology = Topology(**roles)

    # network
    net = r.section(raw, "network", "", {"pool", "prefix", "gateway", "dns", "api_endpoint"})
    pool_entries, pool_is_list = r.get_str_list(net, "pool", "network")
    pool: list[AddressRange] = []
    for i, entry in enumerate(pool_entries):
        pp = f"network.pool[{i}]" if pool_is_list else "network.pool"
        for part in [p.strip() for p in entry.split(",") if p.strip()]:
            rng = _parse_range(part)
            if rng is None:
                r.add(pp, f"{show(part)} is neither an address nor a range like 198.18.0.10-198.18.0.50")
            else:
                pool.append(rng)
    gateway = r.get_str(net, "gateway", "network")
    if gateway is not None and _ip(gateway) is None:
        r.add("network.gateway", f"{show(gateway)} is not an IP address")
        gateway = None
    dns, dns_is_list = r.get_str_list(net, "dns", "network")
    for i, a in enumerate(dns):
        if _ip(a) is None:
            r.add(f"network.dns[{i}]" if dns_is_list else "network.dns", f"{show(a)} is not an IP address")
    api_raw = net.get("api_endpoint")
    if isinstance(api_raw, str):
        api_raw = {"address": api_raw}  # the short form: api_endpoint: 10.0.0.5
    api = r.section(
        {"api_endpoint": api_raw}, "api_endpoint", "network", {"address", "port", "mode", "virtual"}
    )
    api_addr = r.get_str(api, "address", "network.api_endpoint")
    if api_addr is not None and _ip(api_addr) is None:
        r.add("network.api_endpoint.address", f"{show(api_addr)} is not an IP address")
        api_addr = None
    network = NetworkSpec(
        pool=tuple(pool),
        prefix=r.get_int(net, "prefix", "network", None),
        gateway=gateway,
        dns=tuple(a for a in dns if _ip(a) is not None),
        api_endpoint=ApiEndpointSpec(
            address=api_addr,
            port=r.get_int(api, "port", "network.api_endpoint", 6443) or 0,
            mode=r.get_str(api, "mode", "network.api_endpoint", "auto") or "auto",
            virtual=r.get_str(api, "virtual", "network.api_endpoint", "kube-vip") or "kube-vip",
        ),
    )

    pl = r.section(raw, "placement", "", {"hosts", "anti_affinity"})
    hosts, _ = r.get_str_list(pl, "hosts", "placement")
    placement = PlacementSpec(
        hosts=tuple(hosts), anti_affinity=r.get_bool(pl, "anti_affinity", "placement", True)
    )

    sd = r.section(raw, "ssh", "", {"user", "port"})
    ssh = SSHSpec(
        user=r.get_str(sd, "user", "ssh", SSHSpec.user) or "", port=r.get_int(sd, "port", "ssh", 22) or 0
    )

    kd = r.section(raw, "kubernetes", "", _K8S_KEYS)
    kdef, ndef = KubernetesSpec(), NodeSettingsSpec()
    ad = r.section(kd, "artifacts", "kubernetes", _ARTIFACT_KEYS)
    nd = r.section(kd, "node", "kubernetes", _NODE_KEYS)
    cni_version = r.get_str(kd, "cni_version", "kubernetes")
    image_repository = r.get_str(ad, "image_repository", "kubernetes.artifacts")
    preflight, _ = r.get_str_list(nd, "ignore_preflight_errors", "kubernetes.node")
    kubernetes = KubernetesSpec(
        version=(r.get_str(kd, "version", "kubernetes", kdef.version) or "").removeprefix("v"),
        pod_cidr=r.get_str(kd, "pod_cidr", "kubernetes", kdef.pod_cidr) or "",
        service_cidr=r.get_str(kd, "service_cidr", "kubernetes", kdef.service_cidr) or "",
        cni=r.get_str(kd, "cni", "kubernetes", kdef.cni) or "",
        cni_version=cni_version.removeprefix("v") if cni_version else None,
        cni_plugins_version=(
            r.get_str(kd, "cni_plugins_version", "kubernetes", kdef.cni_plugins_version) or ""
        ).removeprefix("v"),
        dns=r.get_str(kd, "dns", "kubernetes", kdef.dns) or "",
        vsphere_csi=r.get_bool(kd, "vsphere_csi", "kubernetes", False),
        node=NodeSettingsSpec(
            cgroup_driver=r.get_str(nd, "cgroup_driver", "kubernetes.node", ndef.cgroup_driver) or "",
            restrict_oom_score_adj=r.get_bool(
                nd, "restrict_oom_score_adj", "kubernetes.node", ndef.restrict_oom_score_adj
            ),
            conntrack_max_per_core=r.get_int(nd, "conntrack_max_per_core", "kubernetes.node", None),
            ignore_preflight_errors=tuple(preflight),
            skip_preflight=r.get_bool(nd, "skip_preflight", "kubernetes.node", ndef.skip_preflight),
        ),
        artifacts=ArtifactsSpec(
            source=r.get_str(ad, "source", "kubernetes.artifacts") or ArtifactsSpec.source,
            image_repository=(image_repository or "").rstrip("/") or None,
            image_tarballs=r.get_str(ad, "image_tarballs", "kubernetes.artifacts"),
            sandbox_image=r.get_str(ad, "sandbox_image", "kubernetes.artifacts"),
        ),
    )

    ed = r.section(raw, "etcd", "", {"heartbeat_interval", "election_timeout", "artifact", "version"})
    etcd = EtcdSpec(
        heartbeat_interval=r.get_int(ed, "heartbeat_interval", "etcd", 100) or 0,
        election_timeout=r.get_int(ed, "election_timeout", "etcd", 1000) or 0,
        artifact=(r.get_str(ed, "artifact", "etcd", ETCD_PACKAGE) or ETCD_PACKAGE).strip(),
        version=(r.get_str(ed, "version", "etcd", DEFAULT_ETCD_VERSION) or "").removeprefix("v"),
    )
    pk = r.section(raw, "pki", "", {"key_type", "rsa_bits"})
    pki = PKISpec(
        key_type=r.get_str(pk, "key_type", "pki", "rsa") or "",
        rsa_bits=r.get_int(pk, "rsa_bits", "pki", 2048) or 0,
    )
    return ClusterSpec(
        name=name,
        plan=plan_name,
        topology=topology,
        vsphere=vsphere,
        network=network,
        placement=placement,
        ssh=ssh,
        kubernetes=kubernetes,
        etcd=etcd,
        pki=pki,
        source=r.source,
    )


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


def _split_server(server: str, port: int, port_given: bool, r: _Reader) -> tuple[str, int]:
    """Accept "host", "host:port", "[v6]:port", a bare IPv6 address or a URL such as
    https://vc.example.com/sdk (endpoint.split_server, the one parser of a vCenter address)."""
    try:
        host, server_port = endpoint.split_server(server, default_port=0)
    except ValueError as exc:
        r.add("vsphere.server", f"{exc}; e.g. vc.example.com, vc.example.com:8443 or [fd00::10]:8443")
        return server, port
    if server_port == 0:
        return host, port
    if port_given and server_port != port:
        r.add("vsphere.port", f"is {port} but vsphere.server says port {server_port}; keep one of them")
    return host, server_port


def _parse_range(s: str) -> AddressRange | None:
    if "-" in s and _ip(s) is None:  # IPv6 addresses never contain '-', so this split is safe
        a, _, b = s.partition("-")
        a, b = a.strip(), b.strip()
        if _ip(a) is None or _ip(b) is None:
            return None
        return AddressRange(str(_ip(a)), str(_ip(b)))
    ip = _ip(s)
    return AddressRange(str(ip), str(ip)) if ip is not None else None
