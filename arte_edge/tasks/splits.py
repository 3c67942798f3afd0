"""Disjoint, seeded splits of a task's items: seeds, preference, train_pool, eval."""

from __future__ import annotations

import random
from collections.abc import Sequence

from arte_edge.errors import ArteError
from arte_edge.tasks.base import Item

SPLIT_NAMES = ("seeds", "preference", "train_pool", "eval")


def _shuffled(items: Sequence[Item], rng: random.Random) -> list[Item]:
    # Sort by id first so the result depends only on the seed and the set of items, not on load order.
    ordered = sorted(items, key=lambda item: item.id)
    rng.shuffle(ordered)
    return ordered


def make_splits(items: Sequence[Item], *, seeds: int, preference: int, train_pool: int, eval: int, seed: int,
                eval_source: str | None = "test") -> dict[str, list[Item]]:
    """Disjoint ``seeds``/``preference``/``train_pool``/``eval`` lists, deterministic for ``seed``.

    ``eval`` is drawn first from items whose ``source_split`` is ``eval_source`` (e.g. ARC test); the
    other splits come preferably from the remaining sources (ARC validation), topped up from what is
    left of ``eval_source`` when the others run out (GSM8K has only test: all splits share it, still
    disjoint). ``eval_source=None`` draws everything from one common pool.
    """
    sizes = {"seeds": seeds, "preference": preference, "train_pool": train_pool, "eval": eval}
    for key, size in sizes.items():
        if size < 0:
            raise ArteError(f"splits.{key}: must be >= 0, got {size}")
    _check_enough(items, sizes)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ArteError("task items have duplicate ids; splits need unique ids")
    rng = random.Random(seed)
    if eval_source is None:
        preferred, others = _shuffled(items, rng), []
    else:
        preferred = _shuffled([i for i in items if i.source_split == eval_source], rng)
        others = _shuffled([i for i in items if i.source_split != eval_source], rng)
    eval_items = preferred[:eval]
    # Training-side splits use the other sources first, then the unused rest of the eval source.
    rest = others + _shuffled(preferred[eval:], rng) if others else preferred[eval:]
    if len(eval_items) < eval:
        rest_others = rest[: eval - len(eval_items)]
        eval_items += rest_others
        rest = rest[len(rest_others):]
    out: dict[str, list[Item]] = {"eval": eval_items}
    start = 0
    for key in ("seeds", "preference", "train_pool"):
        out[key] = rest[start:start + sizes[key]]
        start += sizes[key]
    return {key: out[key] for key in SPLIT_NAMES}


def _check_enough(items: Sequence[Item], sizes: dict[str, int]) -> None:
    needed = sum(sizes.values())
    if needed <= len(items):
        return
    biggest = max(sizes, key=lambda key: sizes[key])
    raise ArteError(
        f"splits: need {needed} items ({', '.join(f'{k}={v}' for k, v in sizes.items())}) but the task has "
        f"only {len(items)}; reduce splits.{biggest} by at least {needed - len(items)}"
    )


def split_ids(splits: dict[str, list[Item]]) -> dict[str, list[str]]:
    """The item ids of each split, in order (for the run manifest)."""
    return {name: [item.id for item in split] for name, split in splits.items()}
