"""The ground truth of the assignment's students (`tests/students/assignment/`) proven without the
project: every function of every file is run in-process (our own files, trusted) against
references written here from other sources (torch's conv2d, max_pool2d, cross_entropy,
multi_margin_loss, batch_norm, layer_norm, group_norm for forwards; central differences of those
references for backwards; the kept fraction and scaling for dropout), on inputs that expose what
the notebook's checks hide: non-square images and filters, strides 2 and 3, pad 0 and 2,
overlapping pools, tied maxima, N = 1, 3-D and 4-D inputs to affine, scores shifted near 1000,
small variances, running statistics and gamma, beta away from their defaults.

Each function's verdict must equal the table's, and each slip's marker must sit on exactly one
line: of the function itself, or of the forward or helper it names (`marker_in`) when the slip
reaches the function from there.
"""

from __future__ import annotations

import importlib.util
import inspect
import pathlib
import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional

ASSIGNMENT = pathlib.Path(__file__).resolve().parents[1] / "students" / "assignment"

EPS = 1e-5
MOMENTUM = 0.8
TOLERANCE = 1e-8  # normwise error of a float64 function
FLOAT32_TOLERANCE = 1e-4  # a function that computes in float32
NUMERIC_TOLERANCE = 1e-6  # a reference gradient against its central differences

FUNCTIONS = (
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "dropout_forward", "dropout_backward", "conv_forward_naive", "conv_backward_naive",
    "max_pool_forward_naive", "max_pool_backward_naive", "svm_loss", "softmax_loss",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "layernorm_forward", "layernorm_backward", "spatial_batchnorm_forward",
    "spatial_batchnorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward",
)


class StubError(Exception):
    """The function is the template's: it raises NotImplementedError or returns None."""


class WrongError(Exception):
    """The function's values (or shapes) are not the reference's."""


class BrokenReferenceError(Exception):
    """This test's own reference failed its check: never a student's verdict."""


# ---------------------------------------------------------------------------------------------
# measures

def scaled_error(a: Any, b: Any) -> float:
    """max |a - b| / max(|a| + |b|): the normwise relative error, 0 for two zero arrays."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return np.inf
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return np.inf
    scale = np.max(np.abs(a) + np.abs(b), initial=0.0)
    return 0.0 if scale == 0 else float(np.max(np.abs(a - b), initial=0.0) / scale)


def agree(got: Any, right: np.ndarray, what: str) -> None:
    if got is None:
        raise StubError(f"{what} is None")
    got = np.asarray(got)
    if got.dtype == object:
        raise WrongError(f"{what} is not an array of numbers")
    if got.shape != right.shape:
        raise WrongError(f"{what} has shape {got.shape}, should be {right.shape}")
    tolerance = FLOAT32_TOLERANCE if got.dtype == np.float32 else TOLERANCE
    error = scaled_error(got, right)
    if not error <= tolerance:
        raise WrongError(f"{what} off by {error:.2e}")


def central_differences(f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, entry by entry."""
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + h
        plus = f(x)
        flat[i] = keep - h
        minus = f(x)
        flat[i] = keep
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def numeric_grads(forward: Callable[..., np.ndarray], args: list[np.ndarray], dout: np.ndarray,
                  which: tuple[int, ...]) -> list[np.ndarray]:
    """Gradients of sum(forward(*args) * dout) by central differences, for the args in `which`."""
    args = [a.copy() for a in args]
    return [central_differences(lambda _v: float(np.sum(forward(*args) * dout)), args[i])
            for i in which]


def torch_grads(forward: Callable[..., torch.Tensor], args: list[np.ndarray], dout: np.ndarray,
                which: tuple[int, ...]) -> list[np.ndarray]:
    """The same gradients by torch's autograd (float64)."""
    tensors = [torch.tensor(a, dtype=torch.float64, requires_grad=i in which) for i, a in enumerate(args)]
    out = forward(*tensors)
    out.backward(torch.tensor(dout, dtype=torch.float64))
    return [tensors[i].grad.numpy() for i in which]


