"""featloc export-onnx --features NAME [--weights PATH] --output FILE.onnx"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_parser(sub, formatter):
    p = sub.add_parser(
        "export-onnx",
        help="export a learned extractor's network to ONNX",
        description="Write the network of a learned extractor (e.g. samfeat-lite) as an ONNX "
        "graph with dynamic batch, height and width. Input 'image' [B,3,H,W] float32 RGB in "
        "[-1,1] (H, W multiples of 16); outputs are the network's output maps (no NMS or "
        "descriptor sampling).",
        formatter_class=formatter,
    )
    p.add_argument("--features", required=True, help="learned extractor name, e.g. samfeat-lite")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file (None: the weights shipped with featloc)")
    p.add_argument("--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models.export import export_onnx

    weights = str(args.weights) if args.weights is not None else None
    path = export_onnx(args.features, args.output, opset=args.opset, weights=weights)
    logger.info("wrote %s", path)
    return 0
