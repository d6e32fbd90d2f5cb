"""PETL-AST placements: adapters around the MHSA / FFN sublayers of transformer blocks, and the conformer block.

A sublayer S maps its input u (pre-LN blocks: the LayerNorm output) to y = S(u), which the block then
adds to its residual stream. With an adapter A the sublayer returns instead

* parallel, before (PETL-AST's default): y' = S(u) + A(u)
* parallel, after:                       y' = S(u) + A(S(u))   (PETL-AST's ablation; equals sequential-after
                                                                 with its residual)
* sequential, after:                     y' = S(u) + A(S(u)), or A(S(u)) without the residual
* sequential, before:                    y' = S(u + A(u)),    or S(A(u)) without the residual

How it is wired (module wrapping, no forward patching): the layout table names, per block class, the
sublayer's *entry* (the module that receives u as its first argument) and *exit* (the module whose
output, or the first element of its output tuple, is y before the residual add). In ViT / AST blocks
both are one module (``attention``, ``mlp``). In post-LN BERT blocks a sublayer spans two modules
(FFN: ``intermediate`` ... ``output.dense``; MHSA: ``attention.self`` ... ``attention.output.dense``),
and an adapter that needs u at the exit (parallel-before) gets it from the entry through an
``InputTap``: the entry's wrapper stores u, the exit's wrapper takes it. Only the wrappers that a
placement needs are created (sequential-before wraps the entry only, the "after" placements the exit).

Differences from the reference (umbertocappellazzo/PETL_AST, src/AST_adapters.py), on purpose:

* The bottleneck block zero-inits only its up-projection and up-bias (identity at init that still
  trains both projections); the reference zeroes all four tensors, so only the up-bias ever gets a
  gradient. ``--bottleneck_init petl_zero`` (``init_weights="petl_zero"``) reproduces it.
* The sequential adapter keeps its skip connection by default (the model starts at the base model);
  ``block_residual=False`` is the reference's ``apply_residual=False``. The reference's parallel
  ``apply_residual`` (adding the LayerNorm output u once more) is not offered: it is no identity and
  not a variant the paper reports.
* Sequential-before feeds S with u + A(u) and keeps the block's own skip; the reference's ablation
  also adds A(u) to the sublayer output.
* The conformer block has no LayerNorm: the reference builds one and discards its output.
* The adapter output is added at the sublayer's exit module, i.e. before the block's hidden dropout.
* Post-LN BERT blocks train the LayerNorm closing each adapted sublayer (as Houlsby et al. 2019 do);
  pre-LN blocks the one feeding it (as PETL-AST).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from ftplugins.errors import FtpluginsError

from .layer import BottleneckAdapter, BottleneckLayer, bottleneck_width
from .options import init_name
from .presets import FFN, MHSA

ENTRY, EXIT = "entry", "exit"


@dataclass(frozen=True)
class Sublayer:
    """Paths, relative to the block, of a sublayer's entry and exit modules and of its trained LayerNorm."""

    entry: str
    exit: str
    norm: str


@dataclass(frozen=True)
class BlockLayout:
    sublayers: dict[str, Sublayer]
    #: name of the final LayerNorm, a child of an ancestor of the blocks; None for post-LN models.
    final_norm: Optional[str]


_PRE_LN = BlockLayout(
    {MHSA: Sublayer("attention", "attention", "layernorm_before"), FFN: Sublayer("mlp", "mlp", "layernorm_after")},
    final_norm="layernorm",
)
_POST_LN = BlockLayout(
    {
        MHSA: Sublayer("attention.self", "attention.output.dense", "attention.output.LayerNorm"),
        FFN: Sublayer("intermediate", "output.dense", "output.LayerNorm"),
    },
    final_norm=None,
)

#: Pre-norm decoders (RMSNorm): the same placements as the pre-LN ViT, e.g. AdapterHub's SeqBn / DoubleSeqBn /
#: ParBn on a Llama (the attention is called with ``hidden_states=`` as a keyword, which the wrapper takes).
_DECODER = BlockLayout(
    {MHSA: Sublayer("self_attn", "self_attn", "input_layernorm"),
     FFN: Sublayer("mlp", "mlp", "post_attention_layernorm")},
    final_norm="norm",
)

