"""Options of PSO (offline). Defaults from the released concept-customisation script (``scripts/pso_dog.sh``:
β = 5, 20 references, 4 sampling steps, λ = 0.1) where it sets them."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

MODES = ("offline", "online")
LOSSES = ("pso", "pso_db")
REFERENCES = ("auto", "disable_adapter", "frozen_copy")
SAMPLERS = ("euler", "lcm", "ddim")


@dataclass
class PsoOptions:
    pso_mode: str = field(default="offline", metadata={
        "help": "'offline': target images against a reference set sampled once from the initial model; 'online': "
                "two trajectories per prompt from the current model, the reward's Pareto winner preferred."})
    pso_loss: str = field(default="pso", metadata={
        "help": "'pso': the Diffusion-DPO form against a reference model, -log σ(β(Δ_ref - Δ_θ)) with "
                "Δ = e(x⁺) - λ·e(x⁻); 'pso_db': the released script's hinge form without a reference model, "
                "max(0, 1 + β(e(x⁺) - λ·e(x⁻))) + pso_db_reference_weight·e(x⁻)."})
    pso_beta: float = field(default=None, metadata={
        "help": "β, the scale of the margin (> 0); default 5 offline (the released script), 50 online (the paper)."})
    pso_neg_factor: float = field(default=0.1, metadata={
        "help": "λ, the weight of the reference (dispreferred) sample's error in Δ; 1 makes 'pso' Diffusion-DPO."})
    pso_db_reference_weight: float = field(default=0.5, metadata={
        "help": "pso_db only: weight of the plain denoising error on the reference samples (keeps the model's own "
                "few-step distribution)."})
    pso_class_prompt: str = field(default="", metadata={
        "help": "Offline: the class prompt the reference set is sampled with (\"a photo of a dog\"); required."})
    pso_scorer: str = field(default="", metadata={
        "help": "Online: the reward, 'package.module:function' called as function(images [N,3,H,W] in [0,1], "
                "prompts) -> N scores (or [N, K]: Pareto over K rewards); required."})
    pso_clip: float = field(default=0.1, metadata={
        "help": "Online: ε, the per-step probability ratio to the reference is clipped to [1-ε, 1+ε]."})
    pso_num_references: int = field(default=20, metadata={
        "help": "Size of the reference set, sampled once from the initial model and cached in the output folder."})
    pso_sampling_steps: int = field(default=4, metadata={
        "help": "Steps of the distilled sampler (1-16); its timesteps are the only ones trained."})
    pso_sampler: str = field(default="euler", metadata={
        "help": "Few-step sampler built from the training scheduler's config with trailing timesteps: euler "
                "(SDXL-Turbo), lcm or ddim."})
    pso_reference: str = field(default="auto", metadata={
        "help": "'pso' loss only: the reference model. 'disable_adapter' (the denoiser with its PEFT adapter "
                "switched off), 'frozen_copy' (a copy of the initial denoiser), 'auto' (the first when an adapter "
                "trains, else the second)."})
    pso_seed: int = field(default=None, metadata={
        "help": "Seed of the reference set, pairing and noise draws; default: the trainer's seed."})

    def __post_init__(self):
        check_choice("pso_mode", self.pso_mode, MODES)
        check_choice("pso_loss", self.pso_loss, LOSSES)
        if self.pso_beta is None:
            self.pso_beta = 50.0 if self.pso_mode == "online" else 5.0
        check_range("pso_clip", self.pso_clip, 1e-6, 0.999)
        check_choice("pso_reference", self.pso_reference, REFERENCES)
        check_choice("pso_sampler", self.pso_sampler, SAMPLERS)
        check_range("pso_beta", self.pso_beta, 1e-6, float("inf"))
        check_range("pso_neg_factor", self.pso_neg_factor, 0.0, 1.0)
        check_range("pso_db_reference_weight", self.pso_db_reference_weight, 0.0, float("inf"))
        check_range("pso_num_references", self.pso_num_references, 1, 100_000)
        check_range("pso_sampling_steps", self.pso_sampling_steps, 1, 16)
