"""Evaluation: answer and check items (:mod:`.scoring`), summarise accuracies (:mod:`.summary`)."""
