"""A researcher's walk in a real browser: Data -> Train (start, cancel, resume) -> Generate -> Dashboard.

Issue 18's done-when: at each step what the page says agrees with what the database holds. A real
`streamlit run app.py` serves a database that holds only its administrator; Debian's headless Chromium
(Playwright, no browser download) imports a CSV of cases and makes a split, trains an adapter of the tiny
test model in a real background process, cancels and resumes it, generates with the base and with the
adapter, and reads the Dashboard, whose figures must be rocore.evaluation's for the same runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import HEADER, csv_bytes, row
from playwright.sync_api import expect
from live_app import BROWSER_TEST, page_shown_on_failure, settle, sign_in, streamlit_server

from rocore.evaluation import dashboard
from rocore.evaluation.outputs import run_pairs
from rocore.evaluation.report import TASK_NAMES
from rocore.model.prompts import TASKS
from rocore.review import auth
from rocore.store import jobs
from rocore.store.db import opened

pytestmark = BROWSER_TEST

ADMIN, CODE = "boss", "correct horse battery"
N_CASES = 40
WAIT_MS = 30_000
STATUS_WORDS = r"\b(queued|running|cancelling|cancelled|finished|failed)\b"

# One look at the page, taken in one go between script runs (mid-run, a page or fragment is part new, part
# old), so that its parts belong together: the Train page's run status (the bold word of the line
# "**status** · base ... · split ...") and the Run box's choice, the metrics, whether each button is
# disabled, the code blocks, captions and alerts, and the body's text.
# JavaScript: whether no script run (of the page or of a fragment) is going on.
BETWEEN_RUNS = """document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === 'notRunning'"""
SNAPSHOT = """() => {
  if (!(%s)) return null;
  const text = e => e ? e.innerText.trim() : null;
  const all = selector => [...document.querySelectorAll(selector)];
  const line = all('[data-testid="stMarkdownContainer"]')
    .find(e => / · base .* · split /.test(e.innerText));
  return {
    status: line ? text(line.querySelector('strong')) : null,
    run_box: document.querySelector('input[role="combobox"][aria-label="Run"]')?.value ?? null,
    metrics: Object.fromEntries(all('[data-testid="stMetric"]').map(m => [
      text(m.querySelector('[data-testid="stMetricLabel"]')),
      text(m.querySelector('[data-testid="stMetricValue"]'))])),
    buttons: Object.fromEntries(all('button').map(b => [b.innerText.trim(), b.disabled])),
    codes: all('[data-testid="stCode"]').map(text),
    captions: all('[data-testid="stCaptionContainer"]').map(text),
    alerts: all('[data-testid="stAlert"]').map(text),
    body: document.body.innerText,
  };
}""" % BETWEEN_RUNS


def snapshot(page) -> dict:
    return wait_until(lambda: page.evaluate(SNAPSHOT), 60, "a moment between script runs")


def wait_until(condition, timeout: float, what: str):
    """Poll `condition` (a falsy value: not yet) until it holds or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)


def query(db_path: Path, sql: str, *params) -> list[dict]:
    """Rows as they are stored: plain SELECTs, which (unlike the pages' listings) change nothing."""
    with opened(db_path) as conn:
        return [dict(r) for r in conn.execute(sql, params)]


def training_run(db_path: Path, run_id: int) -> dict:
    (run,) = query(db_path, "SELECT *, (SELECT max(step) FROM training_metrics m WHERE m.run_id = r.run_id) "
                            "AS step FROM training_runs r WHERE run_id = ?", run_id)
    return run


def go_to(page, title: str) -> None:
    """Follow the sidebar's link to a page (a new URL would start a new, signed-out session)."""
    page.locator('[data-testid="stSidebarNavLink"]').filter(has=page.get_by_text(title, exact=True)).click()


