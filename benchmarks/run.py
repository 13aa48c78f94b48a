"""The benchmark suite: one command, one table, ratios measured in the same run.

    python -m benchmarks.run [--quick | --smoke] [--rounds R] [--markdown PATH]

Forward+backward of the whole normalization family (batch, spatial batch, layer and group
norm) is timed in two fresh worker processes that alternate round by round: one holds the
engine (its numpy passes and its numba-compiled ones) and the plain-numpy baselines and
never imports torch, the other holds PyTorch (when installed). Every figure is given as its
spread over all repetitions (min, median, max); ratios are of minima. A peer whose times
spread too far, or whose time is implausible for the bytes it must move, is flagged
instead of compared. Peak memory is measured in a fresh process per variant.
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
IMPL_TITLES = {"engine_fused": "engine fused (numpy)", "engine_fused_numba": "engine fused (numba)",
               "engine_staged": "engine staged", "numpy_formulas": "numpy formulas",
               "numpy_staged": "numpy staged", "torch": "torch"}
TORCH_FUNCTIONS = {"batch": "F.batch_norm", "spatial": "F.batch_norm", "layer": "F.layer_norm",
                   "group": "F.group_norm", "hvp": "torch.autograd.grad twice"}
BATCH_KINDS = ("batch", "spatial")  # the plain-numpy baselines are the assignment's batch norm
# "hvp": a Hessian-vector product of batch norm through the staged graph (`tb.grad` twice)
HIGHER_ORDER_KINDS = ("hvp",)
UNSTABLE_SPREAD = 2.0  # median / min of a peer's repetitions above which it is not compared
IMPLAUSIBLE_SLOWDOWN = 20.0  # a peer this many times slower than the slowest numpy peer (and > 1 ms)


@dataclass(frozen=True)
class Case:
    """One normalization to time: kind, x's shape, dtype, and the group count for group norm."""

    kind: str
    shape: tuple[int, ...]
    dtype: str
    groups: int | None = None

    @property
    def name(self) -> str:
        groups = f" G={self.groups}" if self.groups else ""
        return f"{self.kind} {'x'.join(map(str, self.shape))}{groups} {self.dtype}"

    @property
    def size(self) -> int:
        size = 1
        for s in self.shape:
            size *= s
        return size

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4


# Each large case has a cache-resident variant (x of 0.5-2 MB, in L2 or L3 on most CPUs): there
# what a pass computes per element decides, not memory bandwidth, on any machine.
FULL_CASES = [Case("batch", (64, 256), "float64"), Case("batch", (64, 256), "float32"),
              Case("batch", (256, 1024), "float64"), Case("batch", (256, 1024), "float32"),
              Case("batch", (1024, 1024), "float32"),
              Case("batch", (4096, 1024), "float64"), Case("batch", (4096, 1024), "float32"),
              Case("batch", (8192, 512), "float64"), Case("batch", (8192, 512), "float32"),
              Case("spatial", (8, 64, 16, 16), "float64"),
              Case("spatial", (8, 64, 16, 16), "float32"),
              Case("spatial", (32, 64, 32, 32), "float64"),
              Case("spatial", (32, 64, 32, 32), "float32"),
              Case("layer", (64, 256), "float32"),
              Case("layer", (256, 1024), "float64"), Case("layer", (256, 1024), "float32"),
              Case("layer", (4096, 1024), "float64"), Case("layer", (4096, 1024), "float32"),
              Case("group", (8, 64, 16, 16), "float64", 8),
              Case("group", (8, 64, 16, 16), "float32", 8),
              Case("group", (32, 64, 32, 32), "float64", 8),
              Case("group", (32, 64, 32, 32), "float32", 8),
              Case("hvp", (256, 512), "float64")]
QUICK_CASES = [Case("batch", (64, 256), "float64"), Case("batch", (256, 1024), "float32"),
               Case("batch", (4096, 1024), "float64"), Case("batch", (4096, 1024), "float32"),
               Case("spatial", (32, 64, 32, 32), "float32"), Case("layer", (256, 1024), "float32"),
               Case("layer", (4096, 1024), "float32"), Case("group", (8, 64, 16, 16), "float32", 8),
               Case("group", (32, 64, 32, 32), "float32", 8), Case("hvp", (256, 512), "float64")]
