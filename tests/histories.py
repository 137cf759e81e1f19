"""Hand-built metric histories with known shapes, in MLflow's (key, step, value) form."""

from __future__ import annotations

import numpy as np
import pandas as pd


def frame(**metrics: "tuple[np.ndarray, np.ndarray]") -> pd.DataFrame:
    """history(loss=(steps, values), eval_loss=(steps, values), ...) -> DataFrame(key, step, value)."""
    rows = [
        pd.DataFrame({"key": key, "step": np.asarray(steps, dtype=int), "value": np.asarray(values, dtype=float)})
        for key, (steps, values) in metrics.items()
    ]
    return pd.concat(rows, ignore_index=True)


def decaying(n=200, start=2.0, floor=0.3, rate=5.0, noise=0.02, seed=0, tail_slope=0.0):
    """Exponential decay to ``floor`` (a plateau), with small multiplicative noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n)
    values = floor + (start - floor) * np.exp(-rate * t) - tail_slope * t
    return np.arange(1, n + 1), values * (1 + noise * rng.standard_normal(n))


def good_run(n=200, seed=0, eval_every=20, eval_offset=0.03):
    steps, loss = decaying(n, seed=seed, rate=12.0)
    eval_steps = steps[eval_every - 1 :: eval_every]
    _, smooth = decaying(n, noise=0.0, rate=12.0)
    eval_loss = smooth[eval_steps - 1] + eval_offset
    grad = 1.0 + 0.05 * np.random.default_rng(seed + 1).standard_normal(n)
    epoch = steps / n * 3
    return frame(loss=(steps, loss), eval_loss=(eval_steps, eval_loss), grad_norm=(steps, grad),
                 learning_rate=(steps, np.linspace(2e-4, 0, n)), epoch=(steps, epoch))
