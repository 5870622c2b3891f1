"""The whole embedded default, at toy size: every step real (pretraining, LoRA fine-tune, generation)."""

import io
import time

import pytest

from conftest import TINY_ARCHITECTURE
from test_practice import PRACTICE_1, PRACTICE_2, add_practice_runs
from test_review_studies import RUN_1, RUN_2, make_review_db

from rocore.review import auth
from rocore.review.studies import Form
from rocore.store.db import opened
from rocore.demo.build import (DEMO_FORM, DEMO_PRACTICE_N, DEMO_SPLIT, STEP_SHARES, BuildProgress, DemoSettings,
                               add_demo_study, build_demo)
from rocore.data.splits import find_leaks, split_case_ids, split_id_by_name
from rocore.training.runs import list_runs, run_metrics
from rocore.training.trainer import TrainingConfig


@pytest.mark.slow
def test_build_demo_makes_cases_split_models_and_paired_runs(tmp_path):
    messages, bar = [], io.StringIO()
    settings = DemoSettings(n_cases=150, seed=2, architecture={**TINY_ARCHITECTURE, "max_position_embeddings": 256},
                            literature_cases=150, pretrain_epochs=1.0, generation_batch_size=16,
                            finetune=TrainingConfig(quantization="auto", epochs=1.0, batch_size=16, learning_rate=3e-3,
                                                    logging_steps=5))
    db_path = build_demo(tmp_path / "demo" / "reviews.db", tmp_path / "demo", settings, progress=messages.append,
                         bar_file=bar)
    assert db_path.exists() and not list((tmp_path / "demo").glob("*.partial*"))
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM cases").fetchone()[0] == 150
        split_id = split_id_by_name(conn, DEMO_SPLIT)
        assert find_leaks(conn, split_id) == []
        n_test = len(split_case_ids(conn, split_id, "test"))
        kinds = [r[0] for r in conn.execute("SELECT kind FROM models ORDER BY model_id")]
        n_validation = len(split_case_ids(conn, split_id, "validation"))
        runs = conn.execute("SELECT run_id, adapter_model_id, part, status FROM generation_runs "
                            "ORDER BY run_id").fetchall()
        counts = [conn.execute("SELECT count(*) FROM generations WHERE run_id = ?", (r["run_id"],)).fetchone()[0]
                  for r in runs]
        [training] = list_runs(conn)
        metrics = run_metrics(conn, training["run_id"])
        study = conn.execute("SELECT * FROM studies").fetchone()
        practice = conn.execute("SELECT count(DISTINCT p.case_id), count(DISTINCT p.reviewer_id), count(*), "
                                "count(DISTINCT s.part) FROM practice_assignments p JOIN split_cases s "
                                "ON s.case_id = p.case_id AND s.split_id = ?", (split_id,)).fetchone()
    assert kinds == ["base", "adapter"]
    # The demo's fine-tune is a finished training run with its losses, the adapter the fine-tuned outputs come from.
    assert (training["status"], training["split_name"], training["adapter_model_id"]) == ("finished", DEMO_SPLIT,
                                                                                        runs[1]["adapter_model_id"])
    assert any(m["train_loss"] is not None for m in metrics) and any(m["eval_loss"] is not None for m in metrics)
    assert [(r["adapter_model_id"] is None, r["part"], r["status"]) for r in runs] == [
        (True, "test", "finished"), (False, "test", "finished"),
        (True, "validation", "finished"), (False, "validation", "finished")]
    assert counts == [n_test * 3, n_test * 3, n_validation, n_validation], "all tasks on test, regimen on validation"
    assert ((study["run_1_id"], study["run_2_id"]), (study["practice_run_1_id"], study["practice_run_2_id"])) == (
        (runs[0]["run_id"], runs[1]["run_id"]), (runs[2]["run_id"], runs[3]["run_id"]))
    assert tuple(practice) == (DEMO_PRACTICE_N, 3, 3 * DEMO_PRACTICE_N, 1), "the same validation cases for everyone"
    assert (tmp_path / "demo" / "models" / "demo-lora" / f"run-{training['run_id']}" / "adapter" /
            "rocore_adapter.json").exists()
    assert any(m.endswith("one-sided Wilcoxon p = " + m.rsplit("= ", 1)[1]) for m in messages if "regimen:" in m)
    assert messages[-1].endswith(f"demo database ready: {db_path}")
    assert "review study         100%" in bar.getvalue() and "elapsed, about" in bar.getvalue()


def test_the_build_bar_weights_each_step_by_its_share_of_the_time():
    assert sum(STEP_SHARES.values()) == pytest.approx(1.0)
    out = io.StringIO()
    progress = BuildProgress({"setup": 0.2, "training": 0.6, "outputs": 0.2}, file=out, interval=0.01)
    with progress.step("setup"):
        time.sleep(0.05)
    assert progress.bar.n == pytest.approx(20)
    with progress.step("training", clock=True):  # expected to take 3 x setup's time: 0.15 s
        time.sleep(0.1)
        assert 20 < progress.bar.n < 80
        time.sleep(0.4)
        assert progress.bar.n == pytest.approx(20 + 0.95 * 60)  # overdue: short of the step's end
    with progress.step("outputs"):
        progress.advance(0.5)
        assert progress.bar.n == pytest.approx(90)
    progress.close()
    assert progress.bar.n == pytest.approx(100)
    assert "outputs  100%" in out.getvalue() and "about 00:00 left" in out.getvalue()


def test_build_demo_refuses_to_overwrite(tmp_path):
    target = tmp_path / "reviews.db"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="delete it to rebuild"):
        build_demo(target, tmp_path)
    assert target.read_bytes() == b"keep me"


def test_the_demo_study_asks_every_scale_and_starts_each_reviewer_on_practice_cases(db_path):
    make_review_db(db_path, n_cases=60, reviewers=())
    with opened(db_path) as conn:
        add_practice_runs(conn, part="validation")
        conn.execute("DELETE FROM reviewers")
        codes = add_demo_study(conn, (RUN_1, RUN_2), (PRACTICE_1, PRACTICE_2), seed=0)
        assert list(codes) == ["admin", "reviewer1", "reviewer2", "reviewer3"]
        assert auth.sign_in(conn, "reviewer2", codes["reviewer2"]).role == "reviewer"
        assert auth.sign_in(conn, "admin", codes["admin"]).role == "admin"
        study = conn.execute("SELECT * FROM studies").fetchone()
        assignments = conn.execute("SELECT count(DISTINCT case_id), count(*) FROM assignments").fetchone()
        practice = conn.execute("SELECT count(DISTINCT case_id), count(DISTINCT reviewer_id), count(*) "
                                "FROM practice_assignments").fetchone()
    assert Form.from_json(study["form"]) == DEMO_FORM and DEMO_FORM.edit_level and DEMO_FORM.harm
    assert tuple(assignments) == (30, 60), "30 cases, each seen by two of the three reviewers"
    assert tuple(practice) == (DEMO_PRACTICE_N, 3, 3 * DEMO_PRACTICE_N)
