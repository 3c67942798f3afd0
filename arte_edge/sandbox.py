"""Run untrusted model-written Python against unit tests, one throwaway subprocess per test.

Design (see docs/sandbox.md): the parent spawns ``python -s -S [-P]`` with a fully scrubbed
environment and no inherited file descriptors (vfork, so the cost does not grow with the caller's
memory). The child starts a small runner that, *before any sample code runs*, isolates itself:

* root: new network, mount, IPC and PID namespaces; private tmpfs mounts over /tmp (holding the
  work dir), /var/tmp, /dev/shm, /run/lock; a fresh /proc; then it drops to a dedicated uid
  (``_UID_BASE + pid``, unique while it lives) so RLIMIT_NPROC really applies and the rest of the
  filesystem is read-only to it. The runner is PID 1 of its namespace, so when it dies the kernel
  kills every process the sample started, even ones that called setsid().
* non-root Linux: the same through a user namespace where the kernel allows one.
* elsewhere (macOS): rlimits, process-group kill, scrubbed env and a temp work dir only.

``SandboxResult.limits`` records what was actually enforced for that call.

The child-side code lives in the ``_child_*`` functions below. They are shipped to the runner by
source (``inspect.getsource``) so they must only use builtins and stdlib modules imported inside
them, and keep imports cheap: interpreter start-up is most of the per-test cost.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import marshal
import math
import os
import platform
import py_compile
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from arte_edge.errors import ArteError

__all__ = ["SandboxResult", "TestOutcome", "run_tests", "sandbox_capabilities"]

# Sandbox uids are _UID_BASE + the runner's pid: unique among live runners, so RLIMIT_NPROC
# (counted per uid) is per sandbox, never shared with other runs or with system users.
_UID_BASE = 1_500_000_000
_NPROC = 32  # tasks (processes + threads) per sandbox
_NOFILE = 64
_FSIZE_BYTES = 16 * 1024 * 1024
_TMPFS_MB = 64  # private /tmp (work dir) size; the other temp dirs get 8 MiB
_STARTUP_GRACE_S = 15.0  # runner start-up before the sample's own clock starts
_RESULT_CAP_BYTES = 1024 * 1024
_REAP_GRACE_S = 5.0  # outer runner: SIGKILL the namespace and reap it, before we SIGKILL it
_ERROR_CHARS = 500
_MAX_TESTS = 10_000
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_WORKDIR_NS = "/tmp/arte-work"  # inside the private /tmp tmpfs
# Namespaces the runner may create: net | mount | ipc | pid. Tests narrow it to exercise fallbacks.
_NAMESPACES = 0x40000000 | 0x00020000 | 0x08000000 | 0x20000000


@dataclass(frozen=True)
class TestOutcome:
    """One test's verdict. ``error`` is empty when it passed, else one bounded line."""

    __test__ = False  # not a pytest class

    test: str
    passed: bool
    error: str
    duration_s: float


@dataclass(frozen=True)
class SandboxResult:
    """All tests' verdicts for one program; ``error`` is the first failure (<= 500 chars)."""

    passed: bool
    n_passed: int
    n_total: int
    error: str
    outcomes: tuple[TestOutcome, ...]
    limits: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


# ----------------------------------------------------------------------------------------------
# Child side: shipped by source to the runner. Builtins + cheap stdlib only, imports inside.
# ----------------------------------------------------------------------------------------------


