"""The relative-pose benchmark: pair-list readers, protocol pieces, CLI on a rendered set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from featloc.cli import main
from featloc.eval.pose import (
    PairsFormatError,
    PosePair,
    PreparedView,
    adjust_pair,
    evaluate_pose_pair,
    format_pose_pair_line,
    parse_resize,
    read_pose_pairs,
    summaries_to_markdown,
    summarize_pose,
)
from featloc.eval.report import (
    load_cached_records,
    markdown_table,
    to_jsonable,
    write_json,
)
from featloc.geometry.camera import Camera
from featloc.geometry.pose import Pose, quaternion_to_rotation
from featloc.io.images import write_image
from featloc.synth.textures import random_scene_image

K_TEXT = "500 0 320 0 500 240 0 0 1"
K1_TEXT = "600 0 300 0 610 250 0 0 1"
T_TEXT = "1 0 0 0.5 0 1 0 0 0 0 1 0.1 0 0 0 1"


def test_read_pose_pairs_text_formats(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text(
        "# SuperGlue pairs with ground truth\n"
        f"a.jpg b.jpg 0 1 {K_TEXT} {K1_TEXT} {T_TEXT}\n"
        "\n"
        f"c.jpg d.jpg {K_TEXT} {K1_TEXT} {T_TEXT}  # glue-factory 4x4\n"
        f"e.jpg f.jpg {K_TEXT} {K1_TEXT} 1 0 0 0 1 0 0 0 1 0.5 0 0.1\n"
    )
    pairs = read_pose_pairs(path)
    assert [(p.name0, p.name1, p.rot0, p.rot1) for p in pairs] == [
        ("a.jpg", "b.jpg", 0, 1), ("c.jpg", "d.jpg", 0, 0), ("e.jpg", "f.jpg", 0, 0)]
    for p in pairs:
        assert np.allclose(p.K0, np.array(K_TEXT.split(), float).reshape(3, 3))
        assert np.allclose(p.K1[1, 1], 610)
        assert np.allclose(p.T_0to1.t, [0.5, 0, 0.1]) and np.allclose(p.T_0to1.R, np.eye(3))
    # round trip through the SuperGlue writer
    path.write_text("".join(format_pose_pair_line(p) + "\n" for p in pairs))
    again = read_pose_pairs(path)
    assert all(np.allclose(a.T_0to1.matrix(), b.T_0to1.matrix()) for a, b in zip(pairs, again, strict=True))


@pytest.mark.parametrize("line, match", [
    ("a.jpg b.jpg 0 0 1 2 3", "expected 38 tokens"),
    (f"a.jpg b.jpg 0 0 {K_TEXT} {K1_TEXT} {T_TEXT.replace('0.5', 'x')}", "could not convert"),
    (f"a.jpg b.jpg 0 0 {K_TEXT.replace(' 1', ' 2')} {K1_TEXT} {T_TEXT}", "K\\[2, 2\\] = 1"),
])
def test_read_pose_pairs_errors_name_the_line(tmp_path, line, match):
    path = tmp_path / "bad.txt"
    path.write_text("# header\n" + line + "\n")
    with pytest.raises(PairsFormatError, match=f"bad.txt:2: .*{match}"):
        read_pose_pairs(path)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(PairsFormatError, match="no pairs"):
        read_pose_pairs(empty)


def test_read_loftr_scene_info(tmp_path):
    rng = np.random.default_rng(0)
    poses = np.stack([Pose(quaternion_to_rotation(rng.normal(size=4)), rng.normal(size=3)).matrix()
                      for _ in range(3)])
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    pair_infos = np.empty(2, dtype=object)
    pair_infos[0] = ((0, 2), 0.4, np.zeros(3))
    pair_infos[1] = ((1, 0), 0.2, np.zeros(3))
    np.savez(tmp_path / "0015_0.1_0.3.npz", image_paths=np.array(["i0.jpg", "i1.jpg", "i2.jpg"], object),
             intrinsics=np.stack([K, 2 * K, K]), poses=poses, pair_infos=pair_infos)
    pairs = read_pose_pairs(tmp_path / "0015_0.1_0.3.npz")
    assert [(p.name0, p.name1) for p in pairs] == [("i0.jpg", "i2.jpg"), ("i1.jpg", "i0.jpg")]
    expected = poses[2] @ np.linalg.inv(poses[0])
    assert np.allclose(pairs[0].T_0to1.matrix(), expected)
    assert np.allclose(pairs[1].K0, 2 * K)


def test_parse_resize():
    assert parse_resize("640x480") == ((640, 480), 0)
    assert parse_resize(1200) == (None, 1200)
    assert parse_resize(None) == (None, 0) and parse_resize("0") == (None, 0)
    with pytest.raises(ValueError, match="WxH"):
        parse_resize("640x")


@pytest.mark.parametrize("rot0, rot1", [(0, 1), (2, 3), (1, 1)])
def test_adjust_pair_follows_resize_and_rotation(rot0, rot1):
    """Project 3D points with the original K/T, resize and rotate the pixels like the images:
    the adjusted K/T project to the same pixels."""
    rng = np.random.default_rng(1)
    K0 = np.array([[500.0, 0, 330], [0, 505, 250], [0, 0, 1]])
    K1 = np.array([[600.0, 0, 310], [0, 590, 235], [0, 0, 1]])
    T = Pose(quaternion_to_rotation([1, 0.02, -0.1, 0.03]), [0.4, 0.02, 0.1])
    size0, size1 = (640, 480), (600, 500)
    view0 = PreparedView("a", (0.5, 0.5), size0)
    view1 = PreparedView("b", (320 / 600, 240 / 500), size1)
    pair = PosePair("a", "b", K0, K1, T, rot0, rot1)
    K0a, K1a, Ta = adjust_pair(pair, view0, view1)
    X = np.c_[rng.uniform(-1, 1, (20, 2)), rng.uniform(3, 5, 20)]

    def pixels(K, points, view, rot):
        cam = Camera.from_K(K, *view.size)
        uv = (cam.project(points) + 0.5) * view.scale - 0.5
        w, h = round(view.size[0] * view.scale[0]), round(view.size[1] * view.scale[1])
        for _ in range(rot):  # np.rot90 once: (x, y) -> (y, w - 1 - x)
            uv = np.stack([uv[:, 1], w - 1 - uv[:, 0]], 1)
            w, h = h, w
        return uv

    X0a = pixels(K0, X, view0, rot0)
    X1a = pixels(K1, T.transform(X), view1, rot1)
    # the adjusted cameras see the rotated camera frames
    from featloc.geometry.camera import inplane_rotation

    Xr = inplane_rotation(rot0).transform(X)
    assert np.abs(Camera.from_K(K0a, 1, 1).project(Xr) - X0a).max() < 1e-9
    assert np.abs(Camera.from_K(K1a, 1, 1).project(Ta.transform(Xr)) - X1a).max() < 1e-9


def _synthetic_matches(seed=0, n=200, outliers=0.2):
    rng = np.random.default_rng(seed)
    cam = Camera.pinhole(500, 500, 319.5, 239.5, 640, 480)
    X = rng.uniform([-2, -1.5, 4], [2, 1.5, 8], (n, 3))
    T = Pose(quaternion_to_rotation([1, 0.01, 0.08, 0.0]), [0.7, 0.05, 0.1])
    p0 = cam.project(X) + rng.normal(0, 0.3, (n, 2))
    p1 = cam.project(T.transform(X)) + rng.normal(0, 0.3, (n, 2))
    bad = rng.random(n) < outliers
    p1[bad] = rng.uniform([0, 0], [640, 480], (bad.sum(), 2))
    return p0, p1, cam.K, T, bad


def test_evaluate_pose_pair():
    p0, p1, K, T, bad = _synthetic_matches()
    ransac = {"method": "ransac", "threshold_px": 1.0, "confidence": 0.99999, "max_iterations": 1000}
    m = evaluate_pose_pair(p0, p1, K, K, T, ransac, 5e-4, num_keypoints0=400)
    assert m["success"] and m["pose_error_deg"] < 3
    assert m["pose_error_deg"] == max(m["R_error_deg"], m["t_error_deg"])
    assert m["num_matches"] == 200
    # inliers (0.3 px noise) are correct at 5e-4, outliers almost never
    assert m["num_correct"] >= (~bad).sum() - 2 and m["num_correct"] <= (~bad).sum() + 3
    assert m["precision"] == pytest.approx(m["num_correct"] / 200)
    assert m["matching_score"] == pytest.approx(m["num_correct"] / 400)
    fail = evaluate_pose_pair(p0[:4], p1[:4], K, K, T, ransac, 5e-4, num_keypoints0=4)
    assert not fail["success"] and fail["pose_error_deg"] == np.inf and fail["reason"]
    none = evaluate_pose_pair(np.zeros((0, 2)), np.zeros((0, 2)), K, K, T, ransac, 5e-4, 0)
    assert none["precision"] == 0 and none["matching_score"] == 0 and not none["success"]


def test_summary_and_report_helpers(tmp_path):
    records = [
        {"name0": "a", "name1": "b", "num_keypoints0": 10, "num_keypoints1": 20, "num_matches": 5,
         "num_inliers": 4, "precision": 0.8, "matching_score": 0.4, "pose_error_deg": 1.0},
        {"name0": "a", "name1": "c", "num_keypoints0": 10, "num_keypoints1": 30, "num_matches": 3,
         "num_inliers": 0, "precision": 0.0, "matching_score": 0.0, "pose_error_deg": None},
    ]
    s = summarize_pose(records)
    # errors [1, inf]: curve (0, 0) (1, 1/2); at 5: (0.25 + 4 * 0.5) / 5
    assert s["pose_auc"] == pytest.approx([0.45, 0.475, 0.4875])
    assert s["failures"] == 1 and s["num_keypoints"] == pytest.approx(20)
    table = summaries_to_markdown([{**s, "features": "sift", "matcher": "nn"}])
    assert "| sift | nn | 45.0 | 47.5 | 48.8 | 40.0 | 20.0 | 20 | 4 | 2 | 1/2 |" in table
    assert to_jsonable({"a": np.float32(np.inf), "b": (np.int64(3), np.bool_(True))}) == {
        "a": None, "b": [3, True]}
    write_json(tmp_path / "r.json", {"pairs": [{"digest": "k", "x": np.nan}]})
    assert load_cached_records(tmp_path / "r.json") == {"k": {"digest": "k", "x": None}}
    (tmp_path / "broken.json").write_text("{")
    assert load_cached_records(tmp_path / "broken.json") == {}
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"


@pytest.fixture(scope="module")
def rendered_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("pose")
    textures = root / "textures"
    rng = np.random.default_rng(3)
    for i in range(5):
        write_image(textures / f"t{i}.png", random_scene_image(rng, 192, 256, num_shapes=80))
    out = root / "scene"
    code = main(["--quiet", "make-scenes", "--textures", str(textures), "--output", str(out),
                 "--kind", "room", "--num-views", "24", "--width", "320", "--height", "240",
                 "--num-pairs", "8", "--no-kapture"])
    assert code == 0
    return out


def test_benchmark_pose_cli(rendered_set, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--quiet", "benchmark", "pose", "--pairs", str(rendered_set / "pairs_gt.txt"),
            "--images", str(rendered_set / "images"), "--output", str(out),
            "--features", "sift", "--matcher", "nn", "--max-keypoints", "1024"]
    assert main(args) == 0
    assert "| sift | nn |" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert (out / "summary.md").read_text().startswith("| features |")
    n = len(read_pose_pairs(rendered_set / "pairs_gt.txt"))
    assert summary["num_pairs"] == len(results["pairs"]) == n
    auc = summary["pose_auc"]
    assert all(0 <= a <= 1 for a in auc) and auc[0] <= auc[1] <= auc[2]
    assert auc[2] > 0.3  # SIFT finds most of these rendered room pairs
    assert summary["precision"] > 0.3 and summary["num_matches"] > 20
    assert summary["confs"]["ransac"]["method"] == "ransac"
    assert summary["confs"]["ransac"]["threshold_px"] == 0.5
    assert summary["work"]["evaluated"] == n
    # a re-run recomputes nothing
    assert main(args) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["work"] == {"extracted": 0, "matched": 0, "evaluated": 0, "failed": 0}
    assert again["pose_auc"] == auc


def test_pose_results_do_not_depend_on_the_number_of_workers(rendered_set, tmp_path):
    """Pairs are estimated in threads; OpenCV's RANSAC seeds itself per call."""
    from featloc.eval.pose import run_pose_benchmark

    args = (rendered_set / "pairs_gt.txt", rendered_set / "images")
    one = run_pose_benchmark(*args, tmp_path / "one", "sift", "nn", {"max_num_keypoints": 512},
                             workers=1)
    three = run_pose_benchmark(*args, tmp_path / "three", "sift", "nn",
                               {"max_num_keypoints": 512}, workers=3)
    assert one["work"]["evaluated"] == three["work"]["evaluated"] > 3
    assert (tmp_path / "one" / "results.json").read_text() == \
        (tmp_path / "three" / "results.json").read_text()
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        run_pose_benchmark(*args, tmp_path / "zero", "sift", "nn", workers=0)
    assert not (tmp_path / "zero").exists()


