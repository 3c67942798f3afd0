"""export_targets with the run's importance matrix (kept file, ``-plain`` twins, resume by artifact name),
calibration files for ``arte-edge export --calibration``, and the CLI's budget check of ``gguf:auto``.

Runs on the tiny random model of conftest.py; the exports use the verification thresholds the repository sets
(Q4_0 and Q8_0 of the tiny model pass them). About 20 s on 2 busy cores, most of it two f16 conversions.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from arte_edge.errors import ArteError
from arte_edge.export.targets import calibration_file_texts, export_targets

CALIBRATION = [
    "The river rose slowly through the night, and by morning the low fields were under water.",
    "def area(r):\n    return 3.14159 * r * r\n\nprint(area(2))\n",
    "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\nRed, green and blue.<|im_end|>\n",
] * 4
WANTED = [("gguf", "q4_0"), ("gguf", "q8_0")]


@dataclass
class Exported:
    out: Path
    made: list[dict[str, Any]]
    messages: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def exported(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Q4_0 (importance matrix) and Q8_0 (plain by type), with the plain twin of Q4_0, all verified."""
    result = Exported(tmp_path_factory.mktemp("targets"), [])
    result.made = export_targets(tiny_model_dir, result.out, WANTED, "tiny", calibration_texts=CALIBRATION,
                                 compare_imatrix=True, threads=1, progress=result.messages.append)
    return result


def _same(a: str | Path | None, b: Path) -> bool:
    return a is not None and Path(a).resolve() == b.resolve()


# ---------------------------------------------------------------------------------------------- imatrix + twins


def test_imatrix_types_use_the_kept_matrix_and_get_a_verified_plain_twin(exported: Exported) -> None:
    out, made = exported.out, exported.made
    assert [a["name"] for a in made] == ["gguf-q4_0", "gguf-q8_0", "gguf-q4_0-plain"]  # no plain twin of q8_0
    q4, q8, plain = made
    imatrix = out / "tiny.imatrix.gguf"
    assert imatrix.is_file() and imatrix.stat().st_size > 0

    # Q4_0 (<= 5 bits): quantized with the kept matrix, and says so
    assert q4["quant"] == "q4_0" and _same(q4["path"], out / "tiny.q4_0.gguf")
    assert q4["details"]["imatrix"] == str(imatrix)
    assert _same(q4["details"]["quant"]["imatrix"], imatrix)
    # Q8_0 is not an importance-matrix type: none was given to it, none is claimed
    assert q8["details"].get("imatrix") is None and q8["details"]["quant"]["imatrix"] is None
    # the twin: same type, its own file and Modelfile, no matrix
    assert plain["quant"] == "q4_0" and plain["format"] == "gguf"
    assert _same(plain["path"], out / "tiny-plain.q4_0.gguf")
    assert "imatrix" in plain["details"] and plain["details"]["imatrix"] is None
    assert plain["details"]["quant"]["imatrix"] is None
    assert plain["details"]["modelfile"] == "tiny-plain.q4_0.Modelfile"
    assert Path(plain["path"]).read_bytes() != Path(q4["path"]).read_bytes()

    for artifact in made:
        assert Path(artifact["path"]).is_file()
        assert artifact["size_bytes"] == Path(artifact["path"]).stat().st_size
        assert artifact["verify"]["passed"], (artifact["name"], artifact["verify"].get("failures"))
    assert any("without the importance matrix" in m for m in exported.messages)
    json.dumps(made)
    # nothing else is left: no f16/work files, no hidden temporary matrix, no plain q8_0
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny-plain.q4_0.Modelfile", "tiny-plain.q4_0.gguf", "tiny.imatrix.gguf",
        "tiny.q4_0.Modelfile", "tiny.q4_0.gguf", "tiny.q8_0.Modelfile", "tiny.q8_0.gguf"]


