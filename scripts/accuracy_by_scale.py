"""Homography accuracy at 1 px of viewpoint pairs, binned by how much the pair's homography
zooms (max(s, 1/s), s the square root of the Jacobian determinant of H at the image centre),
from the results folders of `featloc benchmark homography`.

Per bin and results folder: the benchmark's accuracy (its robust estimator on all mutual-NN
matches), an oracle's (least squares on the matches the ground truth puts within `--oracle-px`
of their correspondence: what the keypoints' localisation allows once outliers are known), the
median residual of those matches, and the pair count.

Usage: python scripts/accuracy_by_scale.py --data HPATCHES_DIR RESULTS_DIR [RESULTS_DIR ...]
"""

import argparse
import json
from pathlib import Path

import cv2
import h5py
import numpy as np

from featloc.geometry.homography import (
    homography_corner_error,
    homography_jacobian,
    warp_points,
)

BINS = (1.0, 1.16, 1.35, 1.57, 1.82, np.inf)  # zoom factor max(s, 1/s)


def zoom(H: np.ndarray, centre: np.ndarray) -> float:
    """max(s, 1/s) of H at `centre`, s the square root of the Jacobian determinant."""
    return float(np.exp(abs(0.5 * np.log(abs(np.linalg.det(homography_jacobian(H, centre)[0]))))))


def pair_rows(folder: Path, data: Path, oracle_px: float) -> np.ndarray:
    """[zoom, benchmark error, oracle error, median oracle residual] per viewpoint pair."""
    pairs = [p for p in json.loads((folder / "results.json").read_text())["pairs"]
             if p["split"] == "v"]
    (feats,), (matches,) = folder.glob("feats-*.h5"), folder.glob("matches-*.h5")
    rows = []
    with h5py.File(feats, "r") as F, h5py.File(matches, "r") as M:
        for p in pairs:
            seq, name0, name1 = p["sequence"], p["name0"], p["name1"]
            f0, f1 = F[name0], F[name1]
            w, h = (int(v) for v in f0["image_size"][()])
            H = np.loadtxt(data / seq / f"H_1_{p['k']}")
            m = M[f"{name0.replace('/', '-')}/{name1.replace('/', '-')}"]["matches0"][()]
            i = np.flatnonzero(m >= 0)
            p0 = f0["keypoints"][()][i].astype(np.float64)
            p1 = f1["keypoints"][()][m[i]].astype(np.float64)
            residual = np.linalg.norm(warp_points(p0, H) - p1, axis=1)
            good = residual < oracle_px
            H_ls = cv2.findHomography(p0[good], p1[good], 0)[0] if good.sum() >= 4 else None
            bench = np.inf if p["H_error_px"] is None else p["H_error_px"]
            rows.append((zoom(H, np.array([(w - 1) / 2, (h - 1) / 2])), bench,
                         np.inf if H_ls is None else homography_corner_error(H_ls, H, (w, h)),
                         np.median(residual[good]) if good.any() else np.nan))
    return np.array(rows, float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--oracle-px", type=float, default=2.0)
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args()
    edges = list(zip(BINS[:-1], BINS[1:], strict=True))
    print("1-px accuracy: benchmark / oracle least squares (median residual of the oracle's "
          f"matches within {args.oracle_px:g} px; pairs)\n")
    print("| results | " + " | ".join(
        f"zoom {a:.2f}-{b:.2f}x" if np.isfinite(b) else f"zoom >= {a:.2f}x" for a, b in edges)
        + " |")
    print("|---" * len(BINS) + "|")
    for folder in args.results:
        r = pair_rows(folder, args.data, args.oracle_px)
        cells = []
        for a, b in edges:
            m = (r[:, 0] >= a) & (r[:, 0] < b)
            cells.append(f"{(r[m, 1] <= 1).mean() * 100:.0f} / {(r[m, 2] <= 1).mean() * 100:.0f} %"
                         f" ({np.nanmedian(r[m, 3]):.2f} px; {m.sum()})" if m.any() else "-")
        print(f"| {folder.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