def test_benchmark_pose_with_resize_and_rotation(rendered_set, tmp_path):
    """Rotating image 1 by a quarter turn (EXIF-style) and resizing must not change the
    pose accuracy much: K and T are adjusted to the prepared images."""
    pairs = read_pose_pairs(rendered_set / "pairs_gt.txt")
    rotated = tmp_path / "pairs_rot.txt"
    rotated.write_text("".join(
        format_pose_pair_line(PosePair(p.name0, p.name1, p.K0, p.K1, p.T_0to1, 0, 1)) + "\n"
        for p in pairs))
    from featloc.eval.pose import run_pose_benchmark

    plain = run_pose_benchmark(rendered_set / "pairs_gt.txt", rendered_set / "images",
                               tmp_path / "plain", "sift", "nn", {"max_num_keypoints": 1024})
    turned = run_pose_benchmark(rotated, rendered_set / "images", tmp_path / "rot", "sift", "nn",
                                {"max_num_keypoints": 1024}, resize="400x300")
    assert (tmp_path / "rot" / next(p.name for p in (tmp_path / "rot").iterdir()
                                    if p.name.startswith("images-"))).is_dir()
    assert turned["pose_auc"][2] > plain["pose_auc"][2] - 0.25
    assert turned["pose_auc"][2] > 0.3


