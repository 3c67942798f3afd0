"""The auto mix: the planner on hand-made numbers (mix_plan.py), the sensitivity machinery on a tiny random Llama
(mix_sensitivity.py), llama.cpp's per-tensor overrides (quantize_gguf AUTO) and one end-to-end build (mix.py).

The tiny model here is the conftest one reshaped so the quantizers' blocks fit: hidden 64 (Q4_0/Q8_0 blocks of
32), intermediate 256 (``ffn_down`` rows of 256: K-quants), 3 layers (a short last block at 2 layers per unit)
and an untied output layer (embedding and output as units of their own). Converting it takes a few seconds;
measuring its sensitivities about 15 s on 2 busy cores (most of it gguf-py parsing the 49k-token vocabulary).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from arte_edge.errors import ArteError
from arte_edge.export import mix as M
from arte_edge.export import mix_plan as P
from arte_edge.export import mix_sensitivity as S
from arte_edge.export import quantize as Q
from arte_edge.models.gguf_file import read_header

LEVEL_NAMES = ("4", "5", "6", "8")
N_LAYERS = 3
TEXTS = [
    "The river rose slowly through the night, and by morning the low fields were under water. "
    "Farmers moved the cattle to the ridge and waited for the rain to stop.",
    "def area(r):\n    return 3.14159 * r * r\n\nprint(area(2))\n",
]


# ---------------------------------------------------------------------------------------------- planner tables

# Four units, four levels (bytes, KL). Hulls: A, B, C convex; D's "6" is dominated (more bytes and more KL than
# its "5", as Q6_K can be on weights that came from a Q4_1 grid).
BYTES = {"A": {"4": 100, "5": 125, "6": 150, "8": 200}, "B": {"4": 200, "5": 250, "6": 300, "8": 400},
         "C": {"4": 50, "5": 60, "6": 80, "8": 100}, "D": {"4": 100, "5": 125, "6": 150, "8": 200}}
KL = {"A": {"4": 0.5, "5": 0.3, "6": 0.2, "8": 0.15}, "B": {"4": 0.4, "5": 0.25, "6": 0.18, "8": 0.16},
      "C": {"4": 0.105, "5": 0.06, "6": 0.05, "8": 0.049}, "D": {"4": 0.3, "5": 0.2, "6": 0.35, "8": 0.05}}


def _units(names: list[str]) -> list[P.Unit]:
    return [P.Unit(n, (f"{n}.0.weight", f"{n}.1.weight")) for n in names]


def _types(names: list[str]) -> dict[str, dict[str, str]]:
    """tensor_types[level][tensor]: a distinct string per (level, tensor) so the plan's mapping is checkable."""
    return {lv: {t: f"T{lv}:{t}" for n in names for t in (f"{n}.0.weight", f"{n}.1.weight")} for lv in LEVEL_NAMES}


def _plan(bytes_: Mapping[str, Mapping[str, int]] = BYTES, kl: Mapping[str, Mapping[str, float]] = KL,
          **kwargs: Any) -> P.MixPlan:
    names = list(bytes_)
    return P.plan_mix(_units(names), bytes_, kl, _types(names), **kwargs)


def _brute(bytes_: Mapping[str, Mapping[str, int]], kl: Mapping[str, Mapping[str, float]], *,
           budget: int | None = None, max_kl: float | None = None) -> tuple[int, float, dict[str, str]]:
    """The exact optimum by enumeration: least KL within ``budget``, or fewest bytes with KL <= ``max_kl``."""
    names = list(bytes_)
    best: tuple[int, float, dict[str, str]] | None = None
    for combo in itertools.product(LEVEL_NAMES, repeat=len(names)):
        b = sum(bytes_[n][lv] for n, lv in zip(names, combo, strict=True))
        k = sum(kl[n][lv] for n, lv in zip(names, combo, strict=True))
        if budget is not None and b <= budget and (best is None or k < best[1] - 1e-12):
            best = (b, k, dict(zip(names, combo, strict=True)))
        if budget is None and k <= max_kl + 1e-12 and (best is None or b < best[0]):
            best = (b, k, dict(zip(names, combo, strict=True)))
    assert best is not None
    return best


def _check_consistent(plan: P.MixPlan, bytes_: Mapping[str, Mapping[str, int]],
                      kl: Mapping[str, Mapping[str, float]]) -> None:
    assert plan.weight_bytes == sum(bytes_[u][lv] for u, lv in plan.levels.items())
    assert plan.predicted_kl == pytest.approx(sum(kl[u][lv] for u, lv in plan.levels.items()), abs=1e-9)
    expected_types = {f"{u}.{i}.weight": f"T{lv}:{u}.{i}.weight" for u, lv in plan.levels.items() for i in (0, 1)}
    assert plan.tensor_types == expected_types


# ---------------------------------------------------------------------------------------------- plan_mix


@pytest.mark.parametrize(("budget", "levels", "weight_bytes", "kl"), [
    (450, {"A": "4", "B": "4", "C": "4", "D": "4"}, 450, 1.305),   # exactly the all-cheapest mix
    (470, {"A": "4", "B": "4", "C": "5", "D": "4"}, 460, 1.26),    # A's 4→5 (+25) does not fit, C's (+10) does
    (540, {"A": "6", "B": "4", "C": "5", "D": "5"}, 535, 0.86),
    (760, {"A": "8", "B": "6", "C": "5", "D": "8"}, 760, 0.44),    # D skips its dominated "6"
    (10_000, {"A": "8", "B": "8", "C": "8", "D": "8"}, 900, 0.409),
])
def test_plan_mix_is_the_hand_computed_optimum(budget: int, levels: dict[str, str], weight_bytes: int,
                                               kl: float) -> None:
    plan = _plan(budget_bytes=budget)
    assert plan.levels == levels
    assert plan.weight_bytes == weight_bytes <= budget
    assert plan.predicted_kl == pytest.approx(kl)
    assert plan.budget_bytes == budget
    _check_consistent(plan, BYTES, KL)
    optimum = _brute(BYTES, KL, budget=budget)
    assert plan.predicted_kl == pytest.approx(optimum[1]) and plan.levels == optimum[2]
    # the steps replay the greedy upgrades: each one within the budget, KL decreasing, ending at the plan
    assert all(s["weight_bytes"] <= budget for s in plan.steps)
    kls = [s["predicted_kl"] for s in plan.steps]
    assert kls == sorted(kls, reverse=True)
    if plan.steps:
        assert plan.steps[-1]["weight_bytes"] == plan.weight_bytes
    json.dumps(plan.to_dict())
    assert sum(plan.to_dict()["type_histogram"].values()) == len(plan.tensor_types) == 8


