"""The synthetic linear-regression dataset (``data.dataset: regression``), offline.

``y = x·w* + b* + noise``: Gaussian features whose standard deviations fall
log-uniformly from 1 to ``1/sqrt(condition)``, ``w*`` and ``b*`` standard normal, and
Gaussian noise of standard deviation ``noise``; everything from the dataset's ``seed``.
Targets are float32 and the model has one output (``num_classes = 1``).
"""

from __future__ import annotations

import numpy as np

from fedsim.config.schema import RegressionDataset
from fedsim.data.arrays import ArrayDataset
from fedsim.data.datasets import DATASETS


@DATASETS.register("regression", help="synthetic linear least squares, offline")
def load_regression(cfg: RegressionDataset) -> ArrayDataset:
    """Generate ``num_samples`` examples of ``num_features`` features."""
    rng = np.random.default_rng([cfg.seed, 0x2E6])
    d = cfg.num_features
    scales = np.logspace(0.0, -0.5 * np.log10(cfg.condition), d)
    x = rng.standard_normal((cfg.num_samples, d)) * scales
    w, b = rng.standard_normal(d), rng.standard_normal()
    y = x @ w + b + cfg.noise * rng.standard_normal(cfg.num_samples)
    return ArrayDataset(x=x.astype(np.float32), y=y.astype(np.float32), num_classes=1)
