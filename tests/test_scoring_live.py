"""The live warning rules (``scoring.LiveRules``): the post-run curve rules applied one log entry at a time.

Each test feeds a realistic curve (a decaying loss with multiplicative noise, an eval curve that falls and
then rises) and checks what ``LiveRules.observe`` alerts on. Tests that depend on a threshold pass explicit
``Thresholds``, so tuning the defaults does not change what they check. The advice text, the once-per-kind
policy and stalls belong to ``notify.TrainingWatch`` (``test_notify_watch.py``).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest
from histories import decaying
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import Alert, LiveRules, Thresholds
from scoring.rules import endpoints, eval_rise, is_spike, spike_mask, stability

# The spike and eval thresholds these tests reason with (the defaults at the time of writing, pinned).
SPIKES = {"spike_window": 20, "spike_zscore": 6.0, "spike_min_rise": 0.10}
EVALS = {"min_eval_points": 3, "eval_noise_multiple": 2.0, "eval_share_of_fall": 0.10, "eval_min_rise": 0.02,
         "eval_patience": 2}
T = Thresholds(**SPIKES, **EVALS, skipped_step_rate=0.01)


def kinds(alerts: list[Alert]) -> list[str]:
    return [a.kind for a in alerts]


def curve(n=300, start=2.0, floor=0.6, rate=5.0, noise=0.02, seed=0) -> list[float]:
    """A fine-tuning loss: exponential decay to a plateau with multiplicative noise."""
    return [float(v) for v in decaying(n, start=start, floor=floor, rate=rate, noise=noise, seed=seed)[1]]


def feed(rules: LiveRules, losses, first_step: int = 1, grad_norm: float = 1.0) -> list[Alert]:
    """Feed losses as Trainer log entries (one per step, with a healthy gradient norm); return the alerts."""
    alerts: list[Alert] = []
    for i, loss in enumerate(losses):
        alerts += rules.observe(first_step + i, {"loss": loss, "grad_norm": grad_norm})
    return alerts


def primed(losses, thresholds: Thresholds = T) -> LiveRules:
    """Rules that have seen ``losses`` (steps 1..n) without alerting."""
    rules = LiveRules(thresholds)
    assert feed(rules, losses) == [], "the healthy prefix itself must not alert"
    return rules


def spike_at(losses, rise: float, thresholds: Thresholds = T) -> list[str]:
    """What a fresh LiveRules says about a value ``rise`` above the last window's median, after ``losses``."""
    rules = primed(losses, thresholds)
    centre = statistics.median(losses[-thresholds.spike_window:])
    return kinds(rules.observe(len(losses) + 1, {"loss": centre + rise, "grad_norm": 1.0}))


def eval_curve(n=20, best_at=10, fall=0.8, rise_per_eval=0.03, noise=0.005, seed=0, every=50):
    """Eval losses every ``every`` steps: falling by ``fall`` to about 1.0 near evaluation ``best_at``, then
    rising by ``rise_per_eval`` per evaluation (overfitting), with multiplicative noise."""
    rng = np.random.default_rng(seed)
    i = np.arange(n)
    clean = 1.0 + fall * np.exp(-i / 2.5) + rise_per_eval * np.maximum(i - best_at, 0)
    values = clean * (1 + noise * rng.standard_normal(n))
    return [(int(every * (k + 1)), float(v)) for k, v in enumerate(values)]


def feed_evals(rules: LiveRules, evals) -> list[Alert]:
    return [a for step, value in evals for a in rules.observe(step, {"eval_loss": value})]


# --- loss spikes -----------------------------------------------------------------------------------------


def test_a_clear_spike_is_alerted_at_its_step_and_nowhere_else():
    losses = curve(300, noise=0.02, seed=3)
    losses[149] = 2.5  # step 150: the loss jumps from about 0.6 back above its starting level
    alerts = feed(LiveRules(T), losses)
    assert [(a.kind, a.step) for a in alerts] == [("loss_spike", 150)]
    assert alerts[0].lead.startswith("Loss spiked to 2.5 at step 150, far above the median of the previous 20")


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("noise", ["gaussian 10%", "uniform 30%"])
def test_ordinary_noise_is_no_spike(noise, seed):
    clean = np.array(curve(500, noise=0.0))
    rng = np.random.default_rng(seed)
    factor = 1 + (0.10 * rng.standard_normal(500) if noise.startswith("gaussian") else rng.uniform(-0.3, 0.3, 500))
    assert feed(LiveRules(T), [float(v) for v in clean * factor]) == []


