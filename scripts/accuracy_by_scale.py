"""Homography accuracy at 1 px and localisation error of viewpoint pairs, binned by how much
the pair's homography zooms (max(s, 1/s), s the square root of the Jacobian determinant of H
at the image centre), from the results of `featloc benchmark homography`.

Usage: python scripts/accuracy_by_scale.py --data HPATCHES_DIR RESULTS_DIR [RESULTS_DIR ...]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from featloc.geometry.homography import warp_points
from featloc.io.images import read_image

BINS = (1.0, 1.16, 1.35, 1.57, 1.82, np.inf)  # zoom factor max(s, 1/s)


def zoom(H: np.ndarray, centre: np.ndarray, eps: float = 0.5) -> float:
    """max(s, 1/s) of H at `centre` (central differences)."""
    cols = [(warp_points(centre[None] + d, H) - warp_points(centre[None] - d, H))[0] / (2 * eps)
            for d in (np.array([eps, 0.0]), np.array([0.0, eps]))]
    return float(np.exp(abs(0.5 * np.log(abs(np.linalg.det(np.stack(cols, 1)))))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args()
    print("| results: 1-px accuracy / LE | " + " | ".join(
        f"zoom {a:.2f}-{b:.2f}x" if np.isfinite(b) else f"zoom >= {a:.2f}x"
        for a, b in zip(BINS[:-1], BINS[1:], strict=True)) + " |")
    print("|---" * len(BINS) + "|")
    for folder in args.results:
        pairs = [p for p in json.loads((folder / "results.json").read_text())["pairs"]
                 if p["split"] == "v"]
        rows = []
        for p in pairs:
            seq = args.data / p["sequence"]
            H = np.loadtxt(seq / f"H_1_{p['k']}")
            h, w = read_image(next(seq.glob("1.*"))).shape[:2]
            err = np.inf if p["H_error_px"] is None else p["H_error_px"]
            rows.append((zoom(H, np.array([(w - 1) / 2, (h - 1) / 2])), err,
                         p["loc_error_px"]))
        r = np.array(rows, float)
        cells = []
        for a, b in zip(BINS[:-1], BINS[1:], strict=True):
            m = (r[:, 0] >= a) & (r[:, 0] < b)
            cells.append(f"{(r[m, 1] <= 1).mean() * 100:.0f} % / {np.nanmean(r[m, 2]):.2f} px "
                         f"(n={m.sum()})" if m.any() else "-")
        print(f"| {folder.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
