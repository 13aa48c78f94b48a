"""`check --html`: a student's traced backward beside the staged one, in headless Chromium."""

import json
import pathlib

import pytest

import tinygrad_bn as tb
import viz
from tinygrad_bn.cli import main
from viz.report import chosen_function
from viz.stepper import _array_text

pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

STUDENTS = pathlib.Path(__file__).resolve().parents[1] / "students"
WRONG_DVAR = STUDENTS / "wrong_dvar.py"
PLANTED = "dvar = -0.5 / np.sqrt(var + eps) * dsqrtvar"


def planted_line(path, text=PLANTED):
    """The planted line's number, found by text (not by the checker)."""
    (number,) = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return number


def page_data(path):
    """The page's data, read back from its script (the JSON is escaped, still JSON)."""
    source = path.read_text()
    start = source.index("const DATA = ") + len("const DATA = ")
    return json.loads(source[start:source.index(";\nconst STEPS")])


@pytest.fixture(scope="module")
def browser(new_chromium):
    driver = new_chromium()
    yield driver
    driver.quit()


def open_page(browser, page, width=900):
    browser.set_window_size(width, 900)
    browser.get(page.as_uri())
    browser.get_log("performance")  # only what this page loads is judged below


def text(browser, ident):
    return browser.find_element(By.ID, ident).text


