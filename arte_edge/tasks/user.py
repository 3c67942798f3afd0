"""User tasks: a task YAML pointing at a JSONL file of items, or a bare JSONL file.

YAML keys: ``name``, ``kind`` (multiple_choice | numeric | code), ``description``, ``data`` (JSONL path,
relative to the YAML), optional ``system_prompt``, ``rel_tol``/``abs_tol`` (numeric), ``timeout_s`` (code).
JSONL keys per line: ``question``, ``answer`` (required); ``id`` (default: a hash of the question),
``rationale``, ``choices`` (multiple choice: rendered as "A. ..." lines), ``tests``, ``entry_point``,
``setup_code``, ``prompt_code``, ``split`` (default "test"); any other key is kept in ``meta``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from arte_edge.errors import ArteError
from arte_edge.tasks.base import KINDS, Item, Task
from arte_edge.tasks.extract import parse_number
from arte_edge.tasks.kinds import LETTERS, CodeTask, MultipleChoiceTask, NumericTask, format_choices

YAML_KEYS = {"name", "kind", "description", "data", "system_prompt", "rel_tol", "abs_tol", "timeout_s"}
ITEM_KEYS = {"id", "question", "answer", "rationale", "choices", "tests", "entry_point", "setup_code",
             "prompt_code", "split", "meta"}
DEFAULT_DESCRIPTIONS = {
    "multiple_choice": "Multiple-choice questions with lettered options; exactly one option is correct.",
    "numeric": "Word problems whose answer is a single number, reached by step-by-step calculation.",
    "code": "Python programming problems; the answer is a function that passes the given assert tests.",
}

_CACHE: dict[tuple[str, int, int], list[Item]] = {}


def _line_error(where: str, message: str) -> ArteError:
    return ArteError(f"{where}: {message}")


def _optional_str(record: dict[str, Any], key: str, where: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _line_error(where, f"key {key!r} must be a string, got {type(value).__name__}")
    return value


def _answer_of(record: dict[str, Any], kind: str, where: str, n_choices: int | None) -> str:
    value = record["answer"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _line_error(where, f"key 'answer' must be a string or number, got {type(value).__name__}")
    answer = str(value).strip()
    if not answer:
        raise _line_error(where, "key 'answer' is empty")
    if kind == "numeric" and parse_number(answer) is None:
        raise _line_error(where, f"answer {answer!r} is not a number (task kind is numeric)")
    if kind == "multiple_choice":
        answer = answer.upper().strip("().")
        allowed = LETTERS[:n_choices] if n_choices else LETTERS
        if len(answer) != 1 or answer not in allowed:
            raise _line_error(where, f"answer {value!r} must be one choice letter ({allowed[0]}-{allowed[-1]})")
    return answer


def _tests_of(record: dict[str, Any], kind: str, where: str) -> tuple[str, ...]:
    tests = record.get("tests") or []
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests):
        raise _line_error(where, "key 'tests' must be a list of strings (assert statements)")
    if kind == "code" and not tests:
        raise _line_error(where, "missing key 'tests' (code tasks are checked by running their tests)")
    return tuple(tests)


def parse_item(record: Any, *, task_name: str, kind: str, where: str) -> Item:
    """One JSONL record as an Item; ``where`` ("file.jsonl:17") prefixes every error."""
    if not isinstance(record, dict):
        raise _line_error(where, f"expected a JSON object, got {type(record).__name__}")
    for key in ("question", "answer"):
        if key not in record:
            raise _line_error(where, f"missing key {key!r}")
    question = _optional_str(record, "question", where) or ""
    if not question.strip():
        raise _line_error(where, "key 'question' is empty")
    choices = record.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2 or len(choices) > len(LETTERS):
            raise _line_error(where, f"key 'choices' must be a list of 2-{len(LETTERS)} option texts")
        question = format_choices(question, [str(c) for c in choices])
    raw_id = record.get("id")
    if raw_id is None:
        raw_id = hashlib.sha1(question.encode("utf-8")).hexdigest()[:12]
    meta = dict(record.get("meta") or {})
    meta.update({k: v for k, v in record.items() if k not in ITEM_KEYS})
    if choices is not None:
        meta["choices"] = [str(c) for c in choices]
    return Item(
        id=f"{task_name}/{raw_id}", question=question.strip(),
        answer=_answer_of(record, kind, where, len(choices) if choices else None),
        rationale=_optional_str(record, "rationale", where), tests=_tests_of(record, kind, where),
        entry_point=_optional_str(record, "entry_point", where),
        setup_code=_optional_str(record, "setup_code", where),
        prompt_code=_optional_str(record, "prompt_code", where),
        source_split=_optional_str(record, "split", where) or "test", meta=meta,
    )


def _read_records(path: Path) -> list[tuple[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise ArteError(f"{path}: task data file not found; check the path (relative to the task YAML)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ArteError(f"{path}: cannot read task data ({exc})") from exc
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            records.append((where, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ArteError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if not records:
        raise ArteError(f"{path}: no items (expected one JSON object per line)")
    return records


def load_items(path: Path, *, task_name: str, kind: str) -> list[Item]:
    """All items of a user JSONL file, in file order; cached per process until the file changes."""
    stat = path.stat() if path.exists() else None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size) if stat else None
    if key is not None and key in _CACHE:
        return list(_CACHE[key])
    items: list[Item] = []
    first_line: dict[str, str] = {}
    for where, record in _read_records(path):
        item = parse_item(record, task_name=task_name, kind=kind, where=where)
        if item.id in first_line:
            raise ArteError(f"{where}: duplicate id {item.id!r} (first at {first_line[item.id]}); ids must be unique")
        first_line[item.id] = where
        items.append(item)
    if key is not None:
        _CACHE[key] = items
    return list(items)


def infer_kind(path: Path) -> str:
    """The kind of a bare JSONL task: code (has tests), numeric (numeric answers), multiple_choice (letters)."""
    records = []
    for where, record in _read_records(path):
        if not isinstance(record, dict):
            raise _line_error(where, f"expected a JSON object, got {type(record).__name__}")
        for key in ("question", "answer"):
            if key not in record:
                raise _line_error(where, f"missing key {key!r}")
        records.append(record)
    if records and all(r.get("tests") for r in records):
        return "code"
    answers = [str(r.get("answer", "")).strip() for r in records]
    if answers and all(a.strip("().").upper() in LETTERS and len(a.strip("().")) == 1 for a in answers):
        return "multiple_choice"
    if answers and all(parse_number(a) is not None for a in answers):
        return "numeric"
    raise ArteError(f"{path}: cannot tell the task kind from the answers; write a task YAML with "
                    f"'kind: multiple_choice|numeric|code' and 'data: {path.name}'")


def _make_task(kind: str, name: str, description: str, data: Path, options: dict[str, Any]) -> Task:
    loader = lambda: load_items(data, task_name=name, kind=kind)  # noqa: E731
    common: dict[str, Any] = {"source": str(data), "system_prompt": options.get("system_prompt")}
    if kind == "multiple_choice":
        return MultipleChoiceTask(name, description, loader, letters=LETTERS, **common)
    if kind == "numeric":
        return NumericTask(name, description, loader, rel_tol=float(options.get("rel_tol", 1e-6)),
                           abs_tol=float(options.get("abs_tol", 1e-6)), **common)
    return CodeTask(name, description, loader, timeout_s=float(options.get("timeout_s", 5.0)), **common)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArteError(f"{path}: task file not found") from exc
    except yaml.YAMLError as exc:
        raise ArteError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(spec, dict):
        raise ArteError(f"{path}: a task YAML must be a mapping with keys name, kind, description, data")
    unknown = sorted(set(spec) - YAML_KEYS)
    if unknown:
        raise ArteError(f"{path}: unknown key {unknown[0]!r}; allowed keys: {', '.join(sorted(YAML_KEYS))}")
    for key in ("name", "kind", "description", "data"):
        if not spec.get(key):
            raise ArteError(f"{path}: missing key {key!r}")
    if spec["kind"] not in KINDS:
        raise ArteError(f"{path}: kind {spec['kind']!r} is not one of {', '.join(KINDS)}")
    for key in ("rel_tol", "abs_tol", "timeout_s"):
        if key in spec and (isinstance(spec[key], bool) or not isinstance(spec[key], (int, float))):
            raise ArteError(f"{path}: key {key!r} must be a number")
    return spec


def load_user_task(path: str | Path) -> Task:
    """A task from a task YAML (``.yaml``/``.yml``) or a bare JSONL file (kind inferred from the answers)."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        spec = _read_yaml(path)
        data = path.parent / str(spec["data"])  # an absolute "data" path replaces the parent
        task = _make_task(spec["kind"], str(spec["name"]), str(spec["description"]).strip(), data, spec)
    elif path.suffix == ".jsonl":
        kind = infer_kind(path)
        task = _make_task(kind, path.stem, DEFAULT_DESCRIPTIONS[kind], path, {})
    else:
        raise ArteError(f"{path}: a user task must be a .yaml/.yml task file or a .jsonl item file")
    task.load()  # validate every line now, so a bad file fails before any model work starts
    return task
