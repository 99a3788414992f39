"""The typed reader: raw YAML values into typed ones, field by field, collecting every problem
(with its field path) instead of stopping at the first. Unknown keys get a "did you mean", and
credentials put in the spec are refused."""

from __future__ import annotations

import difflib
from typing import Any

from provisioner.spec.values import key_text, parse_int, show, text_problem


class _Reader:
    """Reads raw YAML into typed values, collecting problems instead of stopping at the first."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.problems: list[tuple[str, str]] = []
        self.unknown: list[str] = []  # fields left without a value because of another problem

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    @staticmethod
    def join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def check_keys(self, d: dict[str, Any], path: str, allowed: set[str]) -> None:
        for k in d:
            if k in allowed:
                continue
            kp = self.join(path, key_text(k))
            if isinstance(k, str) and k.lower() in _CREDENTIAL_KEYS:
                self.add(
                    kp,
                    "credentials never go in the spec: export VKP_VSPHERE_USER and VKP_VSPHERE_PASSWORD "
                    "(`vkp lab env` does for the lab), or name other variables in "
                    "vsphere.credentials.user_env / password_env",
                )
                continue
            close = difflib.get_close_matches(key_text(k), sorted(allowed), n=1, cutoff=0.6)
            hint = (
                f"did you mean {show(close[0])}?"
                if close
                else f"known keys here: {', '.join(sorted(allowed))}"
            )
            self.add(kp, f"unknown key; {hint}")

    def section(self, d: dict[str, Any], key: str, path: str, allowed: set[str]) -> dict[str, Any]:
        value = d.get(key)
        if value is None:
            return {}
        kp = self.join(path, key)
        if not isinstance(value, dict):
            self.add(kp, f"must be a mapping with keys {', '.join(sorted(allowed))}; got {show(value)}")
            return {}
        self.check_keys(value, kp, allowed)
        return value

    def get_str(self, d: dict[str, Any], key: str, path: str, default: str | None = None) -> str | None:
        value = d.get(key)
        if value is None:
            return default
        s = self.text(value, self.join(path, key))
        if s is None:
            return default
        s = s.strip()
        return s if s else default

    def text(self, value: Any, path: str) -> str | None:
        """value as a setting's text (numbers are taken as written), or None with a problem."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.add(path, f"must be a string; got {show(value)}")
            return None
        if isinstance(value, int) and value.bit_length() > 128:
            self.add(path, f"must be a string; got {show(value)}")
            return None
        s = str(value)
        why = text_problem(s)
        if why is not None:
            self.add(path, why)
            return None
        return s

    def get_int(
        self, d: dict[str, Any], key: str, path: str, default: int | None, *, required: bool = False
    ) -> int | None:
        value = d.get(key)
        kp = self.join(path, key)
        if value is None:
            if required and default is None:
                self.add(kp, "required")
            return default
        n = parse_int(value)
        if n is None:
            unit = {"memory_mb": " of MiB, e.g. 4096", "disk_gb": " of GiB, e.g. 40"}.get(key, "")
            self.add(kp, f"must be a whole number{unit}; got {show(value)}")
            return default
        return n

    def get_bool(self, d: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = d.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(self.join(path, key), f"must be true or false; got {show(value)}")
            return default
        return value

    def get_str_list(self, d: dict[str, Any], key: str, path: str) -> tuple[list[str], bool]:
        """(items, was_a_list); a comma-separated string is accepted too."""
        value = d.get(key)
        kp = self.join(path, key)
        if value is None:
            return [], False
        if isinstance(value, str):
            text = self.text(value, kp)
            return ([s.strip() for s in text.split(",") if s.strip()] if text else []), False
        if isinstance(value, list):
            out = []
            for i, item in enumerate(value):
                if isinstance(item, str | int) and not isinstance(item, bool):
                    text = self.text(item, f"{kp}[{i}]")
                    if text is not None:
                        out.append(text.strip())
                else:
                    self.add(f"{kp}[{i}]", f"must be a string; got {show(item)}")
            return out, True
        self.add(kp, f"must be a list (or a comma-separated string); got {show(value)}")
        return [], False


_CREDENTIAL_KEYS = {"user", "username", "password", "pass", "passwd", "secret"}
