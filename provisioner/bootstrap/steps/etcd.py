"""etcd on the etcd nodes: certificates, configuration, start, rolling restarts, health.

Each member listens on its node address and on 127.0.0.1, with client and peer TLS and client
certificate auth on both (CIS), keys 0600 owned by etcd, data directory 0700. The members are
started by a play that runs on all etcd hosts at once: a member's first start waits for a
quorum, so starting them one by one would leave the first waiting for the others.

A running member is never restarted by the step that changes its files (that step runs on
every member at once, and restarting them together loses quorum): etcd.configure leaves a
marker, RESTART_PENDING, and etcd.roll, in a play of its own with serial: 1, restarts the
marked members one at a time, each only while the other members are healthy and the next
only once the cluster is healthy again. The marker is on the node, so a run that stopped
between the two steps leaves the restart to the next run.

etcd itself is the distribution's etcd-server (common.packages installs it) unless
etcd.artifact names a release source; then etcd.configure installs etcd and etcdctl from the
verified release tarball into /usr/local/bin and creates the etcd user the package would have.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from provisioner.bootstrap import artifacts as art
from provisioner.bootstrap.engine import (
    Check,
    Cluster,
    EnsureDir,
    Facts,
    File,
    Local,
    Probe,
    Restart,
    Run,
    Service,
    StepGen,
    Upload,
    Warn,
    step,
)
from provisioner.bootstrap.etcd_client import EtcdError, EtcdUnhealthy, check_cluster
from provisioner.bootstrap.render import render
from provisioner.bootstrap.steps.artifacts import etcd_binaries, etcd_probes
from provisioner.errors import CommandFailed
from provisioner.plan import NodePlan
from provisioner.retry import retry_call
from provisioner.ssh.commands import Cmd

ETCD_BINARY = "/usr/bin/etcd"  # where Debian's etcd-server puts it
ARTIFACT_ETCD_BINARY = f"{art.INSTALL_DIR}/etcd"
CONFIG_DIR = "/etc/etcd"
PKI_DIR = "/etc/etcd/pki"
CONFIG_FILE = "/etc/etcd/etcd.conf.yml"
UNIT_FILE = "/etc/systemd/system/etcd.service"
DATA_DIR = "/var/lib/etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
HEALTH_DEADLINE = 90.0  # members elect a leader within a few election timeouts of starting
RESTART_PENDING = f"{CONFIG_DIR}/vkp-restart-pending"
ETCD_USER = Check(Cmd("getent", "passwd", "etcd"))
# The account Debian's etcd-server creates, for nodes where the package is not installed.
_CREATE_USER = (
    "getent group etcd >/dev/null || groupadd --system etcd\n"
    "getent passwd etcd >/dev/null || useradd --system --gid etcd --home-dir /var/lib/etcd "
    "--no-create-home --shell /usr/sbin/nologin --comment 'etcd' etcd\n"
)


def url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}:{port}"


def client_endpoints(cluster: Cluster) -> list[str]:
    return [url(n.address, CLIENT_PORT) for n in cluster.plan.by_role("etcd")]


def initial_cluster(cluster: Cluster) -> str:
    """etcd's --initial-cluster: every planned member's name and peer URL."""
    return ",".join(f"{m.name}={url(m.address, PEER_PORT)}" for m in cluster.plan.by_role("etcd"))


def _cert_files(node: NodePlan) -> list[tuple[str, str, str]]:
    """(PKI name, path on the node, "cert" | "key")."""
    return [
        ("etcd-ca", f"{PKI_DIR}/ca.crt", "cert"),
        (f"etcd-server-{node.name}", f"{PKI_DIR}/server.crt", "cert"),
        (f"etcd-server-{node.name}", f"{PKI_DIR}/server.key", "key"),
        (f"etcd-peer-{node.name}", f"{PKI_DIR}/peer.crt", "cert"),
        (f"etcd-peer-{node.name}", f"{PKI_DIR}/peer.key", "key"),
    ]


def _cert_probes(node: NodePlan, cluster: Cluster) -> list[File]:
    return [File(CONFIG_DIR), File(PKI_DIR)] + [File(path) for _, path, _ in _cert_files(node)]


def _certs(node: NodePlan, cluster: Cluster) -> StepGen:
    """The etcd CA and the member's server and peer certificates in /etc/etcd/pki."""
    files = [
        (path, cluster.pki.key_pem(name) if kind == "key" else cluster.pki.cert_pem(name), kind)
        for name, path, kind in _cert_files(node)
    ]
    yield EnsureDir(CONFIG_DIR, 0o755, "root:root")
    yield EnsureDir(PKI_DIR, 0o750, "root:etcd")
    for path, data, kind in files:
        if kind == "key":
            yield Upload(data, path, 0o600, "etcd:etcd", secret=True)
        else:
            yield Upload(data, path, 0o644, "root:root")


