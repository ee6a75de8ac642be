"""Distribution and alignment metrics for generated images: FID, KID, IS and CLIP score.

Pure functions over numpy arrays of precomputed features; extracting those features
(Inception pool features or class probabilities, CLIP embeddings) belongs to separate
modules. Everything is computed in float64, and bad input raises `ValueError` at once.

- `frechet_distance` (FID, Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update
  Rule Converge to a Local Nash Equilibrium"): the Fréchet distance between Gaussians
  fitted to two feature sets. Lower is better; 0 for identical statistics.
- `kernel_inception_distance` (KID, Bińkowski et al. 2018, "Demystifying MMD GANs"): the
  unbiased estimate of the squared maximum mean discrepancy with a cubic polynomial
  kernel, averaged over random subsets. Lower is better; unbiased, so it can be slightly
  negative when both sets come from one distribution.
- `inception_score` (IS, Salimans et al. 2016, "Improved Techniques for Training GANs"):
  exp of the mean KL divergence between each image's class distribution and the marginal
  one. Higher is better; between 1 and the number of classes.
- `clip_score` (CLIPScore, Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation
  Metric for Image Captioning"): 100 × the mean clipped cosine similarity of paired image
  and text embeddings. Higher is better; between 0 and 100.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Row sums of a probability matrix may differ from 1 by this much (float32 softmax round-off).
PROBABILITY_SUM_TOLERANCE = 1e-3
# Relative asymmetry allowed in a covariance matrix passed in by the caller.
SYMMETRY_TOLERANCE = 1e-6


def _as_matrix(array: ArrayLike, name: str, *, min_rows: int) -> np.ndarray:
    """Return `array` as a finite float64 matrix of shape (N, D) with N >= `min_rows`, or raise ValueError."""
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, num_features), got shape {matrix.shape}")
    if matrix.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {matrix.shape[0]}")
    if matrix.shape[1] < 1:
        raise ValueError(f"{name} needs at least 1 column, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def _check_same_width(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise ValueError unless matrices `a` and `b` have the same number of columns."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same feature dimension, got {a.shape[1]} and {b.shape[1]}"
        )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off negatives clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


# ---------------------------------------------------------------------------------------------
# Fréchet Inception Distance
# ---------------------------------------------------------------------------------------------


def gaussian_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set, the Gaussian that FID compares.

    Args:
        features: (N, D) array, one feature vector per image, N >= 2.

    Returns:
        `(mu, sigma)`: the (D,) mean and the (D, D) unbiased (divided by N - 1) covariance.
    """
    features = _as_matrix(features, "features", min_rows=2)
    mu = features.mean(axis=0)  # (D,)
    centred = features - mu  # (N, D)
    sigma = centred.T @ centred / (features.shape[0] - 1)  # (D, D)
    return mu, sigma


