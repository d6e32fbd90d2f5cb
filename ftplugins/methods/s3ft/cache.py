"""The constructed targets on disk, one JSONL file per generation batch, so construction resumes.

Layout: ``CACHE_DIR/<key>/chunk-000000.jsonl``, ... and ``meta.json``. ``<key>`` is a hash of everything
that decides the targets (model identity and weights fingerprint, tokenizer, judge, options, the rows), so a
changed input never reuses stale targets. Each chunk is published atomically with
:func:`ftplugins.atomic.staged_dir`: a crash leaves whole chunks or nothing, and two processes writing the
same chunk (identical, greedy) at once cannot corrupt it. On resume, chunks present are read back and only
the missing ones are generated.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ftplugins.atomic import staged_dir

CACHE_VERSION = 1


def weights_fingerprint(model: Any) -> str:
    """A cheap fingerprint of the weights: per tensor its sum and a few values (not a full hash)."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not torch.is_floating_point(tensor) or tensor.device.type == "meta":
                digest.update(f"{name}:{tuple(tensor.shape)}".encode())
                continue
            flat = tensor.detach().reshape(-1)
            head = flat[:8].double().tolist()
            digest.update(f"{name}:{tuple(tensor.shape)}:{flat.double().sum().item():.10e}:{head}".encode())
    return digest.hexdigest()


def cache_key(parts: dict[str, Any]) -> str:
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class ChunkCache:
    """Chunks of constructed rows under ``root/key``; ``None`` root = no cache (everything in memory)."""

    def __init__(self, root: str | None, key: str, meta: dict[str, Any] | None = None):
        self.folder = os.path.join(root, key) if root else None
        if self.folder and meta is not None and not os.path.exists(os.path.join(self.folder, "meta.json")):
            with staged_dir(self.folder) as tmp, open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as out:
                json.dump(meta, out, indent=2, default=str)

    def _path(self, index: int) -> str:
        return os.path.join(self.folder, f"chunk-{index:06d}.jsonl")  # type: ignore[arg-type]

    def load(self, index: int) -> list[dict] | None:
        if not self.folder or not os.path.exists(self._path(index)):
            return None
        with open(self._path(index), encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def save(self, index: int, rows: list[dict]) -> None:
        if not self.folder:
            return
        name = os.path.basename(self._path(index))
        with staged_dir(self.folder) as tmp, open(os.path.join(tmp, name), "w", encoding="utf-8") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            out.flush()
            os.fsync(out.fileno())
