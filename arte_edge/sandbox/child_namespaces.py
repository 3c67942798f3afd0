"""Child side, isolation: namespaces, private tmpfs mounts, PID 1 and parent-death handling.

Shipped by source to the runner (see :mod:`arte_edge.sandbox.child_runner`): builtins and cheap
stdlib modules only, imported inside each function; calls between child functions use bare names.
"""

from __future__ import annotations

from typing import Any


def child_libc() -> Any:
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


def child_fail(libc: Any, what: str) -> str:
    """``what: strerror(errno)`` for the libc call that just failed."""
    import posix

    return what + ": " + posix.strerror(libc[3]())


def child_unshare(libc: Any, root: bool, mask: int) -> tuple[int, str]:
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
                child_map_user(uid, gid)
            return flags, note
        note = child_fail(libc, "unshare")
    return 0, note


def child_map_user(uid: int, gid: int) -> None:
    """In a fresh user namespace: map ourselves to root inside it (needed to mount)."""
    for path, text in (
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/uid_map", f"0 {uid} 1"),
        ("/proc/self/gid_map", f"0 {gid} 1"),
    ):
        with open(path, "w") as f:
            f.write(text)


def child_mount_tmpfs(libc: Any, target: str, size_mb: int, mode: str) -> bool:
    """Mount a nosuid, nodev tmpfs of ``size_mb`` MiB with ``mode`` on ``target``; True on success."""
    nosuid_nodev = 0x2 | 0x4
    opts = f"size={size_mb}m,mode={mode}".encode()
    return libc[1](b"tmpfs", target.encode(), b"tmpfs", nosuid_nodev, opts) == 0


def child_isolate_fs(libc: Any, cfg: dict[str, Any], limits: dict[str, str]) -> str:
    """Private tmpfs temp dirs (work dir inside /tmp); re-expose a python hidden under 0700 dirs."""
    import posix

    ms_rec, ms_private, ms_bind = 0x4000, 0x40000, 0x1000
    if libc[1](None, b"/", None, ms_rec | ms_private, None) != 0:
        raise OSError(child_fail(libc, "mount --make-rprivate /"))
    for hidden, trees in cfg["expose"]:
        # The sandbox uid cannot traverse `hidden` (e.g. /root 0700 holding pyenv): cover it with an
        # empty tmpfs (hiding its contents) and bind just the interpreter's trees back in.
        fds = [posix.open(tree, posix.O_PATH | posix.O_DIRECTORY) for tree in trees]
        if not child_mount_tmpfs(libc, hidden, 1, "755"):
            raise OSError(child_fail(libc, "mount tmpfs " + hidden))
        for tree, fd in zip(trees, fds, strict=True):
            child_makedirs(tree)
            if libc[1](f"/proc/self/fd/{fd}".encode(), tree.encode(), None, ms_bind | ms_rec, None) != 0:
                raise OSError(child_fail(libc, "bind " + tree))
            posix.close(fd)
    if not child_mount_tmpfs(libc, "/tmp", cfg["tmpfs_mb"], "1777"):
        raise OSError(child_fail(libc, "mount tmpfs /tmp"))
    covered = ["/tmp"]
    for extra in ("/var/tmp", "/dev/shm", "/run/lock"):
        if child_is_dir(extra) and child_mount_tmpfs(libc, extra, 8, "1777"):
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


def child_is_dir(path: str) -> bool:
    """Whether ``path`` exists and is a directory (no ``os.path`` import in the child)."""
    import posix

    try:
        return (posix.stat(path).st_mode & 0o170000) == 0o040000
    except OSError:
        return False


def child_makedirs(path: str) -> None:
    """Create ``path`` and its missing parents (mode 0755), ignoring ones that exist."""
    import posix

    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        with ChildSuppressOSError():
            posix.mkdir("/" + "/".join(parts[:i]), 0o755)


class ChildSuppressOSError:
    """``contextlib.suppress(OSError)`` without importing contextlib in the child."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


def child_become_pid1(libc: Any) -> int:
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


def child_check_parent(libc: Any, alive_r: int) -> None:
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
