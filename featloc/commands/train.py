"""featloc train --config FILE [key=value ...] [--resume] [--export-only]"""

from __future__ import annotations

from pathlib import Path


def add_parser(sub, formatter):
    p = sub.add_parser(
        "train",
        help="train a model (SAMFeat, ...) with the project's trainer",
        description="Train the model described by a YAML config (configs/train/*.yaml), with "
        "key=value overrides (e.g. train.steps=1000 data.image_size=256 train.device=cuda). "
        "Unknown keys are errors. A run writes checkpoints, logs (CSV, TensorBoard) and the "
        "exported inference weights to train.output_dir. Launch with `torchrun "
        "--nproc_per_node=N -m featloc.cli train ...` for DistributedDataParallel.",
        formatter_class=formatter,
    )
    p.add_argument("--config", type=Path, required=True, help="training config (YAML)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the newest checkpoint in train.output_dir")
    p.add_argument("--export-only", action="store_true",
                   help="only export inference weights from the newest checkpoint")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.trainer import train

    train(args.config, args.overrides, resume=args.resume, export_only=args.export_only)
    return 0