SMOKE_CASES = [Case("batch", (16, 8), "float64"), Case("batch", (64, 32), "float32"),
               Case("spatial", (4, 3, 4, 4), "float32"), Case("layer", (8, 16), "float32"),
               Case("group", (2, 4, 4, 4), "float64", 2)]


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
        # A session of its own: Ctrl-C reaches the benchmark alone, which ends the worker
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True,
                                        start_new_session=True)

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

    def kill(self) -> None:
        """End the worker now (the run was interrupted)."""
        self.process.kill()
        self.process.wait()

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
    rounds: dict = field(default_factory=dict)        # (case, impl) -> [median of each round]
    scalar: dict = field(default_factory=dict)        # (kind, impl) -> [us per op]
    memory: dict = field(default_factory=dict)        # variant -> arrays of x's size
    bandwidth: dict = field(default_factory=dict)     # "one"/"two" -> GB/s
    torch: bool = False
    numba: bool = False
    seconds: float = 0.0
    load: tuple = ()                                  # load averages at the start and the end


def _impls(case: Case, use_numba: bool) -> list[str]:
    if case.kind in HIGHER_ORDER_KINDS:
        return ["engine_staged"]
    impls = ["engine_fused"] + (["engine_fused_numba"] if use_numba else []) + ["engine_staged"]
    return impls + (["numpy_formulas", "numpy_staged"] if case.kind in BATCH_KINDS else [])


def measure(settings: Settings, use_torch: bool, use_numba: bool, progress=print) -> Results:
    start = time.perf_counter()
    results = Results(torch=use_torch, numba=use_numba)
    load_at_start = _load_average()
    numpy_side = Worker(torch=False)
    torch_side = Worker(torch=True) if use_torch else None
    try:
        results.bandwidth = numpy_side.ask(cmd="bandwidth", mbytes=settings.bandwidth_mb)
        warm = set()
        for round_number in range(settings.rounds):
            progress(f"  round {round_number + 1}/{settings.rounds}")
            for case in settings.cases:
                sides = [(impl, numpy_side) for impl in _impls(case, use_numba)]
                if torch_side is not None:
                    sides.append(("torch", torch_side))
                # Alternate the order each round so no implementation always runs first.
                if round_number % 2:
                    sides.reverse()
                request = {"kind": case.kind, "shape": case.shape, "dtype": case.dtype,
                           "groups": case.groups}
                for impl, side in sides:
                    if (case, impl) not in warm:  # the first call compiles, allocates, warms
                        side.ask(cmd="bn", impl=impl, reps=1, **request)
                        warm.add((case, impl))
                    answer = side.ask(cmd="bn", impl=impl, reps=_reps(settings, case), **request)
                    if answer.get("torch_loaded"):
                        raise RuntimeError("torch was imported into the numpy process")
                    results.times.setdefault(case, {}).setdefault(impl, []).extend(
                        answer["times"])
                    results.rounds.setdefault(case, {}).setdefault(impl, []).append(
                        _median(answer["times"]))
            for kind in ("chain", "wide"):
                scalar_sides = [("engine", numpy_side), ("closure", numpy_side)]
                if torch_side is not None:
                    scalar_sides.append(("torch", torch_side))
                for impl, side in scalar_sides:
                    answer = side.ask(cmd="scalar", impl=impl, kind=kind,
                                      ops=settings.scalar_ops, reps=settings.reps)
                    results.scalar.setdefault(kind, {}).setdefault(impl, []).extend(
                        answer["us_per_op"])
    except BaseException:  # interrupted or failed: the workers end now, without a word
        numpy_side.kill()
        if torch_side is not None:
            torch_side.kill()
        raise
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
    results.load = (load_at_start, _load_average())
    return results


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def round_ratio(rounds: dict, impl: str, peer: str) -> float | None:
    """The median over the rounds of impl's time / peer's time in that round (each a median of
    its repetitions): how the goals are judged, robust to a busy round of either."""
    if impl not in rounds or peer not in rounds:
        return None
    return _median([a / b for a, b in zip(rounds[impl], rounds[peer], strict=False) if b > 0])