def test_plan_mix_budget_sweep_is_within_budget_and_monotone() -> None:
    previous = math.inf
    for budget in range(450, 1000, 5):
        plan = _plan(budget_bytes=budget)
        assert plan.weight_bytes <= budget
        _check_consistent(plan, BYTES, KL)
        assert plan.predicted_kl <= previous + 1e-12, f"more budget ({budget}) gave a higher KL"
        assert plan.levels["D"] != "6"  # dominated: never chosen
        previous = plan.predicted_kl


def test_plan_mix_random_tables_properties() -> None:
    """Random tables (dominated and non-convex levels included): within budget, monotone, consistent, never a
    dominated level, and never better than the exact optimum (i.e. the reported KL is the plan's true KL)."""
    for seed in range(12):
        rng = random.Random(seed)
        names = [f"u{i}" for i in range(4)]
        bytes_: dict[str, dict[str, int]] = {}
        kl: dict[str, dict[str, float]] = {}
        for n in names:
            base = rng.randint(10, 500)
            bytes_[n] = {"4": base, "5": base + rng.randint(1, 100), "6": base + rng.randint(101, 200),
                         "8": base + rng.randint(201, 400)}
            kl[n] = {lv: rng.uniform(0.0, 1.0) for lv in LEVEL_NAMES}
        smallest = sum(b["4"] for b in bytes_.values())
        largest = sum(b["8"] for b in bytes_.values())
        previous = math.inf
        for budget in range(smallest, largest + 50, max(1, (largest - smallest) // 40)):
            plan = _plan(bytes_, kl, budget_bytes=budget)
            assert plan.weight_bytes <= budget
            _check_consistent(plan, bytes_, kl)
            assert plan.predicted_kl <= previous + 1e-12
            previous = plan.predicted_kl
            assert plan.predicted_kl >= _brute(bytes_, kl, budget=budget)[1] - 1e-9
            for u, lv in plan.levels.items():
                b, k = bytes_[u][lv], kl[u][lv]
                dominated = [o for o in LEVEL_NAMES if o != lv and bytes_[u][o] <= b and kl[u][o] < k]
                assert not dominated, (seed, budget, u, lv, dominated)


@pytest.mark.parametrize(("max_kl", "levels", "weight_bytes"), [
    (1.4, {"A": "4", "B": "4", "C": "4", "D": "4"}, 450),  # the cheapest mix already meets it: no step
    (0.9, {"A": "6", "B": "4", "C": "5", "D": "5"}, 535),
    (0.5, {"A": "6", "B": "6", "C": "5", "D": "8"}, 710),
    (0.409, {"A": "8", "B": "8", "C": "8", "D": "8"}, 900),  # only everything at 8 bits reaches it
])
def test_plan_mix_max_kl_takes_the_fewest_bytes(max_kl: float, levels: dict[str, str], weight_bytes: int) -> None:
    plan = _plan(max_kl=max_kl + 1e-9)
    assert plan.levels == levels
    assert plan.weight_bytes == weight_bytes == _brute(BYTES, KL, max_kl=max_kl + 1e-9)[0]
    assert plan.predicted_kl <= max_kl + 1e-9
    assert plan.budget_bytes is None
    _check_consistent(plan, BYTES, KL)
    if weight_bytes == 450:
        assert plan.steps == []


def test_plan_mix_max_kl_is_monotone() -> None:
    previous = 0
    for target in [1.3 - 0.01 * i for i in range(90)]:
        plan = _plan(max_kl=target)
        assert plan.predicted_kl <= target
        assert plan.weight_bytes >= previous, f"a lower max_kl ({target}) gave fewer bytes"
        previous = plan.weight_bytes


def test_plan_mix_refusals_name_the_problem() -> None:
    with pytest.raises(ArteError, match=r"budget \(0\.0 MB of weights\) is below the smallest mix "
                                        r"\(0\.0 MB, every tensor at 4 bits\); raise it"):
        _plan(budget_bytes=449)
    big = {u: {lv: b * 100_000 for lv, b in levels.items()} for u, levels in BYTES.items()}
    with pytest.raises(ArteError, match=r"budget \(44\.9 MB of weights\) is below the smallest mix \(45\.0 MB"):
        _plan(big, budget_bytes=44_900_000)
    with pytest.raises(ArteError, match=r"no mix reaches max_kl 0\.4 \(predicted 0\.4090 at 0\.0 MB of weights\)"):
        _plan(max_kl=0.4)
    # with both: the budget rules and max_kl is checked against what the budget allows
    assert _plan(budget_bytes=760, max_kl=0.45).levels == {"A": "8", "B": "6", "C": "5", "D": "8"}
    with pytest.raises(ArteError, match=r"no mix reaches max_kl 0\.43 \(predicted 0\.4400"):
        _plan(budget_bytes=760, max_kl=0.43)
    with pytest.raises(ArteError, match="needs a budget"):
        _plan()


def test_hull_drops_dominated_and_non_convex_levels() -> None:
    # Q6_K worse than Q4_K (weights from a Q4_1 grid): more bytes, more KL
    assert P._hull({"4": (100, 0.30), "5": (125, 0.20), "6": (150, 0.35), "8": (200, 0.05)}) == ["4", "5", "8"]
    assert P._hull({"4": (100, 0.30), "5": (125, 0.30), "6": (150, 0.20), "8": (200, 0.15)}) == ["4", "6", "8"]
    assert P._hull({"4": (100, 0.30), "5": (125, 0.30), "6": (150, 0.20), "8": (200, 0.05)}) == ["4", "8"]
    # "5" above the segment 4→6 (a worse deal than going straight to 6)
    assert P._hull({"4": (100, 1.0), "5": (125, 0.9), "6": (150, 0.2), "8": (200, 0.1)}) == ["4", "6", "8"]
    # same bytes (6 and 8 are both Q8_0 where rows are not a multiple of 256): one of them
    assert P._hull({"4": (100, 0.5), "5": (125, 0.3), "6": (200, 0.1), "8": (200, 0.1)}) == ["4", "5", "6"]
    # the last (all-dominating) level: everything else dropped except the cheapest
    assert P._hull({"4": (100, 0.5), "5": (125, 0.6), "6": (150, 0.7), "8": (200, 0.0)}) == ["4", "8"]
    # a convex curve keeps every level
    assert P._hull({"4": (100, 1.0), "5": (125, 0.5), "6": (150, 0.25), "8": (200, 0.125)}) == list(LEVEL_NAMES)


def test_a_level_on_the_hull_segment_stays_available() -> None:
    plan = _plan({"u": {"4": 100, "5": 125, "6": 150, "8": 200}}, {"u": {"4": 1.0, "5": 0.75, "6": 0.5, "8": 0.4}},
                 budget_bytes=125)
    assert plan.levels == {"u": "5"}  # KL 0.75 within the budget; the plan keeps "4" (KL 1.0)


def test_a_dominated_level_is_never_chosen() -> None:
    for budget in range(450, 1000, 5):
        assert _plan(budget_bytes=budget).levels["D"] != "6"
    for target in [1.3 - 0.01 * i for i in range(90)]:
        assert _plan(max_kl=target).levels["D"] != "6"


# ---------------------------------------------------------------------------------------------- units, metadata


def _gguf_names(n_layers: int, kinds: tuple[str, ...] = ("attn_q", "ffn_down"), output: bool = True) -> list[str]:
    """2-D weight names in the converter's order: embedding, the layers in order, then the output layer."""
    names = ["token_embd.weight"] + [f"blk.{i}.{k}.weight" for i in range(n_layers) for k in kinds]
    return names + (["output.weight"] if output else [])


def test_weight_units_group_kinds_by_layer_block() -> None:
    units = P.weight_units(_gguf_names(10), 10, 4)
    assert [u.name for u in units] == ["token_embd.weight", "attn_q.weight@0-3", "ffn_down.weight@0-3",
                                       "attn_q.weight@4-7", "ffn_down.weight@4-7", "attn_q.weight@8-9",
                                       "ffn_down.weight@8-9", "output.weight"]
    by_name = {u.name: u.tensors for u in units}
    assert by_name["ffn_down.weight@0-3"] == tuple(f"blk.{i}.ffn_down.weight" for i in range(4))
    assert by_name["attn_q.weight@8-9"] == ("blk.8.attn_q.weight", "blk.9.attn_q.weight")  # the short last block
    assert by_name["token_embd.weight"] == ("token_embd.weight",)
    assert by_name["output.weight"] == ("output.weight",)
    assert sorted(t for u in units for t in u.tensors) == sorted(_gguf_names(10))  # each tensor exactly once
    # a last block of a single layer, one layer per unit, more layers per unit than layers
    assert [u.name for u in P.weight_units(_gguf_names(9, ("ffn_up",), False), 9, 4)] == [
        "token_embd.weight", "ffn_up.weight@0-3", "ffn_up.weight@4-7", "ffn_up.weight@8"]
    assert [u.name for u in P.weight_units(_gguf_names(3, ("ffn_up",), False), 3, 1)][1:] == [
        "ffn_up.weight@0", "ffn_up.weight@1", "ffn_up.weight@2"]
    assert [u.name for u in P.weight_units(_gguf_names(3, ("ffn_up",), False), 3, 8)][1:] == ["ffn_up.weight@0-2"]
    with pytest.raises(ArteError, match="layers_per_unit must be at least 1, got 0"):
        P.weight_units(_gguf_names(3), 3, 0)


@pytest.mark.parametrize(("level", "row", "expected"), [
    ("4", 256, "Q4_K"), ("4", 1024, "Q4_K"), ("4", 64, "Q4_0"), ("4", 320, "Q4_0"), ("4", 896, "Q4_0"),
    ("5", 512, "Q5_K"), ("5", 128, "Q5_0"), ("6", 768, "Q6_K"), ("6", 576, "Q8_0"), ("8", 256, "Q8_0"),
    ("8", 64, "Q8_0"),
])
def test_level_type_k_quant_only_on_rows_of_256(level: str, row: int, expected: str) -> None:
    assert P.level_type(level, row) == expected


def _levels_plan(levels: dict[str, str]) -> P.MixPlan:
    return P.MixPlan(levels, {}, 0, 0.0, None)


def test_metadata_strings_one_digit_per_block_per_kind() -> None:
    units = P.weight_units(_gguf_names(10), 10, 4)
    levels = {"token_embd.weight": "5", "attn_q.weight@0-3": "4", "ffn_down.weight@0-3": "8",
              "attn_q.weight@4-7": "5", "ffn_down.weight@4-7": "6", "attn_q.weight@8-9": "6",
              "ffn_down.weight@8-9": "4", "output.weight": "8"}
    meta = P.metadata_strings(units, _levels_plan(levels))
    assert meta == {"arte_edge.mix.levels": "4=Q4_K|Q4_0,5=Q5_K|Q5_0,6=Q6_K|Q8_0,8=Q8_0",
                    "arte_edge.mix.token_embd": "5", "arte_edge.mix.attn_q": "456",
                    "arte_edge.mix.ffn_down": "864", "arte_edge.mix.output": "8"}
    assert all(len(k.encode()) < 128 and len(v.encode()) < 128 for k, v in meta.items())


def test_metadata_strings_too_long_for_an_override() -> None:
    for n_layers, ok in ((127, True), (128, False), (300, False)):
        units = P.weight_units(_gguf_names(n_layers, ("ffn_down",)), n_layers, 1)
        plan = _levels_plan({u.name: "4" for u in units})
        if ok:
            assert P.metadata_strings(units, plan)["arte_edge.mix.ffn_down"] == "4" * 127
        else:
            with pytest.raises(ArteError, match=r"'arte_edge\.mix\.ffn_down' is too long .*more layers per unit"):
                P.metadata_strings(units, plan)
    units = P.weight_units(_gguf_names(300, ("ffn_down",)), 300, 8)  # 38 blocks: fits again
    assert len(P.metadata_strings(units, _levels_plan({u.name: "4" for u in units}))[
        "arte_edge.mix.ffn_down"]) == 38


# ---------------------------------------------------------------------------------------------- plan_for_budget


def _sens(units: list[P.Unit], bytes_: Mapping[str, Mapping[str, int]], kl: Mapping[str, Mapping[str, float]],
          *, other: int = 0, rows: int = 0) -> S.Sensitivity:
    types = {lv: {t: lv for u in units for t in u.tensors} for lv in LEVEL_NAMES}
    return S.Sensitivity(units, {u: dict(b) for u, b in bytes_.items()}, {u: dict(k) for u, k in kl.items()},
                         types, other, 64, 0.0, rows)


def test_plan_for_budget_size_counts_other_tensors_and_header() -> None:
    units = _units(list(BYTES))
    sens = _sens(units, BYTES, KL, other=10)
    plan = M.plan_for_budget(sens, M.AutoMixBudget(max_size_mb=555e-6), header_bytes=5)  # 540 bytes of weights
    assert plan.levels == {"A": "6", "B": "4", "C": "5", "D": "5"} and plan.weight_bytes == 535
    with pytest.raises(ArteError, match="below the smallest mix"):
        M.plan_for_budget(sens, M.AutoMixBudget(max_size_mb=464e-6), header_bytes=5)  # 449 of weights
    plan = M.plan_for_budget(sens, M.AutoMixBudget(max_kl=0.9), header_bytes=5)
    assert plan.weight_bytes == 535 and plan.budget_bytes is None
    assert M.plan_for_budget(sens, M.AutoMixBudget(max_kl=0.9), 5, kl_target=0.5).weight_bytes == 710
    with pytest.raises(ArteError, match="needs a budget"):
        M.plan_for_budget(sens, M.AutoMixBudget(), header_bytes=5)


def test_read_bytes_counts_one_row_of_a_gathered_embedding() -> None:
    bytes_ = {"token_embd.weight": {"4": 1000, "5": 1250, "6": 1500, "8": 2000},
              "blk@0": {"4": 100, "5": 125, "6": 150, "8": 200},
              "output.weight": {"4": 1000, "5": 1250, "6": 1500, "8": 2000}}
    kl = {u: {"4": 0.3, "5": 0.18, "6": 0.1, "8": 0.0} for u in bytes_}  # convex in bytes
    units = [P.Unit(u, (u,)) for u in bytes_]
    untied = M.read_bytes(_sens(units, bytes_, kl, rows=100))
    assert untied["token_embd.weight"] == {"4": 10, "5": 12, "6": 15, "8": 20}
    assert untied["output.weight"] == bytes_["output.weight"] and untied["blk@0"] == bytes_["blk@0"]
    tied = M.read_bytes(_sens(units[:2], {u: bytes_[u] for u in ("token_embd.weight", "blk@0")}, kl, rows=100))
    assert tied["token_embd.weight"] == bytes_["token_embd.weight"]  # it is the head too: read in full
    # a read budget lets the gathered embedding go to 8 bits for almost nothing, the file budget does not
    sens = _sens(units, bytes_, kl, other=7, rows=100)
    plan = M.plan_for_budget(sens, M.AutoMixBudget(max_read_bytes=7 + 10 + 100 + 1000 + 10), header_bytes=0)
    assert plan.levels["token_embd.weight"] == "8"
    assert plan.weight_bytes == sum(bytes_[u][lv] for u, lv in plan.levels.items())  # file bytes, not reads
    plan = M.plan_for_budget(sens, M.AutoMixBudget(max_size_mb=(7 + 2100 + 25) / 1e6), header_bytes=0)
    assert plan.levels["token_embd.weight"] == "4" and plan.levels["blk@0"] == "5"


def test_plan_for_budget_two_limits_keeps_the_one_meeting_both() -> None:
    bytes_ = {"token_embd.weight": {"4": 1000, "5": 1250, "6": 1500, "8": 2000},
              "blk@0": {"4": 100, "5": 125, "6": 150, "8": 200},
              "output.weight": {"4": 1000, "5": 1250, "6": 1500, "8": 2000}}
    kl = {"token_embd.weight": {"4": 0.3, "5": 0.18, "6": 0.1, "8": 0.0},
          "blk@0": {"4": 0.3, "5": 0.18, "6": 0.1, "8": 0.0},
          "output.weight": {"4": 0.01, "5": 0.008, "6": 0.007, "8": 0.0065}}
    units = [P.Unit(u, (u,)) for u in bytes_]
    sens = _sens(units, bytes_, kl, rows=100)
    # file limit 2150 (+50 over all-4-bit): the size plan takes blk@0 to 6 (reads 1160, within 1170);
    # read limit 1170 (+60): the read plan takes the gathered embedding to 8 (+1000 of file: over 2150)
    both = M.AutoMixBudget(max_size_mb=2150e-6, max_read_bytes=1170)
    plan = M.plan_for_budget(sens, both, header_bytes=0)
    assert plan.levels == {"token_embd.weight": "4", "blk@0": "6", "output.weight": "4"}
    assert sum(bytes_[u][lv] for u, lv in plan.levels.items()) <= 2150
    assert sum(M.read_bytes(sens)[u][lv] for u, lv in plan.levels.items()) <= 1170
    # both plans meet both limits: the one with the lower KL (here the read plan; the greedy size plan is worse)
    kl = {"token_embd.weight": {"4": 0.97, "5": 0.53, "6": 0.49, "8": 0.05},
          "blk@0": {"4": 0.65, "5": 0.62, "6": 0.51, "8": 0.33},
          "output.weight": {"4": 0.0, "5": 0.0, "6": 0.0, "8": 0.0}}
    bytes_["output.weight"] = {"4": 10, "5": 11, "6": 12, "8": 13}
    sens = _sens(units, bytes_, kl, rows=100)
    size_plan = M.plan_for_budget(sens, M.AutoMixBudget(max_size_mb=2110e-6), header_bytes=0)
    assert size_plan.levels == {"token_embd.weight": "5", "blk@0": "8", "output.weight": "4"}  # reads 222
    plan = M.plan_for_budget(sens, M.AutoMixBudget(max_size_mb=2110e-6, max_read_bytes=226), header_bytes=0)
    assert plan.levels == {"token_embd.weight": "8", "blk@0": "4", "output.weight": "4"}
    assert plan.predicted_kl == pytest.approx(0.70)
    assert plan.predicted_kl < size_plan.predicted_kl
    assert plan.weight_bytes == 2110
    assert plan.weight_bytes == sum(bytes_[u][lv] for u, lv in plan.levels.items())


def test_plan_for_budget_two_limits_finds_a_mix_meeting_both() -> None:
    bytes_ = {"token_embd.weight": {"4": 1000, "5": 1250, "6": 1500, "8": 2000},
              "blk@0": {"4": 100, "5": 150, "6": 175, "8": 200},
              "output.weight": {"4": 10, "5": 11, "6": 12, "8": 13}}
    kl = {"token_embd.weight": {"4": 1.0, "5": 0.6, "6": 0.3, "8": 0.0},
          "blk@0": {"4": 1.0, "5": 0.5, "6": 0.3, "8": 0.2},
          "output.weight": {"4": 0.0, "5": 0.0, "6": 0.0, "8": 0.0}}
    units = [P.Unit(u, (u,)) for u in bytes_]
    sens = _sens(units, bytes_, kl, rows=100)
    # file: 1110 at 4 bits, limit 1200 → the size plan alone takes blk@0 to 6 (reads 195, over 150);
    # reads: 120 at 4 bits, limit 150 → the read plan alone takes the embedding to 8 (file 2110, over 1200).
    # Yet the all-4-bit mix meets both (file 1110, reads 120): plan_for_budget should return it, not refuse.
    plan = M.plan_for_budget(sens, M.AutoMixBudget(max_size_mb=1200e-6, max_read_bytes=150), header_bytes=0)
    assert sum(bytes_[u][lv] for u, lv in plan.levels.items()) <= 1200


# ---------------------------------------------------------------------------------------------- _unpermute


def _llama_permute(w: Any, n_head: int) -> Any:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (q/k rows for its RoPE layout)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize(("n_head", "head_dim", "cols"), [(4, 16, 64), (2, 16, 64), (3, 8, 5), (1, 4, 3)])
def test_unpermute_inverts_the_converter_permute(n_head: int, head_dim: int, cols: int) -> None:
    import numpy as np
    import torch

    w = torch.randn(n_head * head_dim, cols)
    permuted = _llama_permute(w, n_head)
    assert not torch.equal(permuted, w)
    assert torch.equal(S._unpermute(n_head)(permuted), w)
    a = np.arange(n_head * head_dim * cols, dtype=np.float32).reshape(n_head * head_dim, cols)
    assert np.array_equal(S._unpermute(n_head)(_llama_permute(a, n_head)), a)  # numpy too
    if n_head > 1 and head_dim % 4 == 0:  # with another head count it is not the inverse
        assert not torch.equal(S._unpermute(2 * n_head)(permuted), w)


def test_unpermute_leaves_rows_that_cannot_be_heads() -> None:
    import torch

    w = torch.randn(10, 3)
    assert S._unpermute(4)(w) is w


# ---------------------------------------------------------------------------------------------- tiny model fixtures


@pytest.fixture(scope="module")
def mix_model_dir(smollm2_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama: hidden 64, intermediate 256, 3 layers, 4 heads / 2 KV heads, untied output; weights
    10x the default scale, so its logits are far from uniform and quantization KLs are well above fp32 rounding."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("mix_model")
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=N_LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=256,
                         max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=0.2,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    for item in smollm2_tokenizer_dir.iterdir():
        shutil.copy2(item, out / item.name)
    return out


@pytest.fixture(scope="module")
def mix_f16(mix_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from arte_edge.export.converter import convert_to_gguf

    return convert_to_gguf(mix_model_dir, tmp_path_factory.mktemp("mix_gguf") / "mix.f16.gguf")


@pytest.fixture(scope="module")
def weight_shapes(mix_f16: Path) -> dict[str, list[int]]:
    return S.weight_tensors(mix_f16)


# ---------------------------------------------------------------------------------------------- quantize_gguf AUTO


def test_quantize_auto_writes_exactly_the_requested_types(mix_f16: Path, weight_shapes: dict[str, list[int]],
                                                           tmp_path: Path) -> None:
    import llama_cpp

    assert weight_shapes["blk.0.ffn_down.weight"] == [256, 64] and weight_shapes["blk.0.attn_q.weight"] == [64, 64]
    # output.weight first: an unanchored pattern would also catch blk.N.attn_output.weight
    wanted = {"output.weight": "Q4_0", "token_embd.weight": "Q5_0"}
    cycle_64 = itertools.cycle(["Q8_0", "Q4_0", "Q5_0", "Q5_1", "Q4_1"])
    cycle_256 = itertools.cycle(["Q4_K", "Q5_K", "Q6_K"])
    for name, shape in weight_shapes.items():
        if name not in wanted:
            wanted[name] = next(cycle_256 if shape[0] % 256 == 0 else cycle_64)
    # blk.1 vs blk.1x style prefixes cannot collide here (3 layers), but attn_output vs output can
    assert wanted["blk.0.attn_output.weight"] != wanted["output.weight"]
    res = Q.quantize_gguf(mix_f16, tmp_path / "auto.gguf", "auto", tensor_types=wanted,
                          metadata={"arte_edge.mix.x": "45", "arte_edge.mix.note": "x" * 127}, threads=1)
    info = {t["name"]: t for t in Q.gguf_tensor_info(res.path)}
    assert {n: info[n]["type"] for n in wanted} == wanted
    assert {t["type"] for n, t in info.items() if n not in wanted} == {"F32"}  # the norms are untouched
    assert res.qtype == "AUTO" and res.n_fallback == 0
    meta = read_header(res.path).metadata
    assert meta["general.file_type"] == llama_cpp.LLAMA_FTYPE_GUESSED
    assert meta["arte_edge.mix.x"] == "45" and meta["arte_edge.mix.note"] == "x" * 127
    assert meta["general.architecture"] == "llama"  # the rest of the header is kept


def test_quantize_tensor_types_only_for_auto(mix_f16: Path, tmp_path: Path) -> None:
    with pytest.raises(ArteError, match="only for a mix"):
        Q.quantize_gguf(mix_f16, tmp_path / "q8.gguf", "Q8_0", tensor_types={"output.weight": "Q4_0"})
    with pytest.raises(ArteError, match="only for a mix"):
        Q.quantize_gguf(mix_f16, tmp_path / "auto.gguf", "AUTO")
    with pytest.raises(ArteError, match="unknown ggml type 'Q9_9' for tensor 'output.weight'"):
        Q.quantize_gguf(mix_f16, tmp_path / "auto.gguf", "AUTO", tensor_types={"output.weight": "Q9_9"})
    with pytest.raises(ArteError, match="'arte_edge.mix.y': keys and string values must be under 128 bytes"):
        Q.quantize_gguf(mix_f16, tmp_path / "auto.gguf", "AUTO", tensor_types={"output.weight": "Q4_0"},
                        metadata={"arte_edge.mix.y": "x" * 128})
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- LayerReplay


def _full(model: Any, ids: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits[0].float()


def _same(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-6, rtol=1e-5))


def test_calibration_chunks(mix_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(mix_model_dir))
    ids = [i for text in TEXTS for i in tok(text, add_special_tokens=False)["input_ids"]]
    assert len(ids) > 40
    chunks = S.calibration_chunks(tok, TEXTS, 16, 40)
    assert [tuple(c.shape) for c in chunks] == [(1, 16), (1, 16), (1, 8)]
    assert [t for c in chunks for t in c[0].tolist()] == ids[:40]
    assert [tuple(c.shape) for c in S.calibration_chunks(tok, TEXTS, 16, 33)] == [(1, 16), (1, 16)]  # 1 dropped
    with pytest.raises(ArteError, match="under 16 tokens"):
        S.calibration_chunks(tok, ["Hi there."], 16, 256)


def test_layer_replay_reproduces_the_forward_from_every_layer(mix_model_dir: Path) -> None:
    import torch

    from arte_edge.export.reference import load_hf_fp32

    model, tok = load_hf_fp32(mix_model_dir)
    chunks = S.calibration_chunks(tok, TEXTS, 16, 40)
    replay = S.LayerReplay(model, chunks)
    assert replay.works
    assert len(replay.layers) == N_LAYERS
    for c, ids in enumerate(chunks):
        full = _full(model, ids)
        assert _same(replay.reference_logits[c], full)
        for k in [None, *range(N_LAYERS + 1)]:
            assert _same(replay.logits(c, k), full), (c, k)

    # a layer-1 weight changes: replaying from 0 or 1 sees it, from 2 (or only the head) does not
    down = model.model.layers[1].mlp.down_proj.weight
    saved = down.detach().clone()
    with torch.no_grad():
        down.add_(torch.randn_like(down))
    for c, ids in enumerate(chunks):
        full = _full(model, ids)
        assert not _same(full, replay.reference_logits[c])
        for k in (None, 0, 1):
            assert _same(replay.logits(c, k), full), (c, k)
        for k in (2, N_LAYERS):
            assert not _same(replay.logits(c, k), full), (c, k)  # the test is not vacuous: k > 1 is stale

    # the head changes: replaying only the head (k = n_layers) sees it
    with torch.no_grad():
        down.copy_(saved)
        model.lm_head.weight.mul_(-2.0)
    for c, ids in enumerate(chunks):
        full = _full(model, ids)
        for k in [None, *range(N_LAYERS + 1)]:
            assert _same(replay.logits(c, k), full), ("head", c, k)

    assert replay.first_affected(("blk.2.ffn_down.weight", "blk.1.ffn_down.weight")) == 1
    assert replay.first_affected(("blk.0.attn_q.weight",)) == 0
    assert replay.first_affected(("output.weight",)) == N_LAYERS
    assert replay.first_affected(("token_embd.weight",)) is None


# ---------------------------------------------------------------------------------------------- gguf_to_hf_params


def _hf_name(gguf_name: str) -> str:
    own = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}
    if gguf_name in own:
        return own[gguf_name]
    _, layer, kind, _ = gguf_name.split(".")
    part = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj"}[kind]
    return f"model.layers.{layer}.{part}.weight"


def test_gguf_to_hf_params_maps_every_weight(mix_model_dir: Path, mix_f16: Path, weight_shapes: dict[str, list[int]],
                                             tmp_path: Path) -> None:
    import torch

    from arte_edge.export.reference import load_hf_fp32

    model, _ = load_hf_fp32(mix_model_dir)
    q8 = Q.quantize_gguf(mix_f16, tmp_path / "q8.gguf", "Q8_0", threads=1).path
    reader = S._reader(q8)
    names = list(weight_shapes)
    assert len(names) == 2 + 7 * N_LAYERS
    params = S.gguf_to_hf_params(model, reader, names)
    assert set(params) == set(names)
    hf = dict(model.named_parameters())
    for name in names:
        param, permute = params[name]
        assert param is hf[_hf_name(name)], name
        back = permute(S._dequantized(reader, name))
        assert back.shape == param.shape
        assert float((back - param.detach()).abs().max()) < 0.01 * float(param.detach().abs().max()), name
        raw = S._dequantized(reader, name)
        if name.split(".")[-2] in ("attn_q", "attn_k"):  # llama's q/k rows are permuted by the converter
            assert not torch.equal(back, raw), name
            assert torch.equal(_llama_permute(back, 4 if "attn_q" in name else 2), raw), name
        else:
            assert torch.equal(back, raw), name

    swapped = dict(reader)
    swapped["blk.0.attn_v.weight"] = reader["blk.1.attn_v.weight"]
    with pytest.raises(ArteError, match=r"'blk\.0\.attn_v\.weight' does not match its HF parameter"):
        S.gguf_to_hf_params(model, swapped, names)
    with pytest.raises(ArteError, match=r"no HF parameter maps to the GGUF tensor 'blk\.7\.attn_q\.weight'"):
        S.gguf_to_hf_params(model, reader, ["blk.7.attn_q.weight"])
    alien = SimpleNamespace(config=SimpleNamespace(model_type="not-an-arch"))
    with pytest.raises(ArteError, match="does not know the architecture 'not-an-arch'"):
        S.gguf_to_hf_params(alien, reader, names)


# ---------------------------------------------------------------------------------------------- build_auto_mix


def _level_bytes(shapes: dict[str, list[int]], level: str) -> dict[str, int]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    out = {}
    for name, shape in shapes.items():
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[P.level_type(level, shape[0])]]
        out[name] = shape[0] * shape[1] // block * size
    return out


@dataclass
class AutoMix:
    dst: Path
    budget: M.AutoMixBudget
    result: Q.QuantResult
    plan: P.MixPlan
    sens: S.Sensitivity
    lowest: int
    highest: int
    messages: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def auto_mix(mix_model_dir: Path, mix_f16: Path, weight_shapes: dict[str, list[int]],
             tmp_path_factory: pytest.TempPathFactory) -> AutoMix:
    """One measured and built auto mix, its budget a third of the way from all-4-bit to all-8-bit."""
    fixed = M.header_bytes(mix_f16) + sum(t["n_bytes"] for t in Q.gguf_tensor_info(mix_f16)
                                          if t["name"] not in weight_shapes)
    lowest = fixed + sum(_level_bytes(weight_shapes, "4").values())
    highest = fixed + sum(_level_bytes(weight_shapes, "8").values())
    budget = M.AutoMixBudget(max_size_mb=(lowest + (highest - lowest) / 3) / 1e6, layers_per_unit=2,
                             calibration_tokens=32)
    messages: list[str] = []
    dst = tmp_path_factory.mktemp("auto_mix") / "mix.auto.gguf"
    result, plan, sens = M.build_auto_mix(mix_f16, mix_model_dir, dst, budget, TEXTS, threads=2,
                                          progress=messages.append)
    return AutoMix(dst, budget, result, plan, sens, lowest, highest, messages)


def test_build_auto_mix_within_budget(auto_mix: AutoMix, weight_shapes: dict[str, list[int]]) -> None:
    import llama_cpp

    mix, budget = auto_mix, auto_mix.budget
    assert mix.lowest < budget.max_size_mb * 1e6 < mix.highest
    assert mix.dst.is_file() and mix.result.path == mix.dst
    assert mix.result.size_bytes == mix.dst.stat().st_size <= budget.max_size_mb * 1e6
    assert math.isfinite(mix.plan.predicted_kl) and mix.plan.predicted_kl >= 0
    assert mix.plan.predicted_kl == pytest.approx(sum(mix.sens.sensitivity[u][lv] for u, lv in mix.plan.levels.items()))
    assert set(mix.plan.tensor_types) == set(weight_shapes)
    assert len(set(mix.plan.levels.values())) > 1  # a budget in between: a real mix
    info = {t["name"]: t["type"] for t in Q.gguf_tensor_info(mix.dst)}
    assert {n: info[n] for n in weight_shapes} == mix.plan.tensor_types
    meta = read_header(mix.dst).metadata
    assert meta["general.file_type"] == llama_cpp.LLAMA_FTYPE_GUESSED
    for key, value in P.metadata_strings(mix.sens.units, mix.plan).items():
        assert meta[key] == value, key
    assert meta["arte_edge.mix.budget"] == budget.describe()
    assert len(meta["arte_edge.mix.ffn_down"]) == 2  # layers 0-1 and 2
    assert not [p for p in mix.dst.parent.rglob("*.gguf") if p != mix.dst]  # the level files are gone
    assert any("predicted KL" in m for m in mix.messages)
    record = M.mix_record(mix.plan, mix.sens, budget, None)
    json.dumps(record)


def test_measured_sensitivity_table(auto_mix: AutoMix, weight_shapes: dict[str, list[int]]) -> None:
    sens = auto_mix.sens
    names = {u.name for u in sens.units}
    assert {"token_embd.weight", "output.weight", "ffn_down.weight@0-1", "ffn_down.weight@2",
            "attn_q.weight@0-1", "attn_k.weight@2"} <= names
    assert len(names) == 2 + 7 * 2
    assert sens.n_tokens == 32 and sens.embedding_rows == 49152
    assert sens.other_bytes == (2 * N_LAYERS + 1) * 64 * 4  # the f32 norms
    assert sens.tensor_types["4"]["blk.0.ffn_down.weight"] == "Q4_K"
    assert sens.tensor_types["6"]["blk.2.ffn_down.weight"] == "Q6_K"
    assert sens.tensor_types["4"]["blk.0.attn_q.weight"] == "Q4_0"
    assert sens.tensor_types["6"]["token_embd.weight"] == "Q8_0"
    for level in LEVEL_NAMES:
        expected = _level_bytes(weight_shapes, level)
        for unit in sens.units:
            assert sens.unit_bytes[unit.name][level] == sum(expected[t] for t in unit.tensors), (unit.name, level)
    for unit in sens.units:
        kl = sens.sensitivity[unit.name]
        assert set(kl) == set(LEVEL_NAMES)
        assert all(math.isfinite(v) and v > -1e-6 for v in kl.values()), (unit.name, kl)
        if all(weight_shapes[t][0] % 256 for t in unit.tensors):  # 6 and 8 are both Q8_0: measured once
            assert kl["6"] == kl["8"] and sens.unit_bytes[unit.name]["6"] == sens.unit_bytes[unit.name]["8"]
    # 4-bit weights hurt more than 8-bit ones, over the whole model
    assert sum(sens.sensitivity[u]["4"] for u in names) > 4 * sum(sens.sensitivity[u]["8"] for u in names)


def test_build_auto_mix_more_budget_no_worse(auto_mix: AutoMix, mix_model_dir: Path, mix_f16: Path,
                                             tmp_path: Path) -> None:
    mix = auto_mix
    bigger = M.AutoMixBudget(max_size_mb=(mix.lowest + 2 * (mix.highest - mix.lowest) / 3) / 1e6, layers_per_unit=2)
    result, plan, sens = M.build_auto_mix(mix_f16, mix_model_dir, tmp_path / "big.gguf", bigger, [],
                                          sensitivity=mix.sens)
    assert sens is mix.sens
    assert result.size_bytes <= bigger.max_size_mb * 1e6
    assert result.size_bytes > mix.result.size_bytes
    assert plan.predicted_kl <= mix.plan.predicted_kl
    # and a budget below the all-4-bit file is refused before anything is written
    with pytest.raises(ArteError, match="below the smallest mix"):
        M.build_auto_mix(mix_f16, mix_model_dir, tmp_path / "small.gguf",
                         M.AutoMixBudget(max_size_mb=(mix.lowest - 1000) / 1e6), [], sensitivity=mix.sens)
    assert not (tmp_path / "small.gguf").exists()


def _fast_reader(path: Path) -> dict[str, Any]:
    """What ``mix_sensitivity._reader`` gives (name → .data/.tensor_type/.shape), from our own header parser:
    gguf.GGUFReader spends seconds parsing the 49k-token vocabulary."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType

    from arte_edge.models.gguf_file import tensor_nbytes

    header = read_header(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for t in header.tensors:
        start = header.data_offset + t.offset
        out[t.name] = SimpleNamespace(name=t.name, tensor_type=GGMLQuantizationType(t.ggml_type), shape=list(t.shape),
                                      data=raw[start:start + tensor_nbytes(t)])
    return out


def test_sensitivity_matches_an_independent_measurement(auto_mix: AutoMix, mix_model_dir: Path, mix_f16: Path,
                                                        weight_shapes: dict[str, list[int]], tmp_path: Path) -> None:
    """KL(fp32 || fp32 with one unit's weights from the level file), by full forwards, equals the table: for a
    K-quant unit and for the last unit measured (whose neighbours must have been put back to fp32)."""
    import torch

    from arte_edge.export.reference import load_hf_fp32

    sens = auto_mix.sens
    model, tok = load_hf_fp32(mix_model_dir)
    chunks = S.calibration_chunks(tok, TEXTS, 256, 32)
    reference = [_full(model, ids) for ids in chunks]
    hf = dict(model.named_parameters())
    for level in ("4", "5"):  # large enough KLs for fp32 logits (at 8 bits it is ~1e-6, mostly rounding)
        path = Q.quantize_gguf(mix_f16, tmp_path / f"level-{level}.gguf", "AUTO", threads=1,
                               tensor_types=S.level_overrides(weight_shapes, level)).path
        reader = _fast_reader(path)
        for unit in (next(u for u in sens.units if u.name == "ffn_down.weight@0-1"), sens.units[-1]):
            saved = {t: hf[_hf_name(t)].detach().clone() for t in unit.tensors}
            with torch.no_grad():
                for t in unit.tensors:
                    weight = S._dequantized(reader, t)
                    if ".attn_q." in t or ".attn_k." in t:
                        weight = S._unpermute(4 if ".attn_q." in t else 2)(weight)
                    hf[_hf_name(t)].copy_(weight)
            # mean over tokens of KL(fp32 || quantized) = sum p (log p - log q)
            log_p = torch.cat([torch.log_softmax(r.double(), -1) for r in reference])
            log_q = torch.cat([torch.log_softmax(_full(model, ids).double(), -1) for ids in chunks])
            kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
            with torch.no_grad():
                for t, value in saved.items():
                    hf[_hf_name(t)].copy_(value)
            assert kl > 1e-4
            # fp32 rounding moves these by ~3e-8; KL(q || p) differs by ~1e-5 on ffn_down: the direction is checked
            assert sens.sensitivity[unit.name][level] == pytest.approx(kl, rel=1e-4, abs=1e-7), (unit.name, level)


def test_build_auto_mix_budget_filled_to_the_byte(auto_mix: AutoMix, mix_model_dir: Path, mix_f16: Path,
                                                  tmp_path: Path) -> None:
    mix = auto_mix
    fixed = M.header_bytes(mix_f16) + mix.sens.other_bytes
    exact = M.AutoMixBudget(max_size_mb=(mix.plan.weight_bytes + fixed) / 1e6, layers_per_unit=2)
    assert M.plan_for_budget(mix.sens, exact, M.header_bytes(mix_f16)).levels == mix.plan.levels  # it "fits"
    result, _, _ = M.build_auto_mix(mix_f16, mix_model_dir, tmp_path / "exact.gguf", exact, [],
                                    sensitivity=mix.sens)
    assert result.size_bytes <= exact.max_size_mb * 1e6
