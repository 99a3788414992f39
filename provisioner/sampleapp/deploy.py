"""`vkp sample-app deploy` / `delete`: the sample app's manifests applied to a cluster, from here.

Everything goes through vkp's own API client (provisioner/bootstrap/kube_api.py) with a
short-lived certificate from the cluster's CA, so neither kubectl nor a kubeconfig is needed.
The manifests are server-side applied: a second deploy changes only what differs (an image
repository), and the UI Service keeps the NodePort it was given.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import yaml

from provisioner import stop
from provisioner.bootstrap import kube_api
from provisioner.bootstrap.pki import load_pki
from provisioner.bootstrap.render import render
from provisioner.errors import ArtifactError, ProvisionerError, Timeout
from provisioner.plan import make_plan
from provisioner.sampleapp import LAB_REPOSITORY, NAMESPACE, image_refs
from provisioner.spec import spec_from_dict
from provisioner.state import ClusterState

Log = Callable[[str], None]

TEMPLATE = "sample-app/manifests.yaml.j2"
API_REPLICAS = 2
ROLLOUT_TIMEOUT = 300.0  # images are on the nodes or pulled: a minute is plenty, a slow pull more
DELETE_TIMEOUT = 180.0
REACH_TIMEOUT = 30.0
POLL = 2.0
DEPLOYMENTS = ("redis", "api", "ui")
_PLURALS = {"Namespace": "namespaces", "Service": "services", "Deployment": "deployments"}
# A registry host (with an optional port) and path, as an image reference spells them; no tag.
REPOSITORY_RE = re.compile(
    r"^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$"
)
# Waiting reasons that mean the image cannot be had: waiting longer changes nothing.
# (ErrImagePull comes first and may pass; kubelet says ImagePullBackOff once it has failed.)
IMAGE_REASONS = ("ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")
CRASH_REASONS = (
    "CrashLoopBackOff", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"
)  # fmt: skip


class SampleAppError(ProvisionerError):
    """The sample app could not be deployed or deleted (the cluster is not ready, a pod fails)."""


def check_repository(value: str) -> str:
    """The repository without a trailing slash; ValueError saying what is wrong."""
    repo = value.strip().rstrip("/")
    if "://" in repo:
        raise ValueError(f"{value!r} has a scheme: give the registry host and path only "
                         "(registry.example.com/vkp-sample)")  # fmt: skip
    if not REPOSITORY_RE.match(repo):
        raise ValueError(f"{value!r} is not an image repository (host[:port]/path, lower-case path, "
                         "no tag): e.g. registry.example.com/vkp-sample")  # fmt: skip
    return repo


def manifests(repository: str = LAB_REPOSITORY, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The app's objects, in the order they are applied (the namespace, Services, Deployments)."""
    refs = image_refs(repository)
    text = render(TEMPLATE, namespace=namespace, app_image=refs["app"], redis_image=refs["redis"],
                  api_replicas=API_REPLICAS)  # fmt: skip
    return [d for d in yaml.safe_load_all(text) if d]


def object_path(obj: dict[str, Any]) -> str:
    """The API path of obj (its own URL, for apply and delete)."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    meta = obj["metadata"]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    ns = f"/namespaces/{meta['namespace']}" if meta.get("namespace") else ""
    return f"{base}{ns}/{_PLURALS[kind]}/{meta['name']}"


def _cluster_api(name: str) -> tuple[ClusterState, kube_api.KubeAPI]:
    st = ClusterState.load(name)
    phase = st.phase("kubernetes")
    if phase is None or phase.status != "done":
        status = "has not run" if phase is None else f"is {phase.status}"
        raise SampleAppError(
            f"cluster {name}'s kubernetes phase {status}: there is no Kubernetes API to deploy to yet",
            hint=f"finish the cluster first: vkp create-cluster {name} ... (it resumes where it stopped)",
        )
    spec = spec_from_dict(st.load_spec_dict())
    return st, kube_api.client(load_pki(st), make_plan(spec).api_endpoint.url)


def node_addresses(st: ClusterState) -> list[str]:
    """Every Kubernetes node's address, workers first: a NodePort answers on each of them."""
    order = {"worker": 0, "master": 1}
    nodes = sorted((n for n in st.nodes.values() if n.role in order and n.address),
                   key=lambda n: (order[n.role], n.name))  # fmt: skip
    return [str(n.address) for n in nodes]


