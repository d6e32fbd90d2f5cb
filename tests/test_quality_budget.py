"""The quality harness's ``--epochs``: a paper's budget in epochs becomes the steps that cover it."""

import pytest

from benchmarks.quality.__main__ import parse_args
from benchmarks.quality.finetune import steps_for_epochs


def test_epochs_become_the_steps_that_pass_over_the_examples_that_many_times():
    assert steps_for_epochs(10, 256, 16) == 160  # Masked Thought's 10 epochs on the standard 256 examples
    assert steps_for_epochs(3, 100, 16) == 19  # a partial last batch is a step
    assert steps_for_epochs(0.01, 32, 16) == 1
    with pytest.raises(ValueError, match="--epochs must be positive"):
        steps_for_epochs(0, 256, 16)


def test_steps_and_epochs_are_one_choice():
    assert parse_args(["--epochs", "10"]).epochs == 10
    with pytest.raises(SystemExit):
        parse_args(["--steps", "100", "--epochs", "10"])
