"""Options of the ``bottleneck`` plugin (pure dataclasses: importing this module imports no torch)."""

# No ``from __future__ import annotations``: HfArgumentParser needs real types, not strings.
from dataclasses import dataclass, field, fields

from ftplugins.options import check_choice, check_range

from .presets import BLOCK_PRESETS, LINEAR_PRESETS, PRESETS

ACTIVATIONS = ("auto", "tanh", "relu", "gelu", "silu", "identity")
INITS = ("identity", "bert", "petl_zero")
#: ``--bottleneck_init`` -> the config's ``init_weights`` (PEFT's convention: True the identity, False random).
INIT_WEIGHTS = {"identity": True, "bert": False, "petl_zero": "petl_zero"}


def init_name(init_weights) -> str:
    """The ``--bottleneck_init`` value an ``init_weights`` stands for (what the adapter modules take)."""
    for name, value in INIT_WEIGHTS.items():
        if value is init_weights or (isinstance(value, str) and value == init_weights):
            return name
    raise ValueError(f"init_weights {init_weights!r}: expected True, False or 'petl_zero'")
SERIES_SIDES = ("auto", "input", "output")
BLOCK_MODES = ("parallel", "sequential")
BLOCK_POSITIONS = ("auto", "before", "after")
BLOCK_TYPES = ("bottleneck", "conformer")
INF = float("inf")


@dataclass
class BottleneckOptions:
    bottleneck_preset: str = field(
        default="llm_adapters_series",
        metadata={
            "help": "Where the adapters go. Around named Linear modules (LLM-Adapters): "
            + "; ".join(f"{name}: {PRESETS[name].help}" for name in LINEAR_PRESETS)
            + ". Around transformer-block sublayers (PETL-AST; ViT, AST, BERT, Llama/Mistral/Qwen2 blocks): "
            + "; ".join(f"{name}: {PRESETS[name].help}" for name in BLOCK_PRESETS)
            + "."
        },
    )
    bottleneck_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Linear presets: module names or name suffixes to adapt instead of the preset's (e.g. q_proj "
            "v_proj, or to_q to_k to_v to_out.0 on a diffusers UNet). The preset still decides series vs parallel."
        },
    )
    bottleneck_exclude_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names (or name suffixes) to leave untouched; a block sublayer is left out whole when any "
            "module its adapter wraps is named."
        },
    )
    bottleneck_series_side: str = field(
        default="auto",
        metadata={
            "help": "Series presets: input (y = W(x + f(x)) + c) or output (y = h + f(h), h = Wx + c). auto: the "
            "preset's / LLM-Adapters' side per module (up/gate: input, down: output); required for other modules."
        },
    )
    bottleneck_size: int = field(
        default=256, metadata={"help": "Bottleneck width b (LLM-Adapters: 256 for 7B models)."}
    )
    bottleneck_reduction_factor: float = field(
        default=0.0,
        metadata={
            "help": "When > 0, b = max(1, round(d / R)) per adapter (d: its input width) instead of "
            "bottleneck_size; PETL-AST uses R=96, AdapterHub R=16."
        },
    )
    bottleneck_activation: str = field(
        default="auto",
        metadata={
            "help": "Non-linearity φ: tanh, relu, gelu, silu or identity. auto: tanh around Linear modules "
            "(LLM-Adapters), gelu in block adapters (PETL-AST). identity + parallel can be merged into the base."
        },
    )
    bottleneck_scaling: float = field(
        default=1.0, metadata={"help": "Scale s of the adapter output (fixed, or the initial value if learned)."}
    )
    bottleneck_learn_scaling: bool = field(
        default=False,
        metadata={"help": "Learn s as one scalar per adapter, initialised to bottleneck_scaling (LLM-Adapters "
                  "scaling='learned')."},
    )
    bottleneck_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the adapter's input (LLM-Adapters: 0)."}
    )
    bottleneck_bias: bool = field(
        default=False,
        metadata={"help": "Linear presets: biases on the down and up projections (LLM-Adapters has none). "
                  "Block adapters always have biases."},
    )
    bottleneck_init: str = field(
        default="identity",
        metadata={
            "help": "identity: up-projection and its bias zero, so the adapted model starts exactly at the base "
            "model. For reproducing the papers only (the model no longer starts at the base model, or hardly "
            "trains): bert: down and up ~ N(0, 0.02) (LLM-Adapters' default); petl_zero: PETL-AST's init "
            "(bottleneck blocks all zero, so only the up-bias gets a gradient; conformer blocks PyTorch's "
            "default init). In the PEFT config: init_weights True / False / 'petl_zero'."
        },
    )
    bottleneck_block_mode: str = field(
        default="parallel",
        metadata={"help": "Block presets: parallel (sublayer(u) + A(·)) or sequential (A applied in line with "
                  "the sublayer). PETL-AST's default: parallel."},
    )
    bottleneck_block_position: str = field(
        default="auto",
        metadata={
            "help": "Block presets: before (the adapter reads the sublayer's input, i.e. the LayerNorm output) or "
            "after (it reads the sublayer's output). auto: before for parallel, after for sequential."
        },
    )
    bottleneck_block_type: str = field(
        default="bottleneck",
        metadata={
            "help": "Block presets: bottleneck (Linear-GELU-Linear with biases) or conformer (pointwise conv, GLU, "
            "depthwise conv, BatchNorm, SiLU, pointwise conv; PETL-AST's best on audio)."
        },
    )
    bottleneck_block_residual: bool = field(
        default=True,
        metadata={
            "help": "Sequential block adapters: keep the adapter's skip connection (after: y + A(y); before: "
            "sublayer(u + A(u))), so the model starts at the base model. False reproduces PETL-AST's "
            "apply_residual=False: the sublayer then reaches the residual stream only through the adapter, and "
            "with the identity init its contribution is zero at the start."
        },
    )
    bottleneck_conformer_kernel_size: int = field(
        default=31, metadata={"help": "Conformer blocks: odd depthwise kernel size (PETL-AST: 31)."}
    )
    bottleneck_train_norms: bool = field(
        default=True,
        metadata={
            "help": "Block presets: also train the LayerNorm of every adapted sublayer (pre-LN ViT/AST: the one "
            "feeding it; post-LN BERT: the one closing it, as Houlsby et al.) and the final LayerNorm, as PETL-AST."
        },
    )
    bottleneck_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter. Default: the classification head, plus the "
            "LayerNorms of bottleneck_train_norms for block presets. Pass an empty list for none."
        },
    )

    def __post_init__(self):
        check_options(self)


