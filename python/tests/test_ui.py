"""The web dashboard in a real browser: `runcache ui` on a real store, driven with headless
Chromium through Selenium, asserting what a person sees. Screenshots go to docs/ui/.

Chromium and chromedriver come from `scripts/services/browser` (started by scripts/test, which
exports RUNCACHE_TEST_CHROMIUM / RUNCACHE_TEST_CHROMEDRIVER); without them these tests skip
with a message, except under CI, where they fail.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import runcache as rc
from conftest import skip_or_fail

HERE = os.path.dirname(os.path.abspath(__file__))
SHOTS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "docs", "ui")
sys.path.insert(0, HERE)
import ui_tasks  # noqa: E402


def _browser():
    chromium = os.environ.get("RUNCACHE_TEST_CHROMIUM")
    driver = os.environ.get("RUNCACHE_TEST_CHROMEDRIVER")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed", "run `source scripts/setup`")
    if not chromium or not driver:
        skip_or_fail("RUNCACHE_TEST_CHROMIUM/RUNCACHE_TEST_CHROMEDRIVER are not set",
                     'run `eval "$(scripts/services/browser start)"`')
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.binary_location = chromium
    return webdriver.Chrome(options=options, service=Service(driver))


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # the page is still drawing
            if time.time() > deadline:
                raise
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def text_of(browser, element_id):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text


def shot(browser, name):
    os.makedirs(SHOTS, exist_ok=True)
    browser.save_screenshot(os.path.join(SHOTS, f"{name}.png"))


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A store with completed entries with artifacts, failed ones, an interrupted command with
    hostile output, a hostile namespace, and a sweep that runs while the tests look at it."""
    base = tmp_path_factory.mktemp("ui")
    store = str(base / "store")
    gate = str(base / "gate")
    os.makedirs(gate)
    rc.configure(store=store)
    try:
        for x in range(3):
            ui_tasks.plot(x)
        for x in range(2):
            with pytest.raises(ValueError):
                ui_tasks.broken(x)
        with pytest.raises(RuntimeError):
            ui_tasks.hostile(1)
        # A command stopped by SIGTERM: recorded interrupted, its hostile stdout kept.
        subprocess.run(
            [sys.executable, "-m", "runcache", "--store", store, "run", "--name", "ui.killed",
             "--", "sh", "-c", "echo '<script>window.pwned=3</script><b>not bold</b>'; kill -TERM $$"],
            capture_output=True, check=False)
        jobs = ui_tasks.pace.map([{"x": i, "gate": gate} for i in range(4)],
                                 executor=rc.Local(workers=1), wait=False)
        sweep = jobs[0].sweep
        server = rc.ui(port=0, allow_write=True)
        yield {"store": store, "gate": gate, "sweep": sweep, "url": server.url}
        for i in range(4):
            open(os.path.join(gate, f"go-{i}"), "w").close()
        sweep.wait(timeout=120, progress=False)
        server.stop()
    finally:
        rc.configure(store=None)


@pytest.fixture(scope="module")
def browser():
    b = _browser()
    yield b
    b.quit()


def test_overview_lists_the_namespaces_and_failures(filled, browser):
    browser.get(filled["url"])
    names = wait_for("the namespace list", lambda: text_of(browser, "namespaces"))
    for ns in ("ui.plot", "ui.broken", "ui.killed", "<img src=x onerror=window.pwned=1>hostile"):
        assert ns in names, names
    assert "1 failed" in names or "2 failed" in names
    assert text_of(browser, "card-entries").startswith("7")
    assert "item 1 is broken beyond repair" in text_of(browser, "failures")
    assert browser.execute_script("return window.pwned") is None
    shot(browser, "overview")