def test_a_rise_within_the_curve_noise_is_no_spike_even_above_the_floor():
    # 15% multiplicative noise: on the plateau (about 0.6) one noise standard deviation is about 0.09.
    losses = curve(250, noise=0.15, seed=5)
    sd = 0.15 * curve(250, noise=0.0)[-1]
    floor = 0.10 * losses[0]
    assert 3 * sd > floor  # so the floor alone would let this rise through
    assert spike_at(losses, 3 * sd) == []  # three standard deviations: wobble, not a spike
    assert spike_at(losses, 12 * sd) == ["loss_spike"]


@pytest.mark.parametrize("start", [2.0, 20.0])
@pytest.mark.parametrize("min_rise", [0.05, 0.10, 0.20])
def test_a_rise_beyond_the_noise_is_no_spike_below_the_floor_a_share_of_the_initial_loss(start, min_rise):
    thresholds = Thresholds(**{**SPIKES, "spike_min_rise": min_rise})
    losses = curve(200, start=start, floor=0.3 * start, noise=0.01, seed=1)  # a smooth run: 1% noise
    floor = min_rise * losses[0]
    sd = 0.01 * 0.3 * start
    assert 0.8 * floor > 10 * sd  # both rises below are far beyond the noise: the floor decides
    assert spike_at(losses, 0.8 * floor, thresholds) == []
    assert spike_at(losses, 1.25 * floor, thresholds) == ["loss_spike"]


def test_noise_on_a_loss_near_zero_never_spikes():
    # A run that memorises its data: the loss decays from 2.0 to about 0.002, where batch-to-batch noise
    # doubles or halves it (log-normal, sigma 0.6). Relative to 0.002 those are huge jumps; relative to
    # where the loss started they are nothing.
    # (Relative noise grows as the loss nears zero: 2% while the loss is above 0.01, sigma 0.6 below.)
    rng = np.random.default_rng(11)
    clean = np.array(curve(1000, start=2.0, floor=0.002, rate=12.0, noise=0.0))
    sigma = np.where(clean > 0.01, 0.02, 0.6)
    losses = [float(v) for v in clean * np.exp(sigma * rng.standard_normal(1000))]
    losses[900] = 10 * losses[899]  # and one tenfold jump near zero
    assert feed(LiveRules(T), losses) == []
    # The floor is what keeps it quiet: with a floor of a millionth of the start, the same noise spikes.
    assert "loss_spike" in kinds(feed(LiveRules(Thresholds(**{**SPIKES, "spike_min_rise": 1e-6})), losses))


def test_no_spike_before_the_window_is_full():
    losses = curve(19, seed=2)
    rules = primed(losses, Thresholds(**{**SPIKES, "spike_window": 20}))
    assert rules.observe(20, {"loss": 100.0, "grad_norm": 1.0}) == []
    # One more healthy point fills the window; the same jump is then a spike.
    rules = primed(curve(20, seed=2), Thresholds(**{**SPIKES, "spike_window": 20}))
    assert kinds(rules.observe(21, {"loss": 100.0, "grad_norm": 1.0})) == ["loss_spike"]
    # And with a window of 10, 19 points are plenty.
    rules = primed(losses, Thresholds(**{**SPIKES, "spike_window": 10}))
    assert kinds(rules.observe(20, {"loss": 100.0, "grad_norm": 1.0})) == ["loss_spike"]


def test_the_spike_window_is_a_trailing_window():
    # A loss stuck on a plateau near 4.0 for 40 logs that then drops to about 1.0 (a second learning phase).
    rng = np.random.default_rng(4)
    i = np.arange(60)
    losses = [float(v) for v in (1.0 + 3.0 / (1 + np.exp((i - 40) / 1.5))) * (1 + 0.02 * rng.standard_normal(60))]
    # With a 5-point window the plateau has left it: 2.0 is twice the recent loss, a spike.
    rules = primed(losses, Thresholds(**{**SPIKES, "spike_window": 5}))
    assert kinds(rules.observe(61, {"loss": 2.0, "grad_norm": 1.0})) == ["loss_spike"]
    # A 45-point window still holds mostly plateau values, whose median is near 4.0: 2.0 is below it.
    rules = primed(losses, Thresholds(**{**SPIKES, "spike_window": 45}))
    assert rules.observe(61, {"loss": 2.0, "grad_norm": 1.0}) == []


