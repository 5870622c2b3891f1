"""People who sign in: access codes, sign-in with throttling, roles, and the audit trail they leave.

Everyone (admins and researchers too) is a row in `reviewers`. An access code is shown once, when
it is made; the store keeps only a salted scrypt hash. Every sign-in attempt is written to the audit
log, and the log is what throttles them (`sign_in`): after a few failures in a row the next attempt
for that name must wait, doubling each time, and so must the next attempt from that client (browser
address) after more failures across all names, so guessing codes through the form is slow, even with
many guesses sent at once. Every function that changes something takes the acting user's id
and checks the role here, so a page that forgets a check still cannot do more than its user may;
`actor_id=None` means the command line on the server, whose user already holds the database file.

A browser session keeps the credential it signed in with and the time of its last click, and is
re-checked against the store on every run (`session_user`): a deactivation or a code reset ends it,
and so does IDLE_TIMEOUT_S without a click.

Every sign-in is also a row of `sessions` (`start_session`), so that a refresh or a reopened tab need
not ask for the code again: the browser keeps a random token (never the code) and `resume_session`
signs it in again until the session expires ($ROCORE_SESSION_HOURS after the sign-in) or is ended for
good: by its sign-out, by an administrator (`end_sessions`), by a code reset or a deactivation, or by
an open page left idle. The store keeps only the token's SHA-256, and the audit log never holds it.
An identity provider's sign-in (OpenID Connect) maps to an existing active account of that name
(`identity_sign_in`); it never creates one.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import math
import os
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from rocore.store import audit as audit_log
from rocore.store.audit import audit
from rocore.store.db import transaction

ROLES = ("admin", "researcher", "reviewer")
STAFF_ROLES = ("admin", "researcher")

# scrypt at n=2**14, r=8 costs about 16 MiB and tens of milliseconds per attempt.
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
SALT_BYTES = 16
# Crockford's base 32: no I, L, O, U, so a code read aloud or from paper is not misread.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_GROUPS, CODE_GROUP_LENGTH = 3, 4  # 60 bits
MIN_CHOSEN_CODE_LENGTH = 10

FREE_FAILURES = 3  # failed attempts in a row before sign-in for that name is slowed
FAILURE_WINDOW_S = 15 * 60  # failures older than this are forgotten
BASE_DELAY_S, MAX_DELAY_S = 2.0, 300.0
# The same for a client (`web_client`: one browser address) across all the names it tries. A success
# does not end a client's streak (one valid account must not buy guesses at others); it only takes
# back its own attempt. The command line (client None) has no client streak: it holds the file.
CLIENT_FREE_FAILURES = 10
CLIENT_FAILURE_WINDOW_S = 15 * 60
CLIENT_BASE_DELAY_S, CLIENT_MAX_DELAY_S = 2.0, 300.0

IDLE_TIMEOUT_S = 30 * 60  # a browser session with no click for this long is signed out

# How long a browser may resume a sign-in without the code: $ROCORE_SESSION_HOURS, default 8 (a working
# day); 0 turns remembered sign-ins off (a refresh asks for the code, as every new page did before).
SESSION_HOURS_ENV = "ROCORE_SESSION_HOURS"
DEFAULT_SESSION_HOURS = 8.0
MAX_SESSION_HOURS = 30 * 24
SESSION_TOKEN_BYTES = 32
# A click records itself in `sessions.last_seen_at` at most this often: one write a minute per reviewer,
# not one per click, is enough to tell a browser whose other tab is still in use from an idle one.
TOUCH_INTERVAL_S = 60

_DUMMY_SALT = b"\0" * SALT_BYTES


class AuthError(Exception):
    """A refusal whose message is safe to show to whoever made the request."""


class SignInFailed(AuthError):
    def __init__(self) -> None:
        super().__init__("Unknown reviewer or wrong access code.")


class SignInThrottled(AuthError):
    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"Too many failed attempts: try again in {int(retry_after_s + 0.999)} seconds.")


class AccessDenied(AuthError):
    pass


class SessionEnded(AuthError):
    """A browser's session token signs no one in; `reason` is a key of SESSION_ENDED, or 'unknown'."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(SESSION_ENDED.get(reason, "Sign in with your access code."))


