"""The backward-pass stepper, tested in a real browser (headless Chromium)."""

import json

import numpy as np
import pytest

import tinygrad_bn as tb
import viz
from tinygrad_bn.core.node import trace_backward
from viz.stepper import StudentRecord, StudentStage, fill_template, page_json, step_name, steps_of

pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def staged(rng, shape=(4, 3)):
    x = tb.Node(rng.standard_normal(shape), name="x")
    out = tb.batchnorm_staged(x, tb.Node(np.ones(shape[1]), name="gamma"),
                              tb.Node(np.zeros(shape[1]), name="beta"))
    return out, rng.standard_normal(shape)


def by_name(steps):
    return {step["name"]: step for step in steps}


def test_steps_follow_the_engine_and_end_at_the_leaves():
    out, dout = staged(np.random.default_rng(0))
    steps = steps_of(out, dout)
    order = [node for node, _ in trace_backward(out, dout)]
    assert [s["name"] for s in steps] == [step_name(n, "") for n in order]
    assert steps[0]["name"] == "out" and [s["name"] for s in steps[-3:]] == ["beta", "gamma", "x"]
    assert all(s["leaf"] for s in steps[-3:]) and not any(s["leaf"] for s in steps[:-3])
    xhat = by_name(steps)["xhat"]
    assert [send["to"] for send in xhat["sends"]] == ["xmu", "ivar"]
    assert xhat["sends"][0]["formula"] == "d/dxmu = ivar"
    assert out.grad is None  # walking the steps changes no gradient


def test_branches_arrive_as_named_parts_then_their_sum():
    out, dout = staged(np.random.default_rng(0))
    steps = by_name(steps_of(out, dout))
    xmu, x = steps["xmu"], steps["x"]
    assert [(p["name"], p["via"]) for p in xmu["parts"]] == [("dxmu1", "xhat"), ("dxmu2", "sq")]
    assert xmu["sum"] == "dxmu = dxmu1 + dxmu2"
    assert [(p["name"], p["via"]) for p in x["parts"]] == [("dx1", "xmu"), ("dx2", "mu")]
    assert x["sum"] == "dx = dx1 + dx2"
    assert steps["ivar"]["sum"] == "" and len(steps["ivar"]["parts"]) == 1
    lines = {send["line"] for step in steps.values() for send in step["sends"]}
    assert {"dxmu1 = dxhat * ivar", "divar = np.sum(dxhat * xmu, axis=0, keepdims=True)",
            "dgamma = np.sum(dgammax * xhat, axis=0)", "dxmu2 = 2 * xmu * dsq",
            "dbeta = np.sum(dout, axis=0)", "dsqrtvar = -divar / sqrtvar**2"} <= lines
    (note,) = [s["note"] for s in steps["gammax"]["sends"] if s["to"] == "gamma"]
    assert note.startswith("summed over axis 0: gamma (3,) was broadcast over axis 0 (4 rows)")
    assert all(s["note"] == "" for s in steps["sq"]["sends"])


def test_the_numpy_lines_compute_the_engines_numbers():
    """Run every step's line of numpy, in order, with the forward values: each gives the
    part the engine sends (so the page is a worked solution, not a paraphrase)."""
    out, dout = staged(np.random.default_rng(3), (6, 4))
    scope = {"np": np, "dout": dout, **{name: node.data for name, node in tb.stages(out).items()}}
    scope.update({n.name: n.data for n in tb.graph_nodes(out) if n.name and n.name.isidentifier()})
    checked = 0
    for step, (_node, total) in zip(steps_of(out, dout), trace_backward(out, dout)):
        if step["sum"]:
            exec(step["sum"], scope)  # noqa: S102 - the page's own code, on our own arrays
        np.testing.assert_allclose(scope[step["gradient"]], total, rtol=1e-12, atol=1e-14)
        for send in step["sends"]:
            exec(send["line"], scope)  # noqa: S102
            checked += 1
    assert checked >= 12
    np.testing.assert_allclose(scope["dx"], tb.grad(out, [tb.stages(out)["xmu"].parents[0]],
                                                    dout)[0], rtol=1e-12)


