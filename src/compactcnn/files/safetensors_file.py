"""Reading safetensors files of a named format, refusing anything else (a pickle included)
with one line. Model files and checkpoints both go through here; nothing is ever executed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from compactcnn.errors import CompactCNNError


def read_safetensors(path: str | Path, fmt: str, kind: str
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file of format ``fmt``; anything else, a pickle
    included, is refused with one line that names ``kind``. Nothing is executed."""
    path = Path(path)
    if not path.is_file():
        raise CompactCNNError(f"no such {kind}: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CompactCNNError(f"{path} is not a compactcnn {kind} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None
    if meta.get("format") != fmt:
        raise CompactCNNError(f"{path} is not a compactcnn {kind} (format {meta.get('format')!r}, "
                              f"expected {fmt!r})")
    return meta, tensors