def node_names(browser, selector):
    """The names of the drawn nodes matching `selector` (each node's first line is
    "name: op"), read whether or not the node is scrolled into view."""
    return sorted(browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(function (g) {"
        " return g.querySelector('text').textContent.split(':')[0]; });", selector))


def no_errors_and_nothing_loaded(browser, page):
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = {r["params"]["request"]["url"] for r in requests
            if r["method"] == "Network.requestWillBeSent"}
    assert urls <= {page.as_uri()}, urls
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the test


@pytest.fixture(scope="module")
def planted_page(tmp_path_factory):
    """`tinygrad-bn check wrong_dvar.py --html`, and the same check through the API."""
    page = tmp_path_factory.mktemp("html") / "report.html"
    assert main(["check", str(WRONG_DVAR), "--html", str(page)]) == 1
    return page, tb.check_layers(WRONG_DVAR)


def test_the_planted_slip_is_shown_at_its_line(browser, planted_page, capsys):
    page, report = planted_page
    line = planted_line(WRONG_DVAR)
    result = report.results["batchnorm_backward"]
    assert result.line == line  # the checker's own verdict, which the page shows
    open_page(browser, page)
    banner = text(browser, "departure")
    assert banner.startswith(f"Your code departs from the correct backward pass at dvar: "
                             f"{WRONG_DVAR} line {line}")
    assert PLANTED in banner
    # The verdicts of every function checked, the one stepped through marked.
    rows = browser.find_elements(By.CSS_SELECTOR, "#verdict-table tbody tr")
    assert [r.text.split()[:2] for r in rows] == [
        ["batchnorm_forward", "PASS"], ["batchnorm_backward", "FAIL"],
        ["batchnorm_backward_alt", "PASS"]]
    assert rows[1].get_attribute("class") == "fail shown" and f" {line} " in rows[1].text
    assert text(browser, "verdict-summary").startswith("2 of 3 functions pass")
    # The departure: its step, its card, its node.
    browser.find_element(By.ID, "show-departure").click()
    assert text(browser, "step") == "var"
    card = browser.find_element(By.CSS_SELECTOR, "#student-rows .row.bad.departure")
    assert card.text.startswith(f"dvar: differs (first departure)\n{WRONG_DVAR} line {line}, "
                                f"variable dvar\n{PLANTED}")
    expected = result.case["correct_dvar"]
    assert f"your value\n{_array_text(-expected.reshape(-1))}" in card.text  # the sign slip
    assert f"correct value\n{_array_text(expected.reshape(-1))}" in card.text
    assert node_names(browser, "#graph g.node.student-departure") == ["var"]
    green = node_names(browser, "#graph g.node.student-ok")
    held = {s.name for s in result.stages if s.matches}
    assert {"xmu", "sqrtvar", "ivar", "xhat"} <= set(green) and "var" not in green
    steps = {step["name"]: step for step in page_data(page)["steps"]}
    assert all(set(steps[name]["quantities"]) & held for name in green)  # a held quantity each
    no_errors_and_nothing_loaded(browser, page)


def test_the_graph_is_built_on_the_checkers_own_case(planted_page):
    page, report = planted_page
    case = report.results["batchnorm_backward"].case
    steps = {step["name"]: step for step in page_data(page)["steps"]}
    # What the staged graph sends back on the case's x, gamma, beta and dout.
    assert steps["x"]["arriving"] == _array_text(case["correct_dx"])
    assert steps["out"]["arriving"] == _array_text(case["dout"])
    assert steps["var"]["arriving"] == _array_text(case["correct_dvar"].reshape(1, -1))


def test_keys_clicks_and_a_900_px_window(browser, planted_page):
    page, _ = planted_page
    open_page(browser, page, 900)
    steps = len(page_data(page)["steps"])
    body = browser.find_element(By.TAG_NAME, "body")
    assert browser.find_element(By.ID, "prev").get_attribute("disabled") == "true"
    body.send_keys(Keys.END)
    assert text(browser, "step") == "x" and text(browser, "counter") == f"step {steps} of {steps}"
    assert browser.find_element(By.ID, "next").get_attribute("disabled") == "true"
    body.send_keys(Keys.ARROW_LEFT)
    assert text(browser, "counter") == f"step {steps - 1} of {steps}"
    body.send_keys(Keys.HOME)
    assert text(browser, "step") == "out"
    browser.find_element(By.ID, "next").click()
    assert text(browser, "counter") == f"step 2 of {steps}"
    (xhat,) = [g for g in browser.find_elements(By.CSS_SELECTOR, "#graph g.node")
               if g.find_element(By.TAG_NAME, "text").get_attribute("textContent") == "xhat: mul"]
    xhat.click()
    assert text(browser, "step") == "xhat"
    assert "xhat: agrees" in text(browser, "student-rows")
    # A row of the table of checked quantities jumps to its step.
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#student-table tbody tr")
               if r.text.split()[0] == "dsqrtvar")
    row.click()
    assert text(browser, "step") == "sqrtvar"
    smallest, page_width, window, verdict, viewport = browser.execute_script("""
      const svg = document.querySelector('#graph svg');
      const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
      const sizes = Array.from(svg.querySelectorAll('g.node.titled text')).map(
        function (t) { return parseFloat(t.getAttribute('font-size')) * scale; });
      return [Math.min.apply(null, sizes), document.documentElement.scrollWidth,
              window.innerWidth, document.getElementById('verdict').offsetHeight,
              window.innerHeight];""")
    assert window == 900 or abs(window - 900) < 20  # the window's inner width
    assert smallest >= 10 and page_width <= window  # legible, no sideways page scroll
    assert verdict <= 0.31 * viewport  # the verdicts leave the stepper its room
    no_errors_and_nothing_loaded(browser, page)


def test_every_function_passing_says_so_and_shows_all_green(browser, tmp_path):
    report = tb.check_layers(STUDENTS / "complete.py",
                             only=["batchnorm_forward", "batchnorm_backward"])
    assert report.ok and not report.results["batchnorm_backward"].stages  # not traced by check
    page = viz.check_report_page(report, tmp_path / "pass.html")
    open_page(browser, page)
    assert text(browser, "verdict-summary").startswith("Every function passes (2 of 2)")
    assert "all-pass" in browser.find_element(By.ID, "verdict").get_attribute("class")
    assert not browser.find_element(By.ID, "departure").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#graph g.node.student-departure") == []
    green = node_names(browser, "#graph g.node.student-ok")
    assert {"mu", "xmu", "var", "sqrtvar", "ivar", "xhat"} <= set(green)
    rows = browser.find_elements(By.CSS_SELECTOR, "#student-table tbody tr")
    assert len(rows) >= 10 and all(r.get_attribute("class").startswith("ok") for r in rows)
    # The traced lines are the student's own: dxmu1 where complete.py computes it.
    dxmu1 = next(r for r in rows if r.text.split()[0] == "dxmu1")
    assert dxmu1.text.split()[1] == str(planted_line(STUDENTS / "complete.py",
                                                     "dxmu1 = dxhat * ivar"))
    no_errors_and_nothing_loaded(browser, page)


