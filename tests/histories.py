"""Hand-built metric histories with known shapes, in MLflow's (key, step, value) form."""

from __future__ import annotations

import numpy as np
import pandas as pd


def frame(**metrics: tuple[np.ndarray, np.ndarray]) -> pd.DataFrame:
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


# --- shapes for the diagnostic rules (each returns steps 1..n and values) ----------------------------


def still_falling(n=200, start=2.0, scale=150.0):
    """A loss still clearly falling at the last step: exp(-step/scale) with scale close to the run's length."""
    steps = np.arange(1, n + 1)
    return steps, start * np.exp(-steps / scale)


def rising_tail(n=200, from_step=150, slope=0.004, seed=0):
    """A decay to a plateau that turns upward from ``from_step`` on."""
    steps, values = decaying(n, noise=0.01, seed=seed)
    return steps, values + np.where(steps > from_step, (steps - from_step) * slope, 0.0)


def flat(n=200, level=2.0, noise=0.01, seed=0):
    """A loss that never moves from its start (the model is not fitting)."""
    rng = np.random.default_rng(seed)
    return np.arange(1, n + 1), level + noise * rng.standard_normal(n)


def steady_grad(n=200, level=1.0, noise=0.05, seed=1):
    """Gradient norms around ``level`` with small noise, no spikes."""
    rng = np.random.default_rng(seed)
    return np.arange(1, n + 1), level + noise * rng.standard_normal(n)


def with_values(series, at_steps, value):
    """A copy of (steps, values) with ``value`` at the given steps (e.g. NaN, 0.0 or a spike)."""
    steps, values = series
    values = np.array(values, dtype=float)
    for step in at_steps:
        values[np.flatnonzero(steps == step)] = value
    return steps, values


def evals_of(series, every=20, scale=1.0, offset=0.0):
    """An eval curve sampled every ``every`` steps from a (smooth) train curve: scale * train + offset."""
    steps, values = series
    picked = steps[every - 1 :: every]
    return picked, values[every - 1 :: every] * scale + offset
