"""The one way from vCenter settings to a session: a spec's, a cluster's saved spec's, or
VKP_VSPHERE_* alone (when the local state is gone). Credentials come from the environment
variables the settings name, or a prompt on a terminal; never from a file or argv.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping

from provisioner import view
from provisioner.errors import ProvisionerError, SettingsMissing
from provisioner.output import current_output, structured, warn
from provisioner.spec import TLS, ClusterSpec, VSphereSpec, spec_from_dict
from provisioner.state import ClusterState
from provisioner.vsphere.endpoint import join_server
from provisioner.vsphere.session import Session, connect, split_server

# Credentials typed at a prompt, by vCenter: a run that needs several sessions (resize then
# converge) asks once. Never written anywhere.
_prompted: dict[str, tuple[str, str]] = {}


def session_for(spec: ClusterSpec, env: Mapping[str, str] | None = None) -> Session:
    """Log in to the spec's vCenter; credentials come from the environment or a prompt, never the file."""
    if spec.vsphere.tls.insecure:
        warn(spec.warnings()[0])  # once per run, however many sessions it opens
    return login(spec.vsphere, env)


def session_for_cluster(name: str, env: Mapping[str, str] | None = None) -> Session:
    """The vCenter of an existing cluster: its saved spec's, or, when the local state is gone
    (or holds no spec it can read), the one VKP_VSPHERE_* name."""
    env = os.environ if env is None else env
    if ClusterState.exists(name):
        state = ClusterState.load(name)
        if state.has_spec():
            try:
                spec = spec_from_dict(state.load_spec_dict())
            except ProvisionerError:
                spec = None  # saved by an older vkp: the environment says where vCenter is
            if spec is not None:
                return session_for(spec, env)
    return login(vsphere_from_env(env), env)


def session_for_env(env: Mapping[str, str] | None = None) -> Session:
    """The vCenter VKP_VSPHERE_* names, for what concerns no one cluster (list-clusters --all)."""
    env = os.environ if env is None else env
    return login(vsphere_from_env(env, why="it names the vCenter to look in"), env)


def vsphere_from_env(
    env: Mapping[str, str], *, why: str = "and the cluster's local state (which names vCenter) is gone"
) -> VSphereSpec:
    """vCenter's address and how to verify it, from VKP_VSPHERE_* alone (no spec at hand)."""
    server = env.get("VKP_VSPHERE_SERVER")
    if not server:
        raise SettingsMissing(
            [("VKP_VSPHERE_SERVER", f"not set, {why}")],
            hint="set VKP_VSPHERE_SERVER, VKP_VSPHERE_USER, VKP_VSPHERE_PASSWORD and VKP_VSPHERE_THUMBPRINT",
        )
    host, port = split_server(server)
    return VSphereSpec(
        server=host,
        port=port,
        tls=TLS(
            thumbprint=env.get("VKP_VSPHERE_THUMBPRINT") or None,
            ca_file=env.get("VKP_VSPHERE_CA_FILE") or None,
            insecure=env.get("VKP_VSPHERE_INSECURE", "").lower() in ("1", "true", "yes"),
        ),
    )


def login(vs: VSphereSpec, env: Mapping[str, str] | None = None) -> Session:
    """The one way from vCenter settings to a session: credentials from the environment
    variables the settings name (or a prompt on a terminal, asked once per run), TLS verified
    as the settings say."""
    env = os.environ if env is None else env
    assert vs.server is not None  # validate() and vsphere_from_env() require it
    user = env.get(vs.credentials.user_env)
    password = env.get(vs.credentials.password_env)
    if (not user or not password) and vs.server in _prompted:
        user, password = user or _prompted[vs.server][0], password or _prompted[vs.server][1]
    if not user or not password:
        output = current_output()
        if not sys.stdin.isatty() or (output is not None and structured(output)):
            # Nothing was tried, so this is a missing setting (exit 3), not a refusal by vCenter.
            # With -o json/yaml a program reads the output: it gets an error naming what to set.
            why = f"with -o {output} vkp does not prompt" if sys.stdin.isatty() else "no terminal to ask on"
            missing = [(vs.credentials.user_env, user), (vs.credentials.password_env, password)]
            raise SettingsMissing(
                [(var, f"not set ({why}): export it for vCenter {vs.server}") for var, v in missing if not v],
                hint='for the embedded lab: eval "$(vkp lab env)"',
            )
        # Prompts go to stderr: stdout carries the one JSON document of -o json. A live view
        # (a resize's second session) would draw over them.
        with view.paused():
            if not user:
                sys.stderr.write(f"vCenter user for {vs.server}: ")
                sys.stderr.flush()
                user = sys.stdin.readline().strip()
            password = password or getpass.getpass(f"password for {user}@{vs.server}: ", stream=sys.stderr)
        _prompted[vs.server] = (user, password)
    return connect(
        join_server(vs.server, vs.port),
        user,
        password,
        thumbprint=vs.tls.thumbprint,
        ca_file=vs.tls.ca_file,
        insecure=vs.tls.insecure,
    )