def frechet_distance_from_statistics(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

        d² = ||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})

    sigma1 sigma2 is not symmetric, but it is similar to sqrt(sigma1) sigma2 sqrt(sigma1) =
    Mᵀ M with M = sqrt(sigma2) sqrt(sigma1), so Tr (sigma1 sigma2)^{1/2} is the sum of the
    singular values of M (its nuclear norm). Singular values are accurate to round-off
    relative to the largest one, so identical statistics give 0 to about 1e-12 even for
    singular covariances (fewer samples than features), where square roots of eigenvalues
    of Mᵀ M would amplify round-off to its square root.

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) symmetric positive semi-definite covariances.

    Returns:
        The squared Fréchet distance (what is reported as FID), >= 0.
    """
    # 1. Check inputs
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    for name, mu in (("mu1", mu1), ("mu2", mu2)):
        if mu.ndim != 1 or mu.shape[0] < 1:
            raise ValueError(f"{name} must be 1-D (num_features,), got shape {mu.shape}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (dim, dim):
            raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the means, got {sigma.shape}")
        if not np.all(np.isfinite(sigma)):
            raise ValueError(f"{name} contains NaN or infinite values")
        if not np.allclose(sigma, sigma.T, rtol=SYMMETRY_TOLERANCE, atol=SYMMETRY_TOLERANCE * np.abs(sigma).max()):
            raise ValueError(f"{name} must be a symmetric covariance matrix")
    if not (np.all(np.isfinite(mu1)) and np.all(np.isfinite(mu2))):
        raise ValueError("mu1 and mu2 must be finite")

    # 2. Trace of the matrix square root, as the nuclear norm of sqrt(sigma2) sqrt(sigma1)
    sqrt1 = _psd_sqrt((sigma1 + sigma1.T) / 2)  # symmetrise away round-off only
    sqrt2 = _psd_sqrt((sigma2 + sigma2.T) / 2)
    trace_sqrt_product = np.linalg.svd(sqrt2 @ sqrt1, compute_uv=False).sum()

    # 3. Combine
    mean_term = float(np.sum((mu1 - mu2) ** 2))
    covariance_term = float(np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product)
    # The distance is a squared norm; only round-off can make it negative.
    return max(mean_term + covariance_term, 0.0)


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance (FID when the features are Inception pool features) between two feature sets.

    Args:
        features_a: (N_a, D) features of one image set, N_a >= 2.
        features_b: (N_b, D) features of the other, N_b >= 2.

    Returns:
        ||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^{1/2}) for the sets' means and
        unbiased covariances; symmetric in its arguments, 0 for identical sets.
    """
    features_a = _as_matrix(features_a, "features_a", min_rows=2)
    features_b = _as_matrix(features_b, "features_b", min_rows=2)
    _check_same_width(features_a, features_b, "features_a", "features_b")
    mu_a, sigma_a = gaussian_statistics(features_a)
    mu_b, sigma_b = gaussian_statistics(features_b)
    return frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b)


# ---------------------------------------------------------------------------------------------
# Kernel Inception Distance
# ---------------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x·y / D + 1)³ for every pair of rows: (N, D), (M, D) -> (N, M)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD² between the distributions of the rows of `x` (m, D) and `y` (n, D).

        MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)

    The diagonals k(x_i, x_i) are left out of the within-set sums, which removes the
    estimator's bias; the price is that it can be negative.
    """
    m, n = x.shape[0], y.shape[0]
    k_xx = polynomial_kernel(x, x)  # (m, m)
    k_yy = polynomial_kernel(y, y)  # (n, n)
    k_xy = polynomial_kernel(x, y)  # (m, n)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    between = k_xy.sum() / (m * n)
    return float(within_x + within_y - 2.0 * between)


def kernel_inception_distance(
    features_a: ArrayLike,
    features_b: ArrayLike,
    *,
    subsets: int = 10,
    subset_size: int | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with a cubic polynomial kernel, over random subsets.

    Each of `subsets` rounds draws `subset_size` rows from each set (without replacement
    within a round, independently across rounds) and computes `unbiased_mmd2` on them.

    Args:
        features_a: (N_a, D) features of one image set, N_a >= 2.
        features_b: (N_b, D) features of the other.
        subsets: number of random subsets, >= 1.
        subset_size: rows drawn from each set per subset; default min(1000, N_a, N_b).
            A value above min(N_a, N_b) raises ValueError (it is not clamped), so that
            a reported KID always says what it was computed on.
        seed: seed of the subset draws; equal inputs and seed give equal results.

    Returns:
        `(mean, std)` of the subset estimates (population std, ddof=0).
    """
    # 1. Check inputs
    features_a = _as_matrix(features_a, "features_a", min_rows=2)
    features_b = _as_matrix(features_b, "features_b", min_rows=2)
    _check_same_width(features_a, features_b, "features_a", "features_b")
    if isinstance(subsets, bool) or not isinstance(subsets, int | np.integer) or subsets < 1:
        raise ValueError(f"subsets must be an integer >= 1, got {subsets!r}")
    largest = min(features_a.shape[0], features_b.shape[0])
    if subset_size is None:
        subset_size = min(1000, largest)
    if isinstance(subset_size, bool) or not isinstance(subset_size, int | np.integer) or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2, got {subset_size!r}")
    if subset_size > largest:
        raise ValueError(
            f"subset_size={subset_size} exceeds the smaller set ({largest} rows); use a subset_size in [2, {largest}]"
        )

    # 2. One unbiased MMD² estimate per random subset
    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets, dtype=np.float64)
    for index in range(subsets):
        rows_a = rng.choice(features_a.shape[0], size=subset_size, replace=False)
        rows_b = rng.choice(features_b.shape[0], size=subset_size, replace=False)
        estimates[index] = unbiased_mmd2(features_a[rows_a], features_b[rows_b])
    return float(estimates.mean()), float(estimates.std())


