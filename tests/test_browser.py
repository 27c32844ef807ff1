"""In a real browser (Debian's headless Chromium, driven by Selenium): the MLflow UI over a
tiny repro's store, and the offline `dvc plots show` page.

Screenshots go to ``test-artifacts/`` (or ``$RNNLAB_TEST_ARTIFACTS``), not committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from _project import ROOT, env_for_tools, sh
from _servers import group_commands

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("RNNLAB_TEST_ARTIFACTS") or ROOT / "test-artifacts")


def ensure_browser() -> None:
    """Skip, with the command that installs them, when Debian's chromium + chromedriver are
    missing. Tests never install system packages: `.ci/run` and `./dev.sh browser` do."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    pytest.skip("no browser: /usr/bin/chromium and /usr/bin/chromedriver are missing; "
                "install them with `./dev.sh browser` (Debian's chromium and chromium-driver, "
                "as root or with password-less sudo), then rerun the tests")


def new_driver():
    """Headless Chromium with a fresh profile: what a first visit sees (no remembered view)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="rnnlab-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}", "--window-size=1600,1000",
                # Nothing but loopback resolves: the pages must work without the internet.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser():
    ensure_browser()
    driver = new_driver()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(tiny_pipeline):
    """`python -m rnnlab.tracking.ui` (what `./dev.sh ui` runs) over the tiny repro's store."""
    with ui_over(tiny_pipeline) as url:
        yield url


@contextmanager
def ui_over(repo: Path):
    """The UI over ``repo``'s store until the block ends; its output in ``../ui.log``."""
    with ui_process(repo) as (url, _):
        yield url


@contextmanager
def ui_process(repo: Path, env: dict[str, str] | None = None):
    """``ui_over``'s UI and its process (the leader of its own process group); ``env``: more
    environment for it."""
    port = free_port()
    log_path = repo.parent / "ui.log"                   # outside the repository
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "rnnlab.tracking.ui", "--port", str(port)],
                            cwd=repo, env=env_for_tools() | (env or {}), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the MLflow UI did not start:\n"
                                     + log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield url, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_the_ui_starts_without_mlflows_job_runner_unless_asked(tiny_pipeline):
    """MLflow's server starts a job runner and its huey consumers (GenAI jobs) unless
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION is false: the UI sets it false, and a user's own
    setting wins. (The runner starts just after the server's process, before it answers.)"""
    with ui_process(tiny_pipeline) as (_, proc):
        plain = group_commands(proc.pid)
        log = (tiny_pipeline.parent / "ui.log").read_text()
    assert "Warning" not in log, log            # Starlette's, from MLflow's own import
    assert not [c for c in plain if "jobs._job_runner" in c or "huey" in c], plain
    assert len(plain) == 2 and "mlflow ui" in plain[0] and "uvicorn" in plain[1], plain
    with ui_process(tiny_pipeline, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}) as (_, proc):
        asked = group_commands(proc.pid)
    assert [c for c in asked if "jobs._job_runner" in c], asked


def wait_for_text(driver, predicate, timeout: float = 60) -> str:
    """The page's text once ``predicate(text)`` holds (the UI renders after its API calls)."""
    deadline = time.monotonic() + timeout
    while True:
        text = driver.find_element("tag name", "body").text
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"page never showed what was expected; it shows:\n{text[:3000]}")
        time.sleep(0.5)