def test_resume_makes_only_the_missing_plain_twin(exported: Exported, tiny_model_dir: Path,
                                                  tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    shutil.copytree(exported.out, out)
    for path in out.glob("tiny-plain.*"):
        path.unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    made = export_targets(tiny_model_dir, out, WANTED, "tiny", calibration_texts=CALIBRATION, compare_imatrix=True,
                          threads=1, skip={"gguf-q4_0", "gguf-q8_0"}, progress=lambda _m: None)
    assert [a["name"] for a in made] == ["gguf-q4_0-plain"]
    [plain] = made
    assert _same(plain["path"], out / "tiny-plain.q4_0.gguf") and Path(plain["path"]).is_file()
    assert plain["details"]["imatrix"] is None and plain["details"]["quant"]["imatrix"] is None
    assert plain["verify"]["passed"]
    # the done artifacts and the kept matrix are left as they were (not re-exported, not recomputed)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before

    # everything done: nothing to do, nothing written
    assert export_targets(tiny_model_dir, out, WANTED, "tiny", calibration_texts=CALIBRATION, compare_imatrix=True,
                          skip={"gguf-q4_0", "gguf-q8_0", "gguf-q4_0-plain"}, progress=lambda _m: None) == []
    assert sorted(p.name for p in out.iterdir()) == sorted([*before, "tiny-plain.q4_0.Modelfile",
                                                            "tiny-plain.q4_0.gguf"])


# ---------------------------------------------------------------------------------------------- calibration files


def test_calibration_jsonl_renders_conversations_with_the_chat_template(tiny_model_dir: Path,
                                                                        tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    conversations = [
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
         {"role": "assistant", "content": "4"}],
    ]
    path = tmp_path / "examples.jsonl"
    rows = [{"id": 1, "messages": conversations[0]}, {"id": 2, "prompt": "no messages here"},
            {"id": 3, "messages": conversations[1]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    texts = calibration_file_texts(path, tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert texts == [tok.apply_chat_template(c, tokenize=False) for c in conversations]
    assert "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>" in texts[0]
    assert "<|im_start|>system\nBe brief.<|im_end|>" in texts[1]


def test_calibration_text_file_splits_on_blank_lines(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text("First paragraph,\nstill the first.\n\n\nSecond.\n\nThird:\n  indented\n\n", encoding="utf-8")
    assert calibration_file_texts(path, tiny_model_dir) == ["First paragraph,\nstill the first.", "Second.",
                                                            "Third:\n  indented"]


@pytest.mark.parametrize(("file_name", "content", "message"), [
    ("missing.jsonl", None, "calibration file not found"),
    ("empty.txt", "\n\n  \n\n", "calibration file is empty"),
    ("no_messages.jsonl", '{"prompt": "a"}\n{"messages": []}\n', "a list of {role, content} strings (none found)"),
    ("bad_messages.jsonl", "{\"messages\": \"hi\"}\n", "conversation 1 is not"),
])
def test_bad_calibration_files_name_the_path(tiny_model_dir: Path, tmp_path: Path, file_name: str,
                                             content: str | None, message: str) -> None:
    path = tmp_path / file_name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ArteError, match=re.escape(message)) as err:
        calibration_file_texts(path, tiny_model_dir)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and "\n" not in text


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_auto_without_a_budget_is_one_line_exit_2(tiny_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from arte_edge.cli import app, main

    out = tmp_path / "out"
    args = ["export", str(tiny_model_dir), "--format", "gguf:auto", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ArteError), result.output
    assert result.exception.exit_code == 2
    assert "--max-size-mb" in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()  # refused before any work

    # through the entry point: exit code 2 and exactly one line on stderr
    monkeypatch.setattr(sys, "argv", ["arte-edge", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("error: ") and "--max-size-mb" in stderr[0]


def test_cli_auto_with_a_budget_passes_it_on(tiny_model_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from arte_edge.cli import app
    from arte_edge.export import targets
    from arte_edge.export.mix import AutoMixBudget

    seen: dict[str, Any] = {}

    def fake_export(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        seen.update(kwargs, wanted=args[2])
        return []

    monkeypatch.setattr(targets, "export_targets", fake_export)
    out = tmp_path / "out"
    calib = tmp_path / "calib.txt"
    calib.write_text("One paragraph.\n\nAnother one.", encoding="utf-8")
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--format", "gguf:auto,gguf:q8_0", "--out",
                                      str(out), "--max-size-mb", "4.5", "--calibration", str(calib)])
    assert result.exit_code == 0, result.output
    assert seen["wanted"] == [("gguf", "auto"), ("gguf", "q8_0")]
    assert seen["auto"] == AutoMixBudget(max_size_mb=4.5)
    assert seen["calibration_texts"] == ["One paragraph.", "Another one."] and seen["compare_imatrix"] is False


@pytest.mark.parametrize(("extra", "message"), [
    (["--format", "gguf:auto", "--max-size-mb", "4"], "needs --calibration"),
    (["--format", "gguf:auto", "--max-size-mb", "0"], "must be positive"),
    (["--format", "gguf:q8_0", "--max-kl", "0.1"], "add gguf:auto to --format"),
    (["--format", "gguf:q4_0", "--compare-imatrix"], "--compare-imatrix needs --calibration"),
])
def test_cli_export_budget_flags_are_checked_before_any_work(tiny_model_dir: Path, tmp_path: Path,
                                                             extra: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from arte_edge.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(tiny_model_dir), "--out", str(out), *extra])
    assert isinstance(result.exception, ArteError) and message in str(result.exception), result.output
    assert not out.exists()
