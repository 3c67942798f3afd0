"""Fixed sandbox settings: resource limits, the namespaces the runner may create, and paths.

The parent reads :data:`NAMESPACES` as ``settings.NAMESPACES`` at call time, so tests can narrow
it (``monkeypatch.setattr(settings, "NAMESPACES", ...)``) to exercise the fallbacks.
"""

from __future__ import annotations

# Sandbox uids are UID_BASE + the runner's pid: unique among live runners, so RLIMIT_NPROC
# (counted per uid) is per sandbox, never shared with other runs or with system users.
UID_BASE = 1_500_000_000
NPROC = 32  # tasks (processes + threads) per sandbox
NOFILE = 64
FSIZE_BYTES = 16 * 1024 * 1024
TMPFS_MB = 64  # private /tmp (work dir) size; the other temp dirs get 8 MiB
STARTUP_GRACE_S = 15.0  # runner start-up before the sample's own clock starts
RESULT_CAP_BYTES = 1024 * 1024
REAP_GRACE_S = 5.0  # outer runner: SIGKILL the namespace and reap it, before we SIGKILL it
ERROR_CHARS = 500
MAX_TESTS = 10_000
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKDIR_NS = "/tmp/arte-work"  # inside the private /tmp tmpfs
# Namespaces the runner may create: net | mount | ipc | pid. Tests narrow it to exercise fallbacks.
NAMESPACES = 0x40000000 | 0x00020000 | 0x08000000 | 0x20000000
