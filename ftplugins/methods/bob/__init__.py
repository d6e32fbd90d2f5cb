"""BOB ("Beyond OBjects"): fine-tune a text-to-image model on a few real images per class so that it generates
synthetic training data for a fine-grained classifier (*Beyond Objects: Contextual Synthetic Data Generation for
Fine-Grained Classification*; built from the paper's abstract: no code was at hand, and its arXiv id is not recorded
here).

Fine-tuning on few images ties each class to the few backgrounds / poses it was photographed in. BOB writes the
class-agnostic attributes of each real image into its caption during fine-tuning (``bob_template``: ``"a photo
of a {class}, {background}"``), so the model learns them as separate concepts, and marginalises them out at
generation: each synthetic image's attributes are drawn from the pool of the real images' attributes (or from
each attribute's frequency) independently of its class (:mod:`.marginal`).

* Fine-tuning: ``--plugins bob`` on :class:`ftplugins.diffusion.DiffusionTrainer` rewrites the caption column
  (``transform_dataset``) and writes the attribute pool ``bob_attributes.json`` into the output folder
  (``train_begin``). Attributes come from ``bob_attribute_fn`` (``pkg.mod:func``) or dataset columns; no
  captioning model is built in (none is available offline).
* Generation: :func:`generate_synthetic` (Python) or ``ftplugins generate-synthetic`` writes an image-folder
  dataset (images, ``metadata.jsonl`` with class labels, ``bob_report.json``).
"""

from ftplugins.distributed_reasons import DIFFUSION_DEEPSPEED, DIFFUSION_FSDP
from ftplugins.errors import FtpluginsError
from ftplugins.plugin import Plugin, hookimpl

from .options import BobOptions

STATE = "bob"


def generate_synthetic(pipeline, pool, output_dir, per_class, **kwargs):
    """See :func:`ftplugins.methods.bob.synthetic.generate_synthetic` (imports torch lazily)."""
    from .synthetic import generate_synthetic as _generate

    return _generate(pipeline, pool, output_dir, per_class, **kwargs)


class BobPlugin(Plugin):
    name = "bob"
    summary = ("BOB: class-agnostic attributes in the captions while fine-tuning a text-to-image model, "
               "marginalised out when generating synthetic classifier data")
    paper = "Beyond Objects: Contextual Synthetic Data Generation for Fine-Grained Classification (BOB)"
    options = BobOptions
    trainers = ("DiffusionTrainer",)
    requires = {"diffusers": "pip install 'ftplugins[diffusion]'"}
    claims = {"captions": "writes every training caption from bob_template"}
    distributed = ("single", "ddp")
    distributed_refusals = {"fsdp": DIFFUSION_FSDP, "deepspeed": DIFFUSION_DEEPSPEED}  # captions: any mode

    def add_commands(self, subparsers):
        """``ftplugins generate-synthetic``."""
        from .cli import add_subparser

        add_subparser(subparsers)

    @hookimpl
    def validate(self, run):
        opts = run.options_for(self) or BobOptions()
        if opts.bob_attribute_fn:
            from ftplugins.data.importing import import_callable

            import_callable("bob_attribute_fn", opts.bob_attribute_fn)

    def input_columns(self, options, split):
        """The class column and one column per template attribute (the image instead, with ``bob_attribute_fn``)."""
        from .template import CaptionTemplate

        opts = options or BobOptions()
        attributes = ["image"] if opts.bob_attribute_fn else CaptionTemplate(opts.bob_template).attributes
        return [opts.bob_class_column, *attributes]

    @hookimpl
    def transform_dataset(self, run, dataset, split):
        from .attributes import caption_rows, class_names, extract
        from .template import CaptionTemplate

        opts = run.options_for(self) or BobOptions()
        template = CaptionTemplate(opts.bob_template)
        attribute_fn = None
        if opts.bob_attribute_fn:
            from ftplugins.data.importing import import_callable

            attribute_fn = import_callable("bob_attribute_fn", opts.bob_attribute_fn)
        image_column = getattr(run.args, "image_column", "image") or "image"
        rows = extract(dataset, template, opts.bob_class_column, image_column, attribute_fn)
        if split == "train":
            names = class_names(dataset, opts.bob_class_column)
            run.state[STATE] = {"rows": rows, "classes": names or sorted({r["class"] for r in rows})}
        return caption_rows(dataset, rows, template, getattr(run.args, "caption_column", "caption") or "caption")

    @hookimpl
    def train_begin(self, run, trainer, resume_from_checkpoint):
        from .attributes import AttributePool

        state = run.state.get(STATE)
        if state is None:
            raise FtpluginsError("bob: the trainer has no training dataset, so no attribute pool; pass "
                                 "train_dataset= (real images with their class and attributes).")
        if trainer.args.should_save:
            opts = run.options_for(self) or BobOptions()
            AttributePool(opts.bob_template, state["classes"], state["rows"]).save(trainer.args.output_dir)


plugin = BobPlugin()
