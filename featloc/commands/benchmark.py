"""featloc benchmark {homography,pose,speed,...}: each benchmark is a module
`featloc/commands/benchmark_<name>.py` with `add_parser(sub, formatter)`."""

from __future__ import annotations

import importlib

BENCHMARKS = ["homography", "pose", "speed"]


def add_parser(sub, formatter):
    p = sub.add_parser(
        "benchmark",
        help="run a benchmark (homography, speed, ...)",
        description="Benchmarks with the field's standard protocols. Results are cached in the "
        "output folder; a re-run recomputes only what changed.",
        formatter_class=formatter,
    )
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    bsub.required = True
    for name in BENCHMARKS:
        importlib.import_module(f"featloc.commands.benchmark_{name}").add_parser(bsub, formatter)
