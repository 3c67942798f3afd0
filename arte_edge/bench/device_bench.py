"""``arte-edge bench`` as a library: measure an artifact where the device profile says (here, over SSH, or
not at all), attach the labelled fit/roofline estimate, and render the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.bench.core import BenchSettings
from arte_edge.bench.devices import DeviceProfile
from arte_edge.bench.remote import RemoteOptions


def bench_on_device(path: Path, fmt: str, settings: BenchSettings, profile: DeviceProfile, url: str | None,
                    ctx: int | None, remote_options: RemoteOptions) -> dict[str, Any]:
    """Measure (here or over SSH) when the device allows it, and attach the labelled estimate."""
    from arte_edge.bench.core import bench_artifact
    from arte_edge.bench.remote import bench_remote
    from arte_edge.bench.roofline import assess, model_shape

    shape = model_shape(path, fmt)  # a corrupt model fails here, before any timing
    if url:
        result = bench_remote(url, path, settings, fmt, remote_options)
    elif profile.measured:
        result = bench_artifact(path, fmt, settings)
    else:
        result = {"settings": None, "summary": None, "size_bytes": _disk_size(path),
                  "note": f"not measured: {profile.name} has no remote; pass --remote ssh://user@host"}
    measured = result["summary"]["decode_tok_s"] if result.get("summary") else None
    if url and profile.measured:
        # Measured on the device but profiled here: a ratio between two machines would mean nothing.
        measured = None
        result["note"] = "estimate is for this host's profile; pass --device PROFILE for the remote device's"
    estimate = assess(shape, profile, context=ctx, gen_tokens=settings.gen_tokens, measured_decode_tok_s=measured)
    return {**result, "device": profile.model_dump(mode="json"), "estimate": estimate}


def _disk_size(path: Path) -> int:
    from arte_edge.artifacts import disk_size

    return disk_size(path)


def _measured_cells(summary: dict[str, Any] | None) -> list[str]:
    if summary is None:
        return ["—"] * 6
    return [f"{summary['prompt_tok_s']:.1f}", f"{summary['decode_tok_s']:.1f}", f"{summary['ttft_ms_p50']:.1f}",
            f"{summary['tpot_ms_p50']:.2f}", f"{summary['tpot_ms_p90']:.2f}",
            f"{(summary['peak_rss_bytes'] or 0) / 1e6:.0f}"]


def _estimate_cells(estimate: dict[str, Any]) -> list[str]:
    fit, roof = estimate["fit"], estimate["roofline"]
    gib = 2**30
    fits = (f"{'yes' if fit['fits'] else 'NO'}: {fit['total_bytes'] / gib:.2f} of {fit['usable_bytes'] / gib:.1f} GiB"
            f" at ctx {fit['context']}")
    ratio = roof.get("measured_over_roofline")
    return [fits, f"{roof['decode_tok_s']:.1f}", "—" if ratio is None else f"{ratio:.2f}"]


def bench_table(results: dict[str, dict[str, Any]], profile: DeviceProfile, settings: BenchSettings) -> str:
    """The Markdown table ``arte-edge bench`` prints: measured columns, then the labelled estimates."""
    mem = profile.memory
    lines = [f"device: {profile.name} ({profile.cpu.model}; {settings.threads} threads; "
             f"{mem.bandwidth_gbs:g} GB/s {mem.bandwidth_source})"]
    lines.append(f"| artifact | size MB | pp{settings.prompt_tokens} tok/s | tg{settings.gen_tokens} tok/s | "
                 "TTFT p50 ms | TPOT p50 ms | TPOT p90 ms | peak RSS MB | fits (estimate) | "
                 "roofline tg tok/s (estimate) | measured/roofline |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for name, r in results.items():
        cells = [name, f"{r['size_bytes'] / 1e6:.1f}", *_measured_cells(r["summary"]), *_estimate_cells(r["estimate"])]
        lines.append("| " + " | ".join(cells) + " |")
    notes = {r["note"] for r in results.values() if r.get("note")}
    lines += sorted(notes)
    lines.append("estimate = upper bound from bandwidth ÷ bytes read per token (weights + KV), not a measurement")
    return "\n".join(lines)
