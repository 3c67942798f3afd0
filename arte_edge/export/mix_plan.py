"""Plan a per-tensor GGUF quantization mix to a budget from measured sensitivities (no llama.cpp, no torch).

The weights are split into *units* (one tensor kind over a block of consecutive layers, e.g. ``ffn_down`` of
layers 8-11; the token embedding and the output layer are units of their own). Each unit can take one of the
*levels* of :data:`LEVELS` (4, 5, 6 or 8 bits); a level is a K-quant where the tensor's rows are a multiple
of 256 and the legacy type of the same bits otherwise (the fallback llama.cpp itself would apply).
``sensitivity[unit][level]`` is the measured mean KL(fp32 || model with only this unit at that level) in nats
(mix_sensitivity.py). Assuming the contributions add up, :func:`plan_mix` solves the multiple-choice knapsack
"least total KL within the byte budget" greedily on each unit's lower convex hull (the classic bit-allocation
heuristic: always take the upgrade with the largest KL decrease per added byte that still fits).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from arte_edge.errors import ArteError

# level name → (type where the row length is a multiple of 256, type otherwise); cheapest first
LEVELS: dict[str, tuple[str, str]] = {"4": ("Q4_K", "Q4_0"), "5": ("Q5_K", "Q5_0"), "6": ("Q6_K", "Q8_0"),
                                      "8": ("Q8_0", "Q8_0")}
K_BLOCK = 256
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
OWN_UNITS = ("token_embd.weight", "output.weight")


def level_type(level: str, row_length: int) -> str:
    """The ggml type of ``level`` for a tensor whose rows have ``row_length`` elements."""
    k_type, legacy = LEVELS[level]
    return k_type if row_length % K_BLOCK == 0 else legacy


@dataclass(frozen=True)
class Unit:
    """A group of weight tensors that always get the same level."""

    name: str
    tensors: tuple[str, ...]


def weight_units(tensor_names: Sequence[str], n_layers: int, layers_per_unit: int) -> list[Unit]:
    """Units of the 2-D weight tensors ``tensor_names`` (GGUF names): each ``blk.N.<kind>`` grouped with the
    same kind in its block of ``layers_per_unit`` layers; other tensors (embedding, output) one unit each."""
    if layers_per_unit < 1:
        raise ArteError(f"layers_per_unit must be at least 1, got {layers_per_unit}")
    groups: dict[str, list[str]] = defaultdict(list)
    for name in tensor_names:
        match = _LAYER.match(name)
        if match is None:
            groups[name].append(name)
            continue
        first = int(match.group(1)) // layers_per_unit * layers_per_unit
        last = min(first + layers_per_unit, n_layers) - 1
        span = str(first) if first == last else f"{first}-{last}"
        groups[f"{match.group(2)}@{span}"].append(name)
    return [Unit(k, tuple(v)) for k, v in groups.items()]


@dataclass(frozen=True)
class MixPlan:
    """The chosen level of every unit, with the planner's prediction of size and KL."""

    levels: dict[str, str]
    tensor_types: dict[str, str]
    weight_bytes: int
    predicted_kl: float
    budget_bytes: int | None
    steps: list[dict[str, Any]] = field(default_factory=list, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the per-tensor types in full)."""
        counts: dict[str, int] = defaultdict(int)
        for qtype in self.tensor_types.values():
            counts[qtype] += 1
        return {"levels": dict(self.levels), "tensor_types": dict(self.tensor_types),
                "type_histogram": dict(sorted(counts.items())), "weight_bytes": self.weight_bytes,
                "predicted_kl": round(self.predicted_kl, 6), "budget_bytes": self.budget_bytes}


def _hull(costs: Mapping[str, tuple[int, float]]) -> list[str]:
    """Levels on the lower convex hull of (bytes, KL), cheapest first: dominated levels are never chosen."""
    points = sorted(costs.items(), key=lambda kv: (kv[1][0], kv[1][1]))
    hull: list[tuple[str, tuple[int, float]]] = []
    for name, (b, kl) in points:
        if hull and kl >= hull[-1][1][1]:
            continue  # more bytes, no less KL
        while len(hull) >= 2:
            (_, (b1, k1)), (_, (b2, k2)) = hull[-2], hull[-1]
            # drop the middle point when it lies above the segment from hull[-2] to this point (on it: kept)
            if (k1 - k2) * (b - b1) < (k1 - kl) * (b2 - b1):
                hull.pop()
            else:
                break
        hull.append((name, (b, kl)))
    return [name for name, _ in hull]


def plan_mix(units: Sequence[Unit], unit_bytes: Mapping[str, Mapping[str, int]],
             sensitivity: Mapping[str, Mapping[str, float]], tensor_types: Mapping[str, Mapping[str, str]], *,
             budget_bytes: int | None = None, max_kl: float | None = None,
             extra_limits: Sequence[tuple[Mapping[str, Mapping[str, int]], int]] = ()) -> MixPlan:
    """Choose a level per unit: low predicted KL with at most ``budget_bytes`` of weights, or (no budget) few
    bytes whose predicted KL is at most ``max_kl``; with both, the budget rules and ``max_kl`` is checked.
    Greedy on the convex hulls: near the optimum, not always at it (a step that no longer fits ends the search).
    ``extra_limits``: more ``(bytes per unit and level, limit)`` pairs every step must also respect (e.g. bytes
    read per token beside the file size).

    ``unit_bytes[unit][level]``: bytes of the unit's tensors at that level; ``sensitivity[unit][level]``: KL
    with only this unit at that level; ``tensor_types[level][tensor]``: the ggml type each tensor gets.
    ArteError when the budget is below the all-cheapest mix or ``max_kl`` cannot be met.
    """
    if budget_bytes is None and max_kl is None:
        raise ArteError("an auto mix needs a budget: max_size_mb, min_decode_tok_s or max_kl")
    hulls = {u.name: _hull({lv: (unit_bytes[u.name][lv], sensitivity[u.name][lv]) for lv in sensitivity[u.name]})
             for u in units}
    position = {u.name: 0 for u in units}

    def chosen(name: str) -> str:
        return hulls[name][position[name]]

    total = sum(unit_bytes[u][chosen(u)] for u in position)
    kl = sum(sensitivity[u][chosen(u)] for u in position)
    if budget_bytes is not None and total > budget_bytes:
        raise ArteError(f"the budget ({budget_bytes / 1e6:.1f} MB of weights) is below the smallest mix "
                        f"({total / 1e6:.1f} MB, every tensor at {min(LEVELS)} bits); raise it")
    extra = [sum(costs[u][chosen(u)] for u in position) for costs, _ in extra_limits]
    if any(used > limit for used, (_, limit) in zip(extra, extra_limits, strict=True)):
        raise ArteError(f"even the smallest mix (every tensor at {min(LEVELS)} bits) is over a byte limit of the "
                        "auto mix (bytes read per token); raise it")
    steps: list[dict[str, Any]] = []
    used_extra = extra
    while max_kl is None or budget_bytes is not None or kl > max_kl:
        best: tuple[float, str] | None = None
        for name in position:
            if position[name] + 1 >= len(hulls[name]):
                continue
            now, nxt = chosen(name), hulls[name][position[name] + 1]
            extra = unit_bytes[name][nxt] - unit_bytes[name][now]
            if budget_bytes is not None and total + extra > budget_bytes:
                continue
            if any(used + costs[name][nxt] - costs[name][now] > limit
                   for used, (costs, limit) in zip(used_extra, extra_limits, strict=True)):
                continue
            gain = (sensitivity[name][now] - sensitivity[name][nxt]) / max(extra, 1)
            if best is None or gain > best[0]:
                best = (gain, name)
        if best is None:
            break
        name = best[1]
        now, nxt = chosen(name), hulls[name][position[name] + 1]
        total += unit_bytes[name][nxt] - unit_bytes[name][now]
        kl += sensitivity[name][nxt] - sensitivity[name][now]
        used_extra = [used + costs[name][nxt] - costs[name][now]
                      for used, (costs, _) in zip(used_extra, extra_limits, strict=True)]
        position[name] += 1
        steps.append({"unit": name, "level": nxt, "weight_bytes": total, "predicted_kl": round(kl, 6)})
    if max_kl is not None and kl > max_kl:
        raise ArteError(f"no mix reaches max_kl {max_kl} (predicted {kl:.4f} at {total / 1e6:.1f} MB of weights); "
                        "raise max_kl or the size budget")
    levels = {u.name: chosen(u.name) for u in units}
    types = {t: tensor_types[levels[u.name]][t] for u in units for t in u.tensors}
    return MixPlan(levels, types, total, kl, budget_bytes, steps)


def metadata_bytes(units: Sequence[Unit]) -> int:
    """Bytes the ``arte_edge.mix.*`` strings add to a GGUF (key, type and length fields included): the same for
    every plan, since each holds one digit per unit."""
    some = MixPlan({u.name: "4" for u in units}, {}, 0, 0.0, None)
    return sum(8 + len(k.encode()) + 4 + 8 + len(v.encode()) for k, v in metadata_strings(units, some).items())


def metadata_strings(units: Sequence[Unit], plan: MixPlan) -> dict[str, str]:
    """The mix as short GGUF metadata strings (each < 128 bytes, what llama.cpp's KV overrides hold):
    ``arte_edge.mix.<kind>`` = the level of each layer block in order (e.g. ``"4456"``), ``arte_edge.mix.<tensor>``
    for own units, and ``arte_edge.mix.levels`` naming each level's types."""
    out: dict[str, str] = {"arte_edge.mix.levels": ",".join(f"{k}={'|'.join(dict.fromkeys(v))}"
                                                               for k, v in LEVELS.items())}
    for unit in units:
        kind = unit.name.split("@")[0].removesuffix(".weight")
        key = f"arte_edge.mix.{kind}"
        out[key] = out.get(key, "") + plan.levels[unit.name]
    too_long = [k for k, v in out.items() if len(k) >= 128 or len(v) >= 128]
    if too_long:
        raise ArteError(f"mix metadata {too_long[0]!r} is too long for a GGUF override; use more layers per unit")
    return out
