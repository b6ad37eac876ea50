"""Several seeds of the same runs, side by side: mean and spread of each method's accuracy.

One run's accuracy moves by about 0.3 points with the seed, as much as the gaps between
methods that a comparison is asked to show; a claim about who is ahead needs the mean over
seeds and its spread. Each argument is ``LABEL=RUN_DIR`` (a finished run folder); runs with
the same label are seeds of one method; ``LABEL=SEED:ACCURACY`` gives a run by the figure a
results file recorded, where its folder is no longer on this machine. ``--against LABEL``
adds that label's runs minus each other label's, paired by seed, with the verdict of
``compactcnn compare --seeds`` (``compactcnn.run.seeds.paired``), for runs that compare did
not make.

Run folders are not committed (each holds its checkpoints), so a table made from them could be
remade only on the machine that trained them. ``--record`` keeps what the table reads of each
folder (seed, accuracy, size, widths, machine and the run's options) in
``benchmarks/results/run-records.jsonl``, which is committed; a folder that is not on this
machine is read from there, so a clean clone remakes the same table.

    PYTHONPATH=src .venv/bin/python benchmarks/seed_table.py \\
        group=runs/a/group group=runs/b/group torch-pruning=runs/a/torch-pruning ... \\
        [--against group] [--record] [--out benchmarks/results/seeds.md]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from compactcnn.files.atomic import atomic_write
from compactcnn.run.seeds import CONFIDENCE, paired

LEDGER = Path(__file__).parent / "results" / "run-records.jsonl"
# the options that tell a reader which command made a record
_OPTIONS = ("model", "data", "method", "reg", "target", "balance", "epochs", "prune_fraction",
            "seed")


def read(run: Path, ledger: dict[str, dict]) -> dict:
    """The run's row: from its folder where it is on this machine, else from the ledger. A
    folder without its report is a run not finished (or started again): its old record would
    be stale, so it is refused rather than read from the ledger."""
    if not run.exists():
        if str(run) not in ledger:
            raise FileNotFoundError(f"{run}: no such run here and no record of it in {LEDGER}")
        return ledger[str(run)]
    if not (run / "report.json").is_file():
        raise FileNotFoundError(f"{run}: no report.json: the run has not finished")
    report = json.loads((run / "report.json").read_text())
    dense, compact = report["dense"], report["compact"]
    return {"seed": report["seed"], "accuracy": 100 * report["accuracy"],
            "params": compact["params"] / dense["params"],
            "flops": compact["flops"] / dense["flops"],
            "widths": "-".join(str(layer["neurons_after"]) for layer in report["layers"]),
            "run": str(run), "machine": _machine(report.get("machine")),
            "options": {key: report.get(key) for key in _OPTIONS}}


def load_ledger(path: Path = LEDGER) -> dict[str, dict]:
    if not path.is_file():
        return {}
    records = (json.loads(line) for line in path.read_text().splitlines() if line)
    return {record["run"]: record for record in records}


def save_ledger(ledger: dict[str, dict], path: Path = LEDGER) -> None:
    lines = (json.dumps(ledger[run], sort_keys=True) for run in sorted(ledger))
    atomic_write(path, "".join(line + "\n" for line in lines))


def recorded(text: str) -> dict:
    """``SEED:ACCURACY`` (in %): a run known only by the figure a results file gives."""
    seed, _, accuracy = text.partition(":")
    return {"seed": int(seed), "accuracy": float(accuracy), "params": None, "flops": None,
            "widths": "-", "run": f"recorded: seed {seed}", "machine": "recorded figures"}


def _machine(recorded: dict | None) -> str:
    """Where a run was made: the same command drifts a few tenths between CPUs that round
    floats differently, so a table that mixes machines says so."""
    if recorded is None:
        return "not recorded (a run older than the report's machine field)"
    return f"{recorded['device']}, {recorded['cpu_capability']}, torch {recorded['torch']}"


def table(runs: dict[str, list[dict]], against: str | None = None) -> str:
    lines = ["| method | seeds | accuracy per seed | mean | sd | parameters | FLOPs | widths "
             "| run folders |", "|---|---|---|---|---|---|---|---|---|"]
    if against:
        lines[0] += f" {against} − method, seeds in common ({CONFIDENCE:.0%} interval) | verdict |"
        lines[1] += "---|---|"
    for label, rows in runs.items():
        acc = [r["accuracy"] for r in rows]
        cells = [", ".join(str(r["seed"]) for r in rows), ", ".join(f"{a:.2f}" for a in acc),
                 f"{statistics.mean(acc):.2f}",
                 f"{statistics.stdev(acc):.2f}" if len(acc) > 1 else "-",
                 ", ".join("-" if r["params"] is None else f"{r['params']:.1%}" for r in rows),
                 ", ".join("-" if r["flops"] is None else f"{r['flops']:.1%}" for r in rows),
                 ", ".join(r["widths"] for r in rows),
                 ", ".join(f"`{r['run']}`" for r in rows)]
        if against:
            cells += _paired(runs[against], rows) if label != against else ["reference", ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    machines = sorted({r["machine"] for rows in runs.values() for r in rows})
    lines += ["", "Made on: " + "; ".join(machines) + "."]
    return "\n".join(lines)


def _paired(reference: list[dict], rows: list[dict]) -> list[str]:
    ours = {r["seed"]: r["accuracy"] for r in reference}
    common = [r for r in rows if r["seed"] in ours]
    if not common:
        return ["no seed in common", ""]
    p = paired([ours[r["seed"]] for r in common], [r["accuracy"] for r in common])
    half = "" if p["half_width"] is None else f" ± {p['half_width']:.2f}"
    return [f"{p['difference']:+.2f}{half} (seeds {', '.join(str(r['seed']) for r in common)};"
            f" led on {p['ahead_on']})", p["verdict"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR|LABEL=SEED:ACCURACY")
    parser.add_argument("--against", metavar="LABEL",
                        help="pair every other label's runs with this one's, seed by seed")
    parser.add_argument("--record", action="store_true",
                        help=f"keep each run folder read here in {LEDGER.name}")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    ledger = load_ledger()
    runs: dict[str, list[dict]] = {}
    for arg in args.runs:
        label, _, path = arg.partition("=")
        if not path:
            parser.error(f"expected LABEL=RUN_DIR or LABEL=SEED:ACCURACY, got {arg!r}")
        is_figure = re.fullmatch(r"\d+:\d+(\.\d*)?", path)
        try:
            row = recorded(path) if is_figure else read(Path(path), ledger)
        except FileNotFoundError as missing:
            parser.error(str(missing))
        if args.record and not is_figure:
            ledger[row["run"]] = row
        runs.setdefault(label, []).append(row)
    if args.record:
        save_ledger(ledger)
    for rows in runs.values():
        rows.sort(key=lambda r: r["seed"])
    if args.against is not None and args.against not in runs:
        parser.error(f"--against {args.against}: no runs under that label")
    text = table(runs, args.against)
    print(text)
    if args.out:
        atomic_write(args.out, text + "\n")


if __name__ == "__main__":
    main()
