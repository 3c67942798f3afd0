"""ARTE (arXiv 2406.19227): training data from a teacher aligned with the student's preferences.

One module per job: :mod:`.config` (the ``arte:`` section), :mod:`.dpref` (step 1, D_pref by IRT),
:mod:`.elicitation` (step 2), :mod:`.students`, :mod:`.scorer` and :mod:`.preferences` (step 3),
:mod:`.pairs` and :mod:`.alignment` (step 4, DPO + merge + export), :mod:`.align` (steps 1–4 in order),
:mod:`.regeneration` and :mod:`.datasets` (step 5), :mod:`.fingerprint` (which ``align/`` files are still valid),
:mod:`.report` (the report section), :mod:`.prompts` and :mod:`.files` (shared by the steps), :mod:`.method`
(the protocol object).
"""

from arte_edge.methods.arte.align import ensure_aligned, run_align
from arte_edge.methods.arte.alignment import DPO_SETS, build_aligned_teacher, check_alignment_possible
from arte_edge.methods.arte.config import ABLATIONS, DEFAULT_STYLES, ArteConfig, DpoConfig, dpo_settings
from arte_edge.methods.arte.datasets import generate_datasets
from arte_edge.methods.arte.dpref import fit_irt_2pl, rank_by_discrimination, select_preference_set
from arte_edge.methods.arte.fingerprint import retire_stale_steps
from arte_edge.methods.arte.method import METHOD
from arte_edge.methods.arte.pairs import question_pairs, rationale_pairs
from arte_edge.methods.arte.preferences import question_scores, score_rationales
from arte_edge.methods.arte.prompts import TEACHER_WINDOW, draft_prompt, rationale_prompt, shot_prefix
from arte_edge.methods.arte.regeneration import rationale_rejection, regenerate
from arte_edge.methods.arte.report import write_report_section
from arte_edge.methods.arte.scorer import ChatModelScorer, DemoScorer, PrefixReuseScorer, common_prefix_len

__all__ = ["ABLATIONS", "DEFAULT_STYLES", "DPO_SETS", "METHOD", "TEACHER_WINDOW", "ArteConfig", "ChatModelScorer",
           "DemoScorer", "DpoConfig", "PrefixReuseScorer", "build_aligned_teacher", "check_alignment_possible",
           "common_prefix_len", "dpo_settings", "draft_prompt", "ensure_aligned", "fit_irt_2pl", "generate_datasets",
           "question_pairs", "question_scores", "rank_by_discrimination", "rationale_pairs", "rationale_prompt",
           "rationale_rejection", "regenerate", "retire_stale_steps", "run_align", "score_rationales",
           "select_preference_set", "shot_prefix", "write_report_section"]
