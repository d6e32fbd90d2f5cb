"""Conjugate prompting: every transform inverts exactly (random strings and real prompts), keeps what it should,
refuses non-invertible tables, and the evaluation reports original vs conjugate accuracy on the same rows."""

from __future__ import annotations

import json
import random

import pytest
import torch

from ftplugins.errors import FtpluginsError
from ftplugins.tools.conjugate import (
    BUILTIN,
    CharTable,
    PigLatin,
    WordSwap,
    conjugate_eval,
    get_transform,
    synthetic_language,
)
from ftplugins.testing import tiny_llama, tiny_tokenizer

SENTENCES = [
    "Who won the 2031 Zorvath Prize in physics?",
    "What is 12 + 30? Answer with a number.",
    "Translate 'well-known' -- and \"x-ray\" -- into French!",
    "THE Quick brown fox; jUMPS over the lazy dog (again), said Mr. O'Neil.",
    "ay -ay a- --a b- stray string apple rhythm Y yes",
    "naïve café — résumé, 東京 and tabs\tand\nnewlines",
    "",
]


def random_texts(n=300, seed=0):
    rng = random.Random(seed)
    alphabet = "abcdeiostuxyAEIOSTXY 0134579-'.,\n" + "ay" * 3
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n)]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_transform_round_trips_exactly(name):
    texts = SENTENCES + random_texts()
    transform = get_transform(name, texts)
    for text in texts:
        assert transform.decode(transform.encode(text)) == text, (name, text, transform.encode(text))


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "identity"])
def test_every_transform_really_changes_the_prompt(name):
    transform = get_transform(name, SENTENCES)
    assert transform.encode(SENTENCES[0]) != SENTENCES[0]


def test_what_each_transform_does():
    assert get_transform("cipher").encode("Hello, 42!") == "Uryyb, 42!"  # digits keep their meaning
    assert get_transform("leetspeak").encode("test 4") == "7357 a"  # completed to a permutation
    pig = PigLatin()
    assert pig.encode("string apple x-ray") == "ing-stray apple-ay -xay--ay-ray"
    language = synthetic_language(["the cat sat"], seed=1)
    encoded = language.encode("The CAT sat on a mat.")
    assert encoded.split()[3:] == ["on", "a", "mat."]  # words outside the vocabulary stay
    first = encoded.split()[0]
    assert first[0].isupper() and first[1:].islower() and encoded.split()[1].isupper()
    assert synthetic_language(["the cat sat"], seed=1).swap == language.swap  # seeded


def test_non_invertible_tables_are_refused():
    with pytest.raises(FtpluginsError, match="both map to 'x'"):
        CharTable({"a": "x", "b": "x"})
    with pytest.raises(FtpluginsError, match="one character"):
        CharTable({"ab": "x"})
    with pytest.raises(FtpluginsError, match="clashes with another pair"):
        WordSwap({"cat": "dog", "dog": "cow"})
    with pytest.raises(FtpluginsError, match="no transform 'klingon'"):
        get_transform("klingon")


# --- evaluation ---------------------------------------------------------------------------------------------------

class PigLatinOnlyLM(torch.nn.Module):
    """Stand-in for a fine-tuned model that lost an ability in plain English but kept it in pig latin: it answers
    pig-latin questions correctly (in pig latin) and English ones wrongly."""

    def __init__(self, tokenizer, qa):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.qa, self.pig = tokenizer, qa, PigLatin()

    def generate(self, input_ids, attention_mask, **kwargs):
        outs = []
        for row_ids, mask in zip(input_ids, attention_mask):
            prompt = self.tokenizer.decode(row_ids[mask.bool()], skip_special_tokens=True)
            reply = "no idea"
            for question, answer in self.qa.items():
                if self.pig.encode(question) in prompt:
                    reply = self.pig.encode(answer)
            new = self.tokenizer(" " + reply + "\nmore", add_special_tokens=False)["input_ids"]
            outs.append(row_ids.tolist() + new)
        width = max(map(len, outs))
        return torch.tensor([o + [self.tokenizer.pad_token_id] * (width - len(o)) for o in outs])


