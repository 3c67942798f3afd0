from pathlib import Path

import pytest

from arte_edge.config import apply_overrides, load_recipe
from arte_edge.errors import ArteError, ConfigError

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
