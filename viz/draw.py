"""Drawing a Node graph as a Graphviz graph, and saving it."""

from __future__ import annotations

import pathlib
import re
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import graphviz
import numpy as np

from tinygrad_bn.check.compare import COLUMNS, compare_normalization
from tinygrad_bn.core.node import Constant, Node, vjp
from tinygrad_bn.norm import STAGE_NAMES, as_node, norm_fused, norm_staged
from tinygrad_bn.train.files import write_atomic

from .backend import FORMATS, render_source
from .labels import escape, join_lines, kind, node_label, shape_text

__all__ = ["Graph", "draw", "draw_backward", "draw_comparison", "render"]

STYLE = {
    "output": {"shape": "box", "style": "rounded,filled", "fillcolor": "darkolivegreen1"},
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "white"},
    "parameter": {"shape": "box", "style": "filled", "fillcolor": "lightblue"},
    "constant": {"shape": "box", "style": "dashed,filled", "fillcolor": "gray92",
                 "fontcolor": "gray30"},
    "input": {"shape": "box", "style": "filled", "fillcolor": "lightyellow"},  # forward values
}
# Nodes that belong to one staged normalization besides the nine stages themselves.
STAGE_HELPERS = {"xg", "xhat_c", "gamma_b", "beta_b", "eps", "1"}


class Graph:
    """A drawn graph: `.source` is the DOT text, `.digraph` the `graphviz.Digraph`.

    Displays inline in Jupyter (SVG, with or without a system Graphviz); `.render(path)`
    writes svg/png/pdf/dot.
    """

    def __init__(self, digraph: graphviz.Digraph, node_count: int, edge_count: int,
                 total_nodes: int) -> None:
        self.digraph = digraph
        self.node_count = node_count      # nodes drawn (graph nodes, not the summary box)
        self.edge_count = edge_count      # edges drawn between graph nodes
        self.total_nodes = total_nodes    # nodes in the whole Node graph
        self.timeout: float | None = None  # seconds the layout may take (None: by size)
        self.ids: dict[int, str] = {}      # DOT id of each drawn Node, by id() of the Node
        self._svg: str | None = None

    @property
    def source(self) -> str:
        return self.digraph.source

    @property
    def summarized(self) -> bool:
        return self.total_nodes > self.node_count

    def svg(self) -> str:
        """The SVG text (rendered once, then cached)."""
        if self._svg is None:
            svg = render_source(self.source, "svg", timeout=self.timeout, nodes=self.node_count)
            self._svg = bold_titles(svg.decode("utf-8"))
        return self._svg

    def _repr_svg_(self) -> str:
        return self.svg()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.svg()}

    def render(self, path: str | pathlib.Path, format: str | None = None) -> pathlib.Path:  # noqa: A002
        return render(self, path, format)

    def __repr__(self) -> str:
        extra = f" of {self.total_nodes}" if self.summarized else ""
        return f"Graph({self.node_count}{extra} nodes, {self.edge_count} edges)"


_TITLED_NODE = re.compile(r'(<g id="[^"]*" class="node titled">.*?<text)', re.DOTALL)


def bold_titles(svg: str) -> str:
    """Make the first line of each node's label (its name and op) bold.

    Plain labels render the same with the system and the embedded Graphviz (which has no
    HTML-like labels), so the emphasis is added to the SVG afterwards.
    """
    return _TITLED_NODE.sub(r'\1 font-weight="bold"', svg)


def _walk(roots: list[Node], stop: Callable[[Node], bool], limit: int | None = None
          ) -> list[Node]:
    """The nodes the roots depend on, breadth-first from the roots (closest first), not
    walking past a node `stop` accepts; at most `limit` of them."""
    seen = {id(root) for root in roots}
    found = list(roots)
    queue = deque(roots)
    while queue and (limit is None or len(found) < limit):
        node = queue.popleft()
        if stop(node):
            continue
        for parent in node.parents:
            if id(parent) not in seen and (limit is None or len(found) < limit):
                seen.add(id(parent))
                found.append(parent)
                queue.append(parent)
    return found


def _stage_clusters(nodes: list[Node]) -> list[list[Node]]:
    """Each staged normalization's nodes, found from its `out` node back to its inputs."""
    clusters = []
    members = set(STAGE_NAMES) | STAGE_HELPERS
    drawn = {id(n) for n in nodes}
    for node in nodes:
        if node.name != "out" or node.is_leaf:
            continue
        found, queue, seen = [], [node], {id(node)}
        while queue:
            current = queue.pop()
            found.append(current)
            for parent in current.parents:
                if parent.name in members and id(parent) not in seen and id(parent) in drawn:
                    seen.add(id(parent))
                    queue.append(parent)
        if {n.name for n in found} >= set(STAGE_NAMES):
            clusters.append(found)
    return clusters