def test_a_researcher_walks_from_data_to_dashboard_and_the_pages_agree_with_the_database(
        db_path, tmp_path, synthetic_cases, tiny_model_dir, browser):
    with opened(db_path) as conn:
        auth.create_first_admin(conn, ADMIN, CODE)
    try:
        with streamlit_server(db_path, tmp_path / "streamlit.log") as url:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            try:
                with page_shown_on_failure(page):
                    started = time.monotonic()
                    sign_in(page, url, ADMIN, CODE)
                    settle(page, "Cases")
                    split_name = import_cases_and_make_a_split(page, db_path, synthetic_cases[:N_CASES])
                    print(f"data: {time.monotonic() - started:.0f} s")
                    run_id = train_cancel_and_resume(page, db_path, tiny_model_dir, split_name)
                    print(f"train: {time.monotonic() - started:.0f} s")
                    base_run, tuned_run = generate_with_base_and_adapter(page, db_path, run_id)
                    print(f"generate: {time.monotonic() - started:.0f} s")
                    dashboard_shows_the_evaluation(page, db_path, base_run, tuned_run)
                    print(f"dashboard: {time.monotonic() - started:.0f} s")
            finally:
                context.close()
    finally:
        stop_jobs(db_path)


def import_cases_and_make_a_split(page, db_path: Path, cases: list[dict]) -> str:
    fields = ("case_id", "diagnosis", "regimen", "modality", "icd10", "site")
    data = csv_bytes(*(row(*(c[f] for f in fields[:5])) + f",{c['site']}" for c in cases),
                     header=HEADER + ",site")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        {"name": "cases.csv", "mimeType": "text/csv", "buffer": data})
    page.get_by_role("button", name=f"Import {len(cases)} cases").click()
    (imported,) = wait_until(lambda: query(db_path, "SELECT * FROM imports"), 30, "the import's row")
    page.get_by_text(f"cases.csv: imported {len(cases)} new and 0 updated cases "
                     f"(import {imported['import_id']}).", exact=True).wait_for(timeout=WAIT_MS)
    settle(page, "Cases")
    shown = snapshot(page)
    stored = query(db_path, f"SELECT {', '.join(fields)} FROM cases ORDER BY case_id")
    assert stored == [{f: c[f] for f in fields} for c in sorted(cases, key=lambda c: c["case_id"])]
    assert shown["metrics"]["Stored cases"] == str(len(stored))
    # The uploader is empty again: the stored file is not checked a second time (every row "already stored").
    assert page.locator('[data-testid="stFileUploaderFile"]').count() == 0
    assert "already stored" not in shown["body"] and "Valid rows" not in shown["metrics"]

    page.get_by_role("tab", name="Splits").click()
    page.get_by_role("button", name="Create split").click()
    (split,) = wait_until(lambda: query(db_path, "SELECT * FROM splits"), 30, "the split's row")
    page.get_by_text(f"Created split '{split['name']}' (id {split['split_id']}).",
                     exact=True).wait_for(timeout=WAIT_MS)
    parts = {r["part"]: r["n"] for r in query(db_path, "SELECT part, count(*) AS n FROM split_cases "
                                                       "WHERE split_id = ? GROUP BY part", split["split_id"])}
    assert split["name"] == "split-1" and sum(parts.values()) == len(cases) and set(parts) == {
        "train", "validation", "test"}
    page.get_by_text(f"{split['name']}: {len(cases)} cases, seed 0").wait_for(timeout=WAIT_MS)
    page.get_by_text("No diagnosis text appears in two parts.").wait_for(timeout=WAIT_MS)
    return split["name"]


