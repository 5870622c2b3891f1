"""The check every staff page makes first.

Streamlit serves a file under pages/ by its URL before app.py has run `st.navigation` in a fresh
server process, which skips app.py's sign-in; so each staff page checks the signed-in user itself,
against the store (a deactivated account is refused at once).
"""

import streamlit as st

from rocore.review import auth
from rocore.store.db import default_db_path, opened


def require_staff() -> auth.User:
    """The signed-in researcher or administrator; anyone else sees a refusal and nothing more."""
    user = st.session_state.get("user")
    with opened(default_db_path()) as conn:
        stored = auth.active_user(conn, user["id"]) if user else None
    if stored is None or not stored.is_staff:
        st.error("This page is for researchers and administrators: sign in first.")
        st.stop()
    return stored
