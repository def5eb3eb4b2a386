"""The HPatches benchmark: matching accuracy (MMA) and homography estimation.

Works on any HPatches-format folder (the real HPatches-sequences release or one made by
`featloc.synth.hpatches.make_hpatches`): one folder per sequence, images `1..6` (.ppm, .png,
.jpg, ...) and `H_1_k` text files mapping image-1 pixels to image-k pixels.

Protocol (docs: methods.md 5.1 and 5.2):
- pairs (1, k), k = 2..6, of every sequence; the 8 high-resolution sequences excluded by
  D2-Net are left out by default when present;
- MMA@t (D2-Net): the matcher's matches, error ||pi(H_1k x_a) - x_b|| measured in image k,
  per-pair precision (fraction of matches with error <= t; 0 for a pair without matches),
  averaged over pairs, for all pairs and for illumination (i_) and viewpoint (v_) separately;
- homography: `estimate_homography` on the matches, mean corner error over the 4 corners of
  image 1 (failure = inf), accuracy (fraction of pairs with error <= t) and AUC at 1/3/5 px;
- detector (SuperPoint, sec. 7.1): repeatability and localisation error at eps = 3 px over the
  keypoints each image sees of the other, on all the keypoints the extractor returned, or on each
  image's `detector_top_k` best by score (SuperPoint fixes 300 per 240x320 image and 1000 per
  480x640; repeatability grows with the count and the localisation error too, so detectors are
  compared at equal k). Not for dense matchers, whose keypoints are the matches.

Features and matches are cached in the output folder by `run_extract`/`run_match`, and the
per-pair metrics in `results.json` keyed by a digest of everything they depend on, so a
re-run only recomputes what changed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..batch import digest
from ..config import build, resolved_conf
from ..extract import run_extract
from ..geometry.estimators import RansacConf, estimate_homography, ransac_conf
from ..geometry.homography import homography_corner_error, warp_points
from ..geometry.metrics import error_auc
from ..io.h5 import FeatureStore, MatchStore
from ..io.images import IMAGE_EXTENSIONS
from ..match import run_match
from ..match_dense import is_dense_matcher, run_dense_step
from ..matching.refine import refine_conf, refine_from_files
from ..progress import track
from .report import load_cached_records, write_json

logger = logging.getLogger(__name__)

# Sequences far larger than the rest, excluded by D2-Net and every paper that follows it.
HIGH_RES_SEQUENCES = (
    "i_contruction", "i_crownnight", "i_dc", "i_pencils", "i_whitebuilding",
    "v_artisans", "v_astronautis", "v_talent",
)
NUM_IMAGES = 6
MMA_THRESHOLDS_PX = tuple(range(1, 11))
H_THRESHOLDS_PX = (1, 3, 5)
SPLITS = ("i", "v", "all")
REPEATABILITY_EPS_PX = 3.0
RESULTS, SUMMARY, SUMMARY_MD, MMA_PLOT = "results.json", "summary.json", "summary.md", "mma.png"


@dataclass(frozen=True)
class HPatchesPair:
    """One benchmark pair: image 1 and image k of a sequence, with H_1k (image 1 -> k)."""

    sequence: str
    k: int
    name0: str  # image names relative to the data folder, e.g. "v_wall/1.ppm"
    name1: str
    H: np.ndarray  # [3, 3] float64

    @property
    def split(self) -> str:
        return self.sequence.split("_", 1)[0] if self.sequence[:2] in ("i_", "v_") else ""


def _find_image(folder: Path, index: int) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{index}{ext}", folder / f"{index}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def read_homography(path: str | Path) -> np.ndarray:
    """A 3x3 matrix from a whitespace-separated text file (HPatches `H_1_k`)."""
    try:
        H = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a homography ({exc})") from None
    if H.shape != (3, 3) or not np.isfinite(H).all():
        raise ValueError(f"{path}: expected a finite 3x3 matrix, got shape {H.shape}")
    return H


def list_pairs(data_dir: str | Path, keep_high_res: bool = False) -> list[HPatchesPair]:
    """The (1, k) pairs of every sequence folder of `data_dir`, sorted by sequence and k.

    A sequence folder is any non-hidden folder holding an image `1.*`. Missing images or H
    files are logged (naming the file) and their pairs skipped.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise NotADirectoryError(f"HPatches folder not found: {data_dir}")
    pairs = []
    excluded = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        first = _find_image(folder, 1)
        if first is None:
            continue
        if folder.name in HIGH_RES_SEQUENCES and not keep_high_res:
            excluded.append(folder.name)
            continue
        for k in range(2, NUM_IMAGES + 1):
            image = _find_image(folder, k)
            h_path = folder / f"H_1_{k}"
            if image is None or not h_path.is_file():
                logger.error("%s: missing %s; pair (1, %d) skipped", folder,
                             f"image {k}" if image is None else h_path.name, k)
                continue
            pairs.append(HPatchesPair(
                folder.name, k, f"{folder.name}/{first.name}", f"{folder.name}/{image.name}",
                read_homography(h_path),
            ))
    if excluded:
        logger.info("excluded %d high-resolution sequences: %s", len(excluded), ", ".join(excluded))
    if not pairs:
        raise ValueError(f"{data_dir}: no HPatches sequences found (folders with 1.ppm and H_1_k)")
    return pairs


