"""app.py through AppTest: a missing database, first-run admin, sign-in, the pages each role gets,
sign-out, and the sessions that end by themselves (deactivation, code reset, idle).

AppTest resets Streamlit's `pages/`-directory detection before every run, so from a session's second
`run()` on it executes the requested page file directly, not app.py. Each check here therefore
starts a new session (with `session_state["user"]` set where it needs a signed-in user, as app.py
stores it at sign-in) and looks only at what the first run, and the reruns inside it, show. The browser test covers the same flows
on a real server.
"""

from __future__ import annotations

import ast
import json
import time

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_review_studies import make_review_db

from rocore.review import auth
from rocore.store.db import create_database, opened

APP = str(ROOT / "app.py")
PAGE_FILES = ["app_pages/data.py", "app_pages/generate.py", "app_pages/review.py", "app_pages/admin.py"]


@pytest.fixture
def app(db_path, monkeypatch):
    monkeypatch.setenv("ROCORE_DB", str(db_path))
    monkeypatch.chdir(ROOT)

    def start(user: dict | None = None) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=30)
        if user:
            at.session_state["user"] = user
        at.run()
        assert not at.exception
        return at
    return start


def sign_in(at: AppTest, name: str, code: str) -> AppTest:
    at.text_input[0].set_value(name)
    at.text_input[1].set_value(code)
    next(b for b in at.button if b.label == "Sign in").click()
    at.run()
    assert not at.exception
    return at


def session_of(db_path, name: str, signed_in_at: float | None = None) -> dict:
    """The session entry app.py keeps for `name` signed in now (or at `signed_in_at`)."""
    with opened(db_path) as conn:
        return auth.new_session(auth.user_by_name(conn, name), time.time() if signed_in_at is None else signed_in_at)


def reachable(at: AppTest) -> list[str]:
    """The page files the navigation offers this session (AppTest refuses to switch to any other)."""
    found = []
    for page in PAGE_FILES:
        try:
            at.switch_page(page)
        except ValueError:
            continue
        found.append(page)
    return found


def test_a_missing_database_is_refused_not_created(app, db_path):
    at = app()
    assert not at.title and not at.text_input, "no sign-in form, and above all no 'Create the first administrator'"
    message = at.error[0].value
    assert str(db_path) in message and f"python -m rocore init --db {db_path}" in message and "make run" in message
    assert not db_path.exists() and not db_path.parent.exists()


def test_the_page_icon_is_a_local_file_not_fetched_from_a_font_server():
    """Streamlit's browser code turns a ':material/NAME:' page icon into a fonts.gstatic.com URL; a
    local SVG is sent inline as a data: URL."""
    from streamlit.commands.page_config import _get_favicon_string

    source = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    icons = [ast.unparse(keyword.value) for node in ast.walk(source) if isinstance(node, ast.Call)
             for keyword in node.keywords if keyword.arg == "page_icon"]
    assert icons == ["ICON"]
    assert _get_favicon_string(ROOT / "assets" / "icon.svg").startswith("data:image/svg+xml;base64,")


def test_fresh_database_asks_for_the_first_admin(app, db_path):
    create_database(db_path)
    at = app()
    assert at.title[0].value == "Create the first administrator"
    name, code, again = at.text_input
    name.set_value("Boss")
    code.set_value("correct horse battery")
    again.set_value("correct horse battry")
    at.button[0].click()
    at.run()
    assert at.error[0].value == "The two access codes differ."
    at.text_input[2].set_value("correct horse battery")
    at.button[0].click()
    at.run()
    assert not at.exception
    assert at.title[0].value == "Cases", "an admin starts on the Data page"
    assert at.session_state["user"]["name"] == "Boss" and at.session_state["user"]["role"] == "admin"
    assert reachable(at) == PAGE_FILES
    at.switch_page("app_pages/admin.py")
    at.run()
    assert at.title[0].value == "Admin"
    with opened(db_path) as conn:
        assert auth.sign_in(conn, "boss", "correct horse battery").role == "admin"


