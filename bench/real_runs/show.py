"""Plot a benchmark run and print its raw numbers, for labeling it by eye (never runs the analyzer).

    python -m bench.real_runs.show RUN_ID [RUN_ID ...] [--runs DIR] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent


def _series(run: dict, *names: str):
    for name in names:
        points = run["metrics"].get(name)
        if points and len(points) >= (2 if name in ("train_loss",) else 1):
            steps = np.array([p[0] for p in points], dtype=float)
            values = np.array([p[1] for p in points], dtype=float)
            return name, steps, values
    return None, np.array([]), np.array([])


def describe(run: dict) -> str:
    lines = [f"== {run['id']}  task={run.get('task')} model={run.get('model')} method={run.get('method')} "
             f"precision={run.get('precision')}", f"params: {run['params']}",
             f"metric keys: {', '.join(f'{k}({len(v)})' for k, v in run['metrics'].items())}"]
    name, steps, values = _series(run, "loss", "train_loss")
    if len(values):
        finite = values[np.isfinite(values)]
        n = len(values)
        k = max(1, n // 10)
        lines.append(f"train {name}: {n} points, steps {int(steps[0])}-{int(steps[-1])}, non-finite {n - len(finite)}")
        lines.append(f"  first 8: {np.round(values[:8], 4).tolist()}")
        lines.append(f"  last 8:  {np.round(values[-8:], 4).tolist()}")
        if len(finite):
            lines.append(f"  min {finite.min():.4g}  max {finite.max():.4g}  "
                         f"median first 10% {np.median(values[:k]):.4g}  "
                         f"median last 10% {np.median(values[-k:]):.4g}")
            fifth = steps >= steps[0] + 0.8 * (steps[-1] - steps[0])
            tail = values[fifth & np.isfinite(values)]
            if len(tail) >= 2:
                half = len(tail) // 2
                lines.append(f"  final fifth: {len(tail)} points, median first half {np.median(tail[:half]):.4g}, "
                             f"second half {np.median(tail[half:]):.4g}, MAD of diffs "
                             f"{np.median(np.abs(np.diff(tail))):.3g}")
            zeros = int(np.sum(values == 0.0))
            if zeros:
                lines.append(f"  exactly-zero losses: {zeros}")
    name, steps, values = _series(run, "eval_loss", "val_loss")
    if len(values):
        pairs = ", ".join(f"{int(s)}:{v:.4g}" for s, v in zip(steps, values))
        lines.append(f"eval {name}: {len(values)} points: {pairs if len(values) <= 40 else pairs[:1500] + ' ...'}")
    name, steps, values = _series(run, "grad_norm")
    if len(values):
        finite = values[np.isfinite(values)]
        lines.append(f"grad_norm: {len(values)} points, non-finite {len(values) - len(finite)}"
                     + (f", median {np.median(finite):.3g}, p90 {np.percentile(finite, 90):.3g}, max {finite.max():.3g}"
                        if len(finite) else ""))
    name, steps, values = _series(run, "learning_rate")
    if len(values):
        lines.append(f"learning_rate: first {values[0]:.3g}, max {np.nanmax(values):.3g}, last {values[-1]:.3g}")
    name, steps, values = _series(run, "epoch")
    if len(values):
        lines.append(f"epoch: last {values[-1]:.3g}")
    return "\n".join(lines)


def plot(run: dict, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for names, style in ((("loss", "train_loss"), "-"), (("eval_loss", "val_loss"), "o-")):
        name, steps, values = _series(run, *names)
        if len(values):
            ax.plot(steps, values, style, ms=3, lw=1, label=name)
            bad = ~np.isfinite(values)
            if bad.any():
                ax.plot(steps[bad], np.zeros(bad.sum()), "rx", label=f"{name} non-finite")
    ax.set_title("loss (linear)")
    ax.legend()
    ax = axes[0][1]
    for names, style in ((("loss", "train_loss"), "-"), (("eval_loss", "val_loss"), "o-")):
        name, steps, values = _series(run, *names)
        keep = np.isfinite(values) & (values > 0)
        if keep.any():
            ax.plot(steps[keep], values[keep], style, ms=3, lw=1, label=name)
    ax.set_yscale("log")
    ax.set_title("loss (log)")
    ax = axes[1][0]
    name, steps, values = _series(run, "loss", "train_loss")
    if len(values):
        tail = steps >= steps[0] + 0.6 * (steps[-1] - steps[0])
        ax.plot(steps[tail], values[tail], "-", lw=1)
        if tail.sum() >= 5:
            w = max(3, int(tail.sum() // 10))
            smooth = np.convolve(np.nan_to_num(values[tail]), np.ones(w) / w, mode="valid")
            ax.plot(steps[tail][w - 1:], smooth, "k-", lw=2, label=f"mean of {w}")
        ev_name, ev_steps, ev_values = _series(run, "eval_loss", "val_loss")
        if len(ev_values):
            keep = ev_steps >= steps[0] + 0.6 * (steps[-1] - steps[0])
            ax.plot(ev_steps[keep], ev_values[keep], "o-", ms=3, label=ev_name)
        ax.axvline(steps[0] + 0.8 * (steps[-1] - steps[0]), color="grey", ls="--", lw=1)
        ax.legend()
    ax.set_title("last 40% of the run (dashed: final fifth)")
    ax = axes[1][1]
    name, steps, values = _series(run, "grad_norm")
    if len(values):
        keep = np.isfinite(values) & (values > 0)
        ax.plot(steps[keep], values[keep], "-", lw=1, label="grad_norm")
        bad = ~np.isfinite(values)
        if bad.any():
            ax.plot(steps[bad], np.ones(bad.sum()), "rx", label="non-finite")
        ax.set_yscale("log")
    lr_name, lr_steps, lr_values = _series(run, "learning_rate")
    if len(lr_values):
        ax2 = ax.twinx()
        ax2.plot(lr_steps, lr_values, "g--", lw=1)
        ax2.set_ylabel("learning rate", color="g")
    ax.set_title("gradient norm (log) and learning rate (green)")
    fig.suptitle(run["id"])
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.real_runs.show", description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="+")
    parser.add_argument("--runs", type=Path, default=HERE / "runs")
    parser.add_argument("--png-dir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    args.png_dir.mkdir(parents=True, exist_ok=True)
    for run_id in args.ids:
        run = json.loads((args.runs / f"{run_id}.json").read_text(encoding="utf-8"))
        print(describe(run))
        path = args.png_dir / f"{run_id}.png"
        plot(run, path)
        print(f"plot: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
