"""Pipeline recipes: one YAML file per pipeline, validated into typed, frozen models (the core sections).

Unknown keys and bad values are all reported at once, each naming its dotted key, e.g.
``configs/demo.yaml: 2 problem(s): train.lr: Input should be a valid number; teacher.modle: unknown key``.
``--set key=value`` overrides are applied to the raw YAML before validation, so they are checked too.

This module knows the sections every pipeline has. A method's own section (``arte:``, ``persd:``, ``elad:``) is
defined beside the method (``arte_edge/methods/<name>/config.py``); :mod:`arte_edge.recipes` validates the whole
recipe, core and method section, and attaches the method's config to :attr:`Recipe.method_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from arte_edge.errors import ArteError
from arte_edge.formats import check_formats, check_gguf_type

DEFAULT_THREADS = 2
# Sections with a ``threads`` setting: each defaults to the recipe's top-level ``threads``.
THREADED_SECTIONS = ("teacher", "student", "train", "evaluate", "bench")


class Section(BaseModel):
    """Base of every recipe section (core and method): frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)




class ModelSpec(Section):
    """A model used as teacher or student, and how to run it."""

    model: str = Field(description="Bundled name (see `arte-edge models list`), a .gguf path, an HF folder, "
                       "or `hub:org/name` (online only).")
    backend: Literal["llama_cpp", "transformers", "openai"] = Field(
        "llama_cpp", description="llama_cpp: local GGUF (fastest on CPU); transformers: torch; "
        "openai: an OpenAI-compatible server (vLLM, llama.cpp server, Ollama) at base_url.")
    base_url: str | None = Field(None, description="For backend=openai: e.g. http://127.0.0.1:8080/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (openai).")
    threads: int = Field(2, ge=1, description="CPU threads for llama.cpp / torch.")
    n_ctx: int = Field(2048, ge=256, description="Context window in tokens (llama.cpp).")
    batch_size: int = Field(16, ge=1, description="Conversations decoded together (llama_cpp continuous batching: "
                            "slots in one context; 1 = one at a time). Measured on 2 cores, Qwen2.5-0.5B teacher: "
                            "16 slots 1.11x the throughput of 8.")
    parallel: int = Field(1, ge=1, description="Concurrent requests (openai backend).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds (openai backend).")
    max_retries: int = Field(5, ge=0, description="Retries on timeouts, connection errors, 429 and 5xx (openai).")
    max_inflight_per_url: int | None = Field(None, ge=1, description="Cap on concurrent requests per base URL "
                                             "(openai; default: parallel). Set to a server's slot count.")
    price_prompt_per_m: float = Field(0.0, ge=0, description="USD per 1M prompt tokens, for cost accounting.")
    price_completion_per_m: float = Field(0.0, ge=0, description="USD per 1M completion tokens.")


class SplitsConfig(Section):
    """Disjoint splits of the task's items, fixed by `seed` and recorded in the manifest."""

    seeds: int = Field(3, ge=0, description="Seed examples shown to the teacher as demonstrations.")
    preference: int = Field(0, ge=0, description="Preference set D_pref (ARTE) / validation for early stopping.")
    train_pool: int = Field(64, ge=0, description="Questions the teacher may answer or learn from.")
    eval: int = Field(100, ge=1, description="Held-out items for accuracy (≥ 100 for a useful interval).")


class GenerateConfig(Section):
    """How the teacher produces training data (stage `generate`)."""

    questions: Literal["pool", "synthesize"] = Field(
        "pool", description="pool: the teacher answers the train-pool questions (answers checked against gold); "
        "synthesize: the teacher drafts new questions from the seeds, then answers them (kept when its "
        "answer agrees with the drafted key).")
    n_examples: int = Field(48, ge=1, description="Stop once this many checked examples are kept.")
    max_attempts: int = Field(96, ge=1, description="Upper bound on items tried (teacher budget).")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Teacher sampling temperature for rationales.")
    question_temperature: float = Field(1.0, ge=0.0, le=2.0, description="Temperature for drafting questions.")
    max_tokens: int = Field(256, ge=16, description="Max new tokens per teacher answer.")
    batch_size: int = Field(8, ge=1, description="Examples per durable write (flush + fsync).")
    answer_followup: bool = Field(
        True, description="When the teacher finishes without a parseable answer line, ask once more for the "
        "answer line alone (two-stage answer extraction; counted as a teacher call).")


