"""Named recipes of the two papers: where the adapters go (pure Python, no torch).

Two families of placement share one adapter (``f(z) = s·U·φ(D·drop(z))``):

* **Linear placements** (LLM-Adapters, Hu et al. 2023): the adapter sits around a named ``nn.Linear``
  (bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` included). ``series_input``: ``y = W(x + f(x)) + c``
  (the reference's ``mh_adapter``); ``series_output``: ``y = h + f(h)`` with ``h = Wx + c``
  (``output_adapter``); ``parallel``: ``y = Wx + c + f(x)``.
* **Block placements** (PETL for AST, Cappellazzo et al. 2024): the adapter sits around a whole
  sublayer (MHSA or FFN) of a transformer block. Pfeiffer adapts the FFN only, Houlsby both.

The tables below were read in AGI-Edgerunners/LLM-Adapters@8166572 (``peft/src/peft/mapping.py`` and
``peft/src/peft/tuners/bottleneck.py``); the LLaMA recipes are the placements the paper recommends
for LLaMA-7B (series adapters on up/gate, parallel adapters on up/down). We add the Llama-architecture
families that name their MLP the same way (Mistral, Qwen2, Qwen3), which the reference does not list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SERIES_INPUT = "series_input"
SERIES_OUTPUT = "series_output"
PARALLEL = "parallel"
LINEAR_PLACEMENTS = (SERIES_INPUT, SERIES_OUTPUT, PARALLEL)

MHSA, FFN = "mhsa", "ffn"

# The side of each MLP Linear a series adapter goes on, per model_type (LLM-Adapters'
# TRANSFORMERS_MODELS_TO_ADAPTER_TYPE_MAPPING: mh_adapter = input side, output_adapter = output side).
_LLAMA_SIDES = {"gate_proj": SERIES_INPUT, "up_proj": SERIES_INPUT, "down_proj": SERIES_OUTPUT}
_BLOOM_SIDES = {"dense_h_to_4h": SERIES_INPUT, "dense_4h_to_h": SERIES_OUTPUT}
SERIES_SIDES: dict[str, dict[str, str]] = {
    "llama": _LLAMA_SIDES,
    "mistral": _LLAMA_SIDES,
    "qwen2": _LLAMA_SIDES,
    "qwen3": _LLAMA_SIDES,
    "bloom": _BLOOM_SIDES,
    "chatglm": _BLOOM_SIDES,
    "gptj": {"fc_in": SERIES_INPUT, "fc_out": SERIES_OUTPUT},
    "gpt_neo": {"c_fc": SERIES_INPUT, "c_proj": SERIES_OUTPUT},
    "opt": {"fc1": SERIES_INPUT, "fc2": SERIES_OUTPUT},
}

# LLM-Adapters' default targets of the parallel adapter (TRANSFORMERS_MODELS_TO_PARALLEL_TARGET_MODULES_MAPPING).
_QKV = ("q_proj", "k_proj", "v_proj")
PARALLEL_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _QKV,
    "mistral": _QKV,
    "qwen2": _QKV,
    "qwen3": _QKV,
    "gptj": _QKV,
    "gpt_neo": _QKV,
    "opt": _QKV,
    "bloom": ("query_key_value",),
    "chatglm": ("query_key_value",),
}

# ``use_adapterp``: a series adapter on the MLP output only (TRANSFORMERS_MODELS_TO_ADAPTERP_TARGET_MODULES_MAPPING).
ADAPTERP_TARGETS: dict[str, tuple[str, ...]] = {
    model_type: tuple(name for name, side in sides.items() if side == SERIES_OUTPUT)
    for model_type, sides in SERIES_SIDES.items()
}


@dataclass(frozen=True)
class Preset:
    """A named placement recipe.

    Attributes:
        name: what ``--bottleneck_preset`` takes.
        kind: ``"linear"`` (adapters around named Linear modules) or ``"block"`` (around sublayers).
        series: linear presets only: series (True) or parallel (False) adapters.
        targets: linear presets: module-name suffixes for any model (``any_model``) or per model_type.
        sides: series presets: the side per module-name suffix fixed by the recipe itself.
        sublayers: block presets: the sublayers adapted in every block (``mhsa``, ``ffn``).
        help: one line for ``ftplugins info``.
    """

    name: str
    kind: str
    help: str
    series: bool = False
    any_model: tuple[str, ...] = ()
    per_model_type: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sides: dict[str, str] = field(default_factory=dict)
    sublayers: tuple[str, ...] = ()

    def targets(self, model_type: str | None) -> tuple[str, ...] | None:
        """Default target suffixes for ``model_type``, or None when the recipe has none for it."""
        if self.any_model:
            return self.any_model
        return self.per_model_type.get(model_type or "")

    def side(self, model_type: str | None, module_name: str) -> str | None:
        """Which side of ``module_name`` a series adapter goes on, or None when the tables do not say."""
        for table in (self.sides, SERIES_SIDES.get(model_type or "", {})):
            for suffix, side in table.items():
                if module_name == suffix or module_name.endswith("." + suffix):
                    return side
        return None


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "llm_adapters_series",
            "linear",
            "LLM-Adapters' default series adapters: input side of the MLP up/gate projections, output side of "
            "the down projection (LLaMA: gate_proj, up_proj, down_proj)",
            series=True,
            per_model_type={model_type: tuple(sides) for model_type, sides in SERIES_SIDES.items()},
        ),
        Preset(
            "llm_adapters_parallel",
            "linear",
            "LLM-Adapters' default parallel adapters (LLaMA: q_proj, k_proj, v_proj)",
            per_model_type=PARALLEL_TARGETS,
        ),
        Preset(
            "llm_adapters_adapterp",
            "linear",
            "LLM-Adapters' use_adapterp: a series adapter on the output side of the MLP down projection",
            series=True,
            per_model_type=ADAPTERP_TARGETS,
        ),
        Preset(
            "llama_series",
            "linear",
            "the paper's LLaMA series recipe: input-side adapters on up_proj and gate_proj",
            series=True,
            any_model=("up_proj", "gate_proj"),
            sides={"up_proj": SERIES_INPUT, "gate_proj": SERIES_INPUT},
        ),
        Preset(
            "llama_parallel",
            "linear",
            "the paper's LLaMA parallel recipe: parallel adapters on up_proj and down_proj",
            any_model=("up_proj", "down_proj"),
        ),
        Preset("pfeiffer", "block", "PETL-AST Pfeiffer: one adapter per block, on the FFN", sublayers=(FFN,)),
        Preset("houlsby", "block", "PETL-AST Houlsby: adapters on the MHSA and the FFN of every block",
               sublayers=(MHSA, FFN)),
    )
}

LINEAR_PRESETS = tuple(name for name, preset in PRESETS.items() if preset.kind == "linear")
BLOCK_PRESETS = tuple(name for name, preset in PRESETS.items() if preset.kind == "block")
