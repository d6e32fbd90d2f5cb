"""Shared fixtures: offline environment, tiny model folders, trainer arguments."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A child process (every launched rank) that dies of a signal prints its Python threads' stacks: the next
# intermittent crash in CI names where it happened.
os.environ.setdefault("PYTHONFAULTHANDLER", "1")

import sys  # noqa: E402

# The optional kernel distribution (kernels/, import name ftplugins_kernels) of this checkout, first on the path as
# ftplugins itself is: the tests run the kernels next to them even where an older copy is installed (make test
# installs it editable, so CI runs the same files).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels"))

import pytest  # noqa: E402

from ftplugins import hookimpl  # noqa: E402
from ftplugins.hookspecs import ORDER  # noqa: E402
from ftplugins.plugin import Plugin  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny shapes: one intra-op thread is faster, and OpenMP's second thread only spins on a busy shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A saved tiny Llama + tokenizer (for paths given to TRL scripts)."""
    from ftplugins.testing import save_tiny_llama

    return save_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def quantizable_model_dir(tmp_path_factory) -> str:
    """A saved tiny Llama of realistic widths for bitsandbytes (see ``ftplugins.testing.QUANTIZABLE_WIDTHS``)."""
    from ftplugins.testing import QUANTIZABLE_WIDTHS, save_tiny_llama

    return save_tiny_llama(str(tmp_path_factory.mktemp("quantizable-llama")), **QUANTIZABLE_WIDTHS)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    from ftplugins.testing import write_builtin_datasets

    root = str(tmp_path_factory.mktemp("data"))
    write_builtin_datasets(root)
    return root


@pytest.fixture(scope="session")
def tiny_diffusion_dir(tmp_path_factory) -> str:
    """A saved tiny text-to-image pipeline (``ftplugins tiny-model --kind diffusion``)."""
    pytest.importorskip("diffusers")
    from ftplugins.diffusion.tiny import save_tiny_pipeline

    return save_tiny_pipeline(str(tmp_path_factory.mktemp("tiny-diffusion")))


@pytest.fixture(scope="session")
def diffusion_data_dir(tmp_path_factory) -> str:
    """A folder holding ``shapes/`` and ``backgrounds/``, the image folders of ``ftplugins tiny-data --kind diffusion``."""
    pytest.importorskip("diffusers")
    from ftplugins.diffusion.tiny import write_diffusion_datasets

    root = str(tmp_path_factory.mktemp("diffusion-data"))
    write_diffusion_datasets(root)
    return root


def overlay_venv(path) -> str:
    """A throwaway virtual environment at ``path`` that sees this interpreter's packages (torch, TRL, ftplugins,
    pip, setuptools) and installs into its own site-packages: ``pip install`` of a local package really installs
    it (its entry points included), offline, without touching the test environment. Returns its python."""
    import glob
    import site
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(str(path))
    own = glob.glob(os.path.join(str(path), "lib", "python*", "site-packages"))[0]
    # A venv of a venv does not see the outer one's packages (--system-site-packages means the base Python's):
    # a .pth line that starts with "import" runs at start-up, and addsitedir also runs the outer .pth files
    # (an editable install of ftplugins).
    with open(os.path.join(own, "_outer_site.pth"), "w") as handle:
        handle.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages()) + "\n")
    return os.path.join(str(path), "bin", "python")


#: pip's flags for installing a local package offline into an :func:`overlay_venv`.
OFFLINE_PIP = ("--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check", "-q")


def cpu_args(config_cls, output_dir, **overrides):
    """Training arguments that run on 2 CPU cores in seconds."""
    values = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return config_cls(**values)


class RecordingPlugin(Plugin):
    """Implements every hook and records each call (the contract test's witness)."""

    name = "recorder"
    summary = "records hook calls"
    paper = "n/a"

    def __init__(self):
        self.calls: list[str] = []

    def _rec(self, hook, **info):
        self.calls.append(hook)

    @hookimpl
    def trainer_mixins(self, run):
        self._rec("trainer_mixins")
        return []

    @hookimpl
    def validate(self, run):
        self._rec("validate")

    @hookimpl
    def patch_before_model_load(self, run):
        self._rec("patch_before_model_load")

    @hookimpl
    def model_init_kwargs(self, run):
        self._rec("model_init_kwargs")
        return {}

    @hookimpl
    def peft_config(self, run, model):
        self._rec("peft_config")

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        self._rec("transform_dataset")
        return dataset

    @hookimpl
    def reward_funcs(self, run):
        self._rec("reward_funcs")
        return []

    @hookimpl
    def callbacks(self, run):
        self._rec("callbacks")
        return []

    @hookimpl
    def prepare_model(self, run, model):
        self._rec("prepare_model")
        return model

    @hookimpl
    def data_collator(self, run, collator):
        self._rec("data_collator")
        return collator

    @hookimpl
    def create_optimizer(self, run, model, args):
        self._rec("create_optimizer")

    @hookimpl
    def post_train(self, run, trainer):
        self._rec("post_train")


@pytest.fixture
def recorder() -> RecordingPlugin:
    return RecordingPlugin()


ALL_HOOKS = list(ORDER)


class TaggedRecorder(RecordingPlugin):
    """A recorder with one option, registered as an installed entry point for CLI tests."""

    from dataclasses import dataclass as _dc
    from dataclasses import field as _field

    @_dc
    class Options:
        recorder_tag: str = "default"

    options = Options

    def __init__(self):
        super().__init__()
        self.runs = []

    @hookimpl
    def post_train(self, run, trainer):
        self._rec("post_train")
        self.runs.append(run)


@pytest.fixture
def recorder_entry_point(monkeypatch):
    """Make `recorder` resolvable by name, as if a package had registered it."""
    from importlib.metadata import EntryPoint

    from ftplugins import registry

    plugin = TaggedRecorder()
    eps = dict(registry.available_entry_points())
    eps["recorder"] = EntryPoint(name="recorder", value="conftest:TaggedRecorder", group="ftplugins")
    monkeypatch.setattr(registry, "available_entry_points", lambda: eps)
    monkeypatch.setitem(registry._loaded, "recorder", plugin)
    return plugin
