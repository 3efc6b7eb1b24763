"""`mtdistill export CKPT -o model.onnx`: ONNX graphs (full + split) and optional int8 copies."""

from __future__ import annotations

import argparse
import json

HELP = "export a checkpoint to ONNX (full graph + split video/audio/backend graphs; --int8 for int8 copies)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="our .safetensors checkpoint or an official .pth file")
    parser.add_argument("-o", "--output", required=True, help="output .onnx path (split graphs go beside it)")
    parser.add_argument(
        "--preset",
        choices=("vocalist", "mtd"),
        default=None,
        help="input preset stored in the ONNX metadata (needed for official files)",
    )
    parser.add_argument(
        "--opset", type=int, default=17, help="ONNX opset (default 17; the installed torch sets the range, 14..20 here)"
    )
    parser.add_argument("--int8", action="store_true", help="also write dynamically quantised *_int8.onnx graphs")
    parser.add_argument(
        "--int8-convs",
        action="store_true",
        help="with --int8: quantise the conv front-ends too (less accurate; see docs/sync.md)",
    )
    parser.add_argument("--no-split", action="store_true", help="write only the full graph")


def run(args: argparse.Namespace) -> int:
    from mtdistill.inference.onnx_export import QUANT_OP_TYPES, check_export, export_onnx
    from mtdistill.models.vocalist import VocaLiST

    check_export(args.output, args.opset)
    model = VocaLiST.from_checkpoint(args.checkpoint, preset=args.preset)
    ops = QUANT_OP_TYPES + (("Conv",) if args.int8_convs else ())
    paths = export_onnx(
        model, args.output, opset=args.opset, split=not args.no_split, int8=args.int8, quant_op_types=ops
    )
    print(json.dumps({"written": [str(p) for p in paths], "preset": model.preset}))
    return 0
