"""Extraction time of untrained samfeat-lite networks of several backbone widths beside OpenCV
SIFT, in one run (medians, 640x480 generated image): what a wider network would cost before
training it. Untrained networks find other keypoints than trained ones, so only the network
cost carries over.

Usage: python scripts/lite_width_timing.py [--repeats 15] [--widths 16,32,64,96 32,32,64,96]
"""

import argparse

import torch

import featloc
from featloc.config import make_conf
from featloc.eval.speed import make_pair, median_time
from featloc.features.samfeat import SAMFeat, SAMFeatConf
from featloc.models.samfeat import SAMFeatNetConf, build_samfeat_net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--widths", nargs="+",
                        default=["16,32,64,96", "24,32,64,96", "32,32,64,96", "32,48,64,96"])
    args = parser.parse_args()
    image, _, _ = make_pair(640, 480)
    sift = featloc.load_extractor("sift", max_num_keypoints=2048)
    base, _ = median_time(lambda: sift.extract(image), args.repeats)
    print(f"sift: {1e3 * base:.1f} ms")
    for widths in args.widths:
        channels = tuple(int(c) for c in widths.split(","))
        torch.manual_seed(0)
        net = build_samfeat_net(SAMFeatNetConf(arch="lite", lite_channels=channels)).eval()
        conf = make_conf(SAMFeatConf, {"arch": "lite", "max_num_keypoints": 2048,
                                       "detection_threshold": 0.5})
        extractor = SAMFeat(conf, net=net)
        seconds, _ = median_time(lambda e=extractor: e.extract(image), args.repeats)
        print(f"lite {channels}: {1e3 * seconds:.1f} ms ({seconds / base:.2f}x sift)")


if __name__ == "__main__":
    main()