def _reps(settings: Settings, case: Case) -> int:
    # Small cases take well under a millisecond: more repetitions per round, so that the
    # first repetition after another implementation (caches cold) does not set the figure.
    return max(settings.reps, min(30, (1 << 21) // case.size))


def _median(values) -> float:
    return statistics.median(values)


def min_bytes(case: Case) -> int:
    """The least memory traffic of forward+backward: x and dout read, out and dx written."""
    return 4 * case.size * case.itemsize


def flag(case: Case, impl: str, by_impl: dict, stream_gbps: float) -> str | None:
    """Why a peer's time is not to be compared (None when it can be)."""
    times = by_impl[impl]
    fastest = min(times)
    if fastest <= 0 or min_bytes(case) / fastest / 1e9 > 2 * stream_gbps:
        return "implausible: faster than memory allows"
    numpy_peers = [min(by_impl[i]) for i in ("numpy_formulas", "numpy_staged", "engine_staged")
                   if i in by_impl and i != impl]
    if numpy_peers and fastest > max(IMPLAUSIBLE_SLOWDOWN * max(numpy_peers), 1e-3):
        return f"implausible: over {IMPLAUSIBLE_SLOWDOWN:.0f}x the slowest numpy peer"
    if len(times) >= 3 and _median(times) > UNSTABLE_SPREAD * fastest:
        return f"unstable: median {_median(times) / fastest:.1f}x its minimum"
    return None


def _spread(times: list[float]) -> str:
    return f"{min(times) * 1e3:.3g} / {_median(times) * 1e3:.3g} / {max(times) * 1e3:.3g}"


class Report(str):
    """The benchmark tables as Markdown text: printed as is, shown as tables in Jupyter."""

    def _repr_markdown_(self) -> str:
        return str(self)


INTRODUCTION = (
    "What is measured: one forward and backward pass of each normalization in training mode "
    "(the output and the gradients of x, gamma and beta): batch norm of (N, D), spatial batch "
    "norm and group norm of (N, C, H, W), layer norm of (N, D). Compared: this engine's fused "
    "op (one node, closed-form backward) on its numpy passes and on its numba-compiled passes "
    "(the default where numba is installed), its staged graph (primitive ops); for batch norm "
    "the same two computations written directly in numpy (the CS231n formulas, and the "
    "ten-stage chain); and PyTorch's `F.batch_norm`, `F.layer_norm`, `F.group_norm` on the "
    "CPU in a fresh process of its own. The hvp case is a Hessian-vector product of batch norm "
    "(the staged graph's gradient of sum(out * w), then the gradient of sum(dx * v), `tb.grad` "
    "twice; torch's `autograd.grad` twice). Rounds alternate between the processes. Then: the "
    "cost per op of small graphs of scalars, and the peak memory of one step."
)


def scalar_row(kind: str, by_impl: dict[str, list[float]]) -> str:
    """One row of the scalar-graph table; its ratio a speed-up like every other ratio: the
    peer's (the closure engine's) time divided by the engine's."""
    engine, closure = by_impl["engine"], by_impl["closure"]
    torch_cell = _us(by_impl["torch"]) if "torch" in by_impl else "n/a"
    return (f"| {kind} | {_us(engine)} | {_us(closure)} | {torch_cell} | "
            f"{min(closure) / min(engine):.2f}x |")


def report(results: Results, settings: Settings, mode: str) -> Report:
    """The tables as Markdown text."""
    impls = (["engine_fused"] + (["engine_fused_numba"] if results.numba else [])
             + ["engine_staged", "numpy_formulas", "numpy_staged"]
             + (["torch"] if results.torch else []))
    stream = max(results.bandwidth.values())
    flags = {}
    lines = [
        INTRODUCTION,
        "",
        f"Forward+backward, training mode: min / median / max ms over {settings.rounds} "
        f"interleaved rounds of {settings.reps} repetitions (up to 30 for the small cases)",
        "",
        "| case | " + " | ".join(IMPL_TITLES[i] for i in impls) + " |",
        "|---|" + "---:|" * len(impls),
    ]
    for case, by_impl in results.times.items():
        cells = []
        for impl in impls:
            if impl not in by_impl:
                cells.append("n/a")
                continue
            why = flag(case, impl, by_impl, stream)
            if why is not None:
                flags[(case, impl)] = why
            cells.append(_spread(by_impl[impl]) + (" (!)" if why else ""))
        lines.append(f"| {case.name} | " + " | ".join(cells) + " |")
    if not results.torch:
        lines += ["", "(PyTorch is not installed in this environment: its column is left out.)"]
    if flags:
        lines += ["", "Flagged (!): a figure to distrust (its ratios below carry the mark too, "
                  "or are left out when the figure is implausible):"]
        lines += [f"- {case.name}, {IMPL_TITLES[impl]}: {why}" for (case, impl), why in
                  flags.items()]
    lines += [
        "",
        f"Streaming bandwidth measured in this run (copy, bytes read + written): "
        f"{results.bandwidth['one']:.1f} GB/s on one core, {results.bandwidth['two']:.1f} GB/s "
        f"on two; the fractions below are of the larger, {stream:.1f} GB/s. Bytes moved: the "
        f"least forward+backward can move (x and dout read, out and dx written). Ratios are of "
        f"minimum times.",
        "",
        "| case | fused (numpy) % of copy bandwidth | fused (numba) % of copy bandwidth "
        "| fused (numpy) vs torch | fused (numba) vs torch | staged vs numpy staged |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, by_impl in results.times.items():
        lines.append(f"| {case.name} | {_fraction(case, by_impl, 'engine_fused', stream)} "
                     f"| {_fraction(case, by_impl, 'engine_fused_numba', stream)} "
                     f"| {_versus(case, by_impl, 'engine_fused', 'torch', flags)} "
                     f"| {_versus(case, by_impl, 'engine_fused_numba', 'torch', flags)} "
                     f"| {_versus(case, by_impl, 'engine_staged', 'numpy_staged', flags)} |")
    lines += ["", "Ratios are speed-ups: the peer's time divided by the engine's (above 1: the "
              "engine is faster).", ""]
    if results.torch:
        lines += [
            "Engine time / torch time: the median over the rounds of the ratio of the two "
            "medians in that round (below 1: the engine is faster; steadier than minima on a "
            "busy machine)",
            "",
            "| case | fused (numba) / torch | fused (numpy) / torch | staged / torch |",
            "|---|---:|---:|---:|",
        ]
        for case, by_impl in results.rounds.items():
            cells = [round_ratio(by_impl, impl, "torch")
                     for impl in ("engine_fused_numba", "engine_fused", "engine_staged")]
            lines.append(f"| {case.name} | "
                         + " | ".join("n/a" if c is None else f"{c:.2f}" for c in cells) + " |")
        lines.append("")

    lines += [
        f"Scalar graphs, build + backward, Python's garbage collector on: min / median / max "
        f"µs per op ({settings.scalar_ops} ops)",
        "",
        "| graph | engine | closure engine (micrograd style) | torch 0-d tensors | closure ÷ engine |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [scalar_row(kind, by_impl) for kind, by_impl in results.scalar.items()]
    memory_shape = "x".join(map(str, settings.memory_shape))
    lines += [
        "",
        f"Peak memory of one batch-norm forward+backward at {memory_shape} float64 above the "
        f"inputs, in arrays of x's size (fresh process each)",
        "",
        "| variant | peak |",
        "|---|---:|",
    ]
    for variant in ("fused", "staged", "staged_free"):
        title = {"staged_free": "staged, backward(free_graph=True)"}.get(variant, variant)
        lines.append(f"| {title} | {results.memory[variant]:.2f} |")
    load = ", ".join("n/a" if value is None else f"{value:.2f}" for value in results.load)
    lines += ["", f"Mode {mode}; measured in {results.seconds:.0f} s; load average (1 min) at "
              f"the start and the end: {load}."]
    return Report("\n".join(lines))


def _fraction(case: Case, by_impl: dict, impl: str, stream: float) -> str:
    if impl not in by_impl:
        return "n/a"
    return f"{min_bytes(case) / min(by_impl[impl]) / 1e9 / stream:.0%}"


def _versus(case: Case, by_impl: dict, impl: str, peer: str, flags: dict) -> str:
    if impl not in by_impl or peer not in by_impl:
        return "n/a"
    why = [flags.get((case, name), "") for name in (impl, peer)]
    if any(reason.startswith("implausible") for reason in why):
        return "n/a (!)"  # a time that cannot be right is not divided by anything
    ratio = f"{min(by_impl[peer]) / min(by_impl[impl]):.2f}x"
    return ratio + " (!)" if any(why) else ratio


def _us(values: list[float]) -> str:
    return f"{min(values):.2f} / {_median(values):.2f} / {max(values):.2f}"


def cpu_description() -> str:
    """The CPU's model, its caches and SIMD width, and the cores this process may use."""
    cpu, flags = platform.processor() or platform.machine(), set()
    family = model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and cpu == (platform.processor() or platform.machine()):
                cpu = value
            elif key == "cpu family" and not family:
                family = value
            elif key == "model" and not model:
                model = value
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if family and model:  # a virtual machine's model name may hide the generation
        cpu = f"{cpu} (family {family}, model {model})"
    caches = []
    for index in sorted(pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip()
                                 for name in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            caches.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    simd = ("AVX-512 (512-bit)" if "avx512f" in flags else "AVX2 (256-bit)" if "avx2" in flags
            else "SSE/NEON (128-bit)" if flags else "unknown SIMD")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [cpu, simd] + ([", ".join(caches)] if caches else [])
    return (f"{'; '.join(parts)}; {os.cpu_count()} logical cores, {usable} available to this "
            f"process")


def machine_description() -> str:
    cpu = cpu_description()
    import numpy

    versions = f"Python {platform.python_version()}, numpy {numpy.__version__}"
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        versions += f", torch {probe.stdout.strip()} (2 threads)"
    return f"{cpu}; {platform.system()} {platform.release()}; {versions}"


def main(argv: list[str] | None = None) -> int:
    from tinygrad_bn.files import check_writable, describe_os_error, write_atomic

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
    print(f"benchmark ({mode}): {len(settings.cases)} normalization cases, {settings.rounds} rounds, "
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