def train_cancel_and_resume(page, db_path: Path, model_dir: Path, split_name: str) -> int:
    go_to(page, "Train")
    settle(page, "Train")
    choose_option(page, "Base model directory", str(model_dir), new=True)
    expect(page.get_by_role("combobox", name="Split", exact=True)).to_have_value(split_name)
    for label, (_, value) in TRAINING_SETTINGS.items():
        set_number(page, label, value)
    page.get_by_role("button", name="Start training").click()
    started = page.get_by_text(re.compile(r"^Started training run \d+ \(process \d+\)"))
    started.wait_for(timeout=60_000)
    run_id, pid = map(int, re.match(r"Started training run (\d+) \(process (\d+)\)",
                                    started.inner_text()).groups())
    run = training_run(db_path, run_id)
    assert run["pid"] == pid and run["status"] in ("queued", "running")
    assert query(db_path, "SELECT path FROM models WHERE model_id = ?", run["base_model_id"]) == [
        {"path": str(model_dir)}]
    config = json.loads(run["config"])
    assert {key: config[key] for key, _ in TRAINING_SETTINGS.values()} == {
        key: value or None for key, value in TRAINING_SETTINGS.values()}, "0 is off: stored as None"

    # Running: the step count and the log's last lines, as stored.
    def first_step():
        shown, stored = page_and_db(page, db_path, run_id, ("queued", "running"))
        return shown["status"] == "running" and "Step" in shown["metrics"] and (shown, stored)

    shown, run = wait_until(first_step, 180, "the first step on the page")
    assert run["pid"] == pid
    step, total = map(int, re.fullmatch(r"(\d+) of (\d+)",
                                        shown["metrics"]["Step"].replace(",", "")).groups())
    steps = {r["step"] for r in query(db_path, "SELECT step FROM training_metrics WHERE run_id = ?", run_id)}
    assert total == run["total_steps"] and step in steps, (shown["metrics"], steps, run["total_steps"])
    assert f"Log {run['log_path']}, last lines" in shown["captions"]
    tail = shown["codes"][-1].splitlines()
    assert tail and set(tail) <= set(Path(run["log_path"]).read_text().splitlines()), tail

    # Cancel: 'cancelling', with Resume disabled, while the process lives; 'cancelled' once it has exited.
    page.get_by_role("button", name="Cancel", exact=True).click()
    seen = []

    def cancelled():
        shown, stored = page_and_db(page, db_path, run_id, ("running", "cancelling", "cancelled"))
        alive = jobs.pid_alive(pid)
        seen.append((shown["status"], alive))
        if shown["status"] == "cancelling":
            assert shown["buttons"].get("Resume") is True, "Resume is disabled while the process lives"
            assert "Cancel" not in shown["buttons"]
            assert any(f"Cancelling: process {pid} stops" in a for a in shown["alerts"]), shown["alerts"]
            # The database says 'cancelled' only once the page has looked again after the process exited.
            assert stored["status"] == "cancelling" or not alive, (stored, alive)
        elif shown["status"] == "cancelled":
            assert not alive and stored["pid"] is None, (stored, alive)
            return shown
        return None

    shown = wait_until(cancelled, 180, "the run to be cancelled")
    print("after the cancel, page status and process alive:", seen)
    assert ("cancelling", True) in seen, f"'cancelling' while the process lived: {seen}"
    assert shown["buttons"].get("Resume") is False and "Cancel" not in shown["buttons"]
    assert not any("Cancelling" in a for a in shown["alerts"])
    stopped = training_run(db_path, run_id)
    assert stopped["adapter_model_id"] is None and stopped["step"] < stopped["total_steps"], stopped
    assert query(db_path, "SELECT * FROM models WHERE kind = 'adapter'") == []

    # Resume: a new process continues to the end and registers one adapter. The message lasts until the
    # fragment's next refresh, so it is caught at every animation frame.
    page.get_by_role("button", name="Resume").click()
    resumed = page.wait_for_function(
        """run => [...document.querySelectorAll('[data-testid="stAlert"]')].map(e => e.innerText.trim())
                   .find(text => text.startsWith(`Resuming run ${run} (process `))""",
        arg=run_id, polling="raf", timeout=WAIT_MS).json_value()
    second = int(re.fullmatch(rf"Resuming run {run_id} \(process (\d+)\)\.", resumed).group(1))
    assert second != pid and training_run(db_path, run_id)["pid"] in (second, None)

    def finished():
        shown, stored = page_and_db(page, db_path, run_id, ("cancelled", "queued", "running", "finished"))
        return shown["status"] == "finished" and shown

    shown = wait_until(finished, 300, "the resumed run to finish")
    run = training_run(db_path, run_id)
    adapters = query(db_path, "SELECT * FROM models WHERE kind = 'adapter'")
    assert run["pid"] is None and run["step"] == run["total_steps"], run
    assert [(a["model_id"], json.loads(a["details"])) for a in adapters] == [
        (run["adapter_model_id"], {"training_run": run_id})], "exactly one adapter, that of the run"
    assert shown["metrics"]["Step"] == f"{run['step']:,} of {run['total_steps']:,}"
    page.get_by_text(f"adapter {adapters[0]['path']}").wait_for(timeout=WAIT_MS)
    trail = [(r["action"], json.loads(r["detail"]).get("pid")) for r in query(
        db_path, "SELECT action, detail FROM audit_log WHERE entity = 'training_runs' ORDER BY audit_id")]
    assert trail == [("create-training-run", None), ("start-training-run", pid), ("cancel-training-run", pid),
                     ("mark-cancelled", pid), ("resume-training-run", second),
                     ("finish-training-run", second)]
    return run_id


