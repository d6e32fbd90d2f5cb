"""PSO (offline): the loss's invariants (log 2 at θ = θ_ref, the margin's sign under a swap, Diffusion-DPO at
λ = 1, the gradient's direction), the reference set drawn once and reused on resume, the reference model frozen,
timesteps only from the distilled set, training through compose with an adapter and with full fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cpu_args

pytest.importorskip("diffusers")

import ftplugins  # noqa: E402
from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny  # noqa: E402
from ftplugins.errors import FtpluginsError, OptionError  # noqa: E402
from ftplugins.methods.pso import plugin as pso  # noqa: E402
from ftplugins.methods.pso import references  # noqa: E402
from ftplugins.methods.pso.losses import pso_db_loss, pso_loss, pso_margin  # noqa: E402
from ftplugins.testing import StopAt  # noqa: E402

PROMPT = "a shape"
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def errors(seed, n=6):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=gen) for _ in range(4)]


# --- the loss ---------------------------------------------------------------------------------------------------


def test_loss_is_log_2_when_theta_is_the_reference():
    e_pos, e_neg, _, _ = errors(0)
    loss, margin = pso_loss(e_pos, e_neg, e_pos.clone(), e_neg.clone(), beta=5.0, neg_factor=0.1)
    assert torch.equal(margin, torch.zeros(6))
    assert math.isclose(float(loss), math.log(2), rel_tol=1e-6)


def test_swapping_target_and_reference_flips_the_margin():
    e_pos, e_neg, ref_pos, ref_neg = errors(1)
    margin = pso_margin(e_pos, e_neg, ref_pos, ref_neg, beta=3.0, neg_factor=1.0)
    swapped = pso_margin(e_neg, e_pos, ref_neg, ref_pos, beta=3.0, neg_factor=1.0)
    torch.testing.assert_close(swapped, -margin)
    assert (margin != 0).all()


def test_lambda_one_is_diffusion_dpo():
    """B §7: L = -log σ(-β[(e_θ(w) - e_ref(w)) - (e_θ(l) - e_ref(l))]), written out independently."""
    e_pos, e_neg, ref_pos, ref_neg = errors(2)
    beta = 4.0
    dpo = -torch.log(torch.sigmoid(-beta * ((e_pos - ref_pos) - (e_neg - ref_neg)))).mean()
    loss, _ = pso_loss(e_pos, e_neg, ref_pos, ref_neg, beta=beta, neg_factor=1.0)
    torch.testing.assert_close(loss, dpo)


@pytest.mark.parametrize("form", ["pso", "pso_db"])
def test_the_gradient_lowers_the_target_error_and_raises_the_reference_error(form):
    e_pos, e_neg, ref_pos, ref_neg = errors(3)
    e_pos, e_neg = e_pos.requires_grad_(), e_neg.requires_grad_()
    if form == "pso":
        loss, _ = pso_loss(e_pos, e_neg, ref_pos, ref_neg, beta=5.0, neg_factor=0.1)
    else:  # inside the hinge (1 + β(e⁺ - λe⁻) > 0 for these errors); no pull on e⁻ from the weight
        loss, _ = pso_db_loss(e_pos, e_neg, beta=5.0, neg_factor=0.1, reference_weight=0.0)
    loss.backward()
    assert (e_pos.grad > 0).all()  # descending lowers the error on the preferred (target) image
    assert (e_neg.grad < 0).all()  # ... and raises it on the model's own (dispreferred) sample


def test_pso_db_matches_the_released_form():
    e_pos, e_neg, _, _ = errors(4)
    loss, _ = pso_db_loss(e_pos, e_neg, beta=5.0, neg_factor=0.1, reference_weight=0.5)
    expected = (torch.clamp(1 + 5.0 * (e_pos - 0.1 * e_neg), min=0) + 0.5 * e_neg).mean()
    torch.testing.assert_close(loss, expected)


# --- through DiffusionTrainer -----------------------------------------------------------------------------------


def make_trainer(tmp_path, plugins, model=None, **overrides):
    options = {k: overrides.pop(k) for k in list(overrides) if k.startswith(("pso_", "ssf_"))}
    options = {"pso_class_prompt": PROMPT, "pso_num_references": 5, **options}
    trainer_cls = ftplugins.compose(DiffusionTrainer, plugins, **options)
    args = cpu_args(DiffusionConfig, tmp_path, per_device_train_batch_size=2, learning_rate=1e-2, **overrides)
    return trainer_cls(model=model if model is not None else tiny.tiny_unet(), args=args,
                       train_dataset=tiny.shapes_dataset(4), text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                       noise_scheduler=tiny.ddpm_scheduler(), processing_class=tiny.tiny_tokenizer())


def test_at_the_first_step_the_adapter_run_sits_at_log_2_and_timesteps_are_distilled(tmp_path):
    trainer = make_trainer(tmp_path, [pso, "ssf"], ssf_target_modules=ATTENTION)
    run = trainer.ftplugins_run
    run.call("train_begin", trainer=trainer, resume_from_checkpoint=None)
    state = run.state["pso"]
    assert state["timesteps"].tolist() == [999, 749, 499, 249]  # 4 trailing steps: t = 250k + 249
    assert state["references"].shape == (5, 4, 8, 8) and state["reference_model"] == "disable_adapter"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    seen = set()
    for _ in range(6):
        loss = trainer.compute_loss(trainer.model, batch)
        assert math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-5)  # SSF starts at the identity: θ = θ_ref
        seen |= set(state["last_timesteps"].tolist())
    assert seen <= {999, 749, 499, 249} and len(seen) > 1


def test_training_with_an_adapter_moves_only_the_adapter_and_leaves_the_reference_at_the_base(tmp_path):
    unet = tiny.tiny_unet()
    base = {k: v.clone() for k, v in unet.state_dict().items()}
    trainer = make_trainer(tmp_path, [pso, "ssf"], model=unet, ssf_target_modules=ATTENTION, max_steps=3)
    trainer.train()
    state = trainer.ftplugins_run.state["pso"]
    assert (state["last"]["margin"] != 0).all()  # the adapter moved θ away from the reference
    with trainer.model.disable_adapter():  # the reference: exactly the base UNet
        batch = torch.randn(1, 4, 8, 8)
        hidden = torch.randn(1, 3, tiny.TEXT_WIDTH)
        unet_ref = tiny.tiny_unet()
        unet_ref.load_state_dict(base)
        with torch.no_grad():
            torch.testing.assert_close(trainer.model(batch, 10, encoder_hidden_states=hidden).sample,
                                       unet_ref(batch, 10, encoder_hidden_states=hidden).sample)


def test_full_fine_tuning_uses_a_frozen_copy_that_never_changes(tmp_path):
    trainer = make_trainer(tmp_path, [pso], max_steps=2)
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    reference = trainer.ftplugins_run.state["pso"]["reference_model"]
    assert reference is not trainer.model
    assert all(p.grad is None and not p.requires_grad for p in reference.parameters())
    for key, value in reference.state_dict().items():
        assert torch.equal(value, initial[key]), key
    assert any(not torch.equal(v, initial[k]) for k, v in trainer.model.state_dict().items())


def test_a_reference_set_larger_than_one_sampling_batch_is_drawn_with_the_same_sampler(tmp_path):
    """The Euler sampler counts its steps: every batch of the set must start at the first timestep again."""
    trainer = make_trainer(tmp_path, [pso], pso_num_references=references.BATCH + 2, pso_loss="pso_db")
    trainer.ftplugins_run.call("train_begin", trainer=trainer, resume_from_checkpoint=None)
    drawn = trainer.ftplugins_run.state["pso"]["references"]
    assert drawn.shape[0] == references.BATCH + 2 and torch.isfinite(drawn).all()


def test_the_reference_set_is_drawn_once_and_reused_on_resume(tmp_path, monkeypatch):
    calls = []
    real_draw = references.draw
    monkeypatch.setattr(references, "draw", lambda *a, **k: calls.append(1) or real_draw(*a, **k))
    first = make_trainer(tmp_path, [pso], pso_loss="pso_db", max_steps=4, save_strategy="steps", save_steps=2)
    first.add_callback(StopAt(2))
    first.train()
    drawn = first.ftplugins_run.state["pso"]["references"].clone()
    assert len(calls) == 1 and (tmp_path / references.FILENAME).is_file()

    monkeypatch.setattr(references, "draw", lambda *a, **k: pytest.fail("the reference set was drawn again"))
    second = make_trainer(tmp_path, [pso], pso_loss="pso_db", max_steps=4, save_strategy="steps", save_steps=2)
    second.train(resume_from_checkpoint=True)
    assert torch.equal(second.ftplugins_run.state["pso"]["references"], drawn)
    assert second.state.global_step == 4

    other = make_trainer(tmp_path, [pso], pso_loss="pso_db", pso_num_references=3, max_steps=4,
                         save_strategy="steps", save_steps=2)
    with pytest.raises(FtpluginsError, match="cached PSO reference set .* was made with"):
        other.train(resume_from_checkpoint=True)


# --- bad input --------------------------------------------------------------------------------------------------


def test_bad_options_and_trainers_are_refused(tmp_path):
    with pytest.raises(OptionError, match="pso_sampling_steps"):
        ftplugins.compose(DiffusionTrainer, [pso], pso_sampling_steps=50)
    with pytest.raises(OptionError, match="pso_num_references"):
        ftplugins.compose(DiffusionTrainer, [pso], pso_num_references=0)
    with pytest.raises(FtpluginsError, match="pso needs pso_class_prompt"):
        trainer_cls = ftplugins.compose(DiffusionTrainer, [pso])
        trainer_cls(model=tiny.tiny_unet(), args=cpu_args(DiffusionConfig, tmp_path),
                    train_dataset=tiny.shapes_dataset(2), text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                    noise_scheduler=tiny.ddpm_scheduler(), processing_class=tiny.tiny_tokenizer())
    from trl import SFTConfig, SFTTrainer

    from ftplugins.testing import arithmetic_dataset, tiny_llama, tiny_tokenizer

    with pytest.raises(FtpluginsError, match="plugin pso applies to DiffusionTrainer, not to SFTTrainer"):
        ftplugins.compose(SFTTrainer, [pso], pso_class_prompt=PROMPT)(
            model=tiny_llama(), args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(4),
            processing_class=tiny_tokenizer())
    trainer = make_trainer(tmp_path, [pso], pso_reference="disable_adapter")
    with pytest.raises(FtpluginsError, match="pso_reference=disable_adapter needs a PEFT adapter"):
        trainer.train()


PARTNERS = {
    "ssf": {"ssf_target_modules": ATTENTION},
    "block_lora": {"block_lora_target_modules": ATTENTION},
    "bottleneck": {"bottleneck_target_modules": ATTENTION, "bottleneck_preset": "llm_adapters_parallel"},
    "sara": {},
}


@pytest.mark.parametrize("partner", sorted(PARTNERS))
def test_pso_composes_with_each_adapter_and_sara_in_either_order(tmp_path, partner):
    for order in ((pso, partner), (partner, pso)):
        options = {"pso_class_prompt": PROMPT, "pso_num_references": 2, **PARTNERS[partner]}
        trainer_cls = ftplugins.compose(DiffusionTrainer, list(order), **options)
        args = cpu_args(DiffusionConfig, tmp_path / partner, per_device_train_batch_size=2, max_steps=1)
        trainer = trainer_cls(model=tiny.tiny_unet(), args=args, train_dataset=tiny.shapes_dataset(2),
                              text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                              noise_scheduler=tiny.ddpm_scheduler(), processing_class=tiny.tiny_tokenizer())
        trainer.train()
        assert trainer.state.global_step == 1
        assert "margin" in trainer.ftplugins_run.state["pso"]["last"]


# --- online PSO -------------------------------------------------------------------------------------------------


def mean_brightness(images, prompts):
    """A reward for the tests: the mean pixel value of each image."""
    assert images.min() >= 0 and images.max() <= 1 and len(prompts) == len(images)
    return images.flatten(1).mean(dim=1)


def test_pareto_preference():
    from ftplugins.methods.pso.online import pareto_preference

    a = torch.tensor([[2.0, 3.0], [1.0, 2.0], [1.0, 1.0], [0.5, 4.0]])
    b = torch.tensor([[1.0, 3.0], [0.0, 3.0], [1.0, 1.0], [0.6, 4.0]])
    assert pareto_preference(a, b).tolist() == [1.0, 0.0, 0.0, -1.0]
    assert pareto_preference(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0])).tolist() == [-1.0, 0.0]


def test_online_loss_is_log_2_at_the_reference_favours_the_winner_and_clips():
    from ftplugins.methods.pso.online import online_pso_loss

    zero = torch.zeros(3, 4)
    preference = torch.tensor([1.0, -1.0, 0.0, 1.0])
    assert math.isclose(float(online_pso_loss(zero, zero, preference, 50.0, 0.1)), math.log(2), rel_tol=1e-6)
    a = torch.full((3, 4), 0.05, requires_grad=True)
    b = torch.full((3, 4), -0.05, requires_grad=True)
    loss = online_pso_loss(a, b, preference, 50.0, 0.1)
    loss.backward()
    assert (a.grad[:, 0] < 0).all() and (a.grad[:, 1] > 0).all()  # raise the winner's log-ratio, lower the loser's
    assert (a.grad[:, 2] == 0).all()  # a tie trains nothing
    far = torch.full((3, 4), 1.0, requires_grad=True)  # beyond log(1 + ε): clipped, no gradient
    online_pso_loss(far, zero, preference, 50.0, 0.1).backward()
    assert (far.grad == 0).all()


def test_online_pso_trains_every_step_but_the_last_and_starts_at_log_2(tmp_path):
    from datasets import Dataset

    prompts = Dataset.from_list([{"caption": c} for c in ("a red disc", "a blue bar", "a green square", "a disc")])
    trainer_cls = ftplugins.compose(DiffusionTrainer, [pso, "ssf"], pso_mode="online",
                                    pso_scorer="test_pso:mean_brightness", ssf_target_modules=ATTENTION)
    args = cpu_args(DiffusionConfig, tmp_path, per_device_train_batch_size=2, max_steps=2, image_column="",
                    learning_rate=1e-2)
    trainer = trainer_cls(model=tiny.tiny_unet(), args=args, train_dataset=prompts,
                          text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(),
                          noise_scheduler=tiny.ddpm_scheduler(), processing_class=tiny.tiny_tokenizer())
    run = trainer.ftplugins_run
    run.call("train_begin", trainer=trainer, resume_from_checkpoint=None)
    batch = trainer.data_collator([prompts[0], prompts[1]])
    assert "pixel_values" not in batch
    loss = trainer.compute_loss(trainer.model, batch)
    last = run.state["pso"]["last"]
    assert last["log_ratio"].shape == (3, 4)  # 4 sampling steps, 3 trained, 2 prompts x 2 trajectories
    assert torch.equal(last["log_ratio"], torch.zeros(3, 4))  # SSF at the identity: θ = θ_ref
    assert (last["preference"] != 0).all() and math.isclose(float(loss.detach()), math.log(2), rel_tol=1e-5)
    trainer.train()
    assert trainer.state.global_step == 2


def test_online_pso_needs_a_loadable_scorer(tmp_path):
    for scorer, message in (("", "pso_mode=online needs pso_scorer"), ("nowhere", "expected 'package.module:function'"),
                            ("no_such_module:f", "cannot be loaded")):
        trainer_cls = ftplugins.compose(DiffusionTrainer, [pso], pso_mode="online", pso_scorer=scorer)
        with pytest.raises(FtpluginsError, match=message):
            trainer_cls(model=tiny.tiny_unet(), args=cpu_args(DiffusionConfig, tmp_path),
                        train_dataset=tiny.shapes_dataset(2), text_encoder=tiny.tiny_text_encoder(),
                        vae=tiny.tiny_vae(), noise_scheduler=tiny.ddpm_scheduler(),
                        processing_class=tiny.tiny_tokenizer())


@pytest.mark.slow
def test_two_process_ddp_trains_the_same_adapter_on_both_ranks(tmp_path):
    import json
    import os
    import subprocess

    from test_distributed import accelerate_bin, ddp_flags

    child = os.path.join(os.path.dirname(__file__), "diffusion_ddp_child.py")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), child, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "ftplugins_run.json").read_text())["world_size"] == 2
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name  # gradients averaged: one model on both ranks
    # and it trained: SSF starts at scale 1, shift 0
    assert any(not (torch.equal(v, torch.ones_like(v)) or torch.equal(v, torch.zeros_like(v)))
               for v in ranks[0].values())
    assert (tmp_path / references.FILENAME).is_file() and (tmp_path / "adapter_config.json").is_file()
