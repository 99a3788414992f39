"""Values for shell completion: cluster names, a cluster's node names, plan names.

Each is a click shell_complete callback, read from local files only (the state directory, the
plans file): completion runs on every Tab, so it never contacts vCenter, and it never prints:
anything that goes wrong (no state, an unsafe or damaged one, a broken plans file) completes
nothing rather than writing an error into the user's command line.
"""

from __future__ import annotations

import logging
import os

import click
from click.shell_completion import CompletionItem

log = logging.getLogger(__name__)


def complete_cluster(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Clusters with state on this machine (what `vkp list-clusters` shows)."""
    try:
        from provisioner.state import ClusterState

        return [CompletionItem(n) for n in ClusterState.list_all() if n.startswith(incomplete)]
    except Exception:  # noqa: BLE001 - a broken state dir completes nothing
        log.debug("completing cluster names failed", exc_info=True)
        return []


def complete_node(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The nodes of the cluster named earlier on the line (its NAME argument), with role and
    address as the help zsh and fish show."""
    name = ctx.params.get("name")
    if not name:
        return []
    try:
        from provisioner.state import ClusterState

        nodes = ClusterState.load(name).nodes.values()
        return [
            CompletionItem(n.name, help=f"{n.role} {n.address or ''}".strip())
            for n in sorted(nodes, key=lambda n: n.name)
            if n.name.startswith(incomplete)
        ]
    except Exception:  # noqa: BLE001 - an unknown cluster or a broken state dir completes nothing
        log.debug("completing node names of %s failed", name, exc_info=True)
        return []


def complete_plan(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The plans `vkp plans` lists (VKP_PLANS_FILE's when set), with their descriptions."""
    try:
        from provisioner.spec import load_size_presets

        plans = load_size_presets(os.environ.get("VKP_PLANS_FILE") or None)
        matching = (p for p in plans.values() if p.name.startswith(incomplete))
        return [CompletionItem(p.name, help=p.description) for p in matching]
    except Exception:  # noqa: BLE001 - a broken plans file completes nothing
        log.debug("completing plan names failed", exc_info=True)
        return []
