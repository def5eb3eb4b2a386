"""make-hpatches (synthetic HPatches-format sets) and the HPatches benchmark."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from featloc.cli import main
from featloc.eval.hpatches import (
    HIGH_RES_SEQUENCES,
    best_keypoints,
    detector_repeatability,
    homography_accuracy,
    list_pairs,
    match_errors,
    match_precision,
    run_homography_benchmark,
    summaries_to_markdown,
    summarize,
)
from featloc.io.images import read_image, write_image
from featloc.synth.hpatches import make_hpatches, read_manifest, split_sources
from featloc.types import Features

REPO = Path(__file__).parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"


def textured_image(rng: np.random.Generator, height: int = 240, width: int = 320) -> np.ndarray:
    """RGB uint8: smooth noise background with random filled shapes and lines."""
    base = cv2.resize(rng.uniform(0, 255, (height // 8, width // 8, 3)).astype(np.float32),
                      (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(60):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, 30))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + size, y + int(rng.integers(4, 30))), color, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), size // 2 + 2, color, -1, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-40, 40)), y + int(rng.integers(-40, 40)))
            cv2.line(image, (x, y), end, color, 2, cv2.LINE_AA)
    return image


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    for name in ("alpha", "beta"):
        write_image(root / f"{name}.png", textured_image(rng))
    return root


@pytest.fixture(scope="module")
def hpatches_dir(source_dir, tmp_path_factory) -> Path:
    return make_hpatches(source_dir, tmp_path_factory.mktemp("hp") / "set", seed=0)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- generator ---------------------------------------------------------------------------
def test_structure_and_split(hpatches_dir):
    sequences = sorted(p.name for p in hpatches_dir.iterdir() if p.is_dir())
    assert sorted(s[0] for s in sequences) == ["i", "v"]  # 2 sources: one of each
    assert {s[2:] for s in sequences} == {"alpha", "beta"}
    for seq in sequences:
        folder = hpatches_dir / seq
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        assert names == [f"{k}.ppm" for k in range(1, 7)] + [f"H_1_{k}" for k in range(2, 7)]
        shapes = {read_image(folder / f"{k}.ppm").shape for k in range(1, 7)}
        assert shapes == {(192, 256, 3)}  # the central 80 % crop of 240x320
    manifest = read_manifest(hpatches_dir)
    assert manifest["seed"] == 0 and manifest["failures"] == {}
    assert sorted(manifest["sequences"]) == sequences


def test_split_is_balanced_and_seeded():
    names = [f"{i:03d}.jpg" for i in range(11)]
    kinds = split_sources(names, 0)
    assert sum(k == "v" for k in kinds.values()) == 6
    assert kinds == split_sources(list(reversed(names)), 0)
    assert kinds != split_sources(names, 1)


def test_deterministic(source_dir, hpatches_dir, tmp_path):
    again = make_hpatches(source_dir, tmp_path / "again", seed=0)
    assert _files(again) == _files(hpatches_dir)  # images, H files, manifest: same bytes
    other = make_hpatches(source_dir, tmp_path / "other", seed=1)
    view = next(p.name for p in other.iterdir() if p.name.startswith("v_"))
    if (hpatches_dir / view).is_dir():
        assert (other / view / "H_1_2").read_text() != (hpatches_dir / view / "H_1_2").read_text()


def test_illumination_sequences_have_identity_h(hpatches_dir):
    folder = next(p for p in hpatches_dir.iterdir() if p.name.startswith("i_"))
    first = read_image(folder / "1.ppm").astype(np.float32)
    for k in range(2, 7):
        np.testing.assert_array_equal(np.loadtxt(folder / f"H_1_{k}"), np.eye(3))
        # the photometric change is strong: images differ clearly
        assert np.abs(read_image(folder / f"{k}.ppm").astype(np.float32) - first).mean() > 5


def test_homographies_match_pixels(source_dir, tmp_path):
    """Image k warped back by H_1k lands on image 1, best at zero extra shift: the H files
    are consistent with the pixels to a fraction of a pixel (pixel-centre convention)."""
    no_photometric = {"mild_gamma": 1.0, "mild_gain": 0.0, "mild_noise": 0.0}
    out = make_hpatches(source_dir, tmp_path / "set", seed=0, conf=no_photometric)
    folder = next(p for p in out.iterdir() if p.name.startswith("v_"))
    first = read_image(folder / "1.ppm", grayscale=True).astype(np.float32)
    h, w = first.shape
    for k in (2, 6):
        H = np.loadtxt(folder / f"H_1_{k}")
        assert abs(np.linalg.det(H[:2, :2])) > 0.1 and not np.allclose(H, np.eye(3))
        view = read_image(folder / f"{k}.ppm", grayscale=True)
        errors = {}
        for dx in (-0.25, 0.0, 0.25):
            for dy in (-0.25, 0.0, 0.25):
                shift = np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1]])
                back = cv2.warpPerspective(view, H @ shift, (w, h),
                                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
                valid = cv2.warpPerspective(np.full(view.shape, 255, np.uint8), H @ shift, (w, h),
                                            flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
                valid = cv2.erode(valid, np.ones((9, 9), np.uint8)) > 0
                valid &= back > 0  # not the black outside-the-source area
                errors[(dx, dy)] = np.abs(back.astype(np.float32) - first)[valid].mean()
        # a quarter-pixel shift anywhere makes it worse: H is right to ~1/8 px
        assert min(errors, key=errors.get) == (0.0, 0.0), errors


def test_rerun_skips_and_recovers(source_dir, tmp_path):
    out = make_hpatches(source_dir, tmp_path / "set", seed=0)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.ppm")}
    stale = out / ".tmp-v_gamma-deadbeef"  # what a killed run leaves behind
    stale.mkdir()
    (stale / "1.ppm").write_bytes(b"partial")
    make_hpatches(source_dir, out, seed=0)
    assert not stale.exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.ppm")} == mtimes


def test_bad_source_is_reported_and_skipped(source_dir, tmp_path, caplog):
    images = tmp_path / "images"
    shutil.copytree(source_dir, images)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = make_hpatches(images, tmp_path / "set", seed=0)
    failures = read_manifest(out)["failures"]
    assert list(failures) == [str(images / "broken.jpg")]
    assert "broken.jpg" in caplog.text
    assert len([p for p in out.iterdir() if p.is_dir()]) == 2


# -- metrics -----------------------------------------------------------------------------
def test_match_precision_by_hand():
    H = np.array([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]])  # shift x by 10 px
    p0 = np.array([[0.0, 0], [5, 5], [20, 0], [0, 30]])
    p1 = np.array([[10.0, 0], [15, 7], [30, 4], [0, 30]])  # errors 0, 2, 4, 10
    np.testing.assert_allclose(match_errors(p0, p1, H), [0, 2, 4, 10])
    assert match_precision(match_errors(p0, p1, H), [1, 3, 5, 10]) == [0.25, 0.5, 0.75, 1.0]
    assert match_precision(np.zeros(0), [1, 3]) == [0.0, 0.0]
    assert homography_accuracy([0.5, 2.0, math.inf, 4.0], [1, 3, 5]) == [0.25, 0.5, 0.75]


def test_detector_repeatability_by_hand():
    H = np.array([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]])  # shift x by 10 px; images 100x50
    k0 = np.array([[0.0, 0], [20, 20], [40, 10], [95, 5]])  # the last lands outside image 1
    # nearest distances after warping: 1, 2, 5 (not repeated at 3 px)
    k1 = np.array([[11.0, 0], [30, 22], [55, 10], [2, 40]])  # the last lands outside image 0
    rep, err = detector_repeatability(k0, k1, H, (100, 50), (100, 50))
    assert rep == pytest.approx(4 / 6)  # 2 of 3 shared keypoints on each side
    assert err == pytest.approx((1 + 2 + 1 + 2) / 4)
    # exactly eps counts as repeated (SuperPoint: <=); nothing shared gives 0 and no error
    assert detector_repeatability(k0[:1], [[13.0, 0]], H, (100, 50), (100, 50)) == (1.0, 3.0)
    assert detector_repeatability(k0, np.zeros((0, 2)), H, (100, 50), (100, 50)) == (0.0, None)
    # a detector that moves its points by 1 px has error 1 and full repeatability
    rep, err = detector_repeatability(k0[:3], k0[:3] + [10, 1], H, (100, 50), (100, 50))
    assert (rep, err) == (1.0, pytest.approx(1.0))


def test_best_keypoints_keeps_the_top_k_by_score():
    f = Features(keypoints=[[0, 0], [1, 1], [2, 2], [3, 3]], keypoint_scores=[0.1, 0.9, 0.5, 0.9],
                 descriptors=np.zeros((4, 2)), image_size=(10, 10))
    np.testing.assert_array_equal(best_keypoints(f, 3), [[1, 1], [3, 3], [2, 2]])  # ties: order
    assert best_keypoints(f, 0) is f.keypoints and best_keypoints(f, 9) is f.keypoints


def _record(seq, k, precision, h_error, n_matches=4):
    return {"sequence": seq, "split": seq[0], "k": k, "name0": f"{seq}/1.ppm",
            "name1": f"{seq}/{k}.ppm", "num_keypoints0": 10, "num_keypoints1": 20 + k,
            "num_matches": n_matches, "precision": precision, "H_error_px": h_error}


def test_summarize_two_pairs_by_hand():
    # pair A: 4 matches with errors 0, 2, 4, 10 px; pair B: no matches (scores 0).
    prec_a = match_precision(np.array([0.0, 2, 4, 10]), range(1, 11))
    prec_b = match_precision(np.zeros(0), range(1, 11))
    records = [_record("v_a", 2, prec_a, 0.8), _record("i_b", 2, prec_b, None, 0)]
    s = summarize(records)
    assert s["mma"]["v"][:5] == [0.25, 0.5, 0.5, 0.75, 0.75]
    assert s["mma"]["i"] == [0.0] * 10
    assert s["mma"]["all"][2] == 0.25 and s["mma"]["all"][9] == 0.5
    assert s["num_pairs"] == {"i": 1, "v": 1, "all": 2}
    assert s["H_accuracy"]["all"] == [0.5, 0.5, 0.5]
    assert s["H_failures"]["all"] == 1
    # AUC@1 of errors {0.8, inf}: the recall curve rises linearly from (0, 0) to (0.8, 0.5),
    # then stays at 0.5: (0.5 * 0.8 * 0.5 + 0.2 * 0.5) / 1
    assert s["H_auc"]["all"][0] == pytest.approx(0.3)
    assert s["num_keypoints"] == pytest.approx((10 + 22 + 10 + 22) / 4)
    assert s["num_matches"] == 2.0


def test_high_res_sequences_excluded_by_default(hpatches_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hpatches_dir, data)
    shutil.copytree(next(p for p in data.iterdir() if p.is_dir()), data / HIGH_RES_SEQUENCES[-1])
    assert {p.sequence for p in list_pairs(data)} == {p.sequence for p in list_pairs(hpatches_dir)}
    assert HIGH_RES_SEQUENCES[-1] in {p.sequence for p in list_pairs(data, keep_high_res=True)}
    assert len(list_pairs(hpatches_dir)) == 10


def test_list_pairs_accepts_other_image_formats(hpatches_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(hpatches_dir, data)
    seq = next(p for p in data.iterdir() if p.name.startswith("v_"))
    for k, ext in zip(range(1, 7), (".png", ".jpg", ".png", ".png", ".ppm", ".png"), strict=True):
        if ext != ".ppm":
            write_image(seq / f"{k}{ext}", read_image(seq / f"{k}.ppm"))
            (seq / f"{k}.ppm").unlink()
    pairs = [p for p in list_pairs(data) if p.sequence == seq.name]
    assert [(p.name0, p.name1) for p in pairs[:2]] == [
        (f"{seq.name}/1.png", f"{seq.name}/2.jpg"), (f"{seq.name}/1.png", f"{seq.name}/3.png")
    ]
    np.testing.assert_allclose(pairs[0].H, np.loadtxt(seq / "H_1_2"))


# -- benchmark end to end ----------------------------------------------------------------
@pytest.fixture(scope="module")
def benchmark_run(hpatches_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, run_homography_benchmark(hpatches_dir, out, "sift", "nn")


def test_benchmark_end_to_end(benchmark_run):
    out, summary = benchmark_run
    assert summary["num_pairs"] == {"i": 5, "v": 5, "all": 10}
    assert summary["mma"]["v"][2] > 0.5  # MMA@3 viewpoint
    assert summary["mma"]["i"][2] > 0.5
    assert summary["H_accuracy"]["all"][1] > 0.5  # homography accuracy @3 px
    assert summary["num_matches"] > 50 and summary["missing_pairs"] == []
    assert summary["confs"]["ransac"]["threshold_px"] == 3.0
    assert summary["confs"]["extractor"]["max_num_keypoints"] == 2048
    for name in ("results.json", "summary.json", "summary.md", "mma.png"):
        assert (out / name).is_file()
    assert (out / summary["files"]["features"]).is_file()
    results = json.loads((out / "results.json").read_text())
    assert len(results["pairs"]) == 10 and results["confs"] == summary["confs"]
    assert "| sift | nn |" in (out / "summary.md").read_text()
    # SIFT on exact homographies of one image: most keypoints repeat, sub-pixel localisation
    assert summary["repeatability"]["all"] > 0.4
    assert 0 < summary["loc_error_px"]["all"] < 1.0


def test_benchmark_rerun_recomputes_nothing(benchmark_run, hpatches_dir):
    out, first = benchmark_run
    h5_mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    second = run_homography_benchmark(hpatches_dir, out, "sift", "nn")
    assert second["work"] == {"extracted": 0, "matched": 0, "evaluated": 0, "failed": 0}
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.h5")} == h5_mtimes
    assert second["mma"] == first["mma"] and second["H_auc"] == first["H_auc"]
    # a different RANSAC threshold re-evaluates the pairs but reuses features and matches
    third = run_homography_benchmark(hpatches_dir, out, "sift", "nn", ransac={"threshold_px": 2.0})
    assert third["work"] == {"extracted": 0, "matched": 0, "evaluated": 10, "failed": 0}
    assert third["mma"] == first["mma"]
    # SuperPoint's fixed keypoint budget: only the detector metrics change, on fewer points
    top = run_homography_benchmark(hpatches_dir, out, "sift", "nn", detector_top_k=50)
    assert top["work"] == {"extracted": 0, "matched": 0, "evaluated": 10, "failed": 0}
    assert top["mma"] == first["mma"] and top["num_matches"] == first["num_matches"]
    assert top["detector_top_k"] == 50 and first["detector_top_k"] is None
    assert top["repeatability"]["all"] != first["repeatability"]["all"]
    assert "Rep / LE (top 50)" in summaries_to_markdown([top]).splitlines()[0]


def test_benchmark_refine(benchmark_run, hpatches_dir, tmp_path):
    """Refined matches: features and matches are reused, every pair is re-evaluated, and the
    refined points are closer to the ground truth (MMA at 1 px goes up)."""
    import shutil

    out, first = benchmark_run
    out = shutil.copytree(out, tmp_path / "bench")  # the other tests read the plain run
    refined = run_homography_benchmark(hpatches_dir, out, "sift", "nn", refine={})
    assert refined["work"] == {"extracted": 0, "matched": 0, "evaluated": 10, "failed": 0}
    assert refined["refine"] is True and first["refine"] is False
    assert refined["confs"]["refine"]["radius"] == 12 and first["confs"]["refine"] is None
    assert refined["mma"]["all"][0] > first["mma"]["all"][0]
    assert "| sift | nn + refine |" in summaries_to_markdown([refined])
    records = json.loads((out / "results.json").read_text())["pairs"]
    assert sum(r["num_refined"] for r in records) > 0
    # failed alignments are left out (drop_failed, the default): the counts add up
    dropped = sum(r["num_dropped"] for r in records)
    assert refined["num_matches"] * 10 + dropped == pytest.approx(first["num_matches"] * 10)


def test_markdown_table_compares_runs(benchmark_run):
    _, summary = benchmark_run
    table = summaries_to_markdown([summary, {**summary, "features": "orb"}])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[3].startswith("| orb | nn |")
    assert lines[0].count("|") == lines[2].count("|")
    # dense matchers have no detector metrics: "-", and the columns still line up
    dense = {**summary, "features": "dense", "repeatability": {"all": None},
             "loc_error_px": {"all": None}}
    row = summaries_to_markdown([dense]).strip().splitlines()[2]
    assert " | - | " in row and row.count("|") == lines[0].count("|")
    rep = summary["repeatability"]["all"]
    assert f"{100 * rep:.1f} / " in lines[2]


def test_d2net_check_script_agrees(benchmark_run, hpatches_dir):
    out, _ = benchmark_run
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "d2net_mma_check.py"),
         "--data", str(hpatches_dir), "--results", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "max |difference|" in proc.stdout


# -- CLI ---------------------------------------------------------------------------------
def test_cli_make_hpatches_and_benchmark(source_dir, tmp_path, capsys):
    data = tmp_path / "set"
    assert main(["--quiet", "make-hpatches", "--images", str(source_dir), "--output", str(data),
                 "--seed", "3"]) == 0
    assert read_manifest(data)["seed"] == 3
    assert main(["--quiet", "benchmark", "homography", "--data", str(data), "--features", "orb",
                 "--matcher", "nn", "--output", str(tmp_path / "out"), "--max-keypoints", "500",
                 "--ransac-th-px", "2.5"]) == 0
    printed = capsys.readouterr().out
    assert "| orb | nn |" in printed
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["confs"]["extractor"]["max_num_keypoints"] == 500
    assert summary["confs"]["ransac"]["threshold_px"] == 2.5


def test_cli_make_hpatches_fails_on_bad_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image(images / "ok.png", textured_image(np.random.default_rng(1), 120, 160))
    (images / "bad.png").write_bytes(b"")
    assert main(["--quiet", "make-hpatches", "--images", str(images),
                 "--output", str(tmp_path / "set")]) == 1


@pytest.mark.shared_data
def test_make_hpatches_on_bsds(tmp_path):
    test_images = SHARED_DATA / "bsds500" / "images" / "test"
    if not test_images.is_dir():
        pytest.skip(f"shared data not available: {test_images} is absent")
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(test_images.glob("*.jpg"))[:2]:
        shutil.copy(path, images)
    out = make_hpatches(images, tmp_path / "set", seed=0)
    sequences = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert sorted(s[0] for s in sequences) == ["i", "v"]
    for seq in sequences:
        image = read_image(out / seq / "6.ppm")
        assert min(image.shape[:2]) >= 0.8 * 321 - 1
    assert len(list_pairs(out)) == 10
