"""Every hook of ftplugins, in the order a run calls them.

This file is the table of contents of the system. A *run* is one trainer built and trained with a
set of plugins. Plugins are called in the order the user listed them (``--plugins a,b`` calls ``a``
first); every hook takes keyword arguments only, and ``run`` (a :class:`ftplugins.context.Run`)
is always among them: it carries the selected plugins, their options (``run.options_for(plugin)``),
the training arguments, the processing class and a per-run ``state`` dict.

How the answers of several plugins combine is part of each hook's contract and is written in the
spec (``combine=``) so that :meth:`Run.call` applies it:

* ``all``      - every plugin is called; return values are ignored.
* ``merge``    - dict answers are merged; the same key with two different values is an error.
* ``single``   - at most one plugin may answer (return non-``None``); two answers are an error.
* ``chain``    - each plugin receives the previous plugin's result in the argument named by
                 ``arg=`` and returns the new value (``None`` means "unchanged").
* ``concat``   - list answers are concatenated in plugin order.

Order of a run (``ftplugins.compose`` and everything built on it):

1. ``trainer_mixins``   when the trainer class is composed (the class must exist before it is built)
2. ``validate``         first thing in the trainer's ``__init__``
3. ``patch_before_model_load``
4. ``model_init_kwargs``
5. ``peft_config``
6. ``transform_dataset`` once per dataset split (``train``, then each eval split)
7. ``reward_funcs``
8. ``callbacks``
   -- the base trainer's own ``__init__`` runs here (TRL applies the adapter and tokenizes) --
9. ``prepare_model``
10. ``data_collator``
11. ``create_optimizer`` when training starts
12. ``post_train``      exactly once per process, after ``train()`` returns
"""

from __future__ import annotations

import pluggy

PROJECT = "ftplugins"
hookspec = pluggy.HookspecMarker(PROJECT)

COMBINE: dict[str, tuple[str, str | None]] = {}
ORDER: list[str] = []


def spec(combine: str, arg: str | None = None):
    """Declare a hook and how the answers of several plugins combine."""

    def register(func):
        COMBINE[func.__name__] = (combine, arg)
        ORDER.append(func.__name__)
        return hookspec(func)

    return register


@spec("concat")
def trainer_mixins(run):
    """Return a list of mixin classes to put in front of the base trainer class.

    Called once when the trainer class is composed. Mixins are composed over the base trainer in
    plugin order (the first plugin's mixin is outermost) and must call ``super()`` in every
    method they override (``compute_loss``, ``training_step``, ...) so that they stack.
    """


@spec("all")
def validate(run):
    """Check options, arguments and combinations before anything heavy happens.

    Raise :class:`ftplugins.errors.FtpluginsError` (or a subclass) with a message that names the
    problem and the fix, e.g. an unsupported distributed mode or an incompatible plugin pair.
    """


@spec("all")
def patch_before_model_load(run):
    """Apply class-level patches (kernels) that must be in place before the model is created."""


@spec("merge")
def model_init_kwargs(run):
    """Return a dict of keyword arguments for ``from_pretrained`` (e.g. ``attn_implementation``).

    Only meaningful when the trainer receives a model *path*; answering when the model is already
    built is an error, because the answer could not take effect.
    """


@spec("single")
def peft_config(run, model):
    """Return a ``peft.PeftConfig`` for ``model`` (the adapter this method trains), or ``None``.

    Handed to the trainer as its ``peft_config=`` argument (TRL trainers) or applied with
    ``peft.get_peft_model`` (trainers without one). Combined with a user's own ``peft_config``
    it is an error: one adapter per run.
    """


@spec("chain", arg="dataset")
def transform_dataset(run, dataset, split):
    """Return a new dataset for ``split`` (``"train"`` or the eval split's name): selection,
    packing, augmentation. Runs on the raw dataset, before the trainer tokenizes it."""


@spec("concat")
def reward_funcs(run):
    """Return a list of reward functions for trainers that take ``reward_funcs`` (GRPO).

    Added after the user's own. Contributing rewards to a trainer without them is an error.
    """


@spec("concat")
def callbacks(run):
    """Return a list of ``transformers.TrainerCallback`` added after the user's callbacks."""


@spec("chain", arg="model")
def prepare_model(run, model):
    """Return the model to train (freezing, masks, wrapping, new tokens); ``None`` = unchanged.

    Called after the trainer applied adapters and before the optimizer exists.
    """


@spec("chain", arg="collator")
def data_collator(run, collator):
    """Return a collator that wraps ``collator`` (the trainer's own, built by TRL)."""


@spec("single")
def create_optimizer(run, model, args):
    """Return a ``torch.optim.Optimizer`` for ``model`` or ``None`` to keep the trainer's.

    At most one plugin may answer. The learning-rate scheduler is built by the trainer around it.
    """


@spec("all")
def post_train(run, trainer):
    """Called exactly once per process after ``trainer.train()`` returns (merge, export, report)."""
