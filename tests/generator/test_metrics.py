import itertools

import numpy as np
import pytest

from generator.evaluation.metrics import (
    clip_score,
    frechet_distance,
    frechet_distance_from_statistics,
    gaussian_statistics,
    inception_score,
    kernel_inception_distance,
    polynomial_kernel,
    unbiased_mmd2,
)


def random_features(seed: int, rows: int = 300, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, dim))


def random_rotation(seed: int, dim: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


# ---------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------


def test_gaussian_statistics_are_mean_and_unbiased_covariance():
    features = random_features(0, rows=50, dim=4)
    mu, sigma = gaussian_statistics(features)
    np.testing.assert_allclose(mu, features.mean(axis=0))
    np.testing.assert_allclose(sigma, np.cov(features, rowvar=False))


@pytest.mark.parametrize("rows, dim", [(300, 8), (20, 64)])  # the second has a singular covariance
def test_fid_of_a_set_with_itself_is_zero(rows, dim):
    features = random_features(1, rows=rows, dim=dim) * 10.0
    assert abs(frechet_distance(features, features)) < 1e-6


def test_fid_grows_monotonically_with_a_mean_shift():
    a, b = random_features(2), random_features(3)
    distances = [frechet_distance(a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(earlier < later for earlier, later in itertools.pairwise(distances))
    # A shift s in every one of the 8 dimensions adds about 8 s² to the mean term.
    assert distances[-1] == pytest.approx(distances[0] + 8 * 2.0**2, rel=0.1)


def test_fid_matches_the_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(4)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    distance = frechet_distance_from_statistics(mu1, np.diag(var1), mu2, np.diag(var2))
    assert distance == pytest.approx(expected, rel=1e-10)


def test_fid_is_invariant_to_a_shared_rotation():
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, size=6), rng.uniform(0.1, 3.0, size=6)
    q = random_rotation(6, 6)
    rotated = frechet_distance_from_statistics(q @ mu1, q @ np.diag(var1) @ q.T, q @ mu2, q @ np.diag(var2) @ q.T)
    assert rotated == pytest.approx(frechet_distance_from_statistics(mu1, np.diag(var1), mu2, np.diag(var2)))


def test_fid_matches_eigenvalues_of_the_product_for_non_commuting_covariances():
    # sigma1 sigma2 has real non-negative eigenvalues λ, and Tr (sigma1 sigma2)^{1/2} = Σ √λ.
    a, b = random_features(7, rows=40, dim=5), random_features(8, rows=40, dim=5) * 2.0
    mu1, sigma1 = gaussian_statistics(a)
    mu2, sigma2 = gaussian_statistics(b)
    eigenvalues = np.linalg.eigvals(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2) - 2 * np.sqrt(eigenvalues).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_fid_is_symmetric():
    a, b = random_features(9), random_features(10) * 1.5 + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)


@pytest.mark.parametrize(
    "features_a, features_b",
    [
        (np.zeros(10), np.zeros((10, 3))),  # 1-D
        (np.zeros((10, 3, 1)), np.zeros((10, 3))),  # 3-D
        (np.zeros((10, 3)), np.zeros((10, 4))),  # different feature dimensions
        (np.zeros((1, 3)), np.zeros((10, 3))),  # a single row has no covariance
        (np.full((10, 3), np.nan), np.zeros((10, 3))),
    ],
)
def test_fid_rejects_bad_features(features_a, features_b):
    with pytest.raises(ValueError):
        frechet_distance(features_a, features_b)


@pytest.mark.parametrize(
    "mu1, sigma1, mu2, sigma2",
    [
        (np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)),  # different dimensions
        (np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)),  # sigma does not match mu
        (np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)),  # mu not 1-D
        (np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), np.eye(3)),  # not symmetric
    ],
)
def test_fid_from_statistics_rejects_bad_statistics(mu1, sigma1, mu2, sigma2):
    with pytest.raises(ValueError):
        frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2)


# ---------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------


def test_unbiased_mmd2_matches_its_definition_summed_pair_by_pair():
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 0.5

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m, n = len(x), len(y)
    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_y = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    between = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert unbiased_mmd2(x, y) == pytest.approx(within_x + within_y - 2 * between, rel=1e-12)
    assert polynomial_kernel(x, y)[1, 2] == pytest.approx(k(x[1], y[2]))


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    same, shifted, single_estimates = [], [], []
    for trial in range(20):
        a, b = random_features(100 + 2 * trial, rows=100), random_features(101 + 2 * trial, rows=100)
        same.append(kernel_inception_distance(a, b, subsets=10, subset_size=25, seed=trial)[0])
        shifted.append(kernel_inception_distance(a, b + 1.0, subsets=10, subset_size=25, seed=trial)[0])
        single_estimates.append(unbiased_mmd2(a[:25], b[:25]))
    assert np.mean(shifted) > 0 and min(shifted) > 0
    assert abs(np.mean(same)) < 0.05 * np.mean(shifted)
    # Unbiased: single estimates scatter around 0 on both sides.
    assert min(single_estimates) < 0 < max(single_estimates)