def test_broken_entries_do_not_enter_the_spike_window():
    thresholds = Thresholds(**{**SPIKES, "spike_window": 5})
    losses = curve(100, seed=6)  # ends on its plateau, about 0.6; the spike floor is about 0.2
    rules = primed(losses, thresholds)
    # Five breakdowns (0.0 beside a NaN gradient norm): each warns; had they entered the window, its median
    # would be 0.0 and the next healthy 0.6 would look like a spike.
    for step in range(101, 106):
        assert kinds(rules.observe(step, {"loss": 0.0, "grad_norm": math.nan})) == ["nonfinite"]
    assert rules.observe(106, {"loss": losses[-1], "grad_norm": 1.0}) == []
    # Five NaN losses: each warns; had they entered the window, it would have no median and miss this spike.
    for step in range(107, 112):
        assert kinds(rules.observe(step, {"loss": math.nan, "grad_norm": math.inf})) == ["nonfinite"]
    assert kinds(rules.observe(112, {"loss": 2.5, "grad_norm": 1.0})) == ["loss_spike"]


# --- non-finite values -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("grad_norm", [None, 1.0, math.nan])
def test_a_non_finite_loss_warns_at_once(bad, grad_norm):
    rules = primed(curve(50, seed=7))
    entry = {"loss": bad} if grad_norm is None else {"loss": bad, "grad_norm": grad_norm}
    alerts = rules.observe(51, entry)
    assert [(a.kind, a.step) for a in alerts] == [("nonfinite", 51)]
    shown = {math.inf: "inf", -math.inf: "-inf"}.get(bad, "NaN")
    assert alerts[0].lead.startswith(f"Loss is {shown} at step 51")
    # The very first log entry counts too: no history is needed.
    assert kinds(LiveRules(T).observe(1, entry)) == ["nonfinite"]


@pytest.mark.parametrize("grad_norm", [math.nan, math.inf])
def test_a_zero_loss_beside_a_non_finite_gradient_norm_is_a_breakdown_at_once(grad_norm):
    rules = primed(curve(50, seed=8))
    alerts = rules.observe(51, {"loss": 0.0, "grad_norm": grad_norm})
    assert [(a.kind, a.step) for a in alerts] == [("nonfinite", 51)]
    if math.isnan(grad_norm):
        assert "numerical breakdown, not a perfect fit" in alerts[0].lead


def test_a_loss_that_really_reaches_zero_is_no_warning():
    # Memorising a tiny data set: the loss decays to exactly 0.0 and stays there, gradient norms finite.
    losses = curve(120, start=2.0, floor=0.0, rate=10.0, noise=0.02, seed=9)[:100] + [0.0] * 40
    grads = [1.0] * 100 + [1e-6] * 40
    rules = LiveRules(T)
    alerts = [a for step, (loss, g) in enumerate(zip(losses, grads), 1)
              for a in rules.observe(step, {"loss": loss, "grad_norm": g})]
    assert alerts == []


def test_a_lone_non_finite_gradient_norm_is_a_skipped_step_and_a_second_one_warns():
    # fp16 loss scaling: an overflowing step is skipped (inf gradient norm) while the loss stays finite.
    losses = curve(100, seed=10)
    rules = LiveRules(T)
    alerts = []
    for step, loss in enumerate(losses, 1):
        grad = math.inf if step in (40, 80) else 1.0
        alerts += rules.observe(step, {"loss": loss, "grad_norm": grad})
    assert [(a.kind, a.step) for a in alerts] == [("nonfinite", 80)]  # not at 40: one alone is harmless
    assert "2 non-finite gradient norms so far" in alerts[0].lead


@pytest.mark.parametrize(("rate", "warned_at"), [(0.01, 450), (0.02, None)])
def test_skipped_steps_warn_beyond_their_allowed_rate(rate, warned_at):
    # 500 logs with a skipped step every 100: 1% of the logged points, then a fifth one early at 450.
    losses = curve(500, seed=12)
    rules = LiveRules(Thresholds(**SPIKES, **EVALS, skipped_step_rate=rate))
    alerts = []
    for step, loss in enumerate(losses, 1):
        grad = math.nan if step in (100, 200, 300, 400, 450) else 1.0
        alerts += rules.observe(step, {"loss": loss, "grad_norm": grad})
    # At step 400, 4 of 400 points (1%) are allowed; at 450, 5 of 450 are more than 1% (4), not more than 2% (9).
    assert [(a.kind, a.step) for a in alerts] == ([("nonfinite", warned_at)] if warned_at else [])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_eval_loss_warns_at_once_and_stays_out_of_the_eval_history(bad):
    evals = eval_curve(20, best_at=10, rise_per_eval=0.05, noise=0.0)
    rules = LiveRules(T)
    assert feed_evals(rules, evals[:5]) == []
    alerts = rules.observe(260, {"eval_loss": bad})
    assert [(a.kind, a.step) for a in alerts] == [("nonfinite", 260)]
    assert alerts[0].lead == f"Eval loss is {'NaN' if math.isnan(bad) else 'inf'} at step 260."
    rising = [a for a in feed_evals(rules, evals[5:]) if a.kind == "eval_rising"]
    assert rising, "the overfitting after the NaN is still seen"
    best_step = min(evals, key=lambda e: e[1])[0]
    assert f"The best checkpoint is the one from step {best_step}." in rising[0].lead


