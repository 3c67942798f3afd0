"""ELAD: explanation-guided active distillation (arXiv 2402.13098), with its baselines at the same budget.

Per round and per strategy: score the unlabelled pool with the current student, send the b most uncertain
questions (within the teacher-call budget B) to the teacher, keep the checked revisions, fine-tune the base
student on everything kept so far, evaluate it on the held-out split, and append a learning-curve point to
``elad/curve.jsonl``. Strategies:

- ``elad``: EGSS selection (intra- and inter-explanation uncertainty, weight λ) + CLEAR revision;
- ``random`` / ``answer_entropy``: that selection + CLEAR revision;
- ``teacher_explain``: EGSS selection, the teacher writes its own explanation (no revision);
- ``standard``: random selection, the teacher writes its own explanation: standard distillation at the same
  budget, the reference arm of the report's paired tests.

The pool is unlabelled for selection. Revisions are validated by the task's checker against the gold answer
when the task has one (``checker: gold``), else by agreement with the teacher's own majority answer
(``checker: self_consistency``). Everything is resumable: a rerun skips rounds already in the curve and
continues a round from its selection, annotation and evaluation files.

Modules: :mod:`.config` (the ``elad:`` section), :mod:`.prompts` (prompts, explanation steps),
:mod:`.uncertainty` (EGSS, answer entropy), :mod:`.revision` (CLEAR parsing), :mod:`.annotation` (teacher calls
under the budget), :mod:`.students` (training and opening a round's student), :mod:`.loop` (the rounds),
:mod:`.report` (curve table and plot), :mod:`.datasets` (the generate step), :mod:`.method` (the protocol object).
"""

from arte_edge.methods.elad.config import EladConfig
from arte_edge.methods.elad.datasets import generate_datasets, trained_students
from arte_edge.methods.elad.method import METHOD
from arte_edge.methods.elad.report import refresh_report

__all__ = ["METHOD", "EladConfig", "generate_datasets", "refresh_report", "trained_students"]
