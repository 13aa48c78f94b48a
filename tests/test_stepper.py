"""The backward-pass stepper, tested in a real browser (headless Chromium)."""

import json
import os
import shutil

import numpy as np
import pytest

import tinygrad_bn as tb
import viz
from tinygrad_bn.core.node import trace_backward
from viz.stepper import step_name, steps_of

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def staged(rng):
    x = tb.Node(rng.standard_normal((4, 3)), name="x")
    out = tb.batchnorm_staged(x, tb.Node(np.ones(3), name="gamma"),
                              tb.Node(np.zeros(3), name="beta"))
    return out, rng.standard_normal((4, 3))


def test_steps_follow_the_engine_and_say_what_each_vjp_sends():
    out, dout = staged(np.random.default_rng(0))
    steps = steps_of(out, dout)
    order = [node for node, _ in trace_backward(out, dout) if node.op_def is not None]
    assert [s["name"] for s in steps] == [step_name(n, "") for n in order]
    assert steps[0]["name"] == "out" and steps[-1]["name"] == "mu"
    xhat = next(s for s in steps if s["name"] == "xhat")
    assert [send["to"] for send in xhat["sends"]] == ["xmu", "ivar"]
    assert xhat["sends"][0]["formula"] == "d/dxmu = ivar"
    assert out.grad is None  # walking the steps changes no gradient


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = ("headless Chromium and chromedriver are not installed "
                   "(apt-get install chromium chromium-driver)")
        if os.environ.get("CI"):  # CI installs them: a missing browser there is a failure
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_window_size(1400, 1000)
    yield driver
    driver.quit()


def test_the_page_walks_the_backward_pass_in_the_engines_order(browser, tmp_path):
    out, dout = staged(np.random.default_rng(1))
    page = viz.stepper(out, tmp_path / "steps.html", upstream=dout)
    ids = viz.draw(out).ids
    engine = [step_name(node, ids[id(node)])
              for node, _ in trace_backward(out, dout) if node.op_def is not None]
    browser.get(page.as_uri())
    seen = [browser.find_element(By.ID, "step").text]
    for _ in range(len(engine) - 1):
        browser.find_element(By.ID, "next").click()
        seen.append(browser.find_element(By.ID, "step").text)
    assert seen == engine
    assert browser.find_element(By.ID, "counter").text == f"step {len(engine)} of {len(engine)}"
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_LEFT)
    assert browser.find_element(By.ID, "step").text == engine[-2]
    browser.find_element(By.ID, "prev").click()
    body.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "step").text == engine[-2]
    highlighted = browser.find_elements(By.CSS_SELECTOR, "#graph g.node.current")
    assert engine[-2] == "xmu" and len(highlighted) == 1
    assert highlighted[0].text.startswith("xmu: sub")
    assert browser.find_element(By.ID, "sends").text.startswith("to x: d/dx = 1")
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = {r["params"]["request"]["url"] for r in requests
            if r["method"] == "Network.requestWillBeSent"}
    assert urls <= {page.as_uri()}, urls  # the page itself, nothing else
