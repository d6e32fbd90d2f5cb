"""Fresh-process half of test_peft_loaders: load each saved adapter through one standard loader, write logits.

Usage: python peft_loaders_child.py SPEC_JSON
SPEC_JSON: {"loader": "PeftModel" | "AutoPeftModelForCausalLM" | "AutoModelForCausalLM", "base": BASE_DIR,
            "ids": IDS_FILE, "adapters": {ADAPTER_DIR: OUTPUT_FILE, ...}}
"""

import json
import sys

import torch

import ftplugins  # noqa: F401 - the one thing a user does before loading: registers the types on `import peft`


def load(loader: str, base_dir: str, adapter_dir: str):
    from transformers import AutoModelForCausalLM

    if loader == "PeftModel":
        from peft import PeftModel

        return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    if loader == "AutoPeftModelForCausalLM":
        from peft import AutoPeftModelForCausalLM

        return AutoPeftModelForCausalLM.from_pretrained(adapter_dir)  # finds the base in adapter_config.json
    if loader == "AutoModelForCausalLM":
        return AutoModelForCausalLM.from_pretrained(adapter_dir)  # transformers' own PEFT integration
    raise SystemExit(f"unknown loader {loader!r}")


def main(spec_file: str) -> None:
    spec = json.loads(open(spec_file).read())
    # Nothing but `import ftplugins` so far: no tuner module may be loaded before PEFT is.
    assert "peft" not in sys.modules and not any(m.endswith(".config") for m in sys.modules if ".methods." in m)
    ids = torch.load(spec["ids"])
    for adapter_dir, out_file in spec["adapters"].items():
        model = load(spec["loader"], spec["base"], adapter_dir).eval()
        with torch.no_grad():
            torch.save(model(input_ids=ids).logits, out_file)


if __name__ == "__main__":
    main(sys.argv[1])
