"""The SAMDA model: a frozen generic encoder, a trainable expert, an adaptation module fused at the expert's bottleneck.

SAMDA (*Leveraging SAM on Few-Shot Domain Adaptation for Electronic Microscopy Segmentation*, 2024) combines SAM
with nnUNet "in the embedding space"; the adaptation module's exact form is not public. Our choice: the generic
feature map g (the encoder's last_hidden_state, frozen, no gradient) is resized to the bottleneck's spatial size and
projected by A = 1x1 conv → GELU → 1x1 conv into the expert's bottleneck channels, then added: z' = z + A(g). The
last conv starts at zero (as ControlNet's zero convs), so the fused model starts as the expert alone and learns how
much generic evidence to let in. ``fusion="none"`` builds no adapter and no hook: the model *is* the expert.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput

from ftplugins.errors import UnsupportedModelError

from .loss import dice_ce_loss


def load_generic_encoder(name_or_path: str) -> nn.Module:
    """AutoModel's model for ``name_or_path``; of a full SamModel, its vision encoder (the prompt parts are unused)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(name_or_path)
    return getattr(model, "vision_encoder", model)


def generic_features(encoder: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The encoder's feature map (B, C, h, w) for images (B, C, H, W): resized to its image_size, channels repeated
    for a grey image given to an RGB encoder; a token sequence (B, N, D) becomes the square grid of its last
    ⌊√N⌋² tokens (leading CLS / register tokens dropped)."""
    config = getattr(encoder, "config", None)
    size, channels = getattr(config, "image_size", None), getattr(config, "num_channels", None)
    x = pixel_values
    if channels and x.shape[1] != channels:
        if x.shape[1] != 1:
            raise UnsupportedModelError(f"samda: images have {x.shape[1]} channels, the generic encoder "
                                        f"{type(encoder).__name__} takes {channels}; give {channels}-channel or grey "
                                        "images.")
        x = x.expand(-1, channels, -1, -1)
    if size and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    param = next(encoder.parameters())
    hidden = encoder(pixel_values=x.to(param.device, param.dtype)).last_hidden_state
    if hidden.dim() == 4:
        return hidden
    if hidden.dim() == 3:
        side = math.isqrt(hidden.shape[1])
        grid = hidden[:, hidden.shape[1] - side * side:]
        return grid.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[2], side, side)
    raise UnsupportedModelError(f"samda: {type(encoder).__name__}'s last_hidden_state has shape "
                                f"{tuple(hidden.shape)}; expected a feature map (B, C, h, w) or tokens (B, N, D).")


class FusionAdapter(nn.Module):
    """Projects the generic feature map into the expert's bottleneck channels; zero at init (see the module doc)."""

    def __init__(self, generic_channels: int, bottleneck_channels: int):
        super().__init__()
        self.project = nn.Conv2d(generic_channels, bottleneck_channels, 1)
        self.act = nn.GELU()
        self.out = nn.Conv2d(bottleneck_channels, bottleneck_channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, generic: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        generic = F.interpolate(generic, size=size, mode="bilinear", align_corners=False)
        return self.out(self.act(self.project(generic)))


def expert_logits(expert: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, H, W) of the expert: diffusers' UNet2DModel is called at timestep 0 (its time embedding is then
    a constant, learnt like a bias); other experts with ``expert(pixel_values)``."""
    if "timestep" in inspect.signature(expert.forward).parameters:
        out = expert(pixel_values, 0)
    else:
        out = expert(pixel_values)
    for name in ("sample", "logits"):
        if hasattr(out, name):
            return getattr(out, name)
    return out


def num_classes_of(expert: nn.Module) -> int:
    config = getattr(expert, "config", None)
    count = getattr(config, "out_channels", None) or getattr(config, "num_labels", None)
    if not count:
        raise UnsupportedModelError(f"samda: the expert {type(expert).__name__} has no config.out_channels (or "
                                    "num_labels): expected a segmentation network such as diffusers' UNet2DModel "
                                    "with out_channels = the number of classes.")
    return int(count)


class SamdaModel(nn.Module):
    """Generic (frozen) + expert (trained) + adaptation module; forward returns Dice + CE when ``labels`` are given."""

    def __init__(self, expert: nn.Module, encoder: nn.Module, bottleneck: str = "mid_block", fusion: str = "add",
                 dice_weight: float = 1.0, ce_weight: float = 1.0):
        super().__init__()
        self.expert, self.fusion = expert, fusion
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.num_classes = num_classes_of(expert)
        self.encoder = encoder.requires_grad_(False).eval()
        self.adapter = None
        self._generic: torch.Tensor | None = None
        if fusion == "none":
            return
        try:
            target = expert.get_submodule(bottleneck)
        except AttributeError:
            raise UnsupportedModelError(f"samda_bottleneck {bottleneck!r}: {type(expert).__name__} has no such module; "
                                        "name the module whose output is the expert's bottleneck (UNet2DModel: "
                                        "mid_block).") from None
        bottleneck_channels, generic_channels = self._probe_channels(expert, target, encoder)
        self.adapter = FusionAdapter(generic_channels, bottleneck_channels)
        target.register_forward_hook(self._fuse)

    @staticmethod
    def _probe_channels(expert: nn.Module, target: nn.Module, encoder: nn.Module) -> tuple[int, int]:
        """Channels of the bottleneck and of the generic features, from one forward of a blank image."""
        config = expert.config
        size, channels = getattr(config, "sample_size", None), getattr(config, "in_channels", None)
        if not (size and channels):
            raise UnsupportedModelError(f"samda: the expert {type(expert).__name__} has no config.sample_size / "
                                        "in_channels to probe its bottleneck with; use diffusers' UNet2DModel.")
        size = size if isinstance(size, int) else size[0]
        seen = {}
        handle = target.register_forward_hook(lambda module, inputs, output: seen.setdefault("out", output))
        try:
            with torch.no_grad():
                blank = torch.zeros(1, channels, size, size, device=next(expert.parameters()).device)
                expert_logits(expert, blank)
                generic = generic_features(encoder, blank)
        finally:
            handle.remove()
        out = seen.get("out")
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise UnsupportedModelError(f"samda: the bottleneck module of {type(expert).__name__} returns "
                                        f"{type(out).__name__}; expected a feature map tensor (B, C, h, w).")
        return out.shape[1], generic.shape[1]

    def _fuse(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self._generic is None:  # the expert called on its own (e.g. a probe): unchanged
            return output
        return output + self.adapter(self._generic.to(output.dtype), tuple(output.shape[-2:])).to(output.dtype)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, no statistics updates, whatever the Trainer asks
        return self

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):
        """No ``**kwargs`` on purpose: the Trainer then scales the loss for gradient accumulation itself (with them it
        would pass ``num_items_in_batch`` and expect a summed loss)."""
        if self.adapter is not None:
            with torch.no_grad():
                self._generic = generic_features(self.encoder, pixel_values).detach()
        try:
            logits = expert_logits(self.expert, pixel_values)
        finally:
            self._generic = None
        loss = None if labels is None else dice_ce_loss(logits, labels, self.dice_weight, self.ce_weight)
        return SemanticSegmenterOutput(loss=loss, logits=logits)


def adapter_param_groups(model: nn.Module, args, scale: float) -> torch.optim.Optimizer:
    """The trainer's own optimizer class and settings (``args.optim``, weight decay on the usual parameters), with the
    adaptation module's parameters at ``args.learning_rate * scale`` and every other trainable one at the base rate."""
    from ftplugins.optimizer_groups import grouped_optimizer

    return grouped_optimizer(model, args, lambda name, _: {
        "lr": args.learning_rate * (scale if name.startswith("adapter.") else 1.0)})
