"""What the PERsD loop's records depend on: its settings, where its logs and datasets live, and the record ids.

Every model call's record goes to an append-only log under data/persd/ via
:class:`~arte_edge.methods.common.DurableCollector`, keyed by a hash of what produced it (the ids below), so a
killed run resumes with nothing lost or duplicated and a change of settings never reuses a record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from arte_edge.methods.common import DurableCollector
from arte_edge.methods.persd.config import VARIANT_NAMES
from arte_edge.methods.persd.judging import Judgement, judge
from arte_edge.rundir import stable_id
from arte_edge.tasks.base import Item, Task

MAIN = "persd"
ALL_VARIANTS = VARIANT_NAMES


@dataclass(frozen=True)
class LoopSettings:
    """Everything the loop needs (from the recipe); part of every record id, so a change never reuses records."""

    student_name: str
    teacher_name: str
    seed: int = 0
    student_temperature: float = 0.3
    top_p: float = 0.95
    student_max_tokens: int = 384
    teacher_temperature: float = 0.0
    teacher_max_tokens: int = 512
    refine_mode: str = "code"
    error_max_chars: int = 300
    error_tests: int = 1
    test_timeout_s: float = 5.0
    budget: int | None = None
    variants: tuple[str, ...] = ALL_VARIANTS
    batch_size: int = 8

    def judge(self, task: Task, item: Item, text: str) -> Judgement:
        """:func:`~arte_edge.methods.persd.judging.judge` with this run's timeout and error bounds."""
        return judge(task, item, text, timeout_s=self.test_timeout_s, error_max_chars=self.error_max_chars,
                     error_tests=self.error_tests)


@dataclass(frozen=True)
class LoopPaths:
    """The logs of one run (under data/persd/) and where the datasets go."""

    root: Path

    def log(self, name: str) -> Path:
        """The append-only log ``name`` (e.g. ``attempts``, ``refinements_rejected``)."""
        return self.root / "data" / "persd" / f"{name}.jsonl"

    @property
    def examples(self) -> Path:
        """The main (PERsD) dataset."""
        return self.root / "data" / "examples.jsonl"

    @property
    def rejected(self) -> Path:
        """Teacher completions that failed their tests."""
        return self.root / "data" / "rejected.jsonl"

    def variant(self, name: str) -> Path:
        """The dataset of variant ``name``."""
        return self.root / "data" / "variants" / name / "examples.jsonl"

    @property
    def costs(self) -> Path:
        """Examples and teacher cost per dataset."""
        return self.root / "data" / "persd" / "costs.json"

    def collector(self, name: str) -> DurableCollector:
        """The durable collector of log ``name`` (accepted records) and ``name_rejected``."""
        return DurableCollector(self.log(name), self.log(f"{name}_rejected"))


def item_seed(seed: int, item_id: str) -> int:
    """A per-item sampling seed, so an attempt is reproducible whatever was sampled before it."""
    return int(stable_id("persd/seed", seed, item_id), 16) % (2**31 - 1)


def attempt_id(s: LoopSettings, item: Item) -> str:
    """Record id of the student's attempt at ``item``."""
    return stable_id("persd/attempt", item.id, s.student_name, s.seed, s.student_temperature, s.top_p,
                     s.student_max_tokens, s.test_timeout_s, s.error_max_chars, s.error_tests)


def refine_id(s: LoopSettings, attempt_record_id: str) -> str:
    """Record id of the teacher's refinement of one attempt."""
    return stable_id("persd/refine", attempt_record_id, s.teacher_name, s.refine_mode, s.teacher_temperature,
                     s.teacher_max_tokens, s.seed)


def direct_id(s: LoopSettings, item: Item) -> str:
    """Record id of the teacher's from-scratch solution of ``item``."""
    return stable_id("persd/direct", item.id, s.teacher_name, s.teacher_temperature, s.teacher_max_tokens, s.seed,
                     s.test_timeout_s)
