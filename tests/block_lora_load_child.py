"""Fresh-process half of test_block_lora's save/load test: rebuild the base, load the adapter, write the logits.

Usage: python block_lora_load_child.py ADAPTER_DIR INPUT_IDS_FILE OUTPUT_FILE
"""

import sys

import torch

import ftplugins
from ftplugins.testing import tiny_llama


def main(adapter_dir: str, ids_file: str, out_file: str) -> None:
    # Nothing has registered BLOCK_LORA in this process: load_adapter must find the plugin from the saved config.
    assert "ftplugins.methods.block_lora.config" not in sys.modules
    model = ftplugins.load_adapter(tiny_llama(seed=0).eval(), adapter_dir)
    assert type(model.peft_config["default"]).__name__ == "BlockLoraConfig"
    with torch.no_grad():
        logits = model(torch.load(ids_file)).logits
    torch.save(logits, out_file)


if __name__ == "__main__":
    main(*sys.argv[1:4])
