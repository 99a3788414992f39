"""etcd from a release tarball (etcd.artifact): the spec fields, the release layout, the install
script run for real on this machine, and etcd.configure on a scripted host in both modes."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import pytest

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap import runner
from provisioner.bootstrap.engine import Check, Cluster, Executor, Facts, ServiceFact
from provisioner.bootstrap.playbook import parse_playbook
from provisioner.bootstrap.runner import PlayFailed, run_playbook
from provisioner.bootstrap.steps import etcd as etcd_steps
from provisioner.bootstrap.steps import registry
from provisioner.bootstrap.steps.artifacts import ETCD_RELEASE_FILE
from provisioner.errors import ArtifactError, ExitCode
from provisioner.plan import make_plan
from provisioner.spec import DEFAULT_ETCD_VERSION, EtcdSpec, load_spec
from provisioner.ssh.commands import Result
from provisioner.state import ClusterState
from tests.unit import fakes
from tests.unit.fakes import run_locally
from tests.unit.test_spec import LAB_ENV, problems, write

V = "3.5.16"
TARBALL = f"etcd-v{V}-linux-amd64.tar.gz"
HEX_A = "a" * 64


# -- the spec ---------------------------------------------------------------------------------


def test_defaults_are_the_package_and_a_current_release() -> None:
    spec = load_spec(None, name="d", plan="dev", env=LAB_ENV)
    assert spec.etcd.artifact == "package" and spec.etcd.from_package
    assert spec.etcd.version == DEFAULT_ETCD_VERSION == "3.5.16"
    assert spec.to_dict()["etcd"] | {} == {
        "heartbeat_interval": 100,
        "election_timeout": 1000,
        "artifact": "package",
        "version": "3.5.16",
    }


def test_artifact_settings_load_and_a_relative_local_dir_is_relative_to_the_spec(tmp_path: Path) -> None:
    f = write(
        tmp_path, "name: x\nplan: small\netcd: {artifact: 'https://mirror.example/etcd/', version: v3.5.15}\n"
    )
    spec = load_spec(f, env=LAB_ENV)
    assert (spec.etcd.artifact, spec.etcd.version, spec.etcd.from_package) == (
        "https://mirror.example/etcd/",
        "3.5.15",
        False,
    )
    f = write(tmp_path, "name: x\nplan: small\netcd: {artifact: 'local:releases/etcd'}\n")
    spec = load_spec(f, env=LAB_ENV)
    assert spec.etcd.artifact == f"local:{tmp_path.resolve()}/releases/etcd"


@pytest.mark.parametrize(
    ("etcd", "field", "says"),
    [
        (
            "{artifact: 'ftp://mirror/etcd'}",
            "etcd.artifact",
            "must be package (the distribution's etcd-server), upstream",
        ),
        ("{artifact: 'https://u:p@mirror/etcd'}", "etcd.artifact", "credentials"),
        ("{artifact: 'local:'}", "etcd.artifact", "local: needs a directory"),
        ("{artifact: upstream, version: '3.5'}", "etcd.version", "must be a release like 3.5.16"),
        ("{artifact: upstream, version: 4.0.0}", "etcd.version", "etcd 3.x"),
        ("{artifact: [upstream]}", "etcd.artifact", "must be a string"),
        ("{artfact: upstream}", "etcd.artfact", ""),
    ],
)
def test_spec_errors_name_the_field(tmp_path: Path, etcd: str, field: str, says: str) -> None:
    f = write(tmp_path, f"name: x\nplan: small\netcd: {etcd}\n")
    found = problems(f)
    assert field in found, found
    assert says in found[field]


# -- the release layout -----------------------------------------------------------------------


def test_upstream_release_layout() -> None:
    src = ArtifactSource_etcd("upstream")
    assert src.kind == "upstream" and src.location == "https://github.com/etcd-io/etcd/releases/download"
    assert art.etcd_tarball(V, "amd64") == TARBALL
    assert (
        src.url(V, "amd64", TARBALL)
        == "https://github.com/etcd-io/etcd/releases/download/v3.5.16/etcd-v3.5.16-linux-amd64.tar.gz"
    )
    assert src.url(V, "arm64", src.layout.sums_name("x")).endswith("/download/v3.5.16/SHA256SUMS")
    assert art.etcd_members(V, "arm64") == [
        "etcd-v3.5.16-linux-arm64/etcd",
        "etcd-v3.5.16-linux-arm64/etcdctl",
    ]
    # The same URL written out is the upstream source, not a mirror.
    assert ArtifactSource_etcd("https://github.com/etcd-io/etcd/releases/download/").kind == "upstream"


def test_mirror_and_local_layouts(tmp_path: Path) -> None:
    src = ArtifactSource_etcd("http://198.18.0.1:8080/etcd/")
    assert src.describe() == "mirror http://198.18.0.1:8080/etcd"
    assert src.url(V, "amd64", "SHA256SUMS") == "http://198.18.0.1:8080/etcd/v3.5.16/SHA256SUMS"
    local = ArtifactSource_etcd(f"local:{tmp_path}")
    assert local.directory(V, "amd64") == tmp_path  # flat
    (tmp_path / "v3.5.16").mkdir()
    assert local.directory(V, "amd64") == tmp_path / "v3.5.16"
    # Kubernetes sources keep their own layout.
    assert (
        art.ArtifactSource.parse("upstream")
        .url("1.30.4", "amd64", "kubelet")
        .startswith("https://dl.k8s.io/")
    )


def ArtifactSource_etcd(text: str) -> art.ArtifactSource:  # noqa: N802 - reads as the class it builds
    return art.ArtifactSource.parse(text, layout=art.ETCD)


def test_messages_speak_of_etcd() -> None:
    src = ArtifactSource_etcd("http://198.18.0.1:9/etcd")
    out = f"{TARBALL} 22 {_b64('curl: (22) The requested URL returned error: 404')}"
    with pytest.raises(ArtifactError) as ei:
        art.parse_fetched_sums(Result(0, out, ""), src, V, "amd64", [TARBALL])
    err = ei.value
    assert err.exit_code == ExitCode.ARTIFACTS == 12
    assert err.message.startswith(
        "etcd v3.5.16 artifacts are not available: SHA256SUMS (http://198.18.0.1:9/etcd/v3.5.16/SHA256SUMS)"
    )
    assert "cannot run without etcd and etcdctl" in err.message
    assert err.hint is not None and "etcd.artifact: package" in err.hint
    with pytest.raises(ArtifactError) as ei:
        art.check_install(
            Result(11, f"mismatch {TARBALL} {HEX_A}\n", ""), src, V, "amd64", {TARBALL: "b" * 64}, "n1"
        )
    assert ei.value.message.startswith(f"{TARBALL} from mirror http://198.18.0.1:9/etcd on n1")
    assert f"expected sha256 {'b' * 64}, got {HEX_A}" in ei.value.message
    assert (
        ei.value.hint is not None and "SHA256SUMS" in ei.value.hint and "github.com/etcd-io" in ei.value.hint
    )


# -- release tarballs -------------------------------------------------------------------------


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _tarball(version: str = V, arch: str = "amd64", *, names: tuple[str, ...] = art.ETCD_BINARIES) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n in (*names, "README.md"):
            data = f"#!/bin/sh\necho {n} {version}\n".encode()
            info = tarfile.TarInfo(f"etcd-v{version}-linux-{arch}/{n}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o755, 1000, 1000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _release(d: Path, data: bytes | None = None, *, sums_of: bytes | None = None) -> bytes:
    """A release directory: the amd64 tarball and a SHA256SUMS naming it (and another build)."""
    data = _tarball() if data is None else data
    d.mkdir(parents=True, exist_ok=True)
    (d / TARBALL).write_bytes(data)
    digest = hashlib.sha256(data if sums_of is None else sums_of).hexdigest()
    (d / "SHA256SUMS").write_text(f"{HEX_A}  etcd-v{V}-linux-arm64.tar.gz\n{digest}  {TARBALL}\n")
    return data


def test_install_script_unpacks_only_a_verified_tarball(
    loopback_mirror: tuple[Path, str], tmp_path: Path
) -> None:
    root, url = loopback_mirror
    _release(root / f"v{V}")
    src = ArtifactSource_etcd(url)
    sums = art.parse_fetched_sums(
        run_locally(art.fetch_sums_command(src, V, "amd64", [TARBALL])), src, V, "amd64", [TARBALL]
    )
    assert sums == {TARBALL: hashlib.sha256((root / f"v{V}" / TARBALL).read_bytes()).hexdigest()}
    bindir = tmp_path / "bin"
    bindir.mkdir()
    members = art.etcd_members(V, "amd64")

    def install(digest: str, name: str = TARBALL) -> Result:
        plan = {TARBALL: (src.url(V, "amd64", name), digest)}
        return run_locally(art.install_command("download", plan, install_dir=str(bindir), unpack=members))

    r = install(HEX_A)
    with pytest.raises(ArtifactError, match=f"expected sha256 {HEX_A}, got {sums[TARBALL]}"):
        art.check_install(r, src, V, "amd64", {TARBALL: HEX_A}, "local")
    assert list(bindir.iterdir()) == []

    r = install(sums[TARBALL])
    assert art.check_install(r, src, V, "amd64", sums, "local") == ["etcd", "etcdctl"]
    assert sorted(p.name for p in bindir.iterdir()) == ["etcd", "etcdctl"]  # no tarball, no staging
    for n in art.ETCD_BINARIES:
        st = (bindir / n).stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o755, 0, 0)
        assert (
            subprocess.run([str(bindir / n)], capture_output=True, text=True, check=True).stdout
            == f"{n} {V}\n"
        )
    assert art.unpacked_sums(r) == {
        n: hashlib.sha256((bindir / n).read_bytes()).hexdigest() for n in art.ETCD_BINARIES
    }

    # A verified archive without etcdctl installs neither binary.
    (bindir / "etcd").unlink()
    (bindir / "etcdctl").unlink()
    _release(root / f"v{V}", _tarball(names=("etcd",)))
    digest = hashlib.sha256((root / f"v{V}" / TARBALL).read_bytes()).hexdigest()
    r = install(digest)
    with pytest.raises(ArtifactError, match="matched its checksum but could not be unpacked"):
        art.check_install(r, src, V, "amd64", {TARBALL: digest}, "local")
    assert list(bindir.iterdir()) == []


# -- etcd.configure on a scripted host --------------------------------------------------------


PACKAGE_COMMANDS = {"etcd-server": ("etcd",), "etcd-client": ("etcdctl",)}


class EtcdHost(fakes.FakeHost):
    """An etcd VM: answers uname, getent, cat, command -v, systemctl, and runs the artifact
    scripts' logic in Python (the real scripts are run above) against `downloads`."""

    def __init__(self, name: str, downloads: dict[str, bytes]) -> None:
        super().__init__(name)
        self.downloads = downloads
        self.users: set[str] = set()
        self.present: set[str] = set()  # commands apt installed (a bare image has none)

    def _check(self, probe: Check) -> Result:
        args = [a for a in probe.cmd.args if isinstance(a, str)]
        if args[:1] == ["uname"]:
            return Result(0, "x86_64\n", "")
        if args[:2] == ["getent", "passwd"]:
            return (
                Result(0, f"{args[2]}:x:999:999::/var/lib/etcd:/usr/sbin/nologin\n", "")
                if args[2] in self.users
                else Result(2, "", "")
            )
        if args[:1] == ["cat"]:
            f = self.files.get(args[1])
            return Result(0, f[0].decode(), "") if f else Result(1, "", "No such file or directory")
        if args[:1] == ["sh"] and "command -v" in args[2]:
            missing = [
                c for c in args[4:] if c not in self.present and f"/usr/local/bin/{c}" not in self.files
            ]
            return Result(0, "".join(f"{c}\n" for c in missing), "")
        return Result(0, "", "")

    def _command(self, args: list[str]) -> Result:
        if "apt-get" in args and "install" in args:
            for pkg in args[args.index("--no-install-recommends") + 1 :]:
                self.present |= {pkg, *PACKAGE_COMMANDS.get(pkg, ())}
        if args[:2] == ["sh", "-c"]:
            script, params = args[2], args[4:]
            if script == art._FETCH_SUMS_SCRIPT:
                lines = []
                for name, url in zip(params[0::2], params[1::2], strict=True):
                    if url not in self.downloads:
                        lines.append(f"{name} 22 {_b64('The requested URL returned error: 404')}")
                        break
                    lines.append(f"{name} 0 {base64.b64encode(self.downloads[url]).decode()}")
                return Result(0, "\n".join(lines) + "\n", "")
            if script == art._INSTALL_SCRIPT:
                return self._install(params)
            if "useradd" in script:
                self.users.add("etcd")
                return Result(0, "", "")
            if "systemctl restart" in script:
                svc = params[0]
                if self.services.get(svc, ServiceFact()).is_active:
                    self.services[svc] = replace(self.services[svc], started=str(time.monotonic_ns()))
                    return Result(0, "restarted\n", "")
                return Result(0, "", "")
        if args[:1] == ["systemctl"] and len(args) == 3 and args[1] in ("enable", "start"):
            s = self.services.get(args[2], ServiceFact(loaded="loaded"))
            self.services[args[2]] = (
                replace(s, enabled="enabled")
                if args[1] == "enable"
                else replace(s, active="active", started="1")
            )
        return Result(0, "", "")

    def _install(self, params: list[str]) -> Result:
        mode, bindir, stage, members = params[:4]
        triples = params[4:]
        archives = []
        out: list[str] = []
        for name, url, digest in zip(triples[0::3], triples[1::3], triples[2::3], strict=True):
            if mode == "download":
                if url not in self.downloads:
                    return Result(10, f"fetch-failed {name} 22 {_b64('error: 404')}\n", "")
                data = self.downloads[url]
            else:
                staged = self.files.pop(f"{stage}/{name}", None)
                if staged is None:
                    return Result(12, f"missing {name}\n", "")
                data = staged[0]
            got = hashlib.sha256(data).hexdigest()
            if got != digest:
                return Result(11, f"mismatch {name} {got}\n", "")
            archives.append(data)
        installs: dict[str, bytes] = {}
        for data in archives:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in members.split():
                    f = tar.extractfile(m)
                    assert f is not None
                    installs[m.rsplit("/", 1)[-1]] = f.read()
        out += [f"unpacked {n} {hashlib.sha256(d).hexdigest()}" for n, d in installs.items()]
        for n, d in installs.items():
            self.files[f"{bindir}/{n}"] = (d, "755", "root:root")
            out.append(f"installed {n}")
        return Result(0, "".join(f"{ln}\n" for ln in out), "")