PROVEN: dict[bytes, list[np.ndarray]] = {}


def checked_grads(forward_np: Callable[..., np.ndarray], forward_torch: Callable[..., torch.Tensor],
                  args: list[np.ndarray], dout: np.ndarray, which: tuple[int, ...]) -> list[np.ndarray]:
    """Reference gradients: torch's autograd, proven here by central differences (once per case)."""
    key = b"".join(a.tobytes() for a in args) + dout.tobytes() + bytes(which)
    if key in PROVEN:
        return PROVEN[key]
    exact = torch_grads(forward_torch, args, dout, which)
    numeric = numeric_grads(forward_np, args, dout, which)
    for e, n in zip(exact, numeric):
        if not scaled_error(e, n) < NUMERIC_TOLERANCE:
            raise BrokenReferenceError(f"autograd and central differences differ by {scaled_error(e, n):.1e}")
    PROVEN[key] = exact
    return exact


def as_torch(f: Callable[..., torch.Tensor]) -> Callable[..., np.ndarray]:
    def run(*args: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return f(*[torch.tensor(a, dtype=torch.float64) for a in args]).numpy()
    return run


# ---------------------------------------------------------------------------------------------
# references (torch, float64)

def ref_affine(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b


def ref_relu(x):
    return torch.clamp(x, min=0) if isinstance(x, torch.Tensor) else np.maximum(x, 0)


def ref_conv(stride: int, pad: int):
    return lambda x, w, b: functional.conv2d(x, w, b, stride=stride, padding=pad)


def ref_pool(ph: int, pw: int, stride: int):
    return lambda x: functional.max_pool2d(x, (ph, pw), stride=stride)


def ref_svm(y: np.ndarray):
    n_classes = None

    def loss(x):
        nonlocal n_classes
        n_classes = x.shape[1]
        # torch divides each sample's sum of margins by the number of classes; the course does not
        return functional.multi_margin_loss(x, torch.tensor(y), margin=1.0) * n_classes
    return loss


def ref_softmax(y: np.ndarray):
    return lambda x: functional.cross_entropy(x, torch.tensor(y))


def ref_batchnorm(x, gamma, beta):
    return functional.batch_norm(x, None, None, gamma, beta, training=True, eps=EPS)


def ref_layernorm(x, gamma, beta):
    return functional.layer_norm(x, (x.shape[1],), gamma, beta, eps=EPS)


def ref_spatial(x, gamma, beta):
    return functional.batch_norm(x, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=EPS)


def ref_group(groups: int):
    return lambda x, gamma, beta: functional.group_norm(x, groups, gamma.reshape(-1), beta.reshape(-1),
                                                        eps=EPS)


# ---------------------------------------------------------------------------------------------
# cases: what the notebook does not try

AFFINE_SHAPES = [(1, 6), (3, 2, 5), (2, 3, 2, 2), (4, 10)]  # N = 1, 3-D, 4-D, 2-D
CONV_CASES = [  # x shape, w shape, stride, pad
    ((2, 3, 7, 9), (4, 3, 3, 5), 2, 1),   # non-square image and filter, stride 2
    ((1, 2, 5, 9), (3, 2, 3, 3), 1, 0),   # N = 1, pad 0, a 3 x 7 output
    ((2, 1, 8, 11), (2, 1, 2, 2), 3, 0),  # stride 3, a 3 x 4 output
    ((2, 2, 4, 6), (3, 2, 3, 4), 1, 2),   # pad 2, a 6 x 7 output
]
POOL_CASES = [  # x shape, pool height, pool width, stride
    ((2, 3, 4, 4), 2, 2, 2),  # the notebook's
    ((1, 2, 5, 7), 3, 3, 1),  # overlapping windows, N = 1
    ((2, 2, 7, 6), 3, 2, 2),  # overlapping rows, non-square window
    ((2, 1, 5, 9), 2, 3, 3),  # stride 3, windows with gaps between them
]
LOSS_CASES = [(1, 5, 0.0), (6, 4, 0.0), (5, 7, 1000.0)]  # N, classes, shift of every score


def rng_for(name: str, case: int) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, name)), case])


