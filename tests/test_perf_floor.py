"""The perf floor keeps the rows' activation policy: TRL's trainers checkpoint activations by default, and a floor
that kept every activation held more memory than the adapters it is meant to bound (449 MB vs 232-432 MB at
85M, 4 x 128)."""

from __future__ import annotations

import pytest
from transformers import LlamaForCausalLM

from benchmarks.perf import harness
from benchmarks.perf.floor import floor_once
from ftplugins.testing import tiny_llama


@pytest.mark.parametrize("checkpointing", [True, False])
def test_the_floor_checkpoints_exactly_when_the_rows_do(monkeypatch, checkpointing):
    calls = []
    enable = LlamaForCausalLM.activation_checkpointing_enable

    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return enable(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "activation_checkpointing_enable", recording)
    shape = harness.Shape.parse("2x16")
    args = harness.sft_args("unused", "cpu", shape, 2, 0, {"activation_checkpointing": checkpointing})
    rows = {"input_ids": [[(i * 7 + j) % 50 + 3 for j in range(16)] for i in range(4)]}
    result = floor_once(tiny_llama(), rows, shape, None, args, device="cpu", warmup=1, steps=1, inference_repeats=1,
                        result_cls=harness.RunResult, forward_seconds=lambda *a: 0.0)
    assert len(result.step_s) == 1
    assert len(calls) == (1 if checkpointing else 0)


def test_rows_checkpoint_by_default():
    args = harness.sft_args("unused", "cpu", harness.Shape.parse("1x32"), 1, 0)
    assert args.activation_checkpointing  # TRL's SFTConfig default: the floor follows it (test above)
