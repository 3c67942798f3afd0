"""Benchmark an artifact on a remote device over SSH, with the device's own runtime.

The system ``ssh`` binary (and ``rsync`` when both ends have it) does the work, with host-key checking on
(``StrictHostKeyChecking=yes``) and key authentication only (``BatchMode=yes``). The artifact is copied
into a cache folder on the device, named by its sha256, verified by sha256 on both ends and resumed after
an interrupted copy (``*.partial`` then ``mv``); an artifact already there with the right hash is not sent
again. The device must have Python 3 with arte-edge and the runtime for the format (llama-cpp-python for
GGUF) installed; it runs ``python3 -m arte_edge.bench.worker '<json>'`` exactly as a local bench does.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from arte_edge.bench.core import BenchSettings, summarise
from arte_edge.errors import ArteError
from arte_edge.llama_build import build_record, read_host_cpu, refuse_message

DEFAULT_REMOTE_CACHE = ".cache/arte-edge/remote-artifacts"  # relative to the remote home directory
_CHUNK = 4 << 20

# Runs on the device: what it has (Python, arte-edge, rsync, its llama.cpp build and CPU) and its state now.
# The llama.cpp facts are raw (system info, /proc/cpuinfo): the verdict is taken here, whatever arte-edge
# version the device has.
_PROBE = r"""
import json, platform, shutil, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "rsync": bool(shutil.which("rsync")),
       "arch": platform.machine()}
try:
    out["cpuinfo"] = open("/proc/cpuinfo").read()
except OSError:
    out["cpuinfo"] = ""
try:
    import llama_cpp
    llama_cpp.llama_backend_init()
    out["llama_system_info"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
except Exception as exc:
    out["llama_error"] = f"{type(exc).__name__}: {exc}"
try:
    from arte_edge.bench.core import host_state, runtime_versions
    out.update(host=host_state(), versions=runtime_versions())
except Exception as exc:
    out["arte_edge_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

# Runs on the device: size and sha256 of each final file and size of each ``.partial``.
_STAT = r"""
import hashlib, json, os, sys
out = {}
for path in json.loads(sys.argv[1]):
    entry = {"size": -1, "sha256": None, "partial": -1}
    if os.path.isfile(path):
        entry["size"] = os.path.getsize(path)
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        entry["sha256"] = h.hexdigest()
    if os.path.isfile(path + ".partial"):
        entry["partial"] = os.path.getsize(path + ".partial")
    out[path] = entry
print(json.dumps(out))
"""

# Runs on the device: accept ``<path>.partial`` as ``<path>`` only if its sha256 matches.
_COMMIT = r"""
import hashlib, os, sys
path, want = sys.argv[1], sys.argv[2]
h = hashlib.sha256()
with open(path + ".partial", "rb") as fh:
    for block in iter(lambda: fh.read(1 << 22), b""):
        h.update(block)
if h.hexdigest() != want:
    os.remove(path + ".partial")
    print("mismatch " + h.hexdigest())
else:
    os.replace(path + ".partial", path)
    print("ok")
"""


@dataclass(frozen=True)
class SshTarget:
    """Where to connect: ``ssh://[user@]host[:port]``."""

    host: str
    user: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, url: str) -> SshTarget:
        """Parse ``ssh://user@host[:port]``; anything else is an ArteError naming the expected form."""
        parts = urlsplit(url)
        try:
            port = parts.port if parts.port is not None else 22
        except ValueError:
            port = -1
        if parts.scheme != "ssh" or not parts.hostname or port < 1 or parts.path not in ("", "/"):
            raise ArteError(f"{url!r}: not an SSH URL; use ssh://user@host[:port], e.g. ssh://pi@192.168.1.20")
        return cls(host=parts.hostname, user=parts.username, port=port)

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``) for the ssh command line."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return f"{self.destination}:{self.port}"