#: Block classes (by name, as transformers 5 defines them) and where their sublayers are.
LAYOUTS: dict[str, BlockLayout] = {
    "ViTLayer": _PRE_LN,
    "DeiTLayer": _PRE_LN,
    "ASTLayer": _PRE_LN,
    "BertLayer": _POST_LN,
    "RobertaLayer": _POST_LN,
    "LlamaDecoderLayer": _DECODER,
    "MistralDecoderLayer": _DECODER,
    "Qwen2DecoderLayer": _DECODER,
}


def find_blocks(named_modules: list[tuple[str, nn.Module]]) -> list[tuple[str, BlockLayout]]:
    """(name, layout) of every module whose class the layout table knows."""
    return [(name, LAYOUTS[type(m).__name__]) for name, m in named_modules if type(m).__name__ in LAYOUTS]


def parts_needed(mode: str, position: str, layout_sublayer: Sublayer) -> dict[str, str]:
    """Which wrapped module does what for one placement: {relative path: "entry" | "exit" | "entry+exit"}."""
    if mode == "sequential" and position == "before":
        wanted = [ENTRY]
    elif mode == "parallel" and position == "before":
        wanted = [ENTRY, EXIT]  # the adapter (at the exit) reads the sublayer's input
    else:
        wanted = [EXIT]
    parts: dict[str, list[str]] = {}
    for part in wanted:
        parts.setdefault(layout_sublayer.entry if part == ENTRY else layout_sublayer.exit, []).append(part)
    return {path: "+".join(names) for path, names in parts.items()}


class InputTap:
    """Carries a sublayer's input u from its entry module's wrapper to its exit module's wrapper.

    A plain object, not a module, so it adds nothing to the state dict; copied along with the model.
    Keyed by device: ``nn.DataParallel`` replicas share it and run their forwards in parallel threads.
    """

    def __init__(self) -> None:
        self.values: dict[torch.device, torch.Tensor] = {}

    def put(self, value: torch.Tensor) -> None:
        self.values[value.device] = value

    def take(self, device: torch.device, where: str) -> torch.Tensor:
        value = self.values.pop(device, None)  # never keep an activation alive past its use
        if value is None:
            raise FtpluginsError(
                f"bottleneck: {where} expected the sublayer input from its entry module, which did not run first in "
                "this forward pass; this block's forward does not match the layout the adapter was built for."
            )
        return value


