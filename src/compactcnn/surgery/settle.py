"""Make many removals and check them together; search for the culprits only where the outputs
moved.

Checking every removal on its own costs one forward pass each, hundreds for a deep network.
Nearly all removals are exact, so they are made all at once and checked with one pass; when
the outputs moved, the batch is undone and each half is settled the same way (bisection). A
few culprits among n removals cost about 2·culprits·log2(n) passes; none costs one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

Unit = TypeVar("Unit")


def settle(units: Sequence[Unit], make: Callable[[Unit], bool], undo: Callable[[Unit], None],
           check: Callable[[], str], refuse: Callable[[Unit, str], None]) -> None:
    """Keep every unit whose removal leaves the outputs exact.

    ``make`` returns False when a unit cannot be made at all (it leaves the model as it was and
    says why itself); ``check`` runs the model and says what is wrong ("" when the outputs are
    exact); ``refuse`` is told of each unit that is wrong on its own, and what. Units are
    undone in the reverse order they were made, since later ones may have touched the same
    layers.
    """
    made = [u for u in units if make(u)]
    wrong = check() if made else ""
    if not wrong:
        return
    for u in reversed(made):
        undo(u)
    if len(made) == 1:
        refuse(made[0], wrong)
        return
    mid = len(made) // 2
    settle(made[:mid], make, undo, check, refuse)
    settle(made[mid:], make, undo, check, refuse)
