"""Device profiles: what a target CPU can do (cores, ISA, memory, bandwidth), from YAML or measured here.

Reference profiles live in the repository's top-level ``devices/`` folder (``raspberry-pi-5``, ...);
``host`` is measured on this machine by :func:`host_profile` and cached for a day.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from arte_edge.errors import ArteError, ConfigError
from arte_edge.paths import cache_dir

GIB = 1024**3
HOST_CACHE_MAX_AGE_S = 24 * 3600
BUSY_CACHE_MAX_AGE_S = 3600  # a bandwidth measured on a busy host is reused for an hour only
BUSY_LOAD_PER_CPU = 0.5
DEVICES_ENV = "ARTE_EDGE_DEVICES"

# /proc/cpuinfo flag → the ISA name used in profiles (x86 "flags" and aarch64 "Features").
_ISA_FLAGS = {
    "pni": "sse3", "ssse3": "ssse3", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512", "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16", "avx_vnni": "avx_vnni",
    "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
    "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fp16", "bf16": "bf16",
    "sve": "sve", "sve2": "sve2",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuSpec(_Strict):
    """The CPU as llama.cpp sees it: ``threads`` is how many to use for inference."""

    model: str
    cores: int = Field(gt=0)
    threads: int = Field(gt=0)
    isa: tuple[str, ...] = ()


class MemorySpec(_Strict):
    """Memory size and the bandwidth that bounds batch-1 decode; ``bandwidth_source`` says where it came from."""

    total_gib: float = Field(gt=0)
    usable_gib: float = Field(gt=0)
    bandwidth_gbs: float = Field(gt=0)
    bandwidth_source: Literal["measured", "datasheet", "estimate"]
    bandwidth_note: str = ""


class DeviceProfile(_Strict):
    """A target device. ``remote`` is an ``ssh://user@host[:port]`` URL where it can be benchmarked."""

    name: str
    description: str = ""
    cpu: CpuSpec
    memory: MemorySpec
    os: str = ""
    remote: str | None = None
    measured: bool = False
    source: str = ""

    @property
    def usable_bytes(self) -> float:
        """Usable memory in bytes."""
        return self.memory.usable_gib * GIB

    @property
    def bandwidth_bytes_s(self) -> float:
        """Memory bandwidth in bytes per second."""
        return self.memory.bandwidth_gbs * 1e9


