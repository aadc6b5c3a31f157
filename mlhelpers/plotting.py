"""Figures the chapters reuse: an episode as an image grid, learning curves, 1-D regression tasks. Chapter 1.

Every function returns its Figure or Axes and never calls ``plt.show()``. Grayscale images use the
``"gray_r"`` colormap: ink (high values) is dark, as on paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mlhelpers.tasks import Task, check_task
from mlhelpers.validation import check_positive_int, check_tensor

GRAY_CMAP = "gray_r"
_PREDICTION_COLORS = ["tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def _check_index(task: Task, index: int) -> int:
    check_task(task)
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int, got {type(index).__name__}")
    if not -len(task) <= index < len(task):
        raise IndexError(f"index={index} is out of range for a batch of {len(task)} tasks")
    return index % len(task)


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


def _to_image(x: Tensor, low: float, high: float) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]`` -> something ``imshow`` draws: ``[H, W]`` (grayscale) or ``[H, W, 3]`` in [0, 1]."""
    x = x.detach().float().cpu()
    if x.shape[0] == 1:
        return _numpy(x[0]), GRAY_CMAP
    scaled = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    return _numpy(scaled.clamp(0, 1).permute(1, 2, 0)), None


def show_episode(
    task: Task, index: int = 0, max_per_class: int = 5, title: str | None = None
) -> Figure:
    """Draw classification episode ``index`` of ``task``: support set on top, query set below.

    One column per class (headed by its label 0..N-1), up to ``max_per_class`` rows of examples in
    each part. Images ``[C, H, W]``: ``C == 1`` is drawn with the ``"gray_r"`` colormap (high values
    dark) on one colour scale for the whole episode; ``C == 3`` as RGB, rescaled to [0, 1].
    """
    i = _check_index(task, index)
    check_positive_int("max_per_class", max_per_class)
    if task.support_x.dim() != 5 or task.support_x.shape[2] not in (1, 3):
        raise ValueError(
            "show_episode needs image episodes with support_x [tasks, n, C, H, W] and C in (1, 3), "
            f"got support_x of shape {tuple(task.support_x.shape)}"
        )
    if task.support_y.dtype not in (torch.int64, torch.int32) or task.support_y.dim() != 2:
        raise ValueError(
            "show_episode needs integer class labels support_y [tasks, n], "
            f"got {task.support_y.dtype} of shape {tuple(task.support_y.shape)}"
        )
    sx, sy, qx, qy = task.support_x[i], task.support_y[i], task.query_x[i], task.query_y[i]
    classes = torch.unique(torch.cat([sy, qy])).tolist()
    parts = [("Support set", sx, sy), ("Query set", qx, qy)]
    per_class = [max(int((y == c).sum()) for c in classes) for _, _, y in parts]
    rows = [max(1, min(max_per_class, k)) for k in per_class]
    low = float(torch.minimum(sx.min(), qx.min()))
    high = float(torch.maximum(sx.max(), qx.max()))

    n_cols = len(classes)
    fig = plt.figure(figsize=(1.1 * n_cols + 0.4, 1.1 * sum(rows) + 1.3), layout="constrained")
    subfigs = fig.subfigures(2, 1, height_ratios=[max(r, 1) for r in rows], hspace=0.04)
    for subfig, (name, x, y), n_rows, k in zip(subfigs, parts, rows, per_class):
        shown = f"{k} per class" + (f", first {n_rows} shown" if n_rows < k else "")
        subfig.suptitle(f"{name} ({shown})", fontsize=10, fontweight="bold")
        subfig.set_facecolor("#eef2f7" if name.startswith("Support") else "#f7f1ea")
        axes = subfig.subplots(n_rows, n_cols, squeeze=False)
        for col, c in enumerate(classes):
            examples = x[y == c][:n_rows]
            for row in range(n_rows):
                ax = axes[row, col]
                ax.set_xticks([])
                ax.set_yticks([])
                if row < len(examples):
                    image, cmap = _to_image(examples[row], low, high)
                    ax.imshow(image, cmap=cmap, vmin=low if cmap else None, vmax=high if cmap else None)
                else:
                    ax.set_axis_off()
                if row == 0:
                    ax.set_title(f"class {c}", fontsize=9)
    if title is not None:
        fig.suptitle(title)
    return fig


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Means of ``window`` consecutive values: ``[n]`` -> ``[n - window + 1]``."""
    if window <= 1 or len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_learning_curves(history, ax: Axes | None = None, smoothing: int = 50) -> Axes:
    """Training loss (moving average over ``smoothing`` steps, raw values faint) on ``ax`` and the
    validation metric with its 95% CI band on a twin y-axis, kept as ``ax.twin_axis`` (None when
    no run has validation results).

    ``history`` is a :class:`~mlhelpers.training.History` or a dict ``{name: History}`` to compare
    runs (one colour per run). Returns ``ax``.
    """
    from mlhelpers.training import History

    runs = {"": history} if isinstance(history, History) else history
    if not isinstance(runs, Mapping) or not runs or not all(isinstance(h, History) for h in runs.values()):
        raise TypeError(
            f"history must be a History or a non-empty dict of name -> History, got {type(history).__name__}"
        )
    check_positive_int("smoothing", smoothing)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    twin = None
    metric_names = set()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (name, h) in enumerate(runs.items()):
        color = colors[k % len(colors)]
        prefix = f"{name}: " if name else ""
        if h.train_loss:
            steps = np.asarray(h.steps, dtype=np.float64)
            loss = np.asarray(h.train_loss, dtype=np.float64)
            window = min(smoothing, max(1, len(loss) // 5))
            ax.plot(steps, loss, color=color, alpha=0.2, linewidth=0.8)
            smooth = _moving_average(loss, window)
            ax.plot(steps[len(steps) - len(smooth):], smooth, color=color, linewidth=1.8,
                    label=f"{prefix}train loss" + (f" ({window}-step mean)" if window > 1 else ""))
        if h.val_metric:
            if twin is None:
                twin = ax.twinx()
            metric_names.add(h.metric or "metric")
            vs = np.asarray(h.val_steps, dtype=np.float64)
            vm = np.asarray(h.val_metric, dtype=np.float64)
            ci = np.nan_to_num(np.asarray(h.val_ci, dtype=np.float64))
            twin.plot(vs, vm, color=color, linestyle="--", marker="o", markersize=3,
                      label=f"{prefix}validation {h.metric or 'metric'}")
            twin.fill_between(vs, vm - ci, vm + ci, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("meta-training step")
    ax.set_ylabel("training loss")
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        twin.set_ylabel("validation " + " / ".join(sorted(metric_names)) + " (95% CI)")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        (twin or ax).legend(handles, labels, fontsize=8, loc="best")
    ax.twin_axis = twin
    return ax


def plot_regression_tasks(
    task: Task,
    n: int = 4,
    true_fn: Callable[[Tensor, Task], Tensor] | None = None,
    predictions: Tensor | Mapping[str, Tensor] | None = None,
) -> Figure:
    """The first ``n`` tasks of a batch of 1-D regression tasks, one panel each.

    Support points are filled, query points hollow. ``true_fn(x, tasks)`` draws the true function:
    it gets a grid ``x`` ``[n, G, 1]`` and the sub-batch of the ``n`` tasks and returns ``[n, G, 1]``,
    e.g. for sinusoids ``lambda x, t: SinusoidTasks.function(x, t.info["amplitude"], t.info["phase"])``.
    ``predictions`` are model outputs at the query points ``[tasks, n_query, 1]`` (what
    ``learner(task)`` returns), or a dict ``{label: outputs}`` to compare models.
    """
    check_positive_int("n", n)
    check_task(task)
    if task.support_x.dim() != 3 or task.support_x.shape[-1] != 1 or task.support_y.shape[-1:] != (1,):
        raise ValueError(
            "plot_regression_tasks needs 1-D regression tasks with support_x and support_y "
            f"[tasks, n, 1], got support_x {tuple(task.support_x.shape)} and support_y {tuple(task.support_y.shape)}"
        )
    n = min(n, len(task))
    shown = task[:n].to("cpu")
    if predictions is None:
        predictions = {}
    elif isinstance(predictions, Tensor):
        predictions = {"prediction": predictions}
    for label, p in predictions.items():
        check_tensor(f"predictions[{label!r}]", p)
        if p.dim() != 3 or p.shape[1:] != shown.query_y.shape[1:] or p.shape[0] < n:
            raise ValueError(
                f"predictions[{label!r}] must have shape [tasks, n_query, 1] = [>= {n}, "
                f"{shown.n_query}, 1], got {tuple(p.shape)}"
            )
    predictions = {label: p.detach().to("cpu") for label, p in predictions.items()}

    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.8 * nrows), squeeze=False,
                             layout="constrained", sharey=True)
    for extra in axes.flat[n:]:
        fig.delaxes(extra)
    xs = torch.cat([shown.support_x, shown.query_x], dim=1)
    grid = None
    if true_fn is not None:
        lo, hi = float(xs.min()), float(xs.max())
        grid = torch.linspace(lo, hi, 200).expand(n, 200)[..., None]
        with torch.no_grad():
            truth = true_fn(grid, shown)
        if tuple(truth.shape) != (n, 200, 1):
            raise ValueError(
                f"true_fn must return [n, G, 1] = {(n, 200, 1)} for a grid x [n, G, 1], got {tuple(truth.shape)}"
            )
    for t, ax in enumerate(axes.flat[:n]):
        if grid is not None:
            ax.plot(_numpy(grid[t, :, 0]), _numpy(truth[t, :, 0]), color="0.4", linewidth=1.2, label="true function")
        qx, order = shown.query_x[t, :, 0].sort()
        ax.scatter(_numpy(qx), _numpy(shown.query_y[t, order, 0]), s=14, facecolors="none", edgecolors="tab:blue",
                   label="query")
        for (label, p), color in zip(predictions.items(), _PREDICTION_COLORS * len(predictions)):
            ax.plot(_numpy(qx), _numpy(p[t, order, 0]), color=color, linewidth=1.6, label=label)
        ax.scatter(_numpy(shown.support_x[t, :, 0]), _numpy(shown.support_y[t, :, 0]), s=28, color="tab:red", zorder=3,
                   label=f"support ({shown.n_support})")
        ax.set_title(f"task {t}", fontsize=9)
        ax.set_xlabel("x")
    axes.flat[0].set_ylabel("y")
    axes.flat[0].legend(fontsize=7, loc="best")
    return fig
