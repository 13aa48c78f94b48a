"""Command line: `tinygrad-bn compare | explain | render | experiment | demo`.

Also `python -m tinygrad_bn`. The top layer: the only module of the package that uses
`viz` (imported where needed, so the other commands do not load Graphviz).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import NoReturn

import numpy as np

from . import __version__, fast
from .check.compare import compare_normalization
from .check.explain import explain_normalization, format_values
from .files import check_writable, describe_os_error, prepare_folder
from .norm import NORMS, norm_spec

__all__ = ["main", "build_parser", "sample_batch"]

GRAPHS = ("staged", "fused", "compare", "backward")
FORMATS = ("svg", "png", "pdf", "dot")
# Default batch per normalization: (for compare, for explain and render).
DEFAULT_SHAPES = {
    "batch": ((200, 50), (4, 5)),
    "layer": ((200, 50), (4, 5)),
    "spatial": ((2, 3, 4, 5), (2, 3, 4, 5)),
    "group": ((2, 6, 4, 5), (2, 6, 4, 5)),
}
DEFAULT_GROUPS = 2
DEFAULT_FOLDER = pathlib.Path("graphs")  # render's and demo's pictures


# Argument parsers: argparse prefixes each message with "argument --option:", so the
# messages below do not name the option again.
def parse_shape(text: str) -> tuple[int, ...]:
    """'200,50' -> (200, 50); accepts (N, D) and (N, C, H, W)."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N,D or N,C,H,W, got {text!r}") from None
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"expected 2 or 4 positive sizes (N,D or N,C,H,W), got {text!r}")
    return shape


def parse_eps(text: str) -> float:
    try:
        eps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(eps) and eps > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return eps


def parse_seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return seed


