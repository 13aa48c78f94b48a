"""Drawing a Node graph as a Graphviz graph, and saving it."""

from __future__ import annotations

import pathlib
import re
import warnings
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import graphviz
import numpy as np

from tinygrad_bn.check.compare import COLUMNS, compare_normalization
from tinygrad_bn.core.functional import as_operand
from tinygrad_bn.core.node import Constant, Node, graph_nodes, vjp
from tinygrad_bn.files import write_atomic
from tinygrad_bn.norm import STAGE_NAMES, norm_fused, norm_staged

from .backend import FORMATS, render_source
from .labels import escape, join_lines, node_label, role, shape_text

__all__ = ["Graph", "draw", "draw_backward", "draw_comparison", "render"]

STYLE = {
    "output": {"shape": "box", "style": "rounded,filled", "fillcolor": "darkolivegreen1"},
    "op": {"shape": "box", "style": "rounded,filled", "fillcolor": "white"},
    "parameter": {"shape": "box", "style": "filled", "fillcolor": "lightblue"},
    "constant": {"shape": "box", "style": "dashed,filled", "fillcolor": "gray92",
                 "fontcolor": "gray30"},
    "input": {"shape": "box", "style": "filled", "fillcolor": "lightyellow"},  # forward values
    # the upstream gradient a drawn backward pass starts from (dout): an input of that pass
    "upstream": {"shape": "box", "style": "filled", "fillcolor": "lightblue"},
}
# Nodes that belong to one staged normalization besides the ten stages themselves.
STAGE_HELPERS = {"xg", "xhat_c", "gamma_b", "beta_b", "eps", "1"}
MAX_SHARED_USES = 3  # a leaf used more often than this is drawn once per use


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
        self.copies: dict[int, list[str]] = {}  # DOT ids of a node drawn once per use
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

    def _repr_html_(self) -> str:
        # A wide graph scrolls inside the output cell instead of being cut at its right edge.
        svg = self.svg()
        return ('<div style="overflow:auto; max-width:100%; max-height:90vh">'
                + svg[svg.index("<svg"):] + "</div>")

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"image/svg+xml": self.svg(), "text/html": self._repr_html_()}

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


def _parents(node: Node) -> tuple[Node, ...]:
    return node.parents


