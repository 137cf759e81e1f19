"""The loss-curve figure on long histories: the envelope decimation and the 100,000-step figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from histories import frame
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scoring import analyze_history
from scoring.plot import MAX_PLOTTED_POINTS, envelope, loss_curve_figure

EXAMPLES = settings(max_examples=150, deadline=None)

finite_values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
any_values = st.one_of(finite_values, st.just(np.nan), st.just(np.inf), st.just(-np.inf))


def series(values=finite_values, max_size=3000):
    return hnp.arrays(np.float64, st.integers(0, max_size), elements=values)


@EXAMPLES
@given(y=series(any_values), max_points=st.integers(3, 400), first_step=st.integers(-5, 5))
def test_the_envelope_is_bounded_and_keeps_order_and_extremes(y, max_points, first_step):
    x = np.arange(first_step, first_step + len(y))
    xs, ys = envelope(x, y, max_points)
    assert len(xs) == len(ys) == len(y) if len(y) <= max_points else len(xs) == len(ys) <= max_points
    assert np.all(np.diff(xs) > 0)  # sorted, no point twice
    kept = np.searchsorted(x, xs)
    np.testing.assert_array_equal(ys, y[kept])  # every kept point is a real (x, y) pair
    finite = np.isfinite(y)
    if finite.any():
        assert np.nanmin(ys[np.isfinite(ys)]) == y[finite].min()
        assert np.nanmax(ys[np.isfinite(ys)]) == y[finite].max()
    # a gap in the line (a non-finite value) stays a gap
    assert (~np.isfinite(ys)).any() == (~finite).any()


@EXAMPLES
@given(y=series(any_values, max_size=MAX_PLOTTED_POINTS), data=st.data())
def test_a_short_series_is_returned_unchanged(y, data):
    max_points = data.draw(st.integers(max(3, len(y)), MAX_PLOTTED_POINTS))
    x = np.arange(len(y)) * 10
    xs, ys = envelope(x, y, max_points)
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


@EXAMPLES
@given(y=series(max_size=20_000), spike_at=st.floats(0, 1), max_points=st.integers(3, 2500))
def test_an_isolated_spike_survives_decimation(y, spike_at, max_points):
    if not len(y):
        return
    y = y.copy()
    at = min(int(spike_at * len(y)), len(y) - 1)
    y[at] = 1e7  # above every other value
    xs, ys = envelope(np.arange(len(y)), y, max_points)
    assert at in xs.tolist() and ys[xs.tolist().index(at)] == 1e7


def test_too_few_points_is_an_error():
    with pytest.raises(ValueError, match="at least 3"):
        envelope(np.arange(10), np.arange(10.0), 2)


def _long_run(n=100_000, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    t = steps / n
    smooth = 0.35 + 1.8 * np.exp(-8.0 * t)
    loss = smooth * (1 + 0.03 * rng.standard_normal(n))
    grad = (0.6 + 0.8 * np.exp(-4.0 * t)) * (1 + 0.05 * rng.standard_normal(n))
    spikes = np.array([12_001, 40_001, 66_001, 84_001])
    loss[spikes - 1] *= 4.0
    grad[spikes + 2] *= 6.0
    eval_steps = steps[99::100]
    return frame(loss=(steps, loss), grad_norm=(steps, grad), learning_rate=(steps, np.linspace(2e-4, 0, n)),
                 eval_loss=(eval_steps, smooth[eval_steps - 1] + 0.05)), spikes


def test_the_figure_of_a_100k_step_run_renders_with_its_events_at_true_steps():
    history, spikes = _long_run()
    analysis = analyze_history(history)
    assert analysis.events["loss_spike_steps"] == spikes.tolist()
    assert analysis.events["grad_norm_spike_steps"] == (spikes + 3).tolist()
    figure = loss_curve_figure(analysis)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG\r\n\x1a\n")
    loss_ax, grad_ax = figure.axes
    loss_lines = {line.get_label(): line for line in loss_ax.get_lines()}
    grad_lines = {line.get_label(): line for line in grad_ax.get_lines()}
    # every curve is decimated, and keeps the true extremes
    for line in [*loss_ax.get_lines(), *grad_ax.get_lines()]:
        assert len(line.get_xdata()) <= MAX_PLOTTED_POINTS
    loss = history[history.key == "loss"].set_index("step")["value"]
    grad = history[history.key == "grad_norm"].set_index("step")["value"]
    assert max(loss_lines["train loss"].get_ydata()) == loss.max()
    assert min(loss_lines["train loss"].get_ydata()) == loss.min()
    # the marked events sit at their true steps and values, from the full series
    marked = loss_lines["loss spike"]
    np.testing.assert_array_equal(marked.get_xdata(), spikes)
    np.testing.assert_array_equal(marked.get_ydata(), loss.loc[spikes].to_numpy())
    gmarked = grad_lines["spike"]
    np.testing.assert_array_equal(gmarked.get_xdata(), spikes + 3)
    np.testing.assert_array_equal(gmarked.get_ydata(), grad.loc[spikes + 3].to_numpy())
    best = analysis.events["best_eval_step"]
    star = loss_lines[f"best eval (step {best})"]
    assert list(star.get_xdata()) == [best]
    if analysis.events.get("plateau_start_step") is not None:
        step = analysis.events["plateau_start_step"]
        assert any(list(line.get_xdata()) == [step, step] for line in grad_ax.get_lines())
