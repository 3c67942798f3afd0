"""CLI behaviour a user sees first: fast help, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "arte_edge.cli"]


def tiny_gguf_bytes() -> bytes:
    """A small valid GGUF (llama metadata, two tensors) for corruption tests."""
    import tempfile

    import gguf
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.ones((16, 8), dtype=np.float32))
        writer.add_tensor("output_norm.weight", np.ones((8,), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def test_help_is_fast_and_teaches() -> None:
    start = time.perf_counter()
    res = subprocess.run(CLI + ["--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    elapsed = time.perf_counter() - start
    assert res.returncode == 0
    assert "arte-edge run configs/demo.yaml" in res.stdout
    assert elapsed < 3.0  # the issue asks < 1 s on an idle machine; this bound tolerates a loaded CI box
    heavy = subprocess.run([sys.executable, "-X", "importtime", "-m", "arte_edge.cli", "--help"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60).stderr
    for module in ("torch", "transformers", "llama_cpp", "trl", "onnxruntime"):
        assert f" {module}\n" not in heavy and f"| {module}\n" not in heavy, f"{module} imported by --help"


def test_every_command_has_help() -> None:
    for cmd in (["run"], ["generate"], ["train"], ["merge"], ["evaluate"], ["validate"], ["report"], ["bench"],
                ["models", "list"], ["models", "pull"], ["models", "info"], ["data", "list"], ["data", "show"]):
        res = subprocess.run(CLI + [*cmd, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert res.returncode == 0, (cmd, res.stderr)


def test_validate_ok_for_demo() -> None:
    res = subprocess.run(CLI + ["validate", "configs/demo.yaml"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert res.returncode == 0 and "ok" in res.stdout


def test_report_on_non_run_dir(tmp_path: Path) -> None:
    res = subprocess.run(CLI + ["report", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and "not a run directory" in res.stderr