# -- metrics (pure functions) ------------------------------------------------------------
def match_errors(points0: np.ndarray, points1: np.ndarray, H_0to1: np.ndarray) -> np.ndarray:
    """[K] one-directional reprojection errors ||pi(H x0) - x1|| in pixels of image 1
    (inf where H sends a point to infinity)."""
    if len(points0) == 0:
        return np.zeros(0)
    err = np.linalg.norm(warp_points(points0, H_0to1) - np.asarray(points1, np.float64), axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def match_precision(errors: np.ndarray, thresholds: Sequence[float]) -> list[float]:
    """Per-pair precision at each threshold: fraction of errors <= t; 0 without matches."""
    errors = np.asarray(errors, np.float64)
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    return [float(np.mean(errors <= t)) for t in thresholds]


def homography_accuracy(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Fraction of pairs whose corner error is <= t (failures are inf)."""
    errors = np.asarray(errors, np.float64)
    if errors.size == 0:
        return [0.0 for _ in thresholds]
    errors = np.where(np.isnan(errors), np.inf, errors)
    return [float(np.mean(errors <= t)) for t in thresholds]


def detector_repeatability(
    keypoints0: np.ndarray, keypoints1: np.ndarray, H_0to1: np.ndarray,
    image_size0: tuple[int, int], image_size1: tuple[int, int],
    eps_px: float = REPEATABILITY_EPS_PX,
) -> tuple[float, float | None]:
    """SuperPoint's repeatability and localisation error of one pair of keypoint sets.

    Only keypoints that land inside the other image (sizes (w, h)) count. A keypoint is
    repeated when the nearest keypoint of the other image is within `eps_px` after warping;
    repeatability = repeated / counted over both images, and the localisation error is the mean
    of those nearest distances (None when nothing is repeated). Distances are measured in image 1.
    """
    from scipy.spatial import cKDTree

    def inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        w, h = size
        return (np.isfinite(points).all(1) & (points[:, 0] >= -0.5) & (points[:, 1] >= -0.5)
                & (points[:, 0] <= w - 0.5) & (points[:, 1] <= h - 0.5))

    k0 = np.asarray(keypoints0, np.float64).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float64).reshape(-1, 2)
    warped0 = warp_points(k0, H_0to1)
    shared0 = warped0[inside(warped0, image_size1)]
    shared1 = k1[inside(warp_points(k1, np.linalg.inv(H_0to1)), image_size0)]
    if len(shared0) == 0 or len(shared1) == 0:
        return 0.0, None
    dist0, _ = cKDTree(shared1).query(shared0)
    dist1, _ = cKDTree(shared0).query(shared1)
    nearest = np.concatenate([dist0, dist1])
    repeated = nearest[nearest <= eps_px]
    repeatability = len(repeated) / (len(shared0) + len(shared1))
    return float(repeatability), (float(repeated.mean()) if len(repeated) else None)


def best_keypoints(features, k: int) -> np.ndarray:
    """The k highest-scoring keypoints of `features` ([k, 2]; all of them when k <= 0 or
    there are fewer; ties keep extraction order)."""
    if k <= 0 or len(features.keypoints) <= k:
        return features.keypoints
    order = np.argsort(-features.keypoint_scores, kind="stable")[:k]
    return features.keypoints[order]


def evaluate_pair(
    points0: np.ndarray, points1: np.ndarray, H_gt: np.ndarray, image_size0: tuple[int, int],
    ransac: RansacConf | dict | None = None,
) -> dict:
    """Metrics of one pair from its matched points ([K, 2] each, image 0 -> image 1).

    Returns: precision (at MMA_THRESHOLDS_PX), H_error_px (inf on failure), H_success,
    num_inliers.
    """
    est = estimate_homography(points0, points1, ransac)
    error = homography_corner_error(est.model, H_gt, image_size0) if est.success else math.inf
    return {
        "precision": match_precision(match_errors(points0, points1, H_gt), MMA_THRESHOLDS_PX),
        "H_error_px": error,
        "H_success": bool(est.success),
        "num_inliers": est.num_inliers,
    }


def summarize(records: list[dict]) -> dict:
    """Aggregate per-pair records into MMA, homography accuracy/AUC and counts, per split.

    Args:
        records: per pair: sequence, split ("i", "v" or ""), name0, name1, num_keypoints0/1,
            num_matches, precision [len(MMA_THRESHOLDS_PX)], H_error_px (None = failure).
    Returns:
        num_pairs, num_sequences, mma [10], H_accuracy [3], H_auc [3], H_failures,
        repeatability and loc_error_px (means over pairs; None without detector records), each
        a dict over SPLITS ("i", "v", "all"); num_keypoints (mean per image) and num_matches
        (mean per pair).
    """
    out: dict = {"num_pairs": {}, "num_sequences": {}, "mma": {}, "H_accuracy": {},
                 "H_auc": {}, "H_failures": {}, "repeatability": {}, "loc_error_px": {}}
    for split in SPLITS:
        subset = [r for r in records if split == "all" or r["split"] == split]
        out["num_pairs"][split] = len(subset)
        out["num_sequences"][split] = len({r["sequence"] for r in subset})
        if subset:
            mma = np.mean([r["precision"] for r in subset], axis=0).tolist()
        else:
            mma = [0.0] * len(MMA_THRESHOLDS_PX)
        errors = [math.inf if r["H_error_px"] is None else r["H_error_px"] for r in subset]
        out["mma"][split] = mma
        out["H_accuracy"][split] = homography_accuracy(errors, H_THRESHOLDS_PX)
        out["H_auc"][split] = error_auc(errors, H_THRESHOLDS_PX) if subset else [0.0] * 3
        out["H_failures"][split] = int(sum(not np.isfinite(e) for e in errors))
        # detector metrics: None for dense matchers (records without them)
        reps = [r["repeatability"] for r in subset if r.get("repeatability") is not None]
        errs = [r["loc_error_px"] for r in subset if r.get("loc_error_px") is not None]
        out["repeatability"][split] = float(np.mean(reps)) if reps else None
        out["loc_error_px"][split] = float(np.mean(errs)) if errs else None
    counts = {}
    for r in records:  # mean per image: count image 1 once per sequence
        counts[r["name0"]] = r["num_keypoints0"]
        counts[r["name1"]] = r["num_keypoints1"]
    out["num_keypoints"] = float(np.mean(list(counts.values()))) if counts else 0.0
    out["num_matches"] = float(np.mean([r["num_matches"] for r in records])) if records else 0.0
    return out


# -- the benchmark ---------------------------------------------------------------------
def run_homography_benchmark(
    data_dir: str | Path,
    output_dir: str | Path,
    features: str = "sift",
    matcher: str = "nn",
    extractor_conf: dict | None = None,
    matcher_conf: dict | None = None,
    ransac: dict | None = None,
    keep_high_res: bool = False,
    detector_top_k: int = 0,
    refine: dict | None = None,
) -> dict:
    """Run the HPatches MMA and homography benchmark; write results into `output_dir`.

    Args:
        data_dir: HPatches-format folder.
        output_dir: gets the feature/match caches, results.json (per-pair records and the
            resolved confs), summary.json, summary.md and mma.png.
        features, matcher: registered names; extractor_conf, matcher_conf: their overrides.
            A dense matcher (`samnet`, `coam`) matches the images directly; `features` and
            `extractor_conf` are then unused and the summary's features read "dense".
        ransac: `RansacConf` overrides (default: OpenCV USAC-MAGSAC, 3 px, seed 0).
        keep_high_res: keep the 8 high-resolution sequences that D2-Net excludes.
        detector_top_k: repeatability and localisation error on each image's k best keypoints
            by score (SuperPoint's protocol); 0: on all of them. Matching always uses all.
        refine: `RefineConf` overrides to refine the matches (`featloc.matching.refine`)
            before MMA and estimation ({}: the defaults; matches whose alignment failed are
            left out, so MMA and #matches are over the kept ones); None: the published
            protocol.
    Returns:
        The summary (also written to summary.json); see `summarize` for the metric keys.
    """
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    pairs = list_pairs(data_dir, keep_high_res)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({n for p in pairs for n in (p.name0, p.name1)})

    # Cache names encode the configurations, so changing one never reuses stale entries.
    rconf = dataclasses.asdict(ransac_conf(ransac))
    fine = None if refine is None else dataclasses.asdict(refine_conf(refine))
    dense = is_dense_matcher(matcher)
    if dense:  # keypoints come from the matches (featloc.match_dense)
        features, fconf, mconf, feats_path, matches_path, extract_report, match_report = \
            run_dense_step(data_dir, [(p.name0, p.name1) for p in pairs], output_dir,
                                    matcher, matcher_conf)
    else:
        extractor = build("extractor", features, **(extractor_conf or {}))
        fconf = resolved_conf(features, extractor)
        model = build("matcher", matcher, **(matcher_conf or {}))
        mconf = resolved_conf(matcher, model)
        feats_path = output_dir / f"feats-{features}-{digest(fconf)}.h5"
        matches_path = (output_dir
                        / f"matches-{features}-{digest(fconf)}_{matcher}-{digest(mconf)}.h5")
        extract_report = run_extract(data_dir, feats_path, features, extractor_conf, names=names)
        match_report = run_match(
            feats_path, [(p.name0, p.name1) for p in pairs], matches_path, matcher, matcher_conf
        )

    cached = load_cached_records(output_dir / RESULTS)
    records, computed, missing = [], 0, []
    reference = (None, None)  # a sequence's pairs share image 0: read it once (2.4 ms a read)
    with FeatureStore(feats_path, "r") as fstore, MatchStore(matches_path, "r") as mstore:
        for pair in track(pairs, desc="hpatches metrics"):
            base = {"sequence": pair.sequence, "split": pair.split, "k": pair.k,
                    "name0": pair.name0, "name1": pair.name1}
            found = mstore.find_pair(pair.name0, pair.name1)
            if found is None or pair.name0 not in fstore or pair.name1 not in fstore:
                # Extraction or matching failed (already reported): the pair scores 0.
                missing.append(f"{pair.name0} {pair.name1}")
                records.append({**base, "digest": None, "num_keypoints0": 0,
                                "num_keypoints1": 0, "num_matches": 0,
                                "precision": [0.0] * len(MMA_THRESHOLDS_PX),
                                "H_error_px": None, "H_success": False, "num_inliers": 0,
                                "repeatability": None if dense else 0.0, "loc_error_px": None})
                continue
            key = digest(mstore.entry_attrs(found[0]).get("digest"), rconf, pair.H.tolist(),
                         MMA_THRESHOLDS_PX,
                         None if dense else REPEATABILITY_EPS_PX,
                         *([detector_top_k] if detector_top_k > 0 and not dense else []),
                         *([] if fine is None else [{"refine": fine}]))
            if key in cached:
                records.append({**cached[key], **base})
                continue
            if reference[0] != pair.name0:
                reference = (pair.name0, fstore.read(pair.name0))
            f0, f1 = reference[1], fstore.read(pair.name1)
            matches = mstore.read(pair.name0, pair.name1, len(f0))
            points0, points1 = matches.matched_points(f0, f1)
            extra = {}
            if fine is not None:
                points0, points1, extra = refine_from_files(data_dir / pair.name0,
                                                            data_dir / pair.name1,
                                                            points0, points1, fine)
            metrics = evaluate_pair(points0, points1, pair.H, f0.image_size, rconf)
            metrics["repeatability"], metrics["loc_error_px"] = (None, None) if dense else \
                detector_repeatability(best_keypoints(f0, detector_top_k),
                                       best_keypoints(f1, detector_top_k), pair.H,
                                       f0.image_size, f1.image_size)
            if not math.isfinite(metrics["H_error_px"]):
                metrics["H_error_px"] = None  # JSON has no inf: null means failure
            records.append({**base, "digest": key, "num_keypoints0": len(f0),
                            "num_keypoints1": len(f1), "num_matches": len(points0), **metrics,
                            **extra})
            computed += 1
    if missing:
        logger.error("%d pair(s) without features or matches scored 0", len(missing))
    logger.info("hpatches metrics: %d computed, %d cached", computed, len(records) - computed)

    confs = {"extractor": fconf, "matcher": mconf, "ransac": rconf, "refine": fine}
    summary = {
        "benchmark": "hpatches",
        "data_dir": str(data_dir),
        "features": features,
        "matcher": matcher,
        "refine": fine is not None,
        "keep_high_res": keep_high_res,
        "detector_top_k": None if dense else (detector_top_k or None),
        "mma_thresholds_px": list(MMA_THRESHOLDS_PX),
        "H_thresholds_px": list(H_THRESHOLDS_PX),
        **summarize(records),
        "missing_pairs": missing,
        "confs": confs,
        "files": {"features": feats_path.name, "matches": matches_path.name},
        "work": {  # what this run recomputed (all zero on an unchanged re-run)
            "extracted": extract_report.done, "matched": match_report.done,
            "evaluated": computed,
            "failed": len(extract_report.failures) + len(match_report.failures),
        },
    }
    write_json(output_dir / RESULTS, {"confs": confs, "data_dir": str(data_dir),
                                       "files": summary["files"], "pairs": records})
    write_json(output_dir / SUMMARY, summary)
    table = summaries_to_markdown([summary])
    (output_dir / SUMMARY_MD).write_text(table, encoding="utf-8")
    plot_mma([summary], output_dir / MMA_PLOT)
    return summary


# -- reporting ---------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def summaries_to_markdown(summaries: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """One markdown table row per summary (values in %): MMA@1/3/5/10 as i / v / all,
    homography accuracy and corner-error AUC at 1/3/5 px (all pairs), detector repeatability
    (%) and localisation error (px) at 3 px (all pairs; "-" for dense matchers), mean #keypoints
    per image and #matches per pair."""
    thresholds = list(MMA_THRESHOLDS_PX)
    header = ["features", "matcher"] + [f"MMA@{t} i / v / all" for t in (1, 3, 5, 10)]
    top_k = {s.get("detector_top_k") for s in summaries} - {None}
    detector = "Rep / LE" + (f" (top {top_k.pop()})" if len(top_k) == 1 else "")
    header += ["H acc @1/3/5px", "H AUC @1/3/5px", detector, "#kpts", "#matches"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, s in enumerate(summaries):
        features = labels[i] if labels else s["features"]
        row = [features, s["matcher"] + (" + refine" if s.get("refine") else "")]
        for t in (1, 3, 5, 10):
            j = thresholds.index(t)
            row.append(" / ".join(_pct(s["mma"][split][j]) for split in SPLITS))
        row.append(" / ".join(_pct(v) for v in s["H_accuracy"]["all"]))
        row.append(" / ".join(_pct(v) for v in s["H_auc"]["all"]))
        rep, err = (s.get(k, {}).get("all") for k in ("repeatability", "loc_error_px"))
        row.append("-" if rep is None else f"{_pct(rep)} / {'-' if err is None else f'{err:.2f}'}")
        row += [f"{s['num_keypoints']:.0f}", f"{s['num_matches']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_mma(
    summaries: Sequence[dict], path: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """MMA curves (overall, illumination, viewpoint) of one or more summaries, as an image."""
    # An Agg canvas on a bare Figure: no pyplot, so no global backend or figure state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(12, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharey=True)
    for ax, (split, title) in zip(
        axes, (("all", "Overall"), ("i", "Illumination"), ("v", "Viewpoint")), strict=True
    ):
        for i, s in enumerate(summaries):
            label = labels[i] if labels else f"{s['features']}+{s['matcher']}"
            ax.plot(s["mma_thresholds_px"], s["mma"][split], marker="o", ms=3, label=label)
        ax.set_title(f"{title} ({summaries[0]['num_pairs'][split]} pairs)")
        ax.set_xlabel("threshold [px]")
        ax.set_xlim(1, 10)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("MMA")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path
