"""One interface for teachers and students: chat in, completion out, with token accounting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings shared by every backend."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stop_regex: str | None = None  # stop as soon as the text so far matches (e.g. a complete answer line)


@dataclass(frozen=True)
class Completion:
    """One generated answer and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    seconds: float = 0.0
    error: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class ChatModel(Protocol):
    """What the methods need from a teacher or a student."""

    name: str

    def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        """Answer one conversation."""
        ...

    def chat_batch(self, conversations: Sequence[Sequence[Message]], params: SamplingParams) -> list[Completion]:
        """Answer several conversations (batched or concurrent where the backend allows).

        Sampled output is seeded by position: conversation i uses ``params.seed + i`` (llama.cpp, OpenAI) or
        one generator seeded once per decoded chunk (transformers), so identical prompts get different samples.
        """
        ...

    def close(self) -> None:
        """Free the model."""
        ...


def answer_followups(model: ChatModel, firsts: Sequence[Completion],
                     followup: Callable[[int, Completion], Sequence[Message] | None],
                     followup_params: SamplingParams) -> list[tuple[Completion, Completion | None]]:
    """``(first, follow-up or None)`` per answered conversation: every next turn ``followup(i, first)`` asks for,
    answered from scratch in one ``chat_batch`` call (for backends that cannot continue a conversation in place)."""
    asks = [(i, conv) for i, first in enumerate(firsts) if (conv := followup(i, first)) is not None]
    answers = model.chat_batch([conv for _, conv in asks], followup_params) if asks else []
    nexts = {i: answer for (i, _), answer in zip(asks, answers, strict=True)}
    return [(first, nexts.get(i)) for i, first in enumerate(firsts)]