def test_the_fused_step_is_named_after_the_norm():
    rng = np.random.default_rng(0)
    x = tb.Node(rng.standard_normal((4, 3)), name="x")
    out = tb.batchnorm_fused(x, tb.Node(np.ones(3), name="gamma"), tb.Node(np.zeros(3), name="beta"))
    steps = steps_of(out, rng.standard_normal((4, 3)))
    assert steps[0]["name"] == "batchnorm (fused)"
    assert steps[0]["sends"][0]["line"].startswith("dx = ivar * (g - g.mean(axis=0")


@pytest.fixture
def browser(new_chromium):
    driver = new_chromium()
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


def text(browser, ident):
    return browser.find_element(By.ID, ident).text


def no_errors_and_nothing_loaded(browser, page):
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = {r["params"]["request"]["url"] for r in requests
            if r["method"] == "Network.requestWillBeSent"}
    assert urls <= {page.as_uri()}, urls  # the page itself, nothing else


def test_the_page_walks_the_backward_pass_in_the_engines_order(browser, tmp_path):
    out, dout = staged(np.random.default_rng(1))
    page = viz.stepper(out, tmp_path / "steps.html", upstream=dout)
    ids = viz.draw(out).ids
    engine = [step_name(node, ids[id(node)]) for node, _ in trace_backward(out, dout)]
    browser.get(page.as_uri())
    assert browser.find_element(By.ID, "next").get_attribute("disabled") is None
    assert browser.find_element(By.ID, "prev").get_attribute("disabled") == "true"
    seen = [text(browser, "step")]
    for _ in range(len(engine) - 1):
        browser.find_element(By.ID, "next").click()
        seen.append(text(browser, "step"))
    assert seen == engine and seen[-1] == "x"
    assert text(browser, "counter") == f"step {len(engine)} of {len(engine)}"
    assert browser.find_element(By.ID, "next").get_attribute("disabled") == "true"
    assert "dx = dx1 + dx2" in text(browser, "sum")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.HOME)
    assert text(browser, "step") == "out"
    body.send_keys(Keys.END)
    assert text(browser, "step") == "x"
    body.send_keys(Keys.ARROW_LEFT)
    assert text(browser, "step") == engine[-2]
    body.send_keys(Keys.ARROW_RIGHT)
    assert text(browser, "step") == "x"
    # Click a node: its step.
    xmu_step = engine.index("xmu")
    browser.find_element(By.CSS_SELECTOR, f"#graph g.node#{_node_element_id(browser, 'xmu')}"
                         ).click()
    assert text(browser, "step") == "xmu"
    assert text(browser, "counter") == f"step {xmu_step + 1} of {len(engine)}"
    highlighted = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.current")
    assert len(highlighted) == 1 and highlighted[0].text.startswith("xmu: sub")
    parts = text(browser, "parts")
    assert "dxmu1 (via xhat)" in parts and "dxmu2 (via sq)" in parts
    assert "dxmu1 = dxhat * ivar" in parts and text(browser, "sum") == "dxmu = dxmu1 + dxmu2"
    assert text(browser, "sends").startswith("to x: d/dx = 1\ndx1 = dxmu")
    # The edges the gradient runs along, from xmu into x and mu, are highlighted.
    traversed = browser.find_elements(By.CSS_SELECTOR, "#graph g.edge.traversed title")
    titles = sorted(t.get_attribute("textContent") for t in traversed)
    assert titles == sorted(f"{ids[id(n)]}->{ids[id(tb.stages(out)['xmu'])]}"
                            for n in tb.stages(out)["xmu"].parents)
    no_errors_and_nothing_loaded(browser, page)


