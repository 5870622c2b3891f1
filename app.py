"""Streamlit entry point: sign-in, then the pages the signed-in role may see. Pages hold layout only.

The app never creates a database: a missing file (a mistyped $ROCORE_DB) shows how to make one
instead of an empty store that would offer its first visitor the administrator's account. Everyone
signs in with a name and access code (or, where `.streamlit/secrets.toml` configures one, through the
hospital's identity provider); a database with no one in `reviewers` first asks for the first admin's
name and a code they choose. The signed-in user is kept in `st.session_state["user"]`
(`auth.new_session`: id, name, role, the credential signed in with, the time of the last click, the
row of `sessions`) and re-checked against the store on every run, so a deactivation, a code reset, an
ended session (a sign-out in another tab, an administrator) or `auth.IDLE_TIMEOUT_S` without a click
signs the session out at its next run; a page left open checks every SESSION_CHECK_S and clears
itself once its session has ended.

Each sign-in leaves the browser a session token in a cookie (app_pages/browser_session.py), so a
refresh or a reopened tab within $ROCORE_SESSION_HOURS resumes the session (`auth.resume_session`)
instead of asking for the code; a sign-out ends the session in the store and clears the cookie.
"""

import time
from pathlib import Path

import streamlit as st

from app_pages import browser_session
from rocore.review import auth
from rocore.store.db import SchemaError, default_db_path, opened

DB = default_db_path()
ALL_ROLES, STAFF = auth.ROLES, auth.STAFF_ROLES
# A local file, sent inline as a data: URL: Streamlit turns a ":material/...:" page icon into a request
# to fonts.gstatic.com on every page load. The st.Page icons below come from Streamlit's bundled font.
ICON = Path(__file__).with_name("assets") / "icon.svg"
SESSION_CHECK_S = 60
# The page asks the store once per browser session for the session its cookie names (or an identity
# provider's sign-in): not again after a sign-out, whose page still connected with the old cookie.
CHECKED = "browser-checked"
# A restart of the app ends every browser session, a form being filled in included: its answers are
# gone (the page resumes its sign-in), and only "Saved case N" means a rating was stored.
RESUME_NOTE = ("Signed out while rating? A rating is stored only once the page has said \"Saved case N\". "
               "After signing in you continue at the first case you have not rated.")

# (file, title, icon, roles that see it): the first page a role may see is its default.
PAGES = [
    ("app_pages/data.py", "Data", ":material/table_view:", STAFF),
    ("app_pages/generate.py", "Generate", ":material/smart_toy:", STAFF),
    ("app_pages/train.py", "Train", ":material/model_training:", STAFF),
    ("app_pages/dashboard.py", "Dashboard", ":material/monitoring:", STAFF),
    ("app_pages/review.py", "Review", ":material/rate_review:", ALL_ROLES),
    ("app_pages/admin.py", "Admin", ":material/admin_panel_settings:", STAFF),
]

st.set_page_config(page_title="Radiation oncology LLM study", page_icon=ICON, layout="wide")
try:
    LIFETIME_S = auth.session_lifetime_s()
except auth.SessionSettingError as exc:
    st.error(str(exc))
    st.stop()


def store():
    """The app's database, which must exist: `connect(create=False)` refuses a missing file."""
    return opened(DB, create=False)


def client() -> str:
    """Where a request comes from, for the audit log."""
    return auth.web_client(st.context.ip_address)


def begin(conn, user: auth.User, via: str, identity: str | None = None) -> None:
    """Start `user`'s session in the store and in this browser session, and have the page keep its token."""
    session_id, token = auth.start_session(conn, user, lifetime_s=LIFETIME_S, client=client(), via=via,
                                           identity=identity)
    st.session_state["user"] = auth.new_session(user, time.time(), session_id)
    st.session_state[CHECKED] = True
    for message in ("signed-out", "identity-refused"):
        st.session_state.pop(message, None)
    if token:
        browser_session.remember(token, LIFETIME_S)


def start_session(authenticate, via: str = "code") -> None:
    """Sign this browser session in as the user `authenticate(conn)` returns, or show why not."""
    try:
        with store() as conn:
            begin(conn, authenticate(conn), via)
    except (auth.AuthError, SchemaError) as exc:
        st.error(str(exc))
    else:
        st.rerun()


