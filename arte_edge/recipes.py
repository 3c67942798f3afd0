"""Load a recipe whole: core sections (:mod:`arte_edge.config`), the method's own section (validated by the
method's config model, from :mod:`arte_edge.methods.registry`) and what the recipe points at (the task).

Every problem is reported at once, each naming its key, as one :class:`~arte_edge.errors.ConfigError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from arte_edge.config import Recipe, apply_overrides, load_recipe_data, problems_of, validate_core
from arte_edge.errors import ArteError, ConfigError
from arte_edge.methods.registry import get_method, method_names


def _method_sections(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(core data, {method name: raw section})``: every top-level key named after a method is its section."""
    names = set(method_names())
    return ({k: v for k, v in data.items() if k not in names}, {k: v for k, v in data.items() if k in names})


def _method_config(name: str, raw: Any) -> tuple[Any, list[str]]:
    """The method's validated section (its defaults when ``raw`` is None) and the problems found."""
    model = get_method(name).config_model
    if model is None:
        return None, ([] if raw in (None, {}) else [f"{name}: method {name} has no settings; remove this section"])
    if raw is not None and not isinstance(raw, dict):
        return None, [f"{name}: expected a mapping of {name} settings"]
    try:
        return model.model_validate(raw or {}), []
    except ValidationError as exc:
        return None, problems_of(exc, prefix=f"{name}.")


def _task_problems(task: str) -> list[str]:
    """What is wrong with the task the recipe names (a built-in name, or a task YAML/JSONL it can parse)."""
    from arte_edge.tasks import get_task

    try:
        get_task(task)
    except ArteError as exc:
        return [f"task: {exc}"]
    return []


def validate_recipe(data: dict[str, Any], source: str, *, check_task: bool = True,
                    other_sections: str = "error") -> Recipe:
    """Validate raw recipe data; ConfigError listing every problem.

    ``other_sections``: what to do with the section of a method the recipe does not use: ``"error"`` (a recipe a
    user wrote: the settings would silently do nothing) or ``"drop"`` (a manifest written by an older version,
    which recorded every method's defaults).
    """
    core_data, sections = _method_sections(data)
    recipe, problems = validate_core(core_data)
    method = core_data.get("method", "standard")
    config = None
    if method not in method_names():
        problems.append(f"method: unknown method {method!r}; known: {', '.join(method_names())}")
    else:
        config, found = _method_config(method, sections.get(method))
        problems += found
    for name in sections:
        if name != method and other_sections == "error":
            problems.append(f"{name}: settings for method {name}, but this recipe's method is {method}; "
                            f"remove the section or set method: {name}")
    if recipe is not None and method in method_names() and not problems:
        problems += get_method(method).check_recipe(recipe.with_method_config(config))
    if recipe is not None and check_task:
        problems += _task_problems(recipe.task)
    if problems:
        raise ConfigError(source, problems)
    assert recipe is not None
    return recipe.with_method_config(config)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file."""
    data = apply_overrides(load_recipe_data(path), overrides or [])
    return validate_recipe(data, str(path))