# --- rising eval loss -------------------------------------------------------------------------------------


def test_a_durable_eval_rise_alerts_only_after_patience_evaluations_above_the_best():
    evals = eval_curve(20, best_at=10, fall=0.8, rise_per_eval=0.05, noise=0.003, seed=1)
    best = min(range(len(evals)), key=lambda k: evals[k][1])
    first = {}
    for patience in (2, 3):
        rules = LiveRules(Thresholds(**{**EVALS, "eval_patience": patience}))
        alerted = [k for k, (step, value) in enumerate(evals) if rules.observe(step, {"eval_loss": value})]
        assert alerted, "a steady 5%-per-evaluation rise is overfitting"
        assert alerted[0] > best + patience - 1  # never while falling, and only after `patience` evals above
        first[patience] = alerted[0]
        rules = LiveRules(Thresholds(**{**EVALS, "eval_patience": patience}))
        lead = feed_evals(rules, evals[: alerted[0] + 1])[-1].lead
        assert f"its best of {evals[best][1]:.4g} at step {evals[best][0]}" in lead
        assert f"for {patience} evaluations in a row" in lead
    assert first[3] == first[2] + 1  # one more evaluation of patience: alerted one evaluation later


@pytest.mark.parametrize("seed", range(10))
def test_a_falling_eval_loss_with_noise_on_its_plateau_is_no_rise(seed):
    evals = eval_curve(25, best_at=25, fall=0.8, rise_per_eval=0.0, noise=0.01, seed=seed)
    assert feed_evals(LiveRules(T), evals) == []


def test_a_single_bad_evaluation_is_not_a_durable_rise():
    evals = eval_curve(20, best_at=20, fall=0.8, rise_per_eval=0.0, noise=0.003, seed=2)
    evals[12] = (evals[12][0], evals[12][1] * 1.25)  # one evaluation 25% worse, then back on the plateau
    assert feed_evals(LiveRules(T), evals) == []
    # With a patience of one evaluation, that same bad evaluation is the alert.
    alerts = feed_evals(LiveRules(Thresholds(**{**EVALS, "eval_patience": 1})), evals)
    assert [(a.kind, a.step) for a in alerts] == [("eval_rising", evals[12][0])]


@pytest.mark.parametrize("min_rise", [0.02, 0.10])
def test_a_rise_must_exceed_a_share_of_the_best_eval_loss(min_rise):
    # A slowly falling eval loss (1.03 -> 1.00: little fall, no noise), then two evaluations above its best.
    thresholds = Thresholds(**{**EVALS, "eval_min_rise": min_rise})
    falling = [(100, 1.03), (200, 1.02), (300, 1.01), (400, 1.00)]
    below = falling + [(500, 1.0 + 0.9 * min_rise), (600, 1.0 + 0.9 * min_rise)]
    above = falling + [(500, 1.0 + 1.1 * min_rise), (600, 1.0 + 1.1 * min_rise)]
    assert feed_evals(LiveRules(thresholds), below) == []
    assert [(a.kind, a.step) for a in feed_evals(LiveRules(thresholds), above)] == [("eval_rising", 600)]


@pytest.mark.parametrize("share", [0.10, 0.25])
def test_a_rise_must_exceed_a_share_of_how_far_the_eval_loss_fell(share):
    # The eval loss fell from 2.0 to 1.0; a rise back up must exceed `share` of that fall (0.1 or 0.25).
    thresholds = Thresholds(**{**EVALS, "eval_share_of_fall": share})
    falling = [(100 * (k + 1), 1.0 + 1.0 * math.exp(-k)) for k in range(8)] + [(900, 1.0)]
    low = falling + [(1000, 1.0 + 0.8 * share), (1100, 1.0 + 0.8 * share)]
    high = falling + [(1000, 1.0 + 1.2 * share), (1100, 1.0 + 1.2 * share)]
    assert feed_evals(LiveRules(thresholds), low) == []
    assert [(a.kind, a.step) for a in feed_evals(LiveRules(thresholds), high)] == [("eval_rising", 1100)]


