"""Access codes, sign-in, throttling of repeated failures, roles, and the audit trail they leave."""

import hashlib
import json
import threading
from collections import Counter

import pytest

from rocore.review import auth
from rocore.store import audit as audit_log
from rocore.store.db import opened


@pytest.fixture
def admin(conn):
    return auth.create_first_admin(conn, "Boss", "correct horse battery", client="127.0.0.1")


def test_codes_are_random_and_stored_only_as_salted_scrypt_hashes(conn, admin):
    user, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    assert len(code) == 14 and code.count("-") == 2 and set(code.replace("-", "")) <= set(auth.CODE_ALPHABET)
    assert len({auth.new_access_code() for _ in range(200)}) == 200
    row = conn.execute("SELECT code_hash, code_salt FROM reviewers WHERE reviewer_id = ?",
                       (user.id,)).fetchone()
    assert len(row["code_salt"]) == auth.SALT_BYTES
    expected = hashlib.scrypt(code.replace("-", "").encode(), salt=row["code_salt"], n=2**14, r=8, p=1,
                              dklen=32)
    assert row["code_hash"] == expected
    dump = "\n".join(conn.iterdump())
    assert code not in dump and code.replace("-", "") not in dump


def test_same_code_different_salt_different_hash():
    first, second = auth.hash_code("ABCD-EFGH-JKMN"), auth.hash_code("ABCD-EFGH-JKMN")
    assert first[1] != second[1] and first[0] != second[0]
    assert auth.verify_code("abcd efgh jkmn", *first), "case, spaces and hyphens do not matter"
    assert not auth.verify_code("ABCD-EFGH-JKMP", *first)


def test_sign_in_and_its_audit_rows(conn, admin):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    user = auth.sign_in(conn, "  ada ", code.lower(), client="10.1.2.3")
    assert user.as_session() == {"id": user.id, "name": "Ada", "role": "reviewer"}
    for name, attempt in (("Ada", "WRONG-CODE-0000"), ("Nobody", code)):
        with pytest.raises(auth.SignInFailed, match="^Unknown reviewer or wrong access code.$"):
            auth.sign_in(conn, name, attempt)
    rows = conn.execute("SELECT actor, action, entity_id, detail, client FROM audit_log "
                        "WHERE entity = 'sign-in' ORDER BY audit_id").fetchall()
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("Ada", "sign-in-attempt"), ("Ada", "sign-in"), ("Ada", "sign-in-attempt"), ("Ada", "sign-in-failed"),
        ("(unknown name)", "sign-in-attempt"), ("(unknown name)", "sign-in-failed")]
    assert rows[1]["client"] == "10.1.2.3" and rows[1]["entity_id"] == "ada"
    assert json.loads(rows[1]["detail"])["reviewer_id"] == user.id
    assert rows[4]["entity_id"].startswith("unknown:") and "nobody" not in rows[4]["entity_id"]
    ids = [r[0] for r in conn.execute("SELECT audit_id FROM audit_log WHERE action = 'sign-in-attempt' "
                                      "ORDER BY audit_id")]
    assert [json.loads(r["detail"])["attempt"] for r in rows[1::2]] == ids, "each outcome names its attempt"


def test_a_code_typed_into_the_name_field_is_not_logged(conn, admin):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    with pytest.raises(auth.SignInFailed):
        auth.sign_in(conn, code, code)
    dump = "\n".join(conn.iterdump()).upper()
    assert code not in dump and code.replace("-", "") not in dump


