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
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import secrets
import sqlite3
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


def new_session(user: User, now: float) -> dict:
    """What a browser session keeps of a sign-in: who, the credential they signed in with, and the
    time (epoch seconds) of their last click."""
    return {**user.as_session(), "credential": user.credential, "active_at": now}


# Why `session_user` ended a session, as the sign-in form says it.
SESSION_ENDED = {
    "inactive": "This account is no longer active.",
    "code-reset": "Your access code was changed: sign in with the new one.",
    "idle": f"You were signed out after {IDLE_TIMEOUT_S // 60} minutes without activity.",
}


def session_user(conn: sqlite3.Connection, session: dict, now: float) -> tuple[User | None, str]:
    """(the session's user as stored now, "") while the session holds; (None, a key of SESSION_ENDED)
    once it has ended.

    It ends when the account is deactivated or gone, when its code was reset since this session
    signed in (the credential differs), or after IDLE_TIMEOUT_S without a click (`active_at`). A
    session without those keys ends too: it was not made by `new_session`.
    """
    user = active_user(conn, session["id"])
    if user is None:
        return None, "inactive"
    if not hmac.compare_digest(str(session.get("credential", "")), user.credential):
        return None, "code-reset"
    if now - float(session.get("active_at", float("-inf"))) > IDLE_TIMEOUT_S:
        return None, "idle"
    return user, ""


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
    code, at its next run (`session_user`).
    """
    code = new_access_code()
    code_hash, salt = hash_code(code)
    with transaction(conn):
        target = user_by_name(conn, name)
        actor = require_role(conn, actor_id, ("admin",) if target.role == "admin" else STAFF_ROLES)
        conn.execute("UPDATE reviewers SET code_hash = ?, code_salt = ? WHERE reviewer_id = ?",
                     (code_hash, salt, target.id))
        audit(conn, actor, "reset-code", "reviewers", target.id, {}, client)
    return code


def set_active(conn: sqlite3.Connection, name: str, active: bool, *, actor_id: int | None,
               client: str | None = None) -> User:
    """Deactivate (sign-in refused, ratings kept) or reactivate someone; no one deactivates themself."""
    with transaction(conn):
        target = user_by_name(conn, name)
        actor = require_role(conn, actor_id, ("admin",) if target.role == "admin" else STAFF_ROLES)
        if not active and target.id == actor_id:
            raise AuthError("You cannot deactivate yourself.")
        conn.execute("UPDATE reviewers SET active = ? WHERE reviewer_id = ?", (int(active), target.id))
        audit(conn, actor, "activate" if active else "deactivate", "reviewers", target.id, {}, client)
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


def sign_out(conn: sqlite3.Connection, user_id: int, client: str | None = None, reason: str | None = None) -> None:
    """Logs a sign-out; `reason` (a key of SESSION_ENDED) marks one the app made, not the user."""
    user = active_user(conn, user_id)
    if user is not None:
        detail = {"reviewer_id": user.id, **({"reason": reason} if reason else {})}
        with transaction(conn):
            audit(conn, user.name, "sign-out", "sign-in", user.name.casefold(), detail, client)


def audit_entries(conn: sqlite3.Connection, *, actor_id: int | None, limit: int = 500) -> list[dict]:
    """The newest audit rows, for staff."""
    require_role(conn, actor_id)
    rows = conn.execute("SELECT * FROM audit_log ORDER BY audit_id DESC LIMIT ?", (limit,))
    return [dict(r) for r in rows]
