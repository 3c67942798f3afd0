"""The method protocol: a toy method registered here runs through generate → variants → report, with its own
validated recipe section, and the stages know it only through methods/base.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from arte_edge.config import Section
from arte_edge.errors import ConfigError
from arte_edge.methods.base import Method
from arte_edge.methods.registry import register, unregister
from arte_edge.pipeline import run_pipeline
from arte_edge.recipes import validate_recipe
from arte_edge.runctx import RunContext
from arte_edge.rundir import atomic_write_text

ARITH = Path(__file__).resolve().parents[1] / "data" / "arith" / "task.yaml"


class ToyConfig(Section):
    """The toy method's own section: how many pool items each arm answers with its gold answer."""

    n_main: int = Field(6, ge=1)
    n_variant: int = Field(3, ge=1)


class ToyMethod(Method):
    name = "toy"
    config_model = ToyConfig
    def __init__(self) -> None:
        self.calls: list[str] = []

    def generate(self, ctx: RunContext) -> dict[str, Any]:
        cfg: ToyConfig = ctx.method_config
        pool = ctx.split("train_pool")

        def rows(items: list) -> str:
            return "".join(json.dumps({"id": it.id, "messages": [
                {"role": "user", "content": ctx.task.user_prompt(it)},
                {"role": "assistant", "content": f"Answer: {it.answer}"}], "meta": {"teacher_calls": 1}}) + "\n"
                for it in items)

        atomic_write_text(ctx.run.examples_path, rows(pool[:cfg.n_main]))
        atomic_write_text(ctx.run.variant_examples_path("gold-few"), rows(pool[:cfg.n_variant]))
        self.calls.append("generate")
        return {"n_examples": cfg.n_main}

    def after_variants(self, ctx: RunContext) -> dict[str, Any]:
        self.calls.append("after_variants")
        return {"toy_after_variants": True}

    def refresh_report(self, root: Path) -> None:
        self.calls.append("refresh_report")
        atomic_write_text(root / "report" / "sections" / "toy.md", "## Toy method\n\nIt ran.\n")


@pytest.fixture()
def toy() -> ToyMethod:
    method = ToyMethod()
    register(method)
    yield method
    unregister("toy")


def _recipe(student: Path, **toy: Any) -> dict[str, Any]:
    return {"name": "toy", "task": str(ARITH), "method": "toy",
            "teacher": {"model": str(student), "backend": "transformers"},
            "student": {"model": str(student), "threads": 1}, "splits": {"seeds": 1, "train_pool": 8, "eval": 4},
            "train": {"epochs": 1, "batch_size": 2, "max_length": 64, "threads": 1, "lora_r": 4, "lora_alpha": 8},
            "evaluate": {"max_tokens": 8, "threads": 1}, "toy": toy}


def test_method_section_is_validated_by_the_methods_own_model(toy: ToyMethod, tiny_model_dir: Path) -> None:
    recipe = validate_recipe(_recipe(tiny_model_dir, n_main=4), "t")
    assert isinstance(recipe.method_config, ToyConfig) and recipe.method_config.n_main == 4
    with pytest.raises(ConfigError) as err:
        validate_recipe(_recipe(tiny_model_dir, n_main=0, typo=1) | {"elad": {}}, "t")
    problems = err.value.problems
    assert any(p.startswith("toy.n_main:") for p in problems) and "toy.typo: unknown key" in problems
    assert any(p.startswith("elad: settings for method elad") for p in problems)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_registered_toy_method_runs_generate_variants_report(toy: ToyMethod, tiny_model_dir: Path,
                                                               tmp_path: Path) -> None:
    recipe = validate_recipe(_recipe(tiny_model_dir), "t")
    run = run_pipeline(recipe, tmp_path / "run", source="t", only=["generate", "variants", "report"])
    manifest = run.read_manifest()
    assert manifest["recipe"]["toy"] == {"n_main": 6, "n_variant": 3}
    assert manifest["stages"]["variants"]["outputs"]["toy_after_variants"] is True
    assert manifest["stages"]["variants"]["outputs"]["variants"]["gold-few"]["n_train"] == 3
    assert toy.calls == ["generate", "after_variants", "refresh_report"]
    report = (run.root / "report" / "report.md").read_text()
    assert "method **toy**" in report and "## Toy method" in report and "gold-few" in report
