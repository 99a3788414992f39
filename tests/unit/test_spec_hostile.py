"""Hostile and absurd input: every spec file, environment value and CLI argument that is wrong
ends in a SpecError (exit code 3) naming the field, what is wrong and what to do; never in a
traceback, a hang or exhausted memory."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import ExitCode, SpecError
from provisioner.plan import make_plan
from provisioner.spec import LIMITS, load_spec
from provisioner.spec.values import SHOW_MAX, show
from tests.unit.test_cli_plan import vkp
from tests.unit.test_spec import LAB_ENV, REPO, problems, write


def spec_error(r: Any) -> str:
    """The CLI's error output, after checking it is a spec error and not a traceback."""
    assert r.exit_code == ExitCode.SPEC, r.output
    assert "Traceback" not in r.output
    assert "the cluster spec has" in r.stderr
    return str(r.stderr)


# --- 1. YAML aliases ("billion laughs") ---------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    lines.append(f"name: *l{levels - 1}")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_with_its_line(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 500  # a few hundred bytes that would stand for 9^9 strings
    f = write(tmp_path, text)
    started = time.monotonic()
    err = spec_error(vkp("plan", "-f", str(f), env=LAB_ENV))
    assert time.monotonic() - started < 10
    assert f"{f}:" in err and "aliases" in err and str(LIMITS["yaml_alias_expansion"].maximum) in err
    assert "write the values out" in err


