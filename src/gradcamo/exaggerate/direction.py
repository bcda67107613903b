"""Directions in latent space between two groups of cells: shrinkage LDA (the paper's) or one latent feature.

The LDA follows Zaritsky et al. (2021): every latent feature is z-scored over the two groups,
then a linear discriminant with Ledoit-Wolf shrinkage of the within-group covariance is fitted
(numerically the estimator of scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr",
shrinkage="auto")``, written here in numpy so that ``exaggerate`` needs no scikit-learn). Its
cross-validated AUROC is measured on folds that keep whole wells (or plates) out.
"""

import dataclasses

import numpy as np

from gradcamo.errors import InputError

MAX_FOLDS = 10
"""Leave-one-group-out up to this many groups; grouped K-fold with this K above it."""


@dataclasses.dataclass(frozen=True)
class Discriminant:
    """A fitted two-group LDA on z-scored features.

    ``mean``, ``std`` (L,): the z-scoring; ``coef`` (L,) and ``intercept``: the decision
    function ``coef . ((z - mean) / std) + intercept`` (> 0 leans to the "high" group).
    """

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    intercept: float

    def decision(self, codes) -> np.ndarray:
        """(N,) decision values of (N, L) codes."""
        return ((codes - self.mean) / self.std) @ self.coef + self.intercept


@dataclasses.dataclass(frozen=True)
class Direction:
    """One step along a direction, in latent units, and how it was found.

    ``step`` (L,) float64: the shift of a code per step (one standard deviation of the codes
    projected on the direction); ``summary``: what ``direction.json`` records.
    """

    step: np.ndarray
    summary: dict


def zscore_parameters(codes) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0) of each feature; a constant feature gets std 1.

    Parameters
    ----------
    codes : (N, L) float ndarray

    Returns
    -------
    mean, std : (L,) float64 ndarray
    """
    codes = np.asarray(codes, dtype=np.float64)
    std = codes.std(axis=0)
    return codes.mean(axis=0), np.where(std > 0, std, 1.0)


def ledoit_wolf(x) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``x`` (centred here), and the shrinkage.

    Parameters
    ----------
    x : (N, L) float64 ndarray

    Returns
    -------
    covariance : (L, L) float64 ndarray
        ``(1 - s) * S + s * trace(S) / L * I`` with ``S`` the empirical covariance (divided by N).
    shrinkage : float
        ``s`` in [0, 1], Ledoit and Wolf's (2004) estimate.
    """
    x = x - x.mean(axis=0)
    n, p = x.shape
    empirical = x.T @ x / n
    mu = np.trace(empirical) / p
    squared = x**2
    beta = ((squared.T @ squared).sum() / n - (empirical**2).sum()) / (n * p)
    delta = ((empirical - mu * np.eye(p)) ** 2).sum() / p
    shrinkage = 0.0 if delta == 0 else float(min(beta, delta) / delta)
    return (1 - shrinkage) * empirical + shrinkage * mu * np.eye(p), shrinkage


def _group_covariance(x):
    """Ledoit-Wolf covariance of one group, shrunk on its standardised features (as scikit-learn's lsqr solver)."""
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    covariance, _ = ledoit_wolf(x / scale)
    return scale[:, None] * covariance * scale[None, :]


def fit_discriminant(codes, is_high) -> Discriminant:
    """Fit the shrinkage LDA of the "high" against the "low" codes, on z-scored features.

    Parameters
    ----------
    codes : (N, L) float ndarray
    is_high : (N,) bool ndarray

    Returns
    -------
    Discriminant

    Notes
    -----
    With ``x`` the z-scored codes, group means ``m_h``, ``m_l``, priors ``p_h``, ``p_l`` (group
    shares) and ``S = p_h S_h + p_l S_l`` the prior-weighted Ledoit-Wolf covariances:
    ``coef = S^-1 (m_h - m_l)`` and ``intercept = -coef . (m_h + m_l) / 2 + log(p_h / p_l)``.
    """
    codes = np.asarray(codes, dtype=np.float64)
    is_high = np.asarray(is_high, dtype=bool)
    mean, std = zscore_parameters(codes)
    x = (codes - mean) / std
    groups = (x[is_high], x[~is_high])
    priors = np.array([len(g) for g in groups], dtype=np.float64) / len(x)
    covariance = sum(prior * _group_covariance(g) for prior, g in zip(priors, groups))
    means = [g.mean(axis=0) for g in groups]
    coef = np.linalg.lstsq(covariance, means[0] - means[1], rcond=None)[0]
    intercept = float(-coef @ (means[0] + means[1]) / 2 + np.log(priors[0] / priors[1]))
    return Discriminant(mean, std, coef, intercept)


