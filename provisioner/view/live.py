"""The live view: the board drawn as a table on stderr with rich, the progress lines above it.

Imported only when a run shows it (rich costs a few hundred milliseconds to import).
"""

from __future__ import annotations

import os

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from provisioner import stop
from provisioner.view import Board, seconds_text, wait_text

_STYLES = {"running": "cyan", "changed": "yellow", "ok": "green", "failed": "bold red", "skipped": "dim"}


class LiveView:
    def __init__(self, board: Board, *, forced: bool = False) -> None:
        self.board = board
        # forced: --progress rich asked for it where stderr is not a terminal (a CI log that
        # renders escape sequences); rich itself drops colour under NO_COLOR.
        self.console = Console(stderr=True, force_terminal=True if forced else None, highlight=False)
        self.live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=4,
            # The recap follows; the table was for watching.
            transient=True,
            # stdout is left alone: it holds the result (or the one -o json document).
            redirect_stdout=False,
            # vkp's warnings and -v lines are written to sys.stderr: shown above the table.
            redirect_stderr=True,
        )

    def start(self) -> None:
        self.live.start()
        # A second Ctrl-C exits at once, past every finally: give the cursor back first.
        stop.before_hard_exit(self._restore)

    def line(self, text: str) -> None:
        self.console.print(Text(text), soft_wrap=True)

    def stop(self) -> None:
        stop.before_hard_exit(None)
        self.live.stop()

    @staticmethod
    def _restore() -> None:
        # Straight to the descriptor: this runs in a signal handler, maybe inside a console write.
        os.write(2, b"\x1b[?25h")

    def render(self) -> RenderableType:
        now = self.board.clock()
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        for col in ("node", "role", "phase", "step", "waiting for", "elapsed"):
            table.add_column(col, no_wrap=True, overflow="ellipsis")
        for row in self.board.rows():
            step = Text(row.step or "-")
            if row.status != "running" and row.step:
                step.append(f" {row.status}", style=_STYLES.get(row.status, ""))
            elif row.status == "running":
                step.stylize(_STYLES["running"])
            wait = row.wait
            table.add_row(
                row.name,
                row.role,
                row.phase or "-",
                step,
                wait_text(wait, now) if wait is not None else "",
                seconds_text(now - row.since),
            )
        title = Text(f"vkp: {seconds_text(now - self.board.started)} elapsed", style="bold")
        return Group(title, table)
