"""Read a VM's guestinfo cloud-init data the way cloud-init's VMware datasource does (pure).

A real VM's cloud-init reads guestinfo.metadata / guestinfo.userdata (and their .encoding
keys) from VMware Tools; the lab's guests have no Tools, so the hypervisor bridge turns the
same keys into a NoCloud seed. Kept pure and beside the code that writes the keys, so the lab
reads exactly what the provisioner wrote, and the census (describe-cluster from vCenter) reads
a never-booted VM's address from the same data.
"""

from __future__ import annotations

import base64
import gzip
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

import yaml


class GuestinfoError(ValueError):
    pass


def decode(value: str, encoding: str | None) -> str:
    """Decode a guestinfo value; the encodings are the ones cloud-init's VMware datasource accepts."""
    enc = (encoding or "").strip().lower()
    try:
        if enc in ("", "none"):
            return value
        if enc in ("base64", "b64"):
            return base64.b64decode(value, validate=True).decode()
        if enc in ("gzip+base64", "gz+b64"):
            return gzip.decompress(base64.b64decode(value, validate=True)).decode()
    except (ValueError, OSError) as exc:
        raise GuestinfoError(f"cannot decode {enc}-encoded guestinfo value: {exc}") from exc
    raise GuestinfoError(f"unknown guestinfo encoding {encoding!r} (use base64 or gzip+base64)")


@dataclass(frozen=True)
class CloudInitData:
    instance_id: str
    hostname: str | None
    user_data: str
    network: dict[str, Any] | None  # cloud-init network config as the VM would receive it

    def static_addresses(self) -> list[str]:
        """Addresses (without prefix) the network config assigns statically, in order."""
        out: list[str] = []
        if not self.network:
            return out
        cfg = self.network.get("network", self.network)
        for eth in (cfg.get("ethernets") or {}).values():
            for addr in eth.get("addresses") or []:
                out.append(str(ipaddress.ip_interface(addr).ip))
        return out


def parse(extra_config: dict[str, str], default_instance_id: str) -> CloudInitData | None:
    """The cloud-init data in a VM's extraConfig, or None when the VM carries none."""
    if "guestinfo.metadata" not in extra_config and "guestinfo.userdata" not in extra_config:
        return None
    meta_text = decode(
        extra_config.get("guestinfo.metadata", ""), extra_config.get("guestinfo.metadata.encoding")
    )
    try:
        meta = yaml.safe_load(meta_text) if meta_text.strip() else {}
    except yaml.YAMLError as exc:
        raise GuestinfoError(f"guestinfo.metadata is neither JSON nor YAML: {exc}") from exc
    if not isinstance(meta, dict):
        raise GuestinfoError("guestinfo.metadata must be a mapping")
    network = meta.get("network")
    if isinstance(network, str):
        # cloud-init allows the network config to be encoded inside the metadata.
        network = yaml.safe_load(decode(network, meta.get("network.encoding")))
    if network is not None and not isinstance(network, dict):
        raise GuestinfoError("guestinfo.metadata network must be a mapping")
    user_data = decode(
        extra_config.get("guestinfo.userdata", ""), extra_config.get("guestinfo.userdata.encoding")
    )
    hostname = meta.get("local-hostname") or meta.get("local_hostname") or meta.get("hostname")
    return CloudInitData(
        instance_id=str(meta.get("instance-id") or meta.get("instance_id") or default_instance_id),
        hostname=str(hostname) if hostname else None,
        user_data=user_data,
        network=network,
    )


def static_network(address: str, prefix: int, gateway: str) -> dict[str, Any]:
    """Network config for a VM customized with a fixed IP (CustomizeVM_Task) instead of cloud-init."""
    return {
        "version": 2,
        "ethernets": {
            "eth0": {"addresses": [f"{address}/{prefix}"], "routes": [{"to": "0.0.0.0/0", "via": gateway}]}
        },
    }


def meta_data_document(data: CloudInitData) -> str:
    meta: dict[str, Any] = {"instance-id": data.instance_id}
    if data.hostname:
        meta["local-hostname"] = data.hostname
    return json.dumps(meta, indent=2) + "\n"
