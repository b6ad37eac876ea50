"""Finished runs deployed four ways: float compact, static int8, binary weights, and binary
weights and activations.

For each run folder the compact model is quantised to int8 (ONNX Runtime) and binarised twice
(XNOR-Net, first and last layers float, fine-tuned ``--binary-epochs`` on the run's training
images), exactly as ``compactcnn quantize`` and ``compactcnn binarize`` do: with real inputs,
which torch computes with the signs of the latent weights, and with binary inputs too, which
the bit-packed XNOR/popcount kernels compute. Each variant is scored on the run's test slice.
Memory footprint is the parameters at the deployed precision plus every layer's feature maps
at float32, batch 1. Latency is the median of timed batch-1 passes, each variant in its own
runtime, beside the float model in that same runtime, since a runtime alone can account for
a difference.

    PYTHONPATH=src .venv/bin/python benchmarks/deployment.py runs/lenet5 [--binary-epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from compactcnn.deploy.quantized_run import binarize_run, quantize_run
from compactcnn.deploy.source import load_deployable
from compactcnn.files.atomic import atomic_write

RESULTS = Path(__file__).parent / "results" / "deployment.md"


def rows(run_dir: Path, binary_epochs: int) -> list[str]:
    """The markdown rows of one run: float, int8, binary weights, binary weights and inputs."""
    src = load_deployable(run_dir)
    with tempfile.TemporaryDirectory() as tmp:
        q = quantize_run(src, Path(tmp) / "int8.onnx")
        binary = {acts: binarize_run(src, Path(tmp) / f"binary{acts}.safetensors",
                                     binary_epochs, binary_activations=acts)
                  for acts in (False, True)}
    maps = q["footprint"]["feature_maps_bytes"]
    float_torch = binary[False]["latency_ms"]["float_torch"]["batch_1"]
    variants = [
        ("float compact", q["accuracy"]["float"], q["param_bytes"]["float32"], "torch",
         float_torch, float_torch),
        ("compact + int8", q["accuracy"]["int8"], q["param_bytes"]["int8"], "ONNX Runtime",
         q["latency_ms"]["int8_onnx"]["batch_1"], q["latency_ms"]["float_onnx"]["batch_1"]),
    ]
    for acts, b in binary.items():
        variants.append((f"compact + binary weights{' and inputs' if acts else ''} "
                         f"({binary_epochs} epochs)", b["accuracy"]["binary"],
                         b["param_bytes"]["binary"],
                         "bit-packed NumPy" if acts else "torch, sign of latent weights",
                         b["latency_ms"]["binary"]["batch_1"],
                         b["latency_ms"]["float_torch"]["batch_1"]))
    return [f"| {run_dir.name} ({src.name}) | {name} | {acc:.2%} | {params:,} | "
            f"{params + maps:,} | {ms:.3f} | {runtime} | {float_ms:.3f} |"
            for name, acc, params, runtime, ms, float_ms in variants]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="MODEL_RUN_DIR")
    parser.add_argument("--binary-epochs", type=int, default=2,
                        help="epochs of fine-tuning with binary weights (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    lines = ["| run | variant | test accuracy | parameter bytes | memory footprint (B) | "
             "latency batch 1 (ms) | runtime | float in that runtime (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for run_dir in args.runs:
        new = rows(run_dir, args.binary_epochs)
        print("\n".join(new), flush=True)
        lines += new
    text = (f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s); memory "
            "footprint = parameters at the deployed precision + feature maps at float32, "
            "batch 1\n\n" + "\n".join(lines) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