def test_the_printed_links_open_on_the_runs_list(browser, mlflow_ui, tiny_pipeline):
    """The links `./dev.sh ui` prints (and the README gives) land a first-time visitor on
    the experiment's runs list in MLflow's model-training view, not on the GenAI overview;
    `./dev.sh runs --links` gives a comparison link that opens on the comparison."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_pipeline}/mlflow.db")
    printed = (tiny_pipeline.parent / "ui.log").read_text()
    links = dict(re.findall(r"^  (rnnlab-\w+) \(experiment \d+\), runs: (\S+)$", printed, re.M))
    assert set(links) == {"rnnlab-jena", "rnnlab-imdb"}, printed
    readme = (ROOT / "README.md").read_text()
    for name, link in links.items():
        exp = client.get_experiment_by_name(name)
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
        assert link.startswith(mlflow_ui) and f"/experiments/{exp.experiment_id}/" in link
        assert link.replace(mlflow_ui, "http://127.0.0.1:5000") in readme, (name, link)

    runs = client.search_runs([client.get_experiment_by_name("rnnlab-imdb").experiment_id])
    first_visit = new_driver()
    try:
        first_visit.get(links["rnnlab-imdb"])
        names = {r.info.run_name for r in runs}
        text = wait_for_text(first_visit, lambda t: f"{len(runs)} matching runs" in t
                             and names <= set(t.splitlines()))       # every run listed
        first_visit.save_screenshot(str(ARTIFACTS / "mlflow_first_visit.png"))
    finally:
        first_visit.quit()
    menu = set(text.splitlines())
    assert {"Runs", "Models", "Columns"} <= menu, text[:2000]       # the model-training view
    assert not {"Overview", "Token Usage", "Training runs"} & menu, text[:2000]

    listing = sh(tiny_pipeline, sys.executable, "-m", "rnnlab.tracking.runs", "--links", mlflow_ui).stdout
    compare = [ln.split("compare: ", 1)[1] for ln in listing.splitlines()
               if ln.startswith("  compare: ")][0]          # workspace, rnnlab-imdb: 6 runs
    n = len(json.loads(compare.split("runs=", 1)[1].split("&", 1)[0]))
    first_visit = new_driver()
    try:
        first_visit.get(compare)
        text = wait_for_text(first_visit, lambda t: f"Comparing {n} Runs" in t)
    finally:
        first_visit.quit()
    menu = set(text.splitlines())
    assert "Model registry" in menu, text[:2000]                     # the model-training view
    assert not {"Prompts", "AI Gateway"} & menu, text[:2000]         # not GenAI's sidebar


def test_a_sweep_opens_as_one_runs_list_and_one_comparison(pipeline_copy):
    """Two real experiments that each retrain `gru_dropout` with other units: `runs --links`
    prints one block for that sweep, whose runs link opens the runs list on just its points,
    sorted on val_mae, with val_mae, test_mae and the swept param as columns (a view saved in
    the store as the UI's Share button saves one), whose charts link opens that list's charts
    of val_mae only, and whose compare link compares them."""
    from mlflow.tracking import MlflowClient

    repo = pipeline_copy
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny results")
    for name, units in (("u8", "[8]"), ("u16", "[16]")):
        sh(repo, "dvc", "exp", "run", "-n", name, "-S", f"models.gru_dropout.units={units}",
           "train@gru_dropout")
    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("rnnlab-jena")
    points = {r.data.tags["dvc_exp_name"]: r for r in client.search_runs(
        [exp.experiment_id], "tags.variant = 'gru_dropout'") if r.data.tags["dvc_exp_name"]
        in ("u8", "u16")}
    assert set(points) == {"u8", "u16"}
    ensure_browser()
    with ui_over(repo) as url:
        listing = sh(repo, sys.executable, "-m", "rnnlab.tracking.runs", "--links", url).stdout
        block = listing.split("\nsweeps: ", 1)[1].splitlines()
        head = [ln for ln in block if ln.startswith("gru_dropout @ ")]
        assert len(head) == 1 and "2 points: u16, u8; they differ in model.units" in head[0], listing
        at = block.index(head[0])
        compare = block[at + 1].split("compare: ", 1)[1]
        runs = block[at + 2].split("runs:", 1)[1].strip()
        charts = block[at + 3].split("charts:", 1)[1].strip()
        assert charts == runs + "&compareRunsMode=CHART"
        assert json.loads(compare.split("runs=", 1)[1].split("&", 1)[0]) == \
            [points["u16"].info.run_id, points["u8"].info.run_id]
        again = sh(repo, sys.executable, "-m", "rnnlab.tracking.runs", "--links", url).stdout
        assert again == listing                 # the same view, the same tag: nothing added
        driver = new_driver()
        try:
            driver.get(runs)
            columns = {"val_mae", "test_mae", "model.units", "gru_dropout (u8)"}
            text = wait_for_text(driver, lambda t: "2 matching runs" in t
                                 and columns <= set(t.splitlines()))   # the grid drawn
            for close in driver.find_elements("css selector", "button[aria-label='Close']")[:1]:
                close.click()                   # the MLflow Assistant's side panel
            time.sleep(1)
            driver.save_screenshot(str(ARTIFACTS / "mlflow_sweep_runs.png"))
            driver.get(compare)
            compared = wait_for_text(driver, lambda t: "Comparing 2 Runs" in t)
            driver.save_screenshot(str(ARTIFACTS / "mlflow_sweep_compare.png"))
            driver.get(charts)
            drawn = wait_for_text(driver, lambda t: {"epoch/val_mae", "Step"}
                                  <= set(t.splitlines()))                # a chart drawn
            driver.save_screenshot(str(ARTIFACTS / "mlflow_sweep_charts.png"))
        finally:
            driver.quit()
    lines = text.splitlines()
    assert {"val_mae", "test_mae", "model.units", "Sort: val_mae"} <= set(lines), text[:2000]
    assert not {"Source", "Dataset"} & set(lines), text[:2000]   # ("Models" is in the sidebar)
    best, other = sorted(points.values(), key=lambda r: r.data.metrics["val_mae"])
    assert lines.index(best.info.run_name) < lines.index(other.info.run_name), text[:2000]
    assert "gru_dropout (u8)" in compared and "gru_dropout (u16)" in compared
    # the charts: the headline figure's only (the search box holds val_mae), both runs
    assert "val_mae" in drawn.splitlines() and "epoch/train_loss" not in drawn, drawn[:3000]
    assert "gru_dropout (u8)" in drawn and "gru_dropout (u16)" in drawn


def test_mlflow_ui_lists_and_compares_every_variant(browser, mlflow_ui, tiny_pipeline):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.keys import Keys

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_pipeline}/mlflow.db")
    exp = client.get_experiment_by_name("rnnlab-jena")
    runs = client.search_runs([exp.experiment_id])
    variants = {r.info.run_name for r in runs}
    assert {"naive", "gru", "gru_dropout", "lstm", "bigru"} <= variants

    # The runs list: every run by name, and the count.
    browser.get(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs")
    wait_for_text(browser, lambda t: f"{len(runs)} matching runs" in t
                  and variants <= set(t.splitlines()))
    browser.save_screenshot(str(ARTIFACTS / "mlflow_runs.png"))

    # Filtering by DVC experiment (the documented search) narrows the list.
    box = browser.find_element("css selector", "input[placeholder*='metrics']")
    box.send_keys("tags.dvc_exp_name = 'workspace' and tags.variant = 'gru'", Keys.ENTER)
    wait_for_text(browser, lambda t: "1 matching runs" in t or "1 matching run" in t)
    browser.save_screenshot(str(ARTIFACTS / "mlflow_runs_filtered.png"))

    # The compare view of the lecture's recurrent models: names and final val_mae side by side.
    compared = [r for r in runs if r.info.run_name in ("gru", "gru_dropout", "bigru", "lstm")]
    ids = [r.info.run_id for r in compared]
    browser.get(f"{mlflow_ui}/#/compare-runs?runs={json.dumps(ids)}"
                f"&experiments={json.dumps([exp.experiment_id])}")
    text = wait_for_text(browser, lambda t: "Comparing 4 Runs" in t and "\nMetrics\n" in t)
    names = text.split("Run Name:", 1)[1].split("Start Time", 1)[0].split()
    assert sorted(names) == ["bigru", "gru", "gru_dropout", "lstm"]
    # The metrics grid renders only the rows in view: read it in view, at the top, at the end.
    metric = browser.find_element("xpath", "//*[normalize-space(text())='val_mae']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric)
    time.sleep(1)
    browser.save_screenshot(str(ARTIFACTS / "mlflow_compare.png"))
    texts = [text, browser.find_element("tag name", "body").text]
    scroll_grids = """
        for (const el of document.querySelectorAll('*')) {
            if (el.scrollHeight > el.clientHeight + 5) el.scrollTop = arguments[0];
        }"""
    for position in (0, 10**6):
        browser.execute_script(scroll_grids, position)
        time.sleep(1)
        texts.append(browser.find_element("tag name", "body").text)
    shown = set(re.findall(r"\d+\.\d{3}\b", "\n".join(texts)))
    for run in compared:
        assert f"{run.data.metrics['val_mae']:.3f}" in shown, (run.info.run_name, shown)


def _column_node(driver, name: str):
    """The Columns menu's tree node titled ``name`` (None while it is not shown)."""
    for node in driver.find_elements("css selector", "[role=dialog] .du-bois-light-tree-treenode"):
        title = node.find_elements("css selector", ".du-bois-light-tree-title")
        if title and title[0].text.strip() == name:
            return node
    return None


def set_column(driver, name: str, shown: bool = True) -> None:
    """In the open Columns menu, what a user does: type the column's name in its search
    box, open the group that holds it, tick (or untick) it."""
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("css selector", "[role=dialog] input[placeholder='Search columns']")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE, name)
    deadline = time.monotonic() + 20
    while _column_node(driver, name) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no column {name!r} in the Columns menu")
        for switch in driver.find_elements(
                "css selector", "[role=dialog] .du-bois-light-tree-switcher_close"):
            switch.click()                   # a search leaves the matching group closed
        time.sleep(0.25)
    for _ in range(5):
        checkbox = _column_node(driver, name).find_element(
            "css selector", ".du-bois-light-tree-checkbox")
        if ("checkbox-checked" in checkbox.get_attribute("class")) == shown:
            return
        checkbox.click()
        time.sleep(0.5)
    raise AssertionError(f"column {name!r} did not stay {'ticked' if shown else 'unticked'}")