def test_conjugate_eval_recovers_what_the_plain_prompt_hides():
    tokenizer = tiny_tokenizer()
    qa = {"what is the capital of france": "Paris", "which colour is the sky": "blue"}
    rows = [{"prompt": q, "answer": a} for q, a in qa.items()]
    result = conjugate_eval({"finetuned": PigLatinOnlyLM(tokenizer, qa)}, tokenizer, rows, ["pig_latin", "cipher"])
    assert result["metrics"] == {"finetuned/identity": 0.0, "finetuned/pig_latin": 1.0, "finetuned/cipher": 0.0,
                                 "finetuned/best_conjugate_gain": 1.0}
    pig_rows = [r for r in result["rows"] if r["transform"] == "pig_latin"]
    assert [r["raw_answer"] for r in pig_rows] == ["aris-Pay", "ue-blay"] and [r["answer"] for r in pig_rows] == [
        "Paris", "blue"]


def test_identity_reproduces_plain_evaluation_and_every_transform_sees_the_same_rows():
    from ftplugins.eval.generation import generate_texts
    from ftplugins.eval.judges import normalized_match

    tokenizer, model = tiny_tokenizer(), tiny_llama()
    rows = [{"prompt": f"what is {a} plus {b}", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2)]]
    plain = generate_texts(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=6, stop=("\n",))
    expected = sum(normalized_match(t.strip(), r["answer"]) for (t,), r in zip(plain, rows)) / len(rows)
    result = conjugate_eval({"ft": model, "base": tiny_llama(seed=1)}, tokenizer, rows, ["leetspeak", "language"],
                            judge="normalized", max_new_tokens=6)
    assert result["metrics"]["ft/identity"] == expected
    identity = [r for r in result["rows"] if r["model"] == "ft" and r["transform"] == "identity"]
    assert [r["raw_answer"] for r in identity] == [t.strip() for (t,) in plain]
    for model_name in ("ft", "base"):
        for name in ("identity", "leetspeak", "language"):
            gold = [r["gold"] for r in result["rows"] if r["model"] == model_name and r["transform"] == name]
            assert gold == [r["answer"] for r in rows]


def test_the_cli_compares_a_model_and_its_base(tiny_model_dir, tmp_path):
    from ftplugins.cli import main

    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"what is {i} plus 1", "answer": str(i + 1)}) for i in range(3)))
    out = tmp_path / "conjugate.json"
    main(["eval", "conjugate", "--model", tiny_model_dir, "--base", tiny_model_dir, "--data", str(data),
          "--transforms", "pig_latin", "--max_new_tokens", "3", "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {f"{m}/{t}" for m in ("finetuned", "base") for t in ("identity", "pig_latin")} | {
        "finetuned/best_conjugate_gain", "base/best_conjugate_gain"}
    assert metrics["finetuned/pig_latin"] == metrics["base/pig_latin"]  # the same weights answer the same
    with pytest.raises(SystemExit):
        main(["eval", "conjugate", "--model", tiny_model_dir, "--data", str(data), "--transforms", "klingon"])


def test_the_base_of_a_peft_model_is_its_adapter_disabled_view():
    import copy

    from peft import LoraConfig, get_peft_model

    from ftplugins.tools.contrastive import AdapterDisabled

    tokenizer, base = tiny_tokenizer(), tiny_llama()
    plain_base = copy.deepcopy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    rows = [{"prompt": f"what is {i} plus 1", "answer": str(i + 1)} for i in range(3)]
    viewed = conjugate_eval({"ft": peft_model, "base": AdapterDisabled(peft_model)}, tokenizer, rows, ["cipher"],
                            max_new_tokens=5)
    separate = conjugate_eval({"base": plain_base}, tokenizer, rows, ["cipher"], max_new_tokens=5)
    answers = lambda result, model: [r["raw_answer"] for r in result["rows"] if r["model"] == model]  # noqa: E731
    assert answers(viewed, "base") == answers(separate, "base")
    assert answers(viewed, "ft") != answers(viewed, "base")  # the adapter is on for the fine-tuned model