@dataclass(frozen=True)
class RemoteOptions:
    """How to reach and use the device.

    ``identity``: private key (``ssh -i``); ``known_hosts``: file holding the device's host key (default:
    ssh's own); ``ssh_config``: ssh ``-F`` file (``/dev/null`` ignores ``~/.ssh/config``); ``python``: the
    device's Python with arte-edge; ``cache_dir``: the device's artifact cache (relative paths are under
    its home); ``transfer``: ``rsync`` (resumes with deltas), ``ssh`` (appends the missing tail through
    ``ssh cat``) or ``auto`` (rsync when both ends have it).
    """

    identity: Path | None = None
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    python: str = "python3"
    cache_dir: str = DEFAULT_REMOTE_CACHE
    connect_timeout_s: int = 10
    command_timeout_s: float = 600
    bench_timeout_s: float = 1800
    transfer: Literal["auto", "rsync", "ssh"] = "auto"


class Ssh:
    """Runs commands on one target with fixed, safe options."""

    def __init__(self, target: SshTarget, options: RemoteOptions):
        if shutil.which("ssh") is None:
            raise ArteError("the ssh client is not installed; install openssh-client (apt-get install openssh-client)")
        self.target, self.options = target, options

    def base_args(self) -> list[str]:
        """``ssh`` and its options, without the destination."""
        o = self.options
        args = ["ssh", "-p", str(self.target.port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={int(o.connect_timeout_s)}", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=4"]
        if o.ssh_config is not None:
            args += ["-F", str(o.ssh_config)]
        if o.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={o.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if o.identity is not None:
            args += ["-i", str(o.identity), "-o", "IdentitiesOnly=yes"]
        return args

    def run(self, command: str, *, stdin: Any = None, timeout: float | None = None,
            what: str = "command") -> subprocess.CompletedProcess[str]:
        """Run a remote shell command; connection and auth failures become one-line ArteErrors."""
        args = [*self.base_args(), self.target.destination, "--", command]
        try:
            # DEVNULL unless sending a file: ssh would otherwise read the user's terminal
            proc = subprocess.run(args, stdin=subprocess.DEVNULL if stdin is None else stdin,
                                  capture_output=True, text=True,
                                  timeout=timeout or self.options.command_timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise ArteError(f"{self.target}: remote {what} timed out after {exc.timeout:.0f} s") from exc
        if proc.returncode == 255:
            raise ArteError(explain_ssh_failure(self.target, proc.stderr, self.options))
        return proc

    def python(self, script: str, *args: str, what: str, timeout: float | None = None) -> str:
        """Run ``python -c script args`` on the device and return its stdout."""
        py = self.options.python
        command = shlex.join([py, "-c", script, *args])
        proc = self.run(command, what=what, timeout=timeout)
        if proc.returncode != 0:
            raise ArteError(_remote_python_failure(self.target, py, proc, what))
        return proc.stdout


def explain_ssh_failure(target: SshTarget, stderr: str, options: RemoteOptions) -> str:
    """One line saying why ssh could not connect (exit 255) and what to do about it."""
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no output"
    kh = str(options.known_hosts or "~/.ssh/known_hosts")
    if "host key verification failed" in text.lower() or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        return (f"{target}: host key not trusted (not in {kh}, or changed); check the device's key fingerprint "
                f"and add it: ssh-keyscan -p {target.port} {target.host} >> {kh}")
    if "Permission denied" in text or "Too many authentication failures" in text:
        key = options.identity or "your default key"
        return (f"{target}: key authentication failed with {key}; add its .pub to the device's "
                "~/.ssh/authorized_keys or pass --identity KEY")
    unreachable = ("Connection refused", "timed out", "No route to host", "Could not resolve",
                   "Network is unreachable", "Connection reset", "Connection closed")
    if any(s in text for s in unreachable):
        return f"{target}: device unreachable ({last}); check the host, port and that sshd runs on it"
    return f"{target}: ssh failed ({last})"


def _remote_python_failure(target: SshTarget, python: str, proc: subprocess.CompletedProcess[str],
                           what: str) -> str:
    lines = proc.stderr.strip().splitlines() or ["no output"]
    if proc.returncode == 127 or "not found" in lines[-1] or "No such file" in lines[-1]:
        return (f"{target}: remote Python {python!r} not found; install Python 3 and arte-edge on the device "
                "or pass --remote-python PATH")
    if "No module named" in lines[-1]:
        return (f"{target}: {lines[-1]} in {python}; install arte-edge and its runtime on the device "
                "(pip install arte-edge) or pass --remote-python PATH")
    return f"{target}: remote {what} failed ({lines[-1]})"


# ---- local files ----------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """Hex sha256 of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class LocalFile:
    """One file of the artifact: where it is here, where it goes there, and its hash."""

    local: Path
    relative: str
    size: int
    sha256: str


def artifact_files(artifact: Path) -> list[LocalFile]:
    """The files making up a GGUF file or a model folder, with sizes and hashes."""
    paths = [artifact] if artifact.is_file() else sorted(p for p in artifact.rglob("*") if p.is_file())
    base = artifact.parent if artifact.is_file() else artifact
    return [LocalFile(p, p.relative_to(base).as_posix(), p.stat().st_size, file_sha256(p)) for p in paths]


def remote_artifact_path(cache_dir: str, artifact: Path, files: list[LocalFile]) -> str:
    """``<cache>/<hash prefix>/<name>``: the folder is named by content, so a changed file never collides."""
    digest = hashlib.sha256("".join(f"{f.relative}:{f.sha256}\n" for f in files).encode()).hexdigest()[:16]
    return f"{cache_dir.rstrip('/')}/{digest}/{artifact.name}"


# ---- transfer -------------------------------------------------------------------------------------------


def push_artifact(ssh: Ssh, artifact: Path, files: list[LocalFile], remote_root: str,
                  use_rsync: bool) -> dict[str, Any]:
    """Make ``remote_root`` hold ``artifact`` verified by sha256; returns what was sent."""
    remote = {f.relative: remote_root if artifact.is_file() else f"{remote_root}/{f.relative}" for f in files}
    stats = json.loads(ssh.python(_STAT, json.dumps(list(remote.values())), what="artifact check"))
    sent, copied = 0, []
    for f in files:
        path = remote[f.relative]
        state = stats[path]
        if state["sha256"] == f.sha256:
            continue
        sent += _push_file(ssh, f, path, state["partial"], use_rsync)
        copied.append(f.relative)
    return {"remote_path": remote_root, "copied": copied, "bytes_sent": sent,
            "method": "rsync" if use_rsync else "ssh", "sha256": {f.relative: f.sha256 for f in files}}


def _push_file(ssh: Ssh, f: LocalFile, path: str, partial_size: int, use_rsync: bool) -> int:
    """Copy one file to ``path.partial`` (resuming), verify its sha256 there, then move it into place."""
    parent = path.rsplit("/", 1)[0] if "/" in path else "."
    ssh.run(f"mkdir -p {shlex.quote(parent)}", what="mkdir")
    sent = 0
    for attempt in range(2):
        offset = partial_size if attempt == 0 and 0 < partial_size <= f.size else 0
        sent += _rsync(ssh, f.local, path + ".partial") if use_rsync else _append(ssh, f.local, path, offset)
        result = ssh.python(_COMMIT, path, f.sha256, what="checksum").strip()
        if result == "ok":
            return sent
    raise ArteError(f"{ssh.target}: {f.local} arrived corrupted twice (sha256 {result.split()[-1]} != "
                    f"{f.sha256}); check the device's storage and free space")


def _append(ssh: Ssh, local: Path, path: str, offset: int) -> int:
    """Send ``local[offset:]`` onto ``path.partial`` (truncated first when starting over)."""
    target = shlex.quote(path + ".partial")
    command = f"cat >> {target}" if offset else f"cat > {target}"
    with open(local, "rb") as fh:
        fh.seek(offset)
        # at least 1 MB/s before giving up, so big files on slow links get time
        timeout = max(ssh.options.command_timeout_s, (local.stat().st_size - offset) / 1e6)
        proc = ssh.run(command, stdin=fh, what="copy", timeout=timeout)
    if proc.returncode != 0:
        raise ArteError(f"{ssh.target}: copy of {local} failed ({_last(proc.stderr)}); check free space on the device")
    return local.stat().st_size - offset


def _rsync(ssh: Ssh, local: Path, remote_partial: str) -> int:
    """rsync into ``remote_partial`` in place, so an interrupted copy is kept and resumed with deltas."""
    args = ["rsync", "--partial", "--inplace", "--stats", "-e", shlex.join(ssh.base_args()), str(local),
            f"{ssh.target.destination}:{remote_partial}"]
    try:
        timeout = max(ssh.options.command_timeout_s, local.stat().st_size / 1e6)
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ArteError(f"{ssh.target}: rsync of {local} timed out; run again to resume") from exc
    if proc.returncode == 255 or (proc.returncode != 0 and "ssh" in proc.stderr.lower()):
        raise ArteError(explain_ssh_failure(ssh.target, proc.stderr, ssh.options))
    if proc.returncode != 0:
        raise ArteError(f"{ssh.target}: rsync of {local} failed ({_last(proc.stderr)}); run again to resume")
    for line in proc.stdout.splitlines():
        if line.startswith("Literal data:"):
            return int(line.split(":")[1].split()[0].replace(",", ""))
    return local.stat().st_size


def _last(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


# ---- the benchmark --------------------------------------------------------------------------------------


def probe(ssh: Ssh) -> dict[str, Any]:
    """What the device has: Python version, arte-edge runtime versions, rsync, and its host state."""
    info = json.loads(_last(ssh.python(_PROBE, what="probe")))
    if "arte_edge_error" in info:
        raise ArteError(f"{ssh.target}: arte-edge is not usable with {ssh.options.python} on the device "
                        f"({info['arte_edge_error']}); pip install arte-edge there or pass --remote-python PATH")
    return info


def bench_remote(url: str, artifact: Path, settings: BenchSettings, fmt: str | None = None,
                 options: RemoteOptions | None = None) -> dict[str, Any]:
    """Copy ``artifact`` to the device at ``url`` (if needed), benchmark it there, return the result.

    The result has the same keys as :func:`arte_edge.bench.core.bench_artifact` (host state and runtime
    versions are the device's) plus ``remote``: the URL, the remote path and what was transferred.
    """
    from arte_edge.bench.core import detect_format

    options = options or RemoteOptions()
    target = SshTarget.parse(url)
    if not artifact.exists():
        raise ArteError(f"{artifact}: artifact not found; give a .gguf file, an ONNX folder or an HF folder")
    fmt = fmt or detect_format(artifact)
    ssh = Ssh(target, options)
    before = probe(ssh)
    llama = device_llama_record(before)
    if fmt == "gguf" and llama and not llama["safe"]:
        raise ArteError(refuse_message(llama["reason"], where=f"the device {url}"))
    use_rsync = options.transfer == "rsync" or (
        options.transfer == "auto" and before["rsync"] and shutil.which("rsync") is not None)
    files = artifact_files(artifact)
    remote_root = remote_artifact_path(options.cache_dir, artifact, files)
    transfer = push_artifact(ssh, artifact, files, remote_root, use_rsync)
    raw = _run_worker(ssh, {"format": fmt, "path": remote_root, **asdict(settings)})
    after = probe(ssh)
    return {"settings": asdict(settings), "summary": summarise(raw, settings), "raw": raw,
            "size_bytes": sum(f.size for f in files), "host_before": before["host"], "host_after": after["host"],
            "busy_warning": _busy(before["host"], after["host"]), "versions": before["versions"],
            "llama_cpp": llama,
            "remote": {"url": url, "python": before["python"], **transfer}}


def device_llama_record(probe_info: dict[str, Any]) -> dict[str, Any] | None:
    """The device's llama.cpp build as a bench JSON records it (None without llama-cpp-python there)."""
    info = probe_info.get("llama_system_info")
    if info is None:
        return None
    return build_record(info, read_host_cpu(probe_info.get("cpuinfo", ""), arch=probe_info.get("arch") or "unknown"))


def _run_worker(ssh: Ssh, spec: dict[str, Any]) -> dict[str, Any]:
    command = shlex.join([ssh.options.python, "-m", "arte_edge.bench.worker", json.dumps(spec)])
    proc = ssh.run(command, timeout=ssh.options.bench_timeout_s, what="benchmark")
    if proc.returncode != 0:
        raise ArteError(f"{ssh.target}: benchmark of {spec['path']} failed on the device ({_last(proc.stderr)})")
    try:
        return json.loads(_last(proc.stdout))
    except ValueError as exc:
        raise ArteError(f"{ssh.target}: the device's worker printed no JSON ({_last(proc.stdout)})") from exc


def _busy(before: dict[str, Any], after: dict[str, Any]) -> bool:
    from arte_edge.bench.core import BUSY_LOAD_PER_CORE

    return max(before["load_1m"], after["load_1m"]) > BUSY_LOAD_PER_CORE * (before.get("cpu_count") or 1)
