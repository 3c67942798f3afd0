"""Parent side, what a runner reported: parse its result pipe, explain its death, build outcomes."""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass, field

from arte_edge.sandbox.results import TestOutcome
from arte_edge.sandbox.settings import ERROR_CHARS


@dataclass
class ProcessReport:
    """What one runner process told us (parsed from its result pipe) and how it ended."""

    results: dict[int, tuple[bool, float, str]] = field(default_factory=dict)
    stage: str = ""  # "" = not started, "setup"/"program" = running those, "test" = in tests
    stage_error: str = ""
    current: int = -1
    current_start: float = 0.0
    limits: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    output: bytearray = field(default_factory=bytearray)
    killed_for: str = ""  # "timeout" / "output"
    returncode: int = 0
    done: bool = False


def parse_line(line: bytes, token: str, rep: ProcessReport) -> None:
    """Apply one result-pipe line to ``rep``; lines without our token or malformed are ignored."""
    try:
        fields = [f.encode("ascii").decode("unicode_escape") for f in line.decode("ascii").split("\t")]
    except (UnicodeError, ValueError):
        return
    if len(fields) < 2 or fields[0] != token:
        return
    kind, args = fields[1], fields[2:]
    now = time.monotonic()
    if kind == "L" and len(args) == 2:
        rep.limits[args[0]] = args[1]
    elif kind == "W" and len(args) == 1:
        rep.workdir = args[0]
    elif kind == "B" and len(args) == 1:
        rep.stage, rep.current_start = args[0], now
    elif kind == "P" and len(args) == 2:
        rep.stage_error = args[1][:ERROR_CHARS]
    elif kind == "S" and len(args) == 1 and args[0].isdigit():
        rep.stage, rep.current, rep.current_start = "test", int(args[0]), now
    elif kind == "R" and len(args) == 4 and args[0].isdigit():
        with contextlib.suppress(ValueError):
            rep.results[int(args[0])] = (args[1] == "1", float(args[2]), args[3][:ERROR_CHARS])
    elif kind == "D":
        rep.done = True


def _last_error_line(output: bytes) -> str:
    """The last ``SomeError: message`` line of captured output (a traceback's last line)."""
    for raw in reversed(output.decode("utf-8", "replace").splitlines()[-50:]):
        line = raw.strip()
        head = line.split(":", 1)[0]
        if head.isidentifier() and (head.endswith(("Error", "Exception", "Exit")) or head == "Killed"):
            return line[:ERROR_CHARS]
    return ""


def _death_reason(rep: ProcessReport, timeout_s: float, max_output: int) -> str:
    """Why the runner stopped before reporting the current step."""
    where = "test" if rep.stage == "test" else (rep.stage or "sandbox start-up")
    if rep.killed_for == "timeout":
        return f"TimeoutError: {where} exceeded {timeout_s:g} s"
    if rep.killed_for == "output":
        return f"OutputLimitError: output exceeded {max_output} bytes"
    code = rep.returncode
    sig = -code if code < 0 else (code - 128 if code > 128 else 0)
    if sig == signal.SIGXCPU:
        return f"TimeoutError: CPU time limit exceeded in {where}"
    from_output = _last_error_line(bytes(rep.output))
    if from_output:
        return from_output
    if sig:
        return f"Crash: {where} killed by {signal.Signals(sig).name if sig in _SIGNALS else sig}"
    return f"SystemExit: process exited with code {code} during the {where} (no result reported)"


_SIGNALS = {s.value for s in signal.Signals}


def outcomes_for(
    rep: ProcessReport, group: list[tuple[int, str]], timeout_s: float, max_output: int
) -> tuple[dict[int, TestOutcome], str]:
    """Turn one process report into outcomes for its tests; also return a stage-wide error."""
    if rep.stage_error:
        return {}, rep.stage_error
    if rep.stage in ("", "setup", "program"):
        return {}, _death_reason(rep, timeout_s, max_output)
    reason = "" if rep.done else _death_reason(rep, timeout_s, max_output)
    outcomes: dict[int, TestOutcome] = {}
    for index, test in group:
        if index in rep.results:
            ok, duration, error = rep.results[index]
            outcomes[index] = TestOutcome(test, ok, "" if ok else error or "failed", duration)
        elif index == rep.current:
            spent = max(time.monotonic() - rep.current_start, 0.0)
            outcomes[index] = TestOutcome(test, False, reason, min(spent, timeout_s))
        else:
            why = f"NotRun: the process ended during test {rep.current + 1}: {reason}"
            outcomes[index] = TestOutcome(test, False, why[:ERROR_CHARS], 0.0)
    return outcomes, ""
