"""How far apart two relative-pose results on the same pairs really are.

Reads the per-pair pose errors of two `featloc benchmark pose` results folders (the same pairs
file) and prints each AUC, their difference with a paired bootstrap over the pairs (the spread a
different draw of pairs would give), and how much the per-pair errors move between the runs.
Two runs of the same method with nearly identical features (for example float32 against
bfloat16 extraction, keypoints 0.005 px apart) show how much of a difference the estimator's
sensitivity alone produces. Usage:

    python scripts/pose_compare.py RESULTS_A RESULTS_B [--bootstrap 2000]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from featloc.eval.pose import AUC_THRESHOLDS_DEG
from featloc.geometry.metrics import error_auc


def _errors(folder: Path) -> dict[tuple[str, str], float]:
    pairs = json.loads((folder / "results.json").read_text())["pairs"]
    # a failed pair (no pose) counts as an infinite error, as in the benchmark's AUC
    return {(p["name0"], p["name1"]): float("inf") if p["pose_error_deg"] is None
            else float(p["pose_error_deg"]) for p in pairs}


def _auc10(errors: np.ndarray) -> float:
    return 100 * error_auc(errors, [10.0])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ea, eb = _errors(args.a), _errors(args.b)
    keys = sorted(ea.keys() & eb.keys())
    if len(keys) != len(ea) or len(keys) != len(eb):
        raise SystemExit(f"the folders hold different pairs ({len(ea)}, {len(eb)}, "
                         f"{len(keys)} shared)")
    a = np.array([ea[k] for k in keys])
    b = np.array([eb[k] for k in keys])
    rng = np.random.default_rng(args.seed)
    diffs = []
    for _ in range(args.bootstrap):
        i = rng.integers(0, len(keys), len(keys))
        diffs.append(_auc10(b[i]) - _auc10(a[i]))
    finite = np.isfinite(a) & np.isfinite(b)
    moved = np.abs(a[finite] - b[finite])
    print(f"pairs: {len(keys)}; AUC thresholds of the benchmark: {list(AUC_THRESHOLDS_DEG)}")
    print(f"AUC@10: A {_auc10(a):.1f}, B {_auc10(b):.1f}, B - A {_auc10(b) - _auc10(a):+.1f} "
          f"(paired bootstrap sd {np.std(diffs):.1f}; 95 % interval "
          f"{np.percentile(diffs, 2.5):+.1f} to {np.percentile(diffs, 97.5):+.1f})")
    print(f"per-pair error: median |A - B| {np.median(moved):.2f} deg (median error A "
          f"{np.median(a):.2f}, B {np.median(b):.2f}); pairs moved by more than 1 / 5 deg: "
          f"{int((moved > 1).sum())} / {int((moved > 5).sum())}")


if __name__ == "__main__":
    main()
