"""Pictures of the experiment, drawn with matplotlib (an optional extra: `.[plot]`).

Two figures tell the vanishing/exploding story the tables tell in numbers, as small
multiples (one panel per normalization, one colour per init scale, shared axes): the spread
of each hidden layer's activations and gradients at initialization (log scale), and the
training loss over the steps, a diverged run marked where it leaves the view.
"""

from __future__ import annotations

import io
import math
import pathlib
from typing import Any

from ..files import check_writable_folder, write_atomic
from .experiment import NORMALIZATIONS, ExperimentResult

__all__ = ["plot_experiment", "PLOT_HINT"]

PLOT_HINT = "the plots need matplotlib: pip install -e \".[plot]\" (or pip install matplotlib)"


def plot_experiment(result: ExperimentResult, folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Write init_statistics.{svg,png} and training_loss.{svg,png} to `folder` (which must
    exist); returns the paths. Raises ImportError (with how to install it) when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{PLOT_HINT} ({error})") from None
    folder = pathlib.Path(folder)
    check_writable_folder(folder)
    scales = result.config.scales
    colors = {scale: f"C{i}" for i, scale in enumerate(scales)}
    layers = range(1, result.config.depth + 1)
    # Small multiples: one panel per normalization, one colour per init scale, the same axes
    # in every panel, so that a column reads as "what this normalization does".
    columns = len(NORMALIZATIONS)

    figure = Figure(figsize=(WIDTH, 6.6), layout="constrained")
    grid = figure.subplots(2, columns, sharex=True, sharey="row", squeeze=False)
    for row, (attribute, what) in enumerate((("activation_std", "activation std"),
                                             ("gradient_std", "std of d(loss)/d(activation)"))):
        for column, variant in enumerate(NORMALIZATIONS):
            axes = grid[row][column]
            for scale in scales:
                values = [v if v > 0 and math.isfinite(v) else float("nan")
                          for v in getattr(result.runs[(scale, variant)], attribute)]
                axes.plot(layers, values, "-", color=colors[scale], marker="o", markersize=3,
                          label=f"init scale {scale:.2g}")
            axes.set_yscale("log")
            axes.grid(True, which="major", alpha=0.3)
            if row == 0:
                axes.set_title(f"normalization: {variant}")
            else:
                axes.set_xlabel("hidden layer")
            if column == 0:
                axes.set_ylabel(what)
    figure.suptitle("each hidden layer at initialization, one panel per normalization")
    _legend_outside(figure, grid[0][0])
    written = _save(figure, FigureCanvasAgg, folder / "init_statistics")

    figure = Figure(figsize=(WIDTH, 4.2), layout="constrained")
    grid = figure.subplots(1, columns, sharey=True, squeeze=False)[0]
    finite = [v for run in result.runs.values() for v in run.losses if math.isfinite(v) and v > 0]
    top = 10.0
    for axes, variant in zip(grid, NORMALIZATIONS):
        for scale in scales:
            raw = result.runs[(scale, variant)].losses
            diverged = next((i for i, v in enumerate(raw) if not math.isfinite(v) or v > top), None)
            losses = _smoothed([v if math.isfinite(v) else float("nan") for v in raw])
            steps = range(1, len(losses) + 1)
            label = f"init scale {scale:.2g}"
            axes.plot(steps, losses, "-", color=colors[scale], label=label)
            if diverged is not None:
                # A diverged run leaves the view: a cross where it does, and its name says so.
                axes.plot([diverged + 1], [top], "x", color=colors[scale], markersize=9,
                          markeredgewidth=2, clip_on=False)
                axes.annotate(f"diverged at step {diverged + 1}", (diverged + 1, top),
                              textcoords="offset points", xytext=(4, -12), fontsize=7,
                              color=colors[scale])
        axes.set_yscale("log")
        axes.set_ylim(min(finite, default=1e-3) / 2, top)
        axes.set_title(f"normalization: {variant}")
        axes.set_xlabel("training step")
        axes.grid(True, alpha=0.3)
    grid[0].set_ylabel(f"training loss (mean of {SMOOTHING} batches)")
    figure.suptitle("training loss, one panel per normalization; x: the run diverged there")
    _legend_outside(figure, grid[0])
    return written + _save(figure, FigureCanvasAgg, folder / "training_loss")


def _legend_outside(figure: Any, axes: Any) -> None:
    # One legend for all panels, below them: it never covers a curve, and it stays in a
    # window as narrow as the figure.
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", fontsize=8, title="curves",
                  ncols=max(1, len(labels)))


WIDTH = 8.1  # inches: 891 px in the PNG (110 dpi) and 778 px in the SVG, for a 900 px window
SMOOTHING = 10  # batches per point of a loss curve: single batches are too noisy to read


def _smoothed(values: list[float]) -> list[float]:
    return [sum(values[max(0, i - SMOOTHING + 1):i + 1]) / len(values[max(0, i - SMOOTHING + 1):i + 1])
            for i in range(len(values))]


def _save(figure: object, canvas_type: type, stem: pathlib.Path) -> list[pathlib.Path]:
    canvas_type(figure)  # attaches an Agg canvas: no pyplot, no global state
    paths = [stem.with_suffix(".svg"), stem.with_suffix(".png")]
    for path in paths:
        # Drawn in memory, then written whole (a full disk leaves no cut-off picture).
        buffer = io.BytesIO()
        figure.savefig(buffer, format=path.suffix[1:], dpi=110)
        write_atomic(path, buffer.getvalue())
    return paths