class IdentityUsed(AuthError):
    """An identity provider's sign-in that has already started a session: it starts one only, so that a
    sign-out, an expiry or a revocation is not undone by the identity cookie the browser still holds."""

    def __init__(self) -> None:
        super().__init__("This sign-in with the identity provider has been used: sign in again.")


class SessionSettingError(ValueError):
    """$ROCORE_SESSION_HOURS holds something other than a number of hours the app accepts."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    # A fingerprint of the stored code's salt, which every code reset replaces: a session that signed
    # in with an older code no longer matches it.
    credential: str = field(default="", repr=False, compare=False)

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    def as_session(self) -> dict:
        """Who is signed in, as a page hands it around: id, name and role only."""
        return {"id": self.id, "name": self.name, "role": self.role}


def normalise_code(code: str) -> str:
    """Codes are compared without spaces, hyphens or case, as people type them differently."""
    return "".join(code.split()).replace("-", "").upper()


def new_access_code() -> str:
    """A random code such as 'K7M2-P9X4-Q3HT'."""
    return "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LENGTH))
                    for _ in range(CODE_GROUPS))


def hash_code(code: str, salt: bytes | None = None) -> tuple[bytes, bytes]:
    """(hash, salt) of a code; a new random salt unless one is given."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    return hashlib.scrypt(normalise_code(code).encode("utf-8"), salt=salt, **SCRYPT), salt


def verify_code(code: str, code_hash: bytes, salt: bytes) -> bool:
    return hmac.compare_digest(hash_code(code, salt)[0], code_hash)


def web_client(ip_address: str | None) -> str:
    """The audit `client` of a browser request; Streamlit gives no address for local connections."""
    return f"web {ip_address or 'localhost'}"


def operator_name() -> str:
    """The audit actor for the command line: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:
        return "cli"


def _credential(salt: bytes) -> str:
    """A hash of the salt rather than the salt itself, so the session holds nothing of the code hash's inputs."""
    return hashlib.sha256(b"rocore-session\0" + salt).hexdigest()[:32]


def _user(row: sqlite3.Row) -> User:
    return User(row["reviewer_id"], row["name"], row["role"], _credential(row["code_salt"]))


def active_user(conn: sqlite3.Connection, user_id: int) -> User | None:
    """The user as stored now, or None if deactivated or gone: pages re-check on every run."""
    row = conn.execute("SELECT * FROM reviewers WHERE reviewer_id = ? AND active = 1", (user_id,)).fetchone()
    return _user(row) if row else None


def new_session(user: User, now: float, session_id: int | None = None) -> dict:
    """What a browser session keeps of a sign-in: who, the credential they signed in with, the time
    (epoch seconds) of their last click, and its row of `sessions` (`start_session`; None for one made
    without, which only the checks on the user hold)."""
    return {**user.as_session(), "credential": user.credential, "active_at": now, "session": session_id}


# Why a session ended, as the sign-in form says it.
SESSION_ENDED = {
    "inactive": "This account is no longer active.",
    "code-reset": "Your access code was changed: sign in with the new one.",
    "idle": f"You were signed out after {IDLE_TIMEOUT_S // 60} minutes without activity.",
    "revoked": "An administrator ended your sign-in: sign in again.",
    "signed-out": "You signed out in this browser (in this tab or another).",
    "expired": "Your sign-in has expired: sign in again.",
}
# `sessions.end_reason` -> the key of SESSION_ENDED a page of that session says.
_ENDED_BY = {"sign-out": "signed-out", "revoked": "revoked", "code-reset": "code-reset",
             "inactive": "inactive", "idle": "idle"}