def _node_element_id(browser, name):
    # The SVG element id of the drawn node whose title line starts with `name: `.
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#graph g.node')).find(function (g) {"
        " return g.textContent.indexOf(arguments[0] + ': ') >= 0; }).id;".replace(
            "arguments[0]", json.dumps(name)))


def test_the_page_fits_a_900_px_window(browser, tmp_path):
    out, dout = staged(np.random.default_rng(2), (4, 14))  # rows wider than the panel
    page = viz.stepper(out, tmp_path / "steps.html", upstream=dout)
    browser.set_window_size(900, 900)
    browser.get(page.as_uri())
    measure = """
      const svg = document.querySelector('#graph svg');
      const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
      const sizes = Array.from(svg.querySelectorAll('g.node.titled text')).map(
        function (t) { return parseFloat(t.getAttribute('font-size')) * scale; });
      return [Math.min.apply(null, sizes), document.documentElement.scrollWidth,
              window.innerWidth];"""
    smallest, page_width, window = browser.execute_script(measure)
    assert smallest >= 10 and page_width <= window  # legible, and no sideways page scroll
    arriving = browser.find_element(By.ID, "arriving")
    assert arriving.value_of_css_property("white-space") == "pre"
    rows = arriving.get_attribute("textContent").splitlines()
    assert len(rows) == 1 + 4  # the shape, then one line per row: none wrapped
    assert browser.execute_script("const e = arguments[0]; return e.scrollWidth > e.clientWidth;",
                                  arriving)  # the row scrolls instead
    before = browser.execute_script("return document.querySelector('#graph svg')"
                                    ".getBoundingClientRect().width;")
    browser.find_element(By.ID, "zoom-in").click()
    after = browser.execute_script("return document.querySelector('#graph svg')"
                                   ".getBoundingClientRect().width;")
    assert after == pytest.approx(before * 1.25, rel=0.01)
    browser.find_element(By.ID, "zoom-fit").click()
    fitted = browser.execute_script("return document.querySelector('#graph svg')"
                                    ".getBoundingClientRect().width;")
    column = browser.execute_script("return document.getElementById('graph').clientWidth;")
    assert fitted <= column


HOSTILE = ["<script>alert(1)</script>", "<!--<script>", "$STEPS<img src=x onerror=alert(1)>",
           "$SVG$TITLE$DATA</script><script>alert(2)</script>", "x" * 10_000,
           "two\nlines\r\nand\u2028sep", "∂x ü 😀 \u202e", "&lt;b&gt; ]]> \" ' `"]


def test_hostile_names_stay_text(browser, tmp_path):
    rng = np.random.default_rng(4)
    leaves = [tb.Node(rng.standard_normal(3), name=name) for name in HOSTILE]
    total = leaves[0]
    for leaf in leaves[1:]:
        total = (total * leaf).named(HOSTILE[len(HOSTILE) - 1 - leaves.index(leaf)])
    root = total.sum().named("$STEPS<img src=x onerror=alert(1)>")
    page = viz.stepper(root, tmp_path / "hostile.html",
                       title="<!--<script>$DATA alert(3)")
    source = page.read_text()
    assert "<img" not in source and "<!--<script>" not in source
    browser.get(page.as_uri())
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the test
    steps = len(steps_of(root))
    assert text(browser, "counter") == f"step 1 of {steps}"
    assert text(browser, "step") == "$STEPS<img src=x onerror=alert(1)>"
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.END)
    assert text(browser, "counter") == f"step {steps} of {steps}"
    assert browser.execute_script("return document.querySelectorAll('img, script').length") == 1
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    no_errors_and_nothing_loaded(browser, page)


