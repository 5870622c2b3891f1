"""The browser's side of staying signed in, and sign-in through the hospital's identity provider.

Streamlit reads the cookies a page connected with (`st.context.cookies`) but cannot set one from
Python. A small `st.components.v2` component, mounted only while a change is due, writes or clears the
session cookie in the page and says so; until it has, the change is offered again at every run. The
cookie holds the token of `auth.start_session`, never the access code: the store keeps only its hash,
and ending the session there makes it worthless. Script on the page can read it (a cookie set by
script cannot be HttpOnly), as it could read everything the page shows.

Identity providers are the `st.login` configuration of `.streamlit/secrets.toml` (its `[auth]` section);
`[rocore] identity_claim` names the claim that must equal an account's name (default: email).
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping

import streamlit as st

COOKIE = "rocore_session"
_PENDING = "browser-session-cookie"  # session_state: the cookie change the page has not confirmed yet

_WRITE_COOKIE = """
export default function ({ data, setTriggerValue }) {
    const secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = `${data.name}=${data.value}; Path=/; Max-Age=${data.max_age}; SameSite=Strict${secure}`;
    setTriggerValue("written", data.id);
}
"""
_cookie_writer = st.components.v2.component("rocore_session_cookie", js=_WRITE_COOKIE)


def token() -> str | None:
    """The session token this page connected with, if any (AppTest's stand-in client has no cookies,
    only a mock that answers anything)."""
    value = st.context.cookies.get(COOKIE)
    return value if isinstance(value, str) and value else None


def remember(session_token: str, lifetime_s: float) -> None:
    """Have the page keep `session_token` for `lifetime_s`, from the next run on."""
    _queue(session_token, int(lifetime_s))


def forget() -> None:
    """Have the page drop its session token, from the next run on."""
    _queue("", 0)


def _queue(value: str, max_age_s: int) -> None:
    st.session_state[_PENDING] = {"id": secrets.token_hex(8), "name": COOKIE, "value": value,
                                  "max_age": max_age_s}


def _written(change_id: str) -> None:
    if st.session_state.get(_PENDING, {}).get("id") == change_id:
        del st.session_state[_PENDING]


def write_pending() -> None:
    """Mount the cookie writer while a change is due, and nothing at all otherwise."""
    if st.session_state.get(_PENDING):
        _writer()


@st.fragment
def _writer() -> None:
    """A fragment, so that the page's confirmation reruns only this part, now without the writer, and
    not the page someone has just started working in."""
    change = st.session_state.get(_PENDING)
    if change:
        _cookie_writer(key=f"session-cookie-{change['id']}", data=change,
                       on_written_change=functools.partial(_written, change["id"]))


def _secrets_section(name: str) -> Mapping:
    """A section of secrets.toml, empty where there is none (or no secrets.toml at all)."""
    if not st.secrets.load_if_toml_exists() or name not in st.secrets:
        return {}
    section = st.secrets[name]
    return section if isinstance(section, Mapping) else {}


def identity_providers() -> list[str | None]:
    """The providers `[auth]` configures for `st.login`: None for the unnamed one, then each
    `[auth.NAME]` by name. Empty without an `[auth]` section: then only access codes sign in."""
    section = _secrets_section("auth")
    named = [name for name, value in section.items() if isinstance(value, Mapping) and "client_id" in value]
    return ([None] if "client_id" in section else []) + named


def provider_label(provider: str | None) -> str:
    """How the sign-in button names a provider: its section name, which the administrator chooses."""
    return provider or "single sign-on"


def identity_claim() -> str:
    """The claim of the identity token that must be an account's name: `[rocore] identity_claim`."""
    return str(_secrets_section("rocore").get("identity_claim", "email"))
