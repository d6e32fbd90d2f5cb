"""`ftplugins pipeline`: stages run in order, each from the previous stage's output; a rerun after a crash skips the
finished stages; one manifest of all stages."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftplugins.errors import FtpluginsError
from ftplugins.pipeline import MANIFEST, main, run_pipeline

CPU = dict(use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
           per_device_train_batch_size=2, max_length=64)


def write(tmp_path, spec) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def sft_then_dpo(tmp_path, model, data_dir, sft_args=None, dpo_data="preference"):
    return write(tmp_path, {
        "output_dir": str(tmp_path / "out"), "model_name_or_path": model,
        "stages": [
            {"name": "sft", "command": "sft",
             "args": {**CPU, "dataset_name": f"{data_dir}/arithmetic", "max_steps": 2, "learning_rate": 1e-2,
                      **(sft_args or {})}},
            {"name": "dpo", "command": "dpo",
             "args": {**CPU, "dataset_name": f"{data_dir}/{dpo_data}", "max_steps": 1, "learning_rate": 1e-6}},
        ]})


def weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_sft_then_dpo_each_stage_starts_from_the_previous_output(tmp_path, tiny_model_dir, data_dir):
    records = run_pipeline(sft_then_dpo(tmp_path, tiny_model_dir, data_dir))
    out = tmp_path / "out"
    assert [r["name"] for r in records] == ["sft", "dpo"] and all(r["state"] == "trained" for r in records)
    assert records[0]["model_in"] == tiny_model_dir and records[1]["model_in"] == str(out / "1-sft")
    base, first, second = weights(tiny_model_dir), weights(out / "1-sft"), weights(out / "2-dpo")
    name = "model.layers.0.mlp.down_proj.weight"
    moved_by_sft = float((first[name] - base[name]).abs().max())
    moved_by_dpo = float((second[name] - first[name]).abs().max())
    assert moved_by_sft > 0 and moved_by_dpo < moved_by_sft / 10, (moved_by_sft, moved_by_dpo)
    manifest = json.loads((out / MANIFEST).read_text())
    assert [s["model_out"] for s in manifest["stages"]] == [str(out / "1-sft"), str(out / "2-dpo")]
    assert [s["global_step"] for s in manifest["stages"]] == [2, 1]


def test_a_crash_in_stage_two_resumes_there_and_skips_stage_one(tmp_path, tiny_model_dir, data_dir):
    later = tmp_path / "later"  # stage 2's data, not there yet: the first run crashes inside stage 2
    path = sft_then_dpo(tmp_path, tiny_model_dir, data_dir)
    spec = yaml.safe_load(open(path))
    spec["stages"][1]["args"]["dataset_name"] = str(later)
    path = write(tmp_path, spec)
    with pytest.raises(Exception, match="later"):
        run_pipeline(path)
    out = tmp_path / "out"
    manifest = json.loads((out / MANIFEST).read_text())
    assert [s["name"] for s in manifest["stages"]] == ["sft"]
    first_run = (out / "1-sft" / "ftplugins_run.json").stat().st_mtime_ns
    shutil.copytree(f"{data_dir}/preference", later)
    records = run_pipeline(path)
    assert [r["state"] for r in records] == ["finished earlier", "trained"]
    assert (out / "1-sft" / "ftplugins_run.json").stat().st_mtime_ns == first_run
    assert records[1]["model_in"] == str(out / "1-sft")
    assert [s["state"] for s in json.loads((out / MANIFEST).read_text())["stages"]] == ["finished earlier", "trained"]


def test_an_adapter_stage_is_merged_for_the_next_stage(tmp_path, tiny_model_dir, data_dir):
    from transformers import AutoModelForCausalLM

    from ftplugins.peft_types import load_adapter

    path = sft_then_dpo(tmp_path, tiny_model_dir, data_dir, sft_args={"use_peft": True, "lora_r": 4,
                                                                       "lora_target_modules": ["q_proj", "v_proj"]})
    records = run_pipeline(path)
    out = tmp_path / "out"
    merged = out / "1-sft-merged"
    assert records[0]["merged"] == str(merged) and records[1]["model_in"] == str(merged)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        adapted = load_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out / "1-sft"))(ids).logits
        full = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    torch.testing.assert_close(full, adapted, rtol=1e-4, atol=1e-5)
    assert not torch.equal(weights(merged)["model.layers.0.self_attn.q_proj.weight"],
                           weights(tiny_model_dir)["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.parametrize("change,message", [
    ({"stages": []}, r"stages must be a non-empty list"),
    ({"chain": "stack"}, r"chain 'stack': expected one of merge, adapters"),
    ({"stages": [{"name": "a", "command": "ppo"}]}, r"stage 1: command 'ppo': expected one of sft, dpo, grpo"),
    ({"stages": [{"command": "sft", "args": {"output_dir": "x"}}]}, r"stage 1: sets output_dir, which the pipeline"),
    ({"stages": [{"command": "sft"}, {"command": "sft"}]}, r"stage 2: name 'sft': expected a unique name"),
    ({"stages": [{"command": "sft", "max_steps": 3}]}, r"stage 1: unknown key\(s\) max_steps.*go under args"),
    ({"epochs": 3}, r"unknown key\(s\) epochs"),
])
def test_bad_pipeline_files_are_refused_in_one_line(tmp_path, change, message):
    path = write(tmp_path, {"output_dir": str(tmp_path / "out"), "model_name_or_path": "m",
                            "stages": [{"command": "sft"}], **change})
    with pytest.raises(FtpluginsError, match=message) as err:
        run_pipeline(path)
    assert "\n" not in str(err.value)


def test_the_command_line_names_a_missing_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope.yaml")])
    assert "nope.yaml' does not exist" in capsys.readouterr().err


def test_the_recipe_runs_ssf_then_dpo_from_the_merged_model(tmp_path, tiny_model_dir, data_dir):
    """recipes/pipelines/sft_then_dpo.yaml, shortened, on the offline tiny model and data."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = yaml.safe_load(open(os.path.join(repo, "recipes", "pipelines", "sft_then_dpo.yaml")))
    spec.update(output_dir=str(tmp_path / "out"), model_name_or_path=tiny_model_dir)
    first, second = spec["stages"]
    first["config"] = os.path.join(repo, first["config"])
    first["args"].update(dataset_name=f"{data_dir}/arithmetic", max_steps=2, save_steps=1)
    second["args"].update(dataset_name=f"{data_dir}/preference", max_steps=1, save_strategy="no")
    records = run_pipeline(write(tmp_path, spec))
    out = tmp_path / "out"
    adapter = json.loads((out / "1-sft" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "SSF" and records[0]["merged"] == str(out / "1-sft-merged")
    assert records[1]["model_in"] == str(out / "1-sft-merged") and records[1]["state"] == "trained"
    merged, base = weights(out / "1-sft-merged"), weights(tiny_model_dir)
    assert merged.keys() == base.keys() and any(not torch.equal(merged[k], base[k]) for k in base)


def one_and_two_processes(tmp_path, model, data_dir, stages, **top):
    """Run the pipeline of ``stages(common_args)`` in 1 process (4 rows a step) in tmp_path/one and under
    ``accelerate launch`` (2 CPU processes, gloo; 2 x 2 rows) in tmp_path/two."""
    import subprocess
    import sys

    from test_distributed import LAUNCH_TIMEOUT, accelerate_bin, ddp_flags, launch_failure

    def spec(name, batch):
        common = {**CPU, "per_device_train_batch_size": batch, "dataloader_drop_last": True, "seed": 0,
                  "dataset_name": f"{data_dir}/arithmetic", "max_steps": 2}
        (tmp_path / name).mkdir()
        return write(tmp_path / name, {"output_dir": str(tmp_path / name / "out"), "model_name_or_path": model,
                                       "stages": stages(common), **top})

    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run([sys.executable, "-m", "ftplugins.pipeline", spec("one", 4)], capture_output=True,
                            text=True, env=env, timeout=LAUNCH_TIMEOUT)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([accelerate_bin(), "launch", *ddp_flags(), "-m", "ftplugins.pipeline", spec("two", 2)],
                         capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT)
    assert ddp.returncode == 0, launch_failure(ddp)


@pytest.mark.slow
def test_under_accelerate_launch_two_processes_equal_one(tmp_path, tiny_model_dir, data_dir):
    """The pipeline under `accelerate launch` (2 CPU processes, gloo; 2 x 2 rows) ends where 1 process (4 rows)
    does: an SSF stage merged, then full SFT from the merged model."""
    def stages(common):
        return [{"name": "ssf", "command": "sft", "args": {**common, "plugins": ["ssf"], "learning_rate": 5e-2}},
                {"name": "full", "command": "sft", "args": {**common, "learning_rate": 1e-2}}]

    one_and_two_processes(tmp_path, tiny_model_dir, data_dir, stages)
    for stage in ("1-ssf", "2-full"):
        assert json.loads((tmp_path / "two" / "out" / stage / "ftplugins_run.json").read_text())["world_size"] == 2
    stages = json.loads((tmp_path / "two" / "out" / MANIFEST).read_text())["stages"]
    assert [s["state"] for s in stages] == ["trained", "trained"] and stages[0]["merged"]
    a, b = weights(tmp_path / "one" / "out" / "2-full"), weights(tmp_path / "two" / "out" / "2-full")
    base = weights(tiny_model_dir)
    assert any(not torch.equal(a[k], base[k]) for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_the_unfinished_stage_resumes_from_its_last_whole_checkpoint(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from transformers.trainer_callback import CallbackHandler

    path = sft_then_dpo(tmp_path, tiny_model_dir, data_dir)
    spec = yaml.safe_load(open(path))
    spec["stages"][1]["args"].update(max_steps=3, save_strategy="steps", save_steps=1)
    path = write(tmp_path, spec)
    own_step_end = CallbackHandler.on_step_end

    def crash_in_dpo_step_two(self, args, state, control):
        if "2-dpo" in args.output_dir and state.global_step == 2:  # before step 2's checkpoint is saved
            raise RuntimeError("killed during stage 2")
        return own_step_end(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_step_end", crash_in_dpo_step_two)
    with pytest.raises(RuntimeError, match="killed during stage 2"):
        run_pipeline(path)
    monkeypatch.setattr(CallbackHandler, "on_step_end", own_step_end)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "2-dpo").glob("checkpoint-*")) == ["checkpoint-1"]
    records = run_pipeline(path)
    assert [r["state"] for r in records] == ["finished earlier", "trained"]
    assert records[1]["resumed_from"] == str(out / "2-dpo" / "checkpoint-1") and records[1]["global_step"] == 3


LORA = {"use_peft": True, "lora_r": 4, "lora_target_modules": ["q_proj", "v_proj"]}
IDS = torch.tensor([[1, 5, 9, 13, 2]])


def two_lora_stages(tmp_path, model, data_dir, second=None):
    args = {**CPU, **LORA, "dataset_name": f"{data_dir}/arithmetic", "max_steps": 2, "learning_rate": 5e-2}
    return write(tmp_path, {"output_dir": str(tmp_path / "out"), "model_name_or_path": model, "chain": "adapters",
                            "stages": [{"name": "a", "command": "sft", "args": args},
                                       {"name": "b", "command": "sft", "args": {**args, **(second or {})}}]})


def watch_stage_two(monkeypatch, seen):
    """Record stage 2's live model at its first and last step: logits on IDS and the parameters by adapter."""
    from transformers.trainer_callback import CallbackHandler

    own_begin, own_end = CallbackHandler.on_train_begin, CallbackHandler.on_train_end

    def snapshot(model, when):
        training = model.training
        model.eval()  # no LoRA dropout
        with torch.no_grad():
            seen[when] = {"logits": model(IDS).logits.clone(),
                          "params": {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n},
                          "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad)}
        model.train(training)

    def begin(self, args, state, control):
        if "2-b" in args.output_dir:
            snapshot(self.model, "begin")
        return own_begin(self, args, state, control)

    def end(self, args, state, control):
        if "2-b" in args.output_dir:
            snapshot(self.model, "end")
        return own_end(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_train_begin", begin)
    monkeypatch.setattr(CallbackHandler, "on_train_end", end)


def chain_logits(base, adapters):
    from transformers import AutoModelForCausalLM

    from ftplugins.adapter_chain import load_chain

    with torch.no_grad():
        return load_chain(AutoModelForCausalLM.from_pretrained(base), adapters)(IDS).logits


def test_the_adapter_chain_trains_only_the_new_adapter_on_the_frozen_first(tmp_path, tiny_model_dir, data_dir,
                                                                           monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    watch_stage_two(monkeypatch, seen)
    records = run_pipeline(two_lora_stages(tmp_path, tiny_model_dir, data_dir))
    out = tmp_path / "out"
    first, second = str(out / "1-a"), str(out / "2-b")
    assert [r["model_in"] for r in records] == [tiny_model_dir, tiny_model_dir] and "adapters_in" not in records[0]
    assert records[1]["adapters_in"] == [first]
    assert records[1]["model_out"] == {"base": tiny_model_dir, "adapters": [first, second]}
    assert json.loads((out / MANIFEST).read_text())["stages"][1]["model_out"]["adapters"] == [first, second]
    # Step 0 of stage 2 computes base + adapter 1 (the new LoRA starts at zero), not the base.
    torch.testing.assert_close(seen["begin"]["logits"], chain_logits(tiny_model_dir, [first]), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(IDS).logits
    assert not torch.allclose(seen["begin"]["logits"], base_logits)
    # Only the new adapter trains and changes; the chain's stays as saved.
    assert seen["begin"]["trainable"] and all(".default." in n for n in seen["begin"]["trainable"])
    before, after = seen["begin"]["params"], seen["end"]["params"]
    assert any(".chain-1." in n for n in before)
    for name in before:
        assert torch.equal(before[name], after[name]) != (".default." in name), name
    # Stage 2 saved its adapter alone (no sub-folder for the chain), and base + both in order is the model it trained.
    saved = load_file(os.path.join(second, "adapter_model.safetensors"))
    assert len(saved) == len(load_file(os.path.join(first, "adapter_model.safetensors")))
    assert not (out / "2-b" / "chain-1").exists()
    torch.testing.assert_close(chain_logits(tiny_model_dir, [first, second]), seen["end"]["logits"], rtol=1e-5,
                               atol=1e-6)


def test_the_adapter_chain_resumes_stage_two_into_its_own_adapter(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from transformers.trainer_callback import CallbackHandler

    path = two_lora_stages(tmp_path, tiny_model_dir, data_dir, {"max_steps": 3, "save_strategy": "steps",
                                                                 "save_steps": 1})
    own_step_end = CallbackHandler.on_step_end

    def crash_in_step_two(self, args, state, control):
        if "2-b" in args.output_dir and state.global_step == 2:
            raise RuntimeError("killed during stage 2")
        return own_step_end(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_step_end", crash_in_step_two)
    with pytest.raises(RuntimeError, match="killed during stage 2"):
        run_pipeline(path)
    monkeypatch.setattr(CallbackHandler, "on_step_end", own_step_end)
    out = tmp_path / "out"
    checkpoint = load_file(str(out / "2-b" / "checkpoint-1" / "adapter_model.safetensors"))
    seen = {}
    watch_stage_two(monkeypatch, seen)
    records = run_pipeline(path)
    assert [r["state"] for r in records] == ["finished earlier", "trained"]
    assert records[1]["resumed_from"] == str(out / "2-b" / "checkpoint-1") and records[1]["global_step"] == 3
    # The checkpoint went into the new adapter, not over the chain's: the chain is adapter 1 as saved.
    first = load_file(str(out / "1-a" / "adapter_model.safetensors"))
    live = seen["end"]["params"]
    for key, value in first.items():
        live_key = next(n for n in live if ".chain-1." in n and n.replace(".chain-1", "").endswith(
            key.replace("base_model.model.", "", 1)))
        torch.testing.assert_close(live[live_key], value)
    resumed = {n: p for n, p in seen["begin"]["params"].items() if ".default." in n}
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in resumed.items() if "lora_B" in n)
    assert len(checkpoint) == len(first)


def test_a_full_weights_stage_after_adapter_stages_is_refused(tmp_path, tiny_model_dir, data_dir):
    path = two_lora_stages(tmp_path, tiny_model_dir, data_dir, {"use_peft": False})
    with pytest.raises(FtpluginsError, match="trains all weights, after stages that trained adapters.*chain: merge"):
        run_pipeline(path)
    assert (tmp_path / "out" / "1-a" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "out" / "2-b" / "model.safetensors").exists()


def test_the_adapter_chain_refuses_a_preference_stage_after_the_first(tmp_path):
    path = write(tmp_path, {"output_dir": str(tmp_path / "out"), "model_name_or_path": "m", "chain": "adapters",
                            "stages": [{"command": "sft"}, {"command": "dpo"}]})
    with pytest.raises(FtpluginsError, match="stage 2: command dpo under chain: adapters.*use chain: merge"):
        run_pipeline(path)


def test_sft_then_grpo_starts_the_rl_stage_from_the_sft_model(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """A cold start then RL (recipes/cls_rl_grpo.yaml's CLS-RL rewards, no reward model; 2 steps each)."""
    from transformers.trainer_callback import CallbackHandler

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    grpo = {**CPU, "dataset_name": f"{data_dir}/parity", "max_steps": 2, "per_device_train_batch_size": 2,
            "num_generations": 2, "max_completion_length": 4, "learning_rate": 1e-3}
    del grpo["max_length"]
    path = write(tmp_path, {"output_dir": str(tmp_path / "out"), "model_name_or_path": tiny_model_dir, "stages": [
        {"name": "sft", "command": "sft",
         "args": {**CPU, "dataset_name": f"{data_dir}/arithmetic", "max_steps": 2, "learning_rate": 1e-2}},
        {"name": "rl", "command": "grpo", "config": os.path.join(repo, "recipes", "cls_rl_grpo.yaml"), "args": grpo}]})
    name = "model.layers.0.mlp.down_proj.weight"
    seen = {}
    own_begin = CallbackHandler.on_train_begin

    def begin(self, args, state, control):
        if "2-rl" in args.output_dir:
            seen["start"] = self.model.get_parameter(name).detach().clone()
        return own_begin(self, args, state, control)

    monkeypatch.setattr(CallbackHandler, "on_train_begin", begin)
    records = run_pipeline(path)
    out = tmp_path / "out"
    assert [(r["command"], r["state"], r["global_step"]) for r in records] == [("sft", "trained", 2),
                                                                             ("grpo", "trained", 2)]
    assert records[1]["model_in"] == str(out / "1-sft")
    base, sft, rl = weights(tiny_model_dir)[name], weights(out / "1-sft")[name], weights(out / "2-rl")[name]
    assert torch.equal(seen["start"], sft) and not torch.equal(sft, base)
    assert rl.shape == sft.shape  # (2 tiny steps: equal rewards within a group give GRPO no gradient, so no change)
    assert "cls_rl" in (out / "2-rl" / "ftplugins_run.json").read_text()


def test_the_chain_recipe_stacks_two_lora_stages(tmp_path, tiny_model_dir, data_dir):
    """recipes/pipelines/lora_chain.yaml, shortened: the second stage saved its own LoRA, and the result loads as the
    base + both in order."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = yaml.safe_load(open(os.path.join(repo, "recipes", "pipelines", "lora_chain.yaml")))
    spec.update(output_dir=str(tmp_path / "out"), model_name_or_path=tiny_model_dir)
    for stage in spec["stages"]:
        stage["args"].update(dataset_name=f"{data_dir}/arithmetic", max_steps=2, save_strategy="no",
                             learning_rate=5e-2)
    records = run_pipeline(write(tmp_path, spec))
    out = tmp_path / "out"
    adapters = [str(out / "1-warm"), str(out / "2-refine")]
    assert records[-1]["model_out"] == {"base": tiny_model_dir, "adapters": adapters}
    one, two = (load_file(os.path.join(a, "adapter_model.safetensors")) for a in adapters)
    assert one.keys() == two.keys() and any(not torch.equal(one[k], two[k]) for k in one)
    assert not torch.allclose(chain_logits(tiny_model_dir, adapters), chain_logits(tiny_model_dir, adapters[:1]))


def test_an_ssf_chain_applies_the_frozen_adapter_first_and_refuses_another_adapter_type(tmp_path, tiny_model_dir,
                                                                                          data_dir, monkeypatch):
    """Our own tuners chain too (SSF scale-and-shift: order matters); PEFT keeps one adapter type per model."""
    seen = {}
    watch_stage_two(monkeypatch, seen)
    args = {**CPU, "plugins": ["ssf"], "dataset_name": f"{data_dir}/arithmetic", "max_steps": 2, "learning_rate": 5e-2}
    path = write(tmp_path, {"output_dir": str(tmp_path / "out"), "model_name_or_path": tiny_model_dir,
                            "chain": "adapters", "stages": [
                                {"name": "a", "command": "sft", "args": args},
                                {"name": "b", "command": "sft", "args": args},
                                {"name": "c", "command": "sft", "args": {**args, **LORA, "plugins": []}}]})
    with pytest.raises(FtpluginsError, match="this stage's adapter cannot join the chain.*same adapter type"):
        run_pipeline(path)
    out = tmp_path / "out"
    adapters = [str(out / "1-a"), str(out / "2-b")]
    assert json.loads((out / MANIFEST).read_text())["stages"][-1]["model_out"]["adapters"] == adapters
    torch.testing.assert_close(seen["begin"]["logits"], chain_logits(tiny_model_dir, adapters[:1]), rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(seen["end"]["logits"], chain_logits(tiny_model_dir, adapters), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_an_adapter_chain_under_accelerate_launch_ends_where_one_process_does(tmp_path, tiny_model_dir, data_dir):
    """Two SSF stages chained under 2 processes: the process group stays up between the stages (torn down and set up
    again, a rank could reach the next rendezvous first and hang), and stage 2's adapter equals one process's."""
    def stages(common):
        ssf = {**common, "plugins": ["ssf"], "learning_rate": 5e-2}
        return [{"name": "a", "command": "sft", "args": ssf}, {"name": "b", "command": "sft", "args": ssf}]

    one_and_two_processes(tmp_path, tiny_model_dir, data_dir, stages, chain="adapters")
    out = tmp_path / "two" / "out"
    assert json.loads((out / MANIFEST).read_text())["stages"][1]["model_out"]["adapters"] == [str(out / "1-a"),
                                                                                                str(out / "2-b")]
    assert json.loads((out / "2-b" / "ftplugins_run.json").read_text())["world_size"] == 2
    a, b = (load_file(str(tmp_path / run / "out" / "2-b" / "adapter_model.safetensors")) for run in ("one", "two"))
    first = load_file(str(tmp_path / "one" / "out" / "1-a" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() == first.keys() and any(not torch.equal(a[k], first[k]) for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
