"""The fused LM head on labelled positions only (:mod:`arte_edge.training.lm_head`): fewer rows, same gradients."""

from __future__ import annotations

from pathlib import Path

from arte_edge.config import TrainConfig
from tests.training.test_sft import _trainer


def _loss_grads_rows(trainer, batch, monkeypatch):
    """Loss, LoRA gradients and the number of rows the fused head projected, for one training batch."""
    import trl.trainer.utils as trl_utils

    rows: list[int] = []
    original = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        rows.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    trainer.model.train()
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    monkeypatch.undo()
    return float(loss.detach()), grads, rows


def test_labelled_positions_only_projects_fewer_rows_with_the_same_gradients(
        tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import torch
    import trl.trainer.utils as trl_utils

    from arte_edge.training.lm_head import labelled_positions_only

    trainer = _trainer(tiny_model_dir, tmp_path / "w", TrainConfig(padding_free=True, lora_dropout=0.0))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    positions = batch["input_ids"].shape[1] - 1
    assert labelled < positions / 2  # the prompts are most of the tokens

    loss_all, grads_all, rows_all = _loss_grads_rows(trainer, batch, monkeypatch)
    original = trl_utils._use_triton
    with labelled_positions_only() as switched:
        assert switched
        loss_compact, grads_compact, rows_compact = _loss_grads_rows(trainer, batch, monkeypatch)
    assert trl_utils._use_triton is original  # restored on exit

    assert rows_all == [positions] and rows_compact == [labelled]
    assert loss_compact == loss_all
    assert grads_all.keys() == grads_compact.keys() and grads_all
    for name, grad in grads_all.items():
        torch.testing.assert_close(grads_compact[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_without_the_choice_in_trl_training_is_left_alone(monkeypatch) -> None:
    import trl.trainer.utils as trl_utils

    from arte_edge.training.lm_head import labelled_positions_only

    monkeypatch.delattr(trl_utils, "_use_triton")
    with labelled_positions_only() as switched:
        assert not switched
    assert not hasattr(trl_utils, "_use_triton")