def test_headline_metrics_go_on_the_runs_list_through_columns(mlflow_ui, tiny_pipeline):
    """docs/tracking.md's recipe, in a fresh browser: Columns, untick three attributes, tick
    val_accuracy, test_accuracy and model.cell; each run's figures then show in the list."""
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.keys import Keys

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_pipeline}/mlflow.db")
    exp = client.get_experiment_by_name("rnnlab-imdb")
    runs = client.search_runs([exp.experiment_id])
    ensure_browser()
    driver = new_driver()
    try:
        driver.get(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs"
                   f"?workflowType=machine_learning")
        wait_for_text(driver, lambda t: f"{len(runs)} matching runs" in t)
        for close in driver.find_elements("css selector", "button[aria-label='Close']")[:1]:
            close.click()                   # the MLflow Assistant's side panel
        [columns] = [b for b in driver.find_elements("css selector", "button")
                     if b.text.strip() == "Columns"]
        columns.click()
        for name in ("Dataset", "Source", "Models"):
            set_column(driver, name, shown=False)
        for name in ("val_accuracy", "test_accuracy", "model.cell"):
            set_column(driver, name)
        driver.find_element("tag name", "body").send_keys(Keys.ESCAPE)
        text = wait_for_text(driver, lambda t: "val_accuracy" in t.splitlines())
        driver.save_screenshot(str(ARTIFACTS / "mlflow_runs_columns.png"))
    finally:
        driver.quit()
    lines = text.splitlines()
    assert {"Metrics", "Parameters", "test_accuracy", "model.cell"} <= set(lines), text[:2000]
    assert "Dataset" not in lines and "Source" not in lines
    for run in runs:
        for key in ("val_accuracy", "test_accuracy"):
            assert repr(run.data.metrics[key]) in lines, (run.info.run_name, key, text[:2000])
    cells = {r.data.params.get("model.cell") for r in runs} - {None}
    assert cells == {"rnn", "lstm"} and cells <= set(lines)