def _edge_gradients(node: Node) -> list[np.ndarray | None]:
    # The gradient the node's VJP sends to each parent (what flows back along each edge).
    if node.grad is None or node.op_def is None or node.freed or not node.parents:
        return [None] * len(node.parents)
    return list(vjp(node, node.grad))


def build(digraph: graphviz.Digraph, roots: list[Node], *, prefix: str = "n",
          show_data: bool = True, show_grad: bool = True, backward: bool = False,
          max_nodes: int = 300, stop: Callable[[Node], bool] | None = None,
          ids: dict[int, str] | None = None) -> tuple[int, int, int]:
    """Add the graph of `roots` to `digraph` (ids `prefix`0, 1, ...); returns (nodes, edges,
    total). A node `stop` accepts is drawn as an input: its own graph is not walked. ids:
    filled with each drawn node's DOT id, by id() of the Node."""
    stop = stop or (lambda node: False)
    every = sorted(_walk(roots, stop), key=lambda node: node.creation_number)
    total = len(every)
    kept = every if total <= max_nodes else _walk(roots, stop, max_nodes)
    # Stable ids: the position in topological order, not id() (which changes run to run).
    order = {id(n): i for i, n in enumerate(every)}
    ident = {id(n): f"{prefix}{order[id(n)]}" for n in kept}
    if ids is not None:
        ids.update(ident)
    outputs = {id(root) for root in roots}
    clustered: dict[int, str] = {}
    for number, members in enumerate(_stage_clusters(kept)):
        for member in members:
            clustered[id(member)] = f"cluster_{prefix}_norm{number}"
    subgraphs: dict[str, graphviz.Digraph] = {}
    for node in kept:
        if isinstance(node, Constant) and id(node) not in outputs:
            continue  # drawn once per use, beside the node that uses it (below)
        role = "input" if stop(node) else kind(node, id(node) in outputs)
        attrs = {**STYLE[role], "label": node_label(node, role, show_data, show_grad),
                 "class": "titled"}
        cluster = clustered.get(id(node))
        if cluster is None:
            digraph.node(ident[id(node)], **attrs)
            continue
        if cluster not in subgraphs:
            sub = graphviz.Digraph(name=cluster)
            sub.attr(label="staged normalization: one node per step of the diagram",
                     style="rounded,dashed", color="gray40", fontname="Helvetica")
            subgraphs[cluster] = sub
        subgraphs[cluster].node(ident[id(node)], **attrs)
    for sub in subgraphs.values():
        digraph.subgraph(sub)

    edges = 0
    for node in kept:
        if stop(node):
            continue
        grads = _edge_gradients(node) if backward else []
        for index, parent in enumerate(node.parents):
            if id(parent) not in ident:
                continue
            edges += 1
            source = ident[id(parent)]
            if isinstance(parent, Constant):
                # A number may be shared by every step of a graph: one small copy per use
                # keeps it from becoming a hub that every step's edge runs to.
                source = f"{ident[id(node)]}_c{index}"
                digraph.node(source, **STYLE["constant"], **{"class": "titled"},
                             label=node_label(parent, "constant", show_data, show_grad))
            # The shape is said where it changes along the edge (broadcast, reduction): an
            # edge between nodes of one shape needs no label.
            label = shape_text(parent.shape) if parent.shape != node.shape else ""
            digraph.edge(source, ident[id(node)], label=label)
            if backward and grads[index] is not None and parent.requires_grad:
                norm = float(np.linalg.norm(grads[index]))
                digraph.edge(ident[id(node)], ident[id(parent)], label=f"|grad| {norm:.3g}",
                             style="dashed", color="firebrick", fontcolor="firebrick",
                             constraint="false")
    if total > len(kept):
        counts = Counter(n.op or "leaf" for n in every)
        common = ", ".join(f"{op} ×{count}" for op, count in counts.most_common(4))
        text = (f"… {total - len(kept)} more nodes not drawn ({total} in all: {common}); "
                f"raise max_nodes (now {max_nodes}) to draw them")
        summary = f"{prefix}_more"
        digraph.node(summary, label=join_lines([escape(text)]), shape="note", style="filled",
                     fillcolor="lightyellow")
        for node in kept:
            if not stop(node) and any(id(p) not in ident for p in node.parents):
                digraph.edge(summary, ident[id(node)], style="dotted")
    return len(kept), edges, total


def _new_digraph(rankdir: str) -> graphviz.Digraph:
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise ValueError(f"rankdir: expected 'LR', 'TB', 'RL' or 'BT', got {rankdir!r}")
    digraph = graphviz.Digraph(format="svg")
    digraph.attr(rankdir=rankdir, fontname="Helvetica", nodesep="0.2", ranksep="0.35")
    # A wider margin than Graphviz's default: the embedded renderer estimates text widths
    # (it has no font files), and viewers' fonts run a little wider than its estimate.
    digraph.attr("node", fontname="Helvetica", fontsize="10", margin="0.25,0.06")
    digraph.attr("edge", fontname="Helvetica", fontsize="9")
    return digraph


