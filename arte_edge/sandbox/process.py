"""Parent side, one runner process: spawn it, collect output and results, stop it, clean up."""

from __future__ import annotations

import contextlib
import marshal
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from arte_edge.sandbox import settings
from arte_edge.sandbox.interpreter import ensure_runner, hidden_interpreter_paths, interpreter_cmd, scrubbed_env
from arte_edge.sandbox.report import ProcessReport, parse_line
from arte_edge.sandbox.settings import (
    ERROR_CHARS,
    FSIZE_BYTES,
    NOFILE,
    NPROC,
    REAP_GRACE_S,
    RESULT_CAP_BYTES,
    SAFE_PATH,
    STARTUP_GRACE_S,
    TMPFS_MB,
    UID_BASE,
    WORKDIR_NS,
)


def _stdin_file(data: bytes) -> Any:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("arte-sandbox-cfg", os.MFD_CLOEXEC)
        f = os.fdopen(fd, "w+b")
    else:
        f = tempfile.TemporaryFile()  # noqa: SIM115 - returned to the caller's `with`
    f.write(data)
    f.flush()
    f.seek(0)
    return f


def _stop(proc: subprocess.Popen[bytes], rep: ProcessReport) -> None:
    """Stop a runner: via its outer reaper where it has one, else SIGKILL to its process group."""
    if proc.poll() is not None:
        return
    if rep.limits.get("process_cleanup", "").startswith("PID namespace"):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the outer runner SIGKILLs PID 1 and reaps all
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(REAP_GRACE_S)
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _sweep_uid(uid: int) -> None:
    """Kill every process of a sandbox uid (used only without a PID namespace)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        # kill(-1) as that uid reaches exactly its processes; the kill binary spares itself.
        subprocess.run(
            ["kill", "-9", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            timeout=5,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"PATH": SAFE_PATH},
        )


def _collect(
    proc: subprocess.Popen[bytes], result_r: int, token: str, timeout_s: float, max_output: int
) -> ProcessReport:
    """Read output (capped) and results until the runner ends; kill it on timeout or overflow."""
    rep = ProcessReport()
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "out")
    sel.register(result_r, selectors.EVENT_READ, "res")
    pending = bytearray()
    spawned = time.monotonic()
    exited_at: float | None = None
    try:
        while sel.get_map():
            now = time.monotonic()
            # The sample's clock starts when the runner begins its code, not at spawn.
            start, allowance = (rep.current_start, 0.0) if rep.stage else (spawned, STARTUP_GRACE_S)
            deadline = start + allowance + timeout_s
            if now >= deadline and not rep.done:
                rep.killed_for = "timeout"
                _stop(proc, rep)
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.5:
                break  # runner gone but an escaped grandchild holds the pipe open
            for key, _ in sel.select(min(deadline - now, 0.1)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                elif key.data == "out":
                    room = max_output - len(rep.output)
                    rep.output += chunk[: max(room, 0)]
                    if len(chunk) > room:
                        rep.killed_for = "output"
                        _stop(proc, rep)
                        sel.unregister(key.fd)
                elif len(pending) < RESULT_CAP_BYTES:
                    pending += chunk
                    *lines, rest = pending.split(b"\n")
                    pending = bytearray(rest)
                    for line in lines:
                        parse_line(bytes(line), token, rep)
            if rep.killed_for:
                break
    finally:
        sel.close()
    return rep


def spawn_runner(
    specs: list[tuple[int, tuple[Any, ...]]],
    program: str,
    setup_code: str,
    timeout_s: float,
    memory_mb: int,
    max_output: int,
) -> ProcessReport:
    """Run one runner process over ``specs`` and return its report. Never raises for the sample."""
    runner_dir = ensure_runner()
    token = secrets.token_hex(8)
    result_r, result_w = os.pipe()
    cfg = {
        "program": program,
        "setup": setup_code,
        "tests": specs,
        "token": token,
        "result_fd": result_w,
        "runner_dir": runner_dir,
        "fallback_dir": runner_dir,
        "workdir_ns": WORKDIR_NS,
        "expose": hidden_interpreter_paths() if os.geteuid() == 0 else [],
        "ns_mask": settings.NAMESPACES,  # read at call time: tests narrow it
        "tmpfs_mb": TMPFS_MB,
        "memory_mb": memory_mb,
        "cpu_s": math.ceil(timeout_s * (len(specs) + 1)) + 1,
        "nofile": NOFILE,
        "fsize": FSIZE_BYTES,
        "nproc": NPROC,
        "uid_base": UID_BASE,
        "linux": sys.platform.startswith("linux"),
    }
    try:
        with _stdin_file(marshal.dumps(cfg)) as stdin:
            proc = subprocess.Popen(
                interpreter_cmd(runner_dir),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(result_w,),
                start_new_session=True,
                cwd="/",
                env=scrubbed_env(WORKDIR_NS),
            )
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(result_r)
        os.close(result_w)
        error = f"SandboxError: could not start the sandbox: {exc}"
        return ProcessReport(stage="program", stage_error=error[:ERROR_CHARS])
    os.close(result_w)
    rep = ProcessReport()
    try:
        rep = _collect(proc, result_r, token, timeout_s, max_output)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(REAP_GRACE_S)  # the outer runner is reaping the namespace
    finally:
        _stop(proc, rep)  # no-op unless it is still running (or we are unwinding an exception)
        rep.returncode = proc.wait()
        os.close(result_r)
        _cleanup(proc, rep)
    return rep


def _cleanup(proc: subprocess.Popen[bytes], rep: ProcessReport) -> None:
    if proc.stdout is not None:
        proc.stdout.close()
    if os.geteuid() == 0 and "PID namespace" not in rep.limits.get("process_cleanup", ""):
        _sweep_uid(UID_BASE + proc.pid)
    if rep.workdir and os.path.isdir(rep.workdir):
        shutil.rmtree(rep.workdir, ignore_errors=True)
