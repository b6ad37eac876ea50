"""``compactcnn compare``: every method at one budget, with the same data, seed, schedule and
total epochs, side by side with the dense network.

Each method is an ordinary run (``run/pipeline.py``) in its own folder under ``out``, so every
row can be reproduced by the one ``compactcnn train`` command the table gives, and an
interrupted comparison picks up where it stopped: finished runs are read back, a started one
resumes from its checkpoint. ``scratch`` trains the widths that the first of our methods
found, so it runs after it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from compactcnn.errors import CompactCNNError, ConfigMismatch
from compactcnn.files.atomic import atomic_write
from compactcnn.methods import METHODS, OURS
from compactcnn.run import report
from compactcnn.run.compare_report import markdown, plot
from compactcnn.run.config import TrainConfig, differences
from compactcnn.run.pipeline import run
from compactcnn.run.rundir import CHECKPOINT, REPORT, run_file

COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"
DEFAULT_METHODS = tuple(METHODS)
# Reports written before "input_shape" existed held two results under configuration keys:
# the method's name (the penalty's, for the dense run) and the traced input shape.
_RESULTS_IN_OLD_REPORTS = ("method", "input")


def command(cfg: TrainConfig, out: Path, device: str) -> str:
    """The ``compactcnn train`` command that reproduces one row, with only the options that
    it needs: those the run would not resolve to by itself (a method sets the penalty, so
    ``--reg`` appears only for the dense row's ``none``; lam only where it is not the
    default start)."""
    parts = ["compactcnn train"]
    for f in fields(TrainConfig):
        value = getattr(cfg, f.name)
        if value == f.default or _resolves_to(cfg, f.name, f.default):
            continue
        flag = "--" + f.name.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value:g}" if isinstance(value, float)
                     else f"{flag} {value}")
    parts.append(f"--out {out}")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(parts)


def _resolves_to(cfg: TrainConfig, name: str, default: Any) -> bool:
    """Whether ``cfg`` is what the run makes of itself with option ``name`` left out."""
    try:
        return replace(cfg, **{name: default}) == cfg
    except CompactCNNError:
        return False


def compare(base: TrainConfig, out: Path, methods: tuple[str, ...] = DEFAULT_METHODS,
            device: str = "cpu", dense: Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Run (or read back) the dense baseline and every method; write compare.json/.md/.png.

    ``dense`` names a finished dense run to read back instead of training one in
    ``out/dense``: the same network at another budget has the same dense baseline, and on a
    CPU it is the longest row. It must have been run with this comparison's options.
    ``jobs`` is how many runs train at once (``run/side_by_side.py``).
    """
    from compactcnn.run.side_by_side import run_plans  # it imports this module

    plan = Plan(base, out, methods, dense)
    plan.check()
    return run_plans([plan], device, jobs)[0]