def test_repeated_failures_are_slowed_then_forgotten_after_a_success(conn, admin, monkeypatch):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    clock = [audit_log.now()]  # audit rows are stamped with this clock too
    monkeypatch.setattr(audit_log, "now", lambda: clock[0])
    for _ in range(auth.FREE_FAILURES):
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "Ada", "nope")
    with pytest.raises(auth.SignInThrottled) as throttled:
        auth.sign_in(conn, "Ada", code)
    assert 0 < throttled.value.retry_after_s <= auth.BASE_DELAY_S
    assert "try again in 2 seconds" in str(throttled.value)
    clock[0] += auth.BASE_DELAY_S + 0.1
    with pytest.raises(auth.SignInFailed):
        auth.sign_in(conn, "Ada", "still wrong")
    with pytest.raises(auth.SignInThrottled) as doubled:
        auth.sign_in(conn, "Ada", code)
    assert auth.BASE_DELAY_S < doubled.value.retry_after_s <= 2 * auth.BASE_DELAY_S
    assert auth.sign_in(conn, "boss", "correct horse battery").name == "Boss", "other names are not slowed"
    clock[0] += 2 * auth.BASE_DELAY_S + 0.1
    assert auth.sign_in(conn, "Ada", code).name == "Ada"
    with pytest.raises(auth.SignInFailed):
        auth.sign_in(conn, "Ada", "nope")  # a success resets the count: no wait
    actions = [r[0] for r in conn.execute("SELECT action FROM audit_log WHERE entity_id = 'ada' "
                                          "ORDER BY audit_id")]
    checked = ["sign-in-attempt", "sign-in-failed"]
    assert actions == checked * 3 + ["sign-in-throttled", *checked, "sign-in-throttled",
                                     "sign-in-attempt", "sign-in", *checked]


def test_failures_older_than_the_window_do_not_count(conn, admin, monkeypatch):
    clock = [audit_log.now()]  # audit rows are stamped with this clock too
    monkeypatch.setattr(audit_log, "now", lambda: clock[0])
    for _ in range(auth.FREE_FAILURES):
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "Boss", "nope")
    clock[0] += auth.FAILURE_WINDOW_S + 1
    assert auth.sign_in(conn, "Boss", "correct horse battery").role == "admin"


@pytest.fixture
def clock(monkeypatch):
    """The clock of audit rows and of throttling, stopped (so a burst of guesses lands at one instant)
    and moved by hand; shared by every thread."""
    now = [audit_log.now()]
    monkeypatch.setattr(audit_log, "now", lambda: now[0])
    return now


@pytest.fixture
def code_checks(monkeypatch):
    """Every attempt that reaches the code check (scrypt), counted across threads."""
    checks = []
    verify = auth.verify_code

    def counted(code, code_hash, salt):
        checks.append(code)  # list.append is atomic
        return verify(code, code_hash, salt)

    monkeypatch.setattr(auth, "verify_code", counted)
    return checks