# ---------------------------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------------------------


def inception_score(probabilities: ArrayLike, *, splits: int = 1) -> tuple[float, float]:
    """Inception Score: exp(E_x KL(p(y|x) || p(y))), with mean and std over `splits` parts.

    Within each part (contiguous rows, as `np.array_split` cuts them), p(y) is the mean
    of that part's rows; terms with p(y|x) = 0 contribute 0 (0 log 0 = 0).

    Args:
        probabilities: (N, K) class probabilities p(y|x), one row per image; rows must be
            non-negative and sum to 1 (within `PROBABILITY_SUM_TOLERANCE`).
        splits: number of parts, 1 <= splits <= N.

    Returns:
        `(mean, std)` of the per-part scores (population std, ddof=0; 0 for one part).
        Each score lies in [1, K]: 1 when every row is the same, K when predictions are
        confident (one-hot) and spread evenly over the K classes.
    """
    # 1. Check inputs
    probabilities = _as_matrix(probabilities, "probabilities", min_rows=1)
    if np.any(probabilities < 0):
        raise ValueError("probabilities must be non-negative")
    row_sums = probabilities.sum(axis=1)
    if not np.allclose(row_sums, 1.0, rtol=0.0, atol=PROBABILITY_SUM_TOLERANCE):
        worst = row_sums[np.argmax(np.abs(row_sums - 1.0))]
        raise ValueError(f"each row of probabilities must sum to 1, found a row summing to {worst:.6g}")
    if isinstance(splits, bool) or not isinstance(splits, int | np.integer) or not 1 <= splits <= len(probabilities):
        raise ValueError(f"splits must be an integer in [1, {len(probabilities)}], got {splits!r}")

    # 2. Score each part
    scores = []
    for part in np.array_split(probabilities, splits):
        marginal = part.mean(axis=0, keepdims=True)  # (1, K): p(y)
        # Where p(y|x) > 0, p(y) >= p(y|x) / n > 0 too, so both logarithms are finite.
        positive = part > 0
        log_ratio = np.log(part, where=positive, out=np.zeros_like(part)) - np.log(
            np.broadcast_to(marginal, part.shape), where=positive, out=np.zeros_like(part)
        )
        kl_divergences = (part * log_ratio).sum(axis=1)  # (n,)
        scores.append(np.exp(kl_divergences.mean()))
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std())


# ---------------------------------------------------------------------------------------------
# CLIP score
# ---------------------------------------------------------------------------------------------


def clip_score(image_embeddings: ArrayLike, text_embeddings: ArrayLike) -> float:
    """CLIP score: 100 × the mean over paired rows of max(cos(image, text), 0).

    This is CLIPScore (Hessel et al. 2021) with the weight w = 100 that torchmetrics uses,
    so values read in [0, 100]. The clipping at 0 is per pair, as in the paper; torchmetrics
    clips the mean instead, which differs only when some pairs have negative similarity.

    Args:
        image_embeddings: (N, D) image embeddings, N >= 1; no row may be all zeros.
        text_embeddings: (N, D) text embeddings; row i is the prompt of image i.

    Returns:
        The score in [0, 100]; independent of the embeddings' scale.
    """
    image_embeddings = _as_matrix(image_embeddings, "image_embeddings", min_rows=1)
    text_embeddings = _as_matrix(text_embeddings, "text_embeddings", min_rows=1)
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(
            "image_embeddings and text_embeddings must have the same shape (rows are paired), "
            f"got {image_embeddings.shape} and {text_embeddings.shape}"
        )
    image_norms = np.linalg.norm(image_embeddings, axis=1)  # (N,)
    text_norms = np.linalg.norm(text_embeddings, axis=1)  # (N,)
    if np.any(image_norms == 0) or np.any(text_norms == 0):
        raise ValueError("embeddings must be non-zero vectors; a cosine similarity needs a direction")
    cosines = (image_embeddings * text_embeddings).sum(axis=1) / (image_norms * text_norms)  # (N,)
    return float(100.0 * np.clip(cosines, 0.0, None).mean())
