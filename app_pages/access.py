"""The check every staff page makes first.

The pages live in app_pages/, not pages/, so Streamlit's legacy auto-discovery never serves one by
its URL before app.py's sign-in and `st.navigation` have run. app.py ends a session whose code was
reset or that sat idle before any page runs; each staff page still checks the signed-in user itself,
against the store, as defence in depth: a deactivated account or a lost role is refused at once, even
in a session that signed in before.
"""

import streamlit as st

from rocore.review import auth
from rocore.store.db import default_db_path, opened


def require_staff() -> auth.User:
    """The signed-in researcher or administrator; anyone else sees a refusal and nothing more."""
    user = st.session_state.get("user")
    stored = None
    if user:
        with opened(default_db_path(), create=False) as conn:
            stored = auth.active_user(conn, user["id"])
    if stored is None or not stored.is_staff:
        st.error("This page is for researchers and administrators: sign in first.")
        st.stop()
    return stored