def test_the_function_shown_can_be_chosen(tmp_path, planted_page):
    _, report = planted_page
    assert chosen_function(report) == "batchnorm_backward"
    page = viz.check_report_page(report, tmp_path / "alt.html", function="batchnorm_backward_alt")
    data = page_data(page)
    assert data["report"]["shown"] == "batchnorm_backward_alt"
    assert data["student"]["departure"] is None
    assert all(row["matches"] for row in data["student"]["stages"])
    # --only names the function the page steps through.
    only = tmp_path / "only.html"
    assert main(["check", str(WRONG_DVAR), "--only", "batchnorm_backward_alt", "--html",
                 str(only)]) == 0
    assert page_data(only)["report"]["shown"] == "batchnorm_backward_alt"
    assert page_data(only)["report"]["summary"] == "Every function passes (1 of 1)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alt.html", "only.html"]  # no temporary


def test_bad_arguments_and_unwritable_paths(tmp_path, planted_page, capsys):
    _, report = planted_page
    with pytest.raises(TypeError, match="report: expected the LayersReport"):
        viz.check_report_page({"results": {}}, tmp_path / "x.html")
    with pytest.raises(ValueError, match="function: expected one of the checked functions "
                                         "batchnorm_forward, batchnorm_backward"):
        viz.check_report_page(report, tmp_path / "x.html", function="layernorm_backward")
    broken = tmp_path / "broken.py"
    broken.write_text("def batchnorm_forward(:\n")
    with pytest.raises(ValueError, match="could not be loaded"):
        viz.check_report_page(tb.check_layers(broken), tmp_path / "x.html")
    blocker = tmp_path / "a file"
    blocker.write_text("")
    assert main(["check", str(WRONG_DVAR), "--only", "batchnorm_backward", "--html",
                 str(blocker / "report.html")]) == 1
    assert "check: --html: cannot write" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


HOSTILE_FILE = "$DATA<img src=x onerror=alert(1)>.py"
HOSTILE_COMMENT = "  # </script><script>alert(2)</script><!--<script> $SVG &amp; \u2028"
HOSTILE_VARIABLE = "dvar_\u05d0\u202e"[:-1]  # a right-to-left letter in an identifier


def test_hostile_names_stay_text(browser, tmp_path):
    folder = tmp_path / "<b>cs231n&amp;"
    folder.mkdir()
    path = folder / HOSTILE_FILE
    source = WRONG_DVAR.read_text().replace(PLANTED, PLANTED + HOSTILE_COMMENT)
    path.write_text(source.replace("dvar", HOSTILE_VARIABLE))
    report = tb.check_layers(path, only=["batchnorm_forward", "batchnorm_backward"])
    assert report.results["batchnorm_backward"].variable == HOSTILE_VARIABLE
    page = viz.check_report_page(report, tmp_path / "hostile.html")
    raw = page.read_text()
    assert "<img" not in raw and "<!--<script>" not in raw and "<b>cs231n" not in raw
    open_page(browser, page)
    banner = text(browser, "departure")
    assert f"{path} line {planted_line(path, HOSTILE_COMMENT.strip()[:20])}" in banner
    assert "</script><script>alert(2)</script><!--<script> $SVG &amp;" in banner
    assert HOSTILE_FILE in text(browser, "verdict-summary")
    assert browser.execute_script("return document.querySelectorAll('img, script, b').length") == 1
    browser.find_element(By.ID, "show-departure").click()
    assert f"variable {HOSTILE_VARIABLE}" in browser.find_element(
        By.CSS_SELECTOR, "#student-rows .row.departure").text
    no_errors_and_nothing_loaded(browser, page)


