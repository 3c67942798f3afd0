"""Tasks: evaluation/training items, answer extraction and checking, and seeded splits.

Built-in tasks read their data from pinned PyPI wheels (never installed); user tasks come from a
task YAML or a JSONL file. Nothing here imports torch or transformers.
"""

from arte_edge.tasks.base import Check, Item, Kind, Task
from arte_edge.tasks.kinds import CodeTask, MathTask, MultipleChoiceTask, NumericTask, run_code_tests
from arte_edge.tasks.registry import get_task, list_tasks
from arte_edge.tasks.splits import make_splits, split_ids

__all__ = [
    "Check",
    "CodeTask",
    "Item",
    "Kind",
    "MathTask",
    "MultipleChoiceTask",
    "NumericTask",
    "Task",
    "get_task",
    "list_tasks",
    "make_splits",
    "run_code_tests",
    "split_ids",
]
