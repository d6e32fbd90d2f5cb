"""`ftplugins delta` with bad files, occupied outputs and the wrong base: one line each, never a traceback,
and never a model folder that mixes two saves (issue 21, section 4)."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_sparse_delta import perturbed_model_dir

from ftplugins.cli import main
from ftplugins.sparse.base_record import CONFIG_KEY, TENSORS_KEY
from ftplugins.sparse.delta import DeltaTensor, SparseDelta, save_delta
from ftplugins.testing import save_tiny_llama

Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(str(tmp_path_factory.mktemp("base") / "model"))


@pytest.fixture
def delta_path(base_dir, tmp_path):
    delta, _ = perturbed_model_dir(base_dir, tmp_path, 1)
    return save_delta(delta, str(tmp_path / "d.safetensors"))


def one_line_error(capsys, argv):
    """Run the CLI, expect exit status 2 and a single `ftplugins: error:` line; return it."""
    capsys.readouterr()  # what came before (progress bars of earlier steps)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ftplugins: error: "), err
    return err[0]


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_unreadable_delta_files(damage, base_dir, delta_path, tmp_path, capsys):
    data = open(delta_path, "rb").read()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a delta at all\n"}[damage])
    line = one_line_error(capsys, ["delta", "apply", base_dir, str(bad), "-o", str(tmp_path / "out")])
    assert "bad.safetensors" in line and "is not a readable safetensors file" in line
    line = one_line_error(capsys, ["delta", "compose", str(bad), delta_path, "-o", str(tmp_path / "c.safetensors")])
    assert "is not a readable safetensors file" in line


def test_a_header_without_shapes(base_dir, tmp_path, capsys):
    path = str(tmp_path / "noshapes.safetensors")
    save_file({"delta_values/w": torch.ones(2, dtype=torch.float64)}, path,
              metadata={"format": "ftplugins.sparse_delta"})
    line = one_line_error(capsys, ["delta", "apply", base_dir, path, "-o", str(tmp_path / "out")])
    assert "has no valid 'shapes' record" in line


def test_a_folder_given_as_the_delta(base_dir, delta_path, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    os.link(delta_path, folder / "sparse_delta.safetensors")
    line = one_line_error(capsys, ["delta", "apply", base_dir, str(folder), "-o", str(tmp_path / "out")])
    assert "is a folder; expected a delta file" in line and "did you mean" in line


def test_outputs_that_are_taken(base_dir, delta_path, tmp_path, capsys):
    taken = tmp_path / "file.txt"
    taken.write_text("mine")
    assert "is a file; expected a folder" in one_line_error(
        capsys, ["delta", "apply", base_dir, delta_path, "-o", str(taken)])
    assert "is a folder; expected a file path" in one_line_error(
        capsys, ["delta", "compose", delta_path, "-o", str(tmp_path)])
    assert "exists; choose another name, or pass --overwrite" in one_line_error(
        capsys, ["delta", "compose", delta_path, "-o", str(taken)])
    main(["delta", "compose", delta_path, "-o", str(taken), "--overwrite"])
    assert taken.read_bytes() != b"mine"


def test_a_folder_holding_a_sharded_model_is_refused_then_replaced_whole(base_dir, delta_path, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    AutoModelForCausalLM.from_pretrained(base_dir).save_pretrained(str(out), max_shard_size="100KB")
    shards = sorted(n for n in os.listdir(out) if n.endswith(".safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    line = one_line_error(capsys, ["delta", "apply", base_dir, delta_path, "-o", str(out)])
    assert "is not empty" in line and "--overwrite" in line
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before  # untouched
    main(["delta", "apply", base_dir, delta_path, "-o", str(out), "--overwrite"])
    assert sorted(os.listdir(out)) == sorted(os.listdir(base_dir))  # exactly the new model: no stale shard or index
    fresh = tmp_path / "fresh"
    main(["delta", "apply", base_dir, delta_path, "-o", str(fresh)])
    assert load_file(str(out / "model.safetensors")).keys() == load_file(str(fresh / "model.safetensors")).keys()
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, load_file(str(fresh / "model.safetensors"))[Q])


def test_the_base_is_recorded_and_checked(base_dir, delta_path, tmp_path, capsys):
    with safe_open(delta_path, framework="pt") as handle:
        header = handle.metadata()
    assert set(json.loads(header[TENSORS_KEY])) == {Q, "model.layers.1.mlp.down_proj.weight"}
    other = save_tiny_llama(str(tmp_path / "other"), seed=1)  # same architecture, other weights
    line = one_line_error(capsys, ["delta", "apply", other, delta_path, "-o", str(tmp_path / "x")])
    assert "was made from another base model" in line and Q in line
    assert not (tmp_path / "x" / "model.safetensors").exists()

    inplace = tmp_path / "inplace"
    main(["delta", "apply", base_dir, delta_path, "-o", str(inplace)])
    main(["delta", "revert", str(inplace), delta_path, "-o", str(tmp_path / "back")])  # base + delta: reverts
    back, base = load_file(str(tmp_path / "back" / "model.safetensors")), load_file(f"{base_dir}/model.safetensors")
    assert all(torch.equal(back[k], base[k]) for k in base)
    line = one_line_error(capsys, ["delta", "apply", str(inplace), delta_path, "-o", str(inplace), "--overwrite"])
    assert "was applied to this model already" in line  # twice in place is refused
    line = one_line_error(capsys, ["delta", "revert", base_dir, delta_path, "-o", str(tmp_path / "y")])
    assert "does not give back its base" in line  # reverting what was never applied
    forced = tmp_path / "forced"
    main(["delta", "apply", other, delta_path, "-o", str(forced), "--no-base-check"])
    assert (forced / "model.safetensors").exists()


def test_another_config_is_refused(base_dir, delta_path, tmp_path, capsys):
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(base_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (changed / "config.json").write_text(json.dumps(config))
    with safe_open(delta_path, framework="pt") as handle:
        assert CONFIG_KEY not in handle.metadata()  # diff_delta knows no config...
    from ftplugins.sparse.delta import load_delta

    delta = load_delta(delta_path)
    from transformers import AutoConfig

    from ftplugins.sparse import base_record

    delta.metadata = base_record.record(delta.metadata, json.loads(delta.metadata[TENSORS_KEY]),
                                        AutoConfig.from_pretrained(base_dir))  # ...a trained delta does
    path = save_delta(delta, str(tmp_path / "with_config.safetensors"))
    main(["delta", "apply", base_dir, path, "-o", str(tmp_path / "ok")])
    line = one_line_error(capsys, ["delta", "apply", str(changed), path, "-o", str(tmp_path / "no")])
    assert "made from a model with another config" in line


def test_an_old_delta_without_a_record_applies_with_a_warning(base_dir, delta_path, tmp_path, caplog):
    from ftplugins.sparse.delta import load_delta

    delta = load_delta(delta_path)
    delta.metadata.pop(TENSORS_KEY)
    old = save_delta(delta, str(tmp_path / "old.safetensors"))
    with caplog.at_level(logging.WARNING, logger="ftplugins.sparse"):
        main(["delta", "apply", base_dir, old, "-o", str(tmp_path / "out")])
    assert any("carries no record of its base" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_non_finite_values_are_refused(base_dir, tmp_path, capsys):
    nan = SparseDelta({Q: DeltaTensor((64, 64), torch.tensor([0, 5]), torch.tensor([1.0, float("nan")],
                                                                                    dtype=torch.float64))})
    with pytest.raises(Exception, match="NaN or infinite"):
        save_delta(nan, str(tmp_path / "nan.safetensors"))
    path = str(tmp_path / "inf.safetensors")
    save_file({f"delta_values/{Q}": torch.tensor([1.0, float("inf")], dtype=torch.float64),
               f"delta_indices/{Q}": torch.tensor([0, 5], dtype=torch.int32)}, path,
              metadata={"format": "ftplugins.sparse_delta", "version": "1", "shapes": json.dumps({Q: [64, 64]})})
    line = one_line_error(capsys, ["delta", "apply", base_dir, path, "-o", str(tmp_path / "out")])
    assert "values hold NaN or infinity" in line


def test_a_trained_delta_applies_to_its_base_folder_and_only_once(tmp_path, capsys):
    """End to end: the record written at the end of training matches the base folder it was loaded from."""
    from conftest import cpu_args
    from trl import SFTConfig, SFTTrainer

    import ftplugins
    from ftplugins.testing import arithmetic_dataset, tiny_tokenizer

    base = save_tiny_llama(str(tmp_path / "base"))
    cls = ftplugins.compose(SFTTrainer, ["lift"])
    trainer = cls(model=base, args=cpu_args(SFTConfig, tmp_path / "run", learning_rate=1e-2),
                  train_dataset=arithmetic_dataset(8), processing_class=tiny_tokenizer())
    trainer.train()
    trainer.save_model()
    delta = str(tmp_path / "run" / "sparse_delta.safetensors")
    with safe_open(delta, framework="pt") as handle:
        assert CONFIG_KEY in handle.metadata() and TENSORS_KEY in handle.metadata()
    main(["delta", "apply", base, delta, "-o", str(tmp_path / "tuned")])
    tuned, trained = load_file(str(tmp_path / "tuned" / "model.safetensors")), load_file(
        str(tmp_path / "run" / "model.safetensors"))
    assert tuned.keys() == trained.keys() and all(torch.equal(tuned[k], trained[k]) for k in tuned)
    line = one_line_error(capsys, ["delta", "apply", str(tmp_path / "run"), delta, "-o", str(tmp_path / "twice")])
    assert "was applied to this model already" in line


def test_stacked_deltas_from_different_bases_compose_with_a_warning(caplog):
    """LT-SFT trains its task delta on base + a language delta: composing the two is legitimate, so the tensors
    their records disagree on go unchecked (with a warning), while the task delta alone is refused on the base."""
    from test_sparse_delta import base_weights, copy_of, fine_tuned

    from ftplugins.sparse.base_record import WrongBaseError
    from ftplugins.sparse.delta import apply_delta, compose_deltas, diff_delta

    base = base_weights()
    language = fine_tuned(base, seed=1)
    task = fine_tuned(language, seed=2)
    d_language, d_task = diff_delta(language, base), diff_delta(task, language)
    with pytest.raises(WrongBaseError, match="another base model"):
        apply_delta(copy_of(base), d_task)
    with caplog.at_level(logging.WARNING, logger="ftplugins.sparse"):
        both = compose_deltas([d_language, d_task])
    assert any("made from different bases" in r.getMessage() for r in caplog.records)
    stacked = apply_delta(copy_of(base), both)
    assert all(torch.allclose(stacked[k], task[k]) for k in base)


def test_base_checksum_is_the_whole_float64_stream_whatever_the_chunk():
    """The digest is sha256(shape, then every value as little-endian float64), so deltas written before the chunk
    shrank (4M elements -> 64K, to keep the end-of-run checksums out of the training peak) still match; hashing
    a float64 tensor leaves it untouched (its -0.0 included)."""
    import hashlib
    import json

    import torch

    from ftplugins.sparse import base_record

    values = torch.randn(3, base_record._CHUNK + 7, dtype=torch.float64)
    values[0, 0] = -0.0
    reference = hashlib.sha256(json.dumps([3, base_record._CHUNK + 7]).encode())
    reference.update((values + 0.0).numpy().astype("<f8").tobytes())
    before = values.clone()
    assert base_record.tensor_sha256(values) == reference.hexdigest()
    assert torch.equal(values, before) and torch.signbit(values[0, 0])
    half = values.to(torch.bfloat16)
    assert base_record.tensor_sha256(half) == base_record.tensor_sha256(half.float())  # bf16 on disk, fp32 in training
