"""The whole embedded default, at toy size: every step real (pretraining, LoRA fine-tune, generation)."""

import pytest

from conftest import TINY_ARCHITECTURE
from rocore.store.db import opened
from rocore.demo.build import DEMO_SPLIT, DemoSettings, build_demo
from rocore.data.splits import find_leaks, split_case_ids, split_id_by_name
from rocore.training.trainer import TrainingConfig


@pytest.mark.slow
def test_build_demo_makes_cases_split_models_and_paired_runs(tmp_path):
    messages = []
    settings = DemoSettings(n_cases=150, seed=2, architecture={**TINY_ARCHITECTURE, "max_position_embeddings": 256},
                            literature_cases=150, pretrain_epochs=1.0, generation_batch_size=16,
                            finetune=TrainingConfig(quantization="auto", epochs=1.0, batch_size=16, learning_rate=3e-3))
    db_path = build_demo(tmp_path / "demo" / "reviews.db", tmp_path / "demo", settings, progress=messages.append)
    assert db_path.exists() and not list((tmp_path / "demo").glob("*.partial*"))
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM cases").fetchone()[0] == 150
        split_id = split_id_by_name(conn, DEMO_SPLIT)
        assert find_leaks(conn, split_id) == []
        n_test = len(split_case_ids(conn, split_id, "test"))
        kinds = [r[0] for r in conn.execute("SELECT kind FROM models ORDER BY model_id")]
        runs = conn.execute("SELECT run_id, adapter_model_id, status FROM generation_runs ORDER BY run_id").fetchall()
        counts = [conn.execute("SELECT count(*) FROM generations WHERE run_id = ?", (r["run_id"],)).fetchone()[0]
                  for r in runs]
    assert kinds == ["base", "adapter"]
    assert [(r["adapter_model_id"] is None, r["status"]) for r in runs] == [(True, "finished"), (False, "finished")]
    assert counts == [n_test * 3, n_test * 3]
    assert (tmp_path / "demo" / "models" / "demo-lora" / "adapter" / "rocore_adapter.json").exists()
    assert any(m.endswith("one-sided Wilcoxon p = " + m.rsplit("= ", 1)[1]) for m in messages if "regimen:" in m)
    assert messages[-1].endswith(f"demo database ready: {db_path}")


def test_build_demo_refuses_to_overwrite(tmp_path):
    target = tmp_path / "reviews.db"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="delete it to rebuild"):
        build_demo(target, tmp_path)
    assert target.read_bytes() == b"keep me"
