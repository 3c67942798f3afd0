"""The task data contract: an :class:`Item` to ask, a :class:`Check` of one completion, a :class:`Task`.

Every task uses the same answer convention: the completion reasons first and ends with a final line
``Answer: <X>`` (multiple choice and numeric), or with a ```` ```python ```` fenced block (code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["multiple_choice", "numeric", "code"]
KINDS: tuple[str, ...] = ("multiple_choice", "numeric", "code")


@dataclass(frozen=True)
class Item:
    """One question of a task, with its gold answer (and tests for code tasks)."""

    id: str
    question: str
    answer: str
    rationale: str | None = None
    tests: tuple[str, ...] = ()
    entry_point: str | None = None
    prompt_code: str | None = None
    setup_code: str | None = None
    source_split: str = "test"
    # Excluded from hash/eq: a dict is unhashable and the id already identifies the item.
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Check:
    """The verdict on one completion: ``reason`` is "" when correct, else a short explanation."""

    correct: bool
    predicted: str | None
    reason: str


class Task:
    """Base class of all tasks. Subclasses set the attributes and implement answer extraction/checking.

    ``loader`` returns the items in a deterministic order; :meth:`load` calls it once per instance and
    keeps the list, so loading is paid once per process for the registry's shared instances.
    """

    name: str
    kind: Kind
    description: str
    system_prompt: str
    source: str

    def __init__(self, name: str, description: str, loader: Callable[[], list[Item]], *, source: str,
                 system_prompt: str | None = None) -> None:
        self.name = name
        self.description = description
        self.source = source
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self._loader = loader
        self._items: list[Item] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"

    def load(self) -> list[Item]:
        """All items of the task in a deterministic order (a fresh list; the items are shared)."""
        if self._items is None:
            self._items = self._loader()
        return list(self._items)

    def user_prompt(self, item: Item) -> str:
        """The user message shown to the model for ``item``."""
        return item.question

    def target(self, rationale: str, answer: str) -> str:
        """The assistant message to train on: the rationale, then the final ``Answer:`` line."""
        rationale = (rationale or "").strip()
        return f"{rationale}\nAnswer: {answer}" if rationale else f"Answer: {answer}"

    def extract_answer(self, completion: str) -> str | None:
        """The answer a completion gives (normalised), or None when nothing parseable is found."""
        raise NotImplementedError

    def check(self, item: Item, completion: str) -> Check:
        """Whether ``completion`` answers ``item`` correctly."""
        raise NotImplementedError

    def draft_problem(self, item: Item) -> str | None:
        """Why a teacher-drafted ``item`` cannot be used as a question of this task (None: usable)."""
        return None

    def check_flexible(self, item: Item, completion: str) -> Check:
        """Like :meth:`check`, but when no final answer line is found, the answer is looked for elsewhere
        (lm-eval's "flexible-extract" next to its "strict-match"). Reported beside the strict accuracy so that
        a gain from learning the output format is not mistaken for a gain in knowledge."""
        return self.check(item, completion)
