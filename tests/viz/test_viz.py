"""Rendering: the SVG says what the graph is, labels are escaped, big graphs are cut, both
backends work."""

import pathlib
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter

import numpy as np
import pytest

import tinygrad_bn as tb
import viz
from tinygrad_bn.cli import main as cli_main
from tinygrad_bn.cli import sample_batch

SVG = "{http://www.w3.org/2000/svg}"
ROOT = pathlib.Path(__file__).resolve().parents[2]
HAVE_DOT = shutil.which("dot") is not None


@pytest.fixture
def no_system_dot(monkeypatch, tmp_path):
    """A PATH without Graphviz, so the embedded renderer is used."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("dot") is None
    assert viz.backend_name() == "embedded"


def text_px_at(svg: str, window: float) -> float:
    """The smallest node text, in px, of the SVG shown at most `window` px wide (a browser
    draws 1 pt as 4/3 px, and scales a wider picture down to the window)."""
    width_pt = float(re.search(r'width="([\d.]+)pt"', svg).group(1))
    scale = min(1.0, window / (width_pt * 4 / 3))
    sizes = [float(t.get("font-size")) for g in groups(svg, "titled") for t in g.iter(f"{SVG}text")]
    return min(sizes) * 4 / 3 * scale


def texts(svg: str) -> list[str]:
    return ["".join(t.itertext()) for t in ET.fromstring(svg).iter(f"{SVG}text")]


def groups(svg: str, cls: str) -> list[ET.Element]:
    return [g for g in ET.fromstring(svg).iter(f"{SVG}g")
            if cls in (g.get("class") or "").split()]


def staged_graph(backward: bool = True):
    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal((6, 4)), name="x")
    gamma, beta = tb.Node(np.ones(4), name="gamma"), tb.Node(np.zeros(4), name="beta")
    out = tb.batchnorm_staged(x, gamma, beta)
    if backward:
        out.backward(rng.standard_normal((6, 4)))
    return out


def check_staged_svg(svg: str, out: tb.Node) -> None:
    lines = texts(svg)
    for stage in tb.STAGE_NAMES:
        titles = [t for t in lines if t.startswith(stage + ": ")]
        assert len(titles) == 1, (stage, titles)
    nodes = tb.graph_nodes(out)
    # A constant (eps, 1) is drawn once per use, so it is never a hub.
    drawn = [n for n in nodes if not isinstance(n, tb.Constant)]
    constant_uses = sum(isinstance(p, tb.Constant) for n in nodes for p in n.parents)
    assert constant_uses == 2
    assert len(groups(svg, "node")) == len(drawn) + constant_uses
    assert len(groups(svg, "edge")) == sum(len(n.parents) for n in nodes)
    # Every drawn node's title is bold.
    bold = [t for t in ET.fromstring(svg).iter(f"{SVG}text") if t.get("font-weight") == "bold"]
    assert len(bold) == len(drawn) + constant_uses


def test_staged_svg_with_embedded_renderer(no_system_dot):
    out = staged_graph()
    svg = viz.draw(out, legend=False).svg()
    check_staged_svg(svg, out)
    lines = texts(svg)
    assert sum(t.startswith("grad ") for t in lines) >= len(tb.STAGE_NAMES)
    assert "staged normalization: one node per step of the diagram" in lines
    assert "6×4" in lines and "1×4" in lines  # shapes on the edges


@pytest.mark.skipif(not HAVE_DOT, reason="no system Graphviz (`dot`) on PATH")
def test_staged_svg_and_png_with_system_dot(tmp_path):
    out = staged_graph()
    assert viz.backend_name() == "system"
    check_staged_svg(viz.draw(out, legend=False).svg(), out)
    png = viz.render(out, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = viz.render(viz.draw(out), tmp_path / "g", format="pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_gradient_summaries_follow_show_grad(no_system_dot):
    before = staged_graph(backward=False)
    lines = texts(viz.draw(before).svg())
    assert "grad: not computed" in lines
    after = staged_graph()
    assert not any(t.startswith("grad") for t in texts(viz.draw(after, show_grad=False).svg()))
    assert not any(t.startswith("value") for t in texts(viz.draw(after, show_data=False).svg()))


def test_backward_edges_carry_gradient_norms(no_system_dot):
    out = staged_graph()
    svg = viz.draw(out, backward=True, legend=False).svg()
    forward_edges = sum(len(n.parents) for n in tb.graph_nodes(out))
    norms = [t for t in texts(svg) if t.startswith("|grad| ")]
    # One backward edge per edge into a node that requires grad (constants get none).
    expected = sum(1 for n in tb.graph_nodes(out) for p in n.parents if p.requires_grad)
    assert len(norms) == expected and len(groups(svg, "edge")) == forward_edges + expected
    xmu = tb.stages(out)["xmu"]
    assert f"|grad| {np.linalg.norm(xmu.grad):.3g}" in norms


def test_comparison_names_each_gradient_with_its_verdict(no_system_dot):
    rng = np.random.default_rng(0)
    graph = viz.draw_comparison(rng.standard_normal((5, 3)), np.ones(3), np.zeros(3))
    lines = texts(graph.svg())
    (header,) = [t for t in lines if "staged~fused" in t and "fused~numeric" in t]
    assert "staged~numeric" in header
    for grad in ("dx", "dgamma", "dbeta"):
        (row,) = [t for t in lines if t.split() and t.split()[0] == grad]
        assert len(row.split()) == 4 and all(float(v) < 1e-8 for v in row.split()[1:])
    assert "verdict: ok" in lines
    assert "staged: primitive ops" in lines and "fused: one op, closed-form VJP" in lines
    assert any(t.startswith("batchnorm") for t in lines)


@pytest.mark.parametrize("backend", ["embedded", "system"])
def test_labels_are_escaped(backend):
    if backend == "system" and not HAVE_DOT:
        pytest.skip("no system Graphviz (`dot`) on PATH")
    name = 'a"b\\c{d}<e>\n|f'
    x = tb.Node(np.ones(3), name=name)
    graph = viz.draw((x * 2).sum())
    svg = viz.render_source(graph.source, "svg", backend=backend).decode()
    titles = [t for t in texts(svg) if t.startswith("a")]
    assert titles == ['a"b\\c{d}<e> |f: input']


def test_long_names_are_cut():
    x = tb.Node(np.ones(2), name="n" * 500)
    source = viz.draw(x * 1).source
    assert "n" * 31 + "…" in source and "n" * 32 not in source


def test_large_graph_is_summarized_promptly(no_system_dot):
    x = tb.Node(1.0, name="x")
    y = x
    for _ in range(10_000):  # 20,000 op nodes; the two constants are shared nodes
        y = y * 1.0001 + 0.5
    graph = viz.draw(y, max_nodes=100, legend=False)
    assert graph.summarized and graph.node_count == 100 and graph.total_nodes == 20_003
    assert "raise max_nodes (now 100)" in graph.source and "20003 in all" in graph.source
    svg = graph.svg()
    # The kept op nodes, one copy of a shared constant per use among them, the summary note.
    assert len(groups(svg, "node")) == 100 + 96 + 1


def test_a_shared_constant_is_never_a_hub():
    for steps in (10, 100):
        x = tb.Node(1.0, name="x")
        y = x
        for _ in range(steps):
            y = (y * 0.9 + 0.1).tanh()
        source = viz.draw(y, max_nodes=1000, legend=False).source
        heads = re.findall(r"^\s*(\S+) -> (\S+)", source, flags=re.M)
        degree = Counter(end for edge in heads for end in edge)
        assert max(degree.values()) <= 3, degree.most_common(3)  # does not grow with steps


def test_render_paths_and_formats(tmp_path, no_system_dot):
    out = staged_graph()
    with pytest.raises(FileNotFoundError, match="no folder .*deep/folder"):  # never made
        viz.render(out, tmp_path / "deep" / "folder" / "g.svg")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "deep" / "folder").mkdir(parents=True)
    written = viz.render(out, tmp_path / "deep" / "folder" / "g.svg")
    assert written.exists() and ET.fromstring(written.read_text()).tag == f"{SVG}svg"
    dot = viz.render(viz.draw(out), tmp_path / "g.dot")
    assert dot.read_text().startswith("digraph {")
    with pytest.raises(viz.RenderError, match="needs a system Graphviz.*render to .svg"):
        viz.render(out, tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()
    with pytest.raises(ValueError, match="path: cannot tell the format"):
        viz.render(out, tmp_path / "g.jpeg")
    with pytest.raises(ValueError, match="format: expected one of svg, png, pdf, dot, got 'gif'"):
        viz.render(out, tmp_path / "g", format="gif")
    with pytest.raises(TypeError, match="root: expected a tinygrad_bn Node"):
        viz.draw(np.ones(3))


def test_notebook_display_without_system_graphviz(no_system_dot):
    graph = viz.draw(staged_graph())
    bundle = graph._repr_mimebundle_()
    assert bundle["image/svg+xml"].lstrip().startswith("<?xml")
    assert graph._repr_svg_() == bundle["image/svg+xml"]


def test_node_ids_are_stable():
    assert viz.draw(staged_graph()).source == viz.draw(staged_graph()).source


def test_cli_render_and_demo(tmp_path, no_system_dot, capsys):
    target = tmp_path / "out" / "compare.svg"
    assert cli_main(["render", "--graph", "compare", "--out", str(target)]) == 1
    assert f"--out: cannot write {target}: no folder {tmp_path / 'out'}" in capsys.readouterr().err
    target.parent.mkdir()
    assert cli_main(["render", "--graph", "compare", "--out", str(target)]) == 0
    assert target.exists() and "embedded Graphviz" in capsys.readouterr().out
    assert cli_main(["render", "--format", "png", "--out", str(tmp_path / "g.png")]) == 1
    assert "needs a system Graphviz" in capsys.readouterr().err
    assert cli_main(["demo", "--shape", "8,4", "--out-dir", str(tmp_path / "demo")]) == 0
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [
        "backward.svg", "backward_steps.html", "compare.svg", "fused.svg", "init_statistics.png",
        "init_statistics.svg", "staged.svg", "training_loss.png", "training_loss.svg"]
    said = capsys.readouterr().out
    assert f"created the folder {tmp_path / 'demo'}/" in said
    assert f"written to {tmp_path / 'demo'}/" in said


@pytest.mark.parametrize("norm", ["layer", "spatial", "group"])
def test_render_every_norm(tmp_path, no_system_dot, norm):
    target = tmp_path / f"{norm}.svg"
    assert cli_main(["render", "--norm", norm, "--graph", "compare", "--out", str(target)]) == 0
    lines = texts(target.read_text())
    assert any(t.startswith("xhat: mul") for t in lines)
    fused_name = {"layer": "layernorm", "spatial": "batchnorm", "group": "groupnorm"}[norm]
    assert any(t.startswith(fused_name) for t in lines)
    assert "verdict: ok" in lines


def test_freed_graph_draws_without_backward_edges(no_system_dot):
    x = tb.Node(np.ones(3), name="x")
    out = (-(x * 2)).sum()
    full = viz.draw(out, backward=True, legend=False)
    assert sum(t.startswith("|grad| ") for t in texts(full.svg())) == 0  # not run yet
    out.backward()
    drawn = viz.draw(out, backward=True, legend=False).svg()
    assert sum(t.startswith("|grad| ") for t in texts(drawn)) == 3
    out.backward(free_graph=True)
    assert viz.draw(out, backward=True).node_count == 1


def test_labels_say_what_a_learner_needs(no_system_dot):
    x = tb.Node(np.array([1.0001, 2.0]), name="x")
    out = ((x ** 3).mean(axis=0) + x.sum()).named("total")
    lines = texts(viz.draw(out).svg())
    assert "value [1.0001, 2]" in lines            # 1.0001 is not shown as 1
    assert any(t.startswith("pow ^3") for t in lines)
    assert any(t.startswith("mean axis=0") for t in lines)
    assert any(t.startswith("sum axis=0") for t in lines)


def test_a_legend_by_default_and_none_on_request(no_system_dot):
    out = staged_graph(backward=True)
    with_key = texts(viz.draw(out, backward=True).svg())
    assert {"input or parameter", "constant", "op result", "output"} <= set(with_key)
    assert "red dashed: |grad| sent back" in with_key
    without = texts(viz.draw(out, backward=True, legend=False).svg())
    assert "input or parameter" not in without


def test_edges_are_labelled_only_where_the_shape_changes():
    out = staged_graph()
    source = viz.draw(out, legend=False).source
    lines = [line for line in source.splitlines() if " -> " in line]
    labels = [re.sub(r'^.*label=("?)(.*?)\1\]$', r"\2", line) for line in lines]
    edges = [(p, n) for n in tb.graph_nodes(out) for p in n.parents]
    changing = sum(p.shape != n.shape for p, n in edges)
    assert len(labels) == len(edges) and sum(bool(label) for label in labels) == changing
    assert 0 < changing < len(edges)


def test_the_staged_picture_is_legible_in_a_page_column():
    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal((16, 4)), name="x")
    out = tb.batchnorm_staged(x, tb.Node(np.ones(4), name="gamma"),
                              tb.Node(np.zeros(4), name="beta"))
    out.backward(rng.standard_normal((16, 4)))
    for backend in ("embedded", "system") if HAVE_DOT else ("embedded",):
        svg = viz.render_source(viz.draw(out, backward=True).source, "svg", backend=backend)
        assert text_px_at(svg.decode(), 1000) >= 10


@pytest.mark.parametrize("backend", ["embedded", "system"])
def test_a_slow_layout_is_a_render_error(backend):
    if backend == "system" and not HAVE_DOT:
        pytest.skip("no system Graphviz (`dot`) on PATH")
    graph = viz.draw(staged_graph())
    with pytest.raises(viz.RenderError, match=r"took longer than 0.001 s to lay out a graph of "
                                              r"\d+ drawn nodes: draw fewer nodes \(max_nodes"):
        viz.render_source(graph.source, "svg", backend=backend, timeout=0.001,
                          nodes=graph.node_count)
    with pytest.raises(ValueError, match="timeout: expected a number of seconds > 0"):
        viz.draw(staged_graph(), timeout=0)


def test_the_comparison_is_side_by_side_and_narrow():
    rng = np.random.default_rng(0)
    graph = viz.draw_comparison(rng.standard_normal((16, 4)), np.ones(4), np.zeros(4))
    for backend in ("embedded", "system") if HAVE_DOT else ("embedded",):
        svg = viz.render_source(graph.source, "svg", backend=backend).decode()
        width = float(re.search(r'width="([\d.]+)pt"', svg).group(1))
        height = float(re.search(r'height="([\d.]+)pt"', svg).group(1))
        assert width < 1.3 * height  # two columns, not a strip
        assert text_px_at(svg, 1000) >= 10


def backward_graph():
    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal((4, 5)), name="x")
    gamma, beta = tb.Node(np.ones(5), name="gamma"), tb.Node(np.zeros(5), name="beta")
    out = tb.batchnorm_staged(x, gamma, beta)
    return tb.grad(out, [x, gamma, beta], rng.standard_normal((4, 5)), create_graph=True), out


def test_the_backward_picture_has_no_filler_and_is_legible(no_system_dot):
    gradients, out = backward_graph()
    nodes = [n for g in gradients for n in tb.graph_nodes(g)]
    assert any(n.op == "identity" for n in nodes) and any(
        n.op == "pow" and n.params.get("p") == 1 for n in nodes)  # what the picture leaves out
    svg = viz.draw_backward(gradients, out).svg()
    lines = texts(svg)
    titles = [t for t in lines if ": " in t]
    assert not any("identity" in t or "^1" in t for t in lines), titles
    assert "dvar_eps = dvar: div" in lines and "dout = dgammax: upstream gradient" in lines
    assert "gamma: forward value" in lines and "input or parameter" not in lines
    assert text_px_at(svg, 1000) >= 10


def test_draw_backward_rejects_gradients_of_another_graph():
    gradients, out = backward_graph()
    other_gradients, other = backward_graph()
    with pytest.raises(ValueError, match=r"gradients\[0\]: expected a gradient of this output.*"
                                         r"reads '\w+', which is not in the output's graph"):
        viz.draw_backward(other_gradients, out)
    with pytest.raises(ValueError, match="got a Node made before the output"):
        viz.draw_backward([tb.stages(other)["xmu"]], other)
    assert viz.draw_backward(other_gradients, other).node_count > 10


def test_a_shared_leaf_is_drawn_once_per_use():
    for requires_grad in (True, False):
        w = tb.Node(1.0001, name="w", requires_grad=requires_grad)
        y = tb.Node(1.0, name="x")
        for _ in range(50):
            y = y * w + 0.5
        graph = viz.draw(y, legend=False)
        heads = re.findall(r"^\s*(\S+) -> (\S+)", graph.source, flags=re.M)
        degree = Counter(end for edge in heads for end in edge)
        assert max(degree.values()) <= 3, degree.most_common(3)
        assert graph.source.count('"w: ') == 50 and len(graph.copies[id(w)]) == 50


def test_module_parameters_are_named_by_their_path(no_system_dot):
    from tinygrad_bn.train.nn import Linear, ReLU, Sequential

    model = Sequential(Linear(3, 4, rng=np.random.default_rng(0)), ReLU(),
                       Linear(4, 2, rng=np.random.default_rng(1)))
    loss = model(np.ones((2, 3))).sum()
    lines = texts(viz.draw(loss).svg())
    for path in ("layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b"):
        assert sum(t.startswith(path + ": input") for t in lines) == 1, path
    named = texts(viz.draw(loss, params={"first": model.layers[0].W}).svg())
    assert any(t.startswith("layers.0.W = first: input") for t in named)
    with pytest.raises(TypeError, match="params: expected a module or a dict"):
        viz.draw(loss, params=[1])


def test_a_wide_graph_scrolls_in_a_notebook(no_system_dot):
    bundle = viz.draw(staged_graph())._repr_mimebundle_()
    assert bundle["text/html"].startswith('<div style="overflow:auto')
    assert "<svg" in bundle["text/html"] and "<?xml" not in bundle["text/html"]


def test_draw_comparison_still_takes_the_old_keyword_with_a_warning():
    x, gamma, beta, dout = sample_batch((4, 3), "float64", 0, kind="layer")
    with pytest.warns(DeprecationWarning, match="norm= is now kind="):
        old = viz.draw_comparison(x, gamma, beta, dout, norm="layer")
    new = viz.draw_comparison(x, gamma, beta, dout, kind="layer")
    labels = [sorted(re.findall(r'label="([^"]*)"', graph.source)) for graph in (old, new)]
    assert labels[0] == labels[1] and any("layer" in label for label in labels[0])
    with pytest.raises(TypeError, match="give kind= alone"):
        viz.draw_comparison(x, gamma, beta, dout, kind="group", norm="layer")


def test_the_drawn_backward_pass_names_its_branch_parts_and_its_upstream_gradient():
    from tinygrad_bn.core.node import grad as _grad
    rng = np.random.default_rng(3)
    x = tb.Node(rng.standard_normal((4, 5)), name="x")
    gamma, beta = tb.Node(1 + rng.standard_normal(5), name="gamma"), tb.Node(np.zeros(5), name="beta")
    out = tb.batchnorm_staged(x, gamma, beta)
    dout = rng.standard_normal((4, 5))
    source = viz.draw_backward(_grad(out, [x, gamma, beta], dout, create_graph=True), out).source
    titles = re.findall(r'label="([^\\]*?)\\n', source)
    for title in ("dxmu1: mul", "dxmu2: mul", "dxmu = dx1: add", "dx2: broadcast_to",
                  "dout = dgammax: upstream gradient"):
        assert title in titles, titles
    upstream = next(line for line in source.splitlines() if "upstream gradient" in line)
    assert "lightblue" in upstream and "dashed" not in upstream