class FakePKI:
    def cert_pem(self, name: str) -> bytes:
        return f"-----BEGIN CERTIFICATE-----\n{name}\n-----END CERTIFICATE-----\n".encode()

    def key_pem(self, name: str) -> bytes:
        return b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def fake_facts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "gather_facts", lambda conn, probes: conn.facts(list(probes)))


PLAYS = [
    {"play": "etcd-common", "phase": "etcd", "hosts": "etcd", "steps": ["common.packages"]},
    {"play": "etcd", "phase": "etcd", "hosts": "etcd", "steps": ["etcd.configure", "etcd.start"]},
]
PLAYBOOK = parse_playbook(PLAYS, source="etcd.yaml", digest=json.dumps(PLAYS))


def _cluster(tmp_path: Path, artifact: str = "package") -> Cluster:
    env = LAB_ENV | {"VKP_API_ENDPOINT": "198.18.0.251", "VKP_NETWORK_POOL": "198.18.0.10-198.18.0.199"}
    spec = load_spec(None, name="demo", plan="small", env=env)
    spec = replace(spec, etcd=EtcdSpec(artifact=artifact))
    state = ClusterState.create_or_load("demo", home=tmp_path / "state")
    return Cluster(spec=spec, plan=make_plan(spec), state=state, pki=FakePKI())  # type: ignore[arg-type]


