"""The command line as a user runs it: a real process, real files, exit codes and messages."""

import getpass
import json
import sqlite3
import subprocess
import sys

from conftest import ROOT, csv_bytes, row

from rocore.store.db import opened


def rocore(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rocore", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


def count(db, table="cases") -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_import_then_refuse_a_bad_file_leaving_the_database_unchanged(tmp_path):
    db = tmp_path / "r.db"
    good = tmp_path / "good.csv"
    good.write_bytes(csv_bytes(row("P1"), row("P2", icd10="c50412", modality="Photons")))
    done = rocore("import", good, "--db", db)
    assert done.returncode == 0, done.stderr
    assert "imported 2 new and 0 updated cases" in done.stdout
    assert f"created a new database at {db}" in done.stdout, "import may create its store, but says so"

    bad = tmp_path / "bad.csv"
    bad.write_bytes(csv_bytes(row("P3"), row("P4", icd10="C99.9")))
    refused = rocore("import", bad, "--db", db)
    assert refused.returncode == 1 and "created" not in refused.stdout
    assert f"{bad}: row 2: column 'icd10': 'C99.9' is not a valid ICD-10-CM code" in refused.stderr.splitlines()
    assert "the database is unchanged" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert count(db) == 2 and count(db, "imports") == 1
    with sqlite3.connect(db) as conn:
        actor, client = conn.execute("SELECT actor, client FROM audit_log WHERE action = 'import'").fetchone()
    assert actor.startswith("cli") and client == "cli"


def test_import_refuses_a_file_over_the_size_limit_without_reading_it(tmp_path):
    """A sparse 64 GiB file: reading it into memory first would fail with MemoryError, not this message."""
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as f:
        f.truncate(64 * 2**30)
    refused = rocore("import", huge, "--db", tmp_path / "r.db")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines() == [f"{huge}: is 68,719,476,736 bytes, more than the limit of 50 MB "
                                           "(52,428,800 bytes) per file; split it"]
    assert not (tmp_path / "r.db").exists()


def test_map_update_and_skip_invalid(tmp_path):
    db = tmp_path / "r.db"
    first = tmp_path / "first.csv"
    first.write_bytes(b"key,text,plan,beam,code\nK1,d,r,proton,C61\n")
    assert rocore("import", first, "--db", db, "--map", "case_id=key", "--map", "diagnosis=text",
                  "--map", "regimen=plan", "--map", "modality=beam", "--map", "icd10=code").returncode == 0
    again = rocore("import", first, "--db", db, "--map", "case_id=key", "--map", "diagnosis=text",
                   "--map", "regimen=plan", "--map", "modality=beam", "--map", "icd10=code", "--update")
    assert "imported 0 new and 1 updated" in again.stdout

    mixed = tmp_path / "mixed.csv"
    mixed.write_bytes(csv_bytes(row("P1"), row("P2", modality="laser")))
    skipped = rocore("import", mixed, "--db", db, "--skip-invalid")
    assert skipped.returncode == 0
    rejected = tmp_path / "mixed.rejected.csv"
    assert f"skipped 1 invalid rows; they and their reasons are in {rejected}" in skipped.stdout
    assert "'laser' is not a treatment modality" in rejected.read_text()
    assert count(db) == 2


def test_bad_usage_and_unreadable_paths(tmp_path):
    assert rocore("import", tmp_path / "missing.csv", "--db", tmp_path / "r.db").stderr.startswith(
        f"{tmp_path / 'missing.csv'}: cannot be read")
    bad_map = rocore("import", tmp_path / "x.csv", "--db", tmp_path / "r.db", "--map", "nonsense")
    assert bad_map.returncode != 0 and "expected FIELD=COLUMN" in bad_map.stderr


def test_init_creates_an_empty_database_and_refuses_an_existing_one(tmp_path):
    db = tmp_path / "new" / "reviews.db"
    done = rocore("init", "--db", db)
    assert done.returncode == 0, done.stderr
    assert f"created an empty database at {db}" in done.stdout
    assert count(db, "reviewers") == 0 and count(db, "schema_migrations") >= 1
    assert rocore("reviewer", "add", "Boss", "--role", "admin", "--db", db).returncode == 0
    again = rocore("init", "--db", db)
    assert again.returncode == 1 and f"{db}: already exists" in again.stderr and "Traceback" not in again.stderr
    assert count(db, "reviewers") == 1
    assert rocore("init").returncode == 2, "init names its database: it never falls back to $ROCORE_DB"


def test_commands_that_need_a_store_refuse_a_missing_one(tmp_path):
    db = tmp_path / "typo" / "reviwes.db"
    for command in (["reviewer", "list"], ["reviewer", "add", "Ada"], ["study", "list"], ["split", "list"],
                    ["evaluate"], ["generate", "--model", tmp_path]):
        refused = rocore(*command, "--db", db)
        assert refused.returncode == 1, command
        assert refused.stderr.startswith(f"{db}: no database here. Create an empty one with "
                                          f"'python -m rocore init --db {db}'"), (command, refused.stderr)
        assert "Traceback" not in refused.stderr
    train = subprocess.run([sys.executable, "-m", "train", "--db", str(db), "--base-model", str(tmp_path)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert train.returncode == 1 and train.stderr.startswith(f"not started: {db}: no database here."), train.stderr
    assert not db.parent.exists()


def test_split_create_show_list(tmp_path):
    db = tmp_path / "r.db"
    cases = tmp_path / "c.csv"
    cases.write_bytes(csv_bytes(*[row(f"P{i}", diagnosis=f"case {i}") for i in range(100)]))
    rocore("import", cases, "--db", db)
    created = rocore("split", "create", "--db", db, "--name", "s1", "--seed", "4", "--fractions", "0.7,0.15,0.15")
    assert created.returncode == 0, created.stderr
    assert "created split 's1'" in created.stdout
    assert sum(int(line.split()[-1]) for line in created.stdout.splitlines()[1:]) == 100
    assert "s1" in rocore("split", "list", "--db", db).stdout
    with sqlite3.connect(db) as conn:
        audited = conn.execute("SELECT actor, action, client FROM audit_log WHERE entity = 'splits'").fetchall()
    assert audited == [(f"cli:{getpass.getuser()}", "create-split", "cli")]
    assert rocore("split", "create", "--db", db, "--name", "s1").returncode == 1
    assert "no split named" in rocore("split", "show", "--db", db, "--name", "zz").stderr
    assert rocore("split", "create", "--db", db, "--fractions", "1,2").returncode == 2


def test_regimen_json(tmp_path):
    done = rocore("regimen", "45 Gy/25 then HDR 7 Gy x 4", "--json")
    parsed = json.loads(done.stdout)
    assert [(c["total_dose_gy"], c["fractions"], c["modality"]) for c in parsed["components"]] == [
        (45.0, 25, None), (28.0, 4, "brachytherapy")]
    assert json.loads(rocore("regimen", "no prescription here", "--json").stdout)["components"] == []


def test_demo_data_is_reproducible_by_seed(tmp_path):
    for name in ("a", "b"):
        assert rocore("demo-data", "--n", 50, "--seed", 3, "--out", tmp_path / f"{name}.jsonl").returncode == 0
    rocore("demo-data", "--n", 50, "--seed", 4, "--out", tmp_path / "c.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 50


def test_generate_resumes_and_evaluate_reads_the_stored_runs(split_db, tiny_model_dir, tiny_adapter_dir):
    db_path, _ = split_db
    common = ("--db", db_path, "--model", tiny_model_dir, "--quantization", "fp32", "--tasks", "modality,icd10",
              "--max-new-tokens", "modality=3", "--max-new-tokens", "icd10=4")
    base = rocore("generate", *common)
    assert base.returncode == 0, base.stderr
    assert "starting generation run 1" in base.stdout and "run 1: generated" in base.stdout
    assert "resuming generation run 1" in rocore("generate", *common).stdout
    tuned = rocore("generate", *common, "--adapter", tiny_adapter_dir)
    assert "starting generation run 2" in tuned.stdout, tuned.stderr

    result = rocore("evaluate", "--db", db_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == {"db": str(db_path), "base_run": 1, "finetuned_run": 2,
                                "runs": {task: {"base_run": 1, "finetuned_run": 2} for task in ("modality", "icd10")}}
    assert "comparing modality, icd10: base run 1, fine-tuned run 2" in result.stderr
    assert set(report["tasks"]) == {"modality", "icd10"}
    assert report["tasks"]["modality"]["base"]["n"] == report["tasks"]["modality"]["paired"]["n_pairs"] > 0
    assert "modality" in rocore("evaluate", "--db", db_path, "--runs", 1, 2).stdout


def test_evaluate_pairs_runs_per_task_and_says_which(split_db):
    """A regimen run and a modality/ICD-10 run per model, as a user who generated them apart has."""
    from rocore.generation.runs import get_or_create_run
    from rocore.store.db import transaction
    from rocore.store.registry import register_model

    db_path, split_id = split_db
    with opened(db_path) as conn:
        base_id = register_model(conn, "/models/base", "base")
        adapter_id = register_model(conn, "/models/adapter", "adapter", base_id)
        cases = conn.execute("SELECT c.* FROM split_cases s JOIN cases c USING (case_id) WHERE s.split_id = ? "
                             "AND s.part = 'test'", (split_id,)).fetchall()
        for adapter, tasks in ((None, ["modality", "icd10"]), (None, ["regimen"]),
                               (adapter_id, ["regimen"]), (adapter_id, ["modality", "icd10"])):
            run_id, _ = get_or_create_run(conn, base_id, adapter, split_id, "test", tasks, "fp32", {}, "chat")
            with transaction(conn):
                conn.executemany(
                    "INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, prompt_tokens, "
                    "output_tokens, seconds) VALUES (?, ?, ?, 't', ?, ?, 1, 1, 0)",
                    [(run_id, c["case_id"], task, c[task] if adapter else "?", c[task] if adapter else None)
                     for task in tasks for c in cases])
    result = rocore("evaluate", "--db", db_path, "--json")
    assert result.returncode == 0, result.stderr
    assert "comparing regimen: base run 2, fine-tuned run 3; modality, icd10: base run 1, fine-tuned run 4" in \
        result.stderr
    report = json.loads(result.stdout)
    assert list(report["tasks"]) == ["regimen", "modality", "icd10"]
    assert report["source"]["runs"]["regimen"] == {"base_run": 2, "finetuned_run": 3}
    assert "base_run" not in report["source"]  # no one pair covers every task
    assert all(report["tasks"][task]["paired"]["n_pairs"] == len(cases) for task in report["tasks"])
    named = rocore("evaluate", "--db", db_path, "--json", "--runs", 1, 4, "--runs", 2, 3)
    assert json.loads(named.stdout)["tasks"] == report["tasks"]
    twice = rocore("evaluate", "--db", db_path, "--runs", 1, 4, "--runs", 1, 4)
    assert twice.returncode == 1 and "task modality is in two of the pairs named" in twice.stderr
    apart = rocore("evaluate", "--db", db_path, "--runs", 1, 3)
    assert apart.returncode == 1 and "runs 1 and 3 have no task in common" in apart.stderr


def test_generate_limit_tries_a_few_outputs_and_the_same_run_finishes_later(split_db, tiny_model_dir):
    db_path, _ = split_db
    common = ("--db", db_path, "--model", tiny_model_dir, "--quantization", "fp32", "--tasks", "modality",
              "--max-new-tokens", "modality=3")
    tried = rocore("generate", *common, "--limit", 3, "--actor", "alice")
    assert tried.returncode == 0, tried.stderr
    assert "run 1: generated 3 outputs" in tried.stdout and "without --limit" in tried.stdout
    with opened(db_path) as conn:
        assert conn.execute("SELECT status FROM generation_runs WHERE run_id = 1").fetchone()[0] == "queued"
        test_cases = conn.execute("SELECT count(*) FROM split_cases WHERE part = 'test'").fetchone()[0]
    rest = rocore("generate", *common)
    assert "resuming generation run 1" in rest.stdout and f"generated {test_cases - 3} outputs" in rest.stdout
    with sqlite3.connect(db_path) as conn:
        audited = conn.execute("SELECT actor, action, client FROM audit_log WHERE entity = 'generation_runs'"
                               ).fetchall()
    me = f"cli:{getpass.getuser()}"
    assert audited == [("alice", "create-generation-run", "cli"), ("alice", "start-generation-run", "cli"),
                       ("alice", "pause-generation-run", "cli"), (me, "resume-generation-run", "cli"),
                       (me, "finish-generation-run", "cli")]
    assert rocore("generate", *common, "--limit", 0).returncode == 2


def test_generate_and_evaluate_errors(tmp_path, split_db):
    db_path, _ = split_db
    missing = rocore("generate", "--db", db_path, "--model", tmp_path / "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad_task = rocore("generate", "--db", db_path, "--model", tmp_path, "--tasks", "dose")
    assert bad_task.returncode == 1 and "unknown task 'dose'" in bad_task.stderr
    refused = rocore("generate", "--db", db_path, "--model", tmp_path / "nope", "--split-name", "zz",
                     "--tasks", "regimen", "--max-new-tokens", "icd10=5")
    assert refused.returncode == 1 and refused.stderr.splitlines() == [
        "Max new tokens: icd10 is not among the tasks", "Split: no split named 'zz' (splits: main)",
        f"Base model directory: model directory {tmp_path / 'nope'} does not exist"]
    nothing = rocore("evaluate", "--db", db_path)
    assert nothing.returncode == 1 and "has no base and fine-tuned generation runs" in nothing.stderr
    outputs = tmp_path / "outputs.csv"
    outputs.write_text("case_id,task,gold,base,finetuned\n1,modality,photon,proton,photon\n2,dose,a,b,c\n")
    refused = rocore("evaluate", outputs, "--json")
    assert refused.returncode == 1
    assert f"{outputs}: row 2: column 'task': 'dose' is not one of regimen, modality, icd10" in refused.stderr


def test_study_plan(tmp_path):
    done = rocore("study", "plan", "--base", 0.5, "--finetuned", 0.7, "--overlap", 3)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("103 cases to detect 50% -> 70% with power 80% at two-sided alpha 0.05 "
                                  "(exact McNemar, two-sided)")
    assert "309 ratings with 3 reviewers per case" in done.stdout and "scipy.stats.binom" in done.stdout
    plan = json.loads(rocore("study", "plan", "--base", 0.5, "--finetuned", 0.7, "--discordant", 0.3,
                             "--overlap", 2, "--json").stdout)
    assert plan["discordant"] == 0.3 and plan["ratings"] == 2 * plan["cases"]
    assert any("odd number" in note for note in plan["notes"])
    assert rocore("study", "plan", "--base", 0.5).returncode == 2
    refused = rocore("study", "plan", "--base", 0.5, "--finetuned", 0.5)
    assert refused.returncode == 1 and "must differ" in refused.stderr
    assert not (tmp_path / "reviews.db").exists()


def test_evaluate_json_keeps_its_keys_and_adds_the_documented_ones(tmp_path):
    outputs = tmp_path / "outputs.csv"
    outputs.write_text("case_id,task,gold,base,finetuned\n"
                       + "".join(f"m{i},modality,photon,{'proton' if i < 6 else 'photon'},photon\n" for i in range(10))
                       + "".join(f"i{i},icd10,C61,{'' if i < 3 else 'C61'},C61\n" for i in range(5)),
                       encoding="utf-8")
    result = rocore("evaluate", outputs, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert list(report) == ["source", "tasks", "methods", "notes", "primary", "methods_text", "review"]
    paired = report["tasks"]["modality"]["paired"]
    for key in ("n_pairs", "n_dropped", "tested_metric", "wilcoxon_statistic", "wilcoxon_p_one_sided",
                "mcnemar_exact_p", "mcnemar_table", "difference", "sign_test_p_one_sided", "exact_tests",
                "dropped_cases"):
        assert key in paired
    assert report["tasks"]["icd10"]["base"]["accuracy"] == 2 / 5, "an empty output is a wrong answer"
    assert report["primary"]["adjustment"] == "holm" and report["review"] is None
    assert set(report["primary"]["endpoints"]) == {"modality", "icd10"}
    assert "Holm" in report["methods_text"]
    declared = json.loads(rocore("evaluate", outputs, "--json", "--primary", "icd10=accuracy_category").stdout)
    assert declared["primary"]["endpoints"]["icd10"]["metric"] == "accuracy_category"
    refused = rocore("evaluate", outputs, "--primary", "icd10=valid_rate")
    assert refused.returncode == 1 and "cannot be a primary endpoint" in refused.stderr
    assert rocore("evaluate", outputs, "--primary", "dose=accuracy").returncode == 2


def test_study_add_reviewer_reassign_and_close(tmp_path):
    from test_review_studies import make_review_db

    db = tmp_path / "r.db"
    make_review_db(db, reviewers=("ada", "ben"), overlap=1)  # 12 cases: 6 each
    assert rocore("reviewer", "add", "cleo", "--db", db).returncode == 0
    added = rocore("study", "add-reviewer", "--name", "Prostate pilot", "--reviewer", "cleo", "--db", db)
    assert added.returncode == 0, added.stderr
    assert added.stdout == "added 'cleo' to study 'Prostate pilot': 4 unrated cases taken over from ada (2), ben (2)\n"
    again = rocore("study", "add-reviewer", "--name", "Prostate pilot", "--reviewer", "cleo", "--db", db)
    assert again.returncode == 1 and again.stderr == "cleo is already a reviewer of study 'Prostate pilot'.\n"

    moved = rocore("study", "reassign", "--name", "Prostate pilot", "--from", "ben", "--to", "ada, cleo", "--db", db)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout == "reassigned 4 unrated cases of 'ben' in study 'Prostate pilot' to ada (2), cleo (2)\n"
    with opened(db) as conn:
        loads = dict(conn.execute("SELECT p.name, count(*) FROM assignments JOIN reviewers p USING (reviewer_id) "
                                  "GROUP BY p.name").fetchall())
        actions = [r[0] for r in conn.execute("SELECT actor || ' ' || action FROM audit_log WHERE entity = 'studies' "
                                              "ORDER BY audit_id")]
    assert loads == {"ada": 6, "cleo": 6}
    assert [a.split(" ", 1)[1] for a in actions] == ["create-study", "add-reviewer-to-study", "reassign-unrated"]
    assert actions[1].startswith("cli")

    closed = rocore("study", "close", "--name", "Prostate pilot", "--db", db)
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout.startswith("closed study 'Prostate pilot' on ") and closed.stdout.endswith(
        " UTC: 0 of 12 assignments rated; no more ratings are taken\n")
    refused = rocore("study", "close", "--name", "Prostate pilot", "--db", db)
    assert refused.returncode == 1 and "'Prostate pilot' was closed on " in refused.stderr
    assert "Traceback" not in refused.stderr
    assert " closed=20" in rocore("study", "list", "--db", db).stdout
    assert rocore("study", "reassign", "--name", "Prostate pilot", "--db", db).stderr == (
        "study reassign needs --name and --from\n")
    unknown = rocore("study", "add-reviewer", "--name", "Nope", "--reviewer", "cleo", "--db", db)
    assert unknown.returncode == 1 and unknown.stderr == "There is no study named 'Nope'.\n"


def test_reviewer_end_sessions_ends_every_sign_in_session_of_a_person(tmp_path):
    from rocore.review import auth

    db = tmp_path / "r.db"
    with opened(db) as conn:
        ada, _ = auth.add_user(conn, "Ada", actor_id=None)
        for _ in range(2):
            auth.start_session(conn, ada, lifetime_s=3600)
    done = rocore("reviewer", "end-sessions", "ada", "--db", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ended 2 sign-in session(s) of 'ada':")
    with opened(db) as conn:
        ended = [tuple(r) for r in conn.execute("SELECT end_reason, count(*) FROM sessions GROUP BY 1")]
        actor, detail, client = conn.execute("SELECT actor, detail, client FROM audit_log "
                                             "WHERE action = 'end-sessions'").fetchone()
    assert ended == [("revoked", 2)]
    assert (actor, json.loads(detail), client) == (f"cli:{getpass.getuser()}", {"sessions_ended": 2}, "cli")
    unknown = rocore("reviewer", "end-sessions", "Nobody", "--db", db)
    assert (unknown.returncode, unknown.stderr) == (1, "No one is named 'Nobody'.\n")