def sample_batch(shape: tuple[int, ...], dtype: str, seed: int, kind: str = "batch",
                 groups: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The CS231n gradient-check data: x = 5*randn + 12; gamma, beta (feature shape), dout ~ randn."""
    rng = np.random.default_rng(seed)
    param_shape = norm_spec(kind, shape, groups=groups).param_shape
    x = 5 * rng.standard_normal(shape) + 12
    gamma = rng.standard_normal(param_shape)
    beta = rng.standard_normal(param_shape)
    dout = rng.standard_normal(shape)
    return tuple(a.astype(dtype) for a in (x, gamma, beta, dout))  # type: ignore[return-value]


def _add_data_options(parser: argparse.ArgumentParser, which: int) -> None:
    shapes = ", ".join(f"{k} {','.join(map(str, v[which]))}" for k, v in DEFAULT_SHAPES.items())
    parser.add_argument("--norm", choices=tuple(NORMS), default="batch",
                        help="batch (default), layer, spatial (N,C,H,W batch norm) or group")
    parser.add_argument("--groups", type=int, default=None,
                        help=f"groups for --norm group (default {DEFAULT_GROUPS})")
    parser.add_argument("--shape", type=parse_shape, default=None,
                        help=f"N,D or N,C,H,W (default per norm: {shapes})")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=parse_seed, default=0, help="random seed (default 0)")
    parser.add_argument("--eps", type=parse_eps, default=1e-5, help="default 1e-5")
    parser.set_defaults(shape_slot=which)


def _data(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    """Fill in the per-norm defaults and draw the sample batch (argument errors exit 2)."""
    if args.groups is not None and args.norm != "group":
        raise SystemExit(_usage_error(args, "--groups: only group norm has groups; add "
                                            "--norm group or leave this option out"))
    if args.shape is None:
        args.shape = DEFAULT_SHAPES[args.norm][args.shape_slot]
    if args.norm == "group" and args.groups is None:
        args.groups = DEFAULT_GROUPS
    try:
        return sample_batch(args.shape, args.dtype, args.seed, args.norm, args.groups)
    except ValueError as error:
        # The library's messages name its arguments (groups, x); here they are options.
        message = str(error)
        for name, option in (("groups: ", "--groups: "), ("x: ", "--shape: ")):
            if message.startswith(name):
                message = option + message[len(name):]
        raise SystemExit(_usage_error(args, message)) from None


# Peak bytes per value of x that explain and render take (the staged graph's stages and
# gradients, the drawing's summaries), measured at x (2000, 1000) float64: 140 (render's
# comparison graph, which runs compare, is judged by compare's own estimate).
SAMPLE_MEMORY_PER_VALUE = 256


def _sample_too_large(args: argparse.Namespace) -> int | None:
    """Exit code 2 with one line when --shape's sample data would not fit in memory (before
    any array exists); None when it fits."""
    from .check.compare import _one_two_five_below, available_memory, format_bytes

    if args.shape is None:
        return None
    shape = tuple(args.shape)
    limit = available_memory() // 2
    values = math.prod(shape)
    need = values * SAMPLE_MEMORY_PER_VALUE
    if need <= limit:
        return None
    smaller = list(shape)
    for axis, smallest in ((0, min(2, shape[0])), (len(shape) - 1, 1)):
        while math.prod(smaller) * SAMPLE_MEMORY_PER_VALUE > limit and smaller[axis] > smallest:
            smaller[axis] = max(smallest, _one_two_five_below(smaller[axis] - 1))
    return _usage_error(args, f"--shape: x {shape} has {values:.3g} values; {args.command} needs "
                              f"about {format_bytes(need)}, more than half the memory available "
                              f"now ({format_bytes(limit)}); try --shape "
                              f"{','.join(map(str, smaller))}")


def _usage_error(args: argparse.Namespace, message: str) -> int:
    print(f"tinygrad-bn {args.command}: error: {message}", file=sys.stderr)
    return 2


def _runtime_error(args: argparse.Namespace, message: str) -> int:
    print(f"tinygrad-bn {args.command}: {message}", file=sys.stderr)
    return 1


def cmd_compare_cost(args: argparse.Namespace) -> int | None:
    """Exit code 2 with one line when comparing on --shape would take too much memory or
    time (before a single array is drawn); None when it fits."""
    from .check.compare import compare_cost, format_bytes

    if args.shape is None:
        return None
    _, too_large, smaller = compare_cost(args.shape, args.norm)
    if too_large is None:
        return None
    estimate = format_bytes(compare_cost(smaller, args.norm)[0])
    return _usage_error(args, f"--shape: {too_large}; try --shape "
                              f"{','.join(map(str, smaller))} (about {estimate})")


def cmd_compare(args: argparse.Namespace) -> int:
    too_large = cmd_compare_cost(args)
    if too_large is not None:
        return too_large
    x, gamma, beta, dout = _data(args)
    report = compare_normalization(args.norm, x, gamma, beta, dout, eps=args.eps,
                                   groups=args.groups, progress=progress_printer("numeric check"))
    print(report)
    return 0 if report.ok else 1


def _kernels_ready() -> int:
    """How many compiled signatures the fast kernels hold now (0 without numba): a rise
    while a command runs means it waited for kernels to compile."""
    total = 0
    for name in ("numba_kernels", "numba_small"):
        module = sys.modules.get(f"{__package__}.fast.{name}")
        for value in vars(module).values() if module is not None else ():
            signatures = getattr(value, "signatures", None)
            if isinstance(signatures, list) and hasattr(value, "py_func"):
                total += len(signatures)
    return total


def progress_printer(what: str, after: float = 1.0,
                     kernels: Callable[[], int] = _kernels_ready) -> Callable[[int, int], None]:
    """A progress callback that says how far `what` is, on stderr, about once a second
    once it has taken longer than `after` seconds; time spent compiling the fast kernels
    (an empty compile cache: the first run only) is said to be that."""
    start = time.perf_counter()
    last = start
    ready = kernels()
    told = False

    def show(done: int, total: int) -> None:
        nonlocal last, told
        now = time.perf_counter()
        if not told and kernels() > ready and now - start > after:
            told = True
            print(f"{what}: compiling the fast kernels (first run only; {now - start:.1f} s so "
                  f"far)", file=sys.stderr)
        if now - start > after and (now - last > 1.0 or done == total):
            last = now
            print(f"{what}: {done} of {total} coordinates ({now - start:.1f} s)", file=sys.stderr)

    return show


# The sample data's options and their defaults: with --load the case brings its own data.
_DATA_DEFAULTS = {"norm": "batch", "groups": None, "shape": None, "dtype": "float64", "seed": 0,
                  "eps": 1e-5}


def cmd_explain(args: argparse.Namespace) -> int:
    if getattr(args, "load", None) is not None:
        from .check.explain import explain
        from .grading.casefile import explain_layer_case, is_layer_case
        if is_layer_case(args.load):  # a function other than the normalizations
            try:
                print(explain_layer_case(args.load))
            except OSError as error:
                return _usage_error(args, f"--load: cannot read {args.load}: "
                                          f"{describe_os_error(error)}")
            except ValueError as error:
                return _usage_error(args, "--" + str(error))
            return 0
        given = [name for name, default in _DATA_DEFAULTS.items()
                 if getattr(args, name, default) != default]
        if given:
            return _usage_error(args, f"--{given[0]}: not used with --load (the saved case "
                                      f"brings its own data); leave it out")
        try:
            explanation = explain(load=args.load)
        except OSError as error:
            return _usage_error(args, f"--load: cannot read {args.load}: "
                                      f"{describe_os_error(error)}")
        except (ValueError, TypeError) as error:
            reason = str(error)  # the library's own reason names the file already
            return _usage_error(args, "--" + reason if reason.startswith("load: ") else
                                f"--load: cannot explain {args.load}: {reason}")
    else:
        too_large = _sample_too_large(args)
        if too_large is not None:
            return too_large
        x, gamma, beta, dout = _data(args)
        explanation = explain_normalization(args.norm, x, gamma, beta, dout, eps=args.eps,
                                            groups=args.groups)
    print(explanation)
    if getattr(args, "values", False):
        print()
        print(format_values(explanation))
    return 0


def _print_isolation() -> int:
    from .grading.walls import WALLS, probe_walls

    held = probe_walls()
    print("the box students' code runs in, on this machine:")
    for name, (meaning, _) in WALLS.items():
        print(f"  {'holds  ' if name in held else 'MISSING'}  {name}: {meaning}")
    missing = [name for name in WALLS if name not in held]
    if missing:
        print("what the missing walls need:")
    for name in missing:
        print(f"  {name}: {WALLS[name][1]}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import math

    from .grading.layers import FUNCTIONS, check_layers

    if args.isolation:
        return _print_isolation()
    if not args.path:
        return _usage_error(args, "path: expected your layers.py (or --isolation), got nothing")
    from .grading.student import resolve_source
    try:  # a folder of submissions, not one student's folder (its layers.py checked)
        first = args.path[0]
        folder = first.is_dir() and not (first / "layers.py").is_file() \
            and not (first / "cs231n" / "layers.py").is_file()
    except OSError:  # a name too long, a loop of links: said below, as for a file
        folder = False
    batch = len(args.path) > 1 or folder or args.json is not None or args.gradescope is not None
    if batch:
        return _check_batch(args)
    args.path = args.path[0]
    try:
        if args.path.suffix != ".ipynb" or not args.path.is_file():  # a notebook is read as is
            args.path = resolve_source(args.path)
    except OSError as error:  # no such file, a name too long, a loop of links
        if isinstance(error, FileNotFoundError) and not error.filename:
            return _usage_error(args, f"no such file: {args.path}")
        return _usage_error(args, f"path: cannot read {args.path}: {describe_os_error(error)}")
    except ValueError as error:
        return _usage_error(args, str(error))
    if (args.save_case is not None and args.html is not None
            and os.path.realpath(args.save_case) == os.path.realpath(args.html)):
        return _usage_error(args, f"--html: the same file as --save-case ({args.html}); give "
                                  f"each its own")
    for option, output in (("--save-case", args.save_case), ("--html", args.html)):
        if output is not None:  # before the check, not after it
            try:
                check_writable(output)
            except OSError as error:
                return _runtime_error(args, f"{option}: cannot write {output}: "
                                            f"{describe_os_error(error)}")
    only = None
    if args.only is not None:
        only = [name.strip() for name in args.only.split(",") if name.strip()]
        if not only:
            return _usage_error(args, f"--only: expected comma-separated names among "
                                      f"{', '.join(FUNCTIONS)}, got {args.only!r}")
        unknown = [name for name in only if name not in FUNCTIONS]
        if unknown:
            return _usage_error(args, f"--only: unknown function {', '.join(unknown)} (expected "
                                      f"names among {', '.join(FUNCTIONS)})")
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 86400):
        return _usage_error(args, f"--timeout: expected seconds in (0, 86400], got {args.timeout:g}")
    if not (math.isfinite(args.memory) and 0.1 <= args.memory <= 1024):
        return _usage_error(args, f"--memory: expected GiB in [0.1, 1024], got {args.memory:g}")
    mapping = {}
    for item in args.function:
        name, _, other = item.partition("=")
        if name not in FUNCTIONS or not other.isidentifier():
            return _usage_error(args, f"--function: expected NAME=YOURNAME with NAME among "
                                      f"{', '.join(FUNCTIONS)}, got {item!r}")
        mapping[name] = other
    try:
        report = check_layers(args.path, only=only, seed=args.seed, timeout=args.timeout,
                              memory=int(args.memory * 2**30), functions=mapping)
    except ValueError as error:  # a notebook that is not one
        return _usage_error(args, str(error))
    report.advice = args.save_case is None  # the advice is to do what was just done
    print(report)
    if report.error is not None:
        return 2
    if args.save_case is not None:
        try:
            saved = report.save_case(args.save_case)
        except OSError as error:
            return _runtime_error(args, f"--save-case: cannot write {args.save_case}: "
                                        f"{describe_os_error(error)}")
        print(f"saved the case of {saved} to {args.save_case}" if saved else
              "nothing fails: no case saved")
    if args.html is not None and report.results:
        import viz
        from viz.layer_page import page_function

        shown = page_function(report)
        try:
            viz.check_report_page(report, args.html, function=shown, seed=args.seed,
                                  timeout=args.timeout, memory=int(args.memory * 2**30),
                                  functions=mapping)
        except OSError as error:
            return _runtime_error(args, f"--html: cannot write {args.html}: "
                                        f"{describe_os_error(error)}")
        print(f"wrote {args.html}: {shown} step by step beside the staged backward pass")
    elif args.html is not None:
        print(f"no page written to {args.html}: no function was checked")
    return 0 if report.ok else 1


def _check_options(args: argparse.Namespace) -> dict | int:
    """--only, --timeout, --memory checked: the options of `check_layers`, or an exit code."""
    import math

    from .grading.layers import FUNCTIONS
    only = None
    if args.only is not None:
        only = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in only if name not in FUNCTIONS]
        if not only or unknown:
            return _usage_error(args, f"--only: expected comma-separated names among "
                                      f"{', '.join(FUNCTIONS)}, got {args.only!r}")
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 86400):
        return _usage_error(args, f"--timeout: expected seconds in (0, 86400], got {args.timeout:g}")
    if not (math.isfinite(args.memory) and 0.1 <= args.memory <= 1024):
        return _usage_error(args, f"--memory: expected GiB in [0.1, 1024], got {args.memory:g}")
    return {"only": only, "seed": args.seed, "timeout": args.timeout,
            "memory": int(args.memory * 2**30)}


def _check_batch(args: argparse.Namespace) -> int:
    """Several submissions: each judged in its own boxes, in parallel; a class summary."""
    from .grading.batch import check_many, submissions, write_json

    for option in ("save_case", "html"):
        if getattr(args, option) is not None:
            return _usage_error(args, f"--{option.replace('_', '-')}: one file at a time; give "
                                      f"a single layers.py")
    if args.function:
        return _usage_error(args, "--function: one file at a time; give a single layers.py")
    if args.workers is not None and args.workers < 1:
        return _usage_error(args, f"--workers: expected a positive number, got {args.workers}")
    try:
        missing = [str(p) for p in args.path if not p.exists()]
    except OSError as error:
        return _usage_error(args, f"path: cannot read it: {describe_os_error(error)}")
    if missing:
        return _usage_error(args, f"path: no such file or folder: {', '.join(missing)}")
    options = _check_options(args)
    if isinstance(options, int):
        return options
    files = submissions(args.path)
    if not files:
        return _usage_error(args, "path: " + ", ".join(map(str, args.path))
                            + " holds no layers.py (nor a notebook) below it")
    for option, output in (("--json", args.json), ("--gradescope", args.gradescope)):
        if output is not None:
            try:
                check_writable(output)
            except OSError as error:
                return _runtime_error(args, f"{option}: cannot write {output}: "
                                            f"{describe_os_error(error)}")
    several = len(files) > 1

    def progress(done: int, total: int, report: object) -> None:
        if several:
            counts = report.counts()  # type: ignore[attr-defined]
            state = "cannot be loaded" if report.error is not None else ", ".join(  # type: ignore[attr-defined]
                f"{v} {k}" for k, v in counts.items() if v and k != "absent")
            print(f"[{done}/{total}] {report.source}: {state}", flush=True)  # type: ignore[attr-defined]
        else:
            print(report)

    batch = check_many(files, workers=args.workers, progress=progress, **options)
    if several:
        print(batch.summary_text())
    for option, output, data in (("--json", args.json, batch.to_json),
                                 ("--gradescope", args.gradescope, batch.gradescope)):
        if output is not None:
            try:
                write_json(data(), output)
            except OSError as error:
                return _runtime_error(args, f"{option}: cannot write {output}: "
                                            f"{describe_os_error(error)}")
            print(f"wrote {output}")
    return 0 if all(r.ok for r in batch.reports) else 1


def sample_graph(args: argparse.Namespace, kind: str) -> tuple[object, tuple, np.ndarray]:
    """The staged or fused normalization on the sample batch: (out, (x, gamma, beta), dout)."""
    from .core.node import Node
    from .norm import norm_fused, norm_staged

    x, gamma, beta, dout = _data(args)
    fn = norm_fused if kind == "fused" else norm_staged
    nodes = Node(x, name="x"), Node(gamma, name="gamma"), Node(beta, name="beta")
    return fn(args.norm, *nodes, eps=args.eps, groups=args.groups), nodes, dout


def write_graph(args: argparse.Namespace, kind: str, path: pathlib.Path, fmt: str | None,
                backward: bool) -> pathlib.Path:
    """Build the normalization on sample data, backpropagate, draw it and write it to `path`."""
    import viz

    from .core.node import grad

    if kind == "compare":
        x, gamma, beta, dout = _data(args)
        graph = viz.draw_comparison(x, gamma, beta, dout, kind=args.norm, groups=args.groups,
                                    eps=args.eps, backward=backward)
    elif kind == "backward":  # the staged graph's backward pass, computed as a graph
        out, nodes, dout = sample_graph(args, "staged")
        graph = viz.draw_backward(grad(out, nodes, dout, create_graph=True), out, rankdir="TB")
    else:
        out, _, dout = sample_graph(args, kind)
        out.backward(dout)
        graph = viz.draw(out, backward=backward)
    return viz.render(graph, path, fmt)


def write_stepper(args: argparse.Namespace, kind: str, path: pathlib.Path) -> pathlib.Path:
    """The backward-pass stepper (one HTML page) for the staged or fused graph."""
    import viz

    out, _, dout = sample_graph(args, kind)
    return viz.stepper(out, path, upstream=dout)


def cmd_render(args: argparse.Namespace) -> int:
    import viz

    # Before anything is drawn or made: a sample too large for memory.
    too_large = cmd_compare_cost(args) if args.graph == "compare" else _sample_too_large(args)
    if too_large is not None:
        return too_large
    fmt = args.format
    path = args.out
    known = (*FORMATS, "html")
    if path is None:
        path = DEFAULT_FOLDER / f"{args.norm}norm_{args.graph}.{fmt or 'svg'}"
        try:  # the default folder is made when missing, and said so
            if prepare_folder(DEFAULT_FOLDER):
                print(f"created the folder {DEFAULT_FOLDER}/")
        except OSError as error:
            return _runtime_error(args, f"--out: cannot write {path}: {describe_os_error(error)}")
    else:
        suffix = path.suffix.lstrip(".").lower()
        if suffix and suffix not in known:
            return _usage_error(args, f"--out: unknown suffix {path.suffix!r} (expected one of "
                                      f"{', '.join('.' + k for k in known)})")
        if suffix and fmt is not None and suffix != fmt:
            return _usage_error(args, f"--out: the suffix {path.suffix!r} disagrees with "
                                      f"--format {fmt}; change one of them")
        fmt = fmt or suffix or "svg"
    try:  # before drawing: layout may take seconds
        check_writable(path)
    except OSError as error:
        return _runtime_error(args, f"--out: cannot write {path}: {describe_os_error(error)}")
    if fmt == "html":
        if args.graph not in ("staged", "fused"):
            return _usage_error(args, "--format html: the stepper walks the staged or fused "
                                      f"graph, not --graph {args.graph}")
        start = time.perf_counter()
        try:
            written = write_stepper(args, args.graph, path)
        except OSError as error:
            return _runtime_error(args, f"--out: cannot write {path}: {describe_os_error(error)}")
        print(f"wrote {written} (backward-pass stepper, {time.perf_counter() - start:.2f} s)")
        return 0
    start = time.perf_counter()
    try:
        written = write_graph(args, args.graph, path, fmt, args.backward)
    except viz.RenderError as error:
        return _runtime_error(args, str(error))
    except OSError as error:
        return _runtime_error(args, f"--out: cannot write {path}: {describe_os_error(error)}")
    backend = "text only" if written.suffix == ".dot" else f"{viz.backend_name()} Graphviz"
    print(f"wrote {written} ({backend}, {time.perf_counter() - start:.2f} s)")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from .train.experiment import ExperimentConfig, format_result, run_experiment

    if args.plot is not None:  # before the run, not after it
        try:
            if prepare_folder(args.plot):
                print(f"created the folder {args.plot}/")
        except OSError as error:
            return _usage_error(args, f"--plot: cannot write to {args.plot}: "
                                      f"{describe_os_error(error)}")
    config = ExperimentConfig.quick() if args.quick else ExperimentConfig()
    config = dataclasses.replace(config, seed=args.seed)
    result = run_experiment(config)
    print(format_result(result))
    if args.plot is not None:
        return write_plots(args, result, args.plot, "--plot")
    return 0


def write_plots(args: argparse.Namespace, result: object, folder: pathlib.Path,
                option: str) -> int:
    """Draw the experiment's plots into `folder` (or say how to get matplotlib); the exit
    code: 1, with one line naming `option`, when they cannot be written."""
    from .train.plots import plot_experiment

    try:
        written = plot_experiment(result, folder)
    except ImportError as error:
        print(f"no plots drawn: {error}")
        return 0
    except OSError as error:
        return _runtime_error(args, f"{option}: cannot write to {folder}: "
                                    f"{describe_os_error(error)}")
    print("plots: " + ", ".join(str(path) for path in written))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmarks live beside the package in the source tree, not inside it.
    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / "benchmarks" / "run.py").is_file():
        print("tinygrad-bn bench: the benchmarks ship with the source tree (benchmarks/); "
              "run this from a clone installed with `pip install -e .`", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.run import main as bench_main

    argv = ["--quick"] if args.quick else ["--smoke"] if args.smoke else []
    if args.markdown is not None:
        try:  # before the run, not after it
            check_writable(args.markdown)
        except OSError as error:
            return _usage_error(args, f"--markdown: cannot write {args.markdown}: "
                                      f"{describe_os_error(error)}")
        argv += ["--markdown", str(args.markdown)]
    return bench_main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    import viz

    sized = _namespace(command="demo", shape=args.shape)  # checked first: no work for nothing
    too_large = cmd_compare_cost(sized) or _sample_too_large(sized)
    if too_large is not None:
        return too_large
    folder = args.out_dir
    try:
        if prepare_folder(folder):
            print(f"created the folder {folder}/")
    except OSError as error:
        return _usage_error(args, f"--out-dir: cannot write graphs to {folder}: "
                                  f"{describe_os_error(error)}")
    status = 0
    for dtype in ("float64", "float32"):
        print(f"== staged vs fused vs numeric, {dtype} ==")
        status |= cmd_compare(_namespace(command="compare", shape=args.shape, dtype=dtype,
                                         seed=args.seed, shape_slot=0))
        print()
    print("== the staged backward pass, step by step ==")
    cmd_explain(_namespace(command="explain", shape=args.shape, seed=args.seed, shape_slot=1))
    print()
    folder = args.out_dir
    print(f"== graphs (values, shapes and gradients on every node) written to {folder}/ ==")
    drawing = _namespace(command="render", shape=args.shape, seed=args.seed, shape_slot=1)
    target = folder
    try:
        for kind in GRAPHS:
            target = folder / f"{kind}.svg"
            written = write_graph(drawing, kind, target, None, backward=kind == "staged")
            print(f"  {written}")
        target = folder / "backward_steps.html"
        steps = write_stepper(drawing, "staged", target)
    except OSError as error:
        return _runtime_error(args, f"--out-dir: cannot write {target}: "
                                    f"{describe_os_error(error)}")
    except viz.RenderError as error:
        return _runtime_error(args, str(error))
    print(f"  {steps}  (open it in a browser: the backward pass step by step)")
    print()
    print("== why normalize: the experiment, quick version, plotted ==")
    from .train.experiment import ExperimentConfig, run_experiment

    result = run_experiment(dataclasses.replace(ExperimentConfig.quick(), seed=args.seed))
    return status | write_plots(args, result, folder, "--out-dir")


def _namespace(**overrides: object) -> argparse.Namespace:
    defaults = dict(norm="batch", groups=None, shape=None, dtype="float64", seed=0, eps=1e-5)
    return argparse.Namespace(**{**defaults, **overrides})


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (the usage block is for --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tinygrad-bn",
        description="Batch norm (and layer, spatial and group norm) as a graph of primitives "
                    "and as one fused op, checked against each other and finite differences.",
    )
    parser.add_argument("--version", action="version", version=f"tinygrad-bn {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compare = commands.add_parser(
        "compare", help="staged vs fused vs numeric gradients as a table",
        description="Prints the forward difference staged vs fused and, for dx, dgamma and "
                    "dbeta, the errors staged~fused, staged~numeric and fused~numeric. "
                    "Exits 1 if any exceeds the dtype's tolerance.")
    _add_data_options(compare, 0)
    compare.set_defaults(run=cmd_compare)

    explain = commands.add_parser(
        "explain", help="walk the staged backward pass stage by stage",
        description="One row per stage in backward order: op, shape, the gradient arriving, "
                    "what it sends to each parent, and the local derivative.")
    _add_data_options(explain, 1)
    explain.add_argument("--values", action="store_true",
                         help="also print x, gamma, beta, dout and each stage's value and "
                              "gradient arrays (the numbers to compare with your own prints)")
    explain.add_argument("--load", type=pathlib.Path, default=None, metavar="FILE.npz",
                         help="the case saved by `check --save-case` instead of sample data")
    explain.set_defaults(run=cmd_explain)

    check = commands.add_parser(
        "check", help="judge your own CS231n layers.py against the staged graphs",
        description="Calls each function of the assignment the file defines with the "
                    "assignment's signatures and judges it against the staged graphs; a wrong "
                    "function is traced to the line it departs at, with the known slip it "
                    "matches. Exits 0 when every defined function passes, 1 otherwise, 2 when "
                    "the file cannot be loaded or for a usage error.")
    check.add_argument("path", type=pathlib.Path, nargs="*", default=[],
                       help="your layers.py; several files or folders of submissions: each "
                            "file judged in its own boxes, a class summary printed")
    check.add_argument("--json", type=pathlib.Path, default=None, metavar="FILE.json",
                       help="write every verdict, line, variable and slip as JSON (schema: "
                            "tinygrad_bn.grading.batch.JSON_SCHEMA)")
    check.add_argument("--gradescope", type=pathlib.Path, default=None, metavar="results.json",
                       help="write Gradescope's results.json (one test per function)")
    check.add_argument("--workers", type=int, default=None,
                       help="files checked at once (default: the cores available)")
    check.add_argument("--isolation", action="store_true",
                       help="print the walls of the box students' code runs in, here, and "
                            "which are missing")
    check.add_argument("--only", default=None, help="comma-separated function names")
    check.add_argument("--seed", type=parse_seed, default=0, help="random seed (default 0)")
    check.add_argument("--timeout", type=float, default=60.0,
                       help="seconds each function may take (default 60)")
    check.add_argument("--memory", type=float, default=4.0,
                       help="GiB of address space each function may add to what the checker maps "
                            "(default 4)")
    check.add_argument("--function", action="append", default=[], metavar="NAME=YOURNAME",
                       help="the name a function has in your file, e.g. "
                            "batchnorm_forward=batchnormForward (repeatable)")
    check.add_argument("--save-case", type=pathlib.Path, default=None, metavar="FILE.npz",
                       help="write the first failing function's case (inputs, your outputs, "
                            "every correct stage) for `explain --values --load`")
    check.add_argument("--html", type=pathlib.Path, default=None, metavar="FILE.html",
                       help="write a page stepping through the first failing backward (the "
                            "one --only names) with your variables beside the right values")
    check.set_defaults(run=cmd_check)

    render = commands.add_parser(
        "render", help="draw the graph with values and gradients",
        description="Builds the normalization on sample data, runs backward and draws the "
                    "graph. SVG works without a system Graphviz; png and pdf need `dot`.")
    render.add_argument("--graph", choices=GRAPHS, default="staged",
                        help="staged graph, fused op, both side by side, or the staged graph's "
                             "backward pass as a graph of its own (default staged)")
    _add_data_options(render, 1)
    render.add_argument("--format", choices=(*FORMATS, "html"), default=None,
                        help="default: from --out's suffix, else svg; html writes the "
                             "backward-pass stepper (one page to open in a browser)")
    render.add_argument("--out", type=pathlib.Path, default=None,
                        help="file to write, in a folder that exists (default "
                             "graphs/NORMnorm_GRAPH.FORMAT, the folder made if missing)")
    render.add_argument("--backward", action="store_true",
                        help="also draw the backward edges, labelled with gradient norms")
    render.set_defaults(run=cmd_render)

    experiment = commands.add_parser(
        "experiment", help="why normalization helps: a deep MLP across init scales",
        description="Trains a 6-hidden-layer MLP on generated data without normalization and "
                    "with batch and layer norm across weight-init scales; prints final loss "
                    "and accuracy, and per-layer activation and gradient std at init.")
    experiment.add_argument("--quick", action="store_true", help="3 scales, fewer steps")
    experiment.add_argument("--seed", type=parse_seed, default=0)
    experiment.add_argument("--plot", type=pathlib.Path, default=None, metavar="DIR",
                            help="also draw the per-layer statistics and loss curves (SVG and "
                                 "PNG, with matplotlib) into DIR (made if missing, inside a "
                                 "folder that exists)")
    experiment.set_defaults(run=cmd_experiment)

    bench = commands.add_parser(
        "bench", help="benchmarks against plain numpy and PyTorch",
        description="Batch norm forward+backward at several sizes, scalar-graph overhead and "
                    "peak memory, with the ratios to the peers measured in the same run.")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer cases and rounds (< 1 min)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, to check it runs")
    bench.add_argument("--markdown", type=pathlib.Path, default=None,
                       help="also write the report to this Markdown file")
    bench.set_defaults(run=cmd_bench)

    demo = commands.add_parser("demo", help="compare, explain, and write the graphs",
                               description="The main demonstration: compare in both dtypes, "
                                           "the step-by-step backward trace, and the staged, "
                                           "fused and comparison graphs as SVG.")
    demo.add_argument("--shape", type=parse_shape, default=None,
                      help="batch for compare (default 200,50)")
    demo.add_argument("--seed", type=parse_seed, default=0)
    demo.add_argument("--out-dir", type=pathlib.Path, default=DEFAULT_FOLDER,
                      help="folder for the graphs (default graphs; made if missing, inside a "
                           "folder that exists)")
    demo.set_defaults(run=cmd_demo)
    return parser


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so that every `finally` runs (the checker's box
    kills its processes and removes its folder)."""