def test_kid_is_deterministic_given_the_seed():
    a, b = random_features(12), random_features(13) + 0.2
    first = kernel_inception_distance(a, b, subsets=5, subset_size=50, seed=3)
    assert kernel_inception_distance(a, b, subsets=5, subset_size=50, seed=3) == first
    assert kernel_inception_distance(a, b, subsets=5, subset_size=50, seed=4) != first


def test_kid_default_subset_size_uses_every_row_of_small_sets():
    a, b = random_features(14, rows=30), random_features(15, rows=40)
    mean, std = kernel_inception_distance(a, b, subsets=3)
    # subset_size = min(1000, 30, 40) = 30 takes all of `a`; the estimate still depends on which 30 rows of `b`.
    assert std > 0
    mean_full, std_full = kernel_inception_distance(a, b[:30], subsets=3)
    assert std_full == pytest.approx(0.0, abs=1e-12)
    assert mean_full == pytest.approx(unbiased_mmd2(a, b[:30]))
    assert np.isfinite(mean)


def test_kid_subset_size_larger_than_the_sets_raises_rather_than_clamping():
    a, b = random_features(16, rows=30), random_features(17, rows=40)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(a, b, subset_size=31)
    kernel_inception_distance(a, b, subset_size=30)  # the largest allowed


@pytest.mark.parametrize(
    "features_b, options",
    [
        (np.zeros((20, 4)), {}),  # different feature dimensions
        (np.zeros(20), {}),  # 1-D
        (np.zeros((20, 3)), {"subsets": 0}),
        (np.zeros((20, 3)), {"subset_size": 1}),
        (np.zeros((20, 3)), {"subsets": 2.5}),
    ],
)
def test_kid_rejects_bad_input(features_b, options):
    with pytest.raises(ValueError):
        kernel_inception_distance(np.zeros((20, 3)), features_b, **options)


# ---------------------------------------------------------------------------------------------
# Inception score
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [2, 10])
def test_is_of_confident_predictions_spread_evenly_is_the_number_of_classes(classes):
    probabilities = np.tile(np.eye(classes), (5, 1))  # each contiguous block of `classes` rows holds every class
    mean, std = inception_score(probabilities, splits=5)
    assert mean == pytest.approx(classes)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_is_of_identical_predictions_is_one():
    row = np.random.default_rng(18).dirichlet(np.ones(10))
    mean, std = inception_score(np.tile(row, (20, 1)), splits=2)
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_is_lies_between_one_and_the_number_of_classes():
    logits = np.random.default_rng(19).normal(size=(200, 10)) * 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mean, std = inception_score(probabilities, splits=4)
    assert 1.0 < mean < 10.0
    assert std >= 0.0


@pytest.mark.parametrize(
    "probabilities, splits",
    [
        (np.array([0.5, 0.5]), 1),  # 1-D
        (np.array([[1.5, -0.5], [0.5, 0.5]]), 1),  # negative entry
        (np.array([[0.6, 0.6], [0.5, 0.5]]), 1),  # row does not sum to 1
        (np.array([[0.5, 0.5], [0.5, 0.5]]), 0),
        (np.array([[0.5, 0.5], [0.5, 0.5]]), 3),  # more splits than rows
    ],
)
def test_is_rejects_bad_input(probabilities, splits):
    with pytest.raises(ValueError):
        inception_score(probabilities, splits=splits)


# ---------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------


def test_clip_score_of_identical_vectors_is_100():
    embeddings = random_features(20, rows=5, dim=16)
    assert clip_score(embeddings, embeddings) == pytest.approx(100.0)


def test_clip_score_of_orthogonal_and_opposite_vectors_is_zero():
    images = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert clip_score(images, np.array([[0.0, 3.0], [1.0, 0.0]])) == pytest.approx(0.0)
    assert clip_score(images, -images) == pytest.approx(0.0)


def test_clip_score_clips_each_pair_then_averages():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    texts = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 1.0]])  # cosines 1, -1, 1/√2
    assert clip_score(images, texts) == pytest.approx(100.0 * (1.0 + 0.0 + np.sqrt(0.5)) / 3)


def test_clip_score_is_scale_invariant():
    images, texts = random_features(21, rows=6, dim=16), random_features(22, rows=6, dim=16)
    assert clip_score(images * 7.0, texts * 0.01) == pytest.approx(clip_score(images, texts))


@pytest.mark.parametrize(
    "images, texts",
    [
        (np.ones((3, 4)), np.ones((3, 5))),  # different embedding dimensions
        (np.ones((3, 4)), np.ones((2, 4))),  # unpaired rows
        (np.ones(4), np.ones(4)),  # 1-D
        (np.array([[0.0, 0.0], [1.0, 0.0]]), np.ones((2, 2))),  # zero vector has no direction
    ],
)
def test_clip_score_rejects_bad_input(images, texts):
    with pytest.raises(ValueError):
        clip_score(images, texts)
