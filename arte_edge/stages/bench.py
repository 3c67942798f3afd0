"""Stage `bench`: latency of every artifact on the recipe's device (this host by default)."""

from __future__ import annotations

from typing import Any

from arte_edge.artifacts import list_artifacts
from arte_edge.bench.core import BenchSettings, bench_artifact
from arte_edge.progress import log, progress
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_json


def run(ctx: RunContext) -> dict[str, Any]:
    """Benchmark each artifact in its own process and write bench/<device>.json."""
    cfg = ctx.recipe.bench
    settings = BenchSettings(threads=cfg.threads, prompt_tokens=cfg.prompt_tokens, gen_tokens=cfg.gen_tokens,
                             repetitions=cfg.repetitions, warmup=cfg.warmup)
    device = cfg.device
    artifacts = list_artifacts(ctx, include_base=ctx.recipe.evaluate.include_base)
    results: dict[str, Any] = {}
    with progress(f"bench on {device}", len(artifacts)) as advance:
        for artifact in artifacts:
            advance(0, f"bench {artifact.name}")
            results[artifact.name] = {"format": artifact.format, "quant": artifact.quant,
                                      **bench_artifact(artifact.resolve(ctx.run.root), artifact.format, settings)}
            if results[artifact.name]["busy_warning"]:
                log(f"[yellow]warning: the machine was busy while benchmarking {artifact.name}; "
                    "numbers may be low[/yellow]")
            advance(1)
    out = ctx.run.bench_path(device)
    atomic_write_json(out, {"device": device, "artifacts": results})
    return {"bench": str(out.relative_to(ctx.run.root)),
            "decode_tok_s": {k: round(v["summary"]["decode_tok_s"], 1) for k, v in results.items()}}
