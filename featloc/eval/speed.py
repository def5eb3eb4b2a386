"""Speed benchmark: per-stage wall-clock medians of our pipeline beside a baseline measured
in the same run (timings on a shared machine are only comparable within one run)."""

from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import build, resolved_conf
from ..geometry import estimate_homography
from ..synth.textures import random_scene_image
from .report import write_json

logger = logging.getLogger(__name__)


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> tuple[float, object]:
    """Median wall-clock seconds of `fn()` over `repeats` calls (after `warmup` calls), and
    its last output."""
    return interleaved_median_times({"fn": fn}, repeats, warmup)["fn"]


def interleaved_median_times(fns: dict[str, Callable[[], object]], repeats: int,
                             warmup: int = 2) -> dict[str, tuple[float, object]]:
    """`median_time` for several functions timed in turn, one call of each per round: a slow
    spell of a shared machine then falls on all of them alike instead of on whichever was
    being timed, so their ratios hold from run to run."""
    outs = {name: None for name in fns}
    for _ in range(warmup):
        for name, fn in fns.items():
            outs[name] = fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), outs[name]) for name in fns}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine() -> dict:
    import os

    import torch

    from ..allocator import current_setting
    from ..features.samfeat import native_bfloat16

    # the CPU decides samfeat-lite's precision="auto" (bfloat16 only where it is native),
    # so timings and features from two machines are only comparable with these beside them
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "cpu": _cpu_model(),
            "native_bfloat16": native_bfloat16(torch.device("cpu")),
            # glibc malloc thresholds set by featloc (None: the C library's defaults)
            "malloc": current_setting()}


def _write(output: str | Path | None, stem: str, result: dict, table: str) -> None:
    """`<stem>.json` and `<stem>.md` in `output` (nothing when output is None)."""
    if output is None:
        return
    write_json(Path(output) / f"{stem}.json", result)
    (Path(output) / f"{stem}.md").write_text(table)

def make_pair(width: int = 640, height: int = 480, seed: int = 0):
    """A generated image and a homography-warped view of it, with H_0to1."""
    import cv2

    rng = np.random.default_rng(seed)
    image0 = random_scene_image(rng, height, width)
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    moved = (corners + rng.uniform(-0.08, 0.08, (4, 2)) * [width, height]).astype(np.float32)
    H = cv2.getPerspectiveTransform(corners, moved)
    image1 = cv2.warpPerspective(image0, H, (width, height), flags=cv2.INTER_LINEAR)
    return image0, image1, H


