"""Streamlit entry point: sign-in, then the pages the signed-in role may see. Pages hold layout only.

Everyone signs in with a name and access code. A fresh database (no one in `reviewers`) first asks
for the first admin's name and a code they choose. The signed-in user is kept in
`st.session_state["user"]` as {"id", "name", "role"} and re-checked against the store on every run,
so a deactivated account is signed out at its next click.
"""

import streamlit as st

from rocore.review import auth
from rocore.store.db import default_db_path, opened

DB = default_db_path()
ALL_ROLES, STAFF = auth.ROLES, auth.STAFF_ROLES

# (file, title, icon, roles that see it): the first page a role may see is its default.
PAGES = [
    ("app_pages/data.py", "Data", ":material/table_view:", STAFF),
    ("app_pages/generate.py", "Generate", ":material/smart_toy:", STAFF),
    ("app_pages/train.py", "Train", ":material/model_training:", STAFF),
    ("app_pages/dashboard.py", "Dashboard", ":material/monitoring:", STAFF),
    ("app_pages/review.py", "Review", ":material/rate_review:", ALL_ROLES),
    ("app_pages/admin.py", "Admin", ":material/admin_panel_settings:", STAFF),
]

st.set_page_config(page_title="Radiation oncology LLM study", page_icon=":material/radiology:", layout="wide")


def client() -> str:
    """Where a request comes from, for the audit log."""
    return auth.web_client(st.context.ip_address)


def start_session(authenticate) -> None:
    """Sign this browser session in as the user `authenticate(conn)` returns, or show why not."""
    try:
        with opened(DB) as conn:
            user = authenticate(conn)
    except auth.AuthError as exc:
        st.error(str(exc))
    else:
        st.session_state["user"] = user.as_session()
        st.rerun()


def sign_in_page() -> None:
    st.title("Sign in")
    with st.form("sign-in"):
        name = st.text_input("Reviewer")
        code = st.text_input("Access code", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
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


def signed_in_user() -> auth.User | None:
    """The session's user as stored now; a deactivated or deleted account is signed out."""
    session = st.session_state.get("user")
    if not session:
        return None
    with opened(DB) as conn:
        user = auth.active_user(conn, session["id"])
    if user is None:
        del st.session_state["user"]
    else:
        st.session_state["user"] = user.as_session()
    return user


def sign_out() -> None:
    """Log the sign-out and forget the whole session, so the next person starts clean."""
    with opened(DB) as conn:
        auth.sign_out(conn, st.session_state["user"]["id"], client())
    st.session_state.clear()


user = signed_in_user()
if user is None:
    with opened(DB) as conn:
        fresh = not auth.has_users(conn)
    gate = first_run_page if fresh else sign_in_page
    st.navigation([st.Page(gate, title="Sign in", url_path="sign-in")], position="hidden").run()
else:
    allowed = [page for page in PAGES if user.role in page[3]]
    pages = [st.Page(path, title=title, icon=icon, default=i == 0)
             for i, (path, title, icon, _) in enumerate(allowed)]
    st.sidebar.caption(f"Signed in as **{user.name}** ({user.role})")
    st.sidebar.button("Sign out", on_click=sign_out, key="sign-out")
    if user.is_staff:
        st.sidebar.caption(f"Database: `{DB}`")
    st.navigation(pages).run()
