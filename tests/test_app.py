"""app.py through AppTest: a missing database, first-run admin, sign-in, the pages each role gets,
sign-out, the sessions that end by themselves (deactivation, code reset, idle, ended elsewhere), the
session token the browser is given to keep, and sign-in through an identity provider as far as it goes
without one (AppTest's `secrets` and `user` stand in for secrets.toml and the provider's answer).
AppTest has no browser: tests/test_browser_session.py resumes a session from the cookie in Chromium.

AppTest resets Streamlit's `pages/`-directory detection before every run, so from a session's second
`run()` on it executes the requested page file directly, not app.py. Each check here therefore
starts a new session (with `session_state["user"]` set where it needs a signed-in user, as app.py
stores it at sign-in) and looks only at what the first run, and the reruns inside it, show. The browser test covers the same flows
on a real server.
"""

from __future__ import annotations

import ast
import hashlib
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


COOKIE_CHANGE = "browser-session-cookie"  # app_pages/browser_session.py: what the page is told to keep


def test_a_sign_in_gives_the_browser_a_session_token_to_keep_never_the_code(app, db_path, monkeypatch):
    monkeypatch.delenv("ROCORE_SESSION_HOURS", raising=False)
    info = make_review_db(db_path)
    at = sign_in(app(), "ada", info["codes"]["ada"])
    change, session = at.session_state[COOKIE_CHANGE], at.session_state["user"]
    assert change["name"] == "rocore_session" and change["max_age"] == 8 * 3600
    token = change["value"]
    assert len(token) >= 43 and info["codes"]["ada"].replace("-", "") not in token.upper()
    with opened(db_path) as conn:
        row = conn.execute("SELECT * FROM sessions").fetchone()
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE entity = 'sign-in' "
                                              "ORDER BY audit_id")]
    assert row["session_id"] == session["session"] and row["token_hash"] == hashlib.sha256(token.encode()).digest()
    assert actions == ["sign-in-attempt", "sign-in", "start-session"]

    monkeypatch.setenv("ROCORE_SESSION_HOURS", "0")
    at = sign_in(app(), "ada", info["codes"]["ada"])
    assert at.title[0].value == "Review" and at.session_state["user"]["session"]
    assert COOKIE_CHANGE not in at.session_state, "remembered sign-ins off: no token leaves the server"

    monkeypatch.setenv("ROCORE_SESSION_HOURS", "a day")
    at = app()
    assert not at.text_input and at.error[0].value.startswith("$ROCORE_SESSION_HOURS must be the number of hours")
    assert "'a day'" in at.error[0].value


def test_a_sign_out_ends_the_session_in_the_store_and_clears_the_cookie(app, db_path):
    info = make_review_db(db_path)
    at = sign_in(app(), "ada", info["codes"]["ada"])
    at.sidebar.button(key="sign-out").click()
    at.run()
    assert "user" not in at.session_state
    assert {k: at.session_state[COOKIE_CHANGE][k] for k in ("value", "max_age")} == {"value": "", "max_age": 0}
    with opened(db_path) as conn:
        assert conn.execute("SELECT end_reason FROM sessions").fetchone()[0] == "sign-out"


def test_a_page_whose_session_was_ended_elsewhere_is_signed_out_at_its_next_click(app, db_path):
    info = make_review_db(db_path)
    signed_in = sign_in(app(), "ada", info["codes"]["ada"]).session_state["user"]
    assert app(dict(signed_in)).title[0].value == "Review"
    with opened(db_path) as conn:
        assert auth.end_sessions(conn, "ada", actor_id=info["admin_id"]) == 1
    at = app(dict(signed_in))
    assert at.title[0].value == "Sign in" and "user" not in at.session_state
    assert at.info[0].value == auth.SESSION_ENDED["revoked"]
    assert at.session_state[COOKIE_CHANGE]["value"] == ""


