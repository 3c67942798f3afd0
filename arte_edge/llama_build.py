"""The one llama.cpp build flag set for this host, its cache key, and the guard against the AMX crash.

ggml's AMX matmul path (``ggml_backend_amx_mul_mat``) segfaults at the first decode on Intel hosts whose CPU
has AMX (Sapphire Rapids and later; upstream llama.cpp issue 20824, ollama 17249/17006). A ``-march=native``
build enables it there. So on an x86 host with AMX every llama.cpp build of this project (the
llama-cpp-python wheel ``scripts/setup.sh`` makes, and the llama-bench/llama-server builds of the benchmarks)
adds ``-mno-amx-tile -mno-amx-int8 -mno-amx-bf16``: GCC keeps an explicit ``-mno-*`` over ``-march=native``,
and the AMX sources compile to nothing without ``__AMX_INT8__``. On hosts without AMX the flags are exactly
the ones used before (the compiler would not enable AMX there anyway), so those builds are unchanged.

The build is keyed by everything that changes its machine code (version, CMake arguments, compiler, the CPU
model and flags ``-march=native`` reads), so a cached wheel made with other flags is never reused.

At run time :func:`check_llama_build` reads llama.cpp's own system info; a build whose CPU backend reports
``AMX_INT8 = 1`` on a host that has AMX is refused with one line naming the fix (rerun setup), instead of
crashing later with SIGSEGV. Stdlib only: ``scripts/setup.sh`` runs this module before anything is installed::

    python3 -m arte_edge.llama_build shell     # CMAKE_ARGS, the build key and a description, as shell lines
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from arte_edge.errors import ArteError

AMX_CPU_FLAGS = ("amx_tile", "amx_int8", "amx_bf16")
NO_AMX_COMPILER_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
# What every llama-cpp-python build of this project passes to CMake (no multimodal part, no tests/examples).
BASE_CMAKE_ARGS = ("-DLLAVA_BUILD=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF")
# Flags of the CPU that ``-march=native`` turns into instruction-set choices; the key hashes these.
_ISA_FLAG = re.compile(r"^(avx|amx|sse|ssse|fma|f16c|bmi|vnni|avx512|sve|asimd|neon|i8mm|dotprod|sme)")


@dataclass(frozen=True)
class HostCpu:
    """What llama.cpp's native build depends on: architecture, CPU model name and feature flags."""

    arch: str
    model: str
    flags: frozenset[str]

    @property
    def has_amx(self) -> bool:
        """True when the CPU reports any AMX feature (the llama.cpp AMX path would be compiled in natively)."""
        return any(flag in self.flags for flag in AMX_CPU_FLAGS)


def read_host_cpu(cpuinfo: str | None = None, arch: str | None = None) -> HostCpu:
    """This host's CPU from ``/proc/cpuinfo`` (or the given text); empty flags where it cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = "", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return HostCpu(arch=arch or platform.machine(), model=model or platform.processor(), flags=flags)


def compiler_flags(cpu: HostCpu) -> tuple[str, ...]:
    """Extra C/C++ flags for a native llama.cpp build on ``cpu``: AMX off where the CPU has it, else none."""
    return NO_AMX_COMPILER_FLAGS if cpu.arch in ("x86_64", "AMD64") and cpu.has_amx else ()


def cmake_flag_args(cpu: HostCpu) -> list[str]:
    """``-DCMAKE_C_FLAGS=…``/``-DCMAKE_CXX_FLAGS=…`` for ``cpu`` (empty when no extra flag is needed)."""
    extra = " ".join(compiler_flags(cpu))
    return [f"-DCMAKE_C_FLAGS={extra}", f"-DCMAKE_CXX_FLAGS={extra}"] if extra else []


def wheel_cmake_args(cpu: HostCpu) -> list[str]:
    """The CMake arguments of the llama-cpp-python wheel ``scripts/setup.sh`` builds on ``cpu``."""
    return [*BASE_CMAKE_ARGS, *cmake_flag_args(cpu)]


def compiler_version() -> str:
    """First line of ``cc --version`` (part of the build key); empty when there is no compiler."""
    try:
        out = subprocess.run(["cc", "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.splitlines() or [""])[0].strip()


def build_key(version: str, cmake_args: list[str], cpu: HostCpu, compiler: str, python: str) -> str:
    """12 hex digits naming one build: same inputs, same key; any change of flags, CPU or compiler, a new one."""
    isa = sorted(flag for flag in cpu.flags if _ISA_FLAG.match(flag))
    payload = json.dumps({"version": version, "cmake_args": cmake_args, "arch": cpu.arch, "cpu": cpu.model,
                          "isa": isa, "compiler": compiler, "python": python}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def parse_system_info(text: str) -> dict[str, str]:
    """``llama_print_system_info()`` as ``{"CPU.AVX2": "1", "CPU.AMX_INT8": "1", …}`` (backend-qualified keys).

    The text looks like ``CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | REPACK = 1 |``; a backend name
    (``CPU``) prefixes the features that follow it.
    """
    out: dict[str, str] = {}
    backend = ""
    for part in text.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part or part.endswith(":"):
            backend, _, part = (s.strip() for s in part.partition(":"))
            if not part:
                continue
        name, _, value = (s.strip() for s in part.partition("="))
        if name:
            out[f"{backend}.{name}" if backend else name] = value
    return out


def amx_enabled(system_info: str) -> bool:
    """True when llama.cpp's system info says its CPU backend was built with the AMX kernels."""
    return any(key.rsplit(".", 1)[-1] == "AMX_INT8" and value == "1"
               for key, value in parse_system_info(system_info).items())


