"""`vkp lab ...`: the embedded lab's commands."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """The embedded lab: a vCenter simulator whose VMs boot as real Linux guests.

    \b
    Example:
      vkp lab up --hosts 3
      eval "$(vkp lab env)"
      vkp lab status
      vkp lab down
    """
