"""`vkp completion bash|zsh|fish`: the shell's completion script.

The script is click's own (click.shell_completion): on Tab the shell runs vkp again with
_VKP_COMPLETE set and the words typed so far, and vkp answers with the candidates. The values
behind cluster, node and plan names are in completers.py.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from provisioner.cli.root import main
from provisioner.cli_common import OUTPUT_OPTION, run
from provisioner.output import emit, structured

SHELLS = ("bash", "zsh", "fish")
PROG_NAME = "vkp"
COMPLETE_VAR = "_VKP_COMPLETE"

def completion_script(shell: str) -> str:
    """The completion script for shell, for the command `vkp`."""
    cls = get_completion_class(shell)
    if cls is None:  # SHELLS are click's own; a click without one of them is a broken install
        raise click.UsageError(f"click has no completion for {shell}")
    return cls(main, {}, PROG_NAME, COMPLETE_VAR).source()


@main.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@OUTPUT_OPTION
def completion_cmd(shell: str, output: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    It completes commands and options, and the values vkp knows locally: cluster names (the
    NAME of every cluster command, from the state directory, $VKP_STATE_DIR), a cluster's node
    names (`vkp ssh NAME NODE`) and plan names (`--plan`, from the plans file, $VKP_PLANS_FILE).
    Completing never contacts vCenter and never prints an error. The script runs `vkp` itself
    on Tab, so vkp must be on PATH under that name (bash needs 4.4 or later).

    \b
    Install, bash (with the bash-completion package for the directories):
      source <(vkp completion bash)                      # this shell only; or in ~/.bashrc
      vkp completion bash > /etc/bash_completion.d/vkp   # every user (root)
      vkp completion bash > ~/.local/share/bash-completion/completions/vkp
    zsh:
      source <(vkp completion zsh)                       # in ~/.zshrc, after compinit
      vkp completion zsh > "${fpath[1]}/_vkp"            # or any directory on $fpath
    fish:
      vkp completion fish > ~/.config/fish/completions/vkp.fish

    Then open a new shell: `vkp ssh demo <Tab>` lists demo's nodes.
    """
    script = run(lambda: completion_script(shell), output)
    if structured(output):
        emit({"ok": True, "shell": shell, "script": script}, output)
    else:
        click.echo(script, nl=not script.endswith("\n"))