def page_and_db(page, db_path: Path, run_id: int, order: tuple[str, ...]) -> tuple[dict, dict]:
    """A look at the Train page, then at the run as stored. The page shows what it read at its last refresh
    (every 3 s), so it may lag the database, never lead or contradict it: both statuses are in `order`
    (the statuses of this stretch, in the order the run goes through them), the page's not past the
    database's."""
    shown, stored = snapshot(page), training_run(db_path, run_id)
    assert shown["status"] in order and stored["status"] in order, (shown["status"], stored["status"], order)
    assert order.index(shown["status"]) <= order.index(stored["status"]), (shown["status"], stored["status"])
    # The Run box names the run, and no status other than the line's (it once kept the first one it showed).
    assert shown["run_box"].startswith(f"{run_id}: "), shown["run_box"]
    assert set(re.findall(STATUS_WORDS, shown["run_box"])) <= {shown["status"]}, (shown["run_box"],
                                                                                   shown["status"])
    return shown, stored


# Label on the Train page: (TrainingConfig field, value). Small enough to finish in a minute or two on a busy
# 2-core CPU (5 epochs of the split's training cases x 3 tasks in batches of 4: 120 steps), long enough to be
# cancelled mid-way on a quiet one too (2 epochs, 48 steps, took 2.4 s there: over before the page's 3 s refresh).
TRAINING_SETTINGS = {"Epochs": ("epochs", 5.0), "Batch size": ("batch_size", 4), "LoRA rank": ("lora_r", 4),
                     "Evaluate every N steps (0: each epoch)": ("eval_steps", 10),
                     "Early-stopping patience (0: off)": ("early_stopping_patience", 0)}


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=WAIT_MS)


