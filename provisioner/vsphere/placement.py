"""DRS anti-affinity rules that keep a cluster's etcd members, and its masters, on different hosts.

Rules are found by name ("vkp-<cluster>-etcd-<cluster id>", "vkp-<cluster>-master-<id>"), so
a re-run adopts the rules an earlier run made and delete-cluster finds them without local
state. The cluster id in the name keeps two same-named clusters (another team's, in another
folder) from ever touching each other's rules. Rules of anyone else are never touched.
All changes for one call go into one ReconfigureComputeResource_Task: concurrent
reconfigurations of one cluster would race.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyVmomi import vim

from provisioner.errors import Ambiguous
from provisioner.plan import RULE_ROLES
from provisioner.vsphere import specs, vms

ROLES = RULE_ROLES


def rule_names(cluster_name: str, cluster_id: str) -> dict[str, str]:
    """The rule name of each role that gets one."""
    return {role: f"vkp-{cluster_name}-{role}-{cluster_id}" for role in ROLES}


def _our_rules(cluster_obj: Any, cluster_name: str, cluster_id: str) -> dict[str, list[Any]]:
    by_name = {name: role for role, name in rule_names(cluster_name, cluster_id).items()}
    out: dict[str, list[Any]] = {}
    for rule in cluster_obj.configurationEx.rule or []:
        role = by_name.get(rule.name)
        if role is not None:
            out.setdefault(role, []).append(rule)
    return out


def find_rules(cluster_obj: Any, cluster_name: str, cluster_id: str) -> list[Any]:
    """Every rule of ours on the cluster (duplicates from an interrupted run included), by key."""
    rules = [r for group in _our_rules(cluster_obj, cluster_name, cluster_id).values() for r in group]
    return sorted(rules, key=lambda r: r.key)


def rules_by_role(cluster_obj: Any, cluster_name: str, cluster_id: str) -> dict[str, Any]:
    """Our rule of each role that has one.

    Two rules with one of our names raise Ambiguous: which one holds the truth is not ours
    to guess (ensure_rules repairs that by keeping the first and removing the others).
    """
    out = {}
    for role, rules in _our_rules(cluster_obj, cluster_name, cluster_id).items():
        if len(rules) > 1:
            raise Ambiguous("DRS rule", rules[0].name, [f"key {r.key}" for r in rules])
        out[role] = rules[0]
    return out


def _matches(rule: Any, vm_list: Sequence[Any]) -> bool:
    return (
        isinstance(rule, vim.cluster.AntiAffinityRuleSpec)
        and bool(rule.enabled)
        and not rule.mandatory
        and {v._moId for v in rule.vm or []} == {v._moId for v in vm_list}
    )


def ensure_rules(
    cluster_obj: Any, cluster_name: str, cluster_id: str, vms_by_role: Mapping[str, Sequence[Any]]
) -> list[Any]:
    """Make our rules hold exactly the given VMs; return the task doing it ([] when nothing to do).

    Idempotent: a missing rule is added, a rule with another VM set (or disabled, or a
    duplicate left by an interrupted run) is edited or removed, a matching one is left alone.
    A role with fewer than two VMs needs no rule (vCenter refuses one-VM anti-affinity
    rules), so an old rule of ours for it is removed. Roles without a rule (workers) and
    rules of others are ignored.
    """
    existing = _our_rules(cluster_obj, cluster_name, cluster_id)
    names = rule_names(cluster_name, cluster_id)
    rule_specs: list[Any] = []
    for role in ROLES:
        vm_list = list(vms_by_role.get(role) or [])
        rules = existing.get(role, [])
        keep, extra = (rules[0], rules[1:]) if rules else (None, [])
        if len(vm_list) < 2:
            extra = rules
        elif keep is None or not _matches(keep, vm_list):
            edit_of = keep if isinstance(keep, vim.cluster.AntiAffinityRuleSpec) else None
            if keep is not None and edit_of is None:
                extra = rules  # same name but another kind of rule: replace it
            rule_specs += specs.anti_affinity_rule_spec(names[role], vm_list, edit_of).rulesSpec
        rule_specs += [r for e in extra for r in specs.remove_rule_spec(e.key).rulesSpec]
    if not rule_specs:
        return []
    # Removals first: a replacement may reuse the name of a rule being removed.
    rule_specs.sort(key=lambda r: r.operation != vim.option.ArrayUpdateSpec.Operation.remove)
    return [vms.reconfigure_cluster(cluster_obj, vim.cluster.ConfigSpecEx(rulesSpec=rule_specs))]


def remove_rules(cluster_obj: Any, rules: Iterable[Any]) -> list[Any]:
    """Remove rules (as find_rules returned them) from the cluster; return the task ([] when
    none: already gone is success)."""
    rules = list(rules)
    rule_specs = [r for rule in rules for r in specs.remove_rule_spec(rule.key).rulesSpec]
    if not rule_specs:
        return []
    return [vms.reconfigure_cluster(cluster_obj, vim.cluster.ConfigSpecEx(rulesSpec=rule_specs))]
