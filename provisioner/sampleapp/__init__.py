"""vkp's sample app: a restaurant-rating web UI, a JSON API and redis, for a cluster's first test.

The UI and API are a few files of Python on its standard library (app/); the store is Debian's
redis-server. The embedded lab builds their two images from Debian packages, as it builds
Kubernetes' own (provisioner/lab/appimages.py), and its nodes import them; a real site pushes
the same images to a registry of its own and names it with --image-repository.
"""

from __future__ import annotations

from pathlib import Path

NAMESPACE = "vkp-sample"
VERSION = "0.1"
# The lab's names for the images: nothing serves them, the nodes have them from their import.
LAB_REPOSITORY = "vkp.local/sample-app"
APP_SOURCE = Path(__file__).resolve().parent / "app"
APP_FILES = ("api.py", "ui.py")  # copied into the app image's /app


def image_refs(repository: str = LAB_REPOSITORY) -> dict[str, str]:
    """{"app": the UI's and API's image, "redis": the store's}, under repository."""
    repo = repository.rstrip("/")
    return {"app": f"{repo}/app:{VERSION}", "redis": f"{repo}/redis:{VERSION}"}