def check_options(o: BottleneckOptions) -> None:
    """Every check of the options, single values and combinations; raises ValueError naming the option."""
    check_choice("bottleneck_preset", o.bottleneck_preset, tuple(PRESETS))
    check_choice("bottleneck_series_side", o.bottleneck_series_side, SERIES_SIDES)
    check_choice("bottleneck_activation", o.bottleneck_activation, ACTIVATIONS)
    check_choice("bottleneck_init", o.bottleneck_init, INITS)
    check_choice("bottleneck_block_mode", o.bottleneck_block_mode, BLOCK_MODES)
    check_choice("bottleneck_block_position", o.bottleneck_block_position, BLOCK_POSITIONS)
    check_choice("bottleneck_block_type", o.bottleneck_block_type, BLOCK_TYPES)
    check_range("bottleneck_size", o.bottleneck_size, 1, INF)
    check_range("bottleneck_reduction_factor", o.bottleneck_reduction_factor, 0, INF)
    check_range("bottleneck_scaling", o.bottleneck_scaling, -INF, INF)  # rejects NaN
    if not 0 <= o.bottleneck_dropout < 1:
        raise ValueError(f"--bottleneck_dropout {o.bottleneck_dropout!r}: expected a value in [0, 1)")
    if o.bottleneck_conformer_kernel_size < 1 or o.bottleneck_conformer_kernel_size % 2 == 0:
        raise ValueError(
            f"--bottleneck_conformer_kernel_size {o.bottleneck_conformer_kernel_size!r}: expected an odd number >= 1 "
            "(the depthwise convolution pads to keep the sequence length)"
        )

    preset = PRESETS[o.bottleneck_preset]
    # A non-default value that the chosen preset would ignore is an error, never a silent no-op.
    if preset.kind == "linear":
        ignored = [
            f"--{f.name} {getattr(o, f.name)!r}"
            for f in fields(o)
            if f.name.startswith(("bottleneck_block_", "bottleneck_conformer_", "bottleneck_train_norms"))
            and getattr(o, f.name) != f.default
        ]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} only apply to the block presets ({', '.join(BLOCK_PRESETS)}), not to "
                f"--bottleneck_preset {o.bottleneck_preset}; drop them or choose a block preset."
            )
        if not preset.series and o.bottleneck_series_side != "auto":
            raise ValueError(
                f"--bottleneck_series_side {o.bottleneck_series_side} applies to series presets; "
                f"{o.bottleneck_preset} places parallel adapters. Drop it or choose a series preset."
            )
    else:
        ignored = [
            flag
            for flag, set_ in (
                ("--bottleneck_target_modules", o.bottleneck_target_modules is not None),
                ("--bottleneck_series_side", o.bottleneck_series_side != "auto"),
                ("--bottleneck_bias", o.bottleneck_bias),
            )
            if set_
        ]
        if ignored:
            raise ValueError(
                f"{', '.join(ignored)} only apply to the Linear presets ({', '.join(LINEAR_PRESETS)}); block preset "
                f"{o.bottleneck_preset} adapts the sublayers of every recognised transformer block (and its "
                "adapters always have biases). Drop them or choose a Linear preset."
            )
        if o.bottleneck_block_type == "conformer" and o.bottleneck_activation != "auto":
            raise ValueError(
                f"--bottleneck_activation {o.bottleneck_activation} does not apply to conformer blocks (their "
                "non-linearities are GLU and SiLU); leave it at auto."
            )
        if o.bottleneck_block_mode == "parallel" and not o.bottleneck_block_residual:
            raise ValueError(
                "--bottleneck_block_residual false applies to sequential block adapters; a parallel adapter has no "
                "skip connection of its own. Use --bottleneck_block_mode sequential or drop it."
            )