def choose_option(page, label: str, option: str, new: bool = False) -> None:
    """Choose `option` in the select box `label`; `new`: type it in (a box that accepts new options)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    if new:
        page.keyboard.type(option)
        page.get_by_role("option", name=f"Add: {option}", exact=True).click()
    else:
        page.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option, timeout=WAIT_MS)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=WAIT_MS)


def generate_with_base_and_adapter(page, db_path: Path, training_run_id: int) -> tuple[int, int]:
    go_to(page, "Generate")
    settle(page, "Generate")
    (base,) = query(db_path, "SELECT path FROM models WHERE kind = 'base'")
    (adapter,) = query(db_path, "SELECT path FROM models WHERE kind = 'adapter'")
    expect(page.get_by_role("combobox", name="Base model directory", exact=True)).to_have_value(
        base["path"], timeout=WAIT_MS)
    runs = [generate(page, db_path, None)]
    choose_option(page, "LoRA adapter (empty: the base model alone)", adapter["path"])
    runs.append(generate(page, db_path, runs[0]))
    (test_cases,) = query(db_path, "SELECT count(*) AS n FROM split_cases WHERE part = 'test'")
    stored = {r["run_id"]: r for r in query(db_path, "SELECT r.*, (SELECT count(*) FROM generations g WHERE "
                                                     "g.run_id = r.run_id) AS done FROM generation_runs r")}
    assert list(stored) == runs
    assert [stored[r]["adapter_model_id"] for r in runs] == [None, training_run(db_path, training_run_id)[
        "adapter_model_id"]]
    assert {stored[r]["done"] for r in runs} == {3 * test_cases["n"]}, "every test case, each of 3 tasks"
    table = shown_table(page)
    assert [(int(r["run"]), r["status"], r["outputs"]) for r in table] == [
        (run_id, stored[run_id]["status"], f"{stored[run_id]['done']:,} / {3 * test_cases['n']:,}")
        for run_id in reversed(runs)]
    return tuple(runs)


def generate(page, db_path: Path, previous: int | None) -> int:
    """Start a generation run on the page and wait for the page to say it is done: its run id."""
    page.get_by_role("button", name="Start generation").click()
    done = re.compile(r"^Process (\d+) is done: run (\d+) is (\w+)\.$")

    def finished():
        for alert in snapshot(page)["alerts"]:
            if (match := done.match(alert)) and int(match[2]) != previous:
                return match
            assert not alert.startswith("The process ended with exit code"), alert
        return None

    match = wait_until(finished, 240, "the generation process to finish")
    run_id = int(match[2])
    (run,) = query(db_path, "SELECT * FROM generation_runs WHERE run_id = ?", run_id)
    assert match[3] == run["status"] == "finished" and run["pid"] is None
    (start,) = query(db_path, "SELECT detail FROM audit_log WHERE action = 'start-generation-run' "
                              "AND entity_id = ?", str(run_id))
    assert json.loads(start["detail"])["pid"] == int(match[1]) and not jobs.pid_alive(int(match[1]))
    return run_id


def shown_table(where) -> list[dict]:
    """The rows of the first dataframe in `where` (a page or part of one), as its grid's hidden accessible
    table has them: the text of each cell, under its column's title; read between script runs, once the
    grid has drawn its header and rows."""
    grid = where.locator('[data-testid="stDataFrame"]').first
    grid.locator('[role="gridcell"]').first.wait_for(state="attached", timeout=WAIT_MS)

    def rows():
        return grid.evaluate("""grid => {
          if (!(%s)) return null;
          const text = e => e.textContent.trim();
          const header = [...grid.querySelectorAll('[role="columnheader"]')].map(text);
          const rows = [...grid.querySelectorAll('tbody [role="row"]')].map(
            row => [...row.querySelectorAll('[role="gridcell"]')].map(text));
          if (!header.length || !rows.length || rows.some(cells => cells.length !== header.length)) {
            return null;
          }
          return rows.map(cells => Object.fromEntries(cells.map((cell, i) => [header[i], cell])));
        }""" % BETWEEN_RUNS)

    return wait_until(rows, 30, "the table's cells")


def dashboard_shows_the_evaluation(page, db_path: Path, base_run: int, tuned_run: int) -> None:
    go_to(page, "Dashboard")
    settle(page, "Dashboard")
    with opened(db_path) as conn:
        compared = run_pairs(conn, None)
        view = dashboard.compute(conn, dashboard.ScoreCache(), compared)
    assert compared.distinct() == {(base_run, tuned_run): list(TASKS)}
    page.get_by_text(re.compile(rf"^Compared: regimen, modality, icd10: run {base_run}: .* against "
                                rf"run {tuned_run}: ")).wait_for(timeout=WAIT_MS)
    shown = wait_until(lambda: (s := snapshot(page))["metrics"].get("Cases") and s, 60, "the Cases figure")
    (test_cases,) = query(db_path, "SELECT count(*) AS n FROM split_cases WHERE part = 'test'")
    assert shown["metrics"]["Cases"] == f"{view.n_cases:,}" == f"{test_cases['n']:,}"
    panels = page.locator('[data-testid="stTabPanel"]')
    assert page.get_by_role("tab").all_inner_texts() == [TASK_NAMES[t] for t in TASKS]
    for i, task in enumerate(TASKS):
        figures = view.report["tasks"][task]
        # The grid's accessible cells hold each number itself, not the three decimals drawn on the canvas.
        page.get_by_role("tab", name=TASK_NAMES[task]).click()  # a tab's tables are drawn once it is opened
        shown = {r["metric"]: r for r in shown_table(panels.nth(i))}["accuracy"]
        for model, name in (("base", "base"), ("finetuned", "fine-tuned")):
            assert float(shown[name]) == pytest.approx(figures[model]["accuracy"], abs=1e-12), (task, shown)
            low, high = figures[model]["ci95"]["accuracy"]["wilson"]
            assert shown[f"{name} 95% CI"] == f"[{low:.3f}, {high:.3f}]", (task, shown)
        low, high = figures["paired"]["difference"]["accuracy"]["ci95"]["newcombe"]
        assert shown["difference 95% CI"] == f"[{low:.3f}, {high:.3f}]", (task, shown)
        assert figures["paired"]["n_pairs"] == view.n_cases


def stop_jobs(db_path: Path) -> None:
    """End the training and generation processes the walk started that still run (after a failure)."""
    if not db_path.exists():
        return
    for r in query(db_path, "SELECT pid FROM training_runs WHERE pid IS NOT NULL UNION "
                            "SELECT pid FROM generation_runs WHERE pid IS NOT NULL"):
        if jobs.pid_alive(r["pid"]):
            os.kill(r["pid"], signal.SIGKILL)
