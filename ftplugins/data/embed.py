"""Per-row embeddings: a sentence encoder (mean pooling) or the model being fine-tuned (mean of the last
hidden state over response tokens), batched, with a progress bar, cached in resumable chunks.

The cache key is (encoder fingerprint, dataset fingerprint, text field/columns, pooling, max length):
a second run with the same inputs reads every chunk and runs no forward pass; an interrupted run
recomputes only the chunks it had not finished (:mod:`.cache`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cache import ChunkedArrayCache, cache_key, chunked_rows
from .source import as_text, content_fingerprint, iter_batches
from .tokens import batch_rows, pad_batch, row_tokens

MINILM = "minilm"


def _device(name: str | None):
    from .devices import AUTO, compute_device

    return compute_device(name or AUTO)


class SentenceEncoder:
    """A Hugging Face encoder (path or Hub id; ``minilm``: the all-MiniLM-L6-v2 the tests use), mean-pooled
    over tokens and L2-normalised as sentence-transformers does for MiniLM."""

    pooling = "mean"

    def __init__(self, name_or_path: str = MINILM, text_field: str = "text", max_length: int = 256,
                 device: str | None = None):
        if name_or_path == MINILM:
            from ftplugins.testing import minilm_path

            name_or_path = minilm_path()
        self.name_or_path, self.columns, self.max_length, self.device = name_or_path, [text_field], max_length, device
        self._model = self._tokenizer = None

    def fingerprint(self) -> str:
        if os.path.isdir(self.name_or_path):
            from .fingerprint import folder_fingerprint

            return "dir:" + folder_fingerprint(self.name_or_path)
        from .fingerprint import model_fingerprint

        return f"{self.name_or_path}:{model_fingerprint(self.model)}"

    @property
    def model(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            self._model = AutoModel.from_pretrained(self.name_or_path).to(_device(self.device)).eval()
        return self._model

    def encode(self, batch: dict[str, list]) -> np.ndarray:
        import torch

        model = self.model
        texts = [as_text(v) for v in batch[self.columns[0]]]
        inputs = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(model.device)
        with torch.inference_mode():
            hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()


class ModelEncoder:
    """The causal LM being fine-tuned: mean of its last hidden state over each row's response tokens."""

    pooling = "mean-response"

    def __init__(self, model: Any, tokenizer: Any, columns: list[str], max_length: int = 256):
        self.model, self.tokenizer, self.columns, self.max_length = model, tokenizer, columns, max_length

    def fingerprint(self) -> str:
        from .fingerprint import model_fingerprint

        name = getattr(getattr(self.model, "config", None), "_name_or_path", "")
        return f"model:{name}:{model_fingerprint(self.model)}:vocab{len(self.tokenizer)}"

    def encode(self, batch: dict[str, list]) -> np.ndarray:
        import torch

        tokenized = [row_tokens(self.tokenizer, row, self.max_length) for row in batch_rows(batch)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, attention, response = pad_batch(tokenized, pad)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 output_hidden_states=True)
        finally:
            self.model.train(was_training)
        hidden = out.hidden_states[-1].float()
        mask = response.to(device).unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()


@dataclass
class Embeddings:
    vectors: np.ndarray  # [rows, dim] float32
    key: str
    folder: str | None


def embed(dataset: Any, encoder: Any, cache_root: str | None, batch_size: int = 64, chunk_rows: int = 1024,
          show_progress: bool = True, desc: str = "embedding") -> Embeddings:
    """Embed every row of ``dataset`` with ``encoder`` (``.columns``, ``.encode(batch)``, ``.fingerprint()``)."""
    from tqdm.auto import tqdm

    key = cache_key({
        "encoder": encoder.fingerprint(),
        "data": content_fingerprint(dataset, encoder.columns),
        "columns": encoder.columns,
        "pooling": encoder.pooling,
        "max_length": encoder.max_length,
    })
    cache = ChunkedArrayCache(cache_root, key, {"columns": encoder.columns, "rows": len(dataset)}, chunk_rows)

    def compute(start: int, stop: int) -> np.ndarray:
        parts = [encoder.encode(batch) for batch in iter_batches(dataset, encoder.columns, batch_size, start, stop)]
        return np.concatenate(parts, axis=0).astype(np.float32)

    with tqdm(total=len(dataset), desc=desc, unit="row", disable=not show_progress) as progress:
        vectors = chunked_rows(len(dataset), chunk_rows, cache, compute, progress)
    return Embeddings(vectors=vectors, key=key, folder=cache.folder)


def make_encoder(settings: Any, context: Any, columns: list[str]) -> Any:
    """The encoder ``settings.encoder`` names: ``model`` (the model being fine-tuned), ``gradients`` (its projected
    per-row gradients, :mod:`.gradients`) or an HF encoder."""
    if settings.encoder in ("model", "gradients"):
        from ftplugins.errors import FtpluginsError

        from .tokens import model_columns

        if context.model is None or context.tokenizer is None:
            raise FtpluginsError(
                f"encoder={settings.encoder!r} uses the model being fine-tuned, but no model/tokenizer was given; pass "
                "--model PATH (ftplugins select) or model= and tokenizer= (Python), or use a sentence encoder."
            )
        rows = model_columns(columns, settings.text_field)
        if settings.encoder == "gradients":
            from .gradients import GradientEncoder

            return GradientEncoder(context.model, context.tokenizer, rows, dim=getattr(settings, "gradient_dim", 8192),
                                   seed=settings.seed, max_length=settings.max_length)
        return ModelEncoder(context.model, context.tokenizer, rows, settings.max_length)
    return SentenceEncoder(settings.encoder, settings.text_field, settings.max_length, device=settings.device)


def embed_pool(dataset: Any, settings: Any, context: Any, desc: str = "embedding", encoder: Any = None
               ) -> Embeddings:
    """:func:`embed` with a run's settings (encoder, batch size, cache) -- the form every method uses."""
    from .pipeline import cache_root

    encoder = encoder or make_encoder(settings, context, list(dataset.column_names))
    return embed(dataset, encoder, cache_root(settings), settings.batch_size, settings.chunk_rows,
                 context.show_progress, desc)