def run_speed_benchmark(
    features: list[str],
    matcher: str = "nn",
    baseline: str = "sift",
    width: int = 640,
    height: int = 480,
    repeats: int = 20,
    max_num_keypoints: int = 2048,
    ransac: dict | None = None,
    output: str | Path | None = None,
    images: tuple[np.ndarray, np.ndarray] | None = None,
    extractor_conf: dict | None = None,
    variant_options: dict[str, dict] | None = None,
) -> dict:
    """Time extraction (per image), matching and homography estimation (per pair) for each
    extractor in `features` (with `extractor_conf`) and the baseline, all in this one run.
    A feature written `NAME@...` is a variant of NAME whose options `variant_options[spec]`
    go over `extractor_conf` (e.g. the same network on two backends, side by side).

    Returns a dict with, per extractor: median seconds of `extract`, `match`, `estimate`,
    and `pair` (both extractions + match + estimate, timed end to end), the keypoint and
    inlier counts, and `extract_ratio_to_baseline`.
    """

    if images is None:
        image0, image1, _ = make_pair(width, height)
    else:
        image0, image1 = images
    names = list(dict.fromkeys([baseline, *features]))
    model = build("matcher", matcher)
    variant_options = variant_options or {}
    extractors = {
        spec: build("extractor", spec.split("@", 1)[0], max_num_keypoints=max_num_keypoints,
                    **({} if spec == baseline
                       else {**(extractor_conf or {}), **variant_options.get(spec, {})}))
        for spec in names}
    first = {}  # the first call alone: one-time costs (torch.compile, an ONNX session's start)
    for name, e in extractors.items():
        start = time.perf_counter()
        e.extract(image0)
        first[name] = time.perf_counter() - start
    extraction = interleaved_median_times(
        {name: (lambda e=e: e.extract(image0)) for name, e in extractors.items()}, repeats)
    rows = {}
    for name, extractor in extractors.items():
        t_extract, f0 = extraction[name]
        f1 = extractor.extract(image1)
        t_match, matches = median_time(lambda a=f0, b=f1: model.match(a, b), repeats)
        p0, p1 = matches.matched_points(f0, f1)
        t_est, estimate = median_time(lambda a=p0, b=p1: estimate_homography(a, b, ransac), repeats)

        def pair(e=extractor):
            a, b = e.extract(image0), e.extract(image1)
            m = model.match(a, b)
            return estimate_homography(*m.matched_points(a, b), ransac)

        t_pair, _ = median_time(pair, max(5, repeats // 2))
        rows[name] = {
            # precision and backend as resolved on this machine
            "conf": resolved_conf(name.split("@", 1)[0], extractor),
            "extract_s": t_extract,
            "first_extract_s": first[name],
            "match_s": t_match,
            "estimate_s": t_est,
            "pair_s": t_pair,
            "num_keypoints": [len(f0), len(f1)],
            "num_matches": len(matches),
            "num_inliers": estimate.num_inliers,
        }
        logger.info("%s: extract %.1f ms, match %.1f ms, estimate %.1f ms, pair %.1f ms",
                    name, 1e3 * t_extract, 1e3 * t_match, 1e3 * t_est, 1e3 * t_pair)
    base = rows[baseline]["extract_s"]
    for row in rows.values():
        row["extract_ratio_to_baseline"] = row["extract_s"] / base
    result = {
        "image_size": [int(image0.shape[1]), int(image0.shape[0])],
        "repeats": repeats,
        "matcher": matcher,
        "baseline": baseline,
        "max_num_keypoints": max_num_keypoints,
        "extractor_conf": dict(extractor_conf or {}),
        "machine": _machine(),
        "results": rows,
    }
    _write(output, "speed", result, speed_table(result))
    return result


def _memory_note(machine: dict) -> str:
    # times differ by up to 39 % between the two on the 2-core machine (README, Speed)
    if "malloc" not in machine:
        return ""
    return ", freed memory " + ("retained" if machine["malloc"] else "returned (glibc default)")


def speed_table(result: dict) -> str:
    w, h = result["image_size"]
    machine = result.get("machine", {})
    cpu = (f"; {machine['cpu']}, native bfloat16: {'yes' if machine['native_bfloat16'] else 'no'}"
           if "cpu" in machine else "")
    cpu += _memory_note(machine)
    lines = [
        f"Median wall-clock time, {w}x{h}, {result['repeats']} runs, matcher "
        f"`{result['matcher']}`, up to {result['max_num_keypoints']} keypoints"
        + "".join(f", {k}={v}" for k, v in result.get("extractor_conf", {}).items())
        + f"; extraction timed in turn with the baseline{cpu}",
        "",
        "| features | extract (ms/image) | vs " + result["baseline"] + " | first call (ms) | "
        "match (ms) | homography (ms) | whole pair (ms) | keypoints | matches | inliers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        first = f"{1e3 * r['first_extract_s']:.0f}" if "first_extract_s" in r else "-"
        lines.append(
            f"| {name} | {1e3 * r['extract_s']:.1f} | {r['extract_ratio_to_baseline']:.2f}x | "
            f"{first} | "
            f"{1e3 * r['match_s']:.1f} | {1e3 * r['estimate_s']:.1f} | {1e3 * r['pair_s']:.1f} | "
            f"{r['num_keypoints'][0]} | {r['num_matches']} | {r['num_inliers']} |"
        )
    return "\n".join(lines) + "\n"


def _top_k(features, k: int):
    if len(features) <= k:
        return features
    order = np.argsort(-features.keypoint_scores, kind="stable")[:k]
    return features.select(np.sort(order))


def run_matcher_speed_benchmark(
    matchers: list[str],
    num_keypoints: list[int] = (512, 1024, 2048),
    features: str = "sift",
    baseline: str = "nn",
    width: int = 640,
    height: int = 480,
    repeats: int = 20,
    matcher_conf: dict | None = None,
    extractor_conf: dict | None = None,
    output: str | Path | None = None,
    images: tuple[np.ndarray, np.ndarray] | None = None,
    refine: dict | None = None,
) -> dict:
    """Time matching alone (per pair) at several keypoint budgets, for each matcher in
    `matchers` and the `baseline` matcher, all in this one run, on the best keypoints of one
    extraction of the pair. `matcher_conf` applies to the timed matchers, not the baseline.
    `refine` (`RefineConf` overrides) also times the sub-pixel refinement of the baseline's
    matches (row "refine").

    Returns a dict with, per keypoint budget and matcher: the median seconds per pair
    (`match_s`), the keypoint and match counts, the ratio to the baseline, and for matchers
    with adaptive depth the layers run (`layers`).
    """

    if images is None:
        image0, image1, _ = make_pair(width, height)
    else:
        image0, image1 = images
    extractor = build("extractor", features,
                      **{**(extractor_conf or {}), "max_num_keypoints": max(num_keypoints)})
    full0, full1 = extractor.extract(image0), extractor.extract(image1)
    names = list(dict.fromkeys([baseline, *matchers]))
    models = {name: build("matcher", name, **({} if name == baseline else matcher_conf or {}))
              for name in names}
    rows: dict[str, dict] = {}
    for k in num_keypoints:
        f0, f1 = _top_k(full0, k), _top_k(full1, k)
        if min(len(f0), len(f1)) < k:
            logger.warning("only %d / %d keypoints for the budget %d (larger image: --size)",
                           len(f0), len(f1), k)
        row = {}
        for name, model in models.items():
            t_match, matches = median_time(lambda m=model, a=f0, b=f1: m.match(a, b), repeats)
            entry = {"match_s": t_match, "num_keypoints": [len(f0), len(f1)],
                     "num_matches": len(matches)}
            if hasattr(model, "match_tensors"):  # adaptive depth: layers actually run
                entry["layers"] = int(model.match_tensors(f0, f1)["stop"])
            row[name] = entry
            logger.info("%s @ %d keypoints: %.1f ms", name, k, 1e3 * t_match)
        if refine is not None:
            from ..matching.refine import refine_matches

            p0, p1 = models[baseline].match(f0, f1).matched_points(f0, f1)
            t_refine, refined = median_time(
                lambda a=p0, b=p1: refine_matches(image0, image1, a, b, refine), repeats)
            row["refine"] = {"match_s": t_refine, "num_keypoints": [len(f0), len(f1)],
                             "num_matches": int(refined.refined.sum())}
            logger.info("refine %d matches: %.1f ms", len(p0), 1e3 * t_refine)
        for entry in row.values():
            entry["ratio_to_baseline"] = entry["match_s"] / row[baseline]["match_s"]
        rows[str(k)] = row
    result = {
        "mode": "matchers",
        "image_size": [int(image0.shape[1]), int(image0.shape[0])],
        "features": features,
        "repeats": repeats,
        "baseline": baseline,
        "matchers": names,
        "matcher_conf": dict(matcher_conf or {}),
        "refine": refine,
        "machine": _machine(),
        "results": rows,
    }
    _write(output, "speed-matchers", result, matcher_speed_table(result))
    return result


def matcher_speed_table(result: dict) -> str:
    w, h = result["image_size"]
    lines = [
        f"Median matching time per pair, {result['features']} keypoints of a {w}x{h} pair, "
        f"{result['repeats']} runs, {result['machine']['torch_threads']} torch thread(s)"
        + _memory_note(result["machine"])
        + (f"; refine: sub-pixel refinement of the {result['baseline']} matches (matches: "
           "those refined)" if result.get("refine") is not None else ""),
        "",
        "| keypoints | matcher | match (ms) | vs " + result["baseline"] + " | layers run | "
        "matches |",
        "|---|---|---|---|---|---|",
    ]
    for k, row in result["results"].items():
        for name, r in row.items():
            layers = r.get("layers", "")
            lines.append(
                f"| {k} ({r['num_keypoints'][0]}/{r['num_keypoints'][1]}) | {name} | "
                f"{1e3 * r['match_s']:.1f} | {r['ratio_to_baseline']:.1f}x | {layers} | "
                f"{r['num_matches']} |"
            )
    return "\n".join(lines) + "\n"


def _time_pair(pair: Callable[[], int], net, repeats: int) -> dict:
    """Median seconds of `pair()` (returns the number of matches) and the memory it took, in
    the calling (fresh) process; `net` (or None) gives the parameter count."""
    import resource

    import torch

    from ..allocator import current_setting

    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, num_matches = median_time(pair, repeats)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {"pair_s": seconds, "num_matches": int(num_matches),
            "peak_rss_mb": peak_kb / 1024, "match_rss_mb": max(peak_kb - before_kb, 0) / 1024,
            "parameters": sum(p.numel() for p in net.parameters()) if net is not None else 0,
            "torch_threads": torch.get_num_threads(), "malloc": current_setting()}


def _spawned_setup(threads: int, malloc: dict | None) -> None:
    """In a fresh process: the parent's torch threads and allocator thresholds (mallopt
    settings are not inherited)."""
    import torch

    from ..allocator import retain_freed_memory

    if malloc:
        retain_freed_memory(malloc["mmap_threshold"])
    if threads:
        torch.set_num_threads(threads)


def _time_dense(name: str, conf: dict, image0, image1, repeats: int, threads: int,
                malloc: dict | None = None) -> dict:
    """One dense matcher's timing and memory (`_time_pair`)."""
    _spawned_setup(threads, malloc)

    matcher = build("dense", name, **conf)
    return _time_pair(lambda: len(matcher.match_points(image0, image1)["scores"]), matcher.net,
                      repeats)


def _time_sparse_pair(extractor: str, matcher: str, max_num_keypoints: int, image0, image1,
                      repeats: int, threads: int, malloc: dict | None = None) -> dict:
    """The baseline's whole pair (extract both images, match), timed like `_time_dense`."""
    _spawned_setup(threads, malloc)
    ext = build("extractor", extractor, max_num_keypoints=max_num_keypoints)
    model = build("matcher", matcher)
    return _time_pair(lambda: len(model.match(ext.extract(image0), ext.extract(image1))),
                      getattr(ext, "net", None), repeats)


def run_dense_speed_benchmark(
    matchers: list[str],
    width: int = 640,
    height: int = 480,
    repeats: int = 10,
    matcher_conf: dict | None = None,
    output: str | Path | None = None,
    images: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int = 0,
    baseline: str | None = "sift",
    baseline_matcher: str = "nn",
    max_num_keypoints: int = 2048,
) -> dict:
    """Time the dense matchers on one pair (median seconds per pair, both images in, matches
    out) and measure their peak memory.

    Each matcher runs in a fresh spawned process, so its peak resident memory (ru_maxrss)
    is its own: `peak_rss_mb` is the process peak (Python, torch, the model and the
    matching), `match_rss_mb` the growth of that peak while matching (activations, the
    coarse similarity matrix). `matcher_conf` applies to every matcher (e.g. weights=none
    to time untrained networks of the default size). The `baseline` sparse pipeline
    (extract both images with up to `max_num_keypoints`, match with `baseline_matcher`) is
    timed first, the same way, and every row gets `ratio_to_baseline`; None skips it.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..allocator import current_setting

    if images is None:
        image0, image1, _ = make_pair(width, height)
    else:
        image0, image1 = images
    jobs = {}
    if baseline:
        jobs[f"{baseline}+{baseline_matcher}"] = (_time_sparse_pair, baseline, baseline_matcher,
                                                  max_num_keypoints)
    for name in matchers:
        jobs[name] = (_time_dense, name, dict(matcher_conf or {}))
    rows = {}
    context = multiprocessing.get_context("spawn")
    for name, (fn, *args) in jobs.items():
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            rows[name] = pool.submit(fn, *args, image0, image1, repeats, threads,
                                     current_setting()).result()
        logger.info("%s: %.0f ms per pair, peak %.0f MB", name, 1e3 * rows[name]["pair_s"],
                    rows[name]["peak_rss_mb"])
    base_name = f"{baseline}+{baseline_matcher}" if baseline else None
    for row in rows.values():
        row["ratio_to_baseline"] = row["pair_s"] / rows[base_name]["pair_s"] if base_name else None
    result = {
        "mode": "dense",
        "image_size": [int(image0.shape[1]), int(image0.shape[0])],
        "repeats": repeats,
        "baseline": base_name,
        "max_num_keypoints": max_num_keypoints,
        "matcher_conf": dict(matcher_conf or {}),
        "machine": {**_machine(), "torch_threads": next(iter(rows.values()))["torch_threads"]
                    if rows else threads},
        "results": rows,
    }
    _write(output, "speed-dense", result, dense_speed_table(result))
    return result


def dense_speed_table(result: dict) -> str:
    w, h = result["image_size"]
    lines = [
        f"Dense matchers: median time per {w}x{h} pair, {result['repeats']} runs, "
        f"{result['machine']['torch_threads']} torch thread(s)" + _memory_note(result["machine"])
        + (f"; baseline {result['baseline']} with up to {result['max_num_keypoints']} keypoints "
           "timed in the same run" if result.get("baseline") else ""),
        "",
        "| matcher | pair (ms) | vs baseline | matches | peak RSS (MB) | "
        "matching RSS growth (MB) | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["results"].items():
        ratio = r.get("ratio_to_baseline")
        lines.append(f"| {name} | {1e3 * r['pair_s']:.0f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} | {r['num_matches']} | "
                     f"{r['peak_rss_mb']:.0f} | {r['match_rss_mb']:.0f} | "
                     + (f"{r['parameters'] / 1e6:.2f} M |" if r["parameters"] else "- |"))
    return "\n".join(lines) + "\n"
