"""Small checks shared by the data sources."""

from __future__ import annotations

from compactcnn.errors import CompactCNNError


def _one_line(exc: BaseException) -> str:
    """Library messages can span lines; the CLI promises a single line per error."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise CompactCNNError(f"{name} must be a positive integer, got {value!r}")
