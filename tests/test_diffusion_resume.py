"""`python -m ftplugins.train diffusion` interrupted after a checkpoint and run again with --resume_from_checkpoint ends
with the weights of an uninterrupted run (full fine-tuning, pso with an adapter, pso with a frozen copy); a resumed
pso run pairs against the reference set the first run cached, it does not sample a new one."""

from __future__ import annotations

import os
from importlib.metadata import EntryPoint

import pytest
import torch

pytest.importorskip("diffusers")

from safetensors.torch import load_file  # noqa: E402

from ftplugins import hookimpl  # noqa: E402
from ftplugins.methods.pso import references  # noqa: E402
from ftplugins.plugin import Plugin  # noqa: E402
from ftplugins.train import train  # noqa: E402

PSO = ["--pso_class_prompt", "a shape", "--pso_num_references", "4", "--pso_seed", "3"]
CASES = {
    "full": ([], []),
    "pso+ssf": (["pso", "ssf"], [*PSO, "--ssf_target_modules", "to_q", "to_k", "to_v", "to_out.0"]),
    "pso-frozen-copy": (["pso"], PSO),
}


class Probe(Plugin):
    """Records the trained trainer; with ``stop_at``, stops the run after that step (its checkpoint written), as an
    interrupted job."""

    name = "probe"
    summary = "records the trainer and interrupts the run (test only)"

    def __init__(self):
        self.stop_at = None
        self.trainer = None
        self.steps: list[int] = []  # the optimizer steps this process ran

    @hookimpl
    def callbacks(self, run):
        from transformers import TrainerCallback

        from ftplugins.testing import StopAt

        probe = self

        class CountSteps(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                probe.steps.append(state.global_step)

        return [CountSteps(), *([StopAt(self.stop_at)] if self.stop_at else [])]

    @hookimpl
    def post_train(self, run, trainer):
        self.trainer = trainer


@pytest.fixture
def probe(monkeypatch) -> Probe:
    from ftplugins import registry

    plugin = Probe()
    eps = {**registry.available_entry_points(),
           "probe": EntryPoint(name="probe", value="test_diffusion_resume:Probe", group="ftplugins")}
    monkeypatch.setattr(registry, "available_entry_points", lambda: eps)
    monkeypatch.setitem(registry._loaded, "probe", plugin)
    return plugin


def run(model, data, out, plugins, options, *extra):
    train(["diffusion", "--model_name_or_path", model, "--dataset_name", data, "--output_dir", str(out),
           "--max_steps", "4", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
           "--lr_scheduler_type", "linear", "--save_strategy", "steps", "--save_steps", "2", "--use_cpu", "true",
           "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", "--plugins", ",".join([*plugins, "probe"]),
           *options, *extra])


def trained_weights(out, plugins) -> dict[str, torch.Tensor]:
    """What the run saved: the adapter, or the pipeline's fine-tuned denoiser."""
    if "ssf" in plugins:
        return load_file(str(out / "adapter_model.safetensors"))
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_cli_run_resumes_to_the_uninterrupted_weights(case, tiny_diffusion_dir, diffusion_data_dir,
                                                                      tmp_path, probe, monkeypatch):
    plugins, options = CASES[case]
    data = os.path.join(diffusion_data_dir, "shapes")
    drawn = []
    real_draw = references.draw
    monkeypatch.setattr(references, "draw", lambda *a, **k: drawn.append(1) or real_draw(*a, **k))

    run(tiny_diffusion_dir, data, tmp_path / "straight", plugins, options)
    straight = trained_weights(tmp_path / "straight", plugins)
    assert probe.trainer.state.global_step == 4

    probe.stop_at = 2
    run(tiny_diffusion_dir, data, tmp_path / "resumed", plugins, options)
    assert probe.trainer.state.global_step == 2 and (tmp_path / "resumed" / "checkpoint-2").is_dir()
    interrupted = trained_weights(tmp_path / "resumed", plugins)
    cached = tmp_path / "resumed" / references.FILENAME
    if "pso" in plugins:
        assert len(drawn) == 2 and cached.is_file()  # one draw per fresh run, none on resume (below)
        monkeypatch.setattr(references, "draw", lambda *a, **k: pytest.fail("the resumed run drew a new reference set"))

    probe.stop_at, probe.steps = None, []
    run(tiny_diffusion_dir, data, tmp_path / "resumed", plugins, options,
        "--resume_from_checkpoint", str(tmp_path / "resumed" / "checkpoint-2"))
    assert probe.trainer.state.global_step == 4 and probe.steps == [3, 4]  # from the checkpoint, not from scratch
    resumed = trained_weights(tmp_path / "resumed", plugins)
    assert resumed.keys() == straight.keys()
    assert any(not torch.equal(resumed[k], interrupted[k]) for k in resumed)  # steps 3 and 4 trained
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)
    if "pso" in plugins:
        state = probe.trainer.ftplugins_run.state["pso"]
        assert torch.equal(state["references"].cpu(), load_file(str(cached))["latents"])
