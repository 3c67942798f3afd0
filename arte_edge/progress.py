"""Rich progress bars for long steps; quiet when not attached to a terminal (CI logs stay readable)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Protocol


class Advance(Protocol):
    def __call__(self, n: int = 1, description: str | None = None) -> None: ...


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Advance]:
    """A progress bar; yields ``advance(n=1, description=None)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    live = sys.stderr.isatty()
    bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), transient=False, disable=not live)
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            bar.update(task, advance=n, **({"description": description} if description else {}))

        yield advance
    if not live:
        print(f"{description}: done", file=sys.stderr)


def log(message: str) -> None:
    """A one-line status message on stderr."""
    from rich.console import Console

    Console(stderr=True, highlight=False).print(message)


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to a user: per-file loading bars when not on a terminal,
    deprecation warnings raised inside TRL/peft, and bitsandbytes' note about an optional CPU kernel hub
    (unreachable offline; it falls back to its own kernels)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if not sys.stderr.isatty():
        with contextlib.suppress(ImportError):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        with contextlib.suppress(ImportError):
            import datasets

            datasets.disable_progress_bars()