# --- live and post-run agree --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_live_spike_alerts_agree_with_the_post_run_analysis(seed):
    rng = np.random.default_rng(100 + seed)
    n = 300
    losses = curve(n, noise=0.03, seed=seed)
    spike_steps = sorted(rng.choice(np.arange(60, n), size=3, replace=False).tolist())
    for step in spike_steps:
        losses[step - 1] += float(rng.uniform(0.5, 2.0))  # 2.5 to 10 times the floor (0.1 x the start, 2.0)
    grads = [float(g) for g in 1.0 + 0.05 * rng.standard_normal(n)]
    rules = LiveRules(T)
    live = [a.step for step, (loss, g) in enumerate(zip(losses, grads), 1)
            for a in rules.observe(step, {"loss": loss, "grad_norm": g}) if a.kind == "loss_spike"]
    index = pd.Index(range(1, n + 1))
    loss, grad = pd.Series(losses, index=index), pd.Series(grads, index=index)
    post = stability(loss, grad, endpoints(loss, T), T).loss_spike_steps
    assert live, "the inserted spikes are alerted live"
    assert live[0] in post
    assert live[0] == spike_steps[0]
    assert set(live) == set(post)  # a clean curve (finite, no spike in warm-up): the same spikes


@pytest.mark.parametrize("seed", range(6))
def test_live_and_post_run_agree_on_spikes_in_warm_up_and_beside_a_skipped_step(seed):
    """Spikes in the warm-up are ignored by both; a spike logged with a lone non-finite gradient norm (a
    step fp16 loss scaling skipped) is read by both."""
    rng = np.random.default_rng(200 + seed)
    n = 300
    losses = curve(n, noise=0.03, seed=seed)
    warm_up_spike, skipped_spike, later_spike = int(rng.integers(21, 31)), int(rng.integers(60, 150)), 200
    for step in (warm_up_spike, skipped_spike, later_spike):
        losses[step - 1] += 3.0
    grads = [math.inf if step == skipped_spike else 1.0 for step in range(1, n + 1)]
    rules = LiveRules(T, total_steps=n)
    live = [(a.kind, a.step) for step, (loss, g) in enumerate(zip(losses, grads), 1)
            for a in rules.observe(step, {"loss": loss, "grad_norm": g})]
    index = pd.Index(range(1, n + 1))
    loss, grad = pd.Series(losses, index=index), pd.Series(grads, index=index)
    post = stability(loss, grad, endpoints(loss, T), T).loss_spike_steps
    assert live == [("loss_spike", skipped_spike), ("loss_spike", later_spike)]
    assert list(post) == [skipped_spike, later_spike]
@pytest.mark.parametrize("seed", range(6))
def test_the_live_eval_alert_fires_exactly_when_eval_rise_says_rising(seed):
    evals = eval_curve(30, best_at=12, fall=0.8, rise_per_eval=0.02, noise=0.01, seed=seed)
    rules = LiveRules(T)
    verdicts = []
    for k, (step, value) in enumerate(evals):
        alerted = "eval_rising" in kinds(rules.observe(step, {"eval_loss": value}))
        so_far = np.array([v for _, v in evals[: k + 1]])
        rising = k + 1 >= T.min_eval_points and eval_rise(so_far, T).rising
        assert alerted == rising, f"evaluation {k} (step {step})"
        verdicts.append(rising)
    assert any(verdicts) and not all(verdicts)  # the curve both falls (no alert) and overfits (alerts)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6), min_size=21, max_size=21), st.floats(0.5, 10.0), st.floats(0.0, 5.0))
def test_the_live_spike_test_is_the_post_run_one_on_the_last_point(values, zscore, min_rise):
    """``is_spike`` (numpy, per logged loss) answers exactly what ``spike_mask`` (pandas) says of the last point."""
    window = len(values) - 1
    assert is_spike(np.array(values[:-1]), values[-1], zscore, min_rise) == bool(
        spike_mask(np.array(values), window, zscore, min_rise)[-1])


@pytest.mark.parametrize("level", [-8.98846567431158e307, 8.98846567431158e307, -1.7e308])
def test_a_flat_curve_at_the_edge_of_the_float_range_has_no_spike(level):
    """The median of an even window sums two points: near +-9e307 that overflowed (found by hypothesis)."""
    flat = np.full(21, level)
    assert not spike_mask(flat, 20, 3.5, 0.0).any()
    assert not is_spike(flat[:-1], level, 3.5, 0.0)
