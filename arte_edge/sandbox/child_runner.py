"""Child side, runner entry point: read the config, isolate, run the sample and report on a pipe.

The parent ships every function in :data:`CHILD_FUNCTIONS` to the runner by source
(``inspect.getsource``), so they must only use builtins and stdlib modules imported inside them,
and keep imports cheap: interpreter start-up is most of the per-test cost.
"""

from __future__ import annotations

from typing import Any

from arte_edge.sandbox.child_limits import child_count_own_processes, child_drop_privileges
from arte_edge.sandbox.child_namespaces import (
    ChildSuppressOSError,
    child_become_pid1,
    child_check_parent,
    child_fail,
    child_is_dir,
    child_isolate_fs,
    child_libc,
    child_makedirs,
    child_map_user,
    child_mount_tmpfs,
    child_unshare,
)
from arte_edge.sandbox.child_verdicts import (
    child_exactly_equal,
    child_failing_line,
    child_format_exc,
    child_mismatch_note,
    child_numbers_close,
    child_outputs_match,
    child_run_test,
    child_short_repr,
)


def child_main() -> None:
    """Runner entry point: read the config from stdin, isolate, run the sample, report on a pipe."""
    import marshal
    import posix
    import sys

    cfg = marshal.loads(sys.stdin.buffer.read())
    null = posix.open("/dev/null", posix.O_RDONLY)
    posix.dup2(null, 0)
    posix.close(null)
    sys.path[:] = [p for p in sys.path if p and p != cfg["runner_dir"]]
    out_fd, token, me = cfg["result_fd"], cfg["token"], [posix.getpid()]
    posix.set_inheritable(out_fd, False)

    def emit(*fields: str) -> None:
        if posix.getpid() != me[0]:  # a fork()ed copy of the sample must not report
            posix._exit(0)
        line = "\t".join([token, *(f.encode("unicode_escape").decode("ascii") for f in fields)])
        data = (line + "\n").encode("ascii")
        while data:
            data = data[posix.write(out_fd, data) :]

    limits: dict[str, str] = {}
    try:
        workdir = child_setup(cfg, limits, me)
    except Exception as exc:  # fail closed: no sample code runs without its sandbox
        emit("P", "sandbox", f"SandboxError: sandbox setup failed: {type(exc).__name__}: {exc}")
        posix._exit(0)
    for key, value in limits.items():
        emit("L", key, value)
    if workdir != cfg["workdir_ns"]:
        emit("W", workdir)
    child_run_all(cfg, emit, me)


def child_setup(cfg: dict[str, Any], limits: dict[str, str], me: list[int]) -> str:
    """Namespaces, file system, fork into PID 1, rlimits, uid drop, cwd/env. Returns the work dir."""
    import posix

    root = posix.geteuid() == 0
    cfg["own_procs"] = -1 if root else child_count_own_processes()  # before a PID ns hides them
    libc = child_libc() if cfg["linux"] else None
    flags, note = child_unshare(libc, root, cfg["ns_mask"]) if libc is not None else (0, "no libc")
    net, mnt, ipc, pid = 0x40000000, 0x00020000, 0x08000000, 0x20000000
    cfg["in_userns"] = bool(flags & 0x10000000)
    limits["network"] = (
        "new network namespace (no interfaces up: every connect fails)"
        if flags & net
        else "NOT isolated (" + (note or "unshare unavailable") + ")"
    )
    limits["ipc"] = "new IPC namespace" if flags & ipc else "shared with the host"
    workdir = ""
    if flags & mnt:
        try:
            workdir = child_isolate_fs(libc, cfg, limits)
        except OSError as exc:
            limits["filesystem_note"] = f"mount setup failed: {exc}"
    if not workdir and root and cfg["expose"]:
        # Without a mount namespace the dedicated uid could not even import the stdlib, and running
        # samples as root instead is not an option: fail closed.
        hidden = ", ".join(h for h, _ in cfg["expose"])
        raise PermissionError(
            f"the interpreter is under {hidden}, unreadable to an unprivileged uid, and no mount "
            "namespace is available to expose it; install Python in a world-readable location"
        )
    if not workdir:
        workdir = cfg["fallback_dir"] + "/w" + str(posix.getpid())
        posix.mkdir(workdir, 0o700)
        limits["filesystem"] = (
            "temp work dir " + workdir + " (deleted afterwards); other files writable where the "
            "sandbox uid may write (no mount namespace)"
        )
    cfg["pid1"], cfg["outer_pid"] = False, posix.getpid()
    alive_r = -1
    if flags & pid:
        alive_r = child_become_pid1(libc)
        cfg["pid1"], me[0] = True, posix.getpid()
        if flags & mnt:
            libc[1](b"proc", b"/proc", b"proc", 0x2 | 0x4 | 0x8, None)
        limits["process_cleanup"] = "PID namespace: killing the runner (PID 1) kills every descendant"
    else:
        limits["process_cleanup"] = "process group kill" + (" + uid sweep" if root else "")
    child_drop_privileges(libc, cfg, workdir, limits)
    if alive_r >= 0:
        child_check_parent(libc, alive_r)
    posix.chdir(workdir)
    for key in (b"HOME", b"TMPDIR"):
        posix.environ[key] = workdir.encode()
        posix.putenv(key, workdir.encode())
    return workdir


def child_run_all(cfg: dict[str, Any], emit: Any, me: list[int]) -> None:
    """Run setup + program once, then the tests; report each; never return normally."""
    import builtins
    import posix
    import sys
    import time

    builtins.exit = builtins.quit = sys.exit  # site.py would add these; -S skips it
    ns: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": builtins}
    memory_mb = cfg["memory_mb"]
    for stage, source in (("setup", cfg["setup"]), ("program", cfg["program"])):
        emit("B", stage)
        try:
            exec(compile(source, f"<{stage}>", "exec", dont_inherit=True), ns)
        except BaseException as exc:
            if posix.getpid() != me[0]:
                posix._exit(0)
            if isinstance(exc, MemoryError):
                ns.clear()
            emit("P", stage, child_format_exc(exc, source, f"<{stage}>", memory_mb))
            child_exit(0)
        if posix.getpid() != me[0]:
            posix._exit(0)
    for index, spec in cfg["tests"]:
        emit("S", str(index))
        start = time.perf_counter()
        try:
            error = child_run_test(spec, ns, memory_mb)
        except BaseException as exc:
            if posix.getpid() != me[0]:
                posix._exit(0)
            if isinstance(exc, MemoryError):
                ns.clear()
            error = child_format_exc(exc, spec[1], "<test>", memory_mb)
        emit("R", str(index), "0" if error else "1", repr(time.perf_counter() - start), error)
    emit("D")
    child_exit(0)


def child_exit(code: int) -> None:
    """Flush the sample's buffered output, then exit without waiting for its threads."""
    import posix
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib is not loaded in the child and costs an import
            stream.flush()
        except BaseException:
            pass
    posix._exit(code)


CHILD_FUNCTIONS: tuple[Any, ...] = (
    child_libc,
    child_fail,
    child_unshare,
    child_map_user,
    child_mount_tmpfs,
    child_isolate_fs,
    child_is_dir,
    child_makedirs,
    ChildSuppressOSError,
    child_become_pid1,
    child_drop_privileges,
    child_count_own_processes,
    child_check_parent,
    child_short_repr,
    child_numbers_close,
    child_exactly_equal,
    child_outputs_match,
    child_mismatch_note,
    child_format_exc,
    child_failing_line,
    child_run_test,
    child_main,
    child_setup,
    child_run_all,
    child_exit,
)
