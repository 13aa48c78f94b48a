"""The benchmark suite: one command, one table, ratios measured in the same run.

    python -m benchmarks.run [--quick | --smoke] [--rounds R] [--markdown PATH]

Batch norm forward+backward is timed in two worker processes that alternate round by
round: one holds the engine and the plain-numpy baselines and never imports torch, the
other holds PyTorch (when installed). Each figure is the median over all rounds. Peak
memory is measured in a fresh process per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMPY_IMPLS = ("engine_fused", "engine_staged", "numpy_formulas", "numpy_staged")
IMPL_TITLES = {"engine_fused": "engine fused", "engine_fused_numba": "engine fused, numba",
               "engine_staged": "engine staged",
               "numpy_formulas": "numpy formulas", "numpy_staged": "numpy staged",
               "torch": "torch F.batch_norm"}
FULL_CASES = [((64, 256), "float64"), ((64, 256), "float32"),
              ((1024, 1024), "float64"), ((1024, 1024), "float32"),
              ((4096, 1024), "float64"), ((4096, 1024), "float32"),
              ((16384, 512), "float64"), ((16384, 512), "float32"),
              ((32, 64, 32, 32), "float32")]
QUICK_CASES = [((64, 256), "float64"), ((1024, 1024), "float32"), ((4096, 1024), "float64"),
               ((4096, 1024), "float32")]
SMOKE_CASES = [((16, 8), "float64"), ((64, 32), "float32"), ((4, 3, 4, 4), "float32")]


@dataclass
class Settings:
    cases: list
    rounds: int
    reps: int
    scalar_ops: int
    memory_shape: tuple[int, int]
    bandwidth_mb: int


def settings_for(mode: str) -> Settings:
    if mode == "smoke":
        return Settings(SMOKE_CASES, 2, 2, 200, (64, 32), 8)
    if mode == "quick":
        return Settings(QUICK_CASES, 3, 3, 10_000, (4096, 1024), 256)
    return Settings(FULL_CASES, 5, 3, 10_000, (4096, 1024), 512)


class Worker:
    """A timing process driven through JSON lines."""

    def __init__(self, torch: bool) -> None:
        command = [sys.executable, "-m", "benchmarks.worker"] + (["--torch"] if torch else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

    def ask(self, **request) -> dict:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker exited while answering {request}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"benchmark worker failed on {request}: {answer['error']}")
        return answer

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except (RuntimeError, BrokenPipeError, json.JSONDecodeError):
            pass
        self.process.wait(timeout=30)


def importable(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


@dataclass
class Results:
    times: dict = field(default_factory=dict)         # (case, impl) -> [seconds]
    scalar: dict = field(default_factory=dict)        # (kind, impl) -> [us per op]
    memory: dict = field(default_factory=dict)        # variant -> arrays of x's size
    bandwidth: dict = field(default_factory=dict)     # "one"/"two" -> GB/s
    torch: bool = False
    numba: bool = False
    seconds: float = 0.0


def measure(settings: Settings, use_torch: bool, use_numba: bool, progress=print) -> Results:
    start = time.perf_counter()
    results = Results(torch=use_torch, numba=use_numba)
    impls = NUMPY_IMPLS + (("engine_fused_numba",) if use_numba else ())
    numpy_side = Worker(torch=False)
    torch_side = Worker(torch=True) if use_torch else None
    try:
        results.bandwidth = numpy_side.ask(cmd="bandwidth", mbytes=settings.bandwidth_mb)
        warm = set()
        for round_number in range(settings.rounds):
            progress(f"  round {round_number + 1}/{settings.rounds}")
            for shape, dtype in settings.cases:
                case = (shape, dtype)
                sides = [(impl, numpy_side) for impl in impls]
                if torch_side is not None:
                    sides.append(("torch", torch_side))
                # Alternate the order each round so no implementation always runs first.
                if round_number % 2:
                    sides.reverse()
                for impl, side in sides:
                    if (case, impl) not in warm:
                        side.ask(cmd="bn", impl=impl, shape=shape, dtype=dtype, reps=1)
                        warm.add((case, impl))
                    answer = side.ask(cmd="bn", impl=impl, shape=shape, dtype=dtype,
                                      reps=_reps(settings, case))
                    if answer.get("torch_loaded"):
                        raise RuntimeError("torch was imported into the numpy process")
                    results.times.setdefault(case, {}).setdefault(impl, []).extend(
                        answer["times"])
            for kind in ("chain", "wide"):
                scalar_sides = [("engine", numpy_side), ("closure", numpy_side)]
                if torch_side is not None:
                    scalar_sides.append(("torch", torch_side))
                for impl, side in scalar_sides:
                    answer = side.ask(cmd="scalar", impl=impl, kind=kind,
                                      ops=settings.scalar_ops, reps=settings.reps)
                    results.scalar.setdefault(kind, {}).setdefault(impl, []).extend(
                        answer["us_per_op"])
    finally:
        numpy_side.close()
        if torch_side is not None:
            torch_side.close()
    shape_text = ",".join(map(str, settings.memory_shape))
    for variant in ("fused", "staged", "staged_free"):
        output = subprocess.run([sys.executable, "-m", "benchmarks.memory", variant, shape_text],
                                cwd=ROOT, capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        record = json.loads(output.stdout)
        results.memory[variant] = record["peak_bytes"] / record["x_bytes"]
    results.seconds = time.perf_counter() - start
    return results


def _reps(settings: Settings, case) -> int:
    # Small cases take well under a millisecond: more repetitions per round, so that the
    # first repetition after another implementation (caches cold) does not set the median.
    return max(settings.reps, min(30, (1 << 21) // _size(case)))


def _median(values) -> float:
    return statistics.median(values)


def _case_name(case) -> str:
    shape, dtype = case
    return f"{'x'.join(map(str, shape))} {dtype}"


def _size(case) -> int:
    shape, _ = case
    size = 1
    for s in shape:
        size *= s
    return size


def _itemsize(dtype: str) -> int:
    return 8 if dtype == "float64" else 4


class Report(str):
    """The benchmark tables as Markdown text: printed as is, shown as tables in Jupyter."""

    def _repr_markdown_(self) -> str:
        return str(self)


INTRODUCTION = (
    "What is measured: one forward and backward pass of batch norm in training mode (the "
    "output and the gradients of x, gamma and beta) for several batch shapes. Compared: "
    "this engine's fused op (one node, closed-form backward) and staged graph (ten primitive "
    "ops); the same two computations written directly in numpy (the CS231n formulas, and "
    "the nine-step chain); the engine with its optional numba-compiled passes; and "
    "PyTorch's `F.batch_norm` on the CPU in a process of its own. Rounds alternate between "
    "the processes and each figure is a median. Then: the cost per op of small graphs of "
    "scalars, and the peak memory of one step."
)


def report(results: Results, settings: Settings, mode: str) -> Report:
    """The tables as Markdown text."""
    impls = (list(NUMPY_IMPLS) + (["engine_fused_numba"] if results.numba else [])
             + (["torch"] if results.torch else []))
    stream = max(results.bandwidth.values())
    lines = [
        INTRODUCTION,
        "",
        f"Batch norm forward+backward, training mode: median ms over {settings.rounds} "
        f"interleaved rounds of {settings.reps} repetitions (up to 30 for the small cases)",
        "",
        "| case | " + " | ".join(IMPL_TITLES[i] for i in impls) + " |",
        "|---|" + "---:|" * len(impls),
    ]
    for case, by_impl in results.times.items():
        cells = [f"{_median(by_impl[i]) * 1e3:.2f}" if i in by_impl else "n/a" for i in impls]
        lines.append(f"| {_case_name(case)} | " + " | ".join(cells) + " |")
    if not results.torch:
        lines.append("")
        lines.append("(PyTorch is not installed in this environment: its column is left out.)")
    if results.numba:
        lines.append("")
        lines.append("The numba column is the optional compiled accelerator "
                     "(`tinygrad_bn.fast.use_numba()`); the other engine columns are the "
                     "default, pure-numpy engine.")
    lines += [
        "",
        f"Streaming bandwidth measured in this run (copy, bytes read + written): "
        f"{results.bandwidth['one']:.1f} GB/s on one core, {results.bandwidth['two']:.1f} GB/s "
        f"on two; the fraction below is of the larger, {stream:.1f} GB/s.",
        "",
        "| case | fused GB/s | fused % of stream | fused vs torch | fused vs numpy formulas "
        "| staged vs numpy staged | numba fused: GB/s, vs torch |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for case, by_impl in results.times.items():
        (shape, dtype) = case
        fused = _median(by_impl["engine_fused"])
        bytes_moved = 4 * _size(case) * _itemsize(dtype)
        gbps = bytes_moved / fused / 1e9
        vs_formulas = _median(by_impl["numpy_formulas"]) / fused
        vs_staged = _median(by_impl["numpy_staged"]) / _median(by_impl["engine_staged"])
        torch_cell = f"{_median(by_impl['torch']) / fused:.2f}x" if "torch" in by_impl else "n/a"
        numba_cell = "n/a"
        if "engine_fused_numba" in by_impl:
            compiled = _median(by_impl["engine_fused_numba"])
            numba_cell = (f"{bytes_moved / compiled / 1e9:.1f} GB/s "
                          f"({bytes_moved / compiled / 1e9 / stream:.0%})")
            if "torch" in by_impl:
                numba_cell += f", {_median(by_impl['torch']) / compiled:.2f}x"
        lines.append(f"| {_case_name(case)} | {gbps:.1f} | {gbps / stream:.0%} | {torch_cell} | "
                     f"{vs_formulas:.2f}x | {vs_staged:.2f}x | {numba_cell} |")
    lines += ["", "Ratios are speed-ups: the peer's time divided by the engine's (above 1: the "
              "engine is faster).", ""]

    lines += [
        f"Scalar graphs, build + backward, Python's garbage collector on: median µs per op "
        f"({settings.scalar_ops} ops)",
        "",
        "| graph | engine | closure engine (micrograd style) | torch 0-d tensors | engine vs closure |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, by_impl in results.scalar.items():
        engine = _median(by_impl["engine"])
        closure = _median(by_impl["closure"])
        torch_cell = f"{_median(by_impl['torch']):.2f}" if "torch" in by_impl else "n/a"
        lines.append(f"| {kind} | {engine:.2f} | {closure:.2f} | {torch_cell} | "
                     f"{engine / closure:.2f} |")
    memory_shape = "x".join(map(str, settings.memory_shape))
    lines += [
        "",
        f"Peak memory of one forward+backward at {memory_shape} float64 above the inputs, "
        f"in arrays of x's size (fresh process each)",
        "",
        "| variant | peak |",
        "|---|---:|",
    ]
    for variant in ("fused", "staged", "staged_free"):
        title = {"staged_free": "staged, backward(free_graph=True)"}.get(variant, variant)
        lines.append(f"| {title} | {results.memory[variant]:.2f} |")
    lines += ["", f"Mode {mode}; measured in {results.seconds:.0f} s."]
    return Report("\n".join(lines))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy

    versions = f"Python {platform.python_version()}, numpy {numpy.__version__}"
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        versions += f", torch {probe.stdout.strip()} (2 threads)"
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; {versions}"


def main(argv: list[str] | None = None) -> int:
    from tinygrad_bn.train.files import check_writable, describe_os_error, write_atomic

    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer cases and rounds (< 1 min)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-numba", action="store_true", help="skip the numba column")
    parser.add_argument("--markdown", type=pathlib.Path, default=None,
                        help="also write the report, with the machine and command, to this file")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        try:  # before the run, not after it
            check_writable(args.markdown)
        except OSError as error:
            parser.error(f"--markdown: cannot write {args.markdown}: {describe_os_error(error)}")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = settings_for(mode)
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error(f"--rounds: expected a positive number, got {args.rounds}")
        settings.rounds = args.rounds
    use_torch = not args.no_torch and importable("torch")
    use_numba = not args.no_numba and importable("numba")
    print(f"benchmark ({mode}): {len(settings.cases)} batch-norm cases, {settings.rounds} rounds, "
          f"torch {'on' if use_torch else 'not installed' if not args.no_torch else 'off'}, "
          f"numba {'on' if use_numba else 'not installed' if not args.no_numba else 'off'}",
          flush=True)
    results = measure(settings, use_torch, use_numba,
                      progress=lambda text: print(text, flush=True))
    text = report(results, settings, mode)
    print()
    print(f"Machine: {machine_description()}.")
    print()
    print(text)
    if args.markdown is not None:
        command = "python -m benchmarks.run" + (f" --{mode}" if mode != "full" else "")
        header = (f"# Benchmark results\n\nMachine: {machine_description()}.\n\n"
                  f"Command: `{command}` (the same as `tinygrad-bn bench`"
                  f"{' --' + mode if mode != 'full' else ''}).\n\n")
        try:
            write_atomic(args.markdown, header + text + "\n")  # whole or not at all
        except OSError as error:
            print(f"benchmarks.run: --markdown: cannot write {args.markdown}: "
                  f"{describe_os_error(error)}", file=sys.stderr)
            return 1
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
