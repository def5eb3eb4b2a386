"""Independent check of the HPatches MMA numbers of `featloc benchmark homography`.

A deliberately plain re-implementation of the D2-Net protocol that shares no code with
featloc: descriptors are read with h5py straight from the benchmark's feature cache (hloc
layout, descriptors stored [D, N]), matched by brute-force mutual nearest neighbour in
numpy, and each H_1_k is read from the data folder. For each pair the precision at t px is
the fraction of matches with ||pi(H x_a) - x_b|| <= t (0 without matches); MMA@t is its mean
over pairs, for i_, v_ and all pairs. The script prints the maximum absolute difference to
the benchmark's results.json (per pair) and summary.json (MMA) per threshold and exits with
1 if any exceeds the tolerance.

Usage: python scripts/d2net_mma_check.py --data DATA_DIR --results BENCHMARK_OUTPUT_DIR
"""

import argparse
import json
import os
import sys

import h5py
import numpy as np

THRESHOLDS = list(range(1, 11))
HIGH_RES = ["i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
            "v_artisans", "v_astronautis", "v_talent"]


def mutual_nn(d0, d1):
    """Brute-force mutual nearest neighbours in L2: [K, 2] index pairs."""
    d0 = d0.astype(np.float64)
    d1 = d1.astype(np.float64)
    dist = (d0 ** 2).sum(1)[:, None] + (d1 ** 2).sum(1)[None, :] - 2 * d0 @ d1.T
    nn01 = dist.argmin(1)
    nn10 = dist.argmin(0)
    ids = np.arange(len(d0))
    keep = nn10[nn01] == ids
    return np.stack([ids[keep], nn01[keep]], 1)


def image_file(folder, index):
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if stem == str(index) and ext:
            return name
    return None


def read_features(h5, name):
    group = h5[name]
    keypoints = group["keypoints"][()]
    descriptors = group["descriptors"][()].T  # stored [D, N]
    return keypoints, descriptors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="HPatches-format folder")
    parser.add_argument("--results", required=True, help="output folder of the benchmark")
    parser.add_argument("--tolerance", type=float, default=0.005)
    args = parser.parse_args()

    with open(os.path.join(args.results, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(args.results, "results.json")) as f:
        results = json.load(f)
    matcher = summary["confs"]["matcher"]
    if not (matcher["name"] == "nn" and matcher["mutual_check"] and matcher["ratio_thresh"] is None
            and matcher["distance_thresh"] is None and matcher["metric"] == "l2"):
        print("warning: the benchmark matcher is not plain mutual NN; differences are expected")
    theirs = {(r["name0"], r["name1"]): r["precision"] for r in results["pairs"]}

    precisions = {"i": [], "v": [], "all": []}
    pair_diff = np.zeros(len(THRESHOLDS))
    compared = 0
    h5 = h5py.File(os.path.join(args.results, summary["files"]["features"]), "r")
    for seq in sorted(os.listdir(args.data)):
        folder = os.path.join(args.data, seq)
        if not os.path.isdir(folder) or seq.startswith(".") or image_file(folder, 1) is None:
            continue
        if seq in HIGH_RES and not summary["keep_high_res"]:
            continue
        name0 = seq + "/" + image_file(folder, 1)
        kp0, desc0 = read_features(h5, name0)
        for k in range(2, 7):
            h_file = os.path.join(folder, f"H_1_{k}")
            if image_file(folder, k) is None or not os.path.isfile(h_file):
                continue  # the benchmark skips incomplete pairs too
            name1 = seq + "/" + image_file(folder, k)
            kp1, desc1 = read_features(h5, name1)
            H = np.loadtxt(h_file)
            prec = np.zeros(len(THRESHOLDS))
            if len(kp0) and len(kp1):
                m = mutual_nn(desc0, desc1)
                if len(m):
                    pa = np.concatenate([kp0[m[:, 0]], np.ones((len(m), 1))], 1) @ H.T
                    pa = pa[:, :2] / pa[:, 2:]
                    err = np.sqrt(((pa - kp1[m[:, 1]]) ** 2).sum(1))
                    prec = np.array([np.mean(err <= t) for t in THRESHOLDS])
            precisions["all"].append(prec)
            if seq[:2] in ("i_", "v_"):
                precisions[seq[0]].append(prec)
            if (name0, name1) in theirs:
                pair_diff = np.maximum(pair_diff, np.abs(prec - np.array(theirs[(name0, name1)])))
                compared += 1
    h5.close()

    n = len(precisions["all"])
    print(f"pairs: {n} (i: {len(precisions['i'])}, v: {len(precisions['v'])}); "
          f"compared per pair with results.json: {compared}")
    if compared != n or n != summary["num_pairs"]["all"]:
        print(f"error: pair counts differ (benchmark: {summary['num_pairs']['all']})")
        return 1
    worst = 0.0
    print("t_px  " + "  ".join(f"MMA_{s}(ours/bench)" for s in ("i", "v", "all"))
          + "  max|diff| MMA  max|diff| per pair")
    for j, t in enumerate(THRESHOLDS):
        cells, diff = [], 0.0
        for split in ("i", "v", "all"):
            ours = float(np.mean([p[j] for p in precisions[split]])) if precisions[split] else 0.0
            bench = summary["mma"][split][j]
            diff = max(diff, abs(ours - bench))
            cells.append(f"{ours:.4f}/{bench:.4f}")
        worst = max(worst, diff)
        print(f"{t:4d}  {'  '.join(cells)}  {diff:.1e}  {pair_diff[j]:.1e}")
    print(f"max |difference| of MMA over thresholds and splits: {worst:.2e} "
          f"(tolerance {args.tolerance})")
    return 1 if worst > args.tolerance else 0


if __name__ == "__main__":
    sys.exit(main())