def amx_crash_risk(system_info: str, cpu: HostCpu) -> str | None:
    """Why this llama.cpp build would crash on ``cpu`` (AMX kernels built in, AMX present), or None when safe."""
    if amx_enabled(system_info) and cpu.has_amx:
        return (f"this llama.cpp build has ggml's AMX kernels (AMX_INT8 = 1) and this CPU ({cpu.model or cpu.arch}) "
                "has AMX: that path segfaults at the first decode (llama.cpp issue 20824)")
    return None


def refuse_message(reason: str, where: str = "this host") -> str:
    """The one line a user sees when a crashing build is found on ``where``."""
    fix = ("rerun ./scripts/setup.sh (it rebuilds llama-cpp-python with -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)"
           if where == "this host" else
           "rebuild llama-cpp-python there with CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 "
           "-mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
           "pip install --no-cache-dir --force-reinstall llama-cpp-python")
    return f"llama.cpp on {where}: {reason}; {fix}"


@cache
def llama_system_info() -> str:
    """The loaded llama.cpp's ``llama_print_system_info()`` (imports llama_cpp; cached per process)."""
    import llama_cpp

    llama_cpp.llama_backend_init()
    return llama_cpp.llama_print_system_info().decode(errors="replace").strip()


def check_llama_build() -> str:
    """Refuse a llama.cpp build that would crash on this host (one-line ArteError); return its system info.

    Call before loading any model with llama.cpp. Cheap after the first call.
    """
    info = llama_system_info()
    reason = amx_crash_risk(info, read_host_cpu())
    if reason:
        raise ArteError(refuse_message(reason))
    return info


def build_record(system_info: str, cpu: HostCpu) -> dict[str, object]:
    """What a report needs to say which kernels ran: system info, AMX state of build and CPU, the verdict."""
    reason = amx_crash_risk(system_info, cpu)
    return {"system_info": system_info, "amx_kernels": amx_enabled(system_info), "host_cpu": cpu.model,
            "host_arch": cpu.arch, "host_has_amx": cpu.has_amx, "safe": reason is None, "reason": reason}


def llama_build_record() -> dict[str, object]:
    """:func:`build_record` of the llama.cpp loaded in this process, on this host."""
    return build_record(llama_system_info(), read_host_cpu())


def _shell(version: str) -> str:
    cpu = read_host_cpu()
    args = wheel_cmake_args(cpu)
    py = f"{sys.implementation.name}{sys.version_info.major}{sys.version_info.minor}"
    key = build_key(version, args, cpu, compiler_version(), py)
    why = "AMX kernels off (-mno-amx-*): this CPU has AMX" if compiler_flags(cpu) else "native flags"
    lines = {"LLAMA_CMAKE_ARGS": " ".join(shlex.quote(a) for a in args), "LLAMA_BUILD_KEY": key,
             "LLAMA_BUILD_WHY": f"{cpu.arch}, {cpu.model or 'unknown CPU'}: {why}"}
    return "\n".join(f"{name}={shlex.quote(value)}" for name, value in lines.items())


def main(argv: list[str] | None = None) -> int:
    """``shell VERSION``: shell assignments for setup.sh; ``check``: exit 2 with the one-line reason if unsafe."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "shell":
        print(_shell(argv[1]))
        return 0
    if argv == ["check"]:
        try:
            print(json.dumps(llama_build_record()))
            check_llama_build()
        except ArteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    print("usage: python -m arte_edge.llama_build shell VERSION | check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