def draw(root: Node, *, show_data: bool = True, show_grad: bool = True, rankdir: str = "TB",
         max_nodes: int = 300, backward: bool = False, legend: bool = True,
         timeout: float | None = None) -> Graph:
    """Draw the graph that produced `root`.

    Leaves that require grad (inputs, parameters) are blue, constants grey and dashed (one
    small copy per use), op results white, the output green; a staged normalization's steps
    sit in one cluster; a small key says so (legend=False leaves it out). An edge is
    labelled with the shape that flows along it where that shape changes (broadcasting,
    reductions); backward=True adds dashed red edges pointing back, labelled with the norm
    of the gradient each sends. A graph larger than max_nodes is cut to the max_nodes nodes
    nearest the output plus a note with the counts. rankdir: "TB" (top to bottom, the
    default: legible in a page or notebook column) or "LR", "BT", "RL". timeout: seconds
    the layout may take when rendered (default a few per 100 nodes).
    """
    if not isinstance(root, Node):
        raise TypeError(f"root: expected a tinygrad_bn Node, got {type(root).__name__}")
    if max_nodes < 1:
        raise ValueError(f"max_nodes: expected a positive number, got {max_nodes!r}")
    digraph = _new_digraph(rankdir)
    ids: dict[int, str] = {}
    nodes, edges, total = build(digraph, [root], show_data=show_data, show_grad=show_grad,
                                backward=backward, max_nodes=max_nodes, ids=ids)
    if legend:
        add_legend(digraph, backward=backward, below=ids.get(id(root)))
    graph = Graph(digraph, nodes, edges, total)
    graph.ids = ids
    return _with_timeout(graph, timeout)


def _with_timeout(graph: Graph, timeout: float | None) -> Graph:
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")
    graph.timeout = timeout
    return graph


LEGEND = (("input or parameter", "parameter"), ("constant", "constant"), ("op result", "op"),
          ("output", "output"))


def add_legend(digraph: graphviz.Digraph, *, backward: bool = False, forward_inputs: bool = False,
               below: str | None = None) -> None:
    """A small key to the colours (and the red backward edges): one row, under node `below`."""
    key = graphviz.Digraph(name="cluster_legend")
    key.attr(label="key", fontsize="9", style="rounded", color="gray70", margin="4")
    entries = list(LEGEND) + ([("forward value read", "input")] if forward_inputs else [])
    names = []
    for index, (text, role) in enumerate(entries):
        names.append(f"legend{index}")
        key.node(names[-1], label=text, fontsize="8", margin="0.08,0.02", height="0.2",
                 **STYLE[role])
    if backward:
        names.append("legend_grad")
        key.node("legend_grad", label="red dashed: |grad| sent back", fontsize="8", shape="plain",
                 fontcolor="firebrick")
    with key.subgraph() as row:  # one rank: the key is a single compact row
        row.attr(rank="same")
        for name in names:
            row.node(name)
    digraph.subgraph(key)
    if below is not None:  # an invisible edge puts the key under that node
        digraph.edge(below, names[0], style="invis")


def draw_backward(gradients: Sequence[Node], output: Node, *, show_data: bool = True,
                  rankdir: str = "TB", max_nodes: int = 300, legend: bool = True,
                  timeout: float | None = None) -> Graph:
    """Draw the backward pass that `tb.grad(output, inputs, create_graph=True)` built.

    gradients: the Nodes it returned (dx, dgamma, ...), drawn as outputs. Every node of their
    graphs is drawn down to the forward pass: the forward values the backward reads (xmu,
    ivar, ...) appear as inputs, with their values, and their own graph is not drawn. The
    total gradient of a named forward node is named "d" + its name.
    """
    roots = list(gradients)
    for index, node in enumerate(roots):
        if not isinstance(node, Node):
            raise TypeError(f"gradients[{index}]: expected a Node (from tb.grad with "
                            f"create_graph=True), got {type(node).__name__}")
    if not isinstance(output, Node):
        raise TypeError(f"output: expected the Node that was differentiated, got "
                        f"{type(output).__name__}")
    forward_end = output.creation_number  # the backward's nodes are all newer than output
    digraph = _new_digraph(rankdir)
    nodes, edges, total = build(digraph, roots, show_data=show_data, show_grad=False,
                                max_nodes=max_nodes,
                                stop=lambda n: n.creation_number <= forward_end)
    if legend:
        add_legend(digraph, forward_inputs=True)  # (several outputs: no single node to hang under)
    return _with_timeout(Graph(digraph, nodes, edges, total), timeout)