def _child_libc() -> Any:
    """Return callables (unshare, mount, prctl, get_errno) from libc, or None where unavailable.

    Uses ``_ctypes`` directly: ``import ctypes`` costs ~3 ms per process, this costs ~0.
    """
    try:
        import _ctypes

        class _Int(_ctypes._SimpleCData):
            _type_ = "i"

        class _Lib:
            _handle = _ctypes.dlopen(None, 0x2)  # RTLD_NOW

        class _Fn(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = _Int

        return (_Fn(("unshare", _Lib)), _Fn(("mount", _Lib)), _Fn(("prctl", _Lib)), _ctypes.get_errno)
    except Exception:
        return None


def _child_fail(libc: Any, what: str) -> str:
    import posix

    return what + ": " + posix.strerror(libc[3]())


def _child_unshare(libc: Any, root: bool, mask: int) -> tuple[int, str]:
    """Enter new namespaces (within ``mask``); return (flags obtained, note). Tries all, then less."""
    import posix

    net, mnt, ipc, pid, user = 0x40000000, 0x00020000, 0x08000000, 0x20000000, 0x10000000
    wanted = [w & mask for w in (net | mnt | ipc | pid, net | mnt | ipc, net) if w & mask]
    if not root:
        wanted = [user | w for w in wanted]
    uid, gid = posix.getuid(), posix.getgid()
    note = ""
    for flags in wanted:
        if libc[0](flags) == 0:
            if flags & user:
                _child_map_user(uid, gid)
            return flags, note
        note = _child_fail(libc, "unshare")
    return 0, note


def _child_map_user(uid: int, gid: int) -> None:
    """In a fresh user namespace: map ourselves to root inside it (needed to mount)."""
    for path, text in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"0 {uid} 1"),
        ("/proc/self/gid_map", f"0 {gid} 1"),
    ):
        with open(path, "w") as f:
            f.write(text)


def _child_mount_tmpfs(libc: Any, target: str, size_mb: int, mode: str) -> bool:
    nosuid_nodev = 0x2 | 0x4
    opts = f"size={size_mb}m,mode={mode}".encode()
    return libc[1](b"tmpfs", target.encode(), b"tmpfs", nosuid_nodev, opts) == 0


def _child_isolate_fs(libc: Any, cfg: dict[str, Any], limits: dict[str, str]) -> str:
    """Private tmpfs temp dirs (work dir inside /tmp); re-expose a python hidden under 0700 dirs."""
    import posix

    ms_rec, ms_private, ms_bind = 0x4000, 0x40000, 0x1000
    if libc[1](None, b"/", None, ms_rec | ms_private, None) != 0:
        raise OSError(_child_fail(libc, "mount --make-rprivate /"))
    for hidden, trees in cfg["expose"]:
        # The sandbox uid cannot traverse `hidden` (e.g. /root 0700 holding pyenv): cover it with an
        # empty tmpfs (hiding its contents) and bind just the interpreter's trees back in.
        fds = [posix.open(tree, posix.O_PATH | posix.O_DIRECTORY) for tree in trees]
        if not _child_mount_tmpfs(libc, hidden, 1, "755"):
            raise OSError(_child_fail(libc, "mount tmpfs " + hidden))
        for tree, fd in zip(trees, fds, strict=True):
            _child_makedirs(tree)
            if libc[1](f"/proc/self/fd/{fd}".encode(), tree.encode(), None, ms_bind | ms_rec, None) != 0:
                raise OSError(_child_fail(libc, "bind " + tree))
            posix.close(fd)
    if not _child_mount_tmpfs(libc, "/tmp", cfg["tmpfs_mb"], "1777"):
        raise OSError(_child_fail(libc, "mount tmpfs /tmp"))
    covered = ["/tmp"]
    for extra in ("/var/tmp", "/dev/shm", "/run/lock"):
        if _child_is_dir(extra) and _child_mount_tmpfs(libc, extra, 8, "1777"):
            covered.append(extra)
    workdir = cfg["workdir_ns"]
    posix.mkdir(workdir, 0o700)
    rest = (
        "writable wherever the caller's own user may write (not root: no uid switch)"
        if cfg["in_userns"]
        else "read-only to the sandbox uid (no write permission)"
    )
    limits["filesystem"] = (
        "private tmpfs on " + ", ".join(covered) + f" ({cfg['tmpfs_mb']} MiB /tmp, thrown away with "
        "the mount namespace); everything else " + rest
    )
    return workdir


def _child_is_dir(path: str) -> bool:
    import posix

    try:
        return (posix.stat(path).st_mode & 0o170000) == 0o040000
    except OSError:
        return False


def _child_makedirs(path: str) -> None:
    import posix

    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        with _ChildSuppressOSError():
            posix.mkdir("/" + "/".join(parts[:i]), 0o755)


