"""The lab's network-config translation: a VM's cloud-init network config -> a guest's."""

from __future__ import annotations

import copy

import pytest

from provisioner.errors import LabError
from provisioner.lab.guest import translate_network_config

MAC = "00:50:56:aa:bb:cc"

# What Cluster API vSphere writes into guestinfo for a one-NIC VM.
CAPV_V2 = {
    "version": 2,
    "ethernets": {
        "id0": {
            "match": {"macaddress": MAC},
            "set-name": "eth0",
            "wakeonlan": True,
            "dhcp4": False,
            "addresses": ["198.18.0.50/24"],
            "gateway4": "198.18.0.1",
            "nameservers": {"addresses": ["198.18.0.1"], "search": ["lab.local"]},
        }
    },
}


def test_v2_capv_config_is_keyed_by_the_guest_interface():
    out = translate_network_config(CAPV_V2)
    assert out == {
        "version": 2,
        "ethernets": {
            "eth0": {
                "wakeonlan": True,
                "dhcp4": False,
                "addresses": ["198.18.0.50/24"],
                "gateway4": "198.18.0.1",
                "nameservers": {"addresses": ["198.18.0.1"], "search": ["lab.local"]},
            }
        },
    }


def test_input_is_not_modified():
    before = copy.deepcopy(CAPV_V2)
    translate_network_config(CAPV_V2)
    assert before == CAPV_V2


def test_v2_under_a_network_key_is_accepted():
    out = translate_network_config({"network": CAPV_V2})
    assert list(out["ethernets"]) == ["eth0"]
    assert "match" not in out["ethernets"]["eth0"]


def test_v2_routes_and_renderer_pass_through():
    cfg = copy.deepcopy(CAPV_V2)
    cfg["renderer"] = "networkd"
    cfg["ethernets"]["id0"]["routes"] = [{"to": "0.0.0.0/0", "via": "198.18.0.1"}]
    out = translate_network_config(cfg)
    assert out["renderer"] == "networkd"
    assert out["ethernets"]["eth0"]["routes"] == [{"to": "0.0.0.0/0", "via": "198.18.0.1"}]


def test_v2_several_ethernets_picks_the_guest_mac():
    cfg = copy.deepcopy(CAPV_V2)
    cfg["ethernets"]["id1"] = {"match": {"macaddress": "00:50:56:00:00:01"}, "addresses": ["10.0.0.5/24"]}
    out = translate_network_config(cfg, mac="00:50:56:00:00:01")
    assert out["ethernets"] == {"eth0": {"addresses": ["10.0.0.5/24"]}}
    # MACs compare case-insensitively, as vSphere and cloud-init write them differently.
    out = translate_network_config(cfg, mac=MAC.upper())
    assert out["ethernets"]["eth0"]["addresses"] == ["198.18.0.50/24"]


def test_v2_several_ethernets_without_a_mac_is_an_error():
    cfg = copy.deepcopy(CAPV_V2)
    cfg["ethernets"]["id1"] = {"dhcp4": True}
    with pytest.raises(LabError, match="2 ethernets"):
        translate_network_config(cfg)


def test_v2_bonds_are_refused():
    cfg = copy.deepcopy(CAPV_V2)
    cfg["bonds"] = {"bond0": {"interfaces": ["id0"]}}
    with pytest.raises(LabError, match="bonds"):
        translate_network_config(cfg)


def test_v2_without_ethernets_is_an_error():
    with pytest.raises(LabError, match="ethernets"):
        translate_network_config({"version": 2})


def test_v1_physical_is_renamed_and_loses_its_mac():
    cfg = {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "ens192",
                "mac_address": MAC,
                "subnets": [{"type": "static", "address": "198.18.0.50/24", "gateway": "198.18.0.1"}],
            },
            {"type": "nameserver", "address": ["198.18.0.1"]},
        ],
    }
    out = translate_network_config(cfg)
    assert out == {
        "version": 1,
        "config": [
            {
                "type": "physical",
                "name": "eth0",
                "subnets": [{"type": "static", "address": "198.18.0.50/24", "gateway": "198.18.0.1"}],
            },
            {"type": "nameserver", "address": ["198.18.0.1"]},
        ],
    }


def test_v1_bond_is_refused():
    cfg = {"version": 1, "config": [{"type": "physical", "name": "a"}, {"type": "bond", "name": "b"}]}
    with pytest.raises(LabError, match="bonds"):
        translate_network_config(cfg)


@pytest.mark.parametrize("cfg", [{"version": 3}, {"ethernets": {}}, {}])
def test_unknown_versions_are_refused(cfg):
    with pytest.raises(LabError, match="version"):
        translate_network_config(cfg)


def test_a_non_mapping_is_refused():
    with pytest.raises(LabError, match="mapping"):
        translate_network_config(["version", 2])  # type: ignore[arg-type]


def test_the_image_mirror_comes_from_apt_sources(tmp_path):
    from provisioner.lab.image import DEFAULT_MIRROR, apt_mirror

    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    assert apt_mirror((tmp_path,)) == "http://mirror.example/debian"
    assert apt_mirror((tmp_path / "nowhere",)) == DEFAULT_MIRROR
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert apt_mirror((tmp_path,)) == "http://old.example/debian"


def test_the_recipe_hash_follows_the_recipe_not_the_mirror():
    from provisioner.lab.image import Recipe

    base = Recipe()
    assert Recipe(mirror="http://elsewhere.example/debian").hash() == base.hash()
    assert Recipe(packages=(*base.packages, "vim-tiny")).hash() != base.hash()