def devices_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``: ``$ARTE_EDGE_DEVICES``, ./devices, then the repository's devices/."""
    dirs = [Path(p) for p in os.environ.get(DEVICES_ENV, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "devices", Path(__file__).resolve().parents[2] / "devices"]
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def known_devices() -> list[str]:
    """Names of the device profiles found in :func:`devices_dirs`."""
    names = {p.stem for d in devices_dirs() for p in d.glob("*.yaml")}
    return sorted(names)


def _find(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    if path.suffix in {".yaml", ".yml"} or os.sep in text:
        if not path.is_file():
            raise ArteError(f"{path}: device file not found; give a profile name ({', '.join(known_devices())}) "
                            "or a YAML path")
        return path
    for d in devices_dirs():
        candidate = d / f"{text}.yaml"
        if candidate.is_file():
            return candidate
    known = ", ".join(known_devices()) or "none found"
    raise ArteError(f"unknown device {text!r}; known devices: {known} (or give a YAML file)")


def load_device(name_or_path: str | Path, *, refresh: bool = False) -> DeviceProfile:
    """Load a profile by name (``raspberry-pi-5``) or YAML path; a ``measured: true`` profile is filled in
    from this host (:func:`host_profile`), with the file's own keys taking precedence."""
    path = _find(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ArteError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the file") from exc
    if not isinstance(data, dict):
        raise ArteError(f"{path}: a device profile must be a mapping of keys (name, cpu, memory, ...)")
    if data.get("measured"):
        measured = host_profile(refresh=refresh).model_dump(exclude={"name", "description", "remote", "source"})
        data = _deep_merge(measured, {k: v for k, v in data.items() if v is not None or k == "remote"})
    return validate_profile({**data, "source": str(path)}, str(path))


def validate_profile(data: Mapping[str, Any], source: str) -> DeviceProfile:
    """A :class:`DeviceProfile` from a mapping; every bad or unknown key is reported by its dotted name."""
    try:
        return DeviceProfile.model_validate(dict(data))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            elif err["type"] == "missing":
                problems.append(f"missing key '{key}'")
            else:
                problems.append(f"'{key}': {err['msg']}")
        raise ConfigError(source, problems) from exc


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, Mapping) and isinstance(
            out.get(key), dict) else value
    return out


# ---- measuring this host -------------------------------------------------------------------------------


def host_profile(*, refresh: bool = False, max_age_s: float = HOST_CACHE_MAX_AGE_S) -> DeviceProfile:
    """This machine, measured: cores, ISA flags, memory and copy bandwidth (cached for ``max_age_s``)."""
    cache = cache_dir() / "host_profile.json"
    if not refresh:
        cached = _read_cached(cache, max_age_s)
        if cached is not None:
            return cached
    load1 = os.getloadavg()[0]
    profile = measure_host()
    busy = max(load1, os.getloadavg()[0]) > BUSY_LOAD_PER_CPU * (os.cpu_count() or 1)
    cache.write_text(json.dumps({"measured_at": time.time(), "fingerprint": _fingerprint(), "busy": busy,
                                 "profile": profile.model_dump(mode="json")}))
    return profile


def _read_cached(path: Path, max_age_s: float) -> DeviceProfile | None:
    try:
        data = json.loads(path.read_text())
        age_limit = min(max_age_s, BUSY_CACHE_MAX_AGE_S) if data.get("busy") else max_age_s
        fresh = time.time() - float(data["measured_at"]) < age_limit
        if fresh and data["fingerprint"] == _fingerprint():
            return DeviceProfile.model_validate(data["profile"])
    except (OSError, ValueError, KeyError, ValidationError):
        pass
    return None


def _fingerprint() -> dict[str, Any]:
    # A different machine (or a resized VM) sharing the cache must not reuse the numbers.
    return {"node": platform.node(), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "mem_kib": meminfo().get("MemTotal", 0)}


def measure_host(bandwidth_mib: int = 256) -> DeviceProfile:
    """Measure this host now (no cache). Copy bandwidth uses two arrays of ``bandwidth_mib`` MiB each."""
    cores = physical_cores()
    threads = min(cores, available_cpus())
    mem = meminfo()
    load1 = os.getloadavg()[0]
    bandwidth = copy_bandwidth_gbs(size_mib=bandwidth_mib, threads=threads)
    note = (f"numpy copy of {bandwidth_mib} MiB arrays with {threads} thread(s), best of 5, counting read + "
            f"write bytes; load {load1:.2f} on {os.cpu_count()} CPUs when measured")
    return DeviceProfile(
        name="host", description=f"this machine ({platform.node()})",
        cpu=CpuSpec(model=cpu_model(), cores=cores, threads=threads, isa=isa_features()),
        memory=MemorySpec(total_gib=round(mem.get("MemTotal", 0) / 2**20, 2),
                          usable_gib=round(mem.get("MemAvailable", mem.get("MemTotal", 0)) / 2**20, 2),
                          bandwidth_gbs=round(bandwidth, 2), bandwidth_source="measured", bandwidth_note=note),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})", measured=True)


def _cpuinfo_blocks() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        blocks.append(fields)
    return blocks


def cpu_model() -> str:
    """The CPU model name (``model name`` on x86; implementer/part or ``Hardware`` on Arm)."""
    for block in _cpuinfo_blocks():
        for key in ("model name", "Model", "Hardware"):
            if block.get(key):
                return block[key]
    return platform.processor() or platform.machine()


def isa_features() -> tuple[str, ...]:
    """The SIMD features that matter to llama.cpp, from /proc/cpuinfo ``flags`` / ``Features``."""
    blocks = _cpuinfo_blocks()
    raw = set((blocks[0].get("flags") or blocks[0].get("Features") or "").split()) if blocks else set()
    return tuple(sorted({name for flag, name in _ISA_FLAGS.items() if flag in raw}))


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs; the logical CPU count where /proc/cpuinfo lacks them."""
    pairs = {(b.get("physical id", "0"), b["core id"]) for b in _cpuinfo_blocks() if "core id" in b}
    return len(pairs) or os.cpu_count() or 1


def available_cpus() -> int:
    """CPUs this process may run on (affinity / cgroup cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def meminfo() -> dict[str, int]:
    """/proc/meminfo in KiB (empty where it does not exist)."""
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0])
    except OSError:
        pass
    return out


def copy_bandwidth_gbs(size_mib: int = 256, threads: int = 1, repeats: int = 5) -> float:
    """Best-of-``repeats`` copy bandwidth in GB/s, counting the bytes read plus the bytes written.

    A copy (not a read-only sum, which is compute-bound in numpy) over arrays much larger than the last-level
    cache; ``threads`` slices are copied in parallel (numpy releases the GIL while copying).
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    n = size_mib * 2**20 // 8
    src = np.ones(n)
    dst = np.empty(n)
    dst.fill(0.0)  # touch every page now so page faults are not timed
    edges = np.linspace(0, n, threads + 1, dtype=np.int64)
    slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]
    best = 0.0
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))
            best = max(best, 2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return best
