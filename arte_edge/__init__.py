"""arte-edge: student-aware distillation from a teacher LLM to a small student that ships on edge devices."""

__version__ = "0.1.0"