def draw_comparison(x: Any, gamma: Any, beta: Any, dout: Any = None, *, norm: str = "batch",
                    groups: int | None = None, axis: Any = None, eps: float = 1e-5, seed: int = 0,
                    show_data: bool = True, show_grad: bool = True, rankdir: str = "TB",
                    backward: bool = False, legend: bool = True,
                    timeout: float | None = None) -> Graph:
    """Staged and fused normalization side by side, after one backward pass with `dout`.

    norm: batch (default), spatial, layer or group (with `groups`). x: (N, D) or
    (N, C, H, W); gamma, beta: the feature shape; dout: x's shape (random when None).
    A box shows every column of `compare` (staged~fused, staged~numeric, fused~numeric for
    dx, dgamma and dbeta) and its verdict.
    """
    x_data = as_node(x, "x").data
    gamma_data, beta_data = as_node(gamma, "gamma").data, as_node(beta, "beta").data
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(x_data.shape)
    dout = np.asarray(dout, dtype=x_data.dtype)
    digraph = _new_digraph(rankdir)
    counts = [0, 0, 0]
    ids: dict[int, str] = {}
    for variant, fn in (("staged", norm_staged), ("fused", norm_fused)):
        xn = Node(x_data.copy(), name="x")
        gn, bn = Node(gamma_data.copy(), name="gamma"), Node(beta_data.copy(), name="beta")
        out = fn(norm, xn, gn, bn, axis=axis, eps=eps, groups=groups)
        out.backward(dout)
        sub = graphviz.Digraph(name=f"cluster_{variant}")
        title = "staged: primitive ops" if variant == "staged" else "fused: one op, closed-form VJP"
        sub.attr(label=title, style="rounded", color="gray50")
        made = build(sub, [out], prefix=f"{variant}_", show_data=show_data, show_grad=show_grad,
                     backward=backward, max_nodes=300, ids=ids)
        counts = [c + m for c, m in zip(counts, made)]
        digraph.subgraph(sub)
    # The fused op's three inputs one above the other (invisible edges), not side by side:
    # the picture stays narrow enough to read in a page column.
    digraph.edge(ids[id(xn)], ids[id(gn)], style="invis")
    digraph.edge(ids[id(gn)], ids[id(bn)], style="invis")
    fused_out = ids[id(out)]
    report = compare_normalization(norm, x_data, gamma_data, beta_data, dout, eps=eps,
                                   groups=groups, axis=axis, seed=seed)
    lines = [f"compare: {report.kind}, {report.dtype}", "normwise relative error",
             f"{'':<7}" + "".join(f"{column:>16}" for column in COLUMNS)]
    for name, row in report.errors.items():
        lines.append(f"{name:<7}" + "".join(f"{row[column]:>16.2e}" for column in COLUMNS))
    lines.append(f"tolerance {report.tolerances['pair']:.0e} staged~fused, "
                 f"{report.tolerances['numeric']:.0e} vs numeric")
    lines.append("verdict: " + ("ok" if report.ok else "FAILED"))
    # Under the fused graph (short), not beside both: the picture stays narrow, and no edge
    # runs across the box.
    digraph.node("verdict", label=join_lines(lines), shape="box", style="filled",
                 fillcolor="lightyellow", fontname="Courier", **{"class": "titled"})
    digraph.edge(fused_out, "verdict", style="invis")
    if legend:
        add_legend(digraph, backward=backward, below="verdict")
    return _with_timeout(Graph(digraph, counts[0], counts[1], counts[2]), timeout)


def render(graph_or_node: Graph | Node, path: str | pathlib.Path,
           format: str | None = None, timeout: float | None = None) -> pathlib.Path:  # noqa: A002
    """Write a Graph (or a Node, drawn with defaults) to `path`; returns the path written.

    format: svg, png, pdf or dot; taken from the file's suffix when None. SVG works without
    a system Graphviz; png and pdf need `dot` on PATH.
    """
    graph = draw(graph_or_node) if isinstance(graph_or_node, Node) else graph_or_node
    if not isinstance(graph, Graph):
        raise TypeError(f"graph_or_node: expected a Graph or a Node, got {type(graph).__name__}")
    if timeout is not None:
        _with_timeout(graph, timeout)
    path = pathlib.Path(path)
    if format is None:
        format = path.suffix.lstrip(".").lower()  # noqa: A001
        if format not in FORMATS:
            raise ValueError(
                f"path: cannot tell the format from the suffix of {str(path)!r}; use one of "
                f".{', .'.join(FORMATS)} or pass format="
            )
    data = graph.svg().encode("utf-8") if format == "svg" else render_source(
        graph.source, format, timeout=graph.timeout, nodes=graph.node_count)
    return write_atomic(path, data)  # whole or not at all