def guess_at_once(db_path, attempts) -> list[str]:
    """Each (name, code, client) signed in from its own thread and its own connection to the file,
    all released together; what each got: 'signed in', 'failed' or 'throttled'."""
    barrier = threading.Barrier(len(attempts))
    outcomes = [""] * len(attempts)

    def guess(i, name, code, client):
        with opened(db_path) as conn:
            barrier.wait()
            try:
                auth.sign_in(conn, name, code, client)
                outcomes[i] = "signed in"
            except auth.SignInThrottled:
                outcomes[i] = "throttled"
            except auth.SignInFailed:
                outcomes[i] = "failed"

    threads = [threading.Thread(target=guess, args=(i, *attempt)) for i, attempt in enumerate(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def sign_in_actions(conn) -> Counter:
    return Counter(r[0] for r in conn.execute("SELECT action FROM audit_log WHERE entity = 'sign-in'"))


def test_parallel_guesses_at_one_name_get_only_the_free_attempts_per_window(conn, db_path, admin, clock,
                                                                             code_checks):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    # Twenty guesses at once, each from its own address: only the name's streak can stop them.
    burst = [("Ada", f"WRONG-CODE-{i:04}", f"web 10.0.0.{i}") for i in range(20)]
    assert Counter(guess_at_once(db_path, burst)) == {"failed": auth.FREE_FAILURES,
                                                      "throttled": 20 - auth.FREE_FAILURES}
    assert len(code_checks) == auth.FREE_FAILURES
    assert sign_in_actions(conn) == {"sign-in-attempt": 3, "sign-in-failed": 3, "sign-in-throttled": 17}

    clock[0] += auth.BASE_DELAY_S + 0.1  # the first backoff window has passed: one more attempt
    assert Counter(guess_at_once(db_path, burst)) == {"failed": 1, "throttled": 19}
    assert len(code_checks) == auth.FREE_FAILURES + 1
    with pytest.raises(auth.SignInThrottled) as throttled:
        auth.sign_in(conn, "Ada", code, "web 10.9.9.9")  # the right code waits too, from anywhere
    assert auth.BASE_DELAY_S < throttled.value.retry_after_s <= 2 * auth.BASE_DELAY_S

    clock[0] += 2 * auth.BASE_DELAY_S + 0.1
    assert auth.sign_in(conn, "Ada", code, "web 10.9.9.9").name == "Ada", "after the window the right code works"
    # The success ended the streak: the free attempts are back, and no more.
    assert Counter(guess_at_once(db_path, burst)) == {"failed": auth.FREE_FAILURES,
                                                      "throttled": 20 - auth.FREE_FAILURES}
    assert len(code_checks) == 2 * auth.FREE_FAILURES + 2
    assert sign_in_actions(conn) == {"sign-in-attempt": 8, "sign-in-failed": 7, "sign-in": 1,
                                     "sign-in-throttled": 17 + 19 + 1 + 17}


def test_parallel_guesses_from_one_client_at_many_names_are_throttled_by_client(conn, db_path, admin, clock,
                                                                                code_checks):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    client = auth.web_client("10.0.0.5")
    names = ["Ada", "Boss"] + [f"guess-{i}" for i in range(18)]  # each name guessed once: no name streak
    burst = [(name, "WRONG-CODE-0000", client) for name in names]
    assert Counter(guess_at_once(db_path, burst)) == {"failed": auth.CLIENT_FREE_FAILURES,
                                                      "throttled": 20 - auth.CLIENT_FREE_FAILURES}
    assert len(code_checks) == auth.CLIENT_FREE_FAILURES
    assert sign_in_actions(conn)["sign-in-failed"] == auth.CLIENT_FREE_FAILURES
    details = [json.loads(r[0]) for r in conn.execute("SELECT detail FROM audit_log "
                                                      "WHERE action = 'sign-in-throttled'")]
    assert {tuple(d["by"]) for d in details} == {("client",)}

    with pytest.raises(auth.SignInThrottled):
        auth.sign_in(conn, "Ada", code, client)  # within the client's backoff even the right code waits
    assert auth.sign_in(conn, "Ada", code, auth.web_client("10.0.0.6")).name == "Ada", "other clients are not"
    assert auth.sign_in(conn, "Ada", code).name == "Ada", "nor is the command line (no client)"

    clock[0] += auth.CLIENT_BASE_DELAY_S + 0.1
    assert auth.sign_in(conn, "Ada", code, client).name == "Ada", "after the window the right code works"
    # The success took back only its own attempt: the client's streak goes on, one guess per window.
    with pytest.raises(auth.SignInFailed):
        auth.sign_in(conn, "guess-x", "WRONG-CODE-0000", client)
    with pytest.raises(auth.SignInThrottled) as throttled:
        auth.sign_in(conn, "guess-y", "WRONG-CODE-0000", client)
    assert auth.CLIENT_BASE_DELAY_S < throttled.value.retry_after_s <= 2 * auth.CLIENT_BASE_DELAY_S
    clock[0] += auth.CLIENT_FAILURE_WINDOW_S + 1
    assert Counter(guess_at_once(db_path, burst[:auth.CLIENT_FREE_FAILURES])) == {
        "failed": auth.CLIENT_FREE_FAILURES}, "failures older than the window are forgotten"


def test_locked_out_lists_the_throttled_names_and_clients_for_staff(conn, admin, clock):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    reviewer, _ = auth.add_user(conn, "Rex", actor_id=admin.id)
    assert auth.locked_out(conn, actor_id=admin.id) == []
    for i in range(auth.CLIENT_FREE_FAILURES):
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "Ada" if i < auth.FREE_FAILURES else f"guess-{i}", "nope", "web 10.0.0.5")
    with pytest.raises(auth.SignInFailed):
        auth.sign_in(conn, "Rex", "nope")  # one failure: not slowed, not listed
    clock[0] += 0.5
    listed = auth.locked_out(conn, actor_id=admin.id)
    assert listed == [
        {"kind": "client", "who": "web 10.0.0.5", "key": "web 10.0.0.5", "failures": auth.CLIENT_FREE_FAILURES,
         "retry_after_s": auth.CLIENT_BASE_DELAY_S - 0.5, "last_attempt_at": audit_log.timestamp(clock[0] - 0.5)},
        {"kind": "name", "who": "Ada", "key": "ada", "failures": auth.FREE_FAILURES,
         "retry_after_s": auth.BASE_DELAY_S - 0.5, "last_attempt_at": audit_log.timestamp(clock[0] - 0.5)}]
    with pytest.raises(auth.AccessDenied):
        auth.locked_out(conn, actor_id=reviewer.id)
    assert auth.locked_out(conn, actor_id=None)[0]["kind"] == "client", "the command line may"

    later = clock[0] + auth.BASE_DELAY_S
    assert [(e["who"], e["retry_after_s"]) for e in auth.locked_out(conn, actor_id=admin.id, now=later)] == [
        ("web 10.0.0.5", 0.0), ("Ada", 0.0)], "still in backoff, free to try once"
    clock[0] = later
    assert auth.sign_in(conn, "Ada", code, "web 10.0.0.6").name == "Ada"
    assert [e["who"] for e in auth.locked_out(conn, actor_id=admin.id)] == ["web 10.0.0.5"], \
        "a success ends the name's streak"
    assert auth.locked_out(conn, actor_id=admin.id, now=later + auth.CLIENT_FAILURE_WINDOW_S + 1) == []


def test_first_admin_only_on_a_fresh_database(conn):
    assert not auth.has_users(conn)
    with pytest.raises(auth.AuthError, match="at least 10 characters"):
        auth.create_first_admin(conn, "Boss", "short-1")
    with pytest.raises(auth.AuthError, match="Enter a name"):
        auth.create_first_admin(conn, "  ", "long enough code")
    auth.create_first_admin(conn, "Boss", "long enough code")
    with pytest.raises(auth.AuthError, match="already has users"):
        auth.create_first_admin(conn, "Mallory", "another long code")
    entry = conn.execute("SELECT actor, action FROM audit_log").fetchall()
    assert [tuple(r) for r in entry] == [("Boss", "create-first-admin")]


def test_roles_decide_who_may_manage_people(conn, admin):
    researcher, _ = auth.add_user(conn, "Rita", "researcher", actor_id=admin.id)
    reviewer, _ = auth.add_user(conn, "Ada", actor_id=admin.id)
    with pytest.raises(auth.AccessDenied):
        auth.add_user(conn, "Eve", actor_id=reviewer.id)
    with pytest.raises(auth.AccessDenied):
        auth.add_user(conn, "Eve", "admin", actor_id=researcher.id)
    with pytest.raises(auth.AccessDenied):
        auth.reset_code(conn, "Boss", actor_id=researcher.id)
    with pytest.raises(auth.AuthError, match="already someone named 'ADA'"):
        auth.add_user(conn, "ADA", actor_id=researcher.id)
    with pytest.raises(auth.AuthError, match="Unknown role"):
        auth.add_user(conn, "Zed", "owner", actor_id=admin.id)
    auth.add_user(conn, "Bob", actor_id=researcher.id)
    with pytest.raises(auth.AuthError, match="cannot deactivate yourself"):
        auth.set_active(conn, "Boss", False, actor_id=admin.id)
    auth.set_active(conn, "Ada", False, actor_id=researcher.id)
    assert auth.active_user(conn, reviewer.id) is None
    with pytest.raises(auth.AccessDenied):
        auth.require_role(conn, reviewer.id, auth.ROLES)
    assert auth.require_role(conn, None).startswith("cli")
    with pytest.raises(auth.AccessDenied):
        auth.audit_entries(conn, actor_id=reviewer.id)
    log = auth.audit_entries(conn, actor_id=admin.id)
    assert [e["action"] for e in log[:2]] == ["deactivate", "add-user"]
    assert json.loads(log[1]["detail"]) == {"role": "reviewer"}
    assert {u["name"] for u in auth.list_users(conn)} == {"Boss", "Rita", "Ada", "Bob"}
    assert "code_hash" not in auth.list_users(conn)[0]


def test_a_reset_code_replaces_the_old_one(conn, admin):
    _, old = auth.add_user(conn, "Ada", actor_id=admin.id)
    new = auth.reset_code(conn, "ada", actor_id=admin.id, client="web")
    with pytest.raises(auth.SignInFailed):
        auth.sign_in(conn, "Ada", old)
    assert auth.sign_in(conn, "Ada", new).name == "Ada"
    assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'reset-code'").fetchone()[0] == 1


def test_a_session_ends_on_a_code_reset_a_deactivation_or_idleness(conn, admin):
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    now = 1_000_000.0
    session = auth.new_session(auth.sign_in(conn, "Ada", code), now)
    salt = conn.execute("SELECT code_salt FROM reviewers WHERE name = 'Ada'").fetchone()[0]
    assert session["credential"] and salt.hex() not in session["credential"], "a fingerprint, not the salt"

    assert auth.session_user(conn, session, now + auth.IDLE_TIMEOUT_S)[0].name == "Ada"
    assert auth.session_user(conn, session, now + auth.IDLE_TIMEOUT_S + 1) == (None, "idle")
    assert auth.session_user(conn, {k: v for k, v in session.items() if k != "credential"}, now) == (
        None, "code-reset"), "a session made by hand, not by sign-in, does not hold"

    auth.reset_code(conn, "Ada", actor_id=admin.id)
    assert auth.session_user(conn, session, now) == (None, "code-reset")
    renewed = auth.new_session(auth.user_by_name(conn, "Ada"), now)
    assert auth.session_user(conn, renewed, now)[0].name == "Ada"

    auth.set_active(conn, "Ada", False, actor_id=admin.id)
    assert auth.session_user(conn, renewed, now) == (None, "inactive")


def test_a_sign_out_the_app_makes_says_why(conn, admin):
    auth.sign_out(conn, admin.id, "web localhost", reason="idle")
    detail = conn.execute("SELECT detail FROM audit_log WHERE action = 'sign-out'").fetchone()[0]
    assert json.loads(detail) == {"reviewer_id": admin.id, "reason": "idle"}


# Sessions a browser can resume (the `sessions` table): tokens, lifetime, ending them, identity providers.

HOUR = 3600.0
START = 1_800_000_000.0  # the clock of these tests: a fixed instant, moved by hand


def ada_signed_in(conn, admin, lifetime_s=8 * HOUR):
    """Ada, her access code, and the (session id, token) of a sign-in at START."""
    _, code = auth.add_user(conn, "Ada", actor_id=admin.id)
    user = auth.sign_in(conn, "Ada", code)
    return user, code, auth.start_session(conn, user, lifetime_s=lifetime_s, client="web 10.0.0.1", now=START)


def resume(conn, token, at, lifetime_s=8 * HOUR):
    return auth.resume_session(conn, token, lifetime_s=lifetime_s, client="web 10.0.0.1", now=at)


def refusal(conn, token, at, lifetime_s=8 * HOUR) -> str:
    with pytest.raises(auth.SessionEnded) as refused:
        resume(conn, token, at, lifetime_s)
    return refused.value.reason


def test_a_session_token_is_shown_once_and_stored_only_as_its_hash(conn, admin):
    user, code, (session_id, token) = ada_signed_in(conn, admin)
    assert len(token) >= 43 and token != code and code.replace("-", "") not in token
    row = conn.execute("SELECT * FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    assert row["token_hash"] == hashlib.sha256(token.encode()).digest()
    assert (row["reviewer_id"], row["via"], row["client"], row["ended_at"]) == (user.id, "code", "web 10.0.0.1", None)
    assert (row["created_at"], row["expires_at"]) == (audit_log.timestamp(START), audit_log.timestamp(START + 8 * HOUR))

    assert resume(conn, token, START + HOUR) == (user, session_id)
    assert conn.execute("SELECT last_seen_at FROM sessions").fetchone()[0] == audit_log.timestamp(START + HOUR)
    dump = "\n".join(conn.iterdump())
    assert token not in dump and hashlib.sha256(token.encode()).hexdigest() not in dump
    rows = conn.execute("SELECT actor, action, detail, client FROM audit_log WHERE action LIKE '%session%'").fetchall()
    assert [(r["actor"], r["action"]) for r in rows] == [("Ada", "start-session"), ("Ada", "resume-session")]
    assert json.loads(rows[0]["detail"]) == {"reviewer_id": user.id, "session_id": session_id, "via": "code",
                                             "remembered_until": audit_log.timestamp(START + 8 * HOUR)}
    assert json.loads(rows[1]["detail"]) == {"reviewer_id": user.id, "session_id": session_id}


def test_the_lifetime_comes_from_the_environment_and_a_bad_value_is_refused_by_name(conn, admin):
    assert auth.session_lifetime_s({}) == auth.session_lifetime_s({"ROCORE_SESSION_HOURS": " "}) == 8 * HOUR
    assert auth.session_lifetime_s({"ROCORE_SESSION_HOURS": "0.5"}) == HOUR / 2
    assert auth.session_lifetime_s({"ROCORE_SESSION_HOURS": "0"}) == 0
    for bad in ("eight", "-1", "nan", "inf", "1e6", "8h"):
        with pytest.raises(auth.SessionSettingError, match=rf"^\$ROCORE_SESSION_HOURS must be the number of hours .* "
                                                           rf"from 0 .* to 720, .*; it is '{bad}'\.$"):
            auth.session_lifetime_s({"ROCORE_SESSION_HOURS": bad})
    # 0: the session still has its row (open pages check it), but no token leaves the server.
    user, _, (session_id, token) = ada_signed_in(conn, admin, lifetime_s=0)
    assert token is None and session_id
    assert conn.execute("SELECT expires_at = created_at FROM sessions").fetchone()[0] == 1


def test_a_session_is_not_resumed_once_expired_or_ended(conn, admin):
    user, _, (session_id, token) = ada_signed_in(conn, admin)
    assert resume(conn, token, START + 7.9 * HOUR)[0] == user, "after hours without a click, within the lifetime"
    assert refusal(conn, token, START + 8 * HOUR) == "expired"
    assert refusal(conn, token, START + 2 * HOUR, lifetime_s=HOUR) == "expired", "a shorter setting holds at once"
    assert refusal(conn, "not-a-token", START) == "unknown"
    assert refusal(conn, token[:-1], START) == "unknown"

    assert auth.sign_out(conn, user.id, "web 10.0.0.1", session_id=session_id, now=START + HOUR) is True
    assert refusal(conn, token, START + HOUR) == "signed-out"
    assert conn.execute("SELECT end_reason FROM sessions").fetchone()[0] == "sign-out"
    refused = conn.execute("SELECT actor, entity_id, detail FROM audit_log WHERE action = 'resume-refused' "
                           "ORDER BY audit_id").fetchall()
    assert [(r["actor"], json.loads(r["detail"])["reason"]) for r in refused] == [
        ("Ada", "expired"), ("Ada", "expired"), ("(unknown session)", "unknown"), ("(unknown session)", "unknown"),
        ("Ada", "signed-out")]


def test_an_administrator_a_code_reset_or_a_deactivation_ends_every_session(conn, admin):
    user, _, (first, token) = ada_signed_in(conn, admin)
    _, second = auth.start_session(conn, user, lifetime_s=8 * HOUR, now=START)
    page = auth.new_session(user, START, first)
    assert auth.session_user(conn, page, START)[0] == user
    researcher, _ = auth.add_user(conn, "Rita", "researcher", actor_id=admin.id)
    reviewer, _ = auth.add_user(conn, "Rex", actor_id=admin.id)
    with pytest.raises(auth.AccessDenied):
        auth.end_sessions(conn, "Ada", actor_id=reviewer.id)
    with pytest.raises(auth.AccessDenied):
        auth.end_sessions(conn, "Boss", actor_id=researcher.id)

    assert auth.end_sessions(conn, "ada", actor_id=researcher.id, client="web") == 2
    assert refusal(conn, token, START + HOUR) == refusal(conn, second, START + HOUR) == "revoked"
    assert auth.session_user(conn, page, START + 60) == (None, "revoked"), "an open page, at its next click"
    entry = conn.execute("SELECT actor, entity_id, detail FROM audit_log WHERE action = 'end-sessions'").fetchone()
    assert (entry["actor"], entry["entity_id"], json.loads(entry["detail"])) == ("Rita", str(user.id),
                                                                                 {"sessions_ended": 2})
    assert auth.end_sessions(conn, "Ada", actor_id=None) == 0, "the command line may; nothing left to end"

    _, token = auth.start_session(conn, user, lifetime_s=8 * HOUR, now=START)
    auth.reset_code(conn, "Ada", actor_id=admin.id)
    assert refusal(conn, token, START + HOUR) == "code-reset"
    new = auth.user_by_name(conn, "Ada")
    _, token = auth.start_session(conn, new, lifetime_s=8 * HOUR, now=START)
    auth.set_active(conn, "Ada", False, actor_id=admin.id)
    assert refusal(conn, token, START + HOUR) == "inactive"
    details = [json.loads(r[0]) for r in conn.execute("SELECT detail FROM audit_log WHERE action IN "
                                                      "('reset-code', 'deactivate') ORDER BY audit_id")]
    assert details == [{"sessions_ended": 1}, {"sessions_ended": 1}]
    assert dict(conn.execute("SELECT end_reason, count(*) FROM sessions GROUP BY end_reason").fetchall()) == {
        "revoked": 2, "code-reset": 1, "inactive": 1}


def test_a_session_started_with_an_older_code_is_not_resumed_even_if_not_ended(conn, admin):
    """The credential check holds on its own, say for a row written while the code was being reset."""
    user, _, (session_id, token) = ada_signed_in(conn, admin)
    conn.execute("UPDATE sessions SET credential = 'older' WHERE session_id = ?", (session_id,))
    conn.commit()
    assert refusal(conn, token, START + 60) == "code-reset"
    assert conn.execute("SELECT end_reason FROM sessions").fetchone()[0] == "code-reset"


def test_an_idle_page_ends_the_session_only_when_no_other_tab_of_the_browser_is_in_use(conn, admin):
    user, _, (session_id, token) = ada_signed_in(conn, admin)
    auth.touch_session(conn, session_id, START + 30)
    assert conn.execute("SELECT last_seen_at FROM sessions").fetchone()[0] == audit_log.timestamp(START), \
        "a click within TOUCH_INTERVAL_S of the last one writes nothing"
    auth.touch_session(conn, session_id, START + 600)  # another tab's click, ten minutes on
    assert conn.execute("SELECT last_seen_at FROM sessions").fetchone()[0] == audit_log.timestamp(START + 600)

    idle_at = START + auth.IDLE_TIMEOUT_S + 1  # the first tab's last click was at START
    assert auth.sign_out(conn, user.id, reason="idle", session_id=session_id, now=idle_at) is False
    assert resume(conn, token, idle_at)[0] == user, "the other tab's session lives on"
    later = idle_at + auth.IDLE_TIMEOUT_S + 1
    assert auth.sign_out(conn, user.id, reason="idle", session_id=session_id, now=later) is True
    assert refusal(conn, token, later) == "idle"
    assert conn.execute("SELECT end_reason FROM sessions").fetchone()[0] == "idle"


def identity(email="Ada@Hospital.org", **claims) -> dict:
    """The claims `st.user` holds after a sign-in with an identity provider."""
    return {"is_logged_in": True, "email": email, "email_verified": True, "iss": "https://idp.hospital.org",
            "sub": "248289761001", "iat": 1_800_000_000, "nonce": "n-0S6_WzA2Mj", "provider": "Hospital", **claims}


def test_an_identity_provider_signs_in_an_existing_active_account_of_that_name_only(conn, admin):
    auth.add_user(conn, "ada@hospital.org", actor_id=admin.id)
    people = auth.list_users(conn)
    user, fingerprint = auth.identity_sign_in(conn, identity(" ADA@hospital.org "), provider="Hospital",
                                              client="web 10.0.0.1")
    assert user.name == "ada@hospital.org" and user.role == "reviewer" and user.credential
    assert auth.identity_sign_in(conn, identity(iat=1_800_000_001))[1] != fingerprint, "each sign-in its own"
    entry = conn.execute("SELECT actor, entity_id, detail, client FROM audit_log WHERE action = 'sign-in'").fetchone()
    assert (entry["actor"], entry["entity_id"], entry["client"]) == ("ada@hospital.org", "ada@hospital.org",
                                                                     "web 10.0.0.1")
    assert json.loads(entry["detail"]) == {"via": "identity-provider", "provider": "Hospital", "claim": "email",
                                           "reviewer_id": user.id}

    refusals = [
        (identity("eve@hospital.org"), "email", "No active account here is named 'eve@hospital.org'", "no-account"),
        (identity(email_verified=False), "email", "has not verified the email", "unverified"),
        (identity(email_verified=None), "email", "has not verified the email", "unverified"),  # not said: refused
        (identity(email=None), "email", "did not send your email", "no-claim"),
        (identity(sub=None), "email", "lacks its subject or time", "incomplete"),
        (identity(), "upn", "did not send your upn", "no-claim"),
        (identity(upn="ada.lovelace"), "upn", "named 'ada.lovelace'", "no-account"),
    ]
    for claims, claim, message, reason in refusals:
        with pytest.raises(auth.AuthError, match=message):
            auth.identity_sign_in(conn, claims, claim=claim)
    assert auth.identity_sign_in(conn, identity(upn="ada@hospital.org", email=None), claim="upn")[0] == user
    auth.set_active(conn, "ada@hospital.org", False, actor_id=admin.id)
    with pytest.raises(auth.AuthError, match="No active account here is named 'Ada@Hospital.org'"):
        auth.identity_sign_in(conn, identity())
    assert auth.list_users(conn) == [{**p, "active": 0} if p["name"] == "ada@hospital.org" else p for p in people], \
        "no account is created or changed"
    logged = [json.loads(r[0]) for r in conn.execute("SELECT detail FROM audit_log WHERE action = 'sign-in-refused' "
                                                     "ORDER BY audit_id")]
    assert [(d["reason"], d["identity"]) for d in logged] == [
        ("no-account", "eve@hospital.org"), ("unverified", "Ada@Hospital.org"), ("unverified", "Ada@Hospital.org"),
        ("no-claim", ""),
        ("incomplete", "Ada@Hospital.org"), ("no-claim", ""), ("no-account", "ada.lovelace"),
        ("no-account", "Ada@Hospital.org")]


def test_an_identity_provider_sign_in_starts_one_session_only(conn, admin):
    auth.add_user(conn, "ada@hospital.org", actor_id=admin.id)
    user, fingerprint = auth.identity_sign_in(conn, identity())
    session_id, token = auth.start_session(conn, user, lifetime_s=8 * HOUR, via="identity-provider",
                                           identity=fingerprint, now=START)
    assert resume(conn, token, START + 60) == (user, session_id)
    auth.sign_out(conn, user.id, session_id=session_id, now=START + 120)
    with pytest.raises(auth.IdentityUsed):  # the browser still holds the provider's sign-in: it is spent
        auth.identity_sign_in(conn, identity())
    with pytest.raises(auth.IdentityUsed):  # two pages racing with the same sign-in: one session
        auth.start_session(conn, user, lifetime_s=8 * HOUR, via="identity-provider", identity=fingerprint)
    assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'sign-in'").fetchone()[0] == 1
