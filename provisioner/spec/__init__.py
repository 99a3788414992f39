"""The cluster spec: what a user asks for, merged from a plan, site defaults, a YAML file and the
environment.

Everything here is pure (no network, no vSphere): a spec is loaded and validated before any
call is made, and every problem is reported at once with its field path and what to do.

Merge order, later wins: plan defaults <- site defaults <- spec file <- explicit name/plan
arguments. Environment variables (VKP_VSPHERE_*, VKP_NETWORK_*, VKP_API_ENDPOINT,
VKP_K8S_ARTIFACTS) then fill vsphere, network and artifact settings still unset, so `vkp
create-cluster NAME --plan small` works from the environment alone. Credentials are never part
of the spec: it records only the names of the environment variables to read at connect time.

Site defaults: VKP_SITE_DEFAULTS names a YAML file with the spec's schema (any sections, but no
name), for settings a platform team sets once for every cluster (a Kubernetes version, node
settings, pod and service ranges, a mirror). Its values sit under the spec file's section by
section and field by field: a value the spec file sets (not null) wins, lists are replaced
whole. Relative paths in it are relative to its own directory, and a problem in a value it
supplied names the file. A saved spec (spec_from_dict) is already merged and reads neither.

The package: schema (the dataclasses and constants); values (showing and parsing what the
user wrote); loading (load_spec, the plans file, building the spec) over yamlfile (the hardened
YAML reader), reader (the typed reader), sources (site defaults and the environment) and
migrations (old spellings, relative paths); checks (validate, the cluster's own settings) over
checks_vsphere, checks_network and checks_kubernetes. Import from provisioner.spec itself.
"""

from __future__ import annotations

from provisioner.spec.checks import node_name, validate
from provisioner.spec.checks_kubernetes import k8s_version_problem
from provisioner.spec.loading import (
    load_size_presets,
    load_spec,
    spec_from_dict,
)
from provisioner.spec.schema import (
    API_MODES,
    CGROUP_DRIVERS,
    CNIS,
    DEFAULT_CNI_PLUGINS_VERSION,
    DEFAULT_ETCD_VERSION,
    DEFAULT_IMAGE_REPOSITORY,
    DEFAULT_K8S_VERSION,
    DEFAULT_PLANS_FILE,
    DNS_ADDONS,
    ENV_FOR,
    ENV_SETTINGS,
    ETCD_PACKAGE,
    HOSTNAME_MAX,
    K8S_MINORS,
    K8S_SUPPORTED_FROM,
    KEY_TYPES,
    KUBEADM_IMAGES,
    LIMITS,
    PLANS_FILE_ENV,
    ROLE_MINIMUMS,
    ROLES,
    RSA_SIZES,
    SITE_DEFAULTS_ENV,
    TLS,
    VIRTUAL_MODES,
    AddressRange,
    ApiEndpointSpec,
    ArtifactsSpec,
    ClusterSpec,
    Credentials,
    EtcdSpec,
    IPAddress,
    IPNetwork,
    KubeadmImages,
    KubernetesSpec,
    Limit,
    NetworkSpec,
    NodeSettingsSpec,
    PKISpec,
    PlacementSpec,
    RoleSpec,
    Size,
    SizePreset,
    SSHSpec,
    Topology,
    VSphereSpec,
    k8s_minor,
)
from provisioner.spec.values import normalize_thumbprint

__all__ = [
    "API_MODES",
    "VIRTUAL_MODES",
    "AddressRange",
    "ApiEndpointSpec",
    "ArtifactsSpec",
    "CGROUP_DRIVERS",
    "CNIS",
    "ClusterSpec",
    "Credentials",
    "DEFAULT_CNI_PLUGINS_VERSION",
    "DEFAULT_ETCD_VERSION",
    "DEFAULT_IMAGE_REPOSITORY",
    "DEFAULT_K8S_VERSION",
    "DEFAULT_PLANS_FILE",
    "DNS_ADDONS",
    "ENV_FOR",
    "ENV_SETTINGS",
    "ETCD_PACKAGE",
    "EtcdSpec",
    "HOSTNAME_MAX",
    "IPAddress",
    "IPNetwork",
    "K8S_MINORS",
    "K8S_SUPPORTED_FROM",
    "KEY_TYPES",
    "KUBEADM_IMAGES",
    "KubeadmImages",
    "KubernetesSpec",
    "LIMITS",
    "Limit",
    "NetworkSpec",
    "NodeSettingsSpec",
    "PKISpec",
    "PLANS_FILE_ENV",
    "PlacementSpec",
    "SizePreset",
    "ROLES",
    "ROLE_MINIMUMS",
    "RSA_SIZES",
    "RoleSpec",
    "SITE_DEFAULTS_ENV",
    "SSHSpec",
    "Size",
    "TLS",
    "Topology",
    "VSphereSpec",
    "k8s_minor",
    "k8s_version_problem",
    "load_size_presets",
    "load_spec",
    "node_name",
    "normalize_thumbprint",
    "spec_from_dict",
    "validate",
]
