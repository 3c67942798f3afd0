"""bench_remote against a real OpenSSH server on 127.0.0.1 (host-key checking on, key auth only).

Needs ``/usr/sbin/sshd`` (Debian: ``apt-get install -y openssh-server``); skipped without it. The "device"
is this machine: the worker runs with this interpreter on a tiny GGUF copied into a temporary cache.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from arte_edge.bench.core import BenchSettings
from arte_edge.bench.remote import RemoteOptions, bench_remote, file_sha256
from arte_edge.errors import ArteError

SSHD = Path("/usr/sbin/sshd")
REPO = Path(__file__).resolve().parents[2]
SETTINGS = BenchSettings(threads=1, prompt_tokens=8, gen_tokens=4, repetitions=1, warmup=0)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SSHD.exists(), reason="needs /usr/sbin/sshd: apt-get install -y openssh-server"),
    pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                       reason="needs the ssh client and ssh-keygen: apt-get install -y openssh-client"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "arte-edge-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass(frozen=True)
class SshServer:
    """A running sshd and what a client needs to reach it."""

    url: str
    port: int
    options: RemoteOptions
    remote_cache: Path
    workdir: Path


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("sshd did not start listening")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """sshd on 127.0.0.1:<free port> with a generated host key and a generated user key."""
    work = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(work / "host_ed25519_key")
    user_pub = _keygen(work / "id_ed25519")
    (work / "authorized_keys").write_text(user_pub + "\n")
    port = _free_port()
    config = work / "sshd_config"  # sshd needs an absolute -f path (a relative one resets connections)
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {work / 'host_ed25519_key'}",
        f"PidFile {work / 'sshd.pid'}", f"AuthorizedKeysFile {work / 'authorized_keys'}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", "LogLevel ERROR", ""]))
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub.split()[:2])}\n")
    with contextlib.suppress(PermissionError):  # privilege-separation directory (needed as root)
        os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config.resolve())], stderr=subprocess.PIPE)
    try:
        _wait_listening(port, proc)
        options = RemoteOptions(identity=work / "id_ed25519", known_hosts=work / "known_hosts",
                                ssh_config=Path(os.devnull), python=sys.executable,
                                cache_dir=str(work / "remote-cache"), connect_timeout_s=5, command_timeout_s=60)
        yield SshServer(f"ssh://{getpass.getuser()}@127.0.0.1:{port}", port, options, work / "remote-cache", work)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _remote_file(result: dict) -> Path:
    return Path(result["remote"]["remote_path"])


@pytest.mark.timeout(120)
def test_bench_remote_copies_verifies_and_runs(sshd: SshServer, tiny_gguf: Path) -> None:
    result = bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, transfer="ssh"))
    remote = _remote_file(result)
    assert remote.is_relative_to(sshd.remote_cache)
    assert file_sha256(remote) == file_sha256(tiny_gguf)
    assert result["remote"]["copied"] == [tiny_gguf.name]
    assert result["remote"]["bytes_sent"] == tiny_gguf.stat().st_size
    assert result["raw"]["runtime"] == "llama.cpp" and len(result["raw"]["tg_s"]) == 1
    assert result["summary"]["decode_tok_s"] > 0 and result["size_bytes"] == tiny_gguf.stat().st_size
    assert "llama-cpp-python" in result["versions"] and "load_1m" in result["host_before"]
    assert result["llama_cpp"]["safe"] and result["llama_cpp"]["system_info"]

    again = bench_remote(sshd.url, tiny_gguf, SETTINGS, options=sshd.options)
    assert again["remote"]["copied"] == [] and again["remote"]["bytes_sent"] == 0


@pytest.mark.timeout(120)
def test_interrupted_copy_resumes_and_stale_partial_is_replaced(sshd: SshServer, tiny_gguf: Path,
                                                               tmp_path: Path) -> None:
    artifact = tmp_path / "resume.gguf"
    data = tiny_gguf.read_bytes()
    artifact.write_bytes(data)
    options = replace(sshd.options, transfer="ssh", cache_dir=str(sshd.workdir / "resume-cache"))
    first = bench_remote(sshd.url, artifact, SETTINGS, options=options)
    remote = _remote_file(first)

    # An interrupted copy: the final file is gone and 40% sits in .partial; only the rest is sent.
    remote.unlink()
    partial = remote.with_name(remote.name + ".partial")
    partial.write_bytes(data[: len(data) * 2 // 5])
    resumed = bench_remote(sshd.url, artifact, SETTINGS, options=options)
    assert resumed["remote"]["bytes_sent"] == len(data) - len(data) * 2 // 5
    assert file_sha256(remote) == file_sha256(artifact) and not partial.exists()

    # A partial from different bytes fails the sha256 check and is sent again in full.
    remote.unlink()
    partial.write_bytes(b"\0" * (len(data) // 2))
    redone = bench_remote(sshd.url, artifact, SETTINGS, options=options)
    assert redone["remote"]["bytes_sent"] == len(data) + len(data) - len(data) // 2
    assert file_sha256(remote) == file_sha256(artifact)

    # A corrupted final file does not match the hash either and is replaced.
    remote.write_bytes(b"\1" * len(data))
    fixed = bench_remote(sshd.url, artifact, SETTINGS, options=options)
    assert fixed["remote"]["copied"] == [artifact.name] and file_sha256(remote) == file_sha256(artifact)


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync: apt-get install -y rsync")
def test_rsync_transfer(sshd: SshServer, tiny_gguf: Path) -> None:
    options = replace(sshd.options, transfer="rsync", cache_dir=str(sshd.workdir / "rsync-cache"))
    result = bench_remote(sshd.url, tiny_gguf, SETTINGS, options=options)
    assert result["remote"]["method"] == "rsync" and result["remote"]["copied"] == [tiny_gguf.name]
    assert file_sha256(_remote_file(result)) == file_sha256(tiny_gguf)


@pytest.mark.timeout(30)
def test_unreachable_port_fails_fast(sshd: SshServer, tiny_gguf: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ArteError, match="unreachable"):
        bench_remote(f"ssh://{getpass.getuser()}@127.0.0.1:{_free_port()}", tiny_gguf, SETTINGS,
                     options=replace(sshd.options, connect_timeout_s=2))
    assert time.monotonic() - start < 10


@pytest.mark.timeout(30)
def test_unknown_host_key_is_refused(sshd: SshServer, tiny_gguf: Path) -> None:
    other = sshd.workdir / "other_host_key"
    if not other.exists():
        _keygen(other)
    wrong = sshd.workdir / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n")
    with pytest.raises(ArteError, match="host key not trusted"):
        bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, known_hosts=wrong))
    empty = sshd.workdir / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(ArteError, match="host key not trusted"):
        bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, known_hosts=empty))


@pytest.mark.timeout(30)
def test_wrong_user_key_is_an_auth_error(sshd: SshServer, tiny_gguf: Path) -> None:
    stranger = sshd.workdir / "stranger_key"
    if not stranger.exists():
        _keygen(stranger)
    with pytest.raises(ArteError, match="key authentication failed"):
        bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, identity=stranger))


@pytest.mark.timeout(30)
def test_missing_remote_runtime(sshd: SshServer, tiny_gguf: Path) -> None:
    with pytest.raises(ArteError, match="remote Python '/nonexistent/python3' not found"):
        bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, python="/nonexistent/python3"))
    # A Python without arte-edge on it.
    with pytest.raises(ArteError, match="arte-edge is not usable"):
        bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, python="/usr/bin/python3"))


# A board whose owner built llama-cpp-python with ggml's AMX kernels, on an AMX CPU: its own Python sees a
# llama_cpp reporting AMX_INT8 = 1 and a /proc/cpuinfo with amx flags (both faked on the device side only).
_FAKE_LLAMA = '''
def llama_backend_init():
    pass
def llama_print_system_info():
    return b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 | "
'''
_FAKE_CPUINFO = '''
import builtins, io
_open = builtins.open
def _fake(path, *args, **kwargs):
    if path == "/proc/cpuinfo":
        return io.StringIO("model name\\t: Intel(R) Xeon(R) Platinum 8480+\\n"
                           "flags\\t\\t: avx2 avx512f amx_tile amx_int8\\n")
    return _open(path, *args, **kwargs)
builtins.open = _fake
'''


@pytest.mark.timeout(60)
def test_device_with_an_amx_build_is_refused_before_copying(sshd: SshServer, tiny_gguf: Path) -> None:
    fake = sshd.workdir / "amx-board"
    (fake / "llama_cpp").mkdir(parents=True, exist_ok=True)
    (fake / "llama_cpp" / "__init__.py").write_text(_FAKE_LLAMA)
    (fake / "sitecustomize.py").write_text(_FAKE_CPUINFO)
    python = fake / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={fake}:{REPO} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    cache = sshd.workdir / "amx-cache"
    with pytest.raises(ArteError, match=r"llama.cpp on the device ssh://.*AMX_INT8 = 1.*-mno-amx-int8"):
        bench_remote(sshd.url, tiny_gguf, SETTINGS, options=replace(sshd.options, python=str(python),
                                                                     cache_dir=str(cache)))
    assert not cache.exists() or not any(cache.rglob("*.gguf")), "nothing is copied to a device that would crash"
