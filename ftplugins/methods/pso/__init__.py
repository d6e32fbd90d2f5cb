"""PSO: Pairwise Sample Optimization for timestep-distilled diffusion models (Miao et al., ICLR 2025,
arXiv:2410.03190).

Fine-tuning a few-step model (SDXL-Turbo, LCM, DMD2) with the plain denoising loss erodes its few-step sampling.
PSO instead contrasts each target image x⁺ with a reference sample x⁻ drawn from the model itself: a reference
set is sampled once from the initial model with the class prompt (``pso_sampler``, ``pso_sampling_steps``
steps, guidance 0) and cached in the output folder; each micro-batch pairs every target with a random reference
under the **same noise ε and the same timestep t**, t drawn from the sampler's distilled timesteps only (999,
749, 499, 249 for 4 trailing steps), both conditioned on the target's (instance) caption. With per-sample errors
e(x) (ε-MSE):

* ``pso`` (the paper's Diffusion-DPO form): L = -log σ(β(Δ_ref - Δ_θ)), Δ = e(x⁺) - λ e(x⁻), λ =
  ``pso_neg_factor``; the reference model is the denoiser with its adapter disabled or a frozen copy
  (``pso_reference``). L = log 2 at θ = θ_ref; with λ = 1 it is Diffusion-DPO with winner = target,
  loser = own sample.
* ``pso_db`` (the released concept-customisation script): max(0, 1 + β(e(x⁺) - λ e(x⁻))) + w·e(x⁻), no
  reference model.

Runs on :class:`ftplugins.diffusion.DiffusionTrainer`; its loss goes through the ``compute_loss`` hook, so any
adapter plugin (ssf, block_lora, bottleneck) or full fine-tuning trains under it.

``pso_mode=online`` (:mod:`.online`): per prompt two trajectories from the current model, scored by a user reward
``pso_scorer``, the Pareto winner's per-step Gaussian transitions favoured against the reference (clipped ratio,
β = 50, the last deterministic step untrained). Not implemented: built-in aesthetic / CLIP-score scorers (no
such model offline), flow-matching denoisers (refused).
"""

from ftplugins.distributed_reasons import DIFFUSION_DEEPSPEED, DIFFUSION_FSDP
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import PsoOptions


class PsoPlugin(Plugin):
    name = "pso"
    summary = "PSO: pairwise sample optimization of timestep-distilled diffusion models (targets vs own samples)"
    paper = ("Miao et al., Tuning Timestep-Distilled Diffusion Model Using Pairwise Sample Optimization, "
             "ICLR 2025, arXiv:2410.03190")
    options = PsoOptions
    trainers = ("DiffusionTrainer",)
    requires = {"diffusers": "pip install 'ftplugins[diffusion]'"}
    claims = {"loss": "replaces the denoising loss by the pairwise PSO loss"}
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": DIFFUSION_FSDP, "deepspeed": DIFFUSION_DEEPSPEED}

    @hookimpl
    def validate(self, run):
        opts = run.options_for(self) or PsoOptions()
        if opts.pso_mode == "online":
            if not opts.pso_scorer:
                raise FtpluginsError("pso_mode=online needs pso_scorer, the reward: 'package.module:function' "
                                     "(function(images, prompts) -> one score per image).")
            from .online import load_scorer

            load_scorer(opts.pso_scorer)
            return
        if not opts.pso_class_prompt.strip():
            raise FtpluginsError("pso needs pso_class_prompt, the class prompt its reference set is sampled with "
                                 "(e.g. --pso_class_prompt 'a photo of a dog').")

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        from .training import begin

        begin(run.options_for(self) or PsoOptions(), run, trainer, resuming=bool(resume_from_checkpoint))

    @hookimpl
    def compute_loss(self, run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
        from .training import STATE, step_loss

        if STATE not in run.state and not model.training:
            return inner()  # evaluate() outside training: no reference set yet, the plain denoising loss
        return step_loss(run.options_for(self) or PsoOptions(), run, trainer, model, inputs, return_outputs)


plugin = PsoPlugin()
