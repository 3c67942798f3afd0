"""Teachers and students behind one interface (:class:`ChatModel`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from arte_edge.backends.base import ChatModel, Completion, Message, SamplingParams

if TYPE_CHECKING:
    from arte_edge.config import ModelSpec

__all__ = ["ChatModel", "Completion", "Message", "SamplingParams", "open_chat_model"]


def open_chat_model(spec: ModelSpec, *, seed: int = 0, name: str | None = None) -> ChatModel:
    """Load the model a recipe's teacher/student section names, on the backend it asks for."""
    if spec.backend == "openai":
        from arte_edge.backends.openai import OpenAIChat, Price, RetryPolicy

        urls = [u.strip() for u in (spec.base_url or "").split(",") if u.strip()]
        return OpenAIChat(urls, spec.model, api_key_env=spec.api_key_env, parallel=spec.parallel, name=name,
                          retry=RetryPolicy(max_retries=spec.max_retries, timeout_s=spec.timeout_s),
                          price=Price(spec.price_prompt_per_m, spec.price_completion_per_m),
                          max_inflight_per_url=spec.max_inflight_per_url)
    from arte_edge import models

    if spec.backend == "llama_cpp":
        from arte_edge.backends.llamacpp import LlamaCppChat

        return LlamaCppChat(models.gguf_path(spec.model), threads=spec.threads, n_ctx=spec.n_ctx, seed=seed,
                            name=name or spec.model, batch_size=spec.batch_size)
    from arte_edge.backends.hf import HFChat

    return HFChat(models.hf_folder(spec.model), threads=spec.threads, name=name or spec.model)
