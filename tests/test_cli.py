"""Smoke tests for every CLI subcommand, and the bad-input behaviour of batch commands."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from featloc.cli import COMMANDS, build_parser, main
from featloc.io.h5 import FeatureStore, MatchStore


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = []
    for name, subparser in sub.choices.items():
        nested = [a for a in subparser._actions if getattr(a, "choices", None) and a.dest == "benchmark"]
        if nested:
            names += [[name, b] for b in nested[0].choices]
        names.append([name])
    return names


def test_every_command_is_listed_in_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    commands = [c[0] for c in _subcommands()]
    assert len(set(commands)) == len(COMMANDS)  # every module registers one command
    for command in commands:
        assert command in out


@pytest.mark.parametrize("command", _subcommands(), ids=" ".join)
def test_every_subcommand_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: featloc" in out
    if "--output" in out and "required" not in out:
        assert "default" in out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "featloc.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "extract" in result.stdout


def test_extract_pairs_match_show(tmp_path, image_folder):
    feats, pairs, matches = tmp_path / "f.h5", tmp_path / "pairs.txt", tmp_path / "m.h5"
    assert main(["--quiet", "extract", str(image_folder), "--output", str(feats),
                 "--max-keypoints", "500", "--resize-max", "200"]) == 0
    with FeatureStore(feats) as store:
        assert store.names() == {"a.png", "b.jpg", "sub/c.png"}
        a = store.read("a.png")
        assert 0 < len(a) <= 500 and a.image_size == (320, 240)
        assert a.keypoints[:, 0].max() > 200  # original pixels, not the 200-px resized image
    assert main(["--quiet", "pairs", "--images", str(image_folder), "--output", str(pairs)]) == 0
    assert len(pairs.read_text().splitlines()) == 3
    assert main(["--quiet", "pairs", "--features", str(feats), "--sequential", "1",
                 "--output", str(tmp_path / "seq.txt")]) == 0
    assert len((tmp_path / "seq.txt").read_text().splitlines()) == 2
    assert main(["--quiet", "match", "--features", str(feats), "--pairs", str(pairs),
                 "--output", str(matches), "--matcher-conf", "ratio_thresh=0.9"]) == 0
    with MatchStore(matches) as store:
        assert store.has_pair("a.png", "b.jpg") and store.has_pair("sub/c.png", "b.jpg")
        assert store.read("a.png", "b.jpg").matches0.dtype == np.int32
    png = tmp_path / "show.png"
    assert main(["--quiet", "show", str(image_folder / "a.png"), str(image_folder / "b.jpg"),
                 "--output", str(png)]) == 0
    assert png.stat().st_size > 1000


def test_rerun_skips_and_overwrite_redoes(tmp_path, image_folder):
    from featloc.extract import run_extract
    from featloc.match import run_match

    feats = tmp_path / "f.h5"
    assert run_extract(image_folder, feats).done == 3
    again = run_extract(image_folder, feats)
    assert again.done == 0 and again.skipped == 3
    assert run_extract(image_folder, feats, overwrite=True).done == 3
    # a changed configuration or a changed image is recomputed, the rest is not
    assert run_extract(image_folder, feats, conf={"max_num_keypoints": 100}).done == 3
    (image_folder / "b.jpg").write_bytes((image_folder / "a.png").read_bytes())
    redo = run_extract(image_folder, feats, conf={"max_num_keypoints": 100})
    assert redo.done == 1 and redo.skipped == 2
    pairs = [("a.png", "b.jpg")]
    assert run_match(feats, pairs, tmp_path / "m.h5").done == 1
    assert run_match(feats, [("b.jpg", "a.png")], tmp_path / "m.h5").skipped == 1


def test_bad_images_are_reported_and_the_batch_goes_on(tmp_path, image_folder, caplog):
    (image_folder / "zero.png").write_bytes(b"")
    (image_folder / "text.jpg").write_text("hello")
    good = (image_folder / "b.jpg").read_bytes()
    (image_folder / "trunc.jpg").write_bytes(good[: len(good) // 3])
    from PIL import Image

    Image.fromarray(np.zeros((3, 3), np.uint8)).save(image_folder / "tiny.png")
    feats = tmp_path / "f.h5"
    code = main(["extract", str(image_folder), "--output", str(feats)])
    assert code == 1
    for name in ["zero.png", "text.jpg", "trunc.jpg", "tiny.png"]:
        assert name in caplog.text
    with FeatureStore(feats) as store:
        assert store.names() == {"a.png", "b.jpg", "sub/c.png"}


def test_missing_paths_and_bad_pairs_files(tmp_path, image_folder, caplog):
    assert main(["extract", str(tmp_path / "nope"), "--output", str(tmp_path / "f.h5")]) == 2
    assert "nope" in caplog.text
    feats = tmp_path / "f.h5"
    assert main(["--quiet", "extract", str(image_folder), "--output", str(feats)]) == 0
    before = feats.read_bytes()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["match", "--features", str(feats), "--pairs", str(empty), "--output",
                 str(tmp_path / "m.h5")]) == 2
    assert "lists no pairs" in caplog.text
    bad = tmp_path / "bad.txt"
    bad.write_text("a.png b.jpg\nonly_one_name\n")
    assert main(["match", "--features", str(feats), "--pairs", str(bad), "--output",
                 str(tmp_path / "m.h5")]) == 2
    assert "bad.txt:2" in caplog.text
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("a.png b.jpg\na.png ghost.jpg\nb.jpg a.png\n")  # a duplicate, reversed
    assert main(["match", "--features", str(feats), "--pairs", str(unknown), "--output",
                 str(tmp_path / "m.h5")]) == 1
    assert "ghost.jpg" in caplog.text and "duplicate pair" in caplog.text
    with MatchStore(tmp_path / "m.h5") as store:
        assert store.has_pair("a.png", "b.jpg")  # the good pair was still matched
    assert feats.read_bytes() == before  # nothing already written was touched
    with h5py.File(feats) as f:
        assert "a.png" in f