def test_the_admin_page_ends_a_persons_sessions(open_page, db_path):
    info = make_review_db(db_path)
    with opened(db_path) as conn:
        ada = auth.user_by_name(conn, "ada")
        auth.start_session(conn, ada, lifetime_s=3600)
    at = open_page("app_pages/admin.py", db_path)
    at.selectbox(key="admin-person").set_value("ada")
    at.button(key="admin-end-sessions").click()
    at.run()
    assert "Ended 1 sign-in session(s) of 'ada'." in [s.value for s in at.success]
    with opened(db_path) as conn:
        assert conn.execute("SELECT end_reason FROM sessions").fetchone()[0] == "revoked"
        entry = conn.execute("SELECT actor, entity_id FROM audit_log WHERE action = 'end-sessions'").fetchone()
    assert tuple(entry) == ("boss", str(info["ids"]["ada"]))


AUTH = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "a-long-random-string",
        "Hospital": {"client_id": "rocore", "client_secret": "s3cret",
                     "server_metadata_url": "https://idp.hospital.org/.well-known/openid-configuration"}}


def with_identity_provider(db_path, secrets: dict, user: dict | None = None) -> AppTest:
    """A first run with `secrets` as secrets.toml and `user` as what the identity provider said."""
    at = AppTest.from_file(APP, default_timeout=30)
    at.secrets.update(secrets)
    if user is not None:
        at.user = user
    at.run()
    assert not at.exception
    return at


def sign_in_buttons(at: AppTest) -> list[str]:
    return [b.label for b in at.button if b.label.startswith("Sign in with")]


def test_the_sign_in_page_offers_the_identity_providers_secrets_toml_configures(app, db_path):
    make_review_db(db_path)
    assert sign_in_buttons(app()) == [], "no [auth] section: access codes only"
    assert sign_in_buttons(with_identity_provider(db_path, {"auth": AUTH})) == ["Sign in with Hospital"]
    unnamed = {k: v for k, v in AUTH.items() if k != "Hospital"} | AUTH["Hospital"]
    assert sign_in_buttons(with_identity_provider(db_path, {"auth": unnamed})) == ["Sign in with single sign-on"]
    assert sign_in_buttons(with_identity_provider(db_path, {"rocore": {"identity_claim": "upn"}})) == []


def test_an_identity_provider_sign_in_maps_to_an_existing_account_once(app, db_path):
    info = make_review_db(db_path)
    secrets = {"auth": AUTH, "rocore": {"identity_claim": "preferred_username"}}
    said = {"is_logged_in": True, "provider": "Hospital", "preferred_username": "ADA", "email": "a@hospital.org",
            "iss": "https://idp.hospital.org", "sub": "1001", "iat": 1_800_000_000, "nonce": "abc"}
    at = with_identity_provider(db_path, secrets, said)
    assert at.title[0].value == "Review" and at.session_state["user"]["name"] == "ada"
    assert at.session_state[COOKIE_CHANGE]["value"], "the browser keeps a session token, as after a code"
    with opened(db_path) as conn:
        row = conn.execute("SELECT reviewer_id, via, identity FROM sessions").fetchone()
    assert (row["reviewer_id"], row["via"]) == (info["ids"]["ada"], "identity-provider") and row["identity"]

    again = with_identity_provider(db_path, secrets, said)  # e.g. after signing out: the provider's sign-in is spent
    assert again.title[0].value == "Sign in" and not again.error and "user" not in again.session_state
    assert sign_in_buttons(again) == ["Sign in with Hospital"]

    stranger = with_identity_provider(db_path, secrets, {**said, "preferred_username": "eve", "iat": 1_800_000_100})
    assert stranger.title[0].value == "Sign in" and "user" not in stranger.session_state
    assert stranger.error[0].value.startswith("No active account here is named 'eve'.")
    with opened(db_path) as conn:
        refused = conn.execute("SELECT detail FROM audit_log WHERE action = 'sign-in-refused'").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM reviewers WHERE name = 'eve'").fetchone()[0] == 0
    assert json.loads(refused) == {"via": "identity-provider", "provider": "Hospital", "claim": "preferred_username",
                                   "identity": "eve", "reason": "no-account"}