class _ChildSuppressOSError:
    """``contextlib.suppress(OSError)`` without importing contextlib in the child."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


def _child_become_pid1(libc: Any) -> int:
    """Fork so the sample runs as PID 1 of the new PID namespace; the outer process only reaps.

    The outer process stays root outside the namespace: on SIGTERM (the parent's timeout) it
    SIGKILLs the namespace's PID 1, which makes the kernel kill every process in it, and it reaps
    them all before exiting, so nothing is left as a zombie for the host's init (which, in a
    container, may be the caller itself and never reap). Returns, in the child, the read end of a
    pipe that reaches EOF when the outer process dies.
    """
    import _signal
    import posix

    pr_set_child_subreaper = 36
    libc[2](pr_set_child_subreaper, 1, 0, 0, 0)
    alive_r, alive_w = posix.pipe()
    pid = posix.fork()
    if pid == 0:
        posix.close(alive_w)
        return alive_r
    posix.close(alive_r)
    null = posix.open("/dev/null", posix.O_RDWR)
    for fd in range(0, 3):
        posix.dup2(null, fd)
    reaped = [False]

    def stop(*_: Any) -> None:
        if not reaped[0]:  # never signal the pid once it is reaped (and could be reused)
            posix.kill(pid, 9)

    _signal.signal(_signal.SIGTERM, stop)
    status = 9  # as if SIGKILLed, should its status never be seen
    while True:
        try:
            done, code = posix.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            reaped[0], status = True, code
    if posix.WIFSIGNALED(status):
        posix._exit(128 + posix.WTERMSIG(status))
    posix._exit(posix.WEXITSTATUS(status))
    return -1  # unreachable


def _child_drop_privileges(libc: Any, cfg: dict[str, Any], workdir: str, limits: dict[str, str]) -> None:
    """Apply rlimits, then switch to the dedicated uid (root only)."""
    import posix
    import resource

    cpu = cfg["cpu_s"]
    mem = cfg["memory_mb"] * 1024 * 1024
    mib = 1024 * 1024
    for key, res, value, text in (
        ("cpu", resource.RLIMIT_CPU, (cpu, cpu + 1), f"RLIMIT_CPU {cpu} s"),
        ("memory", resource.RLIMIT_AS, (mem, mem), f"RLIMIT_AS {cfg['memory_mb']} MiB"),
        ("open_files", resource.RLIMIT_NOFILE, (cfg["nofile"],) * 2, f"RLIMIT_NOFILE {cfg['nofile']}"),
        ("file_size", resource.RLIMIT_FSIZE, (cfg["fsize"],) * 2, f"RLIMIT_FSIZE {cfg['fsize'] // mib} MiB"),
        ("core_dumps", resource.RLIMIT_CORE, (0, 0), "RLIMIT_CORE 0"),
    ):
        try:  # best effort: macOS, for one, refuses RLIMIT_AS
            resource.setrlimit(res, value)
            limits[key] = text
        except (ValueError, OSError) as exc:
            limits[key] = f"not enforced ({text} refused: {exc})"
    nproc = cfg["nproc"]
    if posix.geteuid() == 0 and not cfg["in_userns"]:
        uid = cfg["uid_base"] + cfg["outer_pid"]  # the host pid the parent sees as proc.pid
        posix.chown(workdir, uid, uid)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        posix.setgroups([])
        posix.setgid(uid)
        posix.setuid(uid)
        limits["user"] = f"dedicated unprivileged uid {uid} (no supplementary groups)"
        limits["processes"] = f"RLIMIT_NPROC {nproc} (enforced: per-sandbox uid)"
    else:
        base = cfg["own_procs"]
        if base >= 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (base + nproc, base + nproc))
            limits["processes"] = f"RLIMIT_NPROC {base + nproc} (shared with this user's {base} other processes)"
        else:
            limits["processes"] = "not enforced (cannot count this user's processes)"
        limits["user"] = "the caller's uid (not root: cannot switch user)"


def _child_count_own_processes() -> int:
    import posix

    try:
        uid = posix.getuid()
        n = 0
        for name in posix.listdir("/proc"):
            if name.isdigit():
                with _ChildSuppressOSError():
                    n += posix.stat("/proc/" + name).st_uid == uid
        return n
    except OSError:
        return -1


def _child_check_parent(libc: Any, alive_r: int) -> None:
    """Kill us when the outer runner dies (timeout kill), and catch a death that came first."""
    import posix

    pr_set_pdeathsig = 1
    libc[2](pr_set_pdeathsig, 9, 0, 0, 0)  # set after setuid: a credential change clears it
    posix.set_blocking(alive_r, False)
    try:
        gone = posix.read(alive_r, 1) == b""
    except BlockingIOError:
        gone = False
    if gone:
        posix._exit(137)
    posix.close(alive_r)


def _child_short_repr(value: Any) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 120, 120, 12, 12, 8, 12
    r.maxlevel = 3
    try:
        text = r.repr(value)
    except Exception as exc:
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= 200 else text[:197] + "..."


def _child_numbers_close(a: Any, b: Any, depth: int = 0) -> bool:
    """PERsD-style float tolerance, element-wise through equal-shaped lists/tuples/dicts."""
    import math

    if depth > 32:
        return False
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if isinstance(a, float) or isinstance(b, float):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
        return a == b
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(
            _child_exactly_equal(x, y) or _child_numbers_close(x, y, depth + 1) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            _child_exactly_equal(a[k], b[k]) or _child_numbers_close(a[k], b[k], depth + 1) for k in a
        )
    return False


def _child_exactly_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _child_outputs_match(got: Any, expected: Any) -> bool:
    """Pass rule for ``assert EXPR == EXPECTED``: Python ``==``, else float tolerance."""
    return _child_exactly_equal(got, expected) or _child_numbers_close(got, expected)


def _child_mismatch_note(got: Any, expected: Any) -> str:
    """Explain a near miss the pass rule rejects: equal after ``ast.literal_eval``, or as text."""
    for text, other in ((got, expected), (expected, got)):
        if isinstance(text, str) and not isinstance(other, str):
            try:
                import ast

                if _child_outputs_match(ast.literal_eval(text.strip()), other):
                    return "; equal after ast.literal_eval of the string, but types differ"
            except Exception:
                pass
    try:
        if str(got) == str(expected):
            return f"; same text, but {type(got).__name__} vs {type(expected).__name__}"
    except Exception:
        pass
    return ""


def _child_format_exc(exc: BaseException, source: str, filename: str, memory_mb: int) -> str:
    """One line: ``Type: message``; for a bare AssertionError, the failing source line."""
    name = type(exc).__name__
    if isinstance(exc, SyntaxError):
        where = f" ({filename.strip('<>')} line {exc.lineno})" if exc.lineno else ""
        return f"{name}: {exc.msg}{where}"
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    if isinstance(exc, MemoryError) and not message:
        message = f"memory limit exceeded (RLIMIT_AS {memory_mb} MiB)"
    if isinstance(exc, AssertionError) and not message:
        message = _child_failing_line(exc, source, filename)
    if isinstance(exc, SystemExit):
        message = f"sample called exit({message})"
    return f"{name}: {message}" if message else name


def _child_failing_line(exc: BaseException, source: str, filename: str) -> str:
    tb, lineno = exc.__traceback__, 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    lines = source.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def _child_run_test(spec: tuple[Any, ...], ns: dict[str, Any], memory_mb: int) -> str:
    """Run one test; return "" on pass, else the error line."""
    kind, src = spec[0], spec[1]
    if kind != "eq":
        exec(compile(src, "<test>", "exec", dont_inherit=True), ns)
        return ""
    _, _, lhs, rhs, msg = spec
    got = eval(compile(lhs, "<test>", "eval", dont_inherit=True), ns)
    expected = eval(compile(rhs, "<test>", "eval", dont_inherit=True), ns)
    if _child_outputs_match(got, expected):
        return ""
    shown = " ".join(src.split()) if msg is None else f"assert {lhs} == {rhs}"
    extra = "" if msg is None else f": {eval(compile(msg, '<test>', 'eval', dont_inherit=True), ns)}"
    got_text = _child_short_repr(got)
    exp_text = _child_short_repr(expected)
    detail = f"got {got_text}" if exp_text == rhs.strip() else f"got {got_text}, expected {exp_text}"
    return f"AssertionError{extra}: {shown} ({detail}{_child_mismatch_note(got, expected)})"


def _child_main() -> None:
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
        workdir = _child_setup(cfg, limits, me)
    except Exception as exc:  # fail closed: no sample code runs without its sandbox
        emit("P", "sandbox", f"SandboxError: sandbox setup failed: {type(exc).__name__}: {exc}")
        posix._exit(0)
    for key, value in limits.items():
        emit("L", key, value)
    if workdir != cfg["workdir_ns"]:
        emit("W", workdir)
    _child_run_all(cfg, emit, me)


def _child_setup(cfg: dict[str, Any], limits: dict[str, str], me: list[int]) -> str:
    """Namespaces, file system, fork into PID 1, rlimits, uid drop, cwd/env. Returns the work dir."""
    import posix

    root = posix.geteuid() == 0
    cfg["own_procs"] = -1 if root else _child_count_own_processes()  # before a PID ns hides them
    libc = _child_libc() if cfg["linux"] else None
    flags, note = _child_unshare(libc, root, cfg["ns_mask"]) if libc is not None else (0, "no libc")
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
            workdir = _child_isolate_fs(libc, cfg, limits)
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
        alive_r = _child_become_pid1(libc)
        cfg["pid1"], me[0] = True, posix.getpid()
        if flags & mnt:
            libc[1](b"proc", b"/proc", b"proc", 0x2 | 0x4 | 0x8, None)
        limits["process_cleanup"] = "PID namespace: killing the runner (PID 1) kills every descendant"
    else:
        limits["process_cleanup"] = "process group kill" + (" + uid sweep" if root else "")
    _child_drop_privileges(libc, cfg, workdir, limits)
    if alive_r >= 0:
        _child_check_parent(libc, alive_r)
    posix.chdir(workdir)
    for key in (b"HOME", b"TMPDIR"):
        posix.environ[key] = workdir.encode()
        posix.putenv(key, workdir.encode())
    return workdir


def _child_run_all(cfg: dict[str, Any], emit: Any, me: list[int]) -> None:
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
            emit("P", stage, _child_format_exc(exc, source, f"<{stage}>", memory_mb))
            _child_exit(0)
        if posix.getpid() != me[0]:
            posix._exit(0)
    for index, spec in cfg["tests"]:
        emit("S", str(index))
        start = time.perf_counter()
        try:
            error = _child_run_test(spec, ns, memory_mb)
        except BaseException as exc:
            if posix.getpid() != me[0]:
                posix._exit(0)
            if isinstance(exc, MemoryError):
                ns.clear()
            error = _child_format_exc(exc, spec[1], "<test>", memory_mb)
        emit("R", str(index), "0" if error else "1", repr(time.perf_counter() - start), error)
    emit("D")
    _child_exit(0)


def _child_exit(code: int) -> None:
    """Flush the sample's buffered output, then exit without waiting for its threads."""
    import posix
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib is not loaded in the child and costs an import
            stream.flush()
        except BaseException:
            pass
    posix._exit(code)