def _hosts(cluster: Cluster, downloads: dict[str, bytes] | None = None) -> dict[str, EtcdHost]:
    return {n.name: EtcdHost(n.name, downloads or {}) for n in cluster.plan.by_role("etcd")}


def _quiet(_: str) -> None:
    pass


APT_INSTALL = "sudo -n -- env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends"


def _unit(h: EtcdHost) -> str:
    return h.files["/etc/systemd/system/etcd.service"][0].decode()


def test_package_mode_is_unchanged(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path)
    hosts = _hosts(cluster)
    report = run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert report.count("changed") == 9
    h = hosts["demo-etcd-1"]
    apt = [c for c in h.commands if "apt-get install" in c]
    assert apt == [f"{APT_INSTALL} etcd-client etcd-server"]
    assert "sudo -n -- systemctl disable --now etcd" in h.commands
    assert "ExecStart=/usr/bin/etcd --config-file=/etc/etcd/etcd.conf.yml" in _unit(h)
    # Nothing of the artifact path: no download, no user, no record, nothing in /usr/local/bin.
    assert not any(w in c for c in h.commands for w in ("curl", "useradd", "uname", "getent", ".vkp-staging"))
    assert not any(p.startswith(("/usr/local/", "/var/lib/vkp")) for p in h.files)
    assert h.dirs["/var/lib/etcd"] == ("700", "etcd:etcd")
    h.commands.clear()
    again = run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert again.count("changed") == 0 and h.commands == ["facts", "facts"]


