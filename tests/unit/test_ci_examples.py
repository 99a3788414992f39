"""The CI examples in docs/ci: GitLab's runs the very command lines GitHub's does, and every vkp
command line in them parses with vkp's own options (tests/lab/test_ci_example.py runs them)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from provisioner.cli import main

CI = Path(__file__).resolve().parents[2] / "docs" / "ci"


def github() -> tuple[dict[str, str], list[str], list[str]]:
    """(job env, the run blocks of the steps in order, those of the steps that always run)."""
    job = yaml.safe_load((CI / "github-actions.yml").read_text())["jobs"]["cluster"]
    runs = [s for s in job["steps"] if "run" in s]
    main_steps = [s["run"].strip() for s in runs if "if" not in s]
    always = [s["run"].strip() for s in runs if s.get("if") == "always()"]
    assert len(main_steps) + len(always) == len(runs), "a step with another condition"
    return job["env"], main_steps, always


def gitlab() -> tuple[dict[str, str], list[str], list[str]]:
    job = yaml.safe_load((CI / "gitlab-ci.yml").read_text())["vkp-lab-cluster"]
    return job["variables"], [s.strip() for s in job["script"]], [s.strip() for s in job["after_script"]]


def test_gitlab_runs_the_same_commands_as_github() -> None:
    gh_env, gh_steps, gh_always = github()
    gl_env, gl_steps, gl_always = gitlab()
    assert gl_env == gh_env
    assert gl_steps == gh_steps
    assert gl_always == gh_always


def test_the_cluster_is_deleted_even_when_a_step_failed() -> None:
    _env, _steps, always = github()
    assert any('vkp delete-cluster "$NAME" --yes' in block for block in always)


def vkp_lines() -> list[list[str]]:
    env, steps, always = github()
    out = []
    for block in steps + always:
        for line in block.splitlines():
            words = shlex.split(line.replace('"$(', "").replace(')"', ""))
            for i, w in enumerate(words):
                if w.endswith("bin/vkp"):
                    args = words[i + 1 :]
                    if ">" in args:  # a redirection ends vkp's arguments
                        args = args[: args.index(">")]
                    out.append([a.replace("$NAME", env["NAME"]) for a in args])
    return out


def parse(args: list[str]) -> click.Context:
    """args parsed by the vkp command they name, as the shell would hand them over: an unknown
    option, a bad choice or a missing argument raises click's UsageError."""
    ctx: Any = main.make_context("vkp", [], resilient_parsing=True)
    cmd: click.Command = main
    rest = list(args)
    while isinstance(cmd, click.Group):
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"vkp has no command {name!r} ({args})"
        cmd = sub
    return cmd.make_context(cmd.name or "", rest, parent=ctx)


def test_every_vkp_command_line_parses() -> None:
    lines = vkp_lines()
    assert [a[:2] for a in lines[:3]] == [["lab", "prepare"], ["lab", "up"], ["lab", "env"]]
    for args in lines:
        parse(args)
    create = next(a for a in lines if a[0] == "create-cluster")
    ctx = parse(create)
    # The cheapest cluster that runs Kubernetes: the example costs minutes in every pipeline.
    assert ctx.params["plan_name"] == "dev" and ctx.params["up_to"] == "kubernetes"
    assert ctx.params["output"] == "json"


def test_the_check_itself_catches_an_invented_option() -> None:
    with pytest.raises(click.UsageError):
        parse(["create-cluster", "ci", "--plan", "dev", "--no-such-option"])
