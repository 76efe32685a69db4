"""Metrics through the field's libraries: bootstrap intervals (scipy.stats.bootstrap), FID and KID (torchmetrics),
and CSDR (the IGMU paper's per-pair definition).

Every aggregate is reported as {"value", "lo", "hi", "n"}: the statistic, its 95% percentile-bootstrap interval
(seeded, so reruns give the same interval) and the number of images it rests on. With one image the interval is
degenerate (lo = hi = value).

FID and KID: the feature network (a registry entry: Inception, a local CLIP, the mini CLIP) runs once over the
images; torchmetrics' FrechetInceptionDistance and KernelInceptionDistance then compute the statistic from those
features, handed to them through an identity `feature=` module, so that each bootstrap resample re-runs the
library's statistic on resampled features instead of re-running the network.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

BOOT = 1000  # bootstrap resamples of a mean
BOOT_PAIRED = 200  # resamples of a statistic over paired sets (FID, KID, CSDR): each resample recomputes it
BOOT_PAIRED_WIDE = 50  # ... when features are wider than 512 (Inception: one 2048 x 2048 eigendecomposition each)
LEVEL = 0.95
KID_SUBSETS, KID_SUBSET_SIZE = 50, 100  # torch-fidelity / torchmetrics default to 100 subsets of 1000: too many
# images for evaluation sets of tens to hundreds; subsets are capped at the set size


def agg(value: float, lo: float, hi: float, n: int) -> dict:
    return {"value": float(value), "lo": float(lo), "hi": float(hi), "n": int(n)}


def wilson(successes) -> dict:
    """Share of successes with its 95% Wilson score interval (scipy's binomtest), for rates such as an
    attack's success rate, where a bootstrap interval collapses to a point at 0% or 100%."""
    from scipy.stats import binomtest

    x = np.asarray(successes, dtype=bool)
    if len(x) == 0:
        return agg(float("nan"), float("nan"), float("nan"), 0)
    ci = binomtest(int(x.sum()), len(x)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return agg(x.mean(), ci.low, ci.high, len(x))


def _interval(data, stat, vectorized: bool, resamples: int, seed: int) -> tuple[float, float]:
    from scipy.stats import bootstrap as sp_bootstrap

    r = sp_bootstrap((data,), stat, n_resamples=resamples, confidence_level=LEVEL, method="percentile",
                     vectorized=vectorized, random_state=np.random.default_rng(seed))
    return float(r.confidence_interval.low), float(r.confidence_interval.high)


def bootstrap(x, seed: int = 0, boot: int = BOOT) -> dict:
    """Mean of a 1-D sample with its 95% percentile-bootstrap interval (scipy.stats.bootstrap)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return agg(float("nan"), float("nan"), float("nan"), 0)
    v = float(x.mean())
    if len(x) == 1 or np.all(x == x[0]):
        return agg(v, v, v, len(x))
    lo, hi = _interval(x, np.mean, True, boot, seed)
    return agg(v, lo, hi, len(x))


def bootstrap_paired(f, n: int, seed: int = 0, boot: int = BOOT_PAIRED) -> tuple[float, float]:
    """Interval of a statistic f(idx) of n paired items (e.g. two image sets), resampling items jointly."""
    if n < 2:
        v = float(f(np.arange(n)))
        return v, v
    return _interval(np.arange(n), lambda i: float(f(np.asarray(i, dtype=int))), False, boot, seed)


class _Given(torch.nn.Module):
    """Identity `feature=` network for torchmetrics: the features were already extracted."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


_METRICS: dict[tuple, object] = {}


def _metric(kind: str, dim: int, **kw):
    """One torchmetrics metric object per (kind, width, options), reset before each use: a bootstrap recomputes
    the statistic hundreds of times and building the object costs more than computing it."""
    key = (kind, dim, tuple(sorted(kw.items())))
    if key not in _METRICS:
        if kind == "fid":
            from torchmetrics.image.fid import FrechetInceptionDistance as Cls
        else:
            from torchmetrics.image.kid import KernelInceptionDistance as Cls
        with warnings.catch_warnings():
            # KID warns that it buffers every feature; igmu's sets are a few hundred features wide
            warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
            _METRICS[key] = Cls(feature=_Given(dim), **kw)
    m = _METRICS[key]
    m.reset()
    return m


def fid(a, b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017), torchmetrics."""
    a, b = _t(a), _t(b)
    m = _metric("fid", a.shape[1])
    m.update(b, real=True)
    m.update(a, real=False)
    return float(max(m.compute().item(), 0.0))


def kid(a, b, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018), torchmetrics: unbiased MMD^2 with the cubic polynomial
    kernel (x.y / d + 1)^3 over random subsets (capped at the set sizes); returns (mean, std over subsets).
    The subsets are drawn from torch's generator, seeded here (and restored), so the value is reproducible."""
    a, b = _t(a), _t(b)
    m_size = min(subset_size, len(a), len(b))
    if m_size < 2:
        return float("nan"), float("nan")
    if m_size == len(a) == len(b):
        subsets = 1  # every subset is the whole of both sets (in another order): the same value each time
    m = _metric("kid", a.shape[1], subsets=subsets, subset_size=m_size)
    m.update(b, real=True)
    m.update(a, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), float(std)


def fid_kid(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """FID and KID of two paired feature sets, each with a paired-bootstrap interval; KID's spread over subsets."""
    n = min(len(a), len(b))
    if n < 2:  # a Gaussian (FID) and an unbiased MMD (KID) need two samples per set: no value, said so
        nan = float("nan")
        return {"fid": agg(nan, nan, nan, n), "kid": agg(nan, nan, nan, n), "kid_std": nan, "bootstrap_resamples": 0,
                "skipped": f"FID/KID need at least 2 images per set (got {n})"}
    boot = BOOT_PAIRED if a.shape[1] <= 512 else BOOT_PAIRED_WIDE
    lo, hi = bootstrap_paired(lambda j: fid(a[j], b[j]), n, seed, boot)
    k, ks = kid(a, b, seed=seed)
    klo, khi = bootstrap_paired(lambda j: kid(a[j], b[j], subsets=10, seed=seed)[0], n, seed, boot)
    return {"fid": agg(fid(a, b), lo, hi, n), "kid": agg(k, klo, khi, n), "kid_std": ks, "bootstrap_resamples": boot}


def csdr_pairs(cs_unlearned_forget, cs_original_stripped) -> np.ndarray:
    """CLIP-score difference rate per image pair, in percent, as IGMU's code computes it (benchmark.py,
    evaluate_CSDR): |CS_orig - CS_unl| / CS_orig * 100, where CS_unl scores the unlearned model's image of a
    forget prompt and CS_orig the original model's image of the stripped prompt (same seed), both against the
    stripped prompt. Pairs whose reference score is 0 (CLIP score is clamped at 0) have no rate: NaN."""
    u = np.asarray(cs_unlearned_forget, dtype=np.float64)
    o = np.asarray(cs_original_stripped, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(o > 0, np.abs(o - u) / o * 100, np.nan)


def csdr(cs_unlearned_forget, cs_original_stripped, seed: int = 0) -> dict:
    """CSDR: the mean of the per-pair rates over images (pairs without a rate left out), with its interval."""
    r = csdr_pairs(cs_unlearned_forget, cs_original_stripped)
    out = bootstrap(r[~np.isnan(r)], seed)
    out["pairs_without_rate"] = int(np.isnan(r).sum())
    return out
