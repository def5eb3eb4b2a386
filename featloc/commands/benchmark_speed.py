"""featloc benchmark speed: per-stage medians beside OpenCV SIFT in the same run."""

from __future__ import annotations

from pathlib import Path

from . import common


def add_parser(sub, formatter):
    p = sub.add_parser(
        "speed",
        help="time extraction, matching and estimation beside a baseline",
        description="Time feature extraction (per image), matching and homography estimation "
        "(per pair) on a generated image pair (or --images A B), with the baseline measured in "
        "the same run; reports medians and the ratio to the baseline.",
        formatter_class=formatter,
    )
    p.add_argument("--features", nargs="+", default=["sift"],
                   help="extractors to time; NAME@KEY=VALUE[@KEY=VALUE] times a variant with "
                   "its own options in the same run, e.g. samfeat-lite samfeat-lite@backend=onnx")
    p.add_argument("--baseline", default="sift", help="baseline extractor timed in the same run")
    p.add_argument("--extractor-conf", nargs="*", metavar="KEY=VALUE", default=[],
                   help="options of the --features extractors (not the baseline), e.g. "
                   "weights=PATH to time a trained model of another shape")
    common.add_matcher_args(p)
    p.add_argument("--size", default="640x480", help="WxH of the generated pair")
    p.add_argument("--images", nargs=2, type=Path, metavar=("IMG0", "IMG1"),
                   help="time on these two images instead of a generated pair")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per stage")
    p.add_argument("--max-keypoints", type=int, default=2048, help="keypoint budget per image")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--output", type=Path, default=None, help="folder for speed.json and speed.md")
    # Matcher timing mode: matching alone at several keypoint budgets, beside --matcher.
    p.add_argument("--matchers", nargs="+", default=None, metavar="NAME",
                   help="time these matchers alone (beside --matcher as the baseline, e.g. nn) "
                   "on the first --features extractor's keypoints; --matcher-conf applies to "
                   "them, e.g. --matchers attention --matcher-conf weights=PATH")
    p.add_argument("--num-keypoints", nargs="+", type=int, default=[512, 1024, 2048],
                   help="matcher timing mode: keypoint budgets per image")
    # Dense mode: detector-free matchers, whole pair (images in, matches out) and memory.
    p.add_argument("--dense", nargs="+", default=None, metavar="NAME",
                   help="time these detector-free matchers (samnet, coam) per pair, each in a "
                   "fresh process with its peak memory; --matcher-conf applies to them, e.g. "
                   "weights=none for untrained networks of the default size; the --baseline "
                   "extractor with --matcher is timed per pair in the same run "
                   "(--baseline '' skips it)")
    common.add_ransac_args(p)
    common.add_refine_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..eval.speed import run_speed_benchmark, speed_table

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if common.refine_conf(args) is not None and not args.matchers:
        raise ValueError("--refine / --refine-conf time the refinement of matches: use them with "
                         "--matchers")
    width, height = (int(v) for v in args.size.lower().split("x"))
    images = None
    if args.images:
        from ..io.images import read_image

        images = tuple(read_image(p) for p in args.images)
    if args.dense:
        from ..eval.speed import dense_speed_table, run_dense_speed_benchmark

        result = run_dense_speed_benchmark(args.dense, width, height, args.repeats,
                                           common.matcher_conf(args), args.output, images,
                                           args.threads, args.baseline or None, args.matcher,
                                           args.max_keypoints)
        print(dense_speed_table(result))
        return 0
    if args.matchers:
        from ..eval.speed import matcher_speed_table, run_matcher_speed_benchmark

        result = run_matcher_speed_benchmark(
            args.matchers, args.num_keypoints, args.features[0], args.matcher, width, height,
            args.repeats, common.matcher_conf(args), None, args.output, images,
            common.refine_conf(args))
        print(matcher_speed_table(result))
        return 0
    result = run_speed_benchmark(
        args.features, args.matcher, args.baseline, width, height, args.repeats,
        args.max_keypoints, common.ransac_conf(args), args.output, images,
        common.parse_kv(args.extractor_conf),
        {spec: common.parse_kv(spec.split("@")[1:]) for spec in args.features if "@" in spec},
    )
    print(speed_table(result))
    return 0
