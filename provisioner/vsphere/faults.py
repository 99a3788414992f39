"""vCenter's faults as vkp's errors: the fault's own words, and for NoPermission the privilege.

Tasks that fail are turned into TasksFailed where they are waited on (waits.py); this is for
the faults vCenter raises on the call itself, before any task starts. Most missing privileges
arrive that way, since vCenter checks them first.
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from provisioner.errors import AuthError, ProvisionerError, VSphereError

PRIVILEGES_DOC = "docs/vcenter-privileges.md"


def fault_text(fault: Any) -> str:
    """vCenter's fault type and message, e.g. "vim.fault.DuplicateName: The name 'x' already exists."."""
    # pyVmomi names fault classes "vim.fault.X" / "vmodl.fault.X": the name to look up in
    # the API reference. msg carries the LocalizedMethodFault's localizedMessage.
    kind = type(fault).__name__
    msg = getattr(fault, "msg", None) or ""
    return f"{kind}: {msg}" if msg else kind


def _object_name(obj: Any) -> str:
    moid = getattr(obj, "_moId", None)
    kind = type(obj).__name__.rsplit(".", 1)[-1] if obj is not None else ""
    return f"{kind} {moid}" if moid else "an object"


def as_error(exc: BaseException) -> ProvisionerError | None:
    """The ProvisionerError for a vCenter fault raised by a call; None for anything else."""
    # NotAuthenticated is a kind of NoPermission in the API: it must be looked at first.
    if isinstance(exc, vim.fault.NotAuthenticated):
        return AuthError(
            "vCenter ended the session: " + fault_text(exc),
            hint="re-run to log in again; if it repeats, check vCenter's session timeout and the "
            "user's lockout policy",
        )
    if isinstance(exc, vim.fault.NoPermission):
        privilege = getattr(exc, "privilegeId", None) or "a privilege"
        return VSphereError(
            f"vCenter refused the call: the user lacks {privilege} on {_object_name(exc.object)}",
            hint=f"grant {privilege} to vkp's role on that object or a parent, with propagation "
            f"(every privilege vkp uses: {PRIVILEGES_DOC}); a re-run resumes where this stopped",
        )
    if isinstance(exc, vmodl.MethodFault):
        return VSphereError(
            f"vCenter refused a call: {fault_text(exc)}", hint="the run log has the whole fault"
        )
    return None