class ConformerAdapter(nn.Module):
    """Conformer convolution module as an adapter (Gulati et al. 2020, as PETL-AST uses it):
    pointwise conv (d→2b) → GLU → depthwise conv (k, same padding) → BatchNorm → SiLU → pointwise conv
    (b→d).

    Works on [batch, sequence, features] and convolves over the sequence. Computed in the parameters'
    dtype (fp32) and added to ``residual`` in fp32, then cast back, like the bottleneck kernel.
    Padding tokens are not masked: the block is meant for fixed-length inputs (audio / image patches).
    """

    def __init__(
        self, features: int, width: int, kernel_size: int, scaling: float, learn_scaling: bool, dropout: float,
        init: str,
    ) -> None:
        super().__init__()
        self.pointwise_in = nn.Conv1d(features, 2 * width, kernel_size=1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(width, width, kernel_size, groups=width, padding=kernel_size // 2)
        self.norm = nn.BatchNorm1d(width)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(width, features, kernel_size=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if learn_scaling:
            self.scale = nn.Parameter(torch.full((1,), float(scaling)))
        else:
            self.scale = float(scaling)
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str) -> None:
        convs = (self.pointwise_in, self.depthwise, self.pointwise_out)
        if init == "bert":
            for conv in convs:
                nn.init.normal_(conv.weight, std=0.02)
                nn.init.zeros_(conv.bias)
        elif init == "identity":
            # PyTorch's default init everywhere except the last projection, which starts at zero.
            nn.init.zeros_(self.pointwise_out.weight)
            nn.init.zeros_(self.pointwise_out.bias)
        elif init != "petl_zero":  # petl_zero: the reference leaves its conformer at PyTorch's default init
            raise ValueError(f"init {init!r}: expected identity, bert or petl_zero")

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3:
            raise FtpluginsError(
                "bottleneck: a conformer adapter needs [batch, sequence, features] inputs, got shape "
                f"{tuple(x.shape)}; use --bottleneck_block_type bottleneck for this model."
            )
        h = self.dropout(x).to(self.pointwise_in.weight.dtype).transpose(1, 2)
        h = self.pointwise_out(self.act(self.norm(self.depthwise(self.glu(self.pointwise_in(h))))))
        scale = self.scale.float() if isinstance(self.scale, torch.Tensor) else self.scale
        out = h.transpose(1, 2).float() * scale
        if residual is not None:
            out = out + residual.float()
        return out.to(x.dtype)


def make_block_adapter(config: Any, features: int) -> nn.Module:
    width = bottleneck_width(features, config.bottleneck_size, config.reduction_factor)
    if config.block_type == "conformer":
        return ConformerAdapter(
            features, width, config.conformer_kernel_size, config.scaling, config.learn_scaling, config.dropout,
            init_name(config.init_weights),
        )
    return BottleneckAdapter(
        features,
        width,
        features,
        activation="gelu" if config.activation == "auto" else config.activation,
        bias=True,
        scaling=config.scaling,
        learn_scaling=config.learn_scaling,
        dropout=config.dropout,
        init=init_name(config.init_weights),
    )


def resolved_position(config: Any) -> str:
    if config.block_position != "auto":
        return config.block_position
    return "before" if config.block_mode == "parallel" else "after"


def _split_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Callable[[torch.Tensor], tuple[tuple, dict]]]:
    if args:
        return args[0], lambda x: ((x, *args[1:]), kwargs)
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"], lambda x: (args, {**kwargs, "hidden_states": x})
    raise FtpluginsError("bottleneck: a block adapter's sublayer was called without its hidden states")


def _split_output(out: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    if isinstance(out, tuple):
        return out[0], lambda y: (y, *out[1:])
    return out, lambda y: y


class BottleneckSublayer(BottleneckLayer):
    """Wraps a sublayer's entry and/or exit module; applies each adapter's part of its placement.
    Never merged: a sublayer has no single weight to take the adapter (``merge_blocker`` says so)."""

    other_param_names = ("roles", "taps")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: Any, role: dict, tap: InputTap) -> None:
        super().__init__()
        self._init_tuner_state(base_layer, adapter_name)
        self.roles: dict[str, dict] = {}
        self.taps: dict[str, InputTap] = {}
        self.update_layer(adapter_name, config, role, tap)

    def update_layer(self, adapter_name: str, config: Any, role: dict, tap: InputTap) -> None:
        mode, position = config.block_mode, resolved_position(config)
        parts = role["part"].split("+")
        self.roles[adapter_name] = {
            "sublayer": role["sublayer"], "parts": parts, "mode": mode, "position": position,
            "residual": config.block_residual,
        }
        self.taps[adapter_name] = tap
        # The adapter lives where it is applied: at the entry for sequential-before, at the exit otherwise.
        holds = ENTRY in parts if (mode, position) == ("sequential", "before") else EXIT in parts
        if holds:
            self._place_adapter(adapter_name, make_block_adapter(config, role["features"]), config.inference_mode)
        else:  # only taps the sublayer input for the exit module's adapter
            self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        active = [name for name in self.active_adapters if name in self.roles] if not self.disable_adapters else []
        if not active:
            return self.base_layer(*args, **kwargs)
        u, with_input = _split_input(args, kwargs)
        x = u
        for name in active:
            role = self.roles[name]
            if ENTRY not in role["parts"] or role["position"] != "before":
                continue
            if role["mode"] == "sequential":
                x = self.bottleneck_adapter[name](x, residual=x if role["residual"] else None)
            elif EXIT not in role["parts"]:
                self.taps[name].put(u)
        args, kwargs = with_input(x)
        out = self.base_layer(*args, **kwargs)
        exits = [name for name in active if EXIT in self.roles[name]["parts"]]
        if not exits:
            return out
        y, with_output = _split_output(out)
        for name in exits:
            role, adapter = self.roles[name], self.bottleneck_adapter[name]
            if role["mode"] == "parallel" and role["position"] == "before":
                if ENTRY in role["parts"]:
                    source = u
                else:
                    source = self.taps[name].take(y.device, f"the {role['sublayer']} adapter")
                y = adapter(source, residual=y).to(y.dtype)
            elif role["mode"] == "parallel" or role["residual"]:
                y = adapter(y, residual=y)
            else:
                y = adapter(y)
        return with_output(y)

    def merge_blocker(self, adapter_name: str) -> Optional[str]:
        role = self.roles[adapter_name]
        return f"{role['mode']} block adapter around the {role['sublayer']} sublayer (no single weight to merge into)"

    def __repr__(self) -> str:
        return "bottleneck." + super().__repr__()
