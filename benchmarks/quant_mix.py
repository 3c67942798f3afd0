"""The auto mix against llama.cpp's fixed GGUF types at the same size: KL and top-1 on held-out text (issue 17).

For each model, one path for every arm:
1. the f16 GGUF (llama.cpp's converter) and an importance matrix from the calibration texts (the run's training
   conversations rendered by the model's chat template);
2. fixed types from the f16 with that same importance matrix (Q4_0, Q4_K_M, Q5_K_M, Q6_K, Q8_0 by default);
3. the auto mix's sensitivities measured once on the same calibration texts, then one mix per budget: the size
   of each fixed type named by ``--budgets`` (its "nearest fixed type" is that type);
4. every file scored against the fp32 HF model on held-out texts (task test items with their gold answers,
   never in the calibration texts, plus the export's generic verification texts): mean KL(fp32 || GGUF) per
   position, top-1 agreement, greedy agreement (export/verify.py, one shared reference).

Prints a table and writes JSON (``--out``). Usage (both models: ~25 min on 2 cores):
    python benchmarks/quant_mix.py --model demo=runs/demo/student/merged \
        --model qwen=qwen2.5-coder-0.5b-instruct --calibration runs/demo/data/examples.jsonl \
        --task arc_easy --out benchmarks/results/quant_mix.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

FIXED = ["Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]


def log(message: str) -> None:
    """Progress on stderr-like stdout with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def held_out_texts(task_name: str, exclude: set[str], n: int) -> list[list[dict[str, str]]]:
    """``n`` task test items not in ``exclude`` (question ids of the calibration data), each as a conversation
    ending in the gold answer written the task's way."""
    from arte_edge.tasks.registry import get_task

    task = get_task(task_name)
    items = [i for i in task.load() if i.source_split == "test" and i.id not in exclude]
    convs = []
    for item in items[:n]:
        conv = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
        conv += [{"role": "user", "content": task.user_prompt(item)},
                 {"role": "assistant", "content": task.target(item.rationale or "", item.answer)}]
        convs.append(conv)
    return convs


def hf_dir_of(spec: str) -> Path:
    """A folder path as is; a bundled model name through the catalog (converted once, cached)."""
    if Path(spec).is_dir():
        return Path(spec)
    from arte_edge.models.convert import hf_folder

    return hf_folder(spec)


def score(hf_dir: Path, path: Path, qtype: str, reference: Any) -> dict[str, Any]:
    """KL, top-1 and greedy agreement of one GGUF against the shared fp32 reference (never raises)."""
    from arte_edge.export.verify import verify_gguf

    report = verify_gguf(hf_dir, path, qtype=qtype, reference=reference, raise_on_failure=False, threads=2)
    nxt, greedy = report["next_token"], report["greedy"]
    return {"kl": nxt["kl_mean"], "top1": nxt["top1"], "positions": nxt["n_positions"],
            "greedy_agreement": greedy.get("agreement"), "passed": report["passed"]}