def test_pose_oracle_script(rendered_set, tmp_path):
    """scripts/pose_oracle.py recomputes the benchmark's AUC and match count from its folder
    and scores the inlier and oracle match sets."""
    import subprocess
    import sys
    from pathlib import Path

    from featloc.eval.pose import run_pose_benchmark

    out = tmp_path / "bench"
    summary = run_pose_benchmark(rendered_set / "pairs_gt.txt", rendered_set / "images", out,
                                 "sift", "nn", {"max_num_keypoints": 1024})
    script = Path(__file__).resolve().parents[1] / "scripts" / "pose_oracle.py"
    proc = subprocess.run([sys.executable, str(script), "--scene", str(rendered_set),
                           str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {cells[2]: cells[3:] for line in proc.stdout.splitlines()
            if len(cells := [c.strip() for c in line.split("|")]) == 8 and cells[1] == "bench"}
    assert set(rows) == {"benchmark", "inliers", "oracle@1", "oracle@3"}
    assert [float(v) for v in rows["benchmark"][:3]] == pytest.approx(
        [100 * a for a in summary["pose_auc"]], abs=0.051)
    assert float(rows["benchmark"][3]) == pytest.approx(summary["num_matches"], abs=0.51)
    assert float(rows["inliers"][3]) <= float(rows["benchmark"][3])
    assert float(rows["oracle@3"][3]) >= float(rows["oracle@1"][3]) > 0


def test_benchmark_pose_refine(rendered_set, tmp_path, capsys):
    """--refine moves matched points by patch alignment before estimation: the summary and
    table say so, the plain run's cache is not reused, and more matches satisfy a sub-pixel
    epipolar threshold on these rendered (exact) pairs. (Eight pairs of mostly planar walls
    are too few to compare pose AUCs.)"""
    common = ["--quiet", "benchmark", "pose", "--pairs", str(rendered_set / "pairs_gt.txt"),
              "--images", str(rendered_set / "images"), "--features", "sift", "--matcher", "nn",
              "--max-keypoints", "1024", "--epipolar-th", "2e-6"]  # about 0.4 px
    out = tmp_path / "bench"
    assert main([*common, "--output", str(out)]) == 0
    plain = json.loads((out / "summary.json").read_text())
    assert plain["refine"] is False and plain["confs"]["refine"] is None
    capsys.readouterr()
    assert main([*common, "--output", str(out), "--refine-conf", "radius=6"]) == 0
    assert "| sift | nn + refine |" in capsys.readouterr().out
    refined = json.loads((out / "summary.json").read_text())
    assert refined["refine"] is True and refined["confs"]["refine"]["radius"] == 6
    assert refined["work"]["evaluated"] == refined["num_pairs"]  # not the plain run's records
    records = json.loads((out / "results.json").read_text())["pairs"]
    assert sum(r["num_refined"] for r in records) > 0.25 * sum(r["num_matches"] for r in records)
    assert refined["precision"] > plain["precision"] + 0.05
    # a misspelt option is refused before any work
    assert main([*common, "--output", str(tmp_path / "typo"), "--refine-conf", "radious=6"]) == 2
    assert not (tmp_path / "typo" / "results.json").exists()


def test_pose_compare_script(tmp_path):
    """scripts/pose_compare.py: the two AUCs as the benchmark computes them (failed pairs as
    infinite errors), the per-pair movement, and a refusal for folders of other pairs."""
    import subprocess
    import sys
    from pathlib import Path

    from featloc.geometry.metrics import error_auc

    def write(name, errors):
        pairs = [{"name0": f"a{i}.png", "name1": f"b{i}.png", "pose_error_deg": e}
                 for i, e in enumerate(errors)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"pairs": pairs}))

    a = [1.0, 2.0, 3.0, 4.0, None, 8.0]
    b = [1.0, 2.5, 30.0, 4.0, 6.0, 8.0]
    write("a", a)
    write("b", b)
    write("c", a[:3])
    script = Path(__file__).resolve().parents[1] / "scripts" / "pose_compare.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b"),
                           "--bootstrap", "50"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    auc_a = 100 * error_auc([e if e is not None else float("inf") for e in a], [10.0])[0]
    auc_b = 100 * error_auc(b, [10.0])[0]
    assert f"AUC@10: A {auc_a:.1f}, B {auc_b:.1f}" in proc.stdout
    # only pairs with a pose in both runs count here: the failed one is left out
    assert "pairs moved by more than 1 / 5 deg: 1 / 1" in proc.stdout
    refused = subprocess.run([sys.executable, str(script), str(tmp_path / "a"),
                              str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "different pairs" in refused.stdout + refused.stderr
