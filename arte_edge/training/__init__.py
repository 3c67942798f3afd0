"""Student and teacher training: SFT with (Q)LoRA or full fine-tuning (:mod:`.sft`), DPO (:mod:`.dpo`, ARTE's
teacher alignment), merge (:mod:`.merge`), and the one ``train_and_merge`` every caller uses (:mod:`.student`).
Heavy libraries are imported inside the functions."""
