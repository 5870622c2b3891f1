"""Access codes, sign-in, throttling of repeated failures, roles, and the audit trail they leave."""

import hashlib
import json

import pytest

from rocore.review import auth
from rocore.store import audit as audit_log


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
    assert [(r["actor"], r["action"]) for r in rows] == [("Ada", "sign-in"), ("Ada", "sign-in-failed"),
                                                         ("(unknown name)", "sign-in-failed")]
    assert rows[0]["client"] == "10.1.2.3" and rows[0]["entity_id"] == "ada"
    assert rows[2]["entity_id"].startswith("unknown:") and "nobody" not in rows[2]["entity_id"]


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
    assert actions == ["sign-in-failed"] * 3 + ["sign-in-throttled", "sign-in-failed", "sign-in-throttled",
                                                 "sign-in", "sign-in-failed"]


def test_failures_older_than_the_window_do_not_count(conn, admin, monkeypatch):
    clock = [audit_log.now()]  # audit rows are stamped with this clock too
    monkeypatch.setattr(audit_log, "now", lambda: clock[0])
    for _ in range(auth.FREE_FAILURES):
        with pytest.raises(auth.SignInFailed):
            auth.sign_in(conn, "Boss", "nope")
    clock[0] += auth.FAILURE_WINDOW_S + 1
    assert auth.sign_in(conn, "Boss", "correct horse battery").role == "admin"


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
