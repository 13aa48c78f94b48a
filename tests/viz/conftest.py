"""Headless Chromium (Debian's chromium and chromedriver) for the pages' tests."""

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def start_chromium(scratch=None):
    """A selenium driver of headless Chromium that logs the console and every request; skips
    where the browser is not installed, and fails under CI (which installs it). scratch: a
    folder for the browser's temporary files (its profile and singleton socket), which it
    otherwise leaves behind in the system's temporary folder."""
    webdriver = pytest.importorskip("selenium.webdriver")
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
    options.set_capability("unhandledPromptBehavior", "ignore")  # an alert stays visible
    env = None
    if scratch is not None:
        env = {**os.environ, "TMPDIR": str(scratch)}
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(
        executable_path=CHROMEDRIVER, env=env))


@pytest.fixture(scope="session")
def new_chromium(tmp_path_factory):
    """`start_chromium`, for the test files' own browser fixtures (each sets its scope), with
    its temporary files under pytest's own temporary folder."""
    return lambda: start_chromium(tmp_path_factory.mktemp("chromium"))
