import base64
import gzip
import json

import pytest
import yaml

from provisioner.vsphere import guestinfo


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


NET = {
    "version": 2,
    "ethernets": {
        "id0": {
            "match": {"macaddress": "00:50:56:aa:bb:cc"},
            "set-name": "eth0",
            "addresses": ["198.18.0.21/24"],
            "gateway4": "198.18.0.1",
        }
    },
}


def test_base64_metadata_with_network_and_userdata():
    meta = {"instance-id": "vm-42", "local-hostname": "demo-etcd-1", "network": NET}
    ec = {
        "guestinfo.metadata": b64(json.dumps(meta)),
        "guestinfo.metadata.encoding": "base64",
        "guestinfo.userdata": b64("#cloud-config\nusers: []\n"),
        "guestinfo.userdata.encoding": "base64",
    }
    data = guestinfo.parse(ec, "fallback")
    assert data is not None
    assert data.instance_id == "vm-42"
    assert data.hostname == "demo-etcd-1"
    assert data.user_data.startswith("#cloud-config")
    assert data.static_addresses() == ["198.18.0.21"]
    assert json.loads(guestinfo.meta_data_document(data)) == {
        "instance-id": "vm-42",
        "local-hostname": "demo-etcd-1",
    }


def test_gzip_encoding_and_network_encoded_inside_metadata():
    net_b64 = b64(yaml.safe_dump(NET))
    meta = yaml.safe_dump({"local-hostname": "w1", "network": net_b64, "network.encoding": "base64"})
    ec = {
        "guestinfo.metadata": base64.b64encode(gzip.compress(meta.encode())).decode(),
        "guestinfo.metadata.encoding": "gzip+base64",
    }
    data = guestinfo.parse(ec, "vm-7")
    assert data is not None
    assert data.instance_id == "vm-7"  # falls back to the VM's id
    assert data.static_addresses() == ["198.18.0.21"]
    assert data.user_data == ""


def test_vm_without_cloud_init_data():
    assert guestinfo.parse({"other.key": "x"}, "vm-1") is None


@pytest.mark.parametrize(
    "ec, message",
    [
        ({"guestinfo.metadata": "x", "guestinfo.metadata.encoding": "rot13"}, "unknown guestinfo encoding"),
        ({"guestinfo.metadata": "%%%", "guestinfo.metadata.encoding": "base64"}, "cannot decode"),
        ({"guestinfo.metadata": "- a\n- b\n"}, "must be a mapping"),
    ],
)
def test_bad_guestinfo_is_reported(ec, message):
    with pytest.raises(guestinfo.GuestinfoError, match=message):
        guestinfo.parse(ec, "vm-1")


def test_customization_network():
    net = guestinfo.static_network("198.18.0.30", 24, "198.18.0.1")
    assert net["ethernets"]["eth0"]["addresses"] == ["198.18.0.30/24"]
