"""Parent side, the child interpreter: write the runner module, build its command and environment.

Also finds interpreter trees under directories the sandbox uid cannot traverse, which the runner
must re-expose inside its mount namespace.
"""

from __future__ import annotations

import atexit
import os
import py_compile
import shutil
import sys
import tempfile
import threading

from arte_edge.sandbox.assert_split import AST_LOCK
from arte_edge.sandbox.child_runner import CHILD_FUNCTIONS
from arte_edge.sandbox.settings import SAFE_PATH

_RUNNER_MODULE = "_arte_sandbox_runner"
_runner_lock = threading.Lock()
_runner_dir: str | None = None
_expose_cache: list[tuple[str, list[str]]] | None = None


def _runner_source() -> str:
    import inspect

    body = "\n\n".join(inspect.getsource(fn) for fn in CHILD_FUNCTIONS)
    # Annotations stay unevaluated strings: importing typing would cost more than the whole setup.
    return f"from __future__ import annotations\n\n{body}\n"


def ensure_runner() -> str:
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
        with AST_LOCK:  # compile builds an AST too
            py_compile.compile(path, doraise=True)
        for root, dirs, files in os.walk(directory):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        atexit.register(shutil.rmtree, directory, True)
        _runner_dir = directory
        return directory


def hidden_interpreter_paths() -> list[tuple[str, list[str]]]:
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


def scrubbed_env(workdir: str) -> dict[str, str]:
    """The runner's entire environment: a safe PATH, C.UTF-8, ``workdir`` as HOME and TMPDIR, fixed hash seed."""
    return {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def interpreter_cmd(runner_dir: str) -> list[str]:
    """The command line that starts the runner in ``runner_dir`` (``python -s -S [-P] -c ...``)."""
    # Not -I: it implies -E, which would drop PYTHONHASHSEED (reproducible set/dict order). The
    # environment is fully scrubbed instead, so -E would add nothing; -s -S -P give the rest of -I.
    flags = ["-s", "-S", "-P"] if sys.version_info >= (3, 11) else ["-s", "-S"]
    boot = f"import sys;sys.path.insert(0,{runner_dir!r});import {_RUNNER_MODULE} as r;r.child_main()"
    return [sys.executable, *flags, "-c", boot]
