"""The `featloc` command line: one subcommand per step.

Each subcommand lives in `featloc/commands/<name>.py` with `add_parser(subparsers)` (which
registers its arguments and sets `func`) and a thin `run(args) -> int` that calls a typed
library function. Nothing heavy is imported until a subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

# Order in which subcommands appear in `featloc --help`.
COMMANDS = [
    "extract",
    "pairs",
    "match",
    "match_dense",
    "retrieve",
    "localize_xy",
    "mapping",
    "localize",
    "evaluate_localization",
    "show",
    "make_hpatches",
    "make_scenes",
    "benchmark",
    "demo",
    "export_onnx",
    "teach",
    "train",
]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featloc",
        description="Local features, matching, geometry and localization.",
        epilog="environment: FEATLOC_MALLOC=default keeps the C library's memory allocator "
               "settings (by default featloc keeps freed memory for reuse, which is faster; "
               "see featloc/allocator.py)",
        formatter_class=_Formatter,
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors, no progress bars")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"featloc.commands.{name}")
        module.add_parser(sub, _Formatter)
    return parser


def _raise_interrupt(signum, frame):
    # Turn SIGTERM into KeyboardInterrupt so stores flush and merge what was completed.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="[%(asctime)s %(name)s %(levelname)s] %(message)s",
                        datefmt="%H:%M:%S")
    from . import progress

    progress.set_enabled(not args.quiet)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        # freed image-sized buffers are reused instead of re-faulted from the system
        # (up to 39 % of extraction time on the 2-core machine; featloc/allocator.py)
        from .allocator import retain_from_environment

        retain_from_environment()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        logging.getLogger("featloc").error("interrupted; completed work is saved, re-run to resume")
        return 130
    except (FileNotFoundError, NotADirectoryError, ValueError, OSError) as exc:
        logging.getLogger("featloc").error("%s", exc)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
