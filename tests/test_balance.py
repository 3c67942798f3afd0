"""Balanced multiple-choice training data: the gold answer stays right, letters come out uniform."""

from __future__ import annotations

from collections import Counter

from arte_edge.methods.common import training_example
from arte_edge.tasks.balance import label_histogram, swap_letter_refs, target_letter
from arte_edge.tasks.base import Item
from arte_edge.tasks.kinds import MultipleChoiceTask, format_choices

CHOICES = ["crust", "mantle", "mesosphere", "core"]
ITEM = Item(id="q1", question=format_choices("Which layer is coldest?", CHOICES), answer="C",
            meta={"choices": CHOICES})
TASK = MultipleChoiceTask("mc", "d", lambda: [ITEM], source="test")
TARGET = "The mesosphere (C) is the coldest; C. mesosphere. A plant is not a layer, and B is hot.\nAnswer: C"


def test_swap_rewrites_letter_references_only() -> None:
    out = swap_letter_refs(TARGET, "C", "A")
    assert out == "The mesosphere (A) is the coldest; A. mesosphere. A plant is not a layer, and B is hot.\nAnswer: A"
    assert swap_letter_refs("option C or choice: A", "A", "C") == "option A or choice: C"


def test_balanced_example_keeps_the_gold_answer_right() -> None:
    moved_to = set()
    for i in range(40):
        example = training_example(TASK, ITEM, TARGET, f"ex{i}", {"teacher_calls": 1})
        question = example["messages"][-2]["content"]
        answer = example["messages"][-1]["content"]
        letter = answer.rsplit("Answer:", 1)[1].strip()
        moved_to.add(letter)
        assert letter == target_letter(f"ex{i}", 4)
        # the letter now names the same choice text, and the task's checker agrees
        assert f"{letter}. mesosphere" in question
        new_item = Item(id="q1", question=question, answer=letter, meta={"choices": question.splitlines()[1:]})
        assert TASK.check(new_item, answer).correct
        assert example["meta"]["item_id"] == "q1" and example["meta"]["teacher_calls"] == 1
    assert moved_to == {"A", "B", "C", "D"}


def test_letters_are_uniform_over_many_examples() -> None:
    examples = [training_example(TASK, ITEM, TARGET, f"item-{i}", {}) for i in range(2000)]
    counts = Counter(label_histogram(examples))
    assert set(counts) == {"A", "B", "C", "D"} and max(counts.values()) < 560 and min(counts.values()) > 440


def test_other_kinds_are_untouched() -> None:
    from arte_edge.tasks.kinds import NumericTask

    numeric = NumericTask("n", "d", lambda: [], source="test")
    item = Item(id="n1", question="2+2?", answer="4")
    example = training_example(numeric, item, "2+2=4\nAnswer: 4", "e", {})
    assert example["messages"][-1]["content"] == "2+2=4\nAnswer: 4" and "choice_swap" not in example["meta"]