def test_sign_in_as_a_reviewer_gives_the_review_page_only(app, db_path):
    info = make_review_db(db_path)
    at = app()
    assert at.title[0].value == "Sign in"
    assert [t.label for t in at.text_input] == ["Reviewer", "Access code"]
    assert at.text_input[1].proto.type == at.text_input[1].proto.PASSWORD
    at = sign_in(at, "ada", "WRONG-WRONG-WRONG")
    assert at.error[0].value == "Unknown reviewer or wrong access code."
    assert "user" not in at.session_state
    before = time.time()
    at = sign_in(app(), "ada", info["codes"]["ada"])
    session = at.session_state["user"]
    assert {k: session[k] for k in ("id", "name", "role")} == {"id": info["ids"]["ada"], "name": "ada",
                                                              "role": "reviewer"}
    assert session["credential"] and before <= session["active_at"] <= time.time()
    assert at.title[0].value == "Review" and at.subheader[0].value == "Case 1 of 8"
    assert reachable(at) == ["app_pages/review.py"]
    assert [c.value for c in at.sidebar.caption] == ["Signed in as **ada** (reviewer)"]


def test_staff_get_every_page(app, db_path):
    info = make_review_db(db_path)
    at = sign_in(app(), "boss", info["codes"]["boss"])
    assert at.title[0].value == "Cases"
    assert reachable(at) == PAGE_FILES
    assert [c.value for c in at.sidebar.caption] == ["Signed in as **boss** (admin)",
                                                     f"Database: `{db_path}`"]


def test_sign_out(app, db_path):
    make_review_db(db_path)
    at = app(session_of(db_path, "ada"))
    assert at.title[0].value == "Review"
    at.sidebar.button(key="sign-out").click()
    at.run()
    assert "user" not in at.session_state
    with opened(db_path) as conn:
        assert conn.execute("SELECT actor, action FROM audit_log ORDER BY audit_id DESC").fetchone()[:] == (
            "ada", "sign-out")


def test_a_deactivated_or_unknown_account_gets_the_sign_in_form(app, db_path):
    info = make_review_db(db_path)
    with opened(db_path) as conn:
        auth.set_active(conn, "ada", False, actor_id=info["admin_id"])
    for user in (session_of(db_path, "ada"), {**session_of(db_path, "boss"), "id": 999, "name": "ghost"}):
        at = app(user)
        assert at.title[0].value == "Sign in" and "user" not in at.session_state
        assert at.info[0].value == auth.SESSION_ENDED["inactive"]


def test_the_stored_role_wins_over_the_session(app, db_path):
    make_review_db(db_path)
    at = app({**session_of(db_path, "ada"), "role": "admin"})
    assert at.session_state["user"]["role"] == "reviewer"
    assert reachable(at) == ["app_pages/review.py"]


def test_repeated_failures_are_slowed_on_the_form(app, db_path):
    make_review_db(db_path)
    for _ in range(auth.FREE_FAILURES):
        sign_in(app(), "ada", "nope")
    at = sign_in(app(), "ada", "nope")
    assert at.error[0].value.startswith("Too many failed attempts: try again in")


def test_a_code_reset_signs_out_the_sessions_signed_in_with_the_old_code(app, db_path):
    info = make_review_db(db_path)
    signed_in = sign_in(app(), "ada", info["codes"]["ada"]).session_state["user"]
    assert app(dict(signed_in)).title[0].value == "Review", "before the reset the session holds"
    with opened(db_path) as conn:
        new_code = auth.reset_code(conn, "ada", actor_id=info["admin_id"])
    at = app(dict(signed_in))
    assert at.title[0].value == "Sign in" and "user" not in at.session_state
    assert at.info[0].value == auth.SESSION_ENDED["code-reset"]
    assert sign_in(app(), "ada", new_code).title[0].value == "Review", "the new code signs in"


def test_a_session_idle_past_the_timeout_is_signed_out(app, db_path):
    make_review_db(db_path)
    recent = time.time() - auth.IDLE_TIMEOUT_S + 60
    at = app(session_of(db_path, "ada", signed_in_at=recent))
    assert at.title[0].value == "Review"
    assert at.session_state["user"]["active_at"] > recent + 60, "a run counts as a click"

    at = app(session_of(db_path, "ada", signed_in_at=time.time() - auth.IDLE_TIMEOUT_S - 1))
    assert at.title[0].value == "Sign in" and "user" not in at.session_state
    assert at.info[0].value == auth.SESSION_ENDED["idle"]
    with opened(db_path) as conn:
        actor, action, detail = conn.execute(
            "SELECT actor, action, detail FROM audit_log ORDER BY audit_id DESC").fetchone()
    assert (actor, action, json.loads(detail)["reason"]) == ("ada", "sign-out", "idle")
