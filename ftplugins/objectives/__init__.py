"""Shared machinery of SFT-style objectives.

* :mod:`.token_logprobs` - per-token log-probabilities of the labels without the full logits.
* :mod:`.ref_logprobs` - the reference model's per-token log-probabilities: the model with its
  PEFT adapter disabled or a frozen copy, precomputed once per dataset or computed on the fly.
* :mod:`.sft_tokens` - prompt/completion tokenization exactly as TRL's ``SFTTrainer`` does it, for
  plugins that hand it pre-tokenized rows (packing, augmentation).

Nothing here is imported by ``ftplugins`` itself; import the submodule you need (they import torch).
"""
