"""``compactcnn compare --seeds``: the same comparison over several seeds, and whether each
gap between our method and another is larger than the seeds' own spread.

One run's accuracy moves by about 0.3 points with the seed on Fashion-MNIST, as much as the
gaps between methods a comparison is asked to show, so one seed cannot say who is ahead.
Every seed is an ordinary comparison in ``out/seed-S`` (resumable, with every row's command);
this module reads them together. Methods are compared with ours *paired by seed*: the same
seed gives both runs the same split and batch order, so the per-seed difference removes what
the seed does to both, and its mean gets a Student-t 95% interval over the seeds. A gap is a
lead (or a loss) only when that interval excludes zero; otherwise the table says "level",
however the means happen to fall.

With ``jobs`` above one the runs of every seed share one pool of processes
(``run/side_by_side.py``).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from scipy import stats

from compactcnn.errors import CompactCNNError
from compactcnn.files.atomic import atomic_write
from compactcnn.methods import OURS
from compactcnn.run.compare import (
    COMPARE_JSON,
    COMPARE_MD,
    COMPARE_PNG,
    Plan,
    refuse_other_kind,
)
from compactcnn.run.compare_report import seeds_markdown, seeds_plot
from compactcnn.run.config import TrainConfig
from compactcnn.run.rundir import REPORT
from compactcnn.run.side_by_side import run_plans

CONFIDENCE = 0.95


def seed_folder(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def compare_seeds(base: TrainConfig, out: Path, seeds: list[int],
                  methods: tuple[str, ...], device: str = "cpu",
                  dense: Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Run (or read back) the comparison once per seed, then write the summary over seeds.

    ``dense`` names another multi-seed comparison whose ``seed-S/dense`` runs are read back;
    ``jobs`` is how many runs train at once, over all the seeds.
    """
    if len(set(seeds)) != len(seeds):
        raise CompactCNNError(f"--seeds {' '.join(map(str, seeds))} repeats a seed")
    refuse_other_kind(out, over_seeds=True)
    if dense is not None:  # every seed's dense run must be there before any training starts
        missing = [s for s in seeds if not (seed_folder(dense, s) / "dense" / REPORT).is_file()]
        if missing:
            raise CompactCNNError(f"--dense {dense}: no finished seed-{missing[0]}/dense there "
                                  "(with --seeds, --dense names another comparison over the "
                                  "seeds)")
    plans = [Plan(replace(base, seed=s), seed_folder(out, s), methods,
                  None if dense is None else seed_folder(dense, s) / "dense") for s in seeds]
    for plan in plans:  # every seed's refusals before any seed trains
        plan.check()
    per_seed = run_plans(plans, device, jobs)
    result = summarise(per_seed)
    atomic_write(out / COMPARE_JSON, json.dumps(result, indent=2))
    atomic_write(out / COMPARE_MD, seeds_markdown(result))
    seeds_plot(result, out / COMPARE_PNG)
    return result


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Each method's accuracy over the seeds, and each method against the reference: the
    first of our methods that ran on every seed."""
    first = per_seed[0]
    methods: dict[str, dict[str, Any]] = {}
    for result in per_seed:
        for row in result["rows"]:
            entry = methods.setdefault(row["method"], {"method": row["method"], "runs": []})
            entry["runs"].append(
                {"seed": result["seed"], **{k: row[k] for k in ("accuracy", "params", "flops",
                                                                 "dense_params", "dense_flops",
                                                                 "widths") if k in row},
                 **({"skipped": row["skipped"]} if "skipped" in row else {})})
    complete = {m for m, e in methods.items() if all("accuracy" in r for r in e["runs"])}
    reference = next((m for m in methods if m in OURS and m in complete), None)
    for name, entry in methods.items():
        runs = [r for r in entry["runs"] if "accuracy" in r]
        if not runs:
            entry["skipped"] = entry["runs"][0]["skipped"]
            continue
        accuracy = [r["accuracy"] for r in runs]
        entry |= {"mean": statistics.mean(accuracy),
                  "sd": statistics.stdev(accuracy) if len(accuracy) > 1 else None,
                  "params": statistics.mean(r["params"] / r["dense_params"] for r in runs),
                  "flops": statistics.mean(r["flops"] / r["dense_flops"] for r in runs)}
        if reference is not None and name != reference and name in complete:
            entry["vs_reference"] = paired([r["accuracy"] for r in methods[reference]["runs"]],
                                           accuracy)
    return {"model": first["model"], "data": first["data"], "target": first["target"],
            "epochs": first["epochs"], "seeds": [r["seed"] for r in per_seed],
            "reference": reference, "confidence": CONFIDENCE,
            "methods": list(methods.values())}


def paired(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    """Ours minus theirs, seed by seed: the mean difference, the half-width of its interval
    at ``CONFIDENCE`` (Student t over the seeds), how many seeds ours led on, and the verdict:
    ``ahead`` or ``behind`` only when the interval excludes zero."""
    diff = [a - b for a, b in zip(ours, theirs, strict=True)]
    mean = statistics.mean(diff)
    if len(diff) < 2:
        half, verdict = None, "one seed: no verdict"
    else:
        half = (stats.t.ppf((1 + CONFIDENCE) / 2, len(diff) - 1)
                * statistics.stdev(diff) / math.sqrt(len(diff)))
        verdict = "ahead" if mean - half > 0 else "behind" if mean + half < 0 else "level"
    return {"difference": mean, "half_width": half, "verdict": verdict,
            "ahead_on": sum(d > 0 for d in diff), "seeds": len(diff)}