def test_offline_plots_page_renders_without_internet(browser, tiny_pipeline):
    """`./dev.sh plots show` writes a self-contained page whose vega charts draw offline;
    DVC's default page (vega from a CDN) draws none under the same conditions."""
    if shutil.which("npm") is None:
        pytest.skip("npm not found: the offline page takes vega from the npm registry; "
                    "install Node.js and npm (Debian: apt-get install nodejs npm)")
    # DVC's own page first: its scripts cannot load when nothing resolves.
    cdn_page = tiny_pipeline.parent / "cdn_plots"
    sh(tiny_pipeline, "dvc", "plots", "show", "-o", str(cdn_page))
    browser.get((cdn_page / "index.html").as_uri())
    time.sleep(2)
    assert browser.execute_script("return document.querySelectorAll('.vega-embed').length") == 0

    proc = subprocess.run([sys.executable, "-m", "rnnlab.tools.offline_plots", "show"],
                          cwd=tiny_pipeline, env=env_for_tools(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = tiny_pipeline / "dvc_plots" / "index.html"
    html = page.read_text()
    assert not re.search(r"<script[^>]+src=", html), "no external scripts"
    assert "jena_validation_mae" in html and "reports/jena_validation.png" in html

    browser.get(page.as_uri())
    expected = html.count("vegaEmbed(")
    assert expected >= 4                  # the two overlays and the two gradients charts
    deadline = time.monotonic() + 60
    while browser.execute_script(
            "return document.querySelectorAll('.vega-embed svg, .vega-embed canvas').length"
    ) < expected:
        assert time.monotonic() < deadline, "the vega charts did not draw"
        time.sleep(0.5)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert images and all(width > 0 for _, width in images), images
    browser.save_screenshot(str(ARTIFACTS / "dvc_plots_offline.png"))
