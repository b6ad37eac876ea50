"""Atomic writes: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from compactcnn.errors import CompactCNNError


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, then rename over ``path``.

    A crash leaves either the old file or the new one, never half of either.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CompactCNNError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # a full disk, a read-only folder: the old file stands
            raise CompactCNNError(f"cannot write {path}: {e.strerror or e}") from None
        raise
