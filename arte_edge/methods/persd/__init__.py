"""PERsD: personalised distillation (Chen et al., EMNLP 2023, arXiv 2310.18628).

The student attempts the pool's tasks, the teacher fixes the student's failures given the test error, and only
fixes that pass become data; held-out pass@1 with and without multi-step self-repair. Modules, one job each:

- :mod:`.config`: the recipe's ``persd:`` section (:class:`PersdConfig`);
- :mod:`.prompts`: every prompt template;
- :mod:`.judging`: testing a completion in the sandbox (answer tasks: checking it) and the bounded error;
- :mod:`.records`: the loop's settings, log paths and record ids;
- :mod:`.loop`: the student → teacher loop (and the from-scratch teacher solutions of StanD, InpD, stand-full and
  PERsD-combined's gold);
- :mod:`.datasets`: PERsD, -refine, -combined (as the authors' scripts build it), StanD (equal budget), InpD and
  stand-full (StanD on the whole pool) datasets from the loop's logs, with each arm's teacher cost;
- :mod:`.heldout`: scoring one model (pass@k, visible tests, multi-step inference on the greedy answer and on each
  sample, student calls);
- :mod:`.heldout_run`: scoring every model of a run on ``persd.eval_task``;
- :mod:`.report`: the report section (each model against StanD: paired bootstrap, McNemar + Holm, MDD);
- :mod:`.method`: the protocol object :data:`METHOD`.
"""

from arte_edge.methods.persd.config import DEFAULT_VARIANTS, VARIANT_NAMES, PersdConfig
from arte_edge.methods.persd.datasets import build_datasets, target_of, write_datasets
from arte_edge.methods.persd.heldout import (
    HeldoutSettings,
    docstring_tests,
    estimate_pass_at_k,
    evaluate_heldout_model,
    multi_step,
    summarise_heldout,
    visible_tests,
)
from arte_edge.methods.persd.heldout_run import heldout_evaluation, heldout_settings, models_to_score
from arte_edge.methods.persd.judging import (
    CODE_DONE,
    NO_CODE,
    Judgement,
    format_error,
    judge,
    stop_regex_for,
    truncate_at_stop,
)
from arte_edge.methods.persd.loop import run_loop
from arte_edge.methods.persd.method import METHOD, PersdMethod
from arte_edge.methods.persd.prompts import refine_inference_messages, teacher_refine_messages
from arte_edge.methods.persd.records import ALL_VARIANTS, MAIN, LoopPaths, LoopSettings
from arte_edge.methods.persd.report import compare_with_reference, render_section, write_section

__all__ = [
    "ALL_VARIANTS", "CODE_DONE", "DEFAULT_VARIANTS", "MAIN", "METHOD", "NO_CODE", "VARIANT_NAMES", "HeldoutSettings",
    "Judgement", "LoopPaths", "LoopSettings", "PersdConfig", "PersdMethod", "build_datasets",
    "compare_with_reference", "docstring_tests", "estimate_pass_at_k", "evaluate_heldout_model", "format_error",
    "heldout_evaluation", "heldout_settings", "judge", "models_to_score", "multi_step", "refine_inference_messages",
    "render_section", "run_loop", "stop_regex_for", "summarise_heldout", "target_of", "teacher_refine_messages",
    "truncate_at_stop", "visible_tests", "write_datasets", "write_section"
]
