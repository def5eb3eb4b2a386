import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from featloc.io.h5 import FeatureStore, MatchStore, names_to_pair
from featloc.types import Features, Matches


def _features(n, seed=0, size=(64, 48)):
    rng = np.random.default_rng(seed)
    return Features(rng.uniform(0, 40, (n, 2)), rng.random(n), rng.random((n, 16)), size,
                    scales=rng.random(n))


def test_feature_roundtrip_layout_and_dtypes(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a", attrs={"conf": "{}"}) as store:
        store.write("a.jpg", _features(5))
        store.write("sub/b.png", _features(0, 1))
        assert "a.jpg" in store and store.read("a.jpg").keypoints.shape == (5, 2)
    with h5py.File(path) as f:  # hloc's layout: descriptors [D, N], "scores"
        assert f["a.jpg/keypoints"].dtype == np.float32
        assert f["a.jpg/descriptors"].shape == (16, 5) and "scores" in f["a.jpg"]
        assert "sub/b.png/keypoints" in f and f.attrs["conf"] == "{}"
    with FeatureStore(path) as store:
        assert store.names() == {"a.jpg", "sub/b.png"}
        a = store.read("a.jpg")
        ref = _features(5)
        assert np.array_equal(a.keypoints, ref.keypoints) and np.allclose(a.descriptors, ref.descriptors)
        assert a.image_size == (64, 48) and a.scales is not None
        assert len(store.read("sub/b.png")) == 0
        with pytest.raises(KeyError, match="no features for image"):
            store.read("missing.jpg")


def test_match_store_reversed_lookup_and_dtypes(tmp_path):
    path = tmp_path / "m.h5"
    with MatchStore(path, "a") as store:
        store.write("x/a.jpg", "b.jpg", Matches(np.array([2, -1, 0]), np.array([0.9, 0, 0.5])))
    with h5py.File(path) as f:
        key = names_to_pair("x/a.jpg", "b.jpg")
        assert key == "x-a.jpg/b.jpg" and f[key + "/matches0"].dtype == np.int32
    with MatchStore(path) as store:
        forward = store.read("x/a.jpg", "b.jpg")
        assert forward.matches0.tolist() == [2, -1, 0]
        backward = store.read("b.jpg", "x/a.jpg", num_keypoints0=4)
        assert backward.matches0.tolist() == [2, -1, 0, -1]
        assert np.allclose(backward.matching_scores0, [0.5, 0, 0.9, 0])
        assert store.has_pair("b.jpg", "x/a.jpg") and not store.has_pair("b.jpg", "c.jpg")


def test_duplicate_write_in_one_run_is_an_error(tmp_path):
    with FeatureStore(tmp_path / "f.h5", "a") as store:
        store.write("a.jpg", _features(2))
        with pytest.raises(ValueError, match="duplicate"):
            store.write("a.jpg", _features(2))


def test_rewrite_replaces_entry(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a") as store:
        store.write("a.jpg", _features(3))
        store.write("b.jpg", _features(4))
    with FeatureStore(path, "a") as store:
        store.write("a.jpg", _features(7, seed=5))
    with FeatureStore(path) as store:
        assert len(store.read("a.jpg")) == 7 and len(store.read("b.jpg")) == 4


def test_reads_back_flushed_entries_before_close(tmp_path):
    with FeatureStore(tmp_path / "f.h5", "a", flush_every=1) as store:
        store.write("a.jpg", _features(3))
        assert len(store.read("a.jpg")) == 3  # lives in a shard until close


_WRITER = """
import sys, time, numpy as np
from featloc.io.h5 import FeatureStore
from featloc.types import Features
store = FeatureStore(sys.argv[1], "a", flush_every=1)
for i in range(100000):
    n = 50
    store.write(f"img{i:05d}.jpg", Features(np.zeros((n, 2)), np.ones(n), np.ones((n, 64)), (8, 8)))
    if i == 3:
        print("ready", flush=True)
"""


def test_sigkill_mid_run_keeps_file_valid_and_resumes(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a") as store:  # an earlier, complete run
        store.write("old.jpg", _features(3))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)  # no cleanup at all
    proc.wait()
    with h5py.File(path) as f:  # the main file is untouched and valid
        assert "old.jpg" in f
    shards = list((tmp_path / "f.h5.partial").glob("*"))
    assert shards, "completed entries should be kept in shards"
    with FeatureStore(path, "a") as store:  # the next run merges them: resume
        recovered = {n for n in store.names() if n.startswith("img")}
        assert len(recovered) >= 4 and "old.jpg" in store.names()
        for name in recovered:
            assert len(store.read(name)) == 50  # every recovered entry is complete
    assert not (tmp_path / "f.h5.partial").exists()


def test_leftover_temporary_files_are_ignored(tmp_path):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a") as store:
        store.write("a.jpg", _features(3))
    partial = tmp_path / "f.h5.partial"
    partial.mkdir()
    (partial / "123.h5.tmp").write_bytes(b"half a shard")  # killed while writing a shard
    (tmp_path / ".f.h5.abcd.tmp").write_bytes(b"half a merge")  # killed while merging
    with FeatureStore(path, "a") as store:
        assert store.names() == {"a.jpg"}
    with FeatureStore(path) as store:
        assert len(store.read("a.jpg")) == 3


def test_sigterm_flushes_and_merges(tmp_path, image_folder):
    """`featloc extract` turns SIGTERM into a clean stop that keeps completed images."""
    from featloc.io.images import write_image
    from featloc.synth.textures import random_scene_image

    first = image_folder / "many" / "000.png"
    write_image(first, random_scene_image(np.random.default_rng(0), 480, 640))
    for i in range(1, 120):  # identical content is fine: each name is its own entry
        (image_folder / "many" / f"{i:03d}.png").write_bytes(first.read_bytes())
    out = tmp_path / "feats.h5"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "featloc.cli", "--quiet", "extract", str(image_folder),
         "--output", str(out)], env=env, stderr=subprocess.PIPE,
    )
    time.sleep(4.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("extraction finished before the signal (machine too fast)")
    assert proc.returncode == 130, err.decode()
    with FeatureStore(out) as store:
        done = store.names()
    assert 0 < len(done) < 123
    from featloc.extract import run_extract

    report = run_extract(image_folder, out, "sift")
    assert report.skipped == len(done) and report.done == 123 - len(done)