def test_the_template_is_filled_in_one_pass_and_the_data_is_inert():
    filled = fill_template("<title>$TITLE</title>$SVG|$DATA", {
        "TITLE": "$SVG", "SVG": "$DATA", "DATA": "$TITLE"})
    assert filled == "<title>$SVG</title>$DATA|$TITLE"
    text = page_json({"a": "</script><!--<script>&\u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!--<script>&\u2028"}


def planted_record(out, dout):
    """A hand-built record: a student's backward whose dvar has the wrong sign."""
    stages = tb.stages(out)
    grads = dict(zip(("dxmu", "dvar", "dsqrtvar"),
                     tb.grad(out, [stages["xmu"], stages["var"], stages["sqrtvar"]], dout)))
    source = ["def batchnorm_backward(dout, cache):",
              "    xmu, ivar, sqrtvar, var, eps = cache",
              "    dsqrtvar = -1. / (sqrtvar**2) * divar",
              "    dvar = -0.5 * 1. / np.sqrt(var + eps) * dsqrtvar  # <script>alert(5)</script>",
              "    return dx"]
    return StudentRecord(
        file="layers<b>.py", source=source, departure="dvar",
        stages=[StudentStage("xmu", stages["xmu"].data, True, 2, "xmu", stages["xmu"].data),
                StudentStage("dsqrtvar", grads["dsqrtvar"], True, 3, "dsqrtvar", grads["dsqrtvar"]),
                StudentStage("dvar", grads["dvar"], False, 4, "dvar<i>", -grads["dvar"]),
                StudentStage("dxmu2", grads["dxmu"], False, None, None, None),
                StudentStage("closed_form_term", np.ones(2), False, 99, "t", None)])


def test_a_students_variables_beside_the_right_ones(browser, tmp_path):
    out, dout = staged(np.random.default_rng(5))
    page = viz.stepper(out, tmp_path / "report.html", upstream=dout,
                       student=planted_record(out, dout))
    browser.get(page.as_uri())
    banner = text(browser, "departure")
    assert banner.startswith("Your code departs from the correct backward pass at dvar: "
                             "layers<b>.py line 4")
    assert "dvar = -0.5 * 1. / np.sqrt(var + eps) * dsqrtvar # <script>alert(5)</script>" in banner
    browser.find_element(By.ID, "show-departure").click()
    assert text(browser, "step") == "var"
    card = browser.find_element(By.CSS_SELECTOR, "#student-rows .row.bad.departure")
    assert card.text.startswith("dvar: differs (first departure)\nlayers<b>.py line 4, "
                                "variable dvar<i>")
    departed = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.student-departure")
    assert len(departed) == 1 and departed[0].text.startswith("var: mean")
    ok = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.student-ok")
    assert sorted(g.text.split(":")[0] for g in ok) == ["sqrtvar"]  # xmu has a bad part
    # Every checked quantity in the table; a row jumps to its step.
    rows = browser.find_elements(By.CSS_SELECTOR, "#student-table tbody tr")
    assert [r.text.split()[0] for r in rows] == ["xmu", "dsqrtvar", "dvar", "dxmu2",
                                                 "closed_form_term"]
    assert [r.get_attribute("class") for r in rows][:3] == ["ok jump", "ok jump", "bad jump"]
    rows[0].click()
    assert text(browser, "step") == "xmu"
    cards = browser.find_elements(By.CSS_SELECTOR, "#student-rows .row")
    assert [c.get_attribute("class") for c in cards] == ["row ok", "row bad"]
    assert "not found in layers<b>.py" in cards[1].text and "your value\nnot found" in cards[1].text
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018
    no_errors_and_nothing_loaded(browser, page)


def test_a_student_record_as_plain_mappings_and_bad_records(tmp_path):
    out, dout = staged(np.random.default_rng(6))
    record = {"file": "mine.py", "source": ["a = 1"], "departure": None,
              "stages": [{"name": "mu", "line": 1, "variable": "a", "value": np.ones(3),
                          "expected": np.ones(3), "matches": True}]}
    page = viz.stepper(out, tmp_path / "ok.html", upstream=dout, student=record)
    assert '"variable": "a"' in page.read_text()
    with pytest.raises(TypeError, match="student: expected a record with a list of stages"):
        viz.stepper(out, tmp_path / "bad.html", upstream=dout, student={"stages": "dvar"})
    with pytest.raises(TypeError, match=r"student.stages\[0\].line: expected an int or None"):
        viz.stepper(out, tmp_path / "bad.html", upstream=dout,
                    student={"stages": [{"name": "mu", "line": "4", "expected": 1}]})


# JavaScript's own property names, and a lone surrogate (no encoding writes one).
OBJECT_NAMES = ["__proto__", "constructor", "toString", "hasOwnProperty"]
SURROGATE = "x\udc80"


def test_every_name_is_data_even_javascripts_own(browser, tmp_path):
    rng = np.random.default_rng(9)
    x, gamma, beta = (tb.Node(rng.standard_normal(s), name=n)
                      for s, n in (((4, 3), "constructor"), (3, "__proto__"), (3, "toString")))
    out = tb.batchnorm_staged(x, gamma, beta)
    stages = [{"name": name, "expected": np.ones(3), "matches": name != "constructor",
               "line": 1} for name in [*OBJECT_NAMES, "mu"]]
    record = {"stages": stages, "departure": "constructor", "file": "f.py", "source": ["a = 1"]}
    page = viz.stepper(out, tmp_path / "names.html", upstream=rng.standard_normal((4, 3)),
                       student=record)
    browser.get(page.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "#student-table tbody tr")
    assert [r.text.split()[0] for r in rows] == [*OBJECT_NAMES, "mu"]
    assert text(browser, "departure").startswith(
        "Your code departs from the correct backward pass at constructor: f.py line 1")
    browser.find_element(By.ID, "show-departure").click()
    assert text(browser, "step") == "constructor"
    assert "constructor: differs (first departure)" in text(browser, "student-rows")
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.END)
    shown = {text(browser, "step")}
    for _ in range(3):
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
        shown.add(text(browser, "step"))
    assert {"__proto__", "toString"} <= shown
    no_errors_and_nothing_loaded(browser, page)


