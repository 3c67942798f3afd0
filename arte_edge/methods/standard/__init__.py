"""Standard distillation (:mod:`.generation` holds the loop, :mod:`.method` the protocol object)."""

from arte_edge.methods.standard.generation import ANSWER_FOLLOWUP, GenerationSettings, answer_window, generate
from arte_edge.methods.standard.method import METHOD

__all__ = ["ANSWER_FOLLOWUP", "METHOD", "GenerationSettings", "answer_window", "generate"]