def _interrupted(number: int, frame: object) -> None:
    # Further signals would cut the cleanup short: once is enough.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated() if number == signal.SIGTERM else KeyboardInterrupt()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (130 after Ctrl-C, 143 after SIGTERM)."""
    args = build_parser().parse_args(argv)
    fast.configure()  # a program's choice, not the library's: large temporaries reuse memory
    handled = threading.current_thread() is threading.main_thread()
    if handled:
        previous = {s: signal.signal(s, _interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.run(args)
    except (KeyboardInterrupt, Terminated) as signalled:
        handled = False  # the signals stay ignored until the program ends
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        print("interrupted", file=sys.stderr)
        return 143 if isinstance(signalled, Terminated) else 130
    except MemoryError:
        # The sizes are checked before the work starts; this is what is left (memory taken
        # by others meanwhile).
        shape = getattr(args, "shape", None)
        given = f" for x {tuple(shape)}" if shape is not None else ""
        return _runtime_error(args, f"out of memory{given}: try a smaller --shape")
    except BrokenPipeError:
        # The reader went away (`tinygrad-bn explain | head`): stop quietly. Python would
        # otherwise complain again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        if handled:
            for number, handler in previous.items():
                signal.signal(number, handler)


if __name__ == "__main__":
    sys.exit(main())