def _wait_namespace_gone(api: kube_api.KubeAPI, namespace: str, timeout: float, log: Log) -> float:
    started = time.monotonic()
    deadline = started + timeout
    said = False
    while True:
        ns = api.find(f"/api/v1/namespaces/{namespace}")
        if ns is None:
            return time.monotonic() - started
        if not said:
            log(f"waiting for namespace {namespace} to be gone (its pods stop first)")
            said = True
        if time.monotonic() > deadline:
            left = ns.get("status", {}).get("conditions") or ns.get("status", {}).get("phase")
            raise Timeout(
                f"namespace {namespace} was still there after {timeout:.0f}s ({left})",
                hint=f"see what holds it: kubectl get all -n {namespace}; then run the command again",
            )
        stop.sleep(POLL, f"namespace {namespace} to be gone")


def pod_problems(pods: dict[str, Any]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(images that cannot be had: (pod, image, what kubelet said), other failing containers)."""
    images: list[tuple[str, str, str]] = []
    failing: list[str] = []
    for pod in pods.get("items", []):
        name = pod["metadata"]["name"]
        specs = {c["name"]: c.get("image", "?") for c in pod.get("spec", {}).get("containers", [])}
        for c in pod.get("status", {}).get("containerStatuses") or []:
            waiting = (c.get("state") or {}).get("waiting") or {}
            reason, message = waiting.get("reason", ""), waiting.get("message", "")
            if reason in IMAGE_REASONS:
                images.append((name, specs.get(c["name"], c.get("image", "?")), message or reason))
            elif reason in CRASH_REASONS:
                last = (c.get("lastState") or {}).get("terminated") or {}
                why = last.get("message") or last.get("reason") or message
                failing.append(f"pod {name}, container {c['name']}: {reason}" + (f" ({why})" if why else ""))
    return images, failing


def rollout_status(deployments: dict[str, Any]) -> dict[str, tuple[int, int, bool]]:
    """{deployment: (ready pods of its current spec, replicas wanted, rollout complete)}, complete
    as `kubectl rollout status` has it: the spec seen, every replica updated and available, and
    no old pod left."""
    out = {}
    for d in deployments.get("items", []):
        spec, status = d.get("spec", {}), d.get("status", {})
        wanted = int(spec.get("replicas", 1))
        updated = int(status.get("updatedReplicas") or 0)
        available = int(status.get("availableReplicas") or 0)
        seen = int(status.get("observedGeneration") or 0) >= int(d["metadata"].get("generation") or 0)
        replicas = int(status.get("replicas") or 0)
        complete = seen and updated == wanted and replicas == wanted and available >= wanted
        out[d["metadata"]["name"]] = (min(updated, available), wanted, complete)
    return out


def _text(status: dict[str, tuple[int, int, bool]]) -> dict[str, str]:
    return {n: (f"{status[n][0]}/{status[n][1]}" if n in status else "0/?") for n in DEPLOYMENTS}


def wait_rollout(
    api: kube_api.KubeAPI, namespace: str, repository: str, timeout: float, log: Log
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while True:
        status = rollout_status(api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments"))
        text = _text(status)
        if text != last:
            log("rollout: " + ", ".join(f"{n} {t}" for n, t in text.items()))
            last = text
        if all(n in status and status[n][2] for n in DEPLOYMENTS):
            return text
        images, failing = pod_problems(api.get(f"/api/v1/namespaces/{namespace}/pods"))
        if images:
            raise image_error(images, repository)
        if failing:
            raise SampleAppError(
                "the sample app's pods fail to start:\n  " + "\n  ".join(failing),
                hint=f"their logs: kubectl -n {namespace} logs POD --previous",
            )
        if time.monotonic() > deadline:
            raise Timeout(
                f"the sample app was not ready after {timeout:.0f}s: "
                + ", ".join(f"{n} {t} ready" for n, t in text.items()),
                hint=f"see why: kubectl -n {namespace} describe pods",
            )
        stop.sleep(POLL, "the sample app's rollout")


def image_error(images: list[tuple[str, str, str]], repository: str) -> ArtifactError:
    names = sorted({image for _, image, _ in images})
    pod, image, said = images[0]
    if repository == LAB_REPOSITORY:
        hint = ("the embedded lab's nodes import these images when the cluster is created: run "
                "`vkp lab prepare`, then `vkp create-cluster` again for the cluster (it imports what is "
                "new); on a real site push the images to your registry and pass "
                "--image-repository REGISTRY/PATH")  # fmt: skip
    else:
        hint = (f"push the images under {repository} (the lab's image tarballs hold them: "
                "see `vkp sample-app deploy --help`), make the nodes able to pull from it, or pass "
                "another --image-repository")  # fmt: skip
    return ArtifactError(
        f"the nodes cannot get the sample app's image(s) {', '.join(names)}, and no registry serves "
        f"them: pod {pod}: {said} (image {image})",
        hint=hint,
    )


def _reachable(url: str, timeout: float) -> str | None:
    """None when url/healthz answers within timeout, else what went wrong last."""
    deadline = time.monotonic() + timeout
    problem = "not tried"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=5) as resp:
                if resp.status == 200:
                    return None
                problem = f"HTTP {resp.status}"
        except (OSError, urllib.error.URLError) as exc:
            problem = str(getattr(exc, "reason", exc))
        stop.sleep(1.0, f"{url} to answer")
    return problem


def deploy(name: str, *, repository: str = LAB_REPOSITORY, log: Log,
           timeout: float = ROLLOUT_TIMEOUT, check_reachable: bool = True) -> dict[str, Any]:  # fmt: skip
    """Apply the sample app to cluster name, wait until it is ready, and say where its UI is."""
    started = time.monotonic()
    st, api = _cluster_api(name)
    existing = api.find(f"/api/v1/namespaces/{NAMESPACE}")
    if existing is not None and existing.get("status", {}).get("phase") == "Terminating":
        _wait_namespace_gone(api, NAMESPACE, DELETE_TIMEOUT, log)
    objects = manifests(repository)
    for obj in objects:
        api.apply(object_path(obj), obj)
    log(f"applied {len(objects)} objects in namespace {NAMESPACE} (images from {repository})")
    status = wait_rollout(api, NAMESPACE, repository, timeout, log)
    service = api.get(f"/api/v1/namespaces/{NAMESPACE}/services/ui")
    node_port = int(service["spec"]["ports"][0]["nodePort"])
    addresses = node_addresses(st)
    urls = [f"http://{a}:{node_port}/" for a in addresses]
    warnings: list[str] = []
    if not urls:
        warnings.append(f"cluster {name} has no node with a known address: the UI is on NodePort {node_port}")
    elif check_reachable:
        problem = _reachable(urls[0], REACH_TIMEOUT)
        if problem is not None:
            warnings.append(
                f"{urls[0]} did not answer from this machine ({problem}): the NodePort {node_port} "
                "may be closed by a firewall between here and the nodes"
            )
    return {
        "cluster": name,
        "namespace": NAMESPACE,
        "url": urls[0] if urls else None,
        "urls": urls,
        "node_port": node_port,
        "images": image_refs(repository),
        "deployments": status,
        "warnings": warnings,
        "seconds": round(time.monotonic() - started, 1),
    }


def delete(name: str, *, log: Log, timeout: float = DELETE_TIMEOUT) -> dict[str, Any]:
    """Delete the sample app's namespace from cluster name and wait until it is gone."""
    _st, api = _cluster_api(name)
    deleted = api.delete(f"/api/v1/namespaces/{NAMESPACE}")
    seconds = 0.0
    if deleted:
        log(f"deleting namespace {NAMESPACE}")
        seconds = _wait_namespace_gone(api, NAMESPACE, timeout, log)
    return {"cluster": name, "namespace": NAMESPACE, "deleted": deleted, "seconds": round(seconds, 1)}