def test_local_release_is_pushed_verified_installed_and_run_from_usr_local_bin(tmp_path: Path) -> None:
    data = _release(tmp_path / "release" / f"v{V}")
    cluster = _cluster(tmp_path, f"local:{tmp_path / 'release'}")
    hosts = _hosts(cluster)
    first = run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert first.restarts == []
    h = hosts["demo-etcd-2"]
    # Nothing to install from Debian: no etcd-server (it would start an etcd of its own), no curl.
    assert not any("apt-get" in c for c in h.commands)
    assert (
        h.commands.index(f"put {art.STAGING_DIR}/{TARBALL}")
        < next(i for i, c in enumerate(h.commands) if "useradd" in c)
        < h.commands.index("put /etc/etcd/pki/ca.crt")
    )
    for n in art.ETCD_BINARIES:
        content, mode, owner = h.files[f"/usr/local/bin/{n}"]
        assert (mode, owner) == ("755", "root:root") and content == f"#!/bin/sh\necho {n} {V}\n".encode()
    assert f"{art.STAGING_DIR}/{TARBALL}" not in h.files
    assert "etcd" in h.users and h.dirs["/var/lib/etcd"] == ("700", "etcd:etcd")
    assert "ExecStart=/usr/local/bin/etcd --config-file=/etc/etcd/etcd.conf.yml" in _unit(h)
    record = h.files[ETCD_RELEASE_FILE][0].decode()
    assert record.startswith(f"{TARBALL} {hashlib.sha256(data).hexdigest()}\netcd ")

    for host in hosts.values():
        host.commands.clear()
    again = run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert (again.count("changed"), again.restarts) == (0, [])
    assert h.commands == ["facts", "facts"]  # one per play; the tarball is not pushed again