def test_a_lone_surrogate_is_shown_escaped_on_the_page(browser, tmp_path):
    rng = np.random.default_rng(10)
    x = tb.Node(rng.standard_normal((4, 3)), name=SURROGATE)
    out = tb.batchnorm_staged(x, tb.Node(np.ones(3), name="gamma"), tb.Node(np.zeros(3)))
    record = {"stages": [{"name": SURROGATE, "expected": np.ones(3), "matches": False,
                          "line": 1}], "departure": SURROGATE, "file": "f\ud801.py",
              "source": ["a = 1"]}
    page = viz.stepper(out, tmp_path / "surrogates.html", upstream=rng.standard_normal((4, 3)),
                       student=record, title="t\udfff")
    browser.get(page.as_uri())
    assert browser.title == "t\\udfff"
    assert text(browser, "departure").startswith(
        "Your code departs from the correct backward pass at x\\udc80: f\\ud801.py line 1")
    browser.find_element(By.ID, "show-departure").click()
    assert text(browser, "step") == "x\\udc80"  # the student's name and the node's agree
    no_errors_and_nothing_loaded(browser, page)


@pytest.mark.parametrize("backend", ["system", "embedded"])
def test_a_lone_surrogate_in_a_name_is_shown_escaped_in_every_picture(backend, tmp_path):
    from viz.backend import _system_dot, render_source

    if backend == "system" and _system_dot() is None:
        pytest.skip("no system Graphviz")
    out = tb.Node(np.ones(3), name=SURROGATE).sum().named("total\ud800")
    graph = viz.draw(out)
    assert '"x\\\\udc80: input' in graph.source  # the DOT label's escaped backslash
    svg = render_source(graph.source, "svg", backend=backend).decode("utf-8")
    assert "x\\udc80: input" in svg and "total\\ud800: sum" in svg
    assert "x\\udc80: input" in viz.render(graph, tmp_path / "g.svg").read_text()
    assert '"x\\\\udc80: input' in viz.render(graph, tmp_path / "g.dot").read_text()
