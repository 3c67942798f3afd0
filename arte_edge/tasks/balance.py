"""Balanced multiple-choice training data: move each example's gold choice to a letter drawn from its id.

A checker keeps only the teacher's right answers, and a teacher is right more often on some letters, so kept data
is skewed (the demo once kept 29 of 54 examples answering C, and its student learned to answer C). Here every
multiple-choice training example has its gold choice swapped with the choice at a target letter picked uniformly
from a hash of the example id (stateless, so resumed and re-run generations agree), and the letter references in
the teacher's text (``(C)``, ``C.``, ``option C``, ``Answer: C``) are swapped with it. The choice texts move with
their letters, so the example stays right; only which letter is right changes.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from arte_edge.tasks.base import Item, Task
from arte_edge.tasks.kinds import LETTERS, format_choices

_CHOICE_LINE = re.compile(r"^\s*\(?[A-J][.)]\s+.*$", re.MULTILINE)
# Letter references in a rationale: "(C)", "C." / "C)" / "C:" before a space, "option/choice/answer (is) C".
_REFS = re.compile(r"\(([A-J])\)|(?<![A-Za-z0-9'])([A-J])(?=[.):](?:\s|$))"
                   r"|(?i:\b(?:option|choice|answer|letter)\s*(?:is\s+|[:：]\s*)?\(?)([A-J])\b")


def target_letter(example_id: str, n_choices: int) -> str:
    """The letter an example's gold choice moves to: uniform over the item's choices, fixed by the id."""
    return LETTERS[int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % n_choices]


def stem_of(question: str) -> str:
    """A formatted multiple-choice question without its ``A. …`` choice lines."""
    return _CHOICE_LINE.sub("", question).strip()


def swap_letter_refs(text: str, a: str, b: str) -> str:
    """``text`` with every letter reference to choice ``a`` and to choice ``b`` exchanged."""
    if a == b:
        return text

    def swap(match: re.Match[str]) -> str:
        group = next(i for i in (1, 2, 3) if match.group(i))
        letter = match.group(group)
        new = b if letter == a else a if letter == b else letter
        start, end = match.span(group)
        return match.group(0)[: start - match.start()] + new + match.group(0)[end - match.start():]

    return _REFS.sub(swap, text)


def balance_example(task: Task, item: Item, target: str, example_id: str) -> tuple[Item, str, dict[str, Any]]:
    """``(item, target, meta)`` with the gold choice moved to :func:`target_letter` (unchanged for other kinds,
    items without listed choices, or a gold letter outside them). ``meta`` records the swap."""
    if task.kind != "multiple_choice":
        return item, target, {}
    choices = task.item_choices(item)  # type: ignore[attr-defined]
    if len(choices) < 2 or item.answer not in LETTERS[: len(choices)]:
        return item, target, {}
    gold, new = item.answer, target_letter(example_id, len(choices))
    if new == gold:
        return item, target, {"choice_swap": None}
    i, j = LETTERS.index(gold), LETTERS.index(new)
    moved = list(choices)
    moved[i], moved[j] = moved[j], moved[i]
    swapped = replace(item, question=format_choices(stem_of(item.question), moved), answer=new,
                      meta={**item.meta, "choices": moved})
    return swapped, swap_letter_refs(target, gold, new), {"choice_swap": [gold, new]}


def label_histogram(examples: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Gold answers of training examples (from their final ``Answer:`` line), most frequent first."""
    found = []
    for example in examples:
        text = example["messages"][-1]["content"] if example.get("messages") else ""
        lines = [ln for ln in text.strip().splitlines() if ln.lower().startswith("answer")]
        found.append(lines[-1].split(":", 1)[-1].strip() if lines else "(none)")
    return dict(Counter(found).most_common())