def auroc(scores, is_positive) -> float:
    """Area under the ROC curve (ties count one half): the Mann-Whitney U over the pair count.

    Parameters
    ----------
    scores : (N,) float ndarray
    is_positive : (N,) bool ndarray

    Returns
    -------
    float
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):  # mid-ranks of ties
        ranks[order[start:end]] = (start + end + 1) / 2
    positives, negatives = is_positive.sum(), (~is_positive).sum()
    return float((ranks[is_positive].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def group_folds(groups, max_folds=MAX_FOLDS) -> list[np.ndarray]:
    """Test-set indices of folds that keep each group whole.

    Parameters
    ----------
    groups : (N,) sequence of hashable
        The group of each cell (its well, or its plate).
    max_folds : int

    Returns
    -------
    list of (n_k,) int64 ndarray
        Leave-one-group-out (groups in sorted order) when there are at most ``max_folds``
        groups; else ``max_folds`` folds, the groups assigned to them round-robin in sorted order.
    """
    names, inverse = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    fold_of_group = np.arange(len(names)) % max_folds
    n_folds = min(len(names), max_folds)
    return [np.flatnonzero(fold_of_group[inverse] == k) for k in range(n_folds)]


def cross_validated_auroc(codes, is_high, folds) -> tuple[float | None, np.ndarray]:
    """AUROC of the out-of-fold decision values of the shrinkage LDA (z-scoring fitted within each fold).

    Parameters
    ----------
    codes : (N, L) float ndarray
    is_high : (N,) bool ndarray
    folds : list of int ndarray
        Test indices of each fold (:func:`group_folds`); the rest of the cells train it.

    Returns
    -------
    auroc : float or None
        None when some fold's training cells lack one of the groups (then no fold scheme
        that keeps groups whole can be validated: each group needs cells in two wells).
    scores : (N,) float64 ndarray
        Out-of-fold decision values (NaN where not computed).
    """
    codes = np.asarray(codes, dtype=np.float64)
    is_high = np.asarray(is_high, dtype=bool)
    scores = np.full(len(codes), np.nan)
    for test in folds:
        train = np.ones(len(codes), dtype=bool)
        train[test] = False
        if is_high[train].all() or not is_high[train].any():
            return None, scores
        scores[test] = fit_discriminant(codes[train], is_high[train]).decision(codes[test])
    return auroc(scores, is_high), scores


def fold_groups(plates, wells) -> tuple[list, str]:
    """The grouping of the folds: wells of one plate, or plates when there are several; and its name."""
    if len(set(plates)) > 1:
        return list(plates), "plate"
    return list(wells), "well"


def lda_direction(codes, is_high, plates, wells) -> Direction:
    """The LDA direction, one step = one standard deviation of the projected codes, and its validation.

    Parameters
    ----------
    codes : (N, L) float ndarray
    is_high : (N,) bool ndarray
    plates, wells : (N,) sequences of str
        The cells' ``Metadata_Plate`` and ``Metadata_Well`` (None outside plates: then
        every image is a group of its own through ``wells``).

    Returns
    -------
    Direction

    Notes
    -----
    The discriminant axis in z-scored units is ``u = coef / |coef|``; the projection
    ``p = u . (z - mean) / std`` has standard deviation ``s`` over both groups, and one
    step moves a code by ``std * u * s`` in latent units, so it moves ``p`` by ``s``.
    """
    codes = np.asarray(codes, dtype=np.float64)
    model = fit_discriminant(codes, is_high)
    unit = model.coef / np.linalg.norm(model.coef)
    projected_sd = float((((codes - model.mean) / model.std) @ unit).std())
    groups, grouped_by = fold_groups(plates, wells)
    folds = group_folds(groups)
    validated, _ = cross_validated_auroc(codes, is_high, folds)
    n_groups = len(set(map(str, groups)))
    scheme = f"leave-one-{grouped_by}-out" if len(folds) == n_groups else f"grouped {len(folds)}-fold by {grouped_by}"
    summary = {
        "method": "lda",
        "auroc": validated,
        "auroc_note": None if validated is not None else
        f"not cross-validated: a fold's training {grouped_by}s lack one group; give each group cells in "
        f"at least two {grouped_by}s",
        "in_sample_auroc": auroc(model.decision(codes), is_high),
        "folds": {"scheme": scheme, "grouped_by": grouped_by, "groups": n_groups, "folds": len(folds)},
        "zscore_mean": model.mean.tolist(),
        "zscore_std": model.std.tolist(),
        "coef_zscored": model.coef.tolist(),
        "intercept": model.intercept,
        "projected_sd": projected_sd,
    }
    return Direction(model.std * unit * projected_sd, summary)


def parse_direction(text, latent_size) -> tuple[str, int | str | None]:
    """``("lda", None)``, ``("feature", K)`` or ``("gradient", FILE)`` from ``lda`` / ``feature:K`` / ``gradient:FILE``.

    Raises
    ------
    InputError
        Anything else, or K outside ``0 .. latent_size - 1``.
    """
    if text == "lda":
        return "lda", None
    kind, _, index = text.partition(":")
    if kind == "gradient" and index:
        return "gradient", index
    if kind != "feature" or not index.strip().lstrip("-").isdigit():
        raise InputError(f"direction: expected lda, feature:K (K a latent feature index) or gradient:FILE (a graph "
                         f"from `gradcamo export-latent-shift`), got {text!r}", argument="direction")
    feature = int(index)
    if not 0 <= feature < latent_size:
        raise InputError(f"direction: feature {feature} is out of range; the latent codes have {latent_size} features "
                         f"(0 to {latent_size - 1})", argument="direction")
    return "feature", feature


def feature_direction(codes, is_high, feature) -> Direction:
    """One latent feature, one step = its standard deviation over both groups.

    Returns
    -------
    Direction
        Its summary holds the feature, its SD and the AUROC of the feature itself (no fit, so no
        cross-validation).
    """
    codes = np.asarray(codes, dtype=np.float64)
    step = np.zeros(codes.shape[1])
    sd = float(codes[:, feature].std())
    step[feature] = sd
    summary = {"method": "feature", "feature": feature, "feature_sd": sd,
               "auroc": auroc(codes[:, feature], is_high), "folds": None,
               "auroc_note": "the AUROC of the feature's own values (nothing is fitted)"}
    return Direction(step, summary)
