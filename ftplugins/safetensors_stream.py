"""Write a safetensors file one tensor at a time.

``safetensors.torch.save_file`` takes every tensor at once and makes a ``bytes`` copy of each before
writing, so saving N bytes of tensors needs them all in memory plus N more. Artifacts computed
tensor by tensor (a sparse delta taken from the optimizer's state) would then peak at twice their
size right at the end of training. Here the caller declares the layout first (names, dtypes,
shapes, in file order) and then yields the tensors in that order; each is written from its own
buffer and can be freed before the next is made. The file is standard safetensors (read it with
``safetensors.safe_open``): an 8-byte little-endian header length, the JSON header (padded with
spaces to a multiple of 8 bytes, as the reference writer does), then the tensors back to back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping

import torch

_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}

Layout = list[tuple[str, torch.dtype, tuple[int, ...]]]


def write_streamed(path: str, layout: Layout, tensors: Iterable[torch.Tensor],
                   metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (yielded in ``layout`` order, each matching its declared dtype and shape) to ``path``."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in layout:
        if dtype not in _DTYPES:
            raise ValueError(f"safetensors has no dtype for {dtype} ({name})")
        numel = 1
        for dim in shape:
            numel *= int(dim)
        size = numel * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": [int(d) for d in shape], "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    written = 0
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        produced = iter(tensors)
        for name, dtype, shape in layout:
            tensor = next(produced, None)
            if tensor is None:
                raise ValueError(f"write_streamed: no tensor was produced for {name}")
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"write_streamed: {name} was declared {dtype} {tuple(shape)} but is "
                                 f"{tensor.dtype} {tuple(tensor.shape)}")
            data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
            handle.write(memoryview(data))
            written += data.nbytes
            del tensor, data
        if next(produced, None) is not None:
            raise ValueError("write_streamed: more tensors were produced than the layout declares")
    if written != offset:  # pragma: no cover - guarded by the per-tensor checks above
        raise ValueError(f"write_streamed: wrote {written} bytes, the header declares {offset}")
