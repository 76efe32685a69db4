"""Metrics: bootstrap intervals, FID, KID, a perceptual distance, CLIP score and CSDR.

Every aggregate is reported as {"value", "lo", "hi", "n"}: the statistic, its
95% percentile-bootstrap interval (seeded, so reruns give the same interval)
and the number of images it rests on.
"""
from __future__ import annotations

import numpy as np

BOOT = 1000  # bootstrap resamples
Z_LEVEL = 0.95


def agg(value: float, lo: float, hi: float, n: int) -> dict:
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "n": int(n)}


def bootstrap(x, stat=np.mean, seed: int = 0, boot: int = BOOT) -> dict:
    """Statistic of a 1-D sample with its 95% percentile-bootstrap interval."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return agg(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(boot, len(x)))
    stats = np.array([stat(x[i]) for i in idx]) if stat is not np.mean else x[idx].mean(1)
    a = (1 - Z_LEVEL) / 2
    return agg(stat(x), np.quantile(stats, a), np.quantile(stats, 1 - a), len(x))


def bootstrap_paired(f, n: int, seed: int = 0, boot: int = 200) -> tuple[float, float]:
    """Interval of a statistic f(idx) of n paired items (e.g. two image sets), resampling items jointly."""
    rng = np.random.default_rng(seed)
    vals = [f(rng.integers(0, n, n)) for _ in range(boot)]
    a = (1 - Z_LEVEL) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):
    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)  (the symmetric form of the trace term)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ra = _sqrtm_psd(sa)
    cross = _sqrtm_psd(ra @ sb @ ra)
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * np.trace(cross), 0.0))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over random subsets; returns (mean, std over subsets)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def perceptual_distance(fa: list[np.ndarray], fb: list[np.ndarray]) -> np.ndarray:
    """LPIPS-style distance per image pair from multi-layer activations (Zhang et al. 2018, the
    'baseline' variant with uniform channel weights): each layer's activations are unit-normalised
    over channels at every position, then d = sum_layers mean_positions ||f_a - f_b||^2.
    fa, fb: per layer, arrays N x C x H x W."""
    total = 0.0
    for x, y in zip(fa, fb):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-10)
        y = y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-10)
        total = total + ((x - y) ** 2).sum(1).mean(axis=(1, 2))
    return np.asarray(total, dtype=np.float64)


def csdr(cs_unlearned_forget: np.ndarray, cs_original_stripped: np.ndarray) -> float:
    """CLIP-score difference rate: (CS_orig(stripped) - CS_unl(forget)) / CS_orig(stripped), both images
    scored against the stripped prompt; 0 means the unlearned images fit the stripped prompt as well as
    the original model's own images of it, positive means worse."""
    ref = float(np.mean(cs_original_stripped))
    return (ref - float(np.mean(cs_unlearned_forget))) / ref if ref > 0 else float("nan")
