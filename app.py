"""Streamlit entry point: sign-in, then the pages the signed-in role may see. Pages hold layout only.

The app never creates a database: a missing file (a mistyped $ROCORE_DB) shows how to make one
instead of an empty store that would offer its first visitor the administrator's account. Everyone
signs in with a name and access code; a database with no one in `reviewers` first asks for the
first admin's name and a code they choose. The signed-in user is kept in `st.session_state["user"]`
(`auth.new_session`: id, name, role, the credential signed in with, the time of the last click) and
re-checked against the store on every run, so a deactivation, a code reset or
`auth.IDLE_TIMEOUT_S` without a click signs the session out at its next run; a page left open checks
every SESSION_CHECK_S and clears itself once its session has ended.
"""

import time
from pathlib import Path

import streamlit as st

from rocore.review import auth
from rocore.store.db import SchemaError, default_db_path, opened

DB = default_db_path()
ALL_ROLES, STAFF = auth.ROLES, auth.STAFF_ROLES
# A local file, sent inline as a data: URL: Streamlit turns a ":material/...:" page icon into a request
# to fonts.gstatic.com on every page load. The st.Page icons below come from Streamlit's bundled font.
ICON = Path(__file__).with_name("assets") / "icon.svg"
SESSION_CHECK_S = 60
# A restart of the app ends every browser session, a form being filled in included: its answers are
# gone, and only "Saved case N" means a rating was stored.
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


def store():
    """The app's database, which must exist: `connect(create=False)` refuses a missing file."""
    return opened(DB, create=False)


def client() -> str:
    """Where a request comes from, for the audit log."""
    return auth.web_client(st.context.ip_address)


def start_session(authenticate) -> None:
    """Sign this browser session in as the user `authenticate(conn)` returns, or show why not."""
    try:
        with store() as conn:
            user = authenticate(conn)
    except (auth.AuthError, SchemaError) as exc:
        st.error(str(exc))
    else:
        st.session_state["user"] = auth.new_session(user, time.time())
        st.rerun()


def sign_in_page() -> None:
    st.title("Sign in")
    if "signed-out" in st.session_state:
        st.info(auth.SESSION_ENDED[st.session_state.pop("signed-out")])
    with st.form("sign-in"):
        name = st.text_input("Reviewer")
        code = st.text_input("Access code", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
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
        start_session(lambda conn: auth.create_first_admin(conn, name, code, client()))


def signed_in_user(conn) -> auth.User | None:
    """The session's user as stored now, this run counting as a click; a session that has ended is
    forgotten (and its end logged), and the sign-in form says why."""
    session = st.session_state.get("user")
    if not session:
        return None
    now = time.time()
    user, ended = auth.session_user(conn, session, now)
    if user is None:
        auth.sign_out(conn, session["id"], client(), reason=ended)
        st.session_state.clear()
        st.session_state["signed-out"] = ended
        return None
    st.session_state["user"] = auth.new_session(user, now)
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
    """Log the sign-out and forget the whole session, so the next person starts clean."""
    with store() as conn:
        auth.sign_out(conn, st.session_state["user"]["id"], client())
    st.session_state.clear()


try:
    with store() as conn:
        user = signed_in_user(conn)
        fresh = user is None and not auth.has_users(conn)
except SchemaError as exc:
    st.error(str(exc))
    st.stop()

if user is None:
    gate = first_run_page if fresh else sign_in_page
    st.navigation([st.Page(gate, title="Sign in", url_path="sign-in")], position="hidden").run()
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
    st.navigation(pages).run()
