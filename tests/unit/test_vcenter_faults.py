"""A fault vCenter raises on the call itself (not in a task) is an error with its exit code,
not an "unexpected error" asking for a bug report: a missing privilege names the privilege."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from pyVmomi import vim, vmodl

from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.errors import ExitCode


def _command(exc: BaseException) -> click.Command:
    @click.command()
    @OUTPUT_OPTION
    def cmd(output: str) -> None:
        def body() -> None:
            raise exc

        run(body, output)

    return cmd


def _no_permission() -> vim.fault.NoPermission:
    return vim.fault.NoPermission(
        privilegeId="VirtualMachine.Provisioning.Clone",
        object=vim.VirtualMachine("vm-42"),
        msg="Permission to perform this operation was denied.",
    )


def test_a_missing_privilege_names_it_and_the_object_and_exits_6() -> None:
    r = CliRunner().invoke(_command(_no_permission()), [])
    assert r.exit_code == ExitCode.VSPHERE, r.output
    assert "VirtualMachine.Provisioning.Clone" in r.output and "vm-42" in r.output
    assert "bug" not in r.output and "Traceback" not in r.output
    assert "vcenter-privileges.md" in r.output


def test_with_json_the_document_says_which_privilege() -> None:
    r = CliRunner().invoke(_command(_no_permission()), ["-o", "json"])
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["exit_code"] == ExitCode.VSPHERE
    assert doc["error"]["type"] == "VSphereError"
    assert "VirtualMachine.Provisioning.Clone" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (vim.fault.InvalidState(msg="The operation is not allowed in the current state."), ExitCode.VSPHERE),
        (vmodl.fault.ManagedObjectNotFound(obj=vim.VirtualMachine("vm-7")), ExitCode.VSPHERE),
        (vim.fault.NotAuthenticated(), ExitCode.AUTH),
    ],
)
def test_other_faults_keep_their_vcenter_name(fault: BaseException, code: int) -> None:
    r = CliRunner().invoke(_command(fault), [])
    assert r.exit_code == code, r.output
    assert type(fault).__name__ in r.output and "bug" not in r.output


def test_an_error_that_is_no_vcenter_fault_is_still_reported_as_unexpected() -> None:
    r = CliRunner().invoke(_command(KeyError("x")), [])
    assert r.exit_code == ExitCode.ERROR and "bug in vkp" in r.output
