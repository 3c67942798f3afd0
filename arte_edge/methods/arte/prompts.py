"""The prompts ARTE asks its models with: seed demonstrations, the drafting prompt, the styled rationale prompts
(elicitation) and the plain step-by-step prompt (DPO rationale pairs and regeneration)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from arte_edge.backends.base import Message
from arte_edge.methods.common import draft_messages
from arte_edge.tasks.base import Item, Task

if TYPE_CHECKING:
    from arte_edge.methods.arte.config import ArteConfig

ANSWER_FORMAT = " Always finish with a final line 'Answer: <answer>' in the task's answer format."
TEACHER_WINDOW = 8  # teacher conversations per batched call (drafts, rationales, regeneration)


def demo_answer(task: Task, item: Item) -> str:
    """The assistant turn of a seed demonstration: its gold rationale (when any) and answer line."""
    return task.target(item.rationale or "", item.answer)


def shot_prefix(task: Task, demos: Sequence[tuple[str, str]]) -> list[Message]:
    """System prompt plus ``demos`` (question, answer) as earlier turns: the shared part of every prompt."""
    messages: list[Message] = [{"role": "system", "content": task.system_prompt}]
    for question, answer in demos:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def draft_prompt(task: Task, seeds: Sequence[Item]) -> list[Message]:
    """The question-generation prompt: task description and (up to) 3 seeds in a fixed order.

    Fixed, so that the DPO question pairs are trained on exactly the prompt that produced the drafts and that
    the aligned teacher is later asked with.
    """
    return draft_messages(task, seeds, random.Random(0))


def rationale_prompt(task: Task, question: str, cfg: ArteConfig) -> list[Message]:
    """The plain rationale prompt (DPO rationale pairs and regeneration): the question + "Let's think step by step"."""
    return [{"role": "system", "content": task.system_prompt},
            {"role": "user", "content": f"{task.user_prompt(Item(id='', question=question, answer=''))}\n\n"
                                        f"{cfg.rationale_prompt}"}]


def styled_prompt(task: Task, question: str, style: str) -> list[Message]:
    """A rationale prompt in one reasoning style (elicitation)."""
    return [{"role": "system", "content": f"{style} {task.system_prompt}{ANSWER_FORMAT}"},
            {"role": "user", "content": task.user_prompt(Item(id="", question=question, answer=""))}]