def test_a_new_release_is_installed_and_restarts_the_running_members_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _release(tmp_path / "release")
    cluster = _cluster(tmp_path, f"local:{tmp_path / 'release'}")
    hosts = _hosts(cluster)
    rolling = parse_playbook(
        [*PLAYS, {"play": "roll", "phase": "etcd", "hosts": "etcd", "serial": 1, "steps": ["etcd.roll"]}],
        source="etcd.yaml",
        digest="rolling",
    )
    timeline: list[str] = []
    monkeypatch.setattr(etcd_steps, "check_cluster", lambda eps, names, pki: timeline.append("health"))
    run_playbook(rolling, cluster, hosts, phases={"etcd"}, log=_quiet)
    _release(tmp_path / "release", _tarball_other())  # another build under the same name
    for h in hosts.values():
        h.timeline = timeline
    report = run_playbook(rolling, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert report.restarts == [f"demo-etcd-{i}:etcd" for i in (1, 2, 3)]
    restarts = [i for i, t in enumerate(timeline) if "systemctl restart" in t]
    # A health check before and after each restart: never two members down at once.
    assert all(timeline[i - 1] == "health" and timeline[i + 1] == "health" for i in restarts)
    assert hosts["demo-etcd-1"].files["/usr/local/bin/etcd"][0] == b"#!/bin/sh\necho etcd 3.5.16-patched\n"


def _tarball_other() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n in art.ETCD_BINARIES:
            data = f"#!/bin/sh\necho {n} {V}-patched\n".encode()
            info = tarfile.TarInfo(f"etcd-v{V}-linux-amd64/{n}")
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_mirror_release_is_downloaded_by_the_node(tmp_path: Path) -> None:
    data = _tarball()
    base = f"http://198.18.0.1:8080/etcd/v{V}"
    sums = f"{hashlib.sha256(data).hexdigest()}  {TARBALL}\n".encode()
    cluster = _cluster(tmp_path, "http://198.18.0.1:8080/etcd")
    hosts = _hosts(cluster, {f"{base}/{TARBALL}": data, f"{base}/SHA256SUMS": sums})
    run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    h = hosts["demo-etcd-3"]
    apt = [c for c in h.commands if "apt-get install" in c]
    assert apt == [f"{APT_INSTALL} curl"]
    assert h.files["/usr/local/bin/etcdctl"][1:] == ("755", "root:root")
    assert "ExecStart=/usr/local/bin/etcd " in _unit(h)
    # A second run reads the published checksum again and changes nothing.
    h.commands.clear()
    again = run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert again.count("changed") == 0
    assert [c for c in h.commands if c != "facts"] == [next(c for c in h.commands if "SHA256SUMS" in c)]


@pytest.mark.parametrize("where", ["local", "mirror"])
def test_a_checksum_mismatch_installs_nothing(tmp_path: Path, where: str) -> None:
    data = _tarball()
    if where == "local":
        _release(tmp_path / "release", data, sums_of=b"another build")
        cluster = _cluster(tmp_path, f"local:{tmp_path / 'release'}")
        downloads: dict[str, bytes] = {}
    else:
        base = f"http://198.18.0.1:8080/etcd/v{V}"
        sums = f"{hashlib.sha256(b'another build').hexdigest()}  {TARBALL}\n".encode()
        downloads = {f"{base}/{TARBALL}": data, f"{base}/SHA256SUMS": sums}
        cluster = _cluster(tmp_path, "http://198.18.0.1:8080/etcd")
    hosts = _hosts(cluster, downloads)
    # A local tarball is verified before any host is touched; a download, on the node.
    with pytest.raises(ArtifactError if where == "local" else PlayFailed) as ei:
        run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    err = ei.value
    assert err.exit_code == ExitCode.ARTIFACTS == 12
    assert TARBALL in err.message and hashlib.sha256(b"another build").hexdigest() in err.message
    assert hashlib.sha256(data).hexdigest() in err.message
    for h in hosts.values():
        assert not any(p.startswith(("/usr/local/bin/", "/etc/etcd", "/var/lib/vkp")) for p in h.files), (
            h.files
        )
        assert "etcd" not in h.users and "etcd" not in h.services


def test_a_missing_tarball_stops_before_anything_is_installed(tmp_path: Path) -> None:
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "SHA256SUMS").write_text(f"{HEX_A}  {TARBALL}\n")
    cluster = _cluster(tmp_path, f"local:{tmp_path / 'release'}")
    hosts = _hosts(cluster)
    with pytest.raises(ArtifactError) as ei:
        run_playbook(PLAYBOOK, cluster, hosts, phases={"etcd"}, log=_quiet)
    assert ei.value.exit_code == 12 and f"{TARBALL} could not be fetched" in ei.value.message
    assert ei.value.message.startswith("play etcd, ")
    assert all(h.commands == [] for h in hosts.values())  # stopped before any host was touched


def test_dry_run_shows_the_download_and_the_unit(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "upstream")
    sdef = registry()["etcd.configure"]
    node = cluster.plan.by_role("etcd")[0]
    res = Executor(None, Facts.unknown(), dry_run=True).run_step(
        sdef, sdef.fn(node, cluster, Facts.unknown()), node.name
    )
    assert res.status == "changed", res.error
    shown = "\n".join(res.actions)
    assert f"https://github.com/etcd-io/etcd/releases/download/v{V}/SHA256SUMS" in shown
    assert f"https://github.com/etcd-io/etcd/releases/download/v{V}/{TARBALL}" in shown
    assert "useradd" in shown and ETCD_RELEASE_FILE in shown
