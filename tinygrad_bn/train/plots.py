"""Pictures of the experiment, drawn with matplotlib (an optional extra: `.[plot]`).

Two figures tell the vanishing/exploding story the tables tell in numbers: the spread of
each hidden layer's activations and gradients at initialization (log scale, one line per
init scale and normalization), and the training loss over the steps with and without
normalization.
"""

from __future__ import annotations

import io
import math
import pathlib

from .experiment import VARIANTS, ExperimentResult
from .files import check_writable_folder, write_atomic

__all__ = ["plot_experiment", "PLOT_HINT"]

PLOT_HINT = "the plots need matplotlib: pip install -e \".[plot]\" (or pip install matplotlib)"
STYLES = {"none": "-", "batch": "--", "layer": ":"}


def plot_experiment(result: ExperimentResult, folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Write init_statistics.{svg,png} and training_loss.{svg,png} to `folder`; returns the
    paths. Raises ImportError (with how to install it) when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{PLOT_HINT} ({error})") from None
    folder = pathlib.Path(folder)
    check_writable_folder(folder)
    scales = result.config.scales
    colors = [f"C{i}" for i in range(len(scales))]
    layers = range(1, result.config.depth + 1)

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    for axes, attribute, title in zip(
            figure.subplots(1, 2),
            ("activation_std", "gradient_std"),
            ("activation std per hidden layer", "std of d(loss)/d(activation) per layer")):
        for scale, color in zip(scales, colors):
            for variant in VARIANTS:
                run = result.runs[(scale, variant)]
                values = [v if v > 0 and math.isfinite(v) else float("nan")
                          for v in getattr(run, attribute)]
                axes.plot(layers, values, STYLES.get(variant, "-"), color=color, marker="o",
                          markersize=3, label=f"{variant}, scale {scale:.2g}")
        axes.set_yscale("log")
        axes.set_xlabel("hidden layer")
        axes.set_title(f"{title}, at initialization")
        axes.grid(True, which="major", alpha=0.3)
    figure.axes[0].legend(fontsize=7, ncol=2)
    written = _save(figure, FigureCanvasAgg, folder / "init_statistics")

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots()
    for scale, color in zip(scales, colors):
        for variant in VARIANTS:
            losses = _smoothed([v if math.isfinite(v) else float("nan")
                                for v in result.runs[(scale, variant)].losses])
            axes.plot(range(1, len(losses) + 1), losses, STYLES.get(variant, "-"), color=color,
                      label=f"{variant}, scale {scale:.2g}")
    axes.set_yscale("log")
    # A diverging run (loss to 1e200, then nan) would flatten every other curve: the view
    # stops at 10, and such a run leaves through the top.
    finite = [v for run in result.runs.values() for v in run.losses if math.isfinite(v) and v > 0]
    axes.set_ylim(min(finite, default=1e-3) / 2, 10)
    axes.set_xlabel("training step")
    axes.set_ylabel(f"training loss (mean of {SMOOTHING} batches)")
    axes.set_title("training loss: no normalization (solid), batch norm (dashed), layer norm "
                   "(dotted); a diverging run leaves through the top")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7, ncol=3)
    return written + _save(figure, FigureCanvasAgg, folder / "training_loss")


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
