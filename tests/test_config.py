from pathlib import Path

import pytest

from arte_edge.config import apply_overrides
from arte_edge.errors import ArteError, ConfigError
from arte_edge.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


MINIMAL = """
name: t
task: arc_easy
teacher: {model: qwen2.5-coder-0.5b-instruct}
student: {model: smollm2-135m-instruct}
"""


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name


def test_defaults_are_filled(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.method == "standard"
    assert recipe.train.mode == "lora"
    assert recipe.splits.eval == 100


def test_all_problems_reported_at_once_with_keys(tmp_path: Path) -> None:
    bad = MINIMAL + "train: {lr: fast, epochs: -1, lorra_r: 8}\nteacher_x: 1\n"
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, bad))
    text = str(info.value)
    for key in ("train.lr", "train.epochs", "train.lorra_r: unknown key", "teacher_x: unknown key"):
        assert key in text
    assert len(info.value.problems) == 4


def test_missing_required_keys_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, "name: x\n"))
    assert {"task: Field required", "teacher: Field required", "student: Field required"} <= set(info.value.problems)


def test_openai_backend_needs_base_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="teacher.base_url is required"):
        load_recipe(write(tmp_path, MINIMAL.replace("{model: qwen2.5-coder-0.5b-instruct}",
                                                    "{model: m, backend: openai}")))


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    recipe = load_recipe(path, ["train.epochs=1", "export.formats=[gguf:f16]", "splits.eval=120"])
    assert recipe.train.epochs == 1.0 and recipe.export.formats == ["gguf:f16"] and recipe.splits.eval == 120
    with pytest.raises(ConfigError, match="train.epochs"):
        load_recipe(path, ["train.epochs=zero"])
    with pytest.raises(ArteError, match="key=value"):
        load_recipe(path, ["train.epochs"])


def test_apply_overrides_creates_sections() -> None:
    assert apply_overrides({}, ["a.b=3"]) == {"a": {"b": 3}}


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ArteError, match=r"recipe.yaml:2: invalid YAML"):
        load_recipe(write(tmp_path, "name: x\n  bad: [\n"))
    with pytest.raises(ArteError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ArteError, match="YAML mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))


def test_recipe_is_frozen(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen assignment
        recipe.train.lr = 1.0  # type: ignore[misc]


def test_export_formats_are_validated_at_load(tmp_path: Path) -> None:
    bad = MINIMAL + "export: {formats: [gguf:q4_k_m, gguf:q9_9, tflite:int8]}\nevaluate: {quant: q9_9}\n"
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, bad))
    formats = [p for p in info.value.problems if p.startswith("export.formats:")]
    assert len(formats) == 1 and len(info.value.problems) == 2  # every problem at once, each naming its key
    assert "'gguf:q9_9'" in formats[0] and "'tflite:int8'" in formats[0] and "'gguf:q4_k_m'" not in formats[0]
    assert "gguf:q4_k_m" in formats[0] and "onnx:int4" in formats[0]  # the valid ones are listed
    assert any(p.startswith("evaluate.quant:") for p in info.value.problems)
    recipe = load_recipe(write(tmp_path, MINIMAL), ["export.formats=[' GGUF:Q4_K_M', onnx:int4]"])
    assert recipe.export.formats == ["gguf:q4_k_m", "onnx:int4"]


def test_recipe_loading_imports_no_runtime() -> None:
    import subprocess
    import sys

    code = ("import sys, arte_edge.config, arte_edge.recipes; "
            "print([m for m in ('llama_cpp', 'torch', 'gguf', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_validate_loads_the_task_the_recipe_points_at(tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("name: x\nkind: bogus_kind\ndescription: d\ndata: items.jsonl\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, MINIMAL.replace("task: arc_easy", f"task: {task}")))
    assert info.value.problems == [f"task: {task}: kind 'bogus_kind' is not one of multiple_choice, numeric, code"]
    with pytest.raises(ConfigError, match="task: unknown task 'arc_eazy'"):
        load_recipe(write(tmp_path, MINIMAL.replace("task: arc_easy", "task: arc_eazy")))


def test_one_threads_default_for_the_whole_recipe(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL + "threads: 1\nevaluate: {threads: 3}\n"))
    assert (recipe.teacher.threads, recipe.student.threads, recipe.train.threads, recipe.bench.threads) == (1, 1, 1, 1)
    assert recipe.evaluate.threads == 3  # a section's own value wins
    assert load_recipe(write(tmp_path, MINIMAL)).train.threads == 2


def test_method_sections_belong_to_their_method(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, MINIMAL + "method: standard\npersd: {budget: 3}\nmethod_x: 1\n"))
    problems = info.value.problems
    assert any(p.startswith("persd: settings for method persd, but this recipe's method is standard") for p in problems)
    assert "method_x: unknown key" in problems
    with pytest.raises(ConfigError, match="method: unknown method 'artee'"):
        load_recipe(write(tmp_path, MINIMAL + "method: artee\n"))


@pytest.mark.parametrize(("export", "message"), [
    ("{formats: [gguf:auto]}", "gguf:auto needs a budget"),
    ("{formats: [gguf:q4_k_m], auto: {max_size_mb: 90}}", "export.auto is set but export.formats has no gguf:auto"),
    ("{formats: [gguf:auto], auto: {layers_per_unit: 4}}", "give a budget: max_size_mb, min_decode_tok_s or max_kl"),
    ("{formats: [gguf:auto], auto: {max_size_mb: -1}}", "export.auto.max_size_mb"),
    ("{imatrix: always}", "export.imatrix"),
])
def test_export_auto_and_imatrix_are_checked(tmp_path: Path, export: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, MINIMAL + f"export: {export}\n"))


def test_export_defaults_calibrate_with_the_runs_data_and_compare(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL + "export: {formats: [gguf:auto], auto: {max_kl: 0.05}}\n"))
    assert recipe.export.imatrix == "run" and recipe.export.compare_imatrix
    auto = recipe.export.auto
    assert auto is not None and auto.max_kl == 0.05 and auto.max_size_mb is None
