import numpy as np
import pytest

from featloc.types import Features, Matches


def test_features_casts_and_validates():
    f = Features(np.zeros((3, 2)), np.ones(3), np.ones((3, 8), np.float64), (10, 20))
    assert f.keypoints.dtype == np.float32 and f.descriptors.dtype == np.float32
    assert f.image_size == (10, 20) and len(f) == 3 and f.descriptor_dim == 8
    with pytest.raises(ValueError, match="inconsistent"):
        Features(np.zeros((3, 2)), np.ones(2), np.ones((3, 8)), (10, 20))
    with pytest.raises(ValueError, match="scales"):
        Features(np.zeros((3, 2)), np.ones(3), np.ones((3, 8)), (10, 20), scales=np.ones(2))


def test_features_empty_and_select():
    e = Features.empty((5, 6), 128)
    assert e.keypoints.shape == (0, 2) and e.descriptors.shape == (0, 128)
    f = Features(np.arange(8).reshape(4, 2), np.arange(4), np.eye(4), (9, 9), scales=np.arange(4))
    s = f.select(np.array([3, 1]))
    assert s.keypoints.tolist() == [[6, 7], [2, 3]] and s.scales.tolist() == [3, 1]


def test_matches_indices_roundtrip():
    m = Matches.from_indices(np.array([[0, 2], [3, 1]]), np.array([0.5, 0.9]), 5)
    assert m.matches0.dtype == np.int32 and m.matches0.tolist() == [2, -1, -1, 1, -1]
    assert m.indices().tolist() == [[0, 2], [3, 1]]
    assert np.allclose(m.scores(), [0.5, 0.9]) and len(m) == 2
    assert len(Matches.empty(0)) == 0 and Matches.empty(3).indices().shape == (0, 2)
