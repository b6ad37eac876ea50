"""Reading safetensors files of a named format, refusing anything else (a pickle included)
with one line. Model files and checkpoints both go through here; nothing is ever executed.

A format is named ``compactcnn.KIND/VERSION``. A file of the same kind and a higher version
was written by a newer compactcnn; saying so tells the user to upgrade, where "not a
compactcnn file" would send them looking for a broken file.
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
    found = meta.get("format")
    if _is_newer(found, fmt):
        raise CompactCNNError(f"{path} is a {kind} written by a newer compactcnn (format {found}; "
                              f"this version reads {fmt})")
    if found != fmt:
        raise CompactCNNError(f"{path} is not a compactcnn {kind} (format {found!r}, "
                              f"expected {fmt!r})")
    return meta, tensors


def _is_newer(found: str | None, fmt: str) -> bool:
    """Whether ``found`` is a later version of the format ``fmt`` (``compactcnn.model/2`` of
    ``compactcnn.model/1``)."""
    kind, _, version = fmt.rpartition("/")
    found_kind, _, found_version = (found or "").rpartition("/")
    return (found_kind == kind and found_version.isascii() and found_version.isdigit()
            and int(found_version) > int(version))
