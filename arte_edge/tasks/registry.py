"""Look tasks up by built-in name or by path to a user task file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.tasks.base import Task
from arte_edge.tasks.builtin import BUILTIN_TASKS

# One shared instance per built-in task, so its parsed items are cached for the whole process.
_BUILTIN_INSTANCES: dict[str, Task] = {}


def _builtin(name: str) -> Task:
    if name not in _BUILTIN_INSTANCES:
        _BUILTIN_INSTANCES[name] = BUILTIN_TASKS[name]()
    return _BUILTIN_INSTANCES[name]


def get_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (see :func:`list_tasks`), or a user task from a ``.yaml``/``.jsonl`` path."""
    key = str(name_or_path)
    if key in BUILTIN_TASKS:
        return _builtin(key)
    path = Path(key)
    if path.suffix in (".yaml", ".yml", ".jsonl"):
        if not path.is_file():
            raise ArteError(f"{path}: task file not found")
        from arte_edge.tasks.user import load_user_task

        return load_user_task(path)
    raise ArteError(f"unknown task {key!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}; "
                    f"or give the path of a task .yaml or .jsonl file")


def list_tasks() -> list[dict[str, Any]]:
    """Built-in tasks with name, kind, n_items (loads each once) and source (wheel member paths)."""
    rows = []
    for name in BUILTIN_TASKS:
        task = _builtin(name)
        rows.append({"name": name, "kind": task.kind, "n_items": len(task.load()), "source": task.source})
    return rows