def call(function: Callable, *args: Any) -> Any:
    result = function(*args)
    if result is None:
        raise StubError("returned None")
    return result


# ---------------------------------------------------------------------------------------------
# judges: each raises StubError or WrongError, or returns quietly

def judge_affine_forward(m: ModuleType) -> None:
    for case, shape in enumerate(AFFINE_SHAPES):
        rng = rng_for("affine", case)
        x = rng.standard_normal(shape)
        w = rng.standard_normal((int(np.prod(shape[1:])), 3))
        b = rng.standard_normal(3)
        out, _ = call(m.affine_forward, x.copy(), w.copy(), b.copy())
        agree(out, ref_affine(x, w, b), f"out for x of shape {shape}")


def judge_affine_backward(m: ModuleType) -> None:
    for case, shape in enumerate(AFFINE_SHAPES):
        rng = rng_for("affine", case)
        x = rng.standard_normal(shape)
        w = rng.standard_normal((int(np.prod(shape[1:])), 3))
        b = rng.standard_normal(3)
        dout = rng.standard_normal((shape[0], 3))
        right = numeric_grads(ref_affine, [x, w, b], dout, (0, 1, 2))
        _, cache = m.affine_forward(x.copy(), w.copy(), b.copy())
        got = call(m.affine_backward, dout.copy(), cache)
        for name, g, r in zip(("dx", "dw", "db"), got, right):
            agree(g, r, f"{name} for x of shape {shape}")


def judge_relu_forward(m: ModuleType) -> None:
    x = rng_for("relu", 0).standard_normal((3, 4, 5))
    out, _ = call(m.relu_forward, x.copy())
    agree(out, ref_relu(x), "out")


def judge_relu_backward(m: ModuleType) -> None:
    rng = rng_for("relu", 0)
    x, dout = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    right = numeric_grads(ref_relu, [x], dout, (0,))[0]
    _, cache = m.relu_forward(x.copy())
    agree(call(m.relu_backward, dout.copy(), cache), right, "dx")


def p_means_keep(m: ModuleType) -> bool:
    """What `p` means, read from the file's own docstring: 'keep' since 2017, 'drop' before."""
    text = inspect.getdoc(m.dropout_forward) or ""
    said = re.search(r"\bp\b\s*:.*?\b(keep|drop)\b", text, re.S | re.I)
    if not said:
        raise BrokenReferenceError("dropout_forward's docstring says neither keep nor drop")
    return said.group(1).lower() == "keep"


def dropout_outputs(m: ModuleType, keep: float, seed: int):
    p = keep if p_means_keep(m) else 1 - keep
    x = rng_for("dropout", seed).uniform(1.0, 2.0, (100, 300))  # never zero, so zeros are drops
    out, cache = call(m.dropout_forward, x.copy(), {"mode": "train", "p": p, "seed": seed})
    return x, np.asarray(out), cache, p


def judge_dropout_forward(m: ModuleType) -> None:
    for seed, keep in enumerate((0.3, 0.75)):
        x, out, _, p = dropout_outputs(m, keep, seed)
        if out.shape != x.shape:
            raise WrongError(f"out has shape {out.shape}")
        kept = out != 0
        if kept.all():
            raise WrongError("keeps every unit")
        if np.all(kept == kept[:1]):
            raise WrongError("every sample keeps the same units: one mask for the whole batch")
        fraction = kept.mean()
        sigma = np.sqrt(keep * (1 - keep) / x.size)
        if abs(fraction - keep) > 6 * sigma:
            raise WrongError(f"kept {fraction:.3f} of the units, should keep {keep}")
        if scaled_error(out[kept], x[kept] / keep) > TOLERANCE:
            raise WrongError("kept units are not scaled by 1/keep")
        test, _ = call(m.dropout_forward, x.copy(), {"mode": "test", "p": p})
        agree(test, x, "test-mode out")


