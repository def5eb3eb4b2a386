"""Relative-pose benchmark: AUC of the pose error at 5/10/20 degrees (SuperGlue / LoFTR
protocol, methods.md 5.3).

Pair lists accepted (`read_pose_pairs`), one pair per line, whitespace-separated, '#'
comments; K are row-major 3x3, T_0to1 maps camera-0 to camera-1 coordinates:
- 38 tokens, SuperGlue "pairs with ground truth" (ScanNet-1500, YFCC, `make-scenes`):
  `name0 name1 rot0 rot1 K0[9] K1[9] T_0to1[16]`. rot0/rot1 are EXIF-style rotations in
  quarter turns: the image is turned by `np.rot90(image, rot)` after resizing and K and T
  follow (SuperGlue's `rotate_intrinsics` / `rotate_pose_inplane`).
- 36 tokens, glue-factory `pairs_calibrated.txt` (MegaDepth-1500): `name0 name1 K0[9] K1[9]
  T_0to1[16]`; 32 tokens, the same with `R[9] t[3]` instead of T.
- a LoFTR scene-info `.npz` (MegaDepth-1500 as published by LoFTR: `image_paths`,
  `intrinsics`, `poses` (cam_from_world 4x4) and `pair_infos` ((i, j), overlap, ...)). It is
  a pickle: load only files you trust. Several files: pass a text list instead.
K is taken in the project pixel convention (its principal point is used as given).

Protocol: images resized as the published protocols (`resize`: "640x480" exactly for
ScanNet-1500; "1200" = long side for MegaDepth-1500, also 840 for LoFTR and 1600 for
LightGlue) with the intrinsics scaled to match (`Camera.scale`, pixel-centre convention);
features and matches by `run_extract`/`run_match` (cached in the output folder under names
that encode their configurations); per pair `estimate_relative_pose` with the protocol's
estimator (default: OpenCV RANSAC, 0.5 px scaled by the mean focal length as LoFTR and
LightGlue-OpenCV, confidence 0.99999, 1000 iterations as OpenCV's default; SuperGlue used
1.0 px on ScanNet); pose error = max(rotation error, translation-direction error), inf on
failure; AUC@5/10/20 with `error_auc`; match precision = fraction of matches with symmetric
epipolar error (`sym_epipolar_error`, normalised coordinates) below 5e-4 (ScanNet; 1e-4
for MegaDepth); matching score = correct matches / keypoints of image 0.

Optional (`refine`, not part of the published protocols): each pair's matched image-1 points
are moved by `featloc.matching.refine` before estimation, and matches whose alignment failed
are left out (its `drop_failed`); precision and counts are then over the kept matches, and the
summary says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..batch import digest, file_digest
from ..config import build, resolved_conf
from ..extract import run_extract
from ..geometry.camera import Camera, inplane_rotation
from ..geometry.epipolar import epipolar_errors
from ..geometry.estimators import estimate_relative_pose, ransac_conf
from ..geometry.metrics import error_auc, relative_pose_error
from ..geometry.pose import Pose
from ..io.h5 import FeatureStore, MatchStore
from ..io.images import ImageReadError, read_image, resize_image, write_image
from ..match import run_match
from ..match_dense import is_dense_matcher, run_dense_step
from ..matching.refine import refine_conf, refine_from_files
from ..progress import track
from .report import (
    RESULTS,
    load_cached_records,
    markdown_table,
    write_json,
    write_report,
)

logger = logging.getLogger(__name__)

# SuperGlue/LoFTR: cv2.findEssentialMat(RANSAC, prob=0.99999) with OpenCV's default 1000
# iterations; 0.5 px is the LoFTR / LightGlue-OpenCV threshold (SuperGlue: 1.0 px).
PROTOCOL_RANSAC = {
    "backend": "opencv",
    "method": "ransac",
    "threshold_px": 0.5,
    "confidence": 0.99999,
    "max_iterations": 1000,
}
AUC_THRESHOLDS_DEG = (5.0, 10.0, 20.0)
EPIPOLAR_TH_SCANNET = 5e-4
EPIPOLAR_TH_MEGADEPTH = 1e-4


class PairsFormatError(ValueError):
    """A pose pairs file is malformed. The message names the file and line."""


@dataclass(frozen=True)
class PosePair:
    """One benchmark pair: image names, intrinsics [3, 3], T_0to1 and EXIF rotations."""

    name0: str
    name1: str
    K0: np.ndarray
    K1: np.ndarray
    T_0to1: Pose
    rot0: int = 0
    rot1: int = 0


# -- pair lists --------------------------------------------------------------------------
def parse_pose_pair_line(line: str) -> PosePair:
    """One line of a SuperGlue (38 tokens) or glue-factory (36 / 32 tokens) pairs list."""
    tokens = line.split()
    n = len(tokens)
    if n not in (32, 36, 38):
        raise ValueError(
            f"expected 38 tokens (name0 name1 rot0 rot1 K0[9] K1[9] T_0to1[16]), 36 "
            f"(name0 name1 K0[9] K1[9] T_0to1[16]) or 32 (... R[9] t[3]), got {n}"
        )
    name0, name1 = tokens[:2]
    rot0 = rot1 = 0
    rest = tokens[2:]
    if n == 38:
        rot0, rot1 = int(rest[0]), int(rest[1])
        rest = rest[2:]
    values = np.array([float(v) for v in rest], np.float64)
    K0, K1 = values[:9].reshape(3, 3), values[9:18].reshape(3, 3)
    if len(values) == 34:
        T = Pose.from_matrix(values[18:].reshape(4, 4))
    else:
        T = Pose(values[18:27].reshape(3, 3), values[27:30])
    if not (np.isfinite(values).all() and abs(K0[2, 2] - 1) < 1e-6 and abs(K1[2, 2] - 1) < 1e-6):
        raise ValueError("K0/K1 must be finite calibration matrices with K[2, 2] = 1")
    return PosePair(name0, name1, K0, K1, T, rot0 % 4, rot1 % 4)


def read_pose_pairs(path: str | Path) -> list[PosePair]:
    """Read a pairs list (text formats or a LoFTR scene-info .npz, see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise PairsFormatError(f"{path}: pairs file not found")
    if path.suffix == ".npz":
        return read_loftr_scene_info(path)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                pairs.append(parse_pose_pair_line(line))
            except ValueError as exc:
                raise PairsFormatError(f"{path}:{lineno}: {exc}") from None
    if not pairs:
        raise PairsFormatError(f"{path}: the pairs file lists no pairs")
    return pairs


def read_loftr_scene_info(path: str | Path) -> list[PosePair]:
    """Pairs of a LoFTR MegaDepth scene-info .npz (a pickle: trusted files only)."""
    path = Path(path)
    try:
        info = np.load(path, allow_pickle=True)
        image_paths, intrinsics = info["image_paths"], info["intrinsics"]
        poses, pair_infos = info["poses"], info["pair_infos"]
    except (OSError, KeyError, ValueError) as exc:
        raise PairsFormatError(f"{path}: not a LoFTR scene-info file ({exc})") from None
    pairs = []
    for (i, j), *_ in pair_infos:
        T = Pose.from_matrix(poses[j]) @ Pose.from_matrix(poses[i]).inv()
        pairs.append(PosePair(str(image_paths[i]), str(image_paths[j]),
                              np.asarray(intrinsics[i], np.float64),
                              np.asarray(intrinsics[j], np.float64), T))
    if not pairs:
        raise PairsFormatError(f"{path}: no pairs")
    return pairs


def format_pose_pair_line(pair: PosePair) -> str:
    """The SuperGlue 38-token line of a pair."""
    values = [*pair.K0.ravel(), *pair.K1.ravel(), *pair.T_0to1.matrix().ravel()]
    return f"{pair.name0} {pair.name1} {pair.rot0} {pair.rot1} " + " ".join(
        repr(float(v)) for v in values
    )


def parse_resize(spec: str | int | None) -> tuple[tuple[int, int] | None, int]:
    """'640x480' -> ((640, 480), 0); '1200' -> (None, 1200) (long side); None/'0' -> off."""
    if spec is None or str(spec).strip().lower() in ("", "0", "none", "off"):
        return None, 0
    text = str(spec).strip().lower()
    try:
        if "x" in text:
            w, h = (int(v) for v in text.split("x"))
            if w <= 0 or h <= 0:
                raise ValueError
            return (w, h), 0
        value = int(text)
        if value <= 0:
            raise ValueError
        return None, value
    except ValueError:
        raise ValueError(f"resize must be WxH (e.g. 640x480) or a long side (e.g. 1200), got {spec!r}") from None


# -- image preparation (resize, rotation) -----------------------------------------------
@dataclass(frozen=True)
class PreparedView:
    """An image as the benchmark feeds it to the extractor."""

    name: str  # name below the prepared image root
    scale: tuple[float, float]  # (sx, sy) = prepared size / original size, before rotation
    size: tuple[int, int]  # original (w, h)


def _prepared_name(name: str, rot: int) -> str:
    return f"{name}.png" if rot == 0 else f"{name}.rot{rot}.png"


def prepare_images(
    views: Sequence[tuple[str, int]],
    image_dir: Path,
    work_dir: Path,
    resize_wh: tuple[int, int] | None,
    resize_max: int,
) -> tuple[Path, dict[tuple[str, int], PreparedView], dict[str, str]]:
    """Resize (and rotate) the images of (name, rot) views into `work_dir` as PNG.

    Without resize and rotation the images are used in place. Returns the image root, the
    prepared views and the failures {name: reason}. Images already prepared from the same
    bytes are not decoded again (work_dir/manifest.json).
    """
    if resize_wh is None and not resize_max and all(rot == 0 for _, rot in views):
        return image_dir, {(n, r): PreparedView(n, (1.0, 1.0), (0, 0)) for n, r in views}, {}
    manifest_path = work_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    prepared, failures = {}, {}
    for name, rot in track(views, desc="prepare images"):
        out_name = _prepared_name(name, rot)
        source = image_dir / name
        try:
            source_digest = file_digest(source)
        except OSError as exc:
            failures[name] = f"{source}: {exc.strerror or exc}"
            continue
        entry = manifest.get(out_name)
        if entry and entry["source"] == source_digest and (work_dir / out_name).is_file():
            prepared[name, rot] = PreparedView(out_name, tuple(entry["scale"]), tuple(entry["size"]))
            continue
        try:
            image = read_image(source)
        except ImageReadError as exc:
            failures[name] = str(exc)
            continue
        h, w = image.shape[:2]
        if resize_wh is not None:
            interp = cv2.INTER_AREA if resize_wh[0] * resize_wh[1] < w * h else cv2.INTER_LINEAR
            image = cv2.resize(image, resize_wh, interpolation=interp)
            scale = (resize_wh[0] / w, resize_wh[1] / h)
        elif resize_max:
            image, scale = resize_image(image, resize_max, force=True)
        else:
            scale = (1.0, 1.0)
        if rot:
            image = np.ascontiguousarray(np.rot90(image, rot))
        write_image(work_dir / out_name, image)
        manifest[out_name] = {"source": source_digest, "scale": list(scale), "size": [w, h]}
        prepared[name, rot] = PreparedView(out_name, scale, (w, h))
    write_json(manifest_path, manifest)
    return work_dir, prepared, failures


def adjust_pair(pair: PosePair, view0: PreparedView, view1: PreparedView):
    """(K0, K1, T_0to1) of the prepared images: intrinsics scaled for the resize, then
    rotated with the image; T_0to1 rotated in-plane to match (SuperGlue's convention)."""

    def camera(K, view, rot):
        w, h = view.size if view.size != (0, 0) else (1, 1)
        cam = Camera.from_K(K, w, h).scale(*view.scale)
        return cam.rot90(rot).K

    K0, K1 = camera(pair.K0, view0, pair.rot0), camera(pair.K1, view1, pair.rot1)
    T = inplane_rotation(pair.rot1) @ pair.T_0to1 @ inplane_rotation(pair.rot0).inv()
    return K0, K1, T


# -- metrics (pure) ---------------------------------------------------------------------------
def evaluate_pose_pair(
    points0: np.ndarray,
    points1: np.ndarray,
    K0: np.ndarray,
    K1: np.ndarray,
    T_0to1: Pose,
    ransac,
    epipolar_th: float,
    num_keypoints0: int,
) -> dict:
    """Metrics of one pair from its [K, 2] matched pixels.

    Returns: num_matches, num_correct, precision, matching_score, success, num_inliers,
    R_error_deg, t_error_deg, pose_error_deg (inf on failure; the rotation error alone when
    the ground-truth translation is zero), reason (on failure).
    """
    points0 = np.asarray(points0, np.float64).reshape(-1, 2)
    points1 = np.asarray(points1, np.float64).reshape(-1, 2)
    errors = epipolar_errors(points0, points1, T_0to1, K0, K1)
    correct = int(np.count_nonzero(errors < epipolar_th))
    out = {
        "num_matches": len(points0),
        "num_correct": correct,
        "precision": correct / len(points0) if len(points0) else 0.0,
        "matching_score": correct / num_keypoints0 if num_keypoints0 else 0.0,
    }
    est = estimate_relative_pose(points0, points1, K0, K1, ransac)
    if not est.success:
        return {**out, "success": False, "num_inliers": 0, "R_error_deg": math.inf,
                "t_error_deg": math.inf, "pose_error_deg": math.inf,
                "reason": est.info.get("reason", "")}
    err_R, err_t = relative_pose_error(T_0to1, est.model.R, est.model.t)
    pose_error = err_R if math.isnan(err_t) else max(err_R, err_t)
    return {**out, "success": True, "num_inliers": est.num_inliers, "R_error_deg": err_R,
            "t_error_deg": err_t, "pose_error_deg": pose_error}


def summarize_pose(records: Sequence[dict], thresholds: Sequence[float] = AUC_THRESHOLDS_DEG) -> dict:
    """AUC of the pose error (fractions in [0, 1]), mean precision / matching score,
    mean counts and failures over per-pair records (a None error is a failure)."""
    errors = [math.inf if r["pose_error_deg"] is None else r["pose_error_deg"] for r in records]

    def mean(key):
        return float(np.mean([r[key] for r in records])) if records else 0.0

    counts = {}
    for r in records:
        counts[r["name0"]], counts[r["name1"]] = r["num_keypoints0"], r["num_keypoints1"]
    finite = [e for e in errors if math.isfinite(e)]
    return {
        "num_pairs": len(records),
        "auc_thresholds_deg": list(thresholds),
        "pose_auc": error_auc(errors, thresholds) if records else [0.0] * len(thresholds),
        "precision": mean("precision"),
        "matching_score": mean("matching_score"),
        "num_keypoints": float(np.mean(list(counts.values()))) if counts else 0.0,
        "num_matches": mean("num_matches"),
        "num_inliers": mean("num_inliers"),
        "failures": len(errors) - len(finite),
        "median_pose_error_deg": float(np.median(errors)) if errors else None,
    }


def summaries_to_markdown(summaries: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """One row per summary: AUC@thresholds, precision, matching score (in %), counts."""
    thresholds = summaries[0]["auc_thresholds_deg"] if summaries else list(AUC_THRESHOLDS_DEG)
    header = ["features", "matcher", *[f"AUC@{t:g}°" for t in thresholds], "prec", "MScore",
              "#kpts", "#matches", "#inliers", "failed"]
    rows = []
    for i, s in enumerate(summaries):
        rows.append([
            labels[i] if labels else s["features"],
            s["matcher"] + (" + refine" if s.get("refine") else ""),
            *[f"{100 * v:.1f}" for v in s["pose_auc"]],
            f"{100 * s['precision']:.1f}", f"{100 * s['matching_score']:.1f}",
            f"{s['num_keypoints']:.0f}", f"{s['num_matches']:.0f}", f"{s['num_inliers']:.0f}",
            f"{s['failures']}/{s['num_pairs']}",
        ])
    return markdown_table(header, rows)


# -- the benchmark ------------------------------------------------------------------------------
def run_pose_benchmark(
    pairs_file: str | Path,
    image_dir: str | Path,
    output_dir: str | Path,
    features: str = "sift",
    matcher: str = "nn",
    extractor_conf: dict | None = None,
    matcher_conf: dict | None = None,
    ransac: dict | None = None,
    resize: str | int | None = None,
    epipolar_th: float = EPIPOLAR_TH_SCANNET,
    auc_thresholds_deg: Sequence[float] = AUC_THRESHOLDS_DEG,
    refine: dict | None = None,
    workers: int | None = None,
) -> dict:
    """Run the relative-pose benchmark; write results.json, summary.json, summary.md.

    Args:
        pairs_file: pairs with ground truth (formats: module doc); image_dir: image root.
        output_dir: gets prepared images, feature/match caches and the reports.
        features, matcher: registered names; extractor_conf, matcher_conf: overrides.
            A dense matcher (`samnet`, `coam`) matches the images directly; `features` and
            `extractor_conf` are then unused and the summary's features read "dense".
        ransac: `RansacConf` overrides on top of `PROTOCOL_RANSAC`.
        resize: "WxH", a long side in px, or None (original images).
        epipolar_th: match precision threshold (normalised coordinates, squared-distance
            form of `sym_epipolar_error`): 5e-4 ScanNet, 1e-4 MegaDepth.
        refine: `RefineConf` overrides to refine the matches before estimation ({}: the
            defaults); None: the published protocol, no refinement.
        workers: pairs estimated at once (threads; None: one per CPU core). The results
            do not depend on it.
    Returns:
        The summary (pose_auc as fractions; see `summarize_pose`).
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    pairs_file, image_dir, output_dir = Path(pairs_file), Path(image_dir), Path(output_dir)
    pairs = read_pose_pairs(pairs_file)
    output_dir.mkdir(parents=True, exist_ok=True)
    resize_wh, resize_max = parse_resize(resize)
    prep_conf = {"resize_wh": resize_wh, "resize_max": resize_max}
    views = sorted({(p.name0, p.rot0) for p in pairs} | {(p.name1, p.rot1) for p in pairs})
    root, prepared, prep_failures = prepare_images(
        views, image_dir, output_dir / f"images-{digest(prep_conf)}", resize_wh, resize_max
    )

    rconf = dataclasses.asdict(ransac_conf({**PROTOCOL_RANSAC, **(ransac or {})}))
    fine = None if refine is None else dataclasses.asdict(refine_conf(refine))
    pair_names = list(dict.fromkeys(
        (prepared[p.name0, p.rot0].name, prepared[p.name1, p.rot1].name)
        for p in pairs if (p.name0, p.rot0) in prepared and (p.name1, p.rot1) in prepared
    ))
    unique = list({frozenset(pn): pn for pn in pair_names if pn[0] != pn[1]}.values())
    if is_dense_matcher(matcher):  # keypoints come from the matches (featloc.match_dense)
        features, fconf, mconf, feats_path, matches_path, extract_report, match_report = \
            run_dense_step(root, unique, output_dir, matcher, matcher_conf, prep_conf)
    else:
        extractor = build("extractor", features, **(extractor_conf or {}))
        fconf = resolved_conf(features, extractor)
        model = build("matcher", matcher, **(matcher_conf or {}))
        mconf = resolved_conf(matcher, model)
        feats_path = output_dir / f"feats-{features}-{digest(fconf, prep_conf)}.h5"
        matches_path = output_dir / (
            f"matches-{features}-{digest(fconf, prep_conf)}_{matcher}-{digest(mconf)}.h5"
        )
        names = sorted({v.name for v in prepared.values()})
        extract_report = run_extract(root, feats_path, features, extractor_conf, names=names)
        match_report = run_match(feats_path, unique, matches_path, matcher, matcher_conf)

    cached = load_cached_records(output_dir / RESULTS)
    records, jobs, missing = [], [], []
    with FeatureStore(feats_path, "r") as fstore, MatchStore(matches_path, "r") as mstore:
        for pair in pairs:
            base = {"name0": pair.name0, "name1": pair.name1, "rot0": pair.rot0, "rot1": pair.rot1}
            v0, v1 = prepared.get((pair.name0, pair.rot0)), prepared.get((pair.name1, pair.rot1))
            found = mstore.find_pair(v0.name, v1.name) if v0 and v1 else None
            if found is None or v0.name not in fstore or v1.name not in fstore:
                # Preparation, extraction or matching failed (already reported): a failure.
                missing.append(f"{pair.name0} {pair.name1}")
                records.append({**base, "digest": None, "num_keypoints0": 0, "num_keypoints1": 0,
                                "num_matches": 0, "num_correct": 0, "precision": 0.0,
                                "matching_score": 0.0, "success": False, "num_inliers": 0,
                                "R_error_deg": None, "t_error_deg": None,
                                "pose_error_deg": None, "reason": "no features or matches"})
                continue
            K0, K1, T = adjust_pair(pair, v0, v1)
            key = digest(mstore.entry_attrs(found[0]).get("digest"), rconf, K0.tolist(),
                         K1.tolist(), T.matrix().tolist(), epipolar_th,
                         *([] if fine is None else [fine]))
            if key in cached:
                records.append({**cached[key], **base})
                continue
            f0, f1 = fstore.read(v0.name), fstore.read(v1.name)  # h5py: read here, in order
            matches = mstore.read(v0.name, v1.name, len(f0))
            points0, points1 = matches.matched_points(f0, f1)
            records.append({**base, "digest": key, "num_keypoints0": len(f0),
                            "num_keypoints1": len(f1)})
            jobs.append((records[-1], root / v0.name, root / v1.name, points0, points1, K0, K1, T))

    def evaluate(job):
        record, path0, path1, points0, points1, K0, K1, T = job
        extra = {}
        if fine is not None:
            points0, points1, extra = refine_from_files(path0, path1, points0, points1, fine)
        metrics = evaluate_pose_pair(points0, points1, K0, K1, T, rconf, epipolar_th,
                                     record["num_keypoints0"])
        record.update(**metrics, **extra)

    # RANSAC (most of the time) runs in OpenCV without the GIL, one pair per core; its
    # generator is seeded per call, so the results equal a sequential run's
    computed = len(jobs)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for _ in track(pool.map(evaluate, jobs), desc="pose metrics", total=computed):
            pass
    if missing:
        logger.error("%d pair(s) without features or matches count as failures", len(missing))
    logger.info("pose metrics: %d computed, %d cached", computed, len(records) - computed)

    confs = {"extractor": fconf, "matcher": mconf, "ransac": rconf, "preprocessing": prep_conf,
             "epipolar_th": epipolar_th, "refine": fine}
    summary = {
        "benchmark": "pose",
        "pairs": str(pairs_file),
        "image_dir": str(image_dir),
        "features": features,
        "matcher": matcher,
        "refine": fine is not None,
        **summarize_pose(records, auc_thresholds_deg),
        "missing_pairs": missing,
        "preparation_failures": prep_failures,
        "confs": confs,
        "files": {"features": feats_path.name, "matches": matches_path.name},
        "work": {"extracted": extract_report.done, "matched": match_report.done,
                 "evaluated": computed,
                 "failed": len(extract_report.failures) + len(match_report.failures)
                 + len(prep_failures)},
    }
    write_report(
        output_dir,
        {"confs": confs, "pairs_file": str(pairs_file), "image_dir": str(image_dir),
         "files": summary["files"], "pairs": records},
        summary,
        summaries_to_markdown([summary]),
    )
    return summary
