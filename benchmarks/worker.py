"""A timing process: reads one JSON request per line on stdin, answers one JSON line.

Two of these run side by side, one that never imports torch (the engine and the numpy
baselines) and one for torch; the orchestrator in run.py alternates between them.
"""

from __future__ import annotations

import gc
import json
import sys
import time

import numpy as np

from benchmarks import baselines


def _inputs(kind, shape, dtype, cache={}):  # noqa: B006 - a deliberate per-process cache
    """x, gamma, beta, dout (for "hvp": the weight w of the loss sum(out * w)), and a direction
    v of x's shape (used by "hvp")."""
    key = (kind, tuple(shape), dtype)
    if key not in cache:
        cache.clear()  # keep one case's arrays alive at a time
        rng = np.random.default_rng(0)
        features = tuple(shape[1:]) if kind == "layer" else (shape[1],)
        cache[key] = (rng.standard_normal(shape).astype(dtype),
                      (1 + 0.1 * rng.standard_normal(features)).astype(dtype),
                      (0.1 * rng.standard_normal(features)).astype(dtype),
                      rng.standard_normal(shape).astype(dtype),
                      rng.standard_normal(shape).astype(dtype))
    return cache[key]


def _timed(step, reset, reps):
    times = []
    result = None
    for _ in range(reps):
        reset()
        start = time.perf_counter()
        result = step()  # the previous step's result is dropped only after this one
        times.append(time.perf_counter() - start)
    del result
    return {"times": times}


