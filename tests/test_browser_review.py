"""A real browser against a real server: a reviewer signs in, rates three cases, and the database has them.

Runs `streamlit run app.py` on a free loopback port against a prepared database and drives Debian's
headless Chromium through Playwright (no browser download). Everything the server sends over the
websocket is recorded and searched for run ids, model names and paths.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from conftest import store_intact
from live_app import BROWSER_TEST, choose, free_port, page_shown_on_failure, settle, sign_in, streamlit_server
from test_review_studies import SECRETS, make_review_db

from rocore.store.db import opened

pytestmark = BROWSER_TEST


@pytest.fixture
def server(db_path, tmp_path):
    info = make_review_db(db_path)
    with streamlit_server(db_path, tmp_path / "streamlit.log") as url:
        yield url, info


def test_a_reviewer_rates_three_cases_in_chromium(server, browser, db_path):
    url, info = server
    context = browser.new_context()
    page = context.new_page()
    with page_shown_on_failure(page):
        received, html = rate_three_cases_and_come_back(page, url, info)
    context.close()
    check_stored_and_blinded(db_path, info, page, received, html)


def rate_three_cases_and_come_back(page, url: str, info: dict) -> tuple[list[bytes], list[str]]:
    """Sign in, rate cases 1-3, reload (still signed in), resume at case 4, step back to case 3: what the
    server sent."""
    received: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(
        frame if isinstance(frame, bytes) else frame.encode())))

    page.goto(f"{url}/admin")  # the first request to a fresh server, signed out
    page.get_by_text("This page is for researchers and administrators: sign in first.").or_(
        page.get_by_role("button", name="Sign in")).first.wait_for(timeout=30_000)
    assert page.get_by_role("heading", name="Admin").count() == 0

    sign_in(page, url, "ada", info["codes"]["ada"])
    html = []
    for number in (1, 2, 3):
        settle(page, f"Case {number} of 8")
        page.get_by_text(f"{number - 1} of 8 rated").wait_for(timeout=30_000)
        html.append(page.content())
        choose(page, "Is Regimen A clinically acceptable?", "Acceptable")
        choose(page, "Is Regimen B clinically acceptable?", "Not acceptable")
        choose(page, "Score of Regimen A (1 poor, 5 excellent)", "4")
        choose(page, "Score of Regimen B (1 poor, 5 excellent)", "2")
        choose(page, "Which do you prefer?", "Regimen A")
        if number == 3:
            page.get_by_label("Comment (optional)").fill("checked with the shortcut")
            page.keyboard.press("Control+Enter")
        else:
            page.get_by_role("button", name="Submit").click()
        page.get_by_text(f"Saved case {number}.").wait_for(timeout=30_000)
    settle(page, "Case 4 of 8")
    html.append(page.content())

    page.reload()  # a refresh starts a new session, signed in from the session cookie, at the first unrated case
    settle(page, "Case 4 of 8")
    page.get_by_text("3 of 8 rated").wait_for(timeout=30_000)
    html.append(page.content())
    page.keyboard.press("Alt+P")  # back to the previous case, which shows the stored rating
    settle(page, "Case 3 of 8")
    page.get_by_text("You rated this case before (revision 1)").wait_for(timeout=30_000)
    html.append(page.content())
    return received, html


def check_stored_and_blinded(db_path, info: dict, page, received: list[bytes], html: list[str]) -> None:
    with opened(db_path) as conn:
        rows = conn.execute(
            "SELECT a.position, r.revision, r.acceptable_a, r.acceptable_b, r.likert_a, r.likert_b, "
            "r.preference, r.comment FROM ratings r JOIN assignments a USING (assignment_id) "
            "WHERE a.reviewer_id = ? ORDER BY a.position", (info["ids"]["ada"],)).fetchall()
        clients = {r[0] for r in conn.execute("SELECT client FROM audit_log "
                                              "WHERE action IN ('rate', 'sign-in')")}
    assert [tuple(r) for r in rows] == [(1, 1, 1, 0, 4, 2, "A", None), (2, 1, 1, 0, 4, 2, "A", None),
                                        (3, 1, 1, 0, 4, 2, "A", "checked with the shortcut")]
    assert clients == {"web localhost"}

    sent = (b"\n".join(received).decode("utf-8", "replace") + "\n".join(html) + page.url).casefold()
    assert "gy in" in sent
    assert [secret for secret in SECRETS if secret.casefold() in sent] == []


@pytest.mark.fault
def test_a_server_restart_mid_form_loses_no_rating_silently(db_path, tmp_path, browser):
    """The app restarts while a reviewer has a form filled in: nothing is stored that the reviewer was
    not told was saved, and the case is offered again, unrated, to the page that reconnects signed in
    from its session cookie. Without remembered sign-ins the page asks for the code and says that only
    a "Saved" message means a rating was stored."""
    info = make_review_db(db_path)
    port = free_port()
    context = browser.new_context()
    page = context.new_page()
    with page_shown_on_failure(page):
        with streamlit_server(db_path, tmp_path / "before.log", port) as url:
            sign_in(page, url, "ada", info["codes"]["ada"])
            settle(page, "Case 1 of 8")
            fill_in_the_form(page)
        # While the server is down the page keeps the answers but cannot send them: Submit is disabled.
        expect(page.get_by_role("button", name="Submit")).to_be_disabled(timeout=30_000)
        with streamlit_server(db_path, tmp_path / "after.log", port) as url:
            # The restarted server knows no session: the reconnected page resumes the sign-in from its
            # cookie and offers case 1 again, its form empty.
            settle(page, "Case 1 of 8")
            page.get_by_text("0 of 8 rated").wait_for(timeout=30_000)
            assert "Saved case 1" not in page.inner_text("body")
            assert store_intact(db_path)["ratings"] == 0
            fill_in_the_form(page)
            page.get_by_role("button", name="Submit").click()
            page.get_by_text("Saved case 1.").wait_for(timeout=30_000)
        with streamlit_server(db_path, tmp_path / "off.log", port, env={"ROCORE_SESSION_HOURS": "0"}):
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            page.get_by_text("A rating is stored only once the page has said").wait_for(timeout=30_000)
    context.close()
    assert store_intact(db_path)["ratings"] == 1


def fill_in_the_form(page) -> None:
    choose(page, "Is Regimen A clinically acceptable?", "Acceptable")
    choose(page, "Is Regimen B clinically acceptable?", "Not acceptable")
    choose(page, "Score of Regimen A (1 poor, 5 excellent)", "4")
    choose(page, "Score of Regimen B (1 poor, 5 excellent)", "2")
    choose(page, "Which do you prefer?", "Regimen A")


def test_both_forms_start_level_whatever_the_lengths_of_the_two_regimens(db_path, tmp_path, browser):
    """One regimen of one line, the other of eight: the two acceptability questions sit at the same
    height, and the case, both regimens and both questions fit a 1366x768 laptop screen unscrolled."""
    long = "\n".join(f"Phase {i}: 50.4 Gy in 28 fractions of 1.8 Gy to the prostate and seminal vesicles, "
                     "IMRT with daily image guidance" for i in range(1, 9))
    info = make_review_db(db_path, n_cases=4, reviewers=("ada",), overlap=1,
                          raw_outputs=lambda i: (f"Answer: {long}", "Answer: 60 Gy in 20 fractions"))
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    with page_shown_on_failure(page), streamlit_server(db_path, tmp_path / "streamlit.log") as url:
        sign_in(page, url, "ada", info["codes"]["ada"])
        settle(page, "Case 1 of 4")
        questions = [page.get_by_role("radiogroup", name=f"Is Regimen {side} clinically acceptable?").bounding_box()
                     for side in "AB"]
        assert abs(questions[0]["y"] - questions[1]["y"]) < 2, questions
        assert all(q["y"] + q["height"] <= 768 for q in questions), f"below the screen: {questions}"
    context.close()