class TrainConfig(Section):
    """Student fine-tuning (stage `train`)."""

    mode: Literal["lora", "qlora", "full"] = Field("lora", description="qlora = 4-bit nf4 base (bitsandbytes).")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: str | list[str] = Field("all-linear", description="Modules to adapt.")
    epochs: float = Field(2.0, gt=0, description="Passes over the training data.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (cosine decay, warm-up ratio 0.1).")
    batch_size: int = Field(4, ge=1, description="Per-device batch size.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    max_length: int = Field(512, ge=32, description="Max tokens per example; longer ones are truncated.")
    threads: int = Field(2, ge=1, description="torch threads on CPU (1 can win on a busy machine).")
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps (resume after a crash).")
    padding_free: bool = Field(
        True, description="Each batch is one sequence without padding (TRL's padding_free; attention kept inside "
        "each example through position_ids): same loss as padded batches, fewer tokens computed. Off for models "
        "whose attention ignores position_ids boundaries (linear attention, convolutions).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training precision. auto: bf16 mixed precision (fp32 master weights, bf16 matmuls) on "
        "a CUDA GPU with bf16, fp32 on CPU: measured on an Intel CPU with AMX-BF16, bf16 autocast trained LoRA at "
        "1.02-1.25x the fp32 speed with a higher loss, and CPUs without AMX run bf16 ~1.7x slower. bf16 forces "
        "autocast. The resolved precision is recorded in training.json and keys the checkpoints.")


class AutoMixConfig(Section):
    """A GGUF whose per-tensor types are chosen to a budget (artifact `gguf-auto`, format `gguf:auto`): each
    group of tensors (one kind over `layers_per_unit` layers) is measured at 4, 5, 6 and 8 bits on the run's
    training texts (KL against the merged model), then a low-KL mix within the budget (greedy knapsack) is
    written by llama.cpp's quantizer with the run's importance matrix (none with export.imatrix: none). Give at
    least one budget; the tightest rules. See docs/quantization.md."""

    max_size_mb: float | None = Field(None, gt=0, description="Largest file size in MB (1e6 bytes).")
    min_decode_tok_s: float | None = Field(
        None, gt=0, description="Slowest acceptable batch-1 decode on `device`: turned into a limit on weight "
        "bytes read per token (the device's memory bandwidth / this). Weights only: the KV cache read at long "
        "contexts and the device's efficiency come on top, so the bench's measured rate will be lower.")
    device: str | None = Field(None, description="Device profile for min_decode_tok_s (default: bench.device).")
    max_kl: float | None = Field(
        None, gt=0, description="Largest mean KL(merged || mix) in nats per position on the verification texts. "
        "Alone: the smallest mix that reaches it. With a byte budget: checked, and the export fails if missed.")
    layers_per_unit: int = Field(8, ge=1, description="Layers per tensor group (fewer: finer mix, slower to measure).")
    calibration_tokens: int = Field(256, ge=32, description="Training-text tokens each sensitivity is measured on.")

    @model_validator(mode="after")
    def _needs_budget(self) -> AutoMixConfig:
        if self.max_size_mb is None and self.min_decode_tok_s is None and self.max_kl is None:
            raise ValueError("give a budget: max_size_mb, min_decode_tok_s or max_kl")
        return self


class ExportConfig(Section):
    """Artifacts to ship (stage `export`)."""

    formats: list[str] = Field(default_factory=lambda: ["gguf:q8_0"],
                               description="Format specs, e.g. gguf:f16, gguf:q8_0, gguf:q4_k_m, gguf:auto, "
                               "onnx:int4.")
    preset: str | None = Field(None, description="Name or path of an export preset (export/*.yaml); "
                               "its formats are added to `formats`.")
    verify: bool = Field(True, description="Verify each artifact against the merged model before calling it done.")
    imatrix: Literal["run", "none"] = Field(
        "run", description="Importance matrix for GGUF types of 5 bits or fewer (and gguf:auto): run = computed "
        "from the run's own training conversations (data/examples.jsonl) and kept as artifacts/<name>.imatrix.gguf; "
        "none = plain quantization.")
    compare_imatrix: bool = Field(
        True, description="With imatrix: run, also export each such type without it (artifact `<name>-plain`), "
        "verified, evaluated and benched like the others, so the report shows what the importance matrix bought.")
    auto: AutoMixConfig | None = Field(None, description="Budget of the gguf:auto artifact (required with it).")

    _known_formats = field_validator("formats")(check_formats)

    @model_validator(mode="after")
    def _auto_needs_budget(self) -> ExportConfig:
        listed = "gguf:auto" in self.formats
        if listed and self.auto is None:
            raise ValueError("gguf:auto needs a budget: add export.auto with max_size_mb, min_decode_tok_s or max_kl")
        if self.auto is not None and not listed:
            raise ValueError("export.auto is set but export.formats has no gguf:auto; add it to formats")
        return self


class EvaluateConfig(Section):
    """Held-out accuracy (stage `evaluate`)."""

    max_tokens: int = Field(192, ge=8, description="Max new tokens per answer.")
    threads: int = Field(2, ge=1, description="CPU threads.")
    batch_size: int = Field(32, ge=1, description="Rows decoded together (continuous batching) when an fp32 "
                            "(torch) student is scored; each such row is re-answered one at a time on 8 items "
                            "and the report shows the agreement. Shipped artifacts (GGUF, ONNX) are always scored "
                            "one at a time. 32: the demo's merged row took 35 s at 32, 44 s at 16, 34.5 s at 64 "
                            "(2 Intel cores).")
    include_base: bool = Field(True, description="Also evaluate the untrained student.")
    format_baseline: bool = Field(
        True, description="Also score the untrained student shown the seed examples as demonstrations (artifact "
        "`base-fewshot`, answer-checked tasks): the format-only baseline, so a gain from learning the answer "
        "format is told apart from a gain in knowledge.")
    quant: str | None = Field(
        None, description="Score the untrained, merged and variant students as a verified GGUF of this type (e.g. "
        "q8_0) in llama.cpp instead of fp32 torch: the runtime that ships, ~3x faster on a CPU. The merged row then "
        "reuses the export stage's gguf:<type> file; other exports keep their own runtime. None: fp32 torch.")

    _known_gguf_type = field_validator("quant")(check_gguf_type)


class BenchConfig(Section):
    """Latency on a device (stage `bench`)."""

    device: str = Field("host", description="Device profile name (devices/*.yaml) or path.")
    prompt_tokens: int = Field(128, ge=1, description="Prompt-processing length (pp).")
    gen_tokens: int = Field(32, ge=1, description="Decode length (tg).")
    repetitions: int = Field(5, ge=1, description="Measured repetitions after warm-up.")
    warmup: int = Field(1, ge=0, description="Unmeasured warm-up runs.")
    threads: int = Field(2, ge=1, description="CPU threads.")


class ReportConfig(Section):
    """Report and recommendation."""

    max_accuracy_drop: float = Field(1.0, ge=0.0, description="Recommend the fastest artifact whose accuracy "
                                     "is within this many points of the merged fp32 model.")
    max_answer_share: float = Field(
        0.6, gt=0.0, le=1.0, description="A model giving one answer to more than this share of the held-out items "
        "has collapsed: flagged, never recommended.")
    min_relative_accuracy: float = Field(
        0.99, gt=0.0, le=1.0, description="Accuracy gate: an exported artifact whose held-out accuracy is below this "
        "fraction of the merged student's (MLPerf's 99% of the reference) is flagged and never recommended; applied "
        "only on at least `gate_min_items` items. An artifact that an exact one-sided McNemar test on the same items "
        "finds worse than the merged student (p < 0.05) is flagged whatever the number of items.")
    gate_min_items: int = Field(
        300, ge=1, description="Fewest held-out items for the relative accuracy gate (`min_relative_accuracy`); on "
        "fewer, only the paired test against the merged student gates, and the report says so.")


class VariantsConfig(Section):
    """Baselines and ablations trained beside the main method, each on its own dataset, on the same splits."""

    enabled: bool = Field(True, description="Train and evaluate the extra datasets a method writes "
                          "(data/variants/<name>/examples.jsonl) with the same train settings.")
    include: list[str] | None = Field(None, description="Only these variant names (default: all the method wrote).")
    evaluate: bool = Field(True, description="Score each variant on the recipe's eval split (fp32, or "
                           "`evaluate.quant`, like the merged student). A method with its own held-out table (persd) "
                           "may turn this off to save time.")


class Recipe(Section):
    """One pipeline: task → teacher data → student → artifacts → evaluation → report."""

    name: str = Field(description="Run name; the run directory defaults to runs/<name>.")
    task: str = Field(description="Built-in task name (`arte-edge data list`) or a task YAML/JSONL path.")
    method: str = Field("standard", description="How training data is made: standard | arte | persd | elad "
                        "(its settings go in the section of the same name).")
    seed: int = Field(0, description="Seed for splits, sampling and training.")
    threads: int = Field(DEFAULT_THREADS, ge=1, description="CPU threads for every section that does not set its "
                         "own (teacher, student, train, evaluate, bench, a method's DPO).")
    teacher: ModelSpec
    student: ModelSpec
    splits: SplitsConfig = SplitsConfig()
    generate: GenerateConfig = GenerateConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    bench: BenchConfig = BenchConfig()
    report: ReportConfig = ReportConfig()
    variants: VariantsConfig = VariantsConfig()
    _method_config: Any = PrivateAttr(None)

    @property
    def method_config(self) -> Any:
        """The validated section of the recipe's method (attached by :func:`arte_edge.recipes.validate_recipe`)."""
        return self._method_config

    def with_method_config(self, config: Any) -> Recipe:
        """A copy carrying ``config`` as :attr:`method_config`."""
        out = self.model_copy()
        out._method_config = config
        return out

    @model_validator(mode="before")
    @classmethod
    def _default_threads(cls, data: Any) -> Any:
        """Sections without their own ``threads`` take the recipe's (one default for the whole recipe)."""
        if not isinstance(data, dict):
            return data
        threads = data.get("threads", DEFAULT_THREADS)
        out = dict(data)
        for name in THREADED_SECTIONS:
            section = out.get(name)
            if section is None and name not in ("teacher", "student"):
                out[name] = {"threads": threads}
            elif isinstance(section, dict) and "threads" not in section:
                out[name] = {**section, "threads": threads}
        return out

    @model_validator(mode="after")
    def _check_backends(self) -> Recipe:
        for role in ("teacher", "student"):
            spec: ModelSpec = getattr(self, role)
            if spec.backend == "openai" and not spec.base_url:
                raise ValueError(f"{role}.base_url is required when {role}.backend is openai")
        return self


def _format_loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def problems_of(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``key: message`` line per validation error (``prefix`` names the section, e.g. ``arte.``)."""
    problems = []
    for err in exc.errors():
        key = prefix + _format_loc(err["loc"])
        if err["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        else:
            problems.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    return problems


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into a key path and a YAML-typed value."""
    import yaml

    if "=" not in text:
        raise ArteError(f"--set {text!r}: expected key=value, e.g. --set train.epochs=1")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ArteError(f"--set {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` override applied."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def load_recipe_data(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into a dict, with one-line errors for missing files and bad YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ArteError(f"{path}: recipe not found; see configs/ for examples (configs/demo.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ArteError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(data, dict):
        raise ArteError(f"{path}: a recipe must be a YAML mapping of keys (name, task, teacher, student, ...)")
    return data


def validate_core(data: dict[str, Any]) -> tuple[Recipe | None, list[str]]:
    """The core sections of raw recipe data (method sections removed by the caller) and every problem found."""
    try:
        return Recipe.model_validate(data), []
    except ValidationError as exc:
        return None, problems_of(exc)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (for the manifest): core sections plus the method's own section."""
    out = recipe.model_dump(mode="json")
    if recipe.method_config is not None:
        out[recipe.method] = recipe.method_config.model_dump(mode="json")
    return out