def _walk(roots: list[Node], stop: Callable[[Node], bool], limit: int | None = None,
          parents_of: Callable[[Node], tuple[Node, ...]] = _parents) -> list[Node]:
    """The nodes the roots depend on, breadth-first from the roots (closest first), not
    walking past a node `stop` accepts; at most `limit` of them."""
    seen = {id(root) for root in roots}
    found = list(roots)
    queue = deque(roots)
    while queue and (limit is None or len(found) < limit):
        node = queue.popleft()
        if stop(node):
            continue
        for parent in parents_of(node):
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
          ids: dict[int, str] | None = None, copies: dict[int, list[str]] | None = None,
          parents_of: Callable[[Node], tuple[Node, ...]] = _parents,
          aliases: dict[int, list[str]] | None = None, leaf_data: bool = True,
          upstream: set[int] | None = None) -> tuple[int, int, int]:
    """Add the graph of `roots` to `digraph` (ids `prefix`0, 1, ...); returns (nodes, edges,
    total). A node `stop` accepts is drawn as an input: its own graph is not walked. ids:
    filled with each drawn node's DOT id, by id() of the Node; copies: filled with the DOT ids
    of the copies of a node drawn once per use. parents_of: a node's parents as drawn (a
    drawing may skip nodes); aliases: other names of a node, shown in its title."""
    stop = stop or (lambda node: False)
    aliases = aliases or {}
    every = sorted(_walk(roots, stop, parents_of=parents_of), key=lambda node: node.creation_number)
    total = len(every)
    kept = every if total <= max_nodes else _walk(roots, stop, max_nodes, parents_of)
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
    # A leaf (or, in a drawn backward pass, a forward value read) that many nodes use is
    # drawn once per use, beside each user: as one node it would be a hub that every edge
    # runs to, and the layout time of a hub grows much faster than its edge count.
    uses = Counter(id(p) for n in kept if not stop(n) for p in parents_of(n))
    per_use = {id(n) for n in kept if id(n) not in outputs and (
        isinstance(n, Constant) or ((n.is_leaf or stop(n)) and uses[id(n)] > MAX_SHARED_USES))}
    subgraphs: dict[str, graphviz.Digraph] = {}
    for node in kept:
        if id(node) in per_use:
            continue  # drawn once per use, beside the node that uses it (below)
        role_of = "input" if stop(node) else "upstream" if id(node) in (upstream or ()) \
            else role(node, id(node) in outputs)
        full = leaf_data or not node.is_leaf
        attrs = {**STYLE[role_of], "class": "titled",
                 "label": node_label(node, role_of, show_data and full, show_grad and full,
                                     aliases.get(id(node)))}
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
        for index, parent in enumerate(parents_of(node)):
            if id(parent) not in ident:
                continue
            edges += 1
            source = ident[id(parent)]
            if id(parent) in per_use:
                source = f"{ident[id(node)]}_c{index}"
                if copies is not None:
                    copies.setdefault(id(parent), []).append(source)
                parent_role = "input" if stop(parent) else "upstream" if id(parent) in (
                    upstream or ()) else role(parent, False)
                digraph.node(source, **STYLE[parent_role], **{"class": "titled"},
                             label=node_label(parent, parent_role, show_data, show_grad))
            # The shape is said where it changes along the edge (broadcast, reduction): an
            # edge between nodes of one shape needs no label.
            label = shape_text(parent.shape) if parent.shape != node.shape else ""
            digraph.edge(source, ident[id(node)], label=label)
            if backward and grads[index] is not None and parent.requires_grad:
                norm = float(np.linalg.norm(grads[index]))
                digraph.edge(ident[id(node)], source, label=f"|grad| {norm:.3g}",
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
            if not stop(node) and any(id(p) not in ident for p in parents_of(node)):
                digraph.edge(summary, ident[id(node)], style="dotted")
    return len(kept), edges, total


def _new_digraph(rankdir: str) -> graphviz.Digraph:
    if rankdir not in ("LR", "TB", "RL", "BT"):
        raise ValueError(f"rankdir: expected 'LR', 'TB', 'RL' or 'BT', got {rankdir!r}")
    digraph = graphviz.Digraph(format="svg")
    digraph.attr(rankdir=rankdir, fontname="Helvetica", nodesep="0.15", ranksep="0.3")
    # A wider margin than Graphviz's default: the embedded renderer estimates text widths
    # (it has no font files), and viewers' fonts run a little wider than its estimate.
    digraph.attr("node", fontname="Helvetica", fontsize="10", margin="0.14,0.05")
    digraph.attr("edge", fontname="Helvetica", fontsize="9")
    return digraph


def draw(root: Node, *, show_data: bool = True, show_grad: bool = True, rankdir: str = "TB",
         max_nodes: int = 300, backward: bool = False, legend: bool = True,
         timeout: float | None = None, params: Any = None) -> Graph:
    """Draw the graph that produced `root`.

    Leaves that require grad (inputs, parameters) are blue, constants grey and dashed (one
    small copy per use), op results white, the output green; a staged normalization's steps
    sit in one cluster; a small key says so (legend=False leaves it out). An edge is
    labelled with the shape that flows along it where that shape changes (broadcasting,
    reductions); backward=True adds dashed red edges pointing back, labelled with the norm
    of the gradient each sends. A graph larger than max_nodes is cut to the max_nodes nodes
    nearest the output plus a note with the counts. rankdir: "TB" (top to bottom, the
    default: legible in a page or notebook column) or "LR", "BT", "RL". timeout: seconds
    the layout may take when rendered (default a few per 100 nodes). params: a module (its
    `named_parameters()`) or a dict {name: Node}, as torchviz's `make_dot`: each parameter's
    node is titled with its path ("layers.0.W") besides its own name.
    """
    if not isinstance(root, Node):
        raise TypeError(f"root: expected a tinygrad_bn Node, got {type(root).__name__}")
    if max_nodes < 1:
        raise ValueError(f"max_nodes: expected a positive number, got {max_nodes!r}")
    digraph = _new_digraph(rankdir)
    ids: dict[int, str] = {}
    copies: dict[int, list[str]] = {}
    names = _parameter_names(params)
    nodes, edges, total = build(digraph, [root], show_data=show_data, show_grad=show_grad,
                                backward=backward, max_nodes=max_nodes, ids=ids, copies=copies,
                                aliases=names)
    if legend:
        add_legend(digraph, backward=backward, below=ids.get(id(root)))
    graph = Graph(digraph, nodes, edges, total)
    graph.ids, graph.copies = ids, copies
    return _with_timeout(graph, timeout)


def _parameter_names(params: Any) -> dict[int, list[str]]:
    """{id(node): [path]} from a module or a {name: Node} mapping (None: no names)."""
    if params is None:
        return {}
    if hasattr(params, "named_parameters"):
        params = dict(params.named_parameters())
    if not hasattr(params, "items"):
        raise TypeError(f"params: expected a module or a dict of name -> Node, got "
                        f"{type(params).__name__}")
    names: dict[int, list[str]] = {}
    for name, node in params.items():
        if not isinstance(node, Node):
            raise TypeError(f"params[{name!r}]: expected a Node, got {type(node).__name__}")
        names.setdefault(id(node), []).append(str(name))
    return names


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
    # A drawn backward pass has no leaf that requires grad: its inputs are forward values.
    entries = ([("forward value read", "input"), ("upstream gradient", "upstream"), *LEGEND[1:]]
               if forward_inputs else list(LEGEND))
    names = []
    for index, (text, entry_role) in enumerate(entries):
        names.append(f"legend{index}")
        key.node(names[-1], label=text, fontsize="8", margin="0.08,0.02", height="0.2",
                 **STYLE[entry_role])
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
    total gradient of a named forward node is named "d" + its name; a node that only
    passes a gradient on (an identity naming it, `x ** 1`) is not drawn, and the node that
    makes the value carries both names ("dvar_eps = dvar"). Raises ValueError for a gradient
    that is not from `output`'s graph.
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
    forward = {id(n) for n in graph_nodes(output)}

    def stop(node: Node) -> bool:
        return node.creation_number <= forward_end

    for index, node in enumerate(roots):
        _check_from(node, index, stop, forward, output)
    through, aliases = _fillers(roots, stop)
    _name_branches(roots, stop, through, aliases)
    upstream = {id(n) for n in _walk(roots, stop) if not stop(n) and n.is_leaf
                and not n.requires_grad and not isinstance(n, Constant)}

    def parents_of(node: Node) -> tuple[Node, ...]:
        return tuple(through.get(id(p), p) for p in node.parents)

    digraph = _new_digraph(rankdir)
    ids: dict[int, str] = {}
    nodes, edges, total = build(digraph, roots, show_data=show_data, show_grad=False,
                                max_nodes=max_nodes, stop=stop, parents_of=parents_of,
                                aliases=aliases, ids=ids, upstream=upstream)
    if legend:  # under the gradient made last (the deepest one), not in the top row
        last = max(roots, key=lambda n: n.creation_number) if roots else None
        add_legend(digraph, forward_inputs=True, below=ids.get(id(last)) if last else None)
    graph = Graph(digraph, nodes, edges, total)
    graph.ids = ids
    return _with_timeout(graph, timeout)


def _check_from(gradient: Node, index: int, stop: Callable[[Node], bool], forward: set[int],
                output: Node) -> None:
    """Raise unless `gradient` may be a backward pass of `output`: made after it, and reading
    no forward value outside output's graph (one that reads none depends on the upstream
    alone, as dbeta = sum(dout))."""
    where = (f"gradients[{index}]: expected a gradient of this output (from tb.grad(output, "
             f"..., create_graph=True))")
    if stop(gradient):
        raise ValueError(f"{where}, got a Node made before the output")
    # (A Constant is shared by every graph that uses its number: it belongs to none.)
    # A backward pass makes no leaf that requires grad (its seed does not): such a leaf, or a
    # forward value outside output's graph, belongs to another graph.
    strangers = [n for n in _walk([gradient], stop)
                 if (stop(n) or (n.is_leaf and n.requires_grad)) and id(n) not in forward
                 and not isinstance(n, Constant)]
    if strangers:
        label = repr(strangers[0].name) if strangers[0].name else f"a {strangers[0].shape} node"
        raise ValueError(f"{where}, got one that reads {label}, which is not in the output's "
                         f"graph")


# Gradients that are the sum of two branch parts, and the parts' names (in the order the
# backward pass adds them: into xmu through xhat, then through the variance; into x through
# xmu, then through mu), as the write-up names them.
BRANCHES = {"dxmu": ("dxmu1", "dxmu2"), "dx": ("dx1", "dx2")}


def _name_branches(roots: list[Node], stop: Callable[[Node], bool], through: dict[int, Node],
                   aliases: dict[int, list[str]]) -> None:
    """Name the two unnamed parts a branch gradient adds (dxmu = dxmu1 + dxmu2)."""
    for node in _walk(roots, stop):
        names = [node.name or "", *aliases.get(id(node), [])]
        base = next((n for n in names if n in BRANCHES), None)
        if base is None or stop(node) or node.op != "add" or len(node.parents) != 2:
            continue
        parts = [through.get(id(p), p) for p in node.parents]
        for part, name in zip(parts, BRANCHES[base]):
            if not stop(part) and name != part.name and name not in aliases.get(id(part), []):
                aliases.setdefault(id(part), []).append(name)  # dxmu is also dx1


def _fillers(roots: list[Node], stop: Callable[[Node], bool]
             ) -> tuple[dict[int, Node], dict[int, list[str]]]:
    """Backward nodes that only pass a value on (an `identity` naming a gradient that is
    another's, `x ** 1`): each mapped to the node it passes on, whose title takes its name."""
    through: dict[int, Node] = {}
    aliases: dict[int, list[str]] = {}
    keep = {id(root) for root in roots}
    for node in sorted(_walk(roots, stop), key=lambda n: n.creation_number):
        filler = node.op == "identity" or (node.op == "pow" and node.params.get("p") == 1)
        if stop(node) or not filler or id(node) in keep:
            continue
        source = node.parents[0]
        source = through.get(id(source), source)
        through[id(node)] = source
        if node.name:
            aliases.setdefault(id(source), []).extend([*aliases.pop(id(node), []), node.name])
    return through, aliases


def draw_comparison(x: Any, gamma: Any, beta: Any, dout: Any = None, *, kind: str = "batch",
                    groups: int | None = None, axis: Any = None, eps: float = 1e-5, seed: int = 0,
                    show_data: bool = True, show_grad: bool = True, rankdir: str = "TB",
                    backward: bool = False, legend: bool = True,
                    timeout: float | None = None, norm: str | None = None) -> Graph:
    """Staged and fused normalization side by side, after one backward pass with `dout`.

    kind: batch (default), spatial, layer or group (with `groups`). x: (N, D) or
    (N, C, H, W); gamma, beta: the feature shape; dout: x's shape (random when None).
    A box shows every column of `compare` (staged~fused, staged~numeric, fused~numeric for
    dx, dgamma and dbeta) and its verdict. `norm=` is the old name of `kind=` (deprecated).
    """
    if norm is not None:
        if kind != "batch" and kind != norm:
            raise TypeError(f"draw_comparison: give kind= alone (norm= is its old name), got "
                            f"kind={kind!r} and norm={norm!r}")
        warnings.warn("draw_comparison: norm= is now kind=", DeprecationWarning, stacklevel=2)
        kind = norm
    x_data = as_operand(x, "x").data
    gamma_data, beta_data = as_operand(gamma, "gamma").data, as_operand(beta, "beta").data
    if dout is None:
        dout = np.random.default_rng(seed).standard_normal(x_data.shape)
    dout = np.asarray(dout, dtype=x_data.dtype)
    digraph = _new_digraph(rankdir)
    counts = [0, 0, 0]
    ids: dict[int, str] = {}
    for variant, fn in (("staged", norm_staged), ("fused", norm_fused)):
        xn = Node(x_data.copy(), name="x")
        gn, bn = Node(gamma_data.copy(), name="gamma"), Node(beta_data.copy(), name="beta")
        out = fn(kind, xn, gn, bn, axis=axis, eps=eps, groups=groups)
        out.backward(dout)
        sub = graphviz.Digraph(name=f"cluster_{variant}")
        title = "staged: primitive ops" if variant == "staged" else "fused: one op, closed-form VJP"
        sub.attr(label=title, style="rounded", color="gray50")
        # The fused side's x, gamma and beta are the staged side's values: said once.
        made = build(sub, [out], prefix=f"{variant}_", show_data=show_data, show_grad=show_grad,
                     backward=backward, max_nodes=300, ids=ids, leaf_data=variant == "staged")
        counts = [c + m for c, m in zip(counts, made)]
        digraph.subgraph(sub)
        if variant == "staged":
            staged_out = ids[id(out)]
    # The fused op's three inputs one above the other (invisible edges), not side by side:
    # the picture stays narrow enough to read in a page column.
    digraph.edge(ids[id(xn)], ids[id(gn)], style="invis")
    digraph.edge(ids[id(gn)], ids[id(bn)], style="invis")
    fused_out = ids[id(out)]
    report = compare_normalization(kind, x_data, gamma_data, beta_data, dout, eps=eps,
                                   groups=groups, axis=axis, seed=seed)
    lines = [f"compare: {report.title}, {report.dtype}", "normwise relative error",
             f"{'':<7}" + "".join(f"{column:>15}" for column in COLUMNS)]
    for name, row in report.errors.items():
        lines.append(f"{name:<7}" + "".join(f"{row[column]:>15.2e}" for column in COLUMNS))
    lines.append(f"tolerance {report.tolerances['pair']:.0e} staged~fused, "
                 f"{report.tolerances['numeric']:.0e} vs numeric")
    lines.append("verdict: " + ("ok" if report.ok else "FAILED"))
    # Under both graphs, not beside them: the picture stays narrow, and no edge runs
    # across the box.
    digraph.node("verdict", label=join_lines(lines), shape="box", style="filled",
                 fillcolor="lightyellow", fontname="Courier", **{"class": "titled"})
    digraph.edge(fused_out, "verdict", style="invis")
    digraph.edge(staged_out, "verdict", style="invis")
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