def test_a_few_aliases_in_a_real_spec_still_work(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: small
        topology:
          etcd: &size {cpus: 2, memory_mb: 4096, disk_gb: 40}
          master: *size
          worker: *size
        network:
          dns: &dns [198.18.0.1]
        """,
    )
    spec = load_spec(f, env=LAB_ENV)
    assert spec.topology.worker.memory_mb == 4096 and spec.topology.master.cpus == 2
    assert spec.topology.etcd.count == 3  # the plan still supplies what the alias leaves out


def test_an_alias_inside_its_own_node_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nvsphere: &v {tls: *v}\n")
    (where, msg), *_ = problems(f).items()
    assert where.startswith(f"{f}:3:") and "endless value" in msg


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    long = "A" * 100_000
    f = write(tmp_path, f"name: {long}\nplan: dev\n")
    msg = problems(f)["name"]
    assert "..." in msg and long[:200] not in msg and len(msg) < 400
    assert len(show(long)) == SHOW_MAX and len(show(list(range(10**5)))) <= SHOW_MAX
    assert "digits" in show(10**5000)  # str() of it would raise ValueError


# --- 2. Nesting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "name: " + "[" * 3000 + "]" * 3000,
        "name: " + "{a: " * 3000 + "1" + "}" * 3000,
        "".join("  " * i + f"k{i}:\n" for i in range(200)),
    ],
    ids=["lists", "flow-mappings", "block-mappings"],
)
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path: Path, text: str) -> None:
    f = write(tmp_path, text + "\n")
    err = spec_error(vkp("plan", "-f", str(f), env=LAB_ENV))
    assert f"nested more than {LIMITS['yaml_depth'].maximum} levels deep" in err and f"{f}:" in err


# --- 3. Numbers: ASCII digits only ---------------------------------------------------------------


@pytest.mark.parametrize("value", ['"²"', '"٣"', '"3.0"', '"-1 "', "3.0", ".nan", "1e400", "true"])
def test_count_must_be_ascii_digits(tmp_path: Path, value: str) -> None:
    f = write(tmp_path, f"name: x\nplan: dev\ntopology: {{worker: {{count: {value}}}}}\n")
    assert "must be a whole number" in problems(f)["topology.worker.count"]


def test_a_unicode_digit_in_the_environment_names_the_variable() -> None:
    err = spec_error(vkp("plan", "x", "--plan", "dev", env=LAB_ENV | {"VKP_NETWORK_PREFIX": "²"}))
    assert "network.prefix: must be a whole number; got '²' (the value came from VKP_NETWORK_PREFIX)" in err


def test_digits_in_a_string_still_count(tmp_path: Path) -> None:
    f = write(tmp_path, 'name: x\nplan: dev\ntopology: {worker: {count: "2"}}\n')
    assert load_spec(f, env=LAB_ENV).topology.worker.count == 2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: 1" + "0" * 5000, "a number of 5001 characters"),
        ("name: !!int 0x" + "f" * 5000, "a number of 5002 characters"),
        ("name: 2001-13-45", "cannot read this value (month must be in 1..12); quote it"),
        ("name: !!float x", "cannot read this value"),
    ],
)
def test_values_yaml_cannot_build_are_spec_errors(tmp_path: Path, text: str, says: str) -> None:
    f = write(tmp_path, text + "\n")
    (where, msg), *_ = problems(f).items()
    assert where.startswith(f"{f}:1:") and says in msg


def test_a_port_in_the_server_is_ascii_digits(tmp_path: Path) -> None:
    f = write(tmp_path, 'name: x\nplan: dev\nvsphere: {server: "vc:٤٤٣"}\n')
    assert "the port must be a number" in problems(f)["vsphere.server"]


# --- 4. --hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hosts", [",", " , ,"])
def test_an_empty_host_list_is_refused(hosts: str) -> None:
    err = spec_error(vkp("plan", "-f", str(REPO / "inventory/lab.yaml"), "--hosts", hosts, env=LAB_ENV))
    assert "--hosts: lists no ESXi host" in err and "leave --hosts out" in err


def test_host_names_from_the_command_line_are_checked() -> None:
    err = spec_error(
        vkp("plan", "-f", str(REPO / "inventory/lab.yaml"), "--hosts", "esx-1,a/b," + "h" * 81, env=LAB_ENV)
    )
    assert "--hosts[1]: 'a/b' holds '/'" in err and "--hosts[2]:" in err and "at most 80 characters" in err


def test_host_names_sort_naturally_without_int() -> None:
    spec = load_spec(None, name="x", plan="small", env=LAB_ENV)
    plan = make_plan(spec, ["esx-10", "esx-9", "esx-²", "esx-" + "9" * 5000][:3])
    assert plan.hosts == ("esx-9", "esx-10", "esx-²")


# --- 5. Files that are not spec files ------------------------------------------------------------


def test_dev_zero_is_refused_at_once() -> None:
    started = time.monotonic()
    err = spec_error(vkp("plan", "-f", "/dev/zero", env=LAB_ENV))
    assert time.monotonic() - started < 10
    assert "/dev/zero: is not a regular file" in err


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    assert "not a regular file" in problems(fifo)[str(fifo)]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "is a directory" in problems(tmp_path)[str(tmp_path)]


def test_an_oversized_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("name: x\n" + "# padding\n" * 200_000)
    msg = problems(f)[str(f)]
    assert f"larger than {LIMITS['file_bytes'].maximum} bytes" in msg


def test_bytes_that_are_not_utf8_give_the_line(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"name: x\nplan: dev\nvsphere: {datacenter: Z\xfcrich}\n")
    msg = problems(f)[f"{f}:3"]
    assert "not UTF-8" in msg and "0xfc" in msg and "save the file as UTF-8" in msg


def test_characters_yaml_refuses_give_the_line(tmp_path: Path) -> None:
    f = tmp_path / "nul.yaml"
    f.write_text("name: x\nplan: dev\x00\n")
    assert "U+0000" in problems(f)[f"{f}:2"]


def test_a_plans_file_that_is_a_device_is_refused() -> None:
    err = spec_error(vkp("plan", "x", "--plan", "dev", env=LAB_ENV | {"VKP_PLANS_FILE": "/dev/zero"}))
    assert "/dev/zero: is not a regular file" in err


# --- 6. vSphere's own limits ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("etcd.count", 9, 7),
        ("master.count", 9, 7),
        ("worker.count", 1_000_000, 1000),
        ("worker.cpus", 769, 768),
        ("worker.cpus", 10**30, 768),
        ("worker.memory_mb", 24 * 1024 * 1024 + 4, 25165824),
        ("master.memory_mb", 10**30, 25165824),
        ("worker.disk_gb", 62 * 1024 + 1, 63488),
        ("etcd.disk_gb", 10**30, 63488),
    ],
)
def test_sizes_past_vsphere_limits_name_the_limit(tmp_path: Path, field: str, value: int, limit: int) -> None:
    role, key = field.split(".")
    f = write(tmp_path, f"name: x\nplan: small\ntopology: {{{role}: {{{key}: {value}}}}}\n")
    msg = problems(f)[f"topology.{field}"]
    assert f"must be at most {limit} (" in msg and f"got {value}" in msg


@pytest.mark.parametrize(
    ("role", "key", "value"),
    [("worker", "cpus", 768), ("worker", "memory_mb", 25165824), ("worker", "disk_gb", 63488)],
)
def test_sizes_at_the_limit_are_accepted(tmp_path: Path, role: str, key: str, value: int) -> None:
    f = write(tmp_path, f"name: x\nplan: small\ntopology: {{{role}: {{{key}: {value}}}}}\n")
    assert load_spec(f, env=LAB_ENV).topology.role(role).size.__getattribute__(key) == value


def test_conntrack_is_a_32_bit_integer(tmp_path: Path) -> None:
    f = write(tmp_path, "name: x\nplan: dev\nkubernetes: {node: {conntrack_max_per_core: 4294967296}}\n")
    assert "at most 2147483647" in problems(f)["kubernetes.node.conntrack_max_per_core"]


def test_plans_files_are_held_to_the_same_limits(tmp_path: Path) -> None:
    plans = write(
        tmp_path,
        """
        plans:
          huge:
            etcd:   {count: 1, cpus: 1, memory_mb: 1024, disk_gb: 10}
            master: {count: 1, cpus: 1000, memory_mb: 2048, disk_gb: 20}
            worker: {count: 5000, cpus: 1, memory_mb: 1024, disk_gb: 20}
        """,
        "plans.yaml",
    )
    err = spec_error(vkp("plan", "x", "--plan", "huge", env=LAB_ENV | {"VKP_PLANS_FILE": str(plans)}))
    assert "plans.huge.master.cpus: must be at most 768" in err
    assert "plans.huge.worker.count: must be at most 1000" in err


# --- 7. vSphere names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("datacenter", '"DC0\\nrm -rf"', "control character U+000A"),
        ("cluster", '"C0\\t"', "control character U+0009"),
        ("datastore", "ds" * 41, "has 82 characters; vSphere allows at most 80"),
        ("network", "a//b", "empty level"),
        ("template", "templates/" + "t" * 81, "a level of the path"),
        ("resource_pool", '"pool\\u2028x"', "U+2028"),
        ("folder", "team/" + "f" * 81 + "/x", "has 81 characters"),
    ],
)
def test_inventory_names_are_checked(tmp_path: Path, field: str, value: str, says: str) -> None:
    f = write(tmp_path, f"name: x\nplan: dev\nvsphere:\n  {field}: {value}\n")
    msg = problems(f)[f"vsphere.{field}"]
    assert says in msg


def test_inventory_paths_are_still_accepted(tmp_path: Path) -> None:
    f = write(
        tmp_path,
        """
        name: x
        plan: dev
        vsphere:
          datacenter: /DC0
          cluster: host/DC0_C0
          template: templates/debian-12
          network: "VM Network"
          resource_pool: vkp/lab
          folder: /team-a/k8s/
        placement: {hosts: [esx-1.example.com, 10.0.0.5]}
        """,
    )
    spec = load_spec(f, env=LAB_ENV)
    assert spec.vsphere.folder == "team-a/k8s" and spec.vsphere.cluster == "host/DC0_C0"


@pytest.mark.parametrize(
    ("host", "says"), [("esx/1", "holds '/'"), ("e" * 81, "81 characters"), ('"esx\\r"', "U+000D")]
)
def test_placement_hosts_are_host_names(tmp_path: Path, host: str, says: str) -> None:
    f = write(tmp_path, f"name: x\nplan: dev\nplacement: {{hosts: [esx-2, {host}]}}\n")
    assert says in problems(f)["placement.hosts[1]"]


# --- 8. Credentials -------------------------------------------------------------------------------


def test_user_and_password_from_one_variable_is_refused(tmp_path: Path) -> None:
    f = write(
        tmp_path, "name: x\nplan: dev\nvsphere: {credentials: {user_env: VC_LOGIN, password_env: VC_LOGIN}}\n"
    )
    msg = problems(f)["vsphere.credentials.password_env"]
    assert "same variable as user_env ('VC_LOGIN')" in msg and "two different variables" in msg


@pytest.mark.parametrize("name", ["VC PASS", "1PASS", "PASS-WORD", '"PASS\\n"'])
def test_credential_variables_must_be_variable_names(tmp_path: Path, name: str) -> None:
    f = write(tmp_path, f"name: x\nplan: dev\nvsphere: {{credentials: {{password_env: {name}}}}}\n")
    assert "vsphere.credentials.password_env" in problems(f)


# --- 9. Fuzz: wrong types and absurd values at every level ---------------------------------------

# A spec that sets every field, so a hostile value can be put in each one.
FULL: dict[str, Any] = {
    "name": "x",
    "plan": "small",
    "vsphere": {
        "server": "vc.example.com",
        "port": 443,
        "datacenter": "DC0",
        "cluster": "C0",
        "datastore": "ds",
        "network": "VM Network",
        "template": "debian-12",
        "folder": "vkp",
        "resource_pool": "pool",
        "linked_clone": True,
        "credentials": {"user_env": "VC_USER", "password_env": "VC_PASS"},
        "tls": {"insecure": True},
    },
    "topology": {
        "etcd": {"count": 3, "cpus": 2, "memory_mb": 2048, "disk_gb": 20, "addresses": ["198.18.0.20"]},
        "master": {"count": 1},
        "worker": {"count": 2},
    },
    "network": {
        "pool": ["198.18.0.30-198.18.0.40"],
        "prefix": 24,
        "gateway": "198.18.0.1",
        "dns": ["198.18.0.1"],
        "api_endpoint": {"address": "198.18.0.5", "port": 6443, "mode": "auto", "virtual": "kube-vip"},
    },
    "placement": {"hosts": ["esx-1"], "anti_affinity": True},
    "ssh": {"user": "vkp", "port": 22},
    "kubernetes": {
        "version": "1.30.4",
        "pod_cidr": "10.244.0.0/16",
        "service_cidr": "10.96.0.0/12",
        "cni": "calico",
        "cni_version": "3.28.1",
        "dns": "coredns",
        "vsphere_csi": False,
        "node": {
            "cgroup_driver": "systemd",
            "conntrack_max_per_core": 0,
            "ignore_preflight_errors": ["Swap"],
        },
        "artifacts": {"source": "local:artifacts", "image_repository": "mirror.example.com/k8s"},
    },
    "etcd": {
        "heartbeat_interval": 100,
        "election_timeout": 1000,
        "artifact": "local:etcd",
        "version": "3.5.16",
    },
    "pki": {"key_type": "rsa", "rsa_bits": 2048},
}

HOSTILE: list[Any] = [
    None,
    True,
    [],
    {},
    [[1, [2]], {"a": None}],
    {"a": {"b": [None]}},
    10**30,
    -(10**30),
    -1,
    0,
    float("inf"),
    float("nan"),
    3.5,
    "",
    "²",
    "٣٠",
    "x" * 20_000,
    "a\nb",
    "\x1b[31m",
    "~nosuchuser/x",
    "local:~nosuchuser",
    "//",
    "1" * 100,
    "fe80::1%eth0",
    "0.0.0.0-255.255.255.255",
    "1.1.1.1-::1",
    "https://user:pw@host/",
    "é🙂",
    ",,,",
]


def _paths(d: dict[str, Any], prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for k, v in d.items():
        out.append((*prefix, k))
        if isinstance(v, dict):
            out += _paths(v, (*prefix, k))
        elif isinstance(v, list):
            out += [(*prefix, k, i) for i in range(len(v))]
    return out


def _with(path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(FULL)
    d: Any = doc
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    return doc


def _assert_clear(exc: SpecError) -> None:
    assert exc.exit_code == ExitCode.SPEC and exc.problems
    for field, message in exc.problems:
        assert field.strip() and message.strip()
        # A field path and a sentence, each bounded however large the value was.
        assert len(field) <= 300 and len(message) <= 600, (field[:100], message[:300])


def test_the_full_spec_loads(tmp_path: Path) -> None:
    f = write(tmp_path, yaml.safe_dump(FULL))
    make_plan(load_spec(f, env=LAB_ENV), ["esx-1"])


@pytest.mark.parametrize("path", [(), *_paths(FULL)], ids=lambda p: ".".join(map(str, p)) or "document")
def test_hostile_values_everywhere_end_in_a_spec_error(tmp_path: Path, path: tuple[Any, ...]) -> None:
    f = tmp_path / "spec.yaml"
    for value in HOSTILE:
        f.write_text(yaml.safe_dump(value if path == () else _with(path, value), allow_unicode=True))
        try:
            spec = load_spec(f, env=LAB_ENV)
            make_plan(spec, list(spec.placement.hosts) or ["esx-1", "esx-2"])
        except SpecError as exc:
            _assert_clear(exc)


@pytest.mark.parametrize(
    "text",
    [
        "name: x\x00",
        'name: "\\ud800"',
        'name: "\\x00"',
        "? [a]\n: 1",
        "1: x",
        "yes: x",
        "0x" + "f" * 90 + ": x",
        "a: &a [*a]",
        "a: *nope",
        "a: &a 1\nb: &a 2",
        "a: &a {x: 1}\nb: {<<: *a}",
        "name: !!python/object/apply:os.system [id]",
        "name: !!set {a, b}",
        "---\na: 1\n---\nb: 2",
        "[]",
        "x",
        "topology: {worker: {count: 0b" + "1" * 99 + "}}",
        "kubernetes: {version: 1." + "9" * 5000 + ".0}",
        "vsphere: {server: 'vc:" + "9" * 200 + "'}",
        'vsphere: {tls: {ca_file: "rel\\x00"}}',
        "x" * 100_000 + ": 1",
    ],
)
def test_hostile_yaml_ends_in_a_spec_error_through_the_cli(tmp_path: Path, text: str) -> None:
    f = tmp_path / "spec.yaml"
    f.write_text(text + "\n", encoding="utf-8", errors="surrogatepass")
    r = vkp("plan", "-f", str(f), "-o", "json", env=LAB_ENV)
    assert r.exit_code == ExitCode.SPEC, r.output
    assert '"ok": false' in r.stdout and '"field"' in r.stdout


@pytest.mark.parametrize("value", [v for v in HOSTILE if isinstance(v, str) and v and "\n" not in v])
def test_hostile_environment_values_end_in_a_spec_error(value: str) -> None:
    from provisioner.spec import ENV_SETTINGS

    for _keys, var in ENV_SETTINGS:
        try:
            make_plan(load_spec(None, name="x", plan="small", env=LAB_ENV | {var: value}))
        except SpecError as exc:
            _assert_clear(exc)