def time_scalar_graph(make, kind, ops, reps):
    """µs per op to build a chain or wide graph of scalars with `make` and backpropagate."""
    build = baselines.chain_graph if kind == "chain" else baselines.wide_graph
    count = (ops // 2) * 2 if kind == "chain" else ops // 2 + ops // 2 - 1
    times = []
    for _ in range(reps):
        # Every repetition starts from an empty collector: the closure engine's reference
        # cycles otherwise leave the next one a collection whose cost depends on the order.
        gc.collect()
        start = time.perf_counter()
        y = build(make, ops)
        y.backward()
        times.append((time.perf_counter() - start) / count * 1e6)
        del y
    return {"us_per_op": times, "gc_enabled": gc.isenabled()}


def _param_shape(shape):
    return (shape[1],) if len(shape) == 2 else (1, shape[1], 1, 1)


class NumpySide:
    """The engine and the plain-numpy baselines (no torch in this process)."""

    def __init__(self):
        import tinygrad_bn as tb

        self.tb = tb
        self.nodes = {}

    def bn(self, impl, kind, shape, dtype, groups, reps):
        x, gamma, beta, dout, direction = _inputs(kind, shape, dtype)
        if kind == "hvp":
            return self.hvp(x, gamma, beta, dout, direction, reps)
        if impl.startswith("engine"):
            tb = self.tb
            staged = impl == "engine_staged"
            # engine_fused: the numpy passes; engine_fused_numba: the compiled ones.
            tb.fast.use_numba(impl == "engine_fused_numba")
            nodes = (tb.Node(x, name="x"), tb.Node(gamma, name="gamma"), tb.Node(beta, name="beta"))
            norm = tb.norm_staged if staged else tb.norm_fused

            def step():
                out = norm(kind, *nodes, groups=groups)
                out.backward(dout)
                return out

            def reset():
                for node in nodes:
                    node.grad = None
        else:
            fn = baselines.numpy_formulas if impl == "numpy_formulas" else baselines.numpy_staged
            g, b = gamma.reshape(_param_shape(shape)), beta.reshape(_param_shape(shape))

            def step():
                return fn(x, g, b, dout)

            def reset():
                pass

        return _timed(step, reset, reps)

    def hvp(self, x, gamma, beta, weight, direction, reps):
        return _timed(self.hvp_step(x, gamma, beta, weight, direction), lambda: None, reps)

    def hvp_step(self, x, gamma, beta, weight, direction):
        """A function giving H v of sum(norm_staged("batch", x) * weight) with respect to x:
        `tb.grad` twice (x (N, D), gamma and beta (D,), weight and direction x's shape)."""
        tb = self.tb
        nodes = (tb.Node(x, name="x"), tb.Node(gamma, name="gamma"), tb.Node(beta, name="beta"))
        w = tb.Node(weight, requires_grad=False)
        v = tb.Node(direction, requires_grad=False)

        def step():
            loss = (tb.norm_staged("batch", *nodes) * w).sum()
            (dx,) = tb.grad(loss, [nodes[0]], create_graph=True)
            return tb.grad((dx * v).sum(), [nodes[0]])[0]

        return step

    def scalar(self, impl, kind, ops, reps):
        make = self.tb.Node if impl == "engine" else baselines.ClosureValue
        return time_scalar_graph(make, kind, ops, reps)

    def bandwidth(self, mbytes):
        """Streaming copy (bytes read + written per second), one thread and two."""
        from concurrent.futures import ThreadPoolExecutor

        source = np.ones(mbytes * (1 << 20) // 8)
        target = np.zeros_like(source)
        half = source.size // 2
        pool = ThreadPoolExecutor(2)

        def two():
            list(pool.map(lambda s: np.copyto(target[s:s + half], source[s:s + half]),
                          (0, half)))

        result = {}
        for name, fn in (("one", lambda: np.copyto(target, source)), ("two", two)):
            fn()
            times = []
            for _ in range(5):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            result[name] = 2 * source.nbytes / min(times) / 1e9
        pool.shutdown()
        return result


class TorchSide:
    """PyTorch CPU, two threads, in a process of its own."""

    def __init__(self):
        import torch

        torch.set_num_threads(2)
        self.torch = torch

    def bn(self, impl, kind, shape, dtype, groups, reps):
        torch = self.torch
        import torch.nn.functional as F  # noqa: N812

        x, gamma, beta, dout, direction = (torch.from_numpy(a.copy())
                                           for a in _inputs(kind, shape, dtype))
        x.requires_grad_(True)
        gamma.requires_grad_(True)
        beta.requires_grad_(True)
        eps = baselines.EPS
        if kind == "hvp":
            return self.hvp(x, gamma, beta, dout, direction, reps)

        def forward():
            if kind == "layer":
                return F.layer_norm(x, tuple(shape[1:]), gamma, beta, eps=eps)
            if kind == "group":
                return F.group_norm(x, groups, gamma, beta, eps=eps)
            return F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)

        times = []
        for _ in range(reps):
            x.grad = gamma.grad = beta.grad = None
            start = time.perf_counter()
            out = forward()
            out.backward(dout)
            times.append(time.perf_counter() - start)
        return {"times": times}

    def hvp(self, x, gamma, beta, weight, direction, reps):
        return _timed(self.hvp_step(x, gamma, beta, weight, direction), lambda: None, reps)

    def hvp_step(self, x, gamma, beta, weight, direction):
        """A function giving H v of sum(F.batch_norm(x) * weight) with respect to x (tensors,
        x requiring its gradient): `autograd.grad` twice."""
        torch = self.torch
        import torch.nn.functional as F  # noqa: N812

        def step():
            out = F.batch_norm(x, None, None, gamma, beta, training=True, eps=baselines.EPS)
            (dx,) = torch.autograd.grad((out * weight).sum(), [x], create_graph=True)
            return torch.autograd.grad((dx * direction).sum(), [x])[0]

        return step

    def scalar(self, impl, kind, ops, reps):
        torch = self.torch

        def make(value):
            return torch.tensor(value, dtype=torch.float64, requires_grad=True)

        return time_scalar_graph(make, kind, ops, reps)


def main() -> None:
    if "--torch" not in sys.argv:
        import tinygrad_bn as tb

        tb.fast.configure()  # as the command line does: large temporaries reuse freed memory
    side = TorchSide() if "--torch" in sys.argv else NumpySide()
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            break
        try:
            answer = getattr(side, command)(**request)
            if "--torch" not in sys.argv:
                answer["torch_loaded"] = "torch" in sys.modules
        except Exception as error:  # reported to the orchestrator, which prints it
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
