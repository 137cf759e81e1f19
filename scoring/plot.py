"""The loss-curve figure (``quality/loss_curve.png``): train and eval loss, gradient norm, events marked.

Uses matplotlib's object API (``Figure``), not pyplot, so no global state and no GUI backend is touched:
safe from a background thread and on a headless server.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from .models import QualityAnalysis


def loss_curve_figure(analysis: QualityAnalysis) -> Figure:
    curves = analysis.curves
    if curves is None or curves.train_loss is None:
        raise ValueError("this analysis has no loss history to plot (it was made from scalars only)")
    has_grad = curves.grad_norm is not None and len(curves.grad_norm) > 0
    fig = Figure(figsize=(9, 6 if has_grad else 4.2), layout="constrained")
    axes = fig.subplots(2 if has_grad else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    loss = curves.train_loss
    ax.plot(loss.index, loss.values, color="tab:blue", alpha=0.35, linewidth=1, label="train loss")
    window = max(1, len(loss) // 20)
    ax.plot(loss.index, loss.rolling(window, center=True, min_periods=1).mean().values, color="tab:blue", linewidth=2,
            label=f"train loss (mean of {window})")
    if curves.eval_loss is not None and len(curves.eval_loss):
        ax.plot(curves.eval_loss.index, curves.eval_loss.values, "o-", color="tab:orange", markersize=4,
                label="eval loss")
    events = analysis.events
    best = events.get("best_eval_step")
    if best is not None and curves.eval_loss is not None and best in curves.eval_loss.index:
        ax.plot([best], [curves.eval_loss.loc[best]], marker="*", color="tab:green", markersize=16,
                linestyle="none", label=f"best eval (step {best})")
    spikes = [s for s in events.get("loss_spike_steps", []) if s in loss.index]
    if spikes:
        ax.plot(spikes, loss.loc[spikes].values, "x", color="tab:red", markersize=9, label="loss spike")
    for key, color, label in (("plateau_start_step", "tab:gray", "plateau starts"),
                              ("divergence_step", "tab:red", "divergence")):
        if events.get(key) is not None:
            for a in axes:
                a.axvline(events[key], color=color, linestyle="--", linewidth=1)
            ax.plot([], [], color=color, linestyle="--", label=f"{label} (step {events[key]})")
    ax.set_ylabel("loss")
    ax.set_title(f"Quality score {analysis.quality_score:g}/100: {analysis.overall_assessment}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    if has_grad:
        g = curves.grad_norm
        axes[1].plot(g.index, g.values, color="tab:purple", linewidth=1, label="gradient norm")
        gspikes = [s for s in events.get("grad_norm_spike_steps", []) if s in g.index]
        if gspikes:
            axes[1].plot(gspikes, g.loc[gspikes].values, "x", color="tab:red", markersize=9, label="spike")
        axes[1].set_ylabel("gradient norm")
        axes[1].legend(loc="upper right", fontsize=8)
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    return fig
