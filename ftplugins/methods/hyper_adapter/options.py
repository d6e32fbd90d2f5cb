"""Options of FM3's hypernetwork adapters. The paper gives no sizes (spec C §7: "Unknown: backbones, adapter size,
loss temperature/margin, pair sampling"): the choices here follow HyperFormer and SetFit and are written down in each
help text."""

# No ``from __future__ import annotations``: HfArgumentParser needs the real field types.
from dataclasses import dataclass, field

from ftplugins.options import check_choice, check_range

ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
PARAMETRIZATIONS = ("orthogonal", "hyperformer")


def parse_task(spec: str) -> tuple[str, int]:
    """``"sst2:2"`` -> ("sst2", 2); raises ValueError naming the entry."""
    name, sep, count = spec.rpartition(":")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--hyper_adapter_tasks {spec!r}: expected NAME:NUM_LABELS with NUM_LABELS >= 1, e.g. sst2:2")
    return name, int(count)


@dataclass
class HyperAdapterOptions:
    hyper_adapter_tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "The tasks trained together, as NAME:NUM_LABELS (e.g. sst2:2 mnli:3). The dataset's "
                  "'task' column holds each row's task, as its index in this list or its NAME; each task gets "
                  "its own head and its own generated adapters."},
    )
    hyper_adapter_size: int = field(
        default=16, metadata={"help": "Bottleneck width b of every generated adapter (HyperFormer: d/32; MiniLM "
                              "d = 384)."})
    hyper_adapter_embedding_dim: int = field(
        default=64, metadata={"help": "Width of each of the task, layer and position embeddings fed to the "
                              "hypernetwork (concatenated)."})
    hyper_adapter_hidden_dim: int = field(
        default=128, metadata={"help": "Width of the hypernetwork's projector (2-layer ReLU MLP) whose output the "
                               "weight generators read (the hyperformer parametrization only)."})
    hyper_adapter_parametrization: str = field(
        default="orthogonal",
        metadata={"help": "How adapters are generated and trained. 'orthogonal': each adapter's source vector is the "
                  "unit product of its task, layer and position embeddings (far less aligned across adapters "
                  "than a projector's), "
                  "bias-free generators, and per-adapter steps: the gradient reaching each generated tensor is "
                  "scaled per entry by its own running RMS (Adam's second moment) and the generators step by it "
                  "at the learning rate, unclipped; the embeddings and heads train with the trainer's optimizer "
                  "(--hyper_adapter_hidden_dim is unused). 'hyperformer': HyperFormer's 2-layer ReLU projector "
                  "over the concatenated embeddings, generators with biases, all trained by the trainer's "
                  "optimizer (under Adam each generator coordinate mixes every adapter: quality-small-fm3-optimizer). "
                  "Measured on three few-shot MiniLM tasks: orthogonal 0.893 vs per-task adapters 0.820 at 50 steps "
                  "a task; at 10x the steps with the 50-step rate it fell behind (0.814 vs 0.934): choose the rate "
                  "at the budget you train."},
    )
    hyper_adapter_activation: str = field(
        default="relu", metadata={"help": "Non-linearity inside the generated adapters."})
    hyper_adapter_target_modules: list[str] = field(
        default_factory=lambda: ["attention.output.dense", "output.dense"],
        metadata={"help": "Linear modules (name suffixes) that get a series adapter on their output side, "
                  "y = h + f(h): by default after the attention output and the FFN output of every BERT layer "
                  "(HyperFormer's / Houlsby's positions). Each matched module is one (layer, position) pair."},
    )
    hyper_adapter_contrastive_steps: int = field(
        default=0, metadata={"help": "SetFit-style contrastive stage: the first N optimizer steps train the "
                             "hypernetwork with the cosine-similarity loss on all same-task pairs of a batch "
                             "(target 1 for the same label, 0 otherwise) on the features the task heads read; "
                             "the heads train afterwards. 0 = off."})
    hyper_adapter_export: bool = field(
        default=True, metadata={"help": "After training, write every task's generated adapter and head as a PEFT "
                                "adapter to OUTPUT_DIR/task_adapters/NAME (loads with ftplugins.load_adapter / "
                                "PeftModel.from_pretrained on the base classifier with that task's num_labels)."})

    def __post_init__(self):
        names = [parse_task(spec)[0] for spec in self.hyper_adapter_tasks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"--hyper_adapter_tasks names {twice} more than once: give every task one NAME:NUM_LABELS")
        check_range("hyper_adapter_size", self.hyper_adapter_size, 1, 1 << 16)
        check_range("hyper_adapter_embedding_dim", self.hyper_adapter_embedding_dim, 1, 1 << 16)
        check_range("hyper_adapter_hidden_dim", self.hyper_adapter_hidden_dim, 1, 1 << 16)
        check_choice("hyper_adapter_activation", self.hyper_adapter_activation, ACTIVATIONS)
        check_choice("hyper_adapter_parametrization", self.hyper_adapter_parametrization, PARAMETRIZATIONS)
        if not self.hyper_adapter_target_modules:
            raise ValueError("--hyper_adapter_target_modules []: expected at least one module name suffix, e.g. "
                             "output.dense")
        check_range("hyper_adapter_contrastive_steps", self.hyper_adapter_contrastive_steps, 0, 1 << 31)

    def task_list(self) -> list[tuple[str, int]]:
        return [parse_task(spec) for spec in self.hyper_adapter_tasks]
