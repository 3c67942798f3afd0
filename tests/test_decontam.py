"""Decontamination: a drafted near-duplicate of a held-out item is dropped, with the reason counted."""

from __future__ import annotations

from arte_edge.methods.common import read_draft
from arte_edge.tasks.base import Item
from arte_edge.tasks.decontam import HeldOut, count_contaminated
from arte_edge.tasks.kinds import MultipleChoiceTask, format_choices

HELD = Item(id="arc/held-1", answer="B", question=format_choices(
    "Which of these is the best evidence that the Earth's crust is made of moving plates that collide and separate?",
    ["rainfall patterns", "mountain ranges along plate boundaries", "ocean tides", "the phases of the Moon"]))
TASK = MultipleChoiceTask("mc", "d", lambda: [HELD], source="test")


def test_planted_near_duplicate_is_dropped_and_a_new_question_kept() -> None:
    held_out = HeldOut([HELD])
    # The teacher "drafts" the held-out question with different punctuation, case and one changed word at the end.
    copy = ("Question: which of these is the BEST evidence that the earth's crust is made of moving plates that "
            "collide and split?\nA. ocean tides\nB. mountain ranges along plate boundaries\nC. rainfall\nAnswer: B")
    item, why = read_draft(TASK, copy, "draft-1", held_out)
    assert item is None and why.startswith("contaminated:") and "arc/held-1" in why and "13-word" in why
    fresh = "Question: Which gas do plants take in to make food?\nA. oxygen\nB. carbon dioxide\nC. helium\nAnswer: B"
    item, why = read_draft(TASK, fresh, "draft-2", held_out)
    assert item is not None and why == ""
    assert count_contaminated([{"reason": "contaminated: x"}, {"reason": ""}, {"reason": "unusable draft: y"}]) == 1


def test_exact_copy_of_a_short_question_is_caught_without_13_words() -> None:
    short = Item(id="s1", question="What is 2 + 3?", answer="5")
    held_out = HeldOut([short])
    assert held_out.match("what is 2+3?").startswith("contaminated: same text")  # punctuation and spaces ignored
    assert held_out.match("  WHAT is 2 + 3?? ").startswith("contaminated: same text")
    assert held_out.match("What is 2 + 4?") is None