_CHILD_FUNCTIONS: tuple[Any, ...] = (
    _child_libc,
    _child_fail,
    _child_unshare,
    _child_map_user,
    _child_mount_tmpfs,
    _child_isolate_fs,
    _child_is_dir,
    _child_makedirs,
    _ChildSuppressOSError,
    _child_become_pid1,
    _child_drop_privileges,
    _child_count_own_processes,
    _child_check_parent,
    _child_short_repr,
    _child_numbers_close,
    _child_exactly_equal,
    _child_outputs_match,
    _child_mismatch_note,
    _child_format_exc,
    _child_failing_line,
    _child_run_test,
    _child_main,
    _child_setup,
    _child_run_all,
    _child_exit,
)

# ----------------------------------------------------------------------------------------------
# Parent side.
# ----------------------------------------------------------------------------------------------

_RUNNER_MODULE = "_arte_sandbox_runner"
_runner_lock = threading.Lock()
_runner_dir: str | None = None
_expose_cache: list[tuple[str, list[str]]] | None = None
_capabilities: dict[str, str] | None = None


def _runner_source() -> str:
    import inspect

    body = "\n\n".join(inspect.getsource(fn) for fn in _CHILD_FUNCTIONS)
    # Annotations stay unevaluated strings: importing typing would cost more than the whole setup.
    return f"from __future__ import annotations\n\n{body}\n"


