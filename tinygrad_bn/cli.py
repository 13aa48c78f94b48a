"""Command line: `tinygrad-bn compare | explain | render | demo` (also `python -m tinygrad_bn`).

The top layer: the only module of the package that uses `viz` (imported where needed).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np

from .compare import compare_batchnorm
from .explain import explain_batchnorm

__all__ = ["main", "build_parser"]


def parse_shape(text: str) -> tuple[int, ...]:
    """'200,50' -> (200, 50); accepts (N, D) and (N, C, H, W)."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape: expected N,D or N,C,H,W, got {text!r}") from None
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise argparse.ArgumentTypeError(
            f"--shape: expected 2 or 4 positive sizes (N,D or N,C,H,W), got {text!r}")
    return shape


def parse_eps(text: str) -> float:
    try:
        eps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--eps: expected a number, got {text!r}") from None
    if not eps > 0:
        raise argparse.ArgumentTypeError(f"--eps: expected a number > 0, got {text!r}")
    return eps


def sample_batch(shape: tuple[int, ...], dtype: str, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The CS231n gradient-check data: x = 5*randn + 12, gamma, beta, dout ~ randn."""
    rng = np.random.default_rng(seed)
    features = shape[1]
    x = 5 * rng.standard_normal(shape) + 12
    gamma = rng.standard_normal(features)
    beta = rng.standard_normal(features)
    dout = rng.standard_normal(shape)
    return tuple(a.astype(dtype) for a in (x, gamma, beta, dout))  # type: ignore[return-value]


def _add_data_options(parser: argparse.ArgumentParser, default_shape: str) -> None:
    parser.add_argument("--shape", type=parse_shape, default=parse_shape(default_shape),
                        help=f"N,D or N,C,H,W (default {default_shape})")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--eps", type=parse_eps, default=1e-5, help="default 1e-5")


def cmd_compare(args: argparse.Namespace) -> int:
    x, gamma, beta, dout = sample_batch(args.shape, args.dtype, args.seed)
    report = compare_batchnorm(x, gamma, beta, dout, eps=args.eps)
    print(report)
    return 0 if report.ok else 1


def cmd_explain(args: argparse.Namespace) -> int:
    x, gamma, beta, dout = sample_batch(args.shape, args.dtype, args.seed)
    print(explain_batchnorm(x, gamma, beta, dout, eps=args.eps))
    return 0


GRAPHS = ("staged", "fused", "compare")
FORMATS = ("svg", "png", "pdf", "dot")


def write_graph(kind: str, shape: tuple[int, ...], dtype: str, seed: int, path: pathlib.Path,
                fmt: str | None, backward: bool) -> pathlib.Path:
    """Build batch norm on sample data, backpropagate, draw it and write it to `path`."""
    import tinygrad_bn as tb
    import viz

    x, gamma, beta, dout = sample_batch(shape, dtype, seed)
    if kind == "compare":
        graph = viz.draw_comparison(x, gamma, beta, dout, backward=backward)
    else:
        fn = tb.batchnorm_staged if kind == "staged" else tb.batchnorm_fused
        nodes = tb.Node(x, name="x"), tb.Node(gamma, name="gamma"), tb.Node(beta, name="beta")
        out = fn(*nodes)
        out.backward(dout)
        graph = viz.draw(out, backward=backward)
    return viz.render(graph, path, fmt)


def cmd_render(args: argparse.Namespace) -> int:
    import viz

    fmt = args.format
    path = args.out
    if path is None:
        path = pathlib.Path("graphs") / f"batchnorm_{args.graph}.{fmt or 'svg'}"
    elif fmt is None and path.suffix.lstrip(".").lower() not in FORMATS:
        fmt = "svg"
        path = path.with_suffix(path.suffix + ".svg") if path.suffix else path.with_suffix(".svg")
    start = time.perf_counter()
    try:
        written = write_graph(args.graph, args.shape, args.dtype, args.seed, path, fmt,
                              args.backward)
    except viz.RenderError as error:
        print(f"tinygrad-bn render: {error}", file=sys.stderr)
        return 1
    backend = "text only" if written.suffix == ".dot" else f"{viz.backend_name()} Graphviz"
    print(f"wrote {written} ({backend}, {time.perf_counter() - start:.2f} s)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    status = 0
    for dtype in ("float64", "float32"):
        print(f"== staged vs fused vs numeric, {dtype} ==")
        status |= cmd_compare(argparse.Namespace(shape=args.shape, dtype=dtype, seed=args.seed,
                                                 eps=1e-5))
        print()
    print("== the staged backward pass, step by step ==")
    cmd_explain(argparse.Namespace(shape=(4, 5), dtype="float64", seed=args.seed, eps=1e-5))
    print()
    folder = args.out_dir
    print(f"== graphs (values, shapes and gradients on every node) written to {folder}/ ==")
    for kind in GRAPHS:
        written = write_graph(kind, args.shape, "float64", args.seed, folder / f"{kind}.svg",
                              None, backward=kind == "staged")
        print(f"  {written}")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinygrad-bn",
        description="Batch norm as a graph of primitives and as one fused op, "
                    "checked against each other and against finite differences.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compare = commands.add_parser(
        "compare", help="staged vs fused vs numeric gradients as a table",
        description="Prints the forward difference staged vs fused and, for dx, dgamma and "
                    "dbeta, the errors staged~fused, staged~numeric and fused~numeric. "
                    "Exits 1 if any exceeds the dtype's tolerance.")
    _add_data_options(compare, "200,50")
    compare.set_defaults(run=cmd_compare)

    explain = commands.add_parser(
        "explain", help="walk the staged backward pass stage by stage",
        description="One row per stage in backward order: op, shape, the gradient arriving, "
                    "what it sends to each parent, and the local derivative.")
    _add_data_options(explain, "4,5")
    explain.set_defaults(run=cmd_explain)

    render = commands.add_parser(
        "render", help="draw the batch-norm graph with values and gradients",
        description="Builds batch norm on sample data, runs backward and draws the graph. "
                    "SVG works without a system Graphviz; png and pdf need `dot` on PATH.")
    render.add_argument("--graph", choices=GRAPHS, default="staged",
                        help="staged graph, fused op, or both side by side (default staged)")
    _add_data_options(render, "4,5")
    render.add_argument("--format", choices=FORMATS, default=None,
                        help="default: from --out's suffix, else svg")
    render.add_argument("--out", type=pathlib.Path, default=None,
                        help="file to write (default graphs/batchnorm_GRAPH.FORMAT)")
    render.add_argument("--backward", action="store_true",
                        help="also draw the backward edges, labelled with gradient norms")
    render.set_defaults(run=cmd_render)

    demo = commands.add_parser("demo", help="compare, explain, and write the graphs",
                               description="The main demonstration: compare in both dtypes, "
                                           "the step-by-step backward trace, and the staged, "
                                           "fused and comparison graphs as SVG.")
    demo.add_argument("--shape", type=parse_shape, default=parse_shape("200,50"),
                      help="batch for compare (default 200,50)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("graphs"),
                      help="folder for the graphs (default graphs)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
