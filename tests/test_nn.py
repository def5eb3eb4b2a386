import numpy as np
import pytest

import featloc
from featloc.matching.nn import nearest_neighbor_match
from featloc.types import Features


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# Hand-made 2-D descriptors. Image 0: a, b, c, d. Image 1: near-copies of a, b, c and a
# decoy close to a (so that a's ratio test is ambiguous) -- d has no counterpart.
D0 = _unit([[1, 0], [0, 1], [-1, 0], [0.7, 0.7]])
D1 = _unit([[1, 0.05], [0.05, 1], [-1, -0.3], [1, -0.06]])


def test_mutual_nn_hand_made():
    m, s = nearest_neighbor_match(D0, D1, mutual_check=True)
    # a -> 0, b -> 1, c -> 2; d's nearest is 0 or 1 but those prefer a / b: not mutual
    assert m.tolist() == [0, 1, 2, -1]
    assert (s[:3] > 0).all() and s[3] == 0 and m.dtype == np.int32


def test_no_mutual_check_and_ratio():
    m, _ = nearest_neighbor_match(D0, D1, mutual_check=False)
    assert m[3] in (0, 1)
    m, _ = nearest_neighbor_match(D0, D1, mutual_check=False, ratio_thresh=0.8)
    # a has two close candidates (0 and the decoy 3): rejected by the ratio test
    assert m[0] == -1 and m[1] == 1 and m[2] == 2


def test_distance_threshold():
    m, _ = nearest_neighbor_match(D0, D1, distance_thresh=0.1)
    assert m.tolist() == [0, 1, -1, -1]  # c's match is 0.29 away


def test_dot_metric_prefers_large_weighted_descriptors():
    d0 = np.array([[1.0, 0.0]], np.float32)
    d1 = np.array([[0.5, 0.0], [3.0, 0.5]], np.float32)  # the second is farther but larger
    assert nearest_neighbor_match(d0, d1, metric="dot")[0].tolist() == [1]
    assert nearest_neighbor_match(d0, d1, metric="l2")[0].tolist() == [0]


def test_binary_descriptors_hamming():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (50, 256)).astype(np.float32)
    noisy = bits.copy()
    flip = rng.random(bits.shape) < 0.05
    noisy[flip] = 1 - noisy[flip]
    m, _ = nearest_neighbor_match(bits, noisy[::-1])
    assert (m == np.arange(50)[::-1]).mean() > 0.95


@pytest.mark.parametrize("n0, n1", [(0, 5), (5, 0), (0, 0)])
def test_empty_inputs_are_well_formed(n0, n1):
    matcher = featloc.load_matcher("nn")
    f0 = Features(np.zeros((n0, 2)), np.zeros(n0), np.zeros((n0, 4)), (8, 8))
    f1 = Features(np.zeros((n1, 2)), np.zeros(n1), np.zeros((n1, 4)), (8, 8))
    matches = matcher.match(f0, f1)
    assert matches.matches0.shape == (n0,) and matches.matches0.dtype == np.int32
    assert matches.matching_scores0.shape == (n0,) and len(matches) == 0


def test_matcher_conf_is_validated():
    with pytest.raises(ValueError, match="ratio_thresold"):
        featloc.load_matcher("nn", ratio_thresold=0.8)
    with pytest.raises(ValueError, match="unknown matcher"):
        featloc.load_matcher("nope")


@pytest.mark.parametrize("n1", [255, 256, 512])
def test_mutual_nn_agrees_with_brute_force_at_padded_sizes(n1):
    """Sizes around the row lengths that caused cache conflicts in numpy's column argmin
    (multiples of 256): the matches must be those of a plain distance matrix."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(n1)
    d0 = rng.standard_normal((300, 16)).astype(np.float32)
    d1 = rng.standard_normal((n1, 16)).astype(np.float32)
    dist = cdist(d0, d1)
    nn01, nn10 = dist.argmin(1), dist.argmin(0)
    expected = np.where(nn10[nn01] == np.arange(300), nn01, -1)
    m, s = nearest_neighbor_match(d0, d1, mutual_check=True)
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_allclose(s[m >= 0], 1 / (1 + dist[m >= 0, m[m >= 0]]), rtol=1e-4)
    m_dot, _ = nearest_neighbor_match(d0, d1, metric="dot")
    sim = d0.astype(np.float64) @ d1.T
    nn01, nn10 = sim.argmax(1), sim.argmax(0)
    np.testing.assert_array_equal(m_dot, np.where(nn10[nn01] == np.arange(300), nn01, -1))


@pytest.mark.parametrize("shape", [(1, 5), (63, 40), (64, 64), (65, 300), (300, 2048)])
def test_column_argmin_equals_numpy_with_ties(shape):
    """The blocked column argmin is numpy's, first occurrence included."""
    from featloc.matching.nn import column_argmin

    rng = np.random.default_rng(shape[0])
    cost = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(column_argmin(cost), np.argmin(cost, axis=0))
    ties = np.round(cost * 2).astype(np.float32)  # many equal values per column
    np.testing.assert_array_equal(column_argmin(ties), np.argmin(ties, axis=0))
    # every block improves every column (rows decreasing): the slowest case, still exact
    falling = -np.arange(shape[0], dtype=np.float32)[:, None] + cost * 0.1
    np.testing.assert_array_equal(column_argmin(falling), np.argmin(falling, axis=0))
    np.testing.assert_array_equal(column_argmin(np.zeros(shape, np.float32)),
                                  np.zeros(shape[1], np.intp))


def test_mutual_nn_with_a_nan_descriptor_keeps_numpy_semantics():
    rng = np.random.default_rng(0)
    d0 = rng.standard_normal((200, 8)).astype(np.float32)
    d1 = rng.standard_normal((150, 8)).astype(np.float32)
    d0[7, 2] = np.nan
    m, _ = nearest_neighbor_match(d0, d1)
    cost = np.maximum((d0 ** 2).sum(1)[:, None] + (d1 ** 2).sum(1)[None] - 2 * d0 @ d1.T, 0)
    nn01, nn10 = cost.argmin(1), cost.argmin(0)
    np.testing.assert_array_equal(m, np.where(nn10[nn01] == np.arange(200), nn01, -1))