def run_model(label: str, spec: str, calib_convs: list[Any], held_out: list[Any], args: argparse.Namespace,
              work: Path) -> dict[str, Any]:
    """Every arm of one model (see the module docstring)."""
    from arte_edge.export.converter import convert_to_gguf
    from arte_edge.export.imatrix import compute_imatrix
    from arte_edge.export.mix import AutoMixBudget, build_auto_mix
    from arte_edge.export.mix_sensitivity import measure_sensitivity
    from arte_edge.export.quantize import quantize_gguf
    from arte_edge.export.reference import DEFAULT_PROMPTS, DEFAULT_TEXTS, chat_texts, hf_reference

    hf_dir = hf_dir_of(spec)
    calib = chat_texts(hf_dir, calib_convs)
    f16 = work / f"{label}.f16.gguf"
    convert_to_gguf(hf_dir, f16, "f16", lambda _m: None)
    imatrix = work / f"{label}.imatrix.gguf" if args.imatrix else None
    if imatrix:
        compute_imatrix(f16, calib, imatrix, threads=2, progress=log)
    log(f"{label}: fp32 reference on {len(held_out)} held-out texts")
    reference = hf_reference(hf_dir, prompts=DEFAULT_PROMPTS, texts=chat_texts(hf_dir, held_out) + list(DEFAULT_TEXTS),
                             threads=2)
    rows: list[dict[str, Any]] = []
    sizes: dict[str, int] = {}
    for qtype in args.fixed:
        path = work / f"{label}.{qtype.lower()}.gguf"
        res = quantize_gguf(f16, path, qtype, imatrix, threads=2)
        sizes[qtype] = res.size_bytes
        rows.append({"arm": qtype, "size_mb": res.size_bytes / 1e6, "bpw": res.bits_per_weight,
                     **score(hf_dir, path, qtype, reference)})
        log(f"{label} {qtype}: {rows[-1]['size_mb']:.1f} MB, KL {rows[-1]['kl']:.4f}, top-1 {rows[-1]['top1']:.3f}")
        path.unlink()
    start = time.perf_counter()
    sens = measure_sensitivity(f16, hf_dir, work / "levels", calib, imatrix=imatrix,
                               layers_per_unit=args.layers_per_unit, max_tokens=args.calibration_tokens,
                               threads=2, progress=lambda m: None)
    sens_s = time.perf_counter() - start
    log(f"{label}: sensitivities of {len(sens.units)} units in {sens_s:.0f} s")
    for nearest in args.budgets:
        budget = AutoMixBudget(max_size_mb=sizes[nearest] / 1e6, layers_per_unit=args.layers_per_unit,
                               calibration_tokens=args.calibration_tokens)
        path = work / f"{label}.auto-{nearest.lower()}.gguf"
        res, plan, _ = build_auto_mix(f16, hf_dir, path, budget, calib, imatrix=imatrix, threads=2, sensitivity=sens)
        rows.append({"arm": f"auto ≤ {nearest}", "nearest": nearest, "size_mb": res.size_bytes / 1e6,
                     "bpw": res.bits_per_weight, "predicted_kl": plan.predicted_kl,
                     "type_histogram": res.type_histogram, "levels": plan.levels,
                     **score(hf_dir, path, "AUTO", reference)})
        log(f"{label} auto ≤ {nearest}: {rows[-1]['size_mb']:.1f} MB, KL {rows[-1]['kl']:.4f}, "
            f"top-1 {rows[-1]['top1']:.3f}")
        path.unlink()
    return {"model": label, "hf_dir": str(hf_dir), "imatrix": bool(imatrix), "calibration_texts": len(calib),
            "held_out_texts": len(reference.text_ids), "sensitivity_seconds": round(sens_s, 1),
            "sensitivity": sens.to_dict(), "rows": rows}


def table(results: list[dict[str, Any]]) -> str:
    """Markdown table of every arm, with the auto mix's KL against its nearest fixed type."""
    lines = ["| model | arm | MB | bpw | KL (nats/pos) | top-1 | greedy | vs nearest fixed |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for res in results:
        fixed = {r["arm"]: r for r in res["rows"] if "nearest" not in r}
        for r in res["rows"]:
            versus = ""
            if "nearest" in r:
                ref = fixed[r["nearest"]]
                versus = (f"{r['nearest']} {ref['size_mb']:.1f} MB, KL {ref['kl']:.4f}: "
                          f"{'lower' if r['kl'] < ref['kl'] else 'NOT lower'} ({r['kl'] / ref['kl']:.2f}x)")
            greedy = "" if r["greedy_agreement"] is None else f"{r['greedy_agreement']:.2f}"
            lines.append(f"| {res['model']} | {r['arm']} | {r['size_mb']:.1f} | {r['bpw']:.2f} | {r['kl']:.4f} | "
                         f"{r['top1']:.3f} | {greedy} | {versus} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="LABEL=HF_DIR_OR_BUNDLED_NAME",
                   help="A model to quantize (repeatable).")
    p.add_argument("--calibration", type=Path, required=True,
                   help="A run's data/examples.jsonl: its conversations calibrate the imatrix and the mix.")
    p.add_argument("--task", default="arc_easy", help="Task whose test items (not in the calibration) score KL.")
    p.add_argument("--held-out", type=int, default=24, help="Held-out task texts scored (plus 7 generic texts).")
    p.add_argument("--fixed", nargs="+", default=FIXED, help="Fixed llama.cpp types to compare.")
    p.add_argument("--budgets", nargs="+", default=["Q4_K_M", "Q5_K_M"],
                   help="Fixed types whose file size is an auto-mix budget.")
    p.add_argument("--layers-per-unit", type=int, default=8)
    p.add_argument("--calibration-tokens", type=int, default=256)
    p.add_argument("--no-imatrix", dest="imatrix", action="store_false", help="Quantize every arm without one.")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/quant_mix.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every model and print/write the comparison."""
    from arte_edge.rundir import read_jsonl

    args = parse_args(argv)
    rows = read_jsonl(args.calibration)
    calib = [r["messages"] for r in rows if r.get("messages")]
    exclude = {str((r.get("meta") or {}).get("item_id", "")) for r in rows}
    held_out = held_out_texts(args.task, exclude, args.held_out)
    results = []
    with tempfile.TemporaryDirectory(prefix="quant-mix-") as tmp:
        for spec in args.model:
            label, _, source = spec.partition("=")
            results.append(run_model(label, source or label, calib, held_out, args, Path(tmp)))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"host": platform.processor() or platform.machine(),
                                            "args": {k: str(v) for k, v in vars(args).items()},
                                            "results": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
