"""How well do the detector pseudo-labels localise? (the student's ceiling, issue 3)

Computes the training pseudo-labels (homographic adaptation of the label teacher, settings of a
training config's `data.labels`) on both images of the viewpoint pairs of an HPatches-format
folder and scores them as a detector with the benchmark's SuperPoint repeatability and
localisation error (3 px) on each image's `--top-k` best labels. A student trained on these
labels cannot be expected to localise much better than they do.

Usage: python scripts/label_localisation.py --data HPATCHES_DIR \
    [--config configs/train/samfeat-lite.yaml] [--pairs 100] [--top-k 300] [--subpixel]
    [--detector harris]
"""

import argparse
import zlib

import numpy as np
import yaml

from featloc.eval.hpatches import detector_repeatability, list_pairs
from featloc.io.images import read_image
from featloc.train.labels import LabelConf, build_detector, label_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="configs/train/samfeat-lite.yaml")
    parser.add_argument("--pairs", type=int, default=100, help="first N viewpoint pairs")
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--subpixel", action="store_true", help="data.labels.subpixel=true")
    parser.add_argument("--detector", help="instead of the config's data.labels.detector")
    args = parser.parse_args()
    with open(args.config, encoding="utf-8") as f:
        labels = yaml.safe_load(f)["data"]["labels"]
    labels["top_k"] = args.top_k
    labels["subpixel"] = args.subpixel or labels.get("subpixel", False)
    labels["detector"] = args.detector or labels["detector"]
    conf = LabelConf(**labels)
    detector = build_detector(conf)
    cache: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}

    def keypoints(name: str) -> tuple[np.ndarray, tuple[int, int]]:
        # image 1 of a sequence is in every pair: label it once
        if name not in cache:
            image = read_image(f"{args.data}/{name}")
            points = label_image(image, conf, zlib.crc32(name.encode()), detector)[:, :2]
            cache[name] = points, (image.shape[1], image.shape[0])
        return cache[name]

    reps, errors = [], []
    for pair in [p for p in list_pairs(args.data) if p.split == "v"][: args.pairs]:
        (k0, size0), (k1, size1) = keypoints(pair.name0), keypoints(pair.name1)
        rep, err = detector_repeatability(k0, k1, pair.H, size0, size1)
        reps.append(rep)
        if err is not None:
            errors.append(err)
    print(f"{conf.detector} pseudo-labels ({conf.num_homographies} warps, top {args.top_k}, "
          f"{'sub-pixel' if conf.subpixel else 'integer'}) on "
          f"{len(reps)} viewpoint pairs: repeatability {100 * np.mean(reps):.1f} %, "
          f"localisation error {np.mean(errors):.2f} px")


if __name__ == "__main__":
    main()