@dataclass(frozen=True)
class Plan:
    """One comparison's runs: every row but ``scratch`` needs nothing else; ``scratch`` needs
    the widths of the first of our methods, so it runs once those rows are done."""

    base: TrainConfig
    out: Path
    methods: tuple[str, ...]
    dense: Path | None = None

    def __post_init__(self) -> None:  # each method once, in the order given
        object.__setattr__(self, "methods", tuple(dict.fromkeys(self.methods)))

    def check(self) -> None:
        """Everything that can be refused, before anything is written."""
        if self.dense is not None and not (self.dense / REPORT).is_file():
            raise CompactCNNError(f"--dense {self.dense}: no finished run there (no {REPORT})")
        if self.base.target is None:
            raise CompactCNNError("compare needs a budget: --target params=F and/or flops=F")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise CompactCNNError(f"unknown method(s) {', '.join(unknown)}; choose from: "
                                  + ", ".join(METHODS))
        refuse_other_kind(self.out, over_seeds=False)

    @property
    def order(self) -> list[str]:
        """The rows as the table lists them (and as one process runs them): scratch last."""
        return ["dense", *sorted(self.methods, key=lambda m: (m == "scratch",
                                                               self.methods.index(m)))]

    def first(self) -> list[Run]:
        """The rows that can run at once."""
        dense_cfg = replace(self.base, method=None, reg="none", target=None, widths=None)
        return [Run("dense", dense_cfg, self.dense or self.out / "dense")] + [
            Run(m, replace(self.base, method=m, widths=None), self.out / m)
            for m in self.order[1:] if m != "scratch"]

    def ready_for_scratch(self, rows: dict[str, dict[str, Any]]) -> bool:
        """Whether the rows scratch takes its widths from are all done."""
        return "scratch" in self.methods and all(m in rows for m in self.methods if m in OURS)

    def scratch(self, rows: dict[str, dict[str, Any]]) -> Run | dict[str, Any]:
        """Scratch's run on the widths our first method found, or its skipped row."""
        widths = _found_widths([rows[m] for m in self.order if m in rows])
        if widths is None:
            return {"method": "scratch", "skipped": "needs one of our methods in the same "
                                                    "comparison, to take its widths"}
        return Run("scratch", replace(self.base, method="scratch", widths=widths),
                   self.out / "scratch")

    def write(self, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The comparison's three files, from every row."""
        result = {"model": self.base.model, "data": self.base.data,
                  "target": self.base.target, "epochs": self.base.epochs,
                  "seed": self.base.seed, "rows": [rows[m] for m in self.order]}
        self.out.mkdir(parents=True, exist_ok=True)  # its runs may all have been elsewhere
        atomic_write(self.out / COMPARE_JSON, json.dumps(result, indent=2))
        atomic_write(self.out / COMPARE_MD, markdown(result))
        plot(result, self.out / COMPARE_PNG)
        return result


class Run(NamedTuple):
    """One row's run: the method's name, its options and its folder."""

    name: str
    cfg: TrainConfig
    folder: Path


def refuse_other_kind(out: Path, over_seeds: bool) -> None:
    """A comparison of one seed and a summary over seeds write the same three files: neither
    may overwrite the other's."""
    path = out / COMPARE_JSON
    if not path.is_file():
        return
    try:
        held_over_seeds = "seeds" in json.loads(path.read_text())
    except (OSError, ValueError):
        raise CompactCNNError(f"{path} is not a comparison's summary; give another --out "
                              "or remove it") from None
    if held_over_seeds != over_seeds:
        held = "a comparison over seeds" if held_over_seeds else "a comparison of one seed"
        raise CompactCNNError(f"{out} holds {held}; give another --out (with --seeds, each "
                              "seed's comparison is OUT/seed-S)")


def run_row(name: str, cfg: TrainConfig, run_dir: Path, device: str) -> dict[str, Any]:
    """One method's figures, from its finished run or by running (or resuming) it now."""
    row: dict[str, Any] = {"method": name, "command": command(cfg, run_dir, device)}
    if (run_dir / REPORT).is_file():
        result = report.read(run_file(run_dir, REPORT))
        _check_same_run(result, cfg, run_dir)
    else:
        try:
            resuming = (run_dir / CHECKPOINT).is_file()
            start = time.perf_counter()
            result = run(cfg, run_dir, resuming=resuming, device=torch.device(device))
        except ConfigMismatch:
            raise
        except CompactCNNError as e:
            if name == "dense":
                raise
            return row | {"skipped": str(e)}
        result["wall_seconds"] = time.perf_counter() - start
        report.write(result, run_dir)
    d, c = result["dense"], result["compact"]
    return row | {
        "accuracy": result["accuracy"], "params": c["params"], "dense_params": d["params"],
        "flops": c["flops"], "dense_flops": d["flops"], "memory_bytes": c["memory_bytes"],
        "latency_ms": c["latency_ms"], "train_seconds": result["train_seconds"],
        "wall_seconds": result.get("wall_seconds"),
        "widths": {layer["name"]: layer["neurons_after"] for layer in result["layers"]},
        "config": asdict(cfg)}


def _check_same_run(result: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> None:
    """A finished run is read back only if it is this row's run: a comparison started again
    with other options (or after a default changed) must not mix in figures from the old."""
    recorded = {f.name: result[f.name] for f in fields(TrainConfig) if f.name in result}
    if "input_shape" not in result:  # an old report: its folder names the method and the
        recorded |= {k: getattr(cfg, k) for k in _RESULTS_IN_OLD_REPORTS}  # data fix the input
    diff = differences(recorded, cfg)
    if diff:
        raise ConfigMismatch(f"{run_dir} holds a finished run of another configuration "
                             f"(differs in: {'; '.join(diff)}); start a new --out or remove "
                             "that folder")


def _found_widths(rows: list[dict[str, Any]]) -> str | None:
    for row in rows:
        if row["method"] in OURS and "widths" in row:
            return ",".join(f"{k}={v}" for k, v in row["widths"].items())
    return None
