"""A kubeadm bootstrap token, made by vkp for one run: the value every join needs.

It lives only in this process's memory (on the run's engine.Cluster), is handed out only as a
Secret (masked in every command and log line), and expires after TOKEN_TTL.
"""

from __future__ import annotations

import datetime as dt
import secrets
import string
from typing import Any

from provisioner.ssh.commands import MASK, Secret

TOKEN_TTL = dt.timedelta(minutes=30)
_ALPHABET = string.ascii_lowercase + string.digits


class BootstrapToken:
    """A kubeadm bootstrap token ([a-z0-9]{6}.[a-z0-9]{16}); only ever handed out as a Secret."""

    def __init__(self, ttl: dt.timedelta = TOKEN_TTL) -> None:
        self._id = "".join(secrets.choice(_ALPHABET) for _ in range(6))
        self._secret = "".join(secrets.choice(_ALPHABET) for _ in range(16))
        self.expires = dt.datetime.now(dt.UTC) + ttl
        self.ttl = ttl
        self.created = False  # exists in the cluster (made by init or by ensure_token)

    @property
    def value(self) -> Secret:
        return Secret(f"{self._id}.{self._secret}")

    def remaining(self) -> dt.timedelta:
        return self.expires - dt.datetime.now(dt.UTC)

    def scrub(self, text: str) -> str:
        """text with the token, its secret half and its id masked (for error output)."""
        for part in (f"{self._id}.{self._secret}", self._secret, self._id):
            text = text.replace(part, MASK)
        return text

    def secret_object(self) -> dict[str, Any]:
        """The Secret `kubeadm token create` makes (bootstrap.kubernetes.io/token)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{self._id}", "namespace": "kube-system"},
            "stringData": {
                "description": "vkp: nodes joining during this run",
                "token-id": self._id,
                "token-secret": self._secret,
                "expiration": self.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            },
        }

    def __repr__(self) -> str:
        return f"BootstrapToken({MASK}, expires {self.expires:%H:%M:%S}Z)"
