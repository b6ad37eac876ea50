"""The runs of one or more comparisons, one at a time or ``jobs`` at once.

One process runs the rows in the table's order with its progress on the terminal. Side by
side, each run trains in a worker process of its own (spawned, so no OpenMP state is forked)
with its share of the threads and its output in its folder's ``log.txt``; the terminal gets
one line per finished row. A run there is the same run as alone at that thread count: the same
options, seed and data, in the folder a later single-process comparison reads back unchanged.
``scratch`` starts as soon as the rows whose widths it takes are done, and each comparison's
files are written as soon as its last row is.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import torch

from compactcnn.errors import CompactCNNError
from compactcnn.run.compare import Plan, Run, run_row
from compactcnn.run.rundir import REPORT

LOG = "log.txt"


def run_plans(plans: list[Plan], device: str, jobs: int = 1) -> list[dict[str, Any]]:
    """Every plan's comparison (each written to its folder as it completes), in plan order.

    The plans must have passed their checks: a refused ``jobs`` then leaves nothing written.
    """
    if jobs < 1:
        raise CompactCNNError(f"--jobs must be >= 1, got {jobs}")
    if jobs == 1:
        return [_one_at_a_time(plan, device) for plan in plans]
    return _side_by_side(plans, device, jobs)


def _one_at_a_time(plan: Plan, device: str) -> dict[str, Any]:
    rows = {r.name: run_row(*r, device) for r in plan.first()}
    if "scratch" in plan.methods:
        scratch = plan.scratch(rows)
        rows["scratch"] = run_row(*scratch, device) if isinstance(scratch, Run) else scratch
    return plan.write(rows)


def _side_by_side(plans: list[Plan], device: str, jobs: int) -> list[dict[str, Any]]:
    """On the first failure nothing further starts; the runs under way finish (each is saved
    either way, and a plan whose last row was among them is written), then the failure is
    raised, naming its run. A Ctrl-C reaches every process:
    each run stops after its batch with a checkpoint, as a single run does."""
    threads = max(1, torch.get_num_threads() // jobs)
    rows: list[dict[str, dict[str, Any]]] = [{} for _ in plans]
    results: list[dict[str, Any] | None] = [None] * len(plans)
    scratch_started: set[int] = set()  # the plans whose scratch row is running or settled
    failure: tuple[Run, BaseException] | None = None
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: dict[Future, tuple[int, Run]] = {}

        def start(i: int, r: Run) -> None:
            pending[pool.submit(_in_worker, r, device, threads)] = (i, r)

        for i, plan in enumerate(plans):
            for r in plan.first():
                start(i, r)
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    i, r = pending.pop(f)
                    if f.cancelled():
                        continue
                    if f.exception() is not None:
                        if failure is None:
                            failure = (r, f.exception())
                            for other in pending:
                                other.cancel()
                        continue
                    rows[i][r.name] = f.result()
                    print(f"{r.folder}: {_outcome(f.result())}", file=sys.stderr)
                    plan = plans[i]
                    if failure is None and i not in scratch_started and \
                            plan.ready_for_scratch(rows[i]):
                        scratch_started.add(i)
                        scratch = plan.scratch(rows[i])
                        if isinstance(scratch, Run):
                            start(i, scratch)
                        else:
                            rows[i]["scratch"] = scratch
                    if set(rows[i]) == set(plan.order):
                        results[i] = plan.write(rows[i])
        except KeyboardInterrupt:
            pool.shutdown(cancel_futures=True)
            raise
    if failure is not None:
        r, error = failure
        if isinstance(error, CompactCNNError):
            log = r.folder / LOG
            raise CompactCNNError(f"{r.folder}: {error}"
                                  + (f" (its output: {log})" if log.is_file() else "")
                                  ) from error
        raise error
    assert None not in results, "a comparison's rows never all ran"
    return results  # type: ignore[return-value]


def _outcome(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    return f"{100 * result['accuracy']:.2f}%, {result['params'] / result['dense_params']:.1%} " \
           "of the parameters"


def _in_worker(r: Run, device: str, threads: int) -> dict[str, Any]:
    """One row in a worker process; a run that trains writes its progress to its log."""
    torch.set_num_threads(threads)
    if (r.folder / REPORT).is_file():  # read back: nothing to log, and perhaps not our folder
        return run_row(*r, device)
    r.folder.mkdir(parents=True, exist_ok=True)
    with open(r.folder / LOG, "a") as log, redirect_stdout(log), redirect_stderr(log):
        return run_row(*r, device)

