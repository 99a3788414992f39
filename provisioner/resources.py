"""The files vkp ships inside its package: templates, playbooks, plans and sample specs.

They are looked up through importlib.resources, so a wheel, a pipx install and a checkout find
them the same way. vkp is installed unzipped (a wheel always is), so each has a real path that
Jinja's loader and error messages can use. The repository's top-level templates/, playbooks/ and
inventory/ are links to these directories.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _path(*parts: str) -> Path:
    return Path(str(files("provisioner").joinpath(*parts)))


TEMPLATES = _path("templates")
PLAYBOOKS = _path("playbooks")
PLANS = _path("inventory", "plans.yaml")
SAMPLE_SPEC = _path("inventory", "sample", "cluster.yaml")
LAB_SPEC = _path("inventory", "lab.yaml")


def playbook(name: str) -> Path:
    """playbooks/<name>.yaml of the package."""
    return PLAYBOOKS / f"{name}.yaml"