def test_entries_filter_by_namespace_and_status(filled, browser):
    from selenium.webdriver.common.by import By

    browser.get(filled["url"] + "#/entries?status=failed")
    rows = wait_for("failed rows", lambda: browser.find_elements(By.CSS_SELECTOR, "#entries tr.entry"))
    statuses = {r.find_elements(By.TAG_NAME, "td")[2].text for r in rows}
    assert statuses == {"failed"} and len(rows) == 3
    browser.get(filled["url"] + "#/entries?namespace=ui.plot")
    wait_for("plot rows", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#entries tr.entry")) == 3)
    shot(browser, "entries")


def _key_of(url, namespace, status=None):
    q = f"namespace={urllib.parse.quote(namespace)}" + (f"&status={status}" if status else "")
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/entries?{q}") as r:
        return json.load(r)["entries"][0]["key"]


def test_an_entry_shows_its_key_document_artifacts_and_explain(filled, browser):
    from selenium.webdriver.common.by import By

    key = ui_tasks.plot.entry(1).key
    browser.get(filled["url"] + f"#/entry/{key}")
    doc = wait_for("the key document", lambda: text_of(browser, "key-doc"))
    assert "ui.plot" in doc and "label" in doc and '"loss"' in doc
    assert "rows" in text_of(browser, "metadata")
    img = wait_for("the plot", lambda: browser.find_element(By.CSS_SELECTOR, "img.artifact"))
    wait_for("the image to load", lambda: browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", img) == 2)
    notes = wait_for("the notes", lambda: browser.find_element(By.CSS_SELECTOR, "pre.artifact-text").text)
    assert notes == "notes for loss 1"
    assert "args.x" in text_of(browser, "explain")
    shot(browser, "entry")


def test_a_failure_shows_its_traceback(filled, browser):
    key = ui_tasks.broken.entry(0).key
    browser.get(filled["url"] + f"#/entry/{key}")
    tb = wait_for("the traceback", lambda: text_of(browser, "traceback"))
    assert "ValueError" in tb and "broken beyond repair" in tb and "ui_tasks.py" in tb
    assert text_of(browser, "entry-status") == "failed"
    assert "ValueError: item 0 is broken beyond repair" in text_of(browser, "failure")
    shot(browser, "failure")


def test_store_text_is_shown_as_text_never_run(filled, browser):
    from selenium.webdriver.common.by import By

    key = _key_of(filled["url"], "ui.killed")
    browser.get(filled["url"] + f"#/entry/{key}")
    assert wait_for("the status", lambda: text_of(browser, "entry-status")) == "interrupted"
    out = wait_for("stdout", lambda: browser.find_element(By.CSS_SELECTOR, "pre.artifact-text[data-name=stdout]").text)
    assert out == "<script>window.pwned=3</script><b>not bold</b>"
    assert not browser.find_elements(By.CSS_SELECTOR, "#view b")
    hostile = ui_tasks.hostile.entry(1).key
    browser.get(filled["url"] + f"#/entry/{hostile}")
    ns = wait_for("the hostile namespace", lambda: text_of(browser, "entry-namespace"))
    assert ns == "<img src=x onerror=window.pwned=1>hostile"
    assert "<script>window.pwned=2</script>" in text_of(browser, "failure")
    assert not browser.find_elements(By.CSS_SELECTOR, "#view img, #view script")
    assert browser.execute_script("return window.pwned") is None


def test_a_running_sweep_counts_change_while_the_page_is_open(filled, browser):
    sweep = filled["sweep"]
    browser.get(filled["url"] + f"#/sweep/{sweep.id}")
    wait_for("the counts", lambda: text_of(browser, "count-completed") == "0")
    wait_for("a running item", lambda: text_of(browser, "count-running") == "1")
    wait_for("three queued items", lambda: text_of(browser, "count-queued") == "3")
    open(os.path.join(filled["gate"], "go-0"), "w").close()
    # No reload: the page hears the change from the server.
    wait_for("the first item to complete", lambda: text_of(browser, "count-completed") == "1")
    shot(browser, "sweep")


def test_deleting_an_entry_asks_first(filled, browser):
    from selenium.webdriver.common.by import By

    key = ui_tasks.plot.entry(2).key
    browser.get(filled["url"] + f"#/entry/{key}")
    button = wait_for("the delete button", lambda: browser.find_element(By.ID, "delete-entry"))
    button.click()
    browser.switch_to.alert.dismiss()
    assert ui_tasks.plot.entry(2).exists()
    button.click()
    browser.switch_to.alert.accept()
    wait_for("the entry to go", lambda: not ui_tasks.plot.entry(2).exists())


def test_beyond_loopback_every_request_needs_the_token(filled, browser):
    server = rc.ui(store=filled["store"], port=0, bind="0.0.0.0")
    try:
        assert "token=" in server.url
        port = server.url.split(":")[2].split("/")[0]
        for path in ("/", "/api/overview", "/app.js"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}")
            assert refused.value.code == 401
        wrong = f"http://127.0.0.1:{port}/api/overview?token=not-the-token"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(wrong)
        token = server.url.split("token=")[1]
        bearer = urllib.request.Request(f"http://127.0.0.1:{port}/api/info",
                                        headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(bearer) as r:
            assert json.load(r)["location"] == filled["store"]
        browser.get(server.url.replace("0.0.0.0", "127.0.0.1"))
        wait_for("the overview", lambda: "ui.plot" in text_of(browser, "namespaces"))
        # The token is now a cookie: other pages load without it in the address.
        browser.get(f"http://127.0.0.1:{port}/#/sweeps")
        wait_for("the sweeps", lambda: filled["sweep"].id in text_of(browser, "sweeps"))
        assert "token" not in browser.current_url
    finally:
        server.stop()