def test_the_page_is_replaced_whole(tmp_path, planted_page):
    _, report = planted_page
    target = tmp_path / "report.html"
    target.write_text("an older page")
    viz.check_report_page(report, target)
    assert target.read_text().startswith("<!DOCTYPE html>") and target.read_text().endswith(
        "</html>\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert [s["name"] for s in page_data(target)["steps"]][-3:] == ["beta", "gamma", "x"]


def test_a_dropped_branch_departs_where_the_checker_says(tmp_path):
    """dxmu2 is computed right and never used: the departure is the line that should have
    added it (as the text report says), the line computing it stays green."""
    path = STUDENTS / "two_slips.py"
    report = tb.check_layers(path, only=["batchnorm_forward", "batchnorm_backward"])
    result = report.results["batchnorm_backward"]
    dropped, added = planted_line(path, "dx_2 = 2 * (x - mu)"), planted_line(path, "dx_k1 = dx_1")
    assert (result.stage, result.line) == ("dxmu2", added)
    page = viz.check_report_page(report, tmp_path / "dropped.html")
    rows = [r for r in page_data(page)["student"]["stages"] if r["name"] == "dxmu2"]
    assert [(r["line"], r["matches"]) for r in rows] == [(added, False), (dropped, True)]
    assert rows[0]["code"] == "dx_k1 = dx_1"


SLIPS = STUDENTS / "assignment" / "slips_norm.py"


def test_a_running_statistics_failure_shows_the_running_statistics(browser, tmp_path):
    page = tmp_path / "running.html"
    assert main(["check", str(SLIPS), "--only", "batchnorm_forward", "--html", str(page)]) == 1
    open_page(browser, page)
    shown = text(browser, "verdict-running")
    assert "departs in its running statistics" in shown
    assert "running_var, yours" in shown and "running_var, correct" in shown
    no_errors_and_nothing_loaded(browser, page)


def test_the_key_names_every_fill_and_the_header_reads_right(browser, tmp_path):
    page = tmp_path / "error.html"
    broken = tmp_path / "layers.py"
    broken.write_text((STUDENTS / "assignment" / "complete.py").read_text().replace(
        "    var = np.mean(xmu ** 2, axis=1, keepdims=True)\n",
        "    var = np.mean(xmu ** 2, axis=2, keepdims=True)\n"))
    assert main(["check", str(broken), "--only", "layernorm_forward,layernorm_backward",
                 "--html", str(page)]) == 1
    open_page(browser, page)
    key = text(browser, "verdict-key")
    assert "light green" in key and "pink" in key
    header = text(browser, "verdict-shown")
    assert header.startswith("stepping through layernorm_forward; no variables of yours to show "
                             "(it is error)"), header  # the function that errs, said in words
    no_errors_and_nothing_loaded(browser, page)


def test_whole_statements_helper_names_and_factors_reach_the_page():
    import numpy as np

    from viz.stepper import StudentRecord, StudentStage, _student_data
    source = ["def helper(a):", "    dx_T = (a", "            * 2)", "    return dx_T"]
    record = StudentRecord(stages=[
        StudentStage("dx", np.ones(3), True, line=2, variable="dx_T", value=4 * np.ones(3),
                     function="helper")], file="layers.py", source=source)
    (row,) = _student_data(record)["stages"]
    assert row["code"] == "dx_T = (a\n        * 2)"
    assert row["function"] == "helper"
    assert row["agreement"].startswith("agrees up to a factor 4")


def test_the_departure_is_in_view_after_show_that_step(browser, planted_page):
    page, _ = planted_page
    open_page(browser, page, width=900)
    browser.find_element(By.ID, "show-departure").click()
    in_view = browser.execute_script(
        "const card = document.querySelector('#student-rows .row.departure');"
        "const box = card.getBoundingClientRect();"
        "return box.top >= 0 && box.top < window.innerHeight;")
    assert in_view


def test_html_into_a_missing_folder_is_refused_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no such folder"
    assert main(["check", str(WRONG_DVAR), "--only", "batchnorm_backward", "--html",
                 str(missing / "report.html")]) == 1
    err = capsys.readouterr().err
    assert "--html: cannot write" in err and "create it first" in err
    assert not missing.exists()
