"""The auto mix: a GGUF whose per-tensor types are chosen to a budget from measured sensitivities.

``build_auto_mix`` measures each unit's KL at every level (mix_sensitivity.py), plans the least-KL mix within
the budget (mix_plan.py) and has llama.cpp's own quantizer write it (per-tensor overrides, the run's importance
matrix), with the mix in the file's metadata (``arte_edge.mix.*``). Budgets (any of them; the tightest rules):
- ``max_size_mb``: the whole file, in MB (1e6 bytes);
- ``max_read_bytes``: weight bytes read per decoded token (a gathered embedding counts one row, a head or tied
  embedding in full), what batch-1 decode speed is bound by: the stage turns ``min_decode_tok_s`` on a device
  profile into it (bandwidth ÷ tok/s);
- ``max_kl``: without a byte budget, the fewest bytes whose predicted KL is at most this; the caller checks the
  measured KL and may call again with ``kl_target`` lowered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.mix_plan import MixPlan, metadata_bytes, metadata_strings, plan_mix
from arte_edge.export.mix_sensitivity import Sensitivity, measure_sensitivity
from arte_edge.export.quantize import QuantResult, quantize_gguf

Progress = Callable[[str], None]


@dataclass(frozen=True)
class AutoMixBudget:
    """What the auto mix must meet (see the module docstring); at least one field is set."""

    max_size_mb: float | None = None
    max_read_bytes: int | None = None
    max_kl: float | None = None
    layers_per_unit: int = 8
    calibration_tokens: int = 256

    def describe(self) -> str:
        """One line for logs and metadata, e.g. ``max_size_mb=100, max_kl=0.05``."""
        parts = [f"max_size_mb={self.max_size_mb:g}" if self.max_size_mb else "",
                 f"max_read_mb_per_token={self.max_read_bytes / 1e6:.1f}" if self.max_read_bytes else "",
                 f"max_kl={self.max_kl:g}" if self.max_kl is not None else ""]
        return ", ".join(p for p in parts if p)


def read_bytes(sens: Sensitivity) -> dict[str, dict[str, int]]:
    """Bytes each unit adds to a decoded token's reads: all of it, except a token embedding that is only
    gathered (the model has its own ``output.weight``), which is one row."""
    tied = not any(u.name == "output.weight" for u in sens.units)
    out = {u: dict(b) for u, b in sens.unit_bytes.items()}
    if "token_embd.weight" in out and not tied:
        rows = sens.embedding_rows or 1
        out["token_embd.weight"] = {lv: max(1, b // rows) for lv, b in out["token_embd.weight"].items()}
    return out


def plan_for_budget(sens: Sensitivity, budget: AutoMixBudget, header_bytes: int,
                    kl_target: float | None = None) -> MixPlan:
    """A low-KL plan within the budget's byte limits (file size, reads per token), or few bytes reaching
    ``kl_target`` (default ``budget.max_kl``) when it has none (plan_mix: greedy)."""
    target = budget.max_kl if kl_target is None else kl_target
    limits: list[tuple[dict[str, dict[str, int]], int]] = []
    if budget.max_size_mb:
        limits.append((sens.unit_bytes, int(budget.max_size_mb * 1e6) - sens.other_bytes - header_bytes))
    if budget.max_read_bytes:
        limits.append((read_bytes(sens), budget.max_read_bytes - sens.other_bytes))
    if not limits:
        return plan_mix(sens.units, sens.unit_bytes, sens.sensitivity, sens.tensor_types, max_kl=target)
    # every step respects every limit; each limit in turn leads the greedy search, the lower KL is kept
    plans = [plan_mix(sens.units, costs, sens.sensitivity, sens.tensor_types, budget_bytes=limit,
                      extra_limits=[other for other in limits if other is not lead])
             for lead in limits for costs, limit in [lead]]
    best = min(plans, key=lambda p: p.predicted_kl)
    file_bytes = sum(sens.unit_bytes[u][lv] for u, lv in best.levels.items())
    return MixPlan(best.levels, best.tensor_types, file_bytes, best.predicted_kl, best.budget_bytes, best.steps)


def build_auto_mix(f16: Path, hf_dir: Path, dst: Path, budget: AutoMixBudget, texts: Sequence[str], *,
                   imatrix: Path | None = None, threads: int = 2, progress: Progress | None = None,
                   sensitivity: Sensitivity | None = None, kl_target: float | None = None
                   ) -> tuple[QuantResult, MixPlan, Sensitivity]:
    """Measure (unless ``sensitivity`` is given), plan and write the auto mix of ``f16`` to ``dst``."""
    say = progress or (lambda _m: None)
    sens = sensitivity or measure_sensitivity(
        f16, hf_dir, dst.parent / f".{dst.stem}.levels", texts, imatrix=imatrix,
        layers_per_unit=budget.layers_per_unit, max_tokens=budget.calibration_tokens, threads=threads, progress=say)
    # the f16's own header, the mix's metadata strings, and up to 31 bytes of alignment per tensor
    header = header_bytes(f16) + metadata_bytes(sens.units) + 64 + 32 * len(sens.tensor_types.get("8", {}))
    plan = plan_for_budget(sens, budget, header, kl_target)
    say(f"auto mix: {len(plan.tensor_types)} tensors, {plan.weight_bytes / 1e6:.1f} MB of weights, "
        f"predicted KL {plan.predicted_kl:.4f} ({budget.describe()})")
    meta = {**metadata_strings(sens.units, plan), "arte_edge.mix.budget": budget.describe()[:120]}
    result = quantize_gguf(f16, dst, "AUTO", imatrix, threads=threads, tensor_types=plan.tensor_types, metadata=meta)
    if budget.max_size_mb and result.size_bytes > budget.max_size_mb * 1e6:
        raise ArteError(f"auto mix: {result.size_bytes / 1e6:.1f} MB written, over max_size_mb "
                        f"{budget.max_size_mb:g} (the planner's header estimate was off); lower the budget a little")
    return result, plan, sens


def header_bytes(path: Path) -> int:
    """Bytes of a GGUF that are not tensor data (metadata, tensor table, alignment): they count in its size."""
    from arte_edge.export.quantize import gguf_tensor_info

    return Path(path).stat().st_size - sum(t["n_bytes"] for t in gguf_tensor_info(path))


def mix_record(plan: MixPlan, sens: Sensitivity, budget: AutoMixBudget, measured_kl: float | None) -> dict[str, Any]:
    """What verify.json and the artifact's details keep about an auto mix."""
    return {"budget": budget.describe(), "plan": plan.to_dict(), "sensitivity": sens.to_dict(),
            "measured_kl": measured_kl}