def judge_dropout_backward(m: ModuleType) -> None:
    for seed, keep in enumerate((0.3, 0.75)):
        x, out, cache, _ = dropout_outputs(m, keep, seed)
        dout = rng_for("dropout-dout", seed).standard_normal(x.shape)
        # the forward is linear in x with the mask it drew: dx = dout * out / x
        agree(call(m.dropout_backward, dout.copy(), cache), dout * out / x, "dx")


def conv_inputs(case: int):
    xs, ws, stride, pad = CONV_CASES[case]
    rng = rng_for("conv", case)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    return x, w, b, {"stride": stride, "pad": pad}


def judge_conv_forward_naive(m: ModuleType) -> None:
    for case in range(len(CONV_CASES)):
        x, w, b, param = conv_inputs(case)
        out, _ = call(m.conv_forward_naive, x.copy(), w.copy(), b.copy(), dict(param))
        agree(out, as_torch(ref_conv(param["stride"], param["pad"]))(x, w, b), f"out in case {case}")


def judge_conv_backward_naive(m: ModuleType) -> None:
    for case in range(len(CONV_CASES)):
        x, w, b, param = conv_inputs(case)
        reference = ref_conv(param["stride"], param["pad"])
        dout = rng_for("conv-dout", case).standard_normal(as_torch(reference)(x, w, b).shape)
        right = checked_grads(as_torch(reference), reference, [x, w, b], dout, (0, 1, 2))
        _, cache = m.conv_forward_naive(x.copy(), w.copy(), b.copy(), dict(param))
        got = call(m.conv_backward_naive, dout.copy(), cache)
        for name, g, r in zip(("dx", "dw", "db"), got, right):
            agree(g, r, f"{name} in case {case}")


def pool_inputs(case: int):
    xs, ph, pw, stride = POOL_CASES[case]
    x = rng_for("pool", case).standard_normal(xs)  # continuous values: no ties
    return x, {"pool_height": ph, "pool_width": pw, "stride": stride}


def judge_max_pool_forward_naive(m: ModuleType) -> None:
    for case in range(len(POOL_CASES)):
        x, param = pool_inputs(case)
        out, _ = call(m.max_pool_forward_naive, x.copy(), dict(param))
        right = as_torch(ref_pool(param["pool_height"], param["pool_width"], param["stride"]))(x)
        agree(out, right, f"out in case {case}")


def judge_max_pool_backward_naive(m: ModuleType) -> None:
    for case in range(len(POOL_CASES)):
        x, param = pool_inputs(case)
        reference = ref_pool(param["pool_height"], param["pool_width"], param["stride"])
        dout = rng_for("pool-dout", case).standard_normal(as_torch(reference)(x).shape)
        right = checked_grads(as_torch(reference), reference, [x], dout, (0,))[0]
        _, cache = m.max_pool_forward_naive(x.copy(), dict(param))
        agree(call(m.max_pool_backward_naive, dout.copy(), cache), right, f"dx in case {case}")
    judge_pool_ties(m)