def joins_running_cluster(node: NodePlan, cluster: Cluster) -> bool:
    """Whether the member joins a running cluster (initial-cluster-state existing) rather than
    forming a new one with the others: the member a repair replaces (the run's repair
    parameter), and ever after it (the state remembers), so later runs render the same file."""
    if cluster.params.get("repair") == node.name:
        return True
    return cluster.state is not None and node.name in cluster.state.etcd_rejoined()


def render_config(node: NodePlan, cluster: Cluster) -> tuple[str, str]:
    """(etcd.conf.yml, etcd.service) for a member. Pure."""
    common = {"name": node.name, "cluster": cluster.plan.cluster}
    config = render(
        "etcd/etcd.conf.yml.j2",
        **common,
        data_dir=DATA_DIR,
        pki_dir=PKI_DIR,
        peer_url=url(node.address, PEER_PORT),
        client_url=url(node.address, CLIENT_PORT),
        local_client_url=url("127.0.0.1", CLIENT_PORT),
        initial_cluster=initial_cluster(cluster),
        initial_cluster_state="existing" if joins_running_cluster(node, cluster) else "new",
        # Unique per cluster, so members of two clusters sharing a network never join each other.
        cluster_token=f"vkp-{cluster.plan.cluster}-{cluster.cluster_id}",
        heartbeat_interval=cluster.spec.etcd.heartbeat_interval,
        election_timeout=cluster.spec.etcd.election_timeout,
    )
    binary = ETCD_BINARY if cluster.spec.etcd.from_package else ARTIFACT_ETCD_BINARY
    unit = render("etcd/etcd.service.j2", **common, etcd_binary=binary, config_file=CONFIG_FILE)
    return config, unit


def _configure_probes(node: NodePlan, cluster: Cluster) -> list[Probe]:
    probes: list[Probe] = [
        *_cert_probes(node, cluster),
        File(DATA_DIR),
        File(CONFIG_FILE),
        File(UNIT_FILE),
        Service("etcd"),
    ]
    if not cluster.spec.etcd.from_package:
        probes += [*etcd_probes(), ETCD_USER]
    return probes


