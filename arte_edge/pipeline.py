"""`arte-edge run`: the stages of a recipe in order, skipping those already done in the run directory."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from arte_edge.config import Recipe, recipe_to_dict
from arte_edge.errors import ArteError, ConfigError
from arte_edge.progress import log, quiet_libraries
from arte_edge.runctx import RunContext
from arte_edge.rundir import METHOD_STAGES, STAGES, RunDir

VERSIONED = ("arte-edge", "torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "llama-cpp-python",
             "gguf", "onnxruntime", "onnxruntime-genai", "tokenizers")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape results (from metadata: no imports)."""
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def stages_for(recipe: Recipe) -> list[str]:
    """The stages a recipe runs, in order: the method's extra stages (e.g. ARTE's align) only for that method."""
    from arte_edge.methods.registry import get_method

    extra = set(get_method(recipe.method).extra_stages)
    return [s for s in STAGES if s not in METHOD_STAGES or s in extra]


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def _as_current_version(recorded: dict[str, Any]) -> dict[str, Any]:
    """A manifest's recipe re-read by this version: options added since get their defaults, so upgrading
    arte-edge does not count as a recipe change. Unchanged when it no longer validates (an option was removed)."""
    from arte_edge.recipes import validate_recipe

    try:  # sections of other methods (older versions recorded them all) are dropped, the task not re-checked
        return recipe_to_dict(validate_recipe(recorded, "manifest", check_task=False, other_sections="drop"))
    except ConfigError:
        return recorded


def init_run(recipe: Recipe, run: RunDir, source: str, from_stage: str | None) -> None:
    """Create or re-open the manifest; refuse silent reuse of a run made with a different recipe."""
    manifest = run.read_manifest()
    resolved = recipe_to_dict(recipe)
    recorded = _as_current_version(manifest["recipe"]) if "recipe" in manifest else resolved
    if recorded != resolved:
        changed = _changed_keys(recorded, resolved)
        if from_stage is None:
            raise ArteError(f"{run.manifest_path}: the recipe changed since this run started ({', '.join(changed)}); "
                            "pass --from STAGE to redo from a stage, or use a new --run-dir")
        log(f"recipe changed ({', '.join(changed)}); redoing from {from_stage}")
    if "splits" in manifest and manifest.get("recipe", {}).get("splits") not in (None, resolved["splits"]):
        manifest.pop("splits")
    manifest.update(recipe=resolved, recipe_source=source, versions=library_versions(), llama_cpp=llama_cpp_build())
    manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    manifest.setdefault("stages", {})
    run.update_manifest(**manifest)


def llama_cpp_build() -> dict[str, Any]:
    """The llama.cpp build this run uses (system info, AMX state); refuses, before any work, one that would crash."""
    from arte_edge.llama_build import check_llama_build, llama_build_record

    check_llama_build()
    return llama_build_record()


def record_models(ctx: RunContext) -> None:
    """Put the teacher's and student's identity (file, size, sha256) in the manifest once."""
    if "models" in ctx.run.read_manifest():
        return

    info = {}
    for role in ("teacher", "student"):
        spec = getattr(ctx.recipe, role)
        info[role] = {"spec": spec.model, "backend": spec.backend}
        if spec.backend != "openai":
            info[role].update(model_identity(spec.model))
    ctx.run.update_manifest(models=info)


def model_identity(spec: str) -> dict[str, Any]:
    """Where a model's weights are and their sha256 (GGUF file, or the weight files of an HF folder)."""
    from arte_edge import models

    ref = models.resolve(spec)
    path = models.gguf_path(spec) if ref.gguf_path is not None else ref.hf_dir
    if path is None:
        return {"kind": ref.kind}
    if path.is_file():
        models.validate_gguf(path)
        return {"kind": ref.kind, "path": str(path), "sha256": models.sha256_of(path)}
    weights = sorted(path.glob("*.safetensors"))
    return {"kind": ref.kind, "path": str(path),
            "sha256": {w.name: models.sha256_of(w) for w in weights}}


def _stage_runner(name: str) -> Callable[[RunContext], dict[str, Any]]:
    import importlib

    return importlib.import_module(f"arte_edge.stages.{name}").run


def run_pipeline(recipe: Recipe, run_dir: str | Path, *, source: str, from_stage: str | None = None,
                 only: list[str] | None = None) -> RunDir:
    """Run the recipe's stages; finished stages are skipped unless at or after ``from_stage``."""
    run = RunDir(run_dir)
    stages = stages_for(recipe)
    if from_stage is not None and from_stage not in stages:
        raise ArteError(f"--from {from_stage}: not a stage of method {recipe.method} (stages: {', '.join(stages)})")
    init_run(recipe, run, source, from_stage)
    if from_stage is not None:
        run.reset_from(from_stage)
    quiet_libraries()
    ctx = RunContext(recipe, run)
    record_models(ctx)  # before the splits: a missing model is the first thing to fix
    ctx.ensure_splits()
    for name in stages:
        if only and name not in only:
            continue
        if run.is_done(name):
            log(f"[dim]{name}: done already, skipped[/dim]")
            continue
        log(f"[bold cyan]▶ {name}[/bold cyan]")
        with run.stage(name) as outputs:
            outputs.update(_stage_runner(name)(ctx) or {})
        log(f"[green]✓ {name}[/green] ({run.stage_info(name).get('seconds')} s)")
    return run
