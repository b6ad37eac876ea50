"""``quantize`` and ``binarize``: a compact model at int8 or at one bit, measured against itself
in float (see compactcnn.deploy.quantized_run)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from compactcnn.cli.common import fresh_output
from compactcnn.errors import CompactCNNError

if TYPE_CHECKING:  # torch is imported when a command runs
    from compactcnn.deploy.source import Deployable


def _deployable(args: argparse.Namespace) -> Deployable:
    from compactcnn.deploy.source import load_deployable

    return load_deployable(args.source, args.data, args.data_dir, args.limit, args.test_limit)


def _quantize(args: argparse.Namespace) -> int:
    from compactcnn.deploy.quantized_run import quantize_run

    if not args.int8:
        raise CompactCNNError("quantize: name the precision: --int8 (the one there is so far)")
    out = fresh_output(args.out, args.force)
    result = quantize_run(_deployable(args), out, args.calibration, not args.full_range)
    print(json.dumps(result, indent=2) if args.json else _quantize_text(result))
    return 0


def _binarize(args: argparse.Namespace) -> int:
    from compactcnn.deploy.quantized_run import binarize_run

    out = fresh_output(args.out, args.force)
    result = binarize_run(_deployable(args), out, args.epochs, args.binary_activations,
                          args.lr)
    print(json.dumps(result, indent=2) if args.json else _binarize_text(result))
    return 0


def _quantize_text(r: dict[str, Any]) -> str:
    files, params, ms = r["file_bytes"], r["param_bytes"], r["latency_ms"]
    rows = [("test accuracy", *(f"{r['accuracy'][k]:.4f}" for k in ("float", "int8"))),
            ("ONNX file bytes", f"{files['float_onnx']:,}", f"{files['int8_onnx']:,}"),
            ("parameter bytes", f"{params['float32']:,}", f"{params['int8']:,}"),
            *_latency_rows(ms["float_onnx"], ms["int8_onnx"])]
    head = (f"{r['model']} ({r['source']}): static int8 through ONNX Runtime "
            f"({7 if r['reduce_range'] else 8}-bit weights), calibrated on "
            f"{r['calibration_images']} training images, tested on {r['test_images']}")
    return _report(head, ("float", "int8"), rows, r)


def _binarize_text(r: dict[str, Any]) -> str:
    params, ms = r["param_bytes"], r["latency_ms"]
    rows = [("test accuracy", *(f"{r['accuracy'][k]:.4f}" for k in ("float", "binary"))),
            ("parameter bytes", f"{params['float32']:,}", f"{params['binary']:,}"),
            *_latency_rows(ms["float_torch"], ms["binary"])]
    opt = r["optimizer"]
    head = (f"{r['model']} ({r['source']}): binary weights in "
            f"{', '.join(r['binary_layers'])}"
            f"{' and their inputs' if r['binary_activations'] else ''}, fine-tuned "
            f"{r['epochs']} epoch(s) with {opt['name']} at lr {opt['lr']:g}, tested on "
            f"{r['test_images']} (float in torch, binary in {r['binary_runtime']}; "
            f"max |deployed - torch| {r['max_abs_diff_packed_vs_torch']:.3g})")
    return _report(head, ("float", "binary"), rows, r)


def _latency_rows(a: dict[str, float], b: dict[str, float]) -> list[tuple[str, str, str]]:
    return [(f"latency {k.replace('_', ' ')} (ms)", f"{a[k]:.3f}", f"{b[k]:.3f}") for k in a]


def _report(head: str, columns: tuple[str, str], rows: list[tuple[str, str, str]],
            r: dict[str, Any]) -> str:
    """The headline figures side by side, then the deployed layers' bytes."""
    lines = [head, f"{'':22}{columns[0]:>14}{columns[1]:>14}"]
    lines += [f"{label:22}{a:>14}{b:>14}" for label, a, b in rows]
    lines.append(f"predictions agree on {r['agreement']:.1%} of the test images")
    lines.append("")
    lines.append(f"{'layer':14}{'precision':>10}{'parameter bytes':>17}{'feature map bytes':>19}")
    fp = r["footprint"]
    lines += [f"{row['name']:14}{row['precision']:>10}{row['params_bytes']:>17,}"
              f"{row['feature_map_bytes']:>19,}" for row in fp["layers"]]
    lines.append(f"{'total':24}{fp['params_bytes']:>17,}{fp['feature_maps_bytes']:>19,}")
    lines.append(f"wrote {r['out']}")
    return "\n".join(lines)


def _add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="RUN_OR_FILE",
                   help="a run folder, or a model file (which then needs --data)")
    p.add_argument("--data", help="fashion-mnist, synthetic, synthetic-colour or folder:PATH "
                   "(default: the run's)")
    p.add_argument("--data-dir", help="another copy of the Fashion-MNIST IDX files")
    p.add_argument("--limit", type=int, help="use only the first N training images "
                   "(default: the run's)")
    p.add_argument("--test-limit", type=int, help="use only the first N test images "
                   "(default: the run's)")


def _add_output_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", required=True, help=f"where to write {what}")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true")


def add_commands(sub) -> None:
    from compactcnn.deploy.quantized_run import DEFAULT_BINARY_LR, DEFAULT_CALIBRATION

    q = sub.add_parser("quantize", help="static int8 of a compact model, measured against float")
    _add_source_arguments(q)
    q.add_argument("--int8", action="store_true", help="int8 weights and activations (ONNX)")
    q.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION, metavar="N",
                   help=f"training images that fix the activation ranges "
                   f"(default {DEFAULT_CALIBRATION})")
    q.add_argument("--full-range", action="store_true",
                   help="8-bit weights, for a CPU with VNNI or ARM (default 7 bits, which "
                   "x86 without VNNI needs to avoid int16 saturation)")
    _add_output_arguments(q, "the int8 ONNX file")
    q.set_defaults(run=_quantize)

    b = sub.add_parser("binarize", help="binary weights (XNOR-Net), fine-tuned and measured")
    _add_source_arguments(b)
    b.add_argument("--epochs", type=int, required=True,
                   help="epochs of fine-tuning with binary weights (0: binarise only)")
    b.add_argument("--binary-activations", action="store_true",
                   help="binarise the binary layers' inputs too, so that they run as XNOR "
                   "and popcount on bit-packed words")
    b.add_argument("--lr", type=float, default=DEFAULT_BINARY_LR,
                   help=f"Adam learning rate (default {DEFAULT_BINARY_LR:g})")
    _add_output_arguments(b, "the binary model file (safetensors)")
    b.set_defaults(run=_binarize)
