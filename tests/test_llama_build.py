"""The llama.cpp build flag set, its key, and the guard against ggml's AMX crash (issue: AMX hosts segfault)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arte_edge import llama_build as lb
from arte_edge.errors import ArteError

REPO = Path(__file__).resolve().parents[1]
AMX_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
            "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
SAFE_INFO = AMX_INFO.replace("AMX_INT8 = 1 | ", "")
SAPPHIRE = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n")
EPYC = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9454 48-Core Processor\n"
        "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni\n")
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes sha1 sha2 crc32 asimddp i8mm\n"


def test_host_cpu_is_read_from_cpuinfo() -> None:
    intel = lb.read_host_cpu(SAPPHIRE, arch="x86_64")
    assert intel.model.startswith("Intel(R) Xeon") and intel.has_amx
    amd = lb.read_host_cpu(EPYC, arch="x86_64")
    assert amd.model.startswith("AMD EPYC") and not amd.has_amx and "avx512f" in amd.flags
    arm = lb.read_host_cpu(GRAVITON, arch="aarch64")
    assert "asimd" in arm.flags and not arm.has_amx


def test_flag_set_excludes_amx_only_where_the_cpu_has_it() -> None:
    intel = lb.read_host_cpu(SAPPHIRE, arch="x86_64")
    args = lb.wheel_cmake_args(intel)
    assert args[:3] == list(lb.BASE_CMAKE_ARGS)
    for var in ("CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS"):
        (flag,) = [a for a in args if a.startswith(f"-D{var}=")]
        assert flag.split("=", 1)[1].split() == ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
    # Hosts without AMX keep exactly the flags used before this change (so their builds are unchanged).
    assert lb.wheel_cmake_args(lb.read_host_cpu(EPYC, arch="x86_64")) == list(lb.BASE_CMAKE_ARGS)
    assert lb.wheel_cmake_args(lb.read_host_cpu(GRAVITON, arch="aarch64")) == list(lb.BASE_CMAKE_ARGS)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_the_flags_really_turn_amx_off_over_march_native() -> None:
    """GCC keeps explicit -mno-amx-* over an -march that enables AMX, wherever they stand on the line."""
    def macros(*flags: str) -> str:
        return subprocess.run(["gcc", *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True,
                              check=True).stdout

    assert "__AMX_INT8__" in macros("-march=sapphirerapids")
    for order in (("-march=sapphirerapids", *lb.NO_AMX_COMPILER_FLAGS),
                  (*lb.NO_AMX_COMPILER_FLAGS, "-march=sapphirerapids")):
        defined = macros(*order)
        assert "__AMX_INT8__" not in defined and "__AMX_TILE__" not in defined and "__AVX512F__" in defined


def test_build_key_changes_with_flags_cpu_compiler_and_version() -> None:
    intel = lb.read_host_cpu(SAPPHIRE, arch="x86_64")
    amd = lb.read_host_cpu(EPYC, arch="x86_64")
    base = lb.build_key("0.3.36", lb.wheel_cmake_args(intel), intel, "gcc 12.2.0", "cpython311")
    assert base == lb.build_key("0.3.36", lb.wheel_cmake_args(intel), intel, "gcc 12.2.0", "cpython311")
    others = {
        lb.build_key("0.3.36", list(lb.BASE_CMAKE_ARGS), intel, "gcc 12.2.0", "cpython311"),  # the old flags
        lb.build_key("0.3.36", lb.wheel_cmake_args(amd), amd, "gcc 12.2.0", "cpython311"),
        lb.build_key("0.3.37", lb.wheel_cmake_args(intel), intel, "gcc 12.2.0", "cpython311"),
        lb.build_key("0.3.36", lb.wheel_cmake_args(intel), intel, "gcc 13.1.0", "cpython311"),
        lb.build_key("0.3.36", lb.wheel_cmake_args(intel), intel, "gcc 12.2.0", "cpython312"),
    }
    assert base not in others and len(others) == 5


def test_setup_gets_its_flags_and_key_from_this_module() -> None:
    out = subprocess.run([sys.executable, "-m", "arte_edge.llama_build", "shell", "0.3.36"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert set(values) == {"LLAMA_CMAKE_ARGS", "LLAMA_BUILD_KEY", "LLAMA_BUILD_WHY"}
    cpu = lb.read_host_cpu()
    assert ("-mno-amx-int8" in values["LLAMA_CMAKE_ARGS"]) == (cpu.has_amx and cpu.arch == "x86_64")
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "arte_edge.llama_build shell" in setup and "--no-cache-dir" in setup


def test_system_info_is_parsed_per_backend() -> None:
    parsed = lb.parse_system_info(AMX_INFO)
    assert parsed["CPU.AMX_INT8"] == "1" and parsed["CPU.AVX2"] == "1" and parsed["CPU.REPACK"] == "1"
    assert lb.amx_enabled(AMX_INFO) and not lb.amx_enabled(SAFE_INFO)
    assert not lb.amx_enabled("CPU : AMX_INT8 = 0 | AVX2 = 1 |")


def test_guard_refuses_an_amx_build_on_an_amx_host_only() -> None:
    intel = lb.read_host_cpu(SAPPHIRE, arch="x86_64")
    amd = lb.read_host_cpu(EPYC, arch="x86_64")
    reason = lb.amx_crash_risk(AMX_INFO, intel)
    assert reason and "AMX_INT8 = 1" in reason and "Platinum 8480+" in reason
    assert lb.amx_crash_risk(SAFE_INFO, intel) is None
    assert lb.amx_crash_risk(AMX_INFO, amd) is None  # cannot happen natively, and would not run AMX code
    line = lb.refuse_message(reason)
    assert "\n" not in line and "scripts/setup.sh" in line
    remote = lb.refuse_message(reason, where="the device ssh://pi@board")
    assert "ssh://pi@board" in remote and "--no-cache-dir" in remote and "-mno-amx-int8" in remote
    record = lb.build_record(AMX_INFO, intel)
    assert record["safe"] is False and record["amx_kernels"] is True and record["host_has_amx"] is True


def test_check_llama_build_refuses_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lb, "llama_system_info", lambda: AMX_INFO)
    intel = lb.read_host_cpu(SAPPHIRE, arch="x86_64")
    monkeypatch.setattr(lb, "read_host_cpu", lambda: intel)
    with pytest.raises(ArteError, match=r"llama.cpp on this host: .*rerun ./scripts/setup.sh"):
        lb.check_llama_build()
    monkeypatch.setattr(lb, "llama_system_info", lambda: SAFE_INFO)
    assert lb.check_llama_build() == SAFE_INFO


def test_the_installed_build_is_safe_on_this_host() -> None:
    """The build setup.sh made here: no AMX kernels where the CPU has AMX, and the guard agrees."""
    record = lb.llama_build_record()
    assert record["safe"], record["reason"]
    if record["host_has_amx"]:
        assert record["amx_kernels"] is False
    check = subprocess.run([sys.executable, "-m", "arte_edge.llama_build", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["system_info"] == record["system_info"]
