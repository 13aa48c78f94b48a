"""Why normalization helps: a deep MLP trained with and without it across init scales.

With tiny initial weights the activations of a plain deep network shrink layer after
layer (and so do the gradients that flow back); with large ones they blow up. Batch and
layer norm rescale every layer's activations, so the network trains at any scale. The
data set is generated here, deterministically (no downloads).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from ..core.node import Node, no_grad
from .loss import softmax_cross_entropy
from .nn import BatchNorm, LayerNorm, Linear, Module, ReLU, Sequential
from .optim import SGD

__all__ = ["ExperimentConfig", "ExperimentResult", "make_dataset", "build_mlp", "run_experiment",
           "format_result"]

NORMALIZATIONS = ("none", "batch", "layer")


@dataclass(frozen=True)
class ExperimentConfig:
    """What to train. The defaults finish in well under a minute on 2 cores."""

    scales: tuple[float, ...] = tuple(float(s) for s in np.logspace(-3, 0, 7))
    depth: int = 6            # hidden layers
    width: int = 64
    samples: int = 1000
    features: int = 16
    classes: int = 4
    steps: int = 300
    batch: int = 100
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("depth", "width", "samples", "features", "classes", "steps", "batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.classes < 2:
            raise ValueError(f"classes: expected at least 2, got {self.classes!r}")
        for name, values in (("scales", self.scales), ("lr", (self.lr,))):
            for value in values:
                if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                        or not (math.isfinite(value) and value > 0)):
                    raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        if not self.scales:
            raise ValueError("scales: expected at least one init scale, got none")
        momentum = self.momentum
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) \
                or not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")

    @classmethod
    def quick(cls) -> ExperimentConfig:
        return cls(scales=(1e-3, 1e-1, 1e0), steps=150)


@dataclass
class RunResult:
    loss: float
    accuracy: float
    activation_std: list[float]  # per hidden layer, at initialization
    gradient_std: list[float]    # of the loss w.r.t. each hidden layer's output, at initialization
    losses: list[float] = field(default_factory=list)  # training loss per step


@dataclass
class ExperimentResult:
    config: ExperimentConfig
    runs: dict[tuple[float, str], RunResult] = field(default_factory=dict)
    seconds: float = 0.0


def make_dataset(samples: int, features: int, classes: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ~ N(0, 1); labels from a fixed random two-layer tanh "teacher" network, so the
    classes are learnable but not linearly separable. Returns X (samples, features), y."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features))
    hidden = np.tanh(x @ rng.standard_normal((features, 32)) / np.sqrt(features))
    y = np.argmax(hidden @ rng.standard_normal((32, classes)), axis=1)
    return x, y


def build_mlp(variant: str, scale: float, config: ExperimentConfig, rng: np.random.Generator
              ) -> Sequential:
    """depth x (Linear -> [BatchNorm | LayerNorm] -> ReLU), then Linear to the classes."""
    if variant not in NORMALIZATIONS:
        raise ValueError(f"variant: expected one of {', '.join(NORMALIZATIONS)}, got {variant!r}")
    layers: list[Module] = []
    width_in = config.features
    for _ in range(config.depth):
        layers.append(Linear(width_in, config.width, weight_scale=scale, rng=rng))
        if variant == "batch":
            layers.append(BatchNorm(config.width))
        elif variant == "layer":
            layers.append(LayerNorm(config.width))
        layers.append(ReLU())
        width_in = config.width
    layers.append(Linear(width_in, config.classes, weight_scale=scale, rng=rng))
    return Sequential(*layers)


def _forward_recording(net: Sequential, x: np.ndarray) -> tuple[Node, list[Node]]:
    # The output of each ReLU is a hidden layer's activation.
    hidden = []
    h: Node = Node(x, requires_grad=False)
    for layer in net.layers:
        h = layer(h)
        if isinstance(layer, ReLU):
            hidden.append(h)
    return h, hidden


def _std(array: np.ndarray | None) -> float:
    return float(np.std(array)) if array is not None else 0.0


def train_one(variant: str, scale: float, config: ExperimentConfig, x: np.ndarray,
              y: np.ndarray) -> RunResult:
    """Train one network with SGD + momentum; measure it at init and after training."""
    rng = np.random.default_rng(config.seed)
    net = build_mlp(variant, scale, config, rng)
    logits, hidden = _forward_recording(net, x[: config.batch])
    loss = softmax_cross_entropy(logits, y[: config.batch])
    loss.backward()
    activation_std = [_std(h.data) for h in hidden]
    gradient_std = [_std(h.grad) for h in hidden]

    net.zero_grad()
    optimizer = SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
    order = np.random.default_rng(config.seed + 1)
    losses = []
    with np.errstate(all="ignore"):  # diverging runs are part of the picture
        for _ in range(config.steps):
            batch = order.integers(0, len(x), config.batch)
            loss = softmax_cross_entropy(net(x[batch]), y[batch])
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net.eval()
        with no_grad():
            logits = net(x)
            final_loss = softmax_cross_entropy(logits, y).item()
        accuracy = float(np.mean(np.argmax(logits.data, axis=1) == y))
    return RunResult(final_loss, accuracy, activation_std, gradient_std, losses)


def run_experiment(config: ExperimentConfig | None = None) -> ExperimentResult:
    """Train every variant at every scale on the same data, same seeds."""
    config = config or ExperimentConfig()
    start = time.perf_counter()
    x, y = make_dataset(config.samples, config.features, config.classes, config.seed)
    result = ExperimentResult(config)
    for scale in config.scales:
        for variant in NORMALIZATIONS:
            result.runs[(scale, variant)] = train_one(variant, scale, config, x, y)
    result.seconds = time.perf_counter() - start
    return result


def format_result(result: ExperimentResult) -> str:
    """The tables: training loss and accuracy per scale and variant; activation and gradient
    standard deviations per hidden layer at initialization."""
    config = result.config
    chance = 1.0 / config.classes
    lines = [
        f"Deep MLP: {config.depth} hidden layers of {config.width}, ReLU; {config.samples} samples, "
        f"{config.features} features, {config.classes} classes (chance accuracy {chance:.2f}); "
        f"SGD lr {config.lr} momentum {config.momentum}, {config.steps} steps of {config.batch}.",
        "",
        "Final training loss / accuracy (eval mode, whole training set)",
        f"{'init scale':>10}  " + "  ".join(f"{v + ' norm':>18}" for v in NORMALIZATIONS),
    ]
    for scale in config.scales:
        cells = []
        for variant in NORMALIZATIONS:
            run = result.runs[(scale, variant)]
            cells.append(f"{run.loss:>9.4f} / {run.accuracy:>5.3f}")
        lines.append(f"{scale:>10.2g}  " + "  ".join(f"{c:>18}" for c in cells))
    layers = "  ".join(f"{'L' + str(i + 1):>8}" for i in range(config.depth))
    for title, attr in (("activation std per hidden layer at init", "activation_std"),
                        ("std of d(loss)/d(activation) per hidden layer at init", "gradient_std")):
        lines += ["", title, f"{'init scale':>10}  {'net':<6} {layers}"]
        for scale in config.scales:
            for variant in ("none", "batch"):
                values = getattr(result.runs[(scale, variant)], attr)
                lines.append(f"{scale:>10.2g}  {variant:<6} "
                             + "  ".join(f"{v:>8.1e}" for v in values))
    lines += ["", f"({len(result.runs)} training runs in {result.seconds:.1f} s)"]
    return "\n".join(lines)