def _ensure_runner() -> str:
    """Write the runner module (and its .pyc) once per process; return its directory."""
    global _runner_dir
    with _runner_lock:
        if _runner_dir is not None and os.path.isdir(_runner_dir):
            return _runner_dir
        directory = tempfile.mkdtemp(prefix="arte-sandbox-")
        os.chmod(directory, 0o755)  # the sandbox uid must read the runner
        path = os.path.join(directory, _RUNNER_MODULE + ".py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_runner_source())
        os.chmod(path, 0o644)
        py_compile.compile(path, doraise=True)
        for root, dirs, files in os.walk(directory):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        atexit.register(shutil.rmtree, directory, True)
        _runner_dir = directory
        return directory


def _hidden_interpreter_paths() -> list[tuple[str, list[str]]]:
    """(untraversable ancestor, interpreter trees under it) the runner must re-expose to its uid."""
    global _expose_cache
    if _expose_cache is not None:
        return _expose_cache
    hidden: dict[str, list[str]] = {}
    for tree in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}):
        parts = tree.strip("/").split("/")
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            try:
                mode = os.stat(ancestor).st_mode
            except OSError:
                break
            if not mode & 0o001:
                hidden.setdefault(ancestor, []).append(tree)
                break
    _expose_cache = sorted(hidden.items())
    return _expose_cache


