"""Run untrusted model-written Python against unit tests, one throwaway subprocess per test.

Design (see docs/sandbox.md): the parent spawns ``python -s -S [-P]`` with a fully scrubbed
environment and no inherited file descriptors (vfork, so the cost does not grow with the caller's
memory). The child starts a small runner that, *before any sample code runs*, isolates itself:

* root: new network, mount, IPC and PID namespaces; private tmpfs mounts over /tmp (holding the
  work dir), /var/tmp, /dev/shm, /run/lock; a fresh /proc; then it drops to a dedicated uid
  (``UID_BASE + pid``, unique while it lives) so RLIMIT_NPROC really applies and the rest of the
  filesystem is read-only to it. The runner is PID 1 of its namespace, so when it dies the kernel
  kills every process the sample started, even ones that called setsid().
* non-root Linux: the same through a user namespace where the kernel allows one.
* elsewhere (macOS): rlimits, process-group kill, scrubbed env and a temp work dir only.

``SandboxResult.limits`` records what was actually enforced for that call.

Modules:

* :mod:`~arte_edge.sandbox.run`: :func:`run_tests`, the entry point; :mod:`~arte_edge.sandbox.capabilities`:
  :func:`sandbox_capabilities`; :mod:`~arte_edge.sandbox.results`: the result types.
* parent side: :mod:`~arte_edge.sandbox.process` (one runner process), :mod:`~arte_edge.sandbox.report`
  (what it reported), :mod:`~arte_edge.sandbox.interpreter` (the runner module and command line),
  :mod:`~arte_edge.sandbox.assert_split` (test specs), :mod:`~arte_edge.sandbox.settings` (limits).
* child side, shipped to the runner by source (``inspect.getsource``), so builtins and stdlib
  modules imported inside each function only, and cheap imports (interpreter start-up is most of
  the per-test cost): :mod:`~arte_edge.sandbox.child_runner` (entry point),
  :mod:`~arte_edge.sandbox.child_namespaces`, :mod:`~arte_edge.sandbox.child_limits`,
  :mod:`~arte_edge.sandbox.child_verdicts`.
"""

from __future__ import annotations

from arte_edge.sandbox.capabilities import sandbox_capabilities
from arte_edge.sandbox.results import SandboxResult, TestOutcome
from arte_edge.sandbox.run import run_tests

__all__ = ["SandboxResult", "TestOutcome", "run_tests", "sandbox_capabilities"]
