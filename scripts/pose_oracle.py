"""What the keypoints of a relative-pose benchmark allow, from its results folders.

For each pair of a `featloc benchmark pose` run on rendered scenes (exact depth, no resize), the
protocol's estimator is run on three match sets and scored like the benchmark (AUC of
max(rotation, translation-angle) error):
- `benchmark`: the folder's own matches (the benchmark's figure, recomputed);
- `inliers`: those matches with the wrong ones removed (reprojection through depth and pose
  within `--px`): what the matcher's correct matches allow once its outliers are known;
- `oracle@T`: every ground-truth correspondence among the detected keypoints (mutual nearest
  reprojections within T px, occlusion-checked, `gt_matches_from_pose_depth`): what a perfect
  matcher on these keypoints would give.

The estimator runs with the benchmark's settings, seed included (OpenCV's classic RANSAC draws
from a fixed internal generator, so the protocol's estimator is deterministic anyway). Usage:

    python scripts/pose_oracle.py --scene outputs/scenes/gallery RESULTS_DIR [RESULTS_DIR ...]
"""

import argparse
import json
from pathlib import Path

import numpy as np

from featloc.eval.pose import AUC_THRESHOLDS_DEG, evaluate_pose_pair, read_pose_pairs
from featloc.geometry.depth import gt_matches_from_pose_depth, project_with_depth
from featloc.geometry.metrics import error_auc
from featloc.io.h5 import FeatureStore, MatchStore


def folder_errors(folder: Path, scene: Path, oracle_px, inlier_px: float) -> dict:
    """Per match set: [pairs] pose errors, and the mean match count."""
    summary = json.loads((folder / "summary.json").read_text())
    if any(summary["confs"]["preprocessing"].values()):
        raise SystemExit(f"{folder}: resized images; this script needs the original size")
    confs = summary["confs"]  # the benchmark's resolved estimator and precision threshold
    pairs = read_pose_pairs(scene / "pairs_gt.txt")
    sets = ["benchmark", "inliers", *[f"oracle@{t:g}" for t in oracle_px]]
    errors = {s: np.full(len(pairs), np.inf) for s in sets}
    counts = {s: [] for s in sets}
    depth = {}

    def load_depth(name):
        if name not in depth:
            depth[name] = np.load(scene / "depth" / f"{Path(name).stem}.npy")
        return depth[name]

    with FeatureStore(folder / summary["files"]["features"], "r") as F, \
            MatchStore(folder / summary["files"]["matches"], "r") as M:
        for k, pair in enumerate(pairs):
            f0, f1 = F.read(pair.name0), F.read(pair.name1)
            kp0, kp1 = f0.keypoints.astype(np.float64), f1.keypoints.astype(np.float64)
            d0, d1 = load_depth(pair.name0), load_depth(pair.name1)
            m = M.read(pair.name0, pair.name1, len(f0))
            p0, p1 = m.matched_points(f0, f1)
            p01, visible = project_with_depth(p0, d0, pair.K0, pair.T_0to1, pair.K1, d1)
            ok = visible & (np.linalg.norm(p01 - p1, axis=1) < inlier_px)
            match_sets = {"benchmark": (p0, p1), "inliers": (p0[ok], p1[ok])}
            for t in oracle_px:
                gt = gt_matches_from_pose_depth(kp0, kp1, d0, d1, pair.K0, pair.K1, pair.T_0to1,
                                                pos_th_px=t, neg_th_px=max(t, 5.0))
                i = np.flatnonzero(gt >= 0)
                match_sets[f"oracle@{t:g}"] = (kp0[i], kp1[gt[i]])
            for s, (a, b) in match_sets.items():
                counts[s].append(len(a))
                errors[s][k] = evaluate_pose_pair(a, b, pair.K0, pair.K1, pair.T_0to1, confs["ransac"],
                                                  confs["epipolar_th"], len(kp0))["pose_error_deg"]
    return {"errors": errors, "counts": {s: float(np.mean(c)) for s, c in counts.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--scene", type=Path, required=True, help="make-scenes output folder")
    parser.add_argument("--oracle-px", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--px", type=float, default=3.0, help="inlier reprojection threshold")
    args = parser.parse_args()
    th = AUC_THRESHOLDS_DEG
    print(f"| results folder | match set | AUC@{th[0]:g} | AUC@{th[1]:g} | AUC@{th[2]:g} "
          f"| #matches |\n|---|---|---|---|---|---|")
    for folder in args.folders:
        out = folder_errors(folder, args.scene, args.oracle_px, args.px)
        for s, e in out["errors"].items():
            auc = error_auc(list(e), th)
            print(f"| {folder.name} | {s} | " + " | ".join(f"{100 * a:.1f}" for a in auc)
                  + f" | {out['counts'][s]:.0f} |")


if __name__ == "__main__":
    main()
