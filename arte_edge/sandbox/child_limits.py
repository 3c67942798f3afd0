"""Child side, resource limits: rlimits and the switch to the dedicated sandbox uid.

Shipped by source to the runner (see :mod:`arte_edge.sandbox.child_runner`): builtins and cheap
stdlib modules only, imported inside each function; calls between child functions use bare names.
"""

from __future__ import annotations

from typing import Any

from arte_edge.sandbox.child_namespaces import ChildSuppressOSError


def child_drop_privileges(libc: Any, cfg: dict[str, Any], workdir: str, limits: dict[str, str]) -> None:
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


def child_count_own_processes() -> int:
    """How many processes this uid owns (from /proc), or -1 when they cannot be counted."""
    import posix

    try:
        uid = posix.getuid()
        n = 0
        for name in posix.listdir("/proc"):
            if name.isdigit():
                with ChildSuppressOSError():
                    n += posix.stat("/proc/" + name).st_uid == uid
        return n
    except OSError:
        return -1