def judge_pool_ties(m: ModuleType) -> None:
    """Windows with tied maxima (small integers): any one maximum or an even split passes."""
    rng = rng_for("pool-ties", 0)
    x = rng.integers(0, 3, (2, 2, 4, 6)).astype(np.float64)
    dout = rng.standard_normal((2, 2, 2, 3))
    _, cache = m.max_pool_forward_naive(x.copy(), {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = np.asarray(call(m.max_pool_backward_naive, dout.copy(), cache))
    if dx.shape != x.shape:
        raise WrongError(f"dx on tied inputs has shape {dx.shape}, should be {x.shape}")
    rounding = FLOAT32_TOLERANCE if dx.dtype == np.float32 else 1e-12
    for n, c, i, j in np.ndindex(*dout.shape):
        window = x[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        grad = dx[n, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
        top = window == window.max()
        d, close = dout[n, c, i, j], rounding * max(1.0, abs(dout[n, c, i, j]))
        if np.any(np.abs(grad[~top]) > close):
            raise WrongError("on tied inputs, gradient reaches an entry that is not the maximum")
        tied = grad[top]
        one = np.count_nonzero(np.abs(tied) > close) == 1 and abs(tied.sum() - d) <= close
        split = np.all(np.abs(tied - d / top.sum()) <= close)
        if not (one or split):
            raise WrongError(f"a window with {top.sum()} tied maxima passes on {tied.sum() / d:.3g} "
                             f"times its gradient (one maximum or an even split is right)")


def judge_loss(m: ModuleType, name: str, reference: Callable) -> None:
    for case, (n, classes, shift) in enumerate(LOSS_CASES):
        rng = rng_for(name, case)
        x = rng.standard_normal((n, classes)) + shift
        y = rng.integers(0, classes, n)
        loss_ref = reference(y)
        right_loss = float(as_torch(loss_ref)(x))
        right_dx = checked_grads(as_torch(loss_ref), loss_ref, [x], np.array(1.0), (0,))[0]
        loss, dx = call(getattr(m, name), x.copy(), y.copy())
        agree(np.asarray(loss, dtype=np.float64).reshape(()), np.array(right_loss), f"loss in case {case}")
        agree(dx, right_dx, f"dx in case {case}")


def judge_svm_loss(m: ModuleType) -> None:
    judge_loss(m, "svm_loss", ref_svm)


def judge_softmax_loss(m: ModuleType) -> None:
    judge_loss(m, "softmax_loss", ref_softmax)


NORM_SHAPES = {"batch": (6, 5), "layer": (4, 7), "spatial": (3, 4, 5, 2), "group": (2, 6, 3, 4)}
GROUPS = 3


def norm_inputs(kind: str):
    rng = rng_for("norm-" + kind, 0)
    shape = NORM_SHAPES[kind]
    # a small spread, so that eps misplaced is a visible difference
    x = 0.05 * rng.standard_normal(shape) + rng.standard_normal(shape[1])[None].reshape(
        (1, shape[1]) + (1,) * (len(shape) - 2))
    c = shape[1]
    param_shape = (1, c, 1, 1) if kind == "group" else (c,)
    gamma = rng.uniform(0.5, 1.5, param_shape)
    beta = rng.standard_normal(param_shape)
    dout = rng.standard_normal(shape)
    return x, gamma, beta, dout


def call_norm_forward(m: ModuleType, kind: str, x, gamma, beta, param: dict):
    if kind == "batch":
        return call(m.batchnorm_forward, x.copy(), gamma.copy(), beta.copy(), param)
    if kind == "layer":
        return call(m.layernorm_forward, x.copy(), gamma.copy(), beta.copy(), param)
    if kind == "spatial":
        return call(m.spatial_batchnorm_forward, x.copy(), gamma.copy(), beta.copy(), param)
    return call(m.spatial_groupnorm_forward, x.copy(), gamma.copy(), beta.copy(), GROUPS, param)


NORM_REFERENCE = {"batch": ref_batchnorm, "layer": ref_layernorm, "spatial": ref_spatial,
                  "group": ref_group(GROUPS)}


def judge_norm_forward(m: ModuleType, kind: str) -> None:
    x, gamma, beta, _ = norm_inputs(kind)
    param = {"mode": "train", "eps": EPS, "momentum": MOMENTUM}
    if kind in ("batch", "spatial"):
        c = x.shape[1]
        start_mean, start_var = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
        param.update(running_mean=start_mean.copy(), running_var=start_var.copy())
    out, _ = call_norm_forward(m, kind, x, gamma, beta, param)
    agree(out, as_torch(NORM_REFERENCE[kind])(x, gamma, beta), "out")
    if kind not in ("batch", "spatial"):
        return
    axes = (0,) if kind == "batch" else (0, 2, 3)
    agree(np.reshape(param["running_mean"], -1), MOMENTUM * start_mean + (1 - MOMENTUM) * x.mean(axis=axes),
          "running_mean")
    agree(np.reshape(param["running_var"], -1), MOMENTUM * start_var + (1 - MOMENTUM) * x.var(axis=axes),
          "running_var")
    test_param = {"mode": "test", "eps": EPS, "momentum": MOMENTUM,
                  "running_mean": start_mean.copy(), "running_var": start_var.copy()}
    out, _ = call_norm_forward(m, kind, x, gamma, beta, test_param)
    shape = (1, -1) if kind == "batch" else (1, -1, 1, 1)
    right = (gamma.reshape(shape) * (x - start_mean.reshape(shape)) / np.sqrt(start_var.reshape(shape) + EPS)
             + beta.reshape(shape))
    agree(out, right, "test-mode out")


def judge_norm_backward(m: ModuleType, kind: str, name: str) -> None:
    x, gamma, beta, dout = norm_inputs(kind)
    reference = NORM_REFERENCE[kind]
    right = checked_grads(as_torch(reference), reference, [x, gamma, beta], dout, (0, 1, 2))
    param = {"mode": "train", "eps": EPS, "momentum": MOMENTUM}
    _, cache = call_norm_forward(m, kind, x, gamma, beta, param)
    got = call(getattr(m, name), dout.copy(), cache)
    for grad, g, r in zip(("dx", "dgamma", "dbeta"), got, right):
        agree(g, r, grad)


JUDGES: dict[str, Callable[[ModuleType], None]] = {
    "affine_forward": judge_affine_forward, "affine_backward": judge_affine_backward,
    "relu_forward": judge_relu_forward, "relu_backward": judge_relu_backward,
    "dropout_forward": judge_dropout_forward, "dropout_backward": judge_dropout_backward,
    "conv_forward_naive": judge_conv_forward_naive, "conv_backward_naive": judge_conv_backward_naive,
    "max_pool_forward_naive": judge_max_pool_forward_naive,
    "max_pool_backward_naive": judge_max_pool_backward_naive,
    "svm_loss": judge_svm_loss, "softmax_loss": judge_softmax_loss,
    "batchnorm_forward": lambda m: judge_norm_forward(m, "batch"),
    "batchnorm_backward": lambda m: judge_norm_backward(m, "batch", "batchnorm_backward"),
    "batchnorm_backward_alt": lambda m: judge_norm_backward(m, "batch", "batchnorm_backward_alt"),
    "layernorm_forward": lambda m: judge_norm_forward(m, "layer"),
    "layernorm_backward": lambda m: judge_norm_backward(m, "layer", "layernorm_backward"),
    "spatial_batchnorm_forward": lambda m: judge_norm_forward(m, "spatial"),
    "spatial_batchnorm_backward": lambda m: judge_norm_backward(m, "spatial", "spatial_batchnorm_backward"),
    "spatial_groupnorm_forward": lambda m: judge_norm_forward(m, "group"),
    "spatial_groupnorm_backward": lambda m: judge_norm_backward(m, "group", "spatial_groupnorm_backward"),
}


def verdict(m: ModuleType, name: str) -> tuple[str, str]:
    """(pass | fail | error | not implemented, what was seen)."""
    if not callable(getattr(m, name, None)):
        return "not implemented", "no such function"
    try:
        with np.errstate(all="ignore"):
            JUDGES[name](m)
    except (StubError, NotImplementedError) as e:
        return "not implemented", str(e)
    except WrongError as e:
        return "fail", str(e)
    except BrokenReferenceError:
        raise
    except Exception as e:  # the student's own crash
        return "error", f"{type(e).__name__}: {e}"
    return "pass", ""


# ---------------------------------------------------------------------------------------------
# the tests

def load(path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"assignment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ground_truth() -> dict[str, Any]:
    """The table, beside the students."""
    return load(ASSIGNMENT / "ground_truth.py").FILES


TABLE = ground_truth() if ASSIGNMENT.is_dir() else {}


@pytest.fixture(scope="module")
def modules() -> dict[str, ModuleType]:
    return {file: load(ASSIGNMENT / file) for file in TABLE}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The references' tensors are tiny: more threads only contend on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_table_covers_every_file_and_every_function_of_each():
    on_disk = {p.name for p in ASSIGNMENT.glob("*.py")} - {"ground_truth.py"}
    assert on_disk == set(TABLE)
    for file, entry in TABLE.items():
        assert set(entry["functions"]) == set(FUNCTIONS), file


def test_every_verdict_of_the_table_is_a_known_kind_with_a_reason_for_each_slip():
    for file, entry in TABLE.items():
        for name, row in entry["functions"].items():
            assert row["verdict"] in ("pass", "fail", "error", "not implemented"), (file, name)
            if row["verdict"] in ("fail", "error"):
                assert row["slip"] and len(row["reason"].split()) >= 6, (file, name)
                assert row["marker"].startswith("# SLIP:"), (file, name)


def marked_lines(function: Callable) -> list[tuple[int, str]]:
    source, first = inspect.getsourcelines(function)
    return [(first + i, line) for i, line in enumerate(source) if "# SLIP:" in line]


def disagreements(module: ModuleType, file: str, name: str) -> list[str]:
    """What differs between the table's row for `name` and what the references find."""
    row = TABLE[file]["functions"][name]
    got, seen = verdict(module, name)
    if got != row["verdict"]:
        return [f"{name}: {got} ({seen}), table says {row['verdict']}"]
    own = marked_lines(getattr(module, name))
    if row["verdict"] not in ("fail", "error"):
        return [f"{name} carries a slip marker but is not a failure"] if own else []
    holder = row.get("marker_in", name)
    marked = marked_lines(getattr(module, holder))
    if len(marked) != 1:
        return [f"{name}: {holder} has marked lines {marked}"]
    if row["marker"] not in marked[0][1]:
        return [f"{name}: the marker's text differs on {holder}'s line {marked[0][0]}"]
    if holder != name and not (row["slip"] == "from-the-forward" and own == []
                               and TABLE[file]["functions"][holder].get("marker") == row["marker"]):
        return [f"{name}: a slip from {holder} must be called from-the-forward, with {holder}'s marker"]
    return []


@pytest.mark.parametrize("file", list(TABLE))
def test_verdicts_agree_with_the_references_and_each_slip_is_marked_on_its_line(modules, file):
    problems = [p for name in FUNCTIONS for p in disagreements(modules[file], file, name)]
    assert problems == [], f"{file}: " + "; ".join(problems)


def test_every_slip_marker_in_a_file_belongs_to_a_row():
    for file, entry in TABLE.items():
        text = (ASSIGNMENT / file).read_text()
        markers = {row["marker"] for row in entry["functions"].values() if row.get("marker")}
        assert text.count("# SLIP:") == len(markers), file


def test_the_references_tell_a_right_gradient_from_a_wrong_one():
    """The central differences that prove torch's gradients are sharp enough to fail a slip."""
    x, w, b, param = conv_inputs(1)
    reference = ref_conv(param["stride"], param["pad"])
    dout = np.ones(as_torch(reference)(x, w, b).shape)
    exact = torch_grads(reference, [x, w, b], dout, (0,))[0]
    numeric = numeric_grads(as_torch(reference), [x, w, b], dout, (0,))[0]
    assert scaled_error(exact, numeric) < NUMERIC_TOLERANCE
    assert scaled_error(exact * 1.001, numeric) > 100 * NUMERIC_TOLERANCE