def sign_in_page() -> None:
    st.title("Sign in")
    # Shown until someone signs in: the rerun that follows the page's cookie change must not hide them.
    if "signed-out" in st.session_state:
        st.info(auth.SESSION_ENDED[st.session_state["signed-out"]])
    if "identity-refused" in st.session_state:
        st.error(st.session_state["identity-refused"])
    with st.form("sign-in"):
        name = st.text_input("Reviewer")
        code = st.text_input("Access code", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    for provider in browser_session.identity_providers():
        if st.button(f"Sign in with {browser_session.provider_label(provider)}", key=f"login-{provider}"):
            st.login(provider)
    st.caption(RESUME_NOTE)
    if submitted:
        start_session(lambda conn: auth.sign_in(conn, name, code, client()))


def first_run_page() -> None:
    st.title("Create the first administrator")
    st.info("This database has no users yet. Choose the name and access code of its first administrator; "
            "they can then add researchers and reviewers on the Admin page.")
    with st.form("first-admin"):
        name = st.text_input("Name")
        code = st.text_input(f"Access code (at least {auth.MIN_CHOSEN_CODE_LENGTH} characters)",
                             type="password")
        repeated = st.text_input("Access code again", type="password")
        submitted = st.form_submit_button("Create administrator", type="primary")
    if submitted:
        if code != repeated:
            st.error("The two access codes differ.")
            return
        start_session(lambda conn: auth.create_first_admin(conn, name, code, client()), via="first-admin")


def end_here(conn, session: dict, reason: str | None = None) -> None:
    """Log the sign-out and forget the whole browser session, so the next person starts clean; the
    page drops its token once the session has ended in the store (not when only this page sat idle
    while another tab of the browser was in use)."""
    ended = auth.sign_out(conn, session["id"], client(), reason=reason, session_id=session.get("session"))
    st.session_state.clear()
    st.session_state[CHECKED] = True
    if ended:
        browser_session.forget()
    if reason:
        st.session_state["signed-out"] = reason


def signed_in_user(conn) -> auth.User | None:
    """The session's user as stored now, this run counting as a click; a session that has ended is
    forgotten (and its end logged), and the sign-in form says why."""
    session = st.session_state.get("user")
    if not session:
        return None
    now = time.time()
    user, ended = auth.session_user(conn, session, now)
    if user is None:
        end_here(conn, session, ended)
        return None
    auth.touch_session(conn, session.get("session"), now)
    st.session_state["user"] = auth.new_session(user, now, session.get("session"))
    return user


def returning_user(conn) -> auth.User | None:
    """Once per browser session with no one signed in: the user of the session the page's cookie names
    (resumed as a sign-in is), else the person an identity provider has just signed in; None, with the
    reason kept for the sign-in form, when neither holds."""
    if st.session_state.get(CHECKED):
        return None
    st.session_state[CHECKED] = True
    token = browser_session.token()
    if token:
        try:
            user, session_id = auth.resume_session(conn, token, lifetime_s=LIFETIME_S, client=client())
        except auth.SessionEnded as exc:
            browser_session.forget()
            if exc.reason in auth.SESSION_ENDED:
                st.session_state["signed-out"] = exc.reason
        else:
            st.session_state["user"] = auth.new_session(user, time.time(), session_id)
            return user
    providers = browser_session.identity_providers()
    claims = st.user.to_dict() if providers else {}
    if not claims.get("is_logged_in"):
        return None
    try:
        user, identity = auth.identity_sign_in(conn, claims, claim=browser_session.identity_claim(),
                                               provider=claims.get("provider"), client=client())
        begin(conn, user, "identity-provider", identity)
    except auth.IdentityUsed:
        return None
    except auth.AuthError as exc:
        st.session_state["identity-refused"] = str(exc)
        return None
    return user


@st.fragment(run_every=SESSION_CHECK_S)
def watch_session() -> None:
    """Reruns the whole app once this session has ended, so a page left open is cleared from the
    screen without waiting for a click. Its own runs are not clicks: they leave `active_at` alone."""
    session = st.session_state.get("user")
    if not session:
        return
    try:
        with store() as conn:
            ended = auth.session_user(conn, session, time.time())[0] is None
    except SchemaError:
        ended = True
    if ended:
        st.rerun()


def sign_out() -> None:
    with store() as conn:
        end_here(conn, st.session_state["user"])


try:
    with store() as conn:
        user = signed_in_user(conn) or returning_user(conn)
        fresh = user is None and not auth.has_users(conn)
except SchemaError as exc:
    st.error(str(exc))
    st.stop()

if user is None:
    gate = first_run_page if fresh else sign_in_page
    shown = st.navigation([st.Page(gate, title="Sign in", url_path="sign-in")], position="hidden")
else:
    allowed = [page for page in PAGES if user.role in page[3]]
    pages = [st.Page(path, title=title, icon=icon, default=i == 0)
             for i, (path, title, icon, _) in enumerate(allowed)]
    with st.sidebar:
        watch_session()
    st.sidebar.caption(f"Signed in as **{user.name}** ({user.role})")
    st.sidebar.button("Sign out", on_click=sign_out, key="sign-out")
    if user.is_staff:
        st.sidebar.caption(f"Database: `{DB}`")
    shown = st.navigation(pages)
# After st.navigation, so that the page knows which page it shows before the cookie writer answers:
# an answer sent earlier reran the writer's fragment as if on another page, and left the page blank.
browser_session.write_pending()
shown.run()
