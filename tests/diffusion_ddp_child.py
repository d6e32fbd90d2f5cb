"""Child of tests/test_pso.py's DDP test: DiffusionTrainer + pso + ssf on the tiny UNet; each rank saves its weights."""

import os
import sys

import torch

import ftplugins
from ftplugins.diffusion import DiffusionConfig, DiffusionTrainer, tiny
from ftplugins.methods.pso import plugin as pso
from ftplugins.process_end import end_distributed_process

torch.set_num_threads(1)
out = sys.argv[1]
trainer_cls = ftplugins.compose(DiffusionTrainer, [pso, "ssf"], pso_class_prompt="a shape", pso_num_references=3,
                                ssf_target_modules=["to_q", "to_k", "to_v", "to_out.0"])
args = DiffusionConfig(output_dir=out, use_cpu=True, max_steps=3, per_device_train_batch_size=2, report_to="none",
                       save_strategy="no", disable_tqdm=True, seed=0, learning_rate=1e-2)
trainer = trainer_cls(model=tiny.tiny_unet(), args=args, train_dataset=tiny.shapes_dataset(8),
                      text_encoder=tiny.tiny_text_encoder(), vae=tiny.tiny_vae(), noise_scheduler=tiny.ddpm_scheduler(),
                      processing_class=tiny.tiny_tokenizer())
trainer.train()
trainer.save_model()
state = {k: v.detach().cpu() for k, v in trainer.model.named_parameters() if v.requires_grad}
torch.save(state, os.path.join(out, f"rank{args.process_index}.pt"))
end_distributed_process()  # no interpreter teardown, where gloo can abort a finished rank
