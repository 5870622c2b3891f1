"""Staying signed in, in a real browser: a refresh or a new tab resumes the sign-in from the session
cookie without the access code; a sign-out, an administrator ending the sessions or a code reset sends
the next refresh to the sign-in form; with $ROCORE_SESSION_HOURS=0 every refresh asks for the code.

Runs `streamlit run app.py` against a prepared database and drives Debian's headless Chromium through
Playwright (tests/live_app.py). The cookie is checked against the access code, the store and the audit log.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

from conftest import ROOT
from live_app import BROWSER_TEST, page_shown_on_failure, settle, sign_in, streamlit_server
from test_review_studies import make_review_db

from rocore.review import auth
from rocore.store.db import opened

pytestmark = BROWSER_TEST

COOKIE = "rocore_session"


def session_cookie(context) -> dict | None:
    return next((c for c in context.cookies() if c["name"] == COOKIE), None)


def cookie_written(context, previous: str | None = None, timeout_s: float = 30) -> dict:
    """The session cookie once the page has written one other than `previous`."""
    deadline = time.monotonic() + timeout_s
    while (cookie := session_cookie(context)) is None or cookie["value"] == previous:
        assert time.monotonic() < deadline, f"no new {COOKIE} cookie after {timeout_s} s: {context.cookies()}"
        time.sleep(0.2)
    return cookie


def cookie_cleared(context, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while session_cookie(context) is not None:
        assert time.monotonic() < deadline, f"{COOKIE} still set after {timeout_s} s"
        time.sleep(0.2)


def sign_in_form(page, says: str | None = None) -> None:
    """Wait for the sign-in form (and the message it shows, if given)."""
    page.get_by_role("button", name="Sign in", exact=True).wait_for(timeout=30_000)
    if says:
        page.get_by_text(says).wait_for(timeout=30_000)
    assert page.get_by_role("heading", name="Case 1 of 4").count() == 0


def sign_in_as_ada(page, url: str, code: str) -> None:
    """Sign in with the code and wait for her first case."""
    sign_in(page, url, "ada", code)
    settle(page, "Case 1 of 4")


def server_for_ada(db_path, tmp_path, hours: str = "8"):
    info = make_review_db(db_path, n_cases=4, reviewers=("ada",), overlap=1)
    return info, streamlit_server(db_path, tmp_path / "streamlit.log", env={"ROCORE_SESSION_HOURS": hours})


def check_kept_secret(db_path, token: str, code: str) -> None:
    """The cookie is not the code, and neither the store nor its audit log holds the token."""
    assert token != code and code.replace("-", "") not in token.upper()
    with opened(db_path) as conn:
        dump = "\n".join(conn.iterdump())
        assert conn.execute("SELECT count(*) FROM sessions WHERE token_hash = ?",
                            (hashlib.sha256(token.encode()).digest(),)).fetchone()[0] == 1
    assert token not in dump and hashlib.sha256(token.encode()).hexdigest() not in dump


def test_a_refresh_or_a_new_tab_stays_signed_in_until_the_reviewer_signs_out(db_path, tmp_path, browser):
    info, server = server_for_ada(db_path, tmp_path)
    context = browser.new_context()
    page = context.new_page()
    with page_shown_on_failure(page), server as url:
        sign_in_as_ada(page, url, info["codes"]["ada"])
        cookie = cookie_written(context)
        assert (cookie["path"], cookie["sameSite"], cookie["httpOnly"]) == ("/", "Strict", False)
        assert abs(cookie["expires"] - (time.time() + 8 * 3600)) < 120

        page.reload()
        settle(page, "Case 1 of 4")
        assert page.get_by_role("button", name="Sign in", exact=True).count() == 0
        tab = context.new_page()
        tab.goto(url)
        settle(tab, "Case 1 of 4")
        tab.close()

        page.get_by_role("button", name="Sign out").click()
        sign_in_form(page)
        cookie_cleared(context)
        page.reload()
        sign_in_form(page)
    context.close()

    check_kept_secret(db_path, cookie["value"], info["codes"]["ada"])
    with opened(db_path) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE actor = 'ada' "
                                              "ORDER BY audit_id")]
        assert [r[0] for r in conn.execute("SELECT end_reason FROM sessions")] == ["sign-out"]
    assert actions == ["sign-in-attempt", "sign-in", "start-session", "resume-session", "resume-session",
                       "sign-out"]


def test_an_administrator_ending_the_sessions_or_a_code_reset_sends_a_refresh_to_the_sign_in_form(
        db_path, tmp_path, browser):
    info, server = server_for_ada(db_path, tmp_path)
    context = browser.new_context()
    page = context.new_page()
    with page_shown_on_failure(page), server as url:
        sign_in_as_ada(page, url, info["codes"]["ada"])
        first = cookie_written(context)["value"]
        ended = subprocess.run([sys.executable, "-m", "rocore", "reviewer", "end-sessions", "ada",
                                "--db", str(db_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert ended.returncode == 0 and ended.stdout.startswith("ended 1 sign-in session(s) of 'ada'"), ended
        page.reload()
        sign_in_form(page, auth.SESSION_ENDED["revoked"])
        cookie_cleared(context)

        sign_in_as_ada(page, url, info["codes"]["ada"])
        second = cookie_written(context)["value"]
        assert second != first
        with opened(db_path) as conn:
            new_code = auth.reset_code(conn, "ada", actor_id=info["admin_id"])
        page.reload()
        sign_in_form(page, auth.SESSION_ENDED["code-reset"])
        cookie_cleared(context)
        sign_in_as_ada(page, url, new_code)
    context.close()

    for token in (first, second):
        check_kept_secret(db_path, token, info["codes"]["ada"])
    with opened(db_path) as conn:
        reasons = [r[0] for r in conn.execute("SELECT end_reason FROM sessions ORDER BY session_id")]
        refused = [r[0] for r in conn.execute("SELECT json_extract(detail, '$.reason') FROM audit_log "
                                              "WHERE action = 'resume-refused' ORDER BY audit_id")]
    assert reasons == ["revoked", "code-reset", None] and refused == ["revoked", "code-reset"]


def test_with_remembered_sign_ins_off_a_refresh_asks_for_the_code(db_path, tmp_path, browser):
    info, server = server_for_ada(db_path, tmp_path, hours="0")
    context = browser.new_context()
    page = context.new_page()
    with page_shown_on_failure(page), server as url:
        sign_in_as_ada(page, url, info["codes"]["ada"])
        page.reload()
        sign_in_form(page)
        assert session_cookie(context) is None
    context.close()
