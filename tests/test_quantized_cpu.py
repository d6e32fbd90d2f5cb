"""bitsandbytes 4-bit layers behave the same on every CPU: the packed AVX512-BF16 path never breaks a layer or
a gradient. Every test here runs the same on CPUs with and without AVX512-BF16: the packing is done or simulated
with bitsandbytes' own pure-torch packing function (what its forward calls there), never its native packed kernel."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from ftplugins.quantized_cpu import KERNEL_HUB_NOTICE, guard_cpu_4bit_packing, packable_on_cpu  # noqa: E402
from ftplugins.testing import save_tiny_llama  # noqa: E402

QUANT = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
#: Widths below the 4-bit block size (64): every projection but down_proj (64 in, 32 out) is too narrow to pack.
NARROW = {"hidden_size": 32, "intermediate_size": 64}


@pytest.fixture(scope="module")
def narrow_dir(tmp_path_factory) -> str:
    return save_tiny_llama(str(tmp_path_factory.mktemp("narrow")), **NARROW)


def load_4bit(path: str):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=QUANT, device_map="cpu")


def four_bit_layers(model) -> dict:
    return {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def packs(module) -> bool:
    """Whether bitsandbytes' own packing function accepts the layer (on copies: the layer is untouched)."""
    try:
        _convert_weight_packed_for_cpu(module.weight.data.clone(), copy.deepcopy(module.weight.quant_state))
    except (RuntimeError, AssertionError):
        return False
    return True


@pytest.mark.parametrize("widths", ["narrow", "quantizable"])
def test_packable_predicate_matches_bitsandbytes(widths, narrow_dir, quantizable_model_dir):
    layers = four_bit_layers(load_4bit(narrow_dir if widths == "narrow" else quantizable_model_dir))
    verdicts = {name: packable_on_cpu(m) for name, m in layers.items()}
    assert verdicts == {name: packs(m) for name, m in layers.items()}
    if widths == "narrow":
        assert {n.rsplit(".", 1)[-1] for n, ok in verdicts.items() if ok} == {"down_proj"}
    else:
        assert all(verdicts.values()) and len(verdicts) == 14  # realistic widths: every layer takes the fast path


def test_narrow_layers_stay_on_the_generic_path_in_eval(narrow_dir):
    """What bitsandbytes does on an AVX512-BF16 CPU (its per-layer flag set), with and without the guard."""
    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    unguarded = load_4bit(narrow_dir).eval()
    for module in four_bit_layers(unguarded).values():
        module.support_avx512bf16_for_cpu = True
    with pytest.raises(RuntimeError, match="shape"), torch.no_grad():
        unguarded(ids)  # bitsandbytes' packing of a 32-wide layer: the failure CI saw

    model = load_4bit(narrow_dir).eval()
    layers = four_bit_layers(model)
    for module in layers.values():
        module.support_avx512bf16_for_cpu = True
    switched = guard_cpu_4bit_packing(model, training=False)
    assert set(switched) == {n for n, m in layers.items() if not packable_on_cpu(m)} and len(switched) == 12
    assert all(layers[n].support_avx512bf16_for_cpu for n in layers if n not in switched)  # down_proj keeps it
    for module in layers.values():  # the native packed kernel needs the CPU feature: keep this test CPU-independent
        module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        eval_logits = model(ids).logits
    assert torch.equal(eval_logits, model.train()(ids).logits.detach())


def test_training_unpacks_and_gradients_flow(quantizable_model_dir):
    """A model evaluated before training on an AVX512-BF16 CPU arrives packed; training must unpack it, or nothing
    below a packed layer receives a gradient (bitsandbytes' packed kernel has no autograd formula)."""
    model = load_4bit(quantizable_model_dir)
    layers = four_bit_layers(model)
    original = {n: (m.weight.data.clone(), dequantize_4bit(m.weight.data, m.weight.quant_state)) for n, m in layers.items()}
    for module in layers.values():  # exactly what Linear4bit.forward does in eval mode there
        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu(
            module.weight.data, module.weight.quant_state
        )
        module.support_avx512bf16_for_cpu = True

    switched = guard_cpu_4bit_packing(model, training=True)
    assert sorted(switched) == sorted(layers)
    for name, module in layers.items():
        codes, weight = original[name]
        state = module.weight.quant_state
        assert not state.packing_format_for_cpu and not module.support_avx512bf16_for_cpu
        assert torch.equal(module.weight.data, codes)  # the 4-bit codes exactly
        restored = dequantize_4bit(module.weight.data, state)
        # block scales come back as the packing left them, rounded to bf16 (relative error 2**-8)
        torch.testing.assert_close(restored, weight, rtol=2**-8, atol=1e-6)

    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model.train()(inputs_embeds=embeds).logits.square().sum().backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_a_composed_trainer_keeps_4bit_layers_trainable(quantizable_model_dir, tmp_path):
    from conftest import cpu_args
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.testing import arithmetic_dataset, tiny_tokenizer

    model = load_4bit(quantizable_model_dir)
    for module in four_bit_layers(model).values():
        module.support_avx512bf16_for_cpu = True  # as bitsandbytes sets it on an AVX512-BF16 CPU
    trainer_cls = ftplugins.compose(SFTTrainer, [])  # PEFT's own LoRA below: only the trainer can guard it
    trainer_cls(model=model, args=cpu_args(SFTConfig, tmp_path), train_dataset=arithmetic_dataset(8),
                processing_class=tiny_tokenizer(), peft_config=LoraConfig(r=4, target_modules=["q_proj"]))
    assert not any(m.support_avx512bf16_for_cpu for m in four_bit_layers(model).values())


def test_listing_and_info_print_only_ours():
    """`ftplugins list` / `info` import no heavy or foreign package and print no foreign line; importing PEFT
    (which imports bitsandbytes) after ftplugins prints no bitsandbytes kernel-hub notice."""
    from ftplugins.registry import installed_names

    script = (
        "import sys\n"
        "from ftplugins.cli import main\n"
        "main(['list'])\n"
        f"for name in {installed_names()!r}: main(['info', name])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'bitsandbytes', 'peft', 'transformers'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "import peft\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == ["HEAVY []"], done.stderr
    assert KERNEL_HUB_NOTICE not in done.stdout + done.stderr
