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
* ``any``      - true when any plugin answers true.
* ``enter``    - each plugin returns a context manager (or ``None``); they are entered in plugin
                 order around the phase and exited in reverse order, also when it raises.
* ``wrap``     - each plugin receives, in the argument named by ``arg=``, a callable that runs the
                 rest of the chain (the next plugin, and at the end the trainer's own method) and
                 returns what that returns; it may call it with changed arguments
                 (``inner(inputs=...)``), or not at all. The first plugin is the outermost wrapper.

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
   -- ``trainer.train()``: --
11. ``phase``            entered with ``phase="train"`` around all of ``train()`` (``"evaluate"`` /
                         ``"predict"`` around those calls, also inside training)
12. ``train_begin``      before the base trainer's ``train()``: no checkpoint loaded, no optimizer yet
13. ``dataset_columns``  when the trainer builds a dataloader and drops unused columns
14. ``create_optimizer`` when training starts
15. ``skip_ddp_wrapper`` when the trainer prepares the model for training (after the optimizer)
16. ``load_optimizer_state`` only when resuming, before the checkpoint's optimizer state is loaded
17. ``compute_loss``     once per micro-batch
18. ``grad_norm``        once per optimizer step, before ``optimizer.step()``
19. ``save_checkpoint``  once per checkpoint, while it is written (before it is sealed and moved into place)
20. ``post_train``       exactly once per process, after ``train()`` returns

``trainer_mixins`` is for the rare case no hook covers: a method is its hooks.
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
    """Return a list of mixin classes to put in front of the base trainer class (the rare case).

    Prefer the hooks below (``phase``, ``train_begin``, ``compute_loss``, ``grad_norm``, ...): a
    mixin overrides Trainer methods, whose internals change between releases. Called once when the
    trainer class is composed. Mixins are composed over the base trainer in plugin order (the first
    plugin's mixin is outermost) and must call ``super()`` in every method they override so that
    they stack.
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


@spec("enter")
def phase(run, trainer, phase):
    """Return a context manager to hold around a phase of the trainer, or ``None``.

    ``phase`` is ``"train"`` (all of ``trainer.train()``, from before ``train_begin`` to after
    ``post_train``), ``"evaluate"`` or ``"predict"`` (the trainer's ``evaluate()`` / ``predict()``,
    which also run inside training). Entered once per call of that method; phases nest.
    """


@spec("all")
def train_begin(run, trainer, resume_from_checkpoint):
    """Called once at the start of ``trainer.train()``, before the base trainer's ``train()``.

    No checkpoint has been loaded and no optimizer exists yet: the place for work on the initial
    weights (reference log-probs). ``resume_from_checkpoint`` is the argument given to ``train()``,
    resolved: ``True`` becomes the path of the last *whole* checkpoint (``ftplugins.checkpoints``), or stays
    ``True`` when there is none; otherwise a path, or ``None`` / ``False``.
    """


@spec("concat")
def dataset_columns(run, trainer):
    """Return the names of dataset columns the trainer must keep for the collator.

    Called each time the trainer builds a dataloader and drops the columns its model's forward does
    not take (``remove_unused_columns``); the names are kept beside the trainer's own.
    """


@spec("single")
def create_optimizer(run, model, args):
    """Return a ``torch.optim.Optimizer`` for ``model`` or ``None`` to keep the trainer's.

    At most one plugin may answer. The learning-rate scheduler is built by the trainer around it.
    Called once when ``train()`` creates the optimizer, after ``train_begin``. An optimizer given
    to the trainer (``optimizers=``) is refused when a plugin builds one under its options
    (``Plugin.builds_optimizer``: by default, whenever it implements this hook).
    """


@spec("any")
def skip_ddp_wrapper(run, trainer):
    """Return ``True`` when the model must not be wrapped in ``DistributedDataParallel``.

    Called once per ``train()`` when the trainer prepares the model (after ``create_optimizer``).
    For methods that reduce their gradients across processes themselves (DDP's reducer would hold
    a dense copy of every trained gradient); Accelerate still places the model and applies mixed
    precision. The plugin must then make the processes start equal and average the gradients.
    """


@spec("all")
def load_optimizer_state(run, trainer, checkpoint):
    """Called when ``train()`` resumes, before the optimizer and scheduler state of ``checkpoint``
    (a folder) are loaded: re-create what the optimizer's parameter groups depended on at save
    time. Never called for a run that does not resume."""


@spec("wrap", arg="inner")
def compute_loss(run, trainer, model, inputs, return_outputs, num_items_in_batch, inner):
    """Return the loss of one micro-batch, as the trainer's ``compute_loss`` returns it.

    ``inner(**changes)`` computes it the way the rest of the chain would (at the end the trainer's
    own ``compute_loss``), with any of ``model``, ``inputs``, ``return_outputs``,
    ``num_items_in_batch`` replaced: wrap it (reweight, add a term, pop a column the model does not
    take) or replace it. Called once per micro-batch, in training and in evaluation
    (``model.training`` tells which).
    """


@spec("single")
def grad_norm(run, trainer, model):
    """Return this optimizer step's gradient norm when the plugin computes it, or ``None``.

    Called once per optimizer step, before ``optimizer.step()``. An answer replaces the trainer's
    norm of the dense ``.grad`` tensors *and* its clipping to ``max_grad_norm``: for optimizers that
    keep their gradients elsewhere and clip by this norm themselves. At most one plugin may answer.
    """


@spec("all")
def save_checkpoint(run, trainer, checkpoint):
    """Called once per checkpoint on every process, after the trainer wrote its own files into the folder
    ``checkpoint`` and before ftplugins seals it and moves it into place: what a plugin writes there is part of the
    whole checkpoint (:mod:`ftplugins.checkpoints`). For state outside the model and the optimizer (an EMA teacher);
    write on the saving process (``trainer.args.should_save``) and read it back in ``load_optimizer_state``."""


@spec("all")
def post_train(run, trainer):
    """Called exactly once per process after ``trainer.train()`` returns (merge, export, report)."""