@step("etcd.configure", probes=_configure_probes)
def configure(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """The member's certificates, configuration file, systemd unit and 0700 data directory, and
    with etcd.artifact set, etcd and etcdctl from the release and the etcd user.

    A running member that needs a restart for any of it (new certificates, configuration or
    binaries) is marked for etcd.roll (RESTART_PENDING), which restarts it once all of it is in
    place: a member restarted between new certificates and the configuration that names them
    fails.
    """
    config, unit = render_config(node, cluster)
    changed: list[Any] = []  # what took effect on the node: a running member must restart for it
    if not cluster.spec.etcd.from_package:
        # Binaries first: a source that fails verification stops the step before it changes
        # anything else on the node.
        yield from _tracked(etcd_binaries(node, cluster, facts), changed)
        if not (facts.known and facts.check(ETCD_USER.cmd).ok):
            yield Run(Cmd.shell(_CREATE_USER), retry_safe=True)
    yield from _tracked(_certs(node, cluster), changed)
    for action in (EnsureDir(DATA_DIR, 0o700, "etcd:etcd"), Upload(config, CONFIG_FILE, 0o644, "root:root")):
        if (yield action):
            changed.append(action)
    unit_changed = yield Upload(unit, UNIT_FILE, 0o644, "root:root")
    if unit_changed or facts.service("etcd").need_reload:
        changed.append(unit)
        yield Run(Cmd("systemctl", "daemon-reload"), retry_safe=True)
    if changed and facts.service("etcd").is_active:
        # Left to etcd.roll, one member at a time (see the module docstring).
        yield Upload(
            "a configuration, certificate or binary changed while etcd ran; etcd.roll restarts it\n",
            RESTART_PENDING,
            0o644,
            "root:root",
        )


def _tracked(gen: Generator[Any, Any, None], changed: list[Any]) -> Generator[Any, Any, None]:
    """Pass gen's actions through, adding to changed those that changed the node (the engine's
    rule: a file or directory written, a command that changes and succeeded)."""
    try:
        action = next(gen)
        while True:
            outcome = yield action
            wrote = isinstance(action, Upload | EnsureDir) and bool(outcome)
            ran = isinstance(action, Run) and action.changes and bool(getattr(outcome, "ok", False))
            if wrote or ran:
                changed.append(action)
            action = gen.send(outcome)
    except StopIteration:
        return


@step("etcd.start", probes=lambda node, cluster: [Service("etcd")])
def start(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """Enable the member and start it if it is not running (never restarts a running one)."""
    svc = facts.service("etcd")
    if not svc.is_enabled:
        yield Run(Cmd("systemctl", "enable", "etcd"), retry_safe=True)
    if svc.is_active:
        return
    start_cmd = Cmd("systemctl", "start", "etcd")
    r = yield Run(start_cmd, check=False, timeout=240)
    if not r.ok:
        # systemctl only says "see journalctl": the member's own words are what help.
        journal = yield Run(
            Cmd("journalctl", "-u", "etcd", "-n", "25", "--no-pager", "-o", "cat"), check=False, changes=False
        )
        raise CommandFailed(
            node.name, start_cmd.masked(), r.exit_status, r.stdout, f"{r.stderr}\n{journal.stdout}"
        )


def wait_cluster_healthy(cluster: Cluster, deadline: float | None = None) -> object:
    """Every member healthy, the member list as planned, a write read back; retried until the
    deadline (members that just started may still be electing a leader)."""
    endpoints = client_endpoints(cluster)
    expected = [n.name for n in cluster.plan.by_role("etcd")]
    return retry_call(
        lambda: check_cluster(endpoints, expected, cluster.pki),  # type: ignore[arg-type]
        retry_on=lambda e: isinstance(e, EtcdUnhealthy | EtcdError),
        deadline=HEALTH_DEADLINE if deadline is None else deadline,
        initial=0.5,
        maximum=3.0,
        what=f"etcd health at {', '.join(endpoints)}",
    )


def others_healthy(cluster: Cluster, node: NodePlan) -> object:
    """Before node's member restarts: every other member healthy, the member list as planned,
    and a write through them read back. Asked once: EtcdUnhealthy (nothing restarted) if not."""
    others = [url(n.address, CLIENT_PORT) for n in cluster.plan.by_role("etcd") if n.name != node.name]
    expected = [n.name for n in cluster.plan.by_role("etcd")]
    try:
        return check_cluster(others, expected, cluster.pki)  # type: ignore[arg-type]
    except EtcdUnhealthy as exc:
        exc.message = f"{node.name} was not restarted: the other members must be healthy first; {exc.message}"
        exc.hint = (
            "restarting it now could cost the cluster its quorum: bring the named members back "
            "(`vkp ssh CLUSTER MEMBER -- sudo journalctl -u etcd`), then run again; it resumes here"
        )
        raise


@step("etcd.roll", probes=lambda node, cluster: [File(RESTART_PENDING), Service("etcd")])
def roll(node: NodePlan, cluster: Cluster, facts: Facts) -> StepGen:
    """If a restart is pending on the member (RESTART_PENDING): the other members healthy, then
    restart it, then wait until the whole cluster is healthy again. Run it with serial: 1."""
    if facts.known and facts.file(RESTART_PENDING).kind == "absent":
        return
    clear = Run(Cmd("rm", "-f", "--", RESTART_PENDING), retry_safe=True)
    if facts.known and not facts.service("etcd").is_active:
        # A stopped member reads the new files when etcd.start starts it: nothing to restart.
        yield clear
        return
    if len(cluster.plan.by_role("etcd")) == 1:
        yield Warn(f"{node.name} is the only etcd member: etcd is unavailable while it restarts")
    else:
        yield Local(
            f"if a restart is pending: the members other than {node.name} healthy (else stop here)",
            lambda: others_healthy(cluster, node),
        )
    yield Restart("etcd", always=True)
    yield Local(
        f"wait until {node.name} and every other member are healthy again (up to {HEALTH_DEADLINE:.0f}s)",
        lambda: wait_cluster_healthy(cluster),
    )
    yield clear


@step("etcd.health", local=True)
def health(nodes: Sequence[NodePlan], cluster: Cluster) -> StepGen:
    """From this machine over mutual TLS: every member healthy, the member list as planned, and
    a value written through one member read back through another."""
    endpoints = client_endpoints(cluster)
    expected = [n.name for n in cluster.plan.by_role("etcd")]
    yield Local(
        f"etcd health over mTLS at {', '.join(endpoints)}: all healthy, members {', '.join(expected)}, "
        "write/read round trip",
        lambda: wait_cluster_healthy(cluster),
    )
