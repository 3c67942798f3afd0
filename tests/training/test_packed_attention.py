"""Attention per packed example (:mod:`arte_edge.training.packed_attention`): the padding-free loss and gradients,
with each example's own causal SDPA instead of one block-diagonal mask over the whole row."""

from __future__ import annotations

from pathlib import Path

import pytest

from arte_edge.config import TrainConfig
from tests.training.test_sft import _trainer


def test_segments_split_where_positions_restart() -> None:
    import torch

    from arte_edge.training.packed_attention import segments

    assert segments(torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])) == [(0, 3), (3, 5), (5, 9)]
    assert segments(torch.tensor([[0, 1, 2, 3]])) == [(0, 4)]


def _loss_and_grads(trainer, batch):
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_per_example_attention_gives_the_block_mask_loss_and_gradients(tiny_model_dir: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    import torch.nn.functional as F

    from arte_edge.training.packed_attention import per_example_attention

    trainer = _trainer(tiny_model_dir, tmp_path / "w", TrainConfig(padding_free=True, lora_dropout=0.0))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    base = trainer.model.get_base_model()
    assert (batch["position_ids"][0] == 0).sum() == len(trainer.train_dataset) > 1  # several examples in one row

    loss_mask, grads_mask = _loss_and_grads(trainer, batch)
    calls: list[tuple[int, bool]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(query, *args, is_causal=False, **kwargs):
        calls.append((query.shape[2], is_causal))
        return sdpa(query, *args, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with per_example_attention(base) as switched:
        assert switched
        loss_split, grads_split = _loss_and_grads(trainer, batch)
    monkeypatch.undo()
    assert base.config._attn_implementation == "sdpa"  # restored on exit

    n_layers = base.config.num_hidden_layers
    lengths = [e - s for s, e in _segments(batch)]
    assert calls == [(n, True) for _ in range(n_layers) for n in lengths]  # each example alone, causal
    assert loss_split == pytest.approx(loss_mask, rel=1e-5)
    assert grads_split.keys() == grads_mask.keys() and grads_mask
    for name, grad in grads_mask.items():
        torch.testing.assert_close(grads_split[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _segments(batch):
    from arte_edge.training.packed_attention import segments

    return segments(batch["position_ids"])


def test_generation_and_padded_batches_fall_back_to_sdpa(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from arte_edge.training.packed_attention import per_example_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2, 4], [3, 3, 7, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask).logits
        greedy = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
        with per_example_attention(model):
            got = model(input_ids=ids, attention_mask=mask).logits
            greedy_split = model.generate(ids[:1], max_new_tokens=5, do_sample=False)
    torch.testing.assert_close(got, want)
    assert torch.equal(greedy_split, greedy)


def test_models_with_other_attention_keep_it(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from arte_edge.training.packed_attention import per_example_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    with per_example_attention(model) as switched:
        assert not switched
        assert model.config._attn_implementation == "eager"