def _split_equality_assert(test: str) -> tuple[str, str, str | None] | None:
    """For a test that is exactly ``assert LHS == RHS[, MSG]``, return its parts as source."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return None
    node = tree.body[0]
    comp = node.test
    if not (isinstance(comp, ast.Compare) and len(comp.ops) == 1 and isinstance(comp.ops[0], ast.Eq)):
        return None
    msg = ast.unparse(node.msg) if node.msg is not None else None
    return ast.unparse(comp.left), ast.unparse(comp.comparators[0]), msg


def _test_spec(test: str) -> tuple[Any, ...]:
    parts = _split_equality_assert(test)
    if parts is None:
        return ("exec", test)
    return ("eq", test, *parts)


def _child_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": _SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _interpreter_cmd(runner_dir: str) -> list[str]:
    # Not -I: it implies -E, which would drop PYTHONHASHSEED (reproducible set/dict order). The
    # environment is fully scrubbed instead, so -E would add nothing; -s -S -P give the rest of -I.
    flags = ["-s", "-S", "-P"] if sys.version_info >= (3, 11) else ["-s", "-S"]
    boot = f"import sys;sys.path.insert(0,{runner_dir!r});import {_RUNNER_MODULE} as r;r._child_main()"
    return [sys.executable, *flags, "-c", boot]


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


@dataclass
class _ProcessReport:
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


def _parse_line(line: bytes, token: str, rep: _ProcessReport) -> None:
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
        rep.stage_error = args[1][:_ERROR_CHARS]
    elif kind == "S" and len(args) == 1 and args[0].isdigit():
        rep.stage, rep.current, rep.current_start = "test", int(args[0]), now
    elif kind == "R" and len(args) == 4 and args[0].isdigit():
        with contextlib.suppress(ValueError):
            rep.results[int(args[0])] = (args[1] == "1", float(args[2]), args[3][:_ERROR_CHARS])
    elif kind == "D":
        rep.done = True


def _stop(proc: subprocess.Popen[bytes], rep: _ProcessReport) -> None:
    """Stop a runner: via its outer reaper where it has one, else SIGKILL to its process group."""
    if proc.poll() is not None:
        return
    if rep.limits.get("process_cleanup", "").startswith("PID namespace"):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # the outer runner SIGKILLs PID 1 and reaps all
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_REAP_GRACE_S)
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
            env={"PATH": _SAFE_PATH},
        )


def _collect(
    proc: subprocess.Popen[bytes], result_r: int, token: str, timeout_s: float, max_output: int
) -> _ProcessReport:
    """Read output (capped) and results until the runner ends; kill it on timeout or overflow."""
    rep = _ProcessReport()
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
            start, allowance = (rep.current_start, 0.0) if rep.stage else (spawned, _STARTUP_GRACE_S)
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
                elif len(pending) < _RESULT_CAP_BYTES:
                    pending += chunk
                    *lines, rest = pending.split(b"\n")
                    pending = bytearray(rest)
                    for line in lines:
                        _parse_line(bytes(line), token, rep)
            if rep.killed_for:
                break
    finally:
        sel.close()
    return rep


def _spawn(
    specs: list[tuple[int, tuple[Any, ...]]],
    program: str,
    setup_code: str,
    timeout_s: float,
    memory_mb: int,
    max_output: int,
) -> _ProcessReport:
    """Run one runner process over ``specs`` and return its report. Never raises for the sample."""
    runner_dir = _ensure_runner()
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
        "workdir_ns": _WORKDIR_NS,
        "expose": _hidden_interpreter_paths() if os.geteuid() == 0 else [],
        "ns_mask": _NAMESPACES,
        "tmpfs_mb": _TMPFS_MB,
        "memory_mb": memory_mb,
        "cpu_s": math.ceil(timeout_s * (len(specs) + 1)) + 1,
        "nofile": _NOFILE,
        "fsize": _FSIZE_BYTES,
        "nproc": _NPROC,
        "uid_base": _UID_BASE,
        "linux": sys.platform.startswith("linux"),
    }
    try:
        with _stdin_file(marshal.dumps(cfg)) as stdin:
            proc = subprocess.Popen(
                _interpreter_cmd(runner_dir),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(result_w,),
                start_new_session=True,
                cwd="/",
                env=_child_env(_WORKDIR_NS),
            )
    except (OSError, subprocess.SubprocessError) as exc:
        os.close(result_r)
        os.close(result_w)
        error = f"SandboxError: could not start the sandbox: {exc}"
        return _ProcessReport(stage="program", stage_error=error[:_ERROR_CHARS])
    os.close(result_w)
    rep = _ProcessReport()
    try:
        rep = _collect(proc, result_r, token, timeout_s, max_output)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(_REAP_GRACE_S)  # the outer runner is reaping the namespace
    finally:
        _stop(proc, rep)  # no-op unless it is still running (or we are unwinding an exception)
        rep.returncode = proc.wait()
        os.close(result_r)
        _cleanup(proc, rep)
    return rep


def _cleanup(proc: subprocess.Popen[bytes], rep: _ProcessReport) -> None:
    if proc.stdout is not None:
        proc.stdout.close()
    if os.geteuid() == 0 and "PID namespace" not in rep.limits.get("process_cleanup", ""):
        _sweep_uid(_UID_BASE + proc.pid)
    if rep.workdir and os.path.isdir(rep.workdir):
        shutil.rmtree(rep.workdir, ignore_errors=True)


def _last_error_line(output: bytes) -> str:
    """The last ``SomeError: message`` line of captured output (a traceback's last line)."""
    for raw in reversed(output.decode("utf-8", "replace").splitlines()[-50:]):
        line = raw.strip()
        head = line.split(":", 1)[0]
        if head.isidentifier() and (head.endswith(("Error", "Exception", "Exit")) or head == "Killed"):
            return line[:_ERROR_CHARS]
    return ""


def _death_reason(rep: _ProcessReport, timeout_s: float, max_output: int) -> str:
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


def _outcomes_for(
    rep: _ProcessReport, group: list[tuple[int, str]], timeout_s: float, max_output: int
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
            outcomes[index] = TestOutcome(test, False, why[:_ERROR_CHARS], 0.0)
    return outcomes, ""


def _validate(tests: Sequence[str], timeout_s: float, memory_mb: int, max_output_bytes: int) -> None:
    if isinstance(tests, str):
        raise ArteError("run_tests: tests must be a sequence of test strings, not one string")
    if len(tests) > _MAX_TESTS:
        raise ArteError(f"run_tests: {len(tests)} tests given; at most {_MAX_TESTS} per call")
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s <= 3600):
        raise ArteError(f"run_tests: timeout_s must be in (0, 3600], got {timeout_s!r}")
    if not (isinstance(memory_mb, int) and 64 <= memory_mb <= 1024 * 1024):
        raise ArteError(f"run_tests: memory_mb must be an int >= 64, got {memory_mb!r}")
    if not (isinstance(max_output_bytes, int) and max_output_bytes >= 0):
        raise ArteError(f"run_tests: max_output_bytes must be an int >= 0, got {max_output_bytes!r}")


def run_tests(
    program: str,
    tests: Sequence[str],
    *,
    setup_code: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_output_bytes: int = 64_000,
    per_test: bool = True,
) -> SandboxResult:
    """Run ``setup_code`` + ``program`` then each test in an isolated, resource-limited subprocess.

    With ``per_test`` every test gets a fresh process (a failure before the first test, e.g. a
    SyntaxError or a module-level infinite loop, is reported for all tests without re-running it);
    otherwise one process runs all tests in order and a test that kills it fails the rest as NotRun.
    ``timeout_s`` is wall-clock per test (and separately for setup + program). Whatever the sample
    does, the result is a failed outcome with a reason, never an exception; ArteError is raised only
    for bad arguments. Thread-safe: callers may run many samples concurrently.
    """
    _validate(tests, timeout_s, memory_mb, max_output_bytes)
    items = list(enumerate(str(t) for t in tests))
    if not items:
        return SandboxResult(False, 0, 0, "no tests given", (), types.MappingProxyType({}))
    specs = {i: _test_spec(t) for i, t in items}
    groups = [[item] for item in items] if per_test else [items]
    outcomes: dict[int, TestOutcome] = {}
    limits: dict[str, str] = {}
    for group in groups:
        if all(i in outcomes for i, _ in group):
            continue
        start = time.monotonic()
        rep = _spawn([(i, specs[i]) for i, _ in group], program, setup_code, timeout_s, memory_mb, max_output_bytes)
        limits = limits or dict(rep.limits)
        got, stage_error = _outcomes_for(rep, group, timeout_s, max_output_bytes)
        if stage_error:  # deterministic before any test ran: same verdict for every test left
            spent = time.monotonic() - start
            for i, test in items:
                outcomes.setdefault(i, TestOutcome(test, False, stage_error[:_ERROR_CHARS], spent))
            break
        outcomes.update(got)
    ordered = tuple(outcomes[i] for i, _ in items)
    n_passed = sum(o.passed for o in ordered)
    first_error = next((o.error for o in ordered if not o.passed), "")
    limits.update(_parent_limits(timeout_s, max_output_bytes, per_test))
    return SandboxResult(
        passed=n_passed == len(ordered),
        n_passed=n_passed,
        n_total=len(ordered),
        error=first_error,
        outcomes=ordered,
        limits=types.MappingProxyType(limits),
    )


def _parent_limits(timeout_s: float, max_output_bytes: int, per_test: bool) -> dict[str, str]:
    return {
        "wall_clock": f"{timeout_s:g} s per test (process group / PID namespace killed)",
        "output": f"{max_output_bytes} bytes of stdout+stderr, then killed",
        "isolation": "one process per test" if per_test else "one process for all tests",
        "environment": "scrubbed: PATH, LANG, HOME, TMPDIR, PYTHONHASHSEED=0, PYTHONDONTWRITEBYTECODE",
        "interpreter": " ".join(_interpreter_cmd("<runner>")[1:-2]) + " (no site, no user site)",
        "inherited_fds": "none (stdin: config then /dev/null; stdout/stderr: capped pipe)",
    }


def sandbox_capabilities() -> dict[str, str]:
    """What this OS and user actually enforce, probed once with a trivial sample (cached)."""
    global _capabilities
    if _capabilities is None:
        result = run_tests("x = 1", ["assert x == 1"], timeout_s=10.0)
        caps = dict(result.limits)
        caps["platform"] = f"{platform.system()} {platform.release()}, euid {os.geteuid()}"
        caps["probe"] = "ok" if result.passed else f"FAILED: {result.error}"
        _capabilities = caps
    return dict(_capabilities)