def session_user(conn: sqlite3.Connection, session: dict, now: float) -> tuple[User | None, str]:
    """(the session's user as stored now, "") while the session holds; (None, a key of SESSION_ENDED)
    once it has ended.

    It ends when the account is deactivated or gone, when its code was reset since this session
    signed in (the credential differs), when its row of `sessions` was ended (a sign-out in another tab
    of the browser, an administrator), or after IDLE_TIMEOUT_S without a click (`active_at`). A session
    without those keys ends too: it was not made by `new_session`. Its row's expiry does not end it:
    that only stops new pages resuming it, so no one is signed out in the middle of a rating.
    """
    user = active_user(conn, session["id"])
    if user is None:
        return None, "inactive"
    if not hmac.compare_digest(str(session.get("credential", "")), user.credential):
        return None, "code-reset"
    if session.get("session") is not None:
        row = conn.execute("SELECT end_reason FROM sessions WHERE session_id = ?",
                           (session["session"],)).fetchone()
        if row is None or row["end_reason"] is not None:
            return None, _ENDED_BY[row["end_reason"]] if row else "revoked"
    if now - float(session.get("active_at", float("-inf"))) > IDLE_TIMEOUT_S:
        return None, "idle"
    return user, ""


def session_lifetime_s(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds a browser may resume a sign-in: $ROCORE_SESSION_HOURS hours (unset or empty: 8; 0: not
    at all). Anything but a number from 0 to MAX_SESSION_HOURS is refused, naming the variable."""
    text = environ.get(SESSION_HOURS_ENV, "").strip()
    if not text:
        return DEFAULT_SESSION_HOURS * 3600
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not 0 <= hours <= MAX_SESSION_HOURS:  # NaN fails too
        raise SessionSettingError(
            f"${SESSION_HOURS_ENV} must be the number of hours a browser stays signed in, from 0 (a refresh "
            f"asks for the access code again) to {MAX_SESSION_HOURS}, such as 8 or 0.5; it is {text!r}.")
    return hours * 3600


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def start_session(conn: sqlite3.Connection, user: User, *, lifetime_s: float, client: str | None = None,
                  via: str = "code", identity: str | None = None,
                  now: float | None = None) -> tuple[int, str | None]:
    """(session id, token) of a new sign-in session of `user`, who has just proved who they are.

    The token is returned here only, and only when `lifetime_s` > 0 (remembered sign-ins are on): the
    browser keeps it to resume the session until `lifetime_s` from now. The row holds its SHA-256 and
    the credential `user` signed in with. `identity` (`identity_sign_in`) starts one session only:
    used again, it is refused with IdentityUsed.
    """
    now = audit_log.now() if now is None else now
    token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
    at, expires = audit_log.timestamp(now), audit_log.timestamp(now + lifetime_s)
    with transaction(conn):
        if active_user(conn, user.id) is None:
            raise AuthError(SESSION_ENDED["inactive"])
        try:
            session_id = conn.execute(
                "INSERT INTO sessions (token_hash, reviewer_id, credential, via, identity, created_at, "
                "expires_at, last_seen_at, client) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_token_hash(token), user.id, user.credential, via, identity, at, expires, at, client),
            ).lastrowid
        except sqlite3.IntegrityError:
            if identity is not None and conn.execute("SELECT 1 FROM sessions WHERE identity = ?",
                                                     (identity,)).fetchone():
                raise IdentityUsed() from None
            raise
        audit(conn, user.name, "start-session", "sign-in", user.name.casefold(),
              {"reviewer_id": user.id, "session_id": session_id, "via": via,
               "remembered_until": expires if lifetime_s > 0 else None}, client)
    return session_id, token if lifetime_s > 0 else None


def resume_session(conn: sqlite3.Connection, token: str, *, lifetime_s: float, client: str | None = None,
                   now: float | None = None) -> tuple[User, int]:
    """(user, session id) of the session a browser's token names, signed in again as at sign-in.

    Refused with SessionEnded (its `reason`) when no session has this token ('unknown'), when it was
    ended, when it expired (at its own expiry, or `lifetime_s` after it started, so that a shorter
    $ROCORE_SESSION_HOURS holds for sessions started before), or when its user is now deactivated or
    has a new code, which also ends it. Resumed or refused, it is in the audit log, by session id,
    never by token.

    A session unused for longer than IDLE_TIMEOUT_S is resumed within its lifetime: the idle rule is
    for an open, unattended page, whose idle sign-out ends the session (unless another tab of the
    browser is in use); a page opened again was closed, not left showing patient data.
    """
    now = audit_log.now() if now is None else now
    at, started_by = audit_log.timestamp(now), audit_log.timestamp(now - lifetime_s)
    with transaction(conn):
        row = conn.execute("SELECT s.*, r.name FROM sessions s JOIN reviewers r USING (reviewer_id) "
                           "WHERE s.token_hash = ?", (_token_hash(token),)).fetchone()
        if row is None:
            audit(conn, "(unknown session)", "resume-refused", "sign-in", None, {"reason": "unknown"}, client)
            refused = "unknown"
        else:
            user = active_user(conn, row["reviewer_id"])
            if row["end_reason"] is not None:
                refused = _ENDED_BY[row["end_reason"]]
            elif user is None:
                refused = "inactive"
            elif not hmac.compare_digest(row["credential"], user.credential):
                refused = "code-reset"
            elif row["expires_at"] <= at or row["created_at"] <= started_by:
                refused = "expired"
            else:
                refused = ""
            if refused in ("inactive", "code-reset") and row["end_reason"] is None:
                _end(conn, "session_id = ?", (row["session_id"],), refused, now)
            detail = {"reviewer_id": row["reviewer_id"], "session_id": row["session_id"]}
            if refused:
                audit(conn, row["name"], "resume-refused", "sign-in", row["name"].casefold(),
                      {**detail, "reason": refused}, client)
            else:
                conn.execute("UPDATE sessions SET last_seen_at = ? WHERE session_id = ?",
                             (at, row["session_id"]))
                audit(conn, user.name, "resume-session", "sign-in", user.name.casefold(), detail, client)
    if refused:
        raise SessionEnded(refused)
    return user, row["session_id"]


def touch_session(conn: sqlite3.Connection, session_id: int | None, now: float) -> None:
    """Records a click in the session's `last_seen_at`, at most once every TOUCH_INTERVAL_S (a read
    otherwise, no write)."""
    if session_id is None:
        return
    stale = audit_log.timestamp(now - TOUCH_INTERVAL_S)
    row = conn.execute("SELECT 1 FROM sessions WHERE session_id = ? AND ended_at IS NULL "
                       "AND last_seen_at < ?", (session_id, stale)).fetchone()
    if row:
        with transaction(conn):
            conn.execute("UPDATE sessions SET last_seen_at = ? WHERE session_id = ? AND ended_at IS NULL",
                         (audit_log.timestamp(now), session_id))


def _end(conn: sqlite3.Connection, where: str, params: tuple, reason: str, now: float | None = None) -> int:
    """Ends the sessions not yet ended that `where` selects; how many. Inside a transaction."""
    at = audit_log.timestamp(audit_log.now() if now is None else now)
    return conn.execute("UPDATE sessions SET ended_at = ?, end_reason = ? "
                        f"WHERE ended_at IS NULL AND {where}", (at, reason, *params)).rowcount


def end_sessions(conn: sqlite3.Connection, name: str, *, actor_id: int | None,
                 client: str | None = None) -> int:
    """Ends every session of `name` now (how many): their open pages are signed out at the next click
    and their browsers' tokens resume nothing. Only admins end an admin's sessions."""
    with transaction(conn):
        target = user_by_name(conn, name)
        actor = require_role(conn, actor_id, ("admin",) if target.role == "admin" else STAFF_ROLES)
        ended = _end(conn, "reviewer_id = ?", (target.id,), "revoked")
        audit(conn, actor, "end-sessions", "reviewers", target.id, {"sessions_ended": ended}, client)
    return ended


def require_role(conn: sqlite3.Connection, actor_id: int | None, roles=STAFF_ROLES) -> str:
    """The audit actor name of `actor_id` if it holds one of `roles`; the command line always may."""
    if actor_id is None:
        return operator_name()
    user = active_user(conn, actor_id)
    if user is None or user.role not in roles:
        raise AccessDenied("You are not allowed to do this.")
    return user.name


def has_users(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM reviewers LIMIT 1").fetchone() is not None


def _check_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise AuthError("Enter a name.")
    if len(name) > 100:
        raise AuthError("A name has at most 100 characters.")
    return name


def _insert_user(conn: sqlite3.Connection, name: str, role: str, code: str) -> User:
    if role not in ROLES:
        raise AuthError(f"Unknown role {role!r}: choose one of {', '.join(ROLES)}.")
    if conn.execute("SELECT 1 FROM reviewers WHERE name = ?", (name,)).fetchone():
        raise AuthError(f"There is already someone named {name!r}.")
    code_hash, salt = hash_code(code)
    user_id = conn.execute("INSERT INTO reviewers (name, role, code_hash, code_salt) VALUES (?, ?, ?, ?)",
                           (name, role, code_hash, salt)).lastrowid
    return User(user_id, name, role, _credential(salt))


def create_first_admin(conn: sqlite3.Connection, name: str, code: str, client: str | None = None) -> User:
    """The first admin of a fresh database, with a code they choose; refused once anyone exists."""
    name = _check_name(name)
    if len(normalise_code(code)) < MIN_CHOSEN_CODE_LENGTH:
        raise AuthError(f"Choose an access code of at least {MIN_CHOSEN_CODE_LENGTH} characters "
                        "(spaces and hyphens do not count).")
    with transaction(conn):
        if has_users(conn):
            raise AuthError("This database already has users: sign in instead.")
        user = _insert_user(conn, name, "admin", code)
        audit(conn, name, "create-first-admin", "reviewers", user.id, {"role": "admin"}, client)
    return user


def add_user(conn: sqlite3.Connection, name: str, role: str = "reviewer", *, actor_id: int | None,
             client: str | None = None) -> tuple[User, str]:
    """(user, access code): the code is returned once and never stored. Only admins add admins."""
    name = _check_name(name)
    code = new_access_code()
    with transaction(conn):
        actor = require_role(conn, actor_id, ("admin",) if role == "admin" else STAFF_ROLES)
        user = _insert_user(conn, name, role, code)
        audit(conn, actor, "add-user", "reviewers", user.id, {"role": role}, client)
    return user, code


def user_by_name(conn: sqlite3.Connection, name: str) -> User:
    """The user called `name` (spaces tidied as on creation), active or not."""
    row = conn.execute("SELECT * FROM reviewers WHERE name = ?", (_check_name(name),)).fetchone()
    if row is None:
        raise AuthError(f"No one is named {name!r}.")
    return _user(row)


def reset_code(conn: sqlite3.Connection, name: str, *, actor_id: int | None,
               client: str | None = None) -> str:
    """A new access code for `name`; the old one stops working. Only admins reset an admin's code.

    The code hash is the one column of `reviewers` that changes after creation; the audit log keeps
    the fact that it changed. The new salt also ends every browser session signed in with the old
    code, at its next run (`session_user`), and their rows of `sessions` end now.
    """
    code = new_access_code()
    code_hash, salt = hash_code(code)
    with transaction(conn):
        target = user_by_name(conn, name)
        actor = require_role(conn, actor_id, ("admin",) if target.role == "admin" else STAFF_ROLES)
        conn.execute("UPDATE reviewers SET code_hash = ?, code_salt = ? WHERE reviewer_id = ?",
                     (code_hash, salt, target.id))
        ended = _end(conn, "reviewer_id = ?", (target.id,), "code-reset")
        audit(conn, actor, "reset-code", "reviewers", target.id, {"sessions_ended": ended}, client)
    return code


def set_active(conn: sqlite3.Connection, name: str, active: bool, *, actor_id: int | None,
               client: str | None = None) -> User:
    """Deactivate (sign-in refused, sessions ended, ratings kept) or reactivate someone; no one
    deactivates themself."""
    with transaction(conn):
        target = user_by_name(conn, name)
        actor = require_role(conn, actor_id, ("admin",) if target.role == "admin" else STAFF_ROLES)
        if not active and target.id == actor_id:
            raise AuthError("You cannot deactivate yourself.")
        conn.execute("UPDATE reviewers SET active = ? WHERE reviewer_id = ?", (int(active), target.id))
        if active:
            audit(conn, actor, "activate", "reviewers", target.id, {}, client)
        else:
            ended = _end(conn, "reviewer_id = ?", (target.id,), "inactive")
            audit(conn, actor, "deactivate", "reviewers", target.id, {"sessions_ended": ended}, client)
    return target


def list_users(conn: sqlite3.Connection) -> list[dict]:
    """Everyone, without their code hashes."""
    rows = conn.execute("SELECT reviewer_id, name, role, active, created_at FROM reviewers ORDER BY name")
    return [dict(r) for r in rows]


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class _Streak:
    """Failed sign-in attempts in a row, attempts still being checked included; newest first."""
    who: str
    failures: int = 0
    last_at: str = ""  # the newest counted attempt, in the audit log's timestamp format

    def count(self, at: str) -> None:
        self.failures += 1
        self.last_at = self.last_at or at

    def retry_after(self, now: float, free: int, base: float, most: float) -> float:
        """Seconds until the next attempt may go through: 0 until `free` failures, then doubling."""
        if self.failures < free:
            return 0.0
        delay = min(base * 2.0 ** min(self.failures - free, 32), most)
        return max(0.0, _parse_time(self.last_at) + delay - now)


def _name_wait(streak: _Streak | None, now: float) -> float:
    return streak.retry_after(now, FREE_FAILURES, BASE_DELAY_S, MAX_DELAY_S) if streak else 0.0


def _client_wait(streak: _Streak | None, now: float) -> float:
    return streak.retry_after(now, CLIENT_FREE_FAILURES, CLIENT_BASE_DELAY_S, CLIENT_MAX_DELAY_S) if streak else 0.0


def _streaks(conn: sqlite3.Connection, now: float) -> tuple[dict[str, _Streak], dict[str, _Streak]]:
    """The failure streaks of every name key and every client, read back from the audit log.

    Each attempt that reached the code check left a 'sign-in-attempt' row before the check (written
    under the write lock together with the decision to let it through), so an attempt counts as a
    failure from that moment until a success says otherwise. A name's streak is its attempts within
    FAILURE_WINDOW_S since its last success; a client's is its attempts within CLIENT_FAILURE_WINDOW_S
    that did not themselves succeed. Throttled attempts do not count. Only the rows of the last window
    are read: newest first, by rowid (no index on the time), stopping at the first older row.
    """
    name_cutoff = audit_log.timestamp(now - FAILURE_WINDOW_S)
    client_cutoff = audit_log.timestamp(now - CLIENT_FAILURE_WINDOW_S)
    cutoff = min(name_cutoff, client_cutoff)
    names: dict[str, _Streak] = {}
    clients: dict[str, _Streak] = {}
    signed_in: set[str] = set()  # name keys with a success newer than the rows still to read
    succeeded: set[int] = set()  # attempts that turned out right
    rows = conn.execute("SELECT audit_id, at, actor, action, entity, entity_id, detail, client FROM audit_log "
                        "ORDER BY audit_id DESC")
    for row in rows:
        if row["at"] < cutoff:
            break
        if row["entity"] != "sign-in":
            continue
        if row["action"] == "sign-in":
            signed_in.add(row["entity_id"])
            attempt = json.loads(row["detail"]).get("attempt")
            if attempt is not None:
                succeeded.add(attempt)
        elif row["action"] == "sign-in-attempt":
            key, at = row["entity_id"], row["at"]
            if key not in signed_in and at >= name_cutoff:
                names.setdefault(key, _Streak(row["actor"])).count(at)
            if row["client"] is not None and row["audit_id"] not in succeeded and at >= client_cutoff:
                clients.setdefault(row["client"], _Streak(row["client"])).count(at)
    return names, clients


def _last_row_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT last_insert_rowid()").fetchone()[0]


def sign_in(conn: sqlite3.Connection, name: str, code: str, client: str | None = None) -> User:
    """The active user with this name and code; every attempt, good or bad, is in the audit log.

    Throttling holds under parallel attempts: the decision and its record are one write transaction
    (BEGIN IMMEDIATE). Under the write lock the streaks of the name and of the client are read; the
    attempt is then either refused ('sign-in-throttled') or let through and recorded at once as a
    'sign-in-attempt', which counts as a failure for every attempt decided after it. The slow code
    check runs after the commit, without the lock, and a second transaction records its outcome:
    'sign-in' (which ends the name's streak) or 'sign-in-failed'. So of any number of simultaneous
    guesses at most the free attempts left, then one per backoff window, reach the code check. An
    attempt whose process dies during the check stays counted as a failure.

    An unknown name costs the same scrypt as a wrong code and gets the same message, so the form
    does not tell which names exist. It is logged only as a hash: people sometimes type their code
    into the name field, and the log must not keep it. Codes are compared in constant time.
    """
    name = " ".join(name.split())[:100]
    with transaction(conn):
        now = audit_log.now()
        row = conn.execute("SELECT * FROM reviewers WHERE name = ? AND active = 1", (name,)).fetchone()
        if row is not None:
            actor, key = row["name"], row["name"].casefold()
        else:
            actor, key = "(unknown name)", "unknown:" + hashlib.sha256(name.casefold().encode()).hexdigest()[:16]
        names, clients = _streaks(conn, now)
        waits = {"name": _name_wait(names.get(key), now),
                 "client": _client_wait(clients.get(client), now) if client is not None else 0.0}
        wait = max(waits.values())
        if wait > 0:
            audit(conn, actor, "sign-in-throttled", "sign-in", key,
                  {"retry_after_s": round(wait, 1), "by": [by for by, w in waits.items() if w > 0]}, client)
        else:
            audit(conn, actor, "sign-in-attempt", "sign-in", key, {}, client)
            attempt = _last_row_id(conn)
    if wait > 0:
        raise SignInThrottled(wait)
    if row is None:
        verify_code(code, b"", _DUMMY_SALT)
        ok = False
    else:
        ok = verify_code(code, row["code_hash"], row["code_salt"])
    with transaction(conn):
        if ok:
            audit(conn, actor, "sign-in", "sign-in", key, {"reviewer_id": row["reviewer_id"], "attempt": attempt},
                  client)
        else:
            audit(conn, actor, "sign-in-failed", "sign-in", key, {"attempt": attempt}, client)
    if not ok:
        raise SignInFailed()
    return _user(row)


def locked_out(conn: sqlite3.Connection, *, actor_id: int | None, now: float | None = None) -> list[dict]:
    """The names and clients whose sign-ins are slowed now, for staff; the longest wait first.

    One dict each: `kind` ('name' or 'client'), `who` (the name as stored, '(unknown name)' for a
    name no active user has, or the client), `key` (the audit log's entity_id for a name, the client
    for a client), `failures` in the current streak (attempts being checked included),
    `retry_after_s` (seconds until the next attempt goes through; 0: one may go through now, and if
    it fails the wait doubles) and `last_attempt_at` (the newest failure counted). Listed once a
    streak reaches its free failures (FREE_FAILURES for a name, CLIENT_FREE_FAILURES for a client),
    until it ends: a success for a name, or the failures growing older than the window.
    """
    require_role(conn, actor_id)
    now = audit_log.now() if now is None else now
    names, clients = _streaks(conn, now)
    listed = [(kind, key, streak, wait(streak, now))
              for kind, streaks, free, wait in (("name", names, FREE_FAILURES, _name_wait),
                                                ("client", clients, CLIENT_FREE_FAILURES, _client_wait))
              for key, streak in streaks.items() if streak.failures >= free]
    listed.sort(key=lambda item: (-item[3], item[0], item[2].who))
    return [{"kind": kind, "who": streak.who, "key": key, "failures": streak.failures,
             "retry_after_s": round(retry, 1), "last_attempt_at": streak.last_at}
            for kind, key, streak, retry in listed]


def sign_out(conn: sqlite3.Connection, user_id: int, client: str | None = None, reason: str | None = None, *,
             session_id: int | None = None, now: float | None = None) -> bool:
    """Logs a sign-out and ends its session (`session_id`); `reason` (a key of SESSION_ENDED) marks
    one the app made, not the user. True when the session has ended, so its token is worth nothing.

    An idle page (reason 'idle') leaves the session alive while another tab of the same browser has
    been in use within IDLE_TIMEOUT_S (`touch_session`): only that page is signed out.
    """
    now = audit_log.now() if now is None else now
    ended = True
    with transaction(conn):
        if session_id is not None:
            row = conn.execute("SELECT ended_at, last_seen_at FROM sessions WHERE session_id = ?",
                               (session_id,)).fetchone()
            if row is not None and row["ended_at"] is None:
                if reason == "idle" and row["last_seen_at"] > audit_log.timestamp(now - IDLE_TIMEOUT_S):
                    ended = False
                else:
                    _end(conn, "session_id = ?", (session_id,),
                         reason if reason in ("idle", "code-reset", "inactive") else "sign-out", now)
        user = active_user(conn, user_id)
        if user is not None:
            detail = {"reviewer_id": user.id, **({"reason": reason} if reason else {}),
                      **({"session_id": session_id} if session_id is not None else {})}
            audit(conn, user.name, "sign-out", "sign-in", user.name.casefold(), detail, client)
    return ended


def identity_sign_in(conn: sqlite3.Connection, claims: Mapping, *, claim: str = "email",
                     provider: str | None = None, client: str | None = None) -> tuple[User, str]:
    """(user, identity fingerprint) for the claims of an identity provider's sign-in (`st.user`).

    The claim `claim` (the email by default) must name an existing active account exactly, ignoring
    case and spaces around it; no account is ever created, and an email the provider marks unverified
    is refused. The fingerprint (of issuer, subject, issue time and nonce) goes to `start_session`,
    which lets it start one session only: the provider's sign-in stays in the browser for days, and it
    must not undo a sign-out or a revocation. Every outcome is in the audit log ('sign-in' with
    `"via": "identity-provider"`, or 'sign-in-refused' with the identity and why), except an identity
    already used, which is refused with IdentityUsed and not logged again.
    """
    detail = {"via": "identity-provider", "provider": provider or "default", "claim": claim}
    value = claims.get(claim)
    identity = " ".join(value.split()) if isinstance(value, str) else ""
    token_id = [claims.get("iss"), claims.get("sub"), claims.get("iat"), claims.get("nonce")]
    fingerprint = hashlib.sha256(json.dumps(token_id, default=str).encode()).hexdigest()
    with transaction(conn):
        if conn.execute("SELECT 1 FROM sessions WHERE identity = ?", (fingerprint,)).fetchone():
            raise IdentityUsed()
        match = next((row for row in conn.execute("SELECT * FROM reviewers WHERE active = 1")
                      if identity and row["name"].casefold() == identity.casefold()), None)
        if not identity:
            why, message = "no-claim", (f"The identity provider did not send your {claim}: ask an "
                                        "administrator.")
        elif claims.get("sub") is None or claims.get("iat") is None:
            why, message = "incomplete", ("The identity provider's answer lacks its subject or time: ask an "
                                          "administrator.")
        elif claim == "email" and claims.get("email_verified") is not True:
            why, message = "unverified", f"The identity provider has not verified the email {identity!r}."
        elif match is None:
            why, message = "no-account", (f"No active account here is named {identity!r}. Signing in with "
                                          "the identity provider creates none: ask an administrator to add "
                                          "you under that name.")
        else:
            why, message = "", ""
        if why:
            audit(conn, "(identity provider)", "sign-in-refused", "sign-in", None,
                  {**detail, "identity": identity, "reason": why}, client)
        else:
            audit(conn, match["name"], "sign-in", "sign-in", match["name"].casefold(),
                  {**detail, "reviewer_id": match["reviewer_id"]}, client)
    if why:
        raise AuthError(message)
    return _user(match), fingerprint


def audit_entries(conn: sqlite3.Connection, *, actor_id: int | None, limit: int = 500) -> list[dict]:
    """The newest audit rows, for staff."""
    require_role(conn, actor_id)
    rows = conn.execute("SELECT * FROM audit_log ORDER BY audit_id DESC LIMIT ?", (limit,))
    return [dict(r) for r in rows]
