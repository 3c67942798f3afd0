"""Keep teacher-drafted questions off the held-out items: exact match and 13-gram overlap (normalised text).

A teacher shown seed questions can reproduce a benchmark question it memorised; trained on, that item's held-out
score would measure recall, not skill. Every drafted or regenerated question is checked against the held-out
split before it may become training data; a match is dropped with a reason starting ``contaminated:`` (counted in
the generate stage's outputs and the report). 13-grams follow the GPT-3 paper's decontamination; questions shorter
than that are compared whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from arte_edge.tasks.base import Item

CONTAMINATED = "contaminated:"
NGRAM = 13
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words (punctuation, case and spacing ignored)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive tokens."""
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


class HeldOut:
    """The held-out items' texts, indexed for :meth:`match`."""

    def __init__(self, items: Iterable[Item], n: int = NGRAM):
        self.n = n
        self._exact: dict[str, str] = {}
        self._grams: dict[tuple[str, ...], str] = {}
        for item in items:
            tokens = words(item.question)
            self._exact.setdefault(" ".join(tokens), item.id)
            for gram in ngrams(tokens, n):
                self._grams.setdefault(gram, item.id)

    def __len__(self) -> int:
        return len(self._exact)

    def match(self, text: str) -> str | None:
        """Why ``text`` must not become training data (the held-out item it copies), or None."""
        tokens = words(text)
        exact = self._exact.get(" ".join(tokens))
        if exact:
            return f"{CONTAMINATED} same text as held-out item {exact}"
        hit = next((self._grams[g] for g in ngrams(tokens, self.n) if g in self._grams), None)
        return f"{CONTAMINATED} shares a {self.n}-word run with held-out item {hit}" if hit else None


def count_contaminated(rows: Iterable[dict]) -> int:
    """How many records were dropped as copies of held-out items (by their ``reason``)."""
    return sum(str(r.get("reason", "")).startswith(CONTAMINATED) for r in rows)
