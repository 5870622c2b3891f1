"""Train: QLoRA fine-tuning launched as a background process, watched live, cancelled or resumed."""

import dataclasses
import json

import pandas as pd
import streamlit as st

from app_pages.access import require_staff
from rocore.review import auth
from rocore.store import jobs
from rocore.model import loading as models
from rocore.model import prompts
from rocore.data import splits
from rocore.training import runs as training_runs
from rocore.store.db import default_db_path, opened
from rocore.training.trainer import TrainingConfig

DB = default_db_path()
user = require_staff()
CLIENT = auth.web_client(st.context.ip_address)
DEFAULTS = TrainingConfig()

st.title("Train")
st.caption("Fine-tune a LoRA adapter on a split's training cases (validation loss at each evaluation, early "
           "stopping, checkpoints). The run keeps going if this page is closed; a stopped run resumes from its "
           "last checkpoint.")

with opened(DB) as conn:
    stored_splits = splits.list_splits(conn)
    bases = [r["path"] for r in conn.execute("SELECT path FROM models WHERE kind = 'base' ORDER BY model_id DESC")]
if not stored_splits:
    st.info("Create a split on the Data page first.")
    st.stop()

left, right = st.columns(2)
base_model = left.selectbox("Base model directory", bases, index=0 if bases else None, accept_new_options=True)
split_name = right.selectbox("Split", [s["name"] for s in reversed(stored_splits)])
tasks = left.multiselect("Tasks (one adapter for all)", prompts.TASKS, default=list(prompts.TASKS))
quantization = right.selectbox("Quantization of the base", models.QUANTIZATIONS,
                               index=models.QUANTIZATIONS.index(DEFAULTS.quantization),
                               help="auto: nf4 on a GPU (QLoRA); on the CPU fp32 for a small model, where 4-bit "
                                    "training is about 20 times slower, else nf4.")
c1, c2, c3, c4 = st.columns(4)
lora_r = c1.number_input("LoRA rank", 1, 512, DEFAULTS.lora_r)
lora_alpha = c2.number_input("LoRA alpha", 1, 1024, DEFAULTS.lora_alpha)
lora_dropout = c3.number_input("LoRA dropout", 0.0, 0.9, DEFAULTS.lora_dropout, 0.01)
learning_rate = c4.number_input("Learning rate", 1e-6, 1e-2, DEFAULTS.learning_rate, format="%.1e")
epochs = c1.number_input("Epochs", 0.1, 100.0, DEFAULTS.epochs, 0.5)
batch_size = c2.number_input("Batch size", 1, 512, DEFAULTS.batch_size)
accumulation = c3.number_input("Gradient accumulation", 1, 256, DEFAULTS.gradient_accumulation_steps)
max_length = c4.number_input("Max tokens", 16, 32768, DEFAULTS.max_length)
checkpointing = c1.selectbox("Gradient checkpointing", ["auto", True, False])
eval_steps = c2.number_input("Evaluate every N steps (0: each epoch)", 0, 100000, 0)
patience = c3.number_input("Early-stopping patience (0: off)", 0, 100, DEFAULTS.early_stopping_patience)
seed = c4.number_input("Seed", 0, 2**31 - 1, DEFAULTS.seed)
eval_max = c1.number_input("Validation examples per evaluation (0: all)", 0, 10**7, 0,
                           help="A seeded sample of the validation examples, the same at every evaluation: "
                                "a full pass over a large validation part can take as long as training.")
device = left.selectbox("Device", models.DEVICES)
prompt_format = right.selectbox("Prompt format", ["auto", *prompts.PROMPT_FORMATS],
                                help="chat: the model's chat template; plain: the '### Patient' layout. auto: chat "
                                     "for an instruction-tuned model with a chat template. Generation uses the same.")
submitted = st.button("Start training", type="primary")

config = dataclasses.replace(
    DEFAULTS, tasks=tasks, quantization=quantization, lora_r=int(lora_r), lora_alpha=int(lora_alpha),
    lora_dropout=float(lora_dropout), learning_rate=float(learning_rate), epochs=float(epochs),
    batch_size=int(batch_size), gradient_accumulation_steps=int(accumulation), max_length=int(max_length),
    gradient_checkpointing=checkpointing, eval_steps=int(eval_steps) or None,
    early_stopping_patience=int(patience) or None, seed=int(seed), prompt_format=prompt_format,
    eval_max_examples=int(eval_max) or None)
overrides = [f"{f.name}={json.dumps(getattr(config, f.name))}" for f in dataclasses.fields(config)
             if getattr(config, f.name) != getattr(DEFAULTS, f.name) and f.name != "tasks"]
cli = ["--db", str(DB), "--base-model", str(base_model or "BASE_MODEL"), "--split", split_name, "--device", device]
cli += [arg for item in overrides for arg in ("--set", item)]
if tasks != list(DEFAULTS.tasks):
    cli += ["--set", f"tasks={','.join(tasks)}"]
st.caption("Command line equivalent")
st.code(jobs.command_line("train", cli), language="bash", wrap_lines=True)

if submitted:
    try:
        if not base_model:
            raise training_runs.TrainingConfigError("choose a base model directory")
        with opened(DB) as conn:
            run_id = training_runs.create_run(conn, base_model, split_name, config, DB.parent / "runs",
                                              actor=user.name, client=CLIENT)
        job = training_runs.start_process(DB, run_id, device=device, actor=user.name, client=CLIENT)
        st.success(f"Started training run {run_id} (process {job.pid}); its log is {job.log_path}.")
    except training_runs.TrainingConfigError as exc:
        st.error("Not started. " + str(exc).replace("; ", "\n\n"))


@st.fragment(run_every=3)
def live_runs():
    with opened(DB) as conn:
        runs = training_runs.list_runs(conn)
    if not runs:
        st.info("No training runs yet.")
        return
    # Labels that never change: a select box keeps showing the label its choice had when first drawn, so a
    # status in it went stale ("1: running" above a finished run). The status line below says the status.
    choice = st.selectbox("Run", [r["run_id"] for r in runs], key="train-run",
                          format_func=lambda i: next(f"{i}: {r['created_at'][:16]}, split {r['split_name']}"
                                                     for r in runs if r["run_id"] == i))
    run = next(r for r in runs if r["run_id"] == choice)
    with opened(DB) as conn:
        metrics = pd.DataFrame(training_runs.run_metrics(conn, choice))
    last = metrics.iloc[-1] if len(metrics) else None
    total = run["total_steps"]
    if run["status"] == "queued":
        st.info(f"Starting: process {run['pid']} is loading the libraries." if run["pid"] else "Queued.")
    elif run["status"] == "running" and last is None:
        st.info(f"Process {run['pid']} is loading the base model and preparing the examples.")
    elif run["status"] == "running":
        epochs = json.loads(run["config"])["epochs"]
        remaining = last["eta_s"] if pd.notna(last["eta_s"]) else None
        eta = f", about {int(remaining // 60)} min {int(remaining % 60)} s left" if remaining is not None else ""
        st.progress(min(int(last["step"]) / total, 1.0) if total else 0.0,
                    text=f"Step {int(last['step']):,}{f' of {total:,}' if total else ''} · "
                         f"epoch {last['epoch'] or 0:.2f} of {epochs:g}{eta}")
    elif run["status"] == "cancelling":
        st.warning(f"Cancelling: process {run['pid']} stops at its next step or evaluation batch and keeps a "
                   "checkpoint; the run is cancelled, and can be resumed, once that process has exited.")
    status_line = (f"**{run['status']}** · base `{run['base_path']}` · split {run['split_name']} · "
                   f"{run['prompt_format'] or 'unrecorded'} prompt format")
    # Recorded when training starts; a run started before schema version 4 had one process.
    processes = run["processes"] or (1 if run["started_at"] else None)
    if processes:
        status_line += f" · {processes} training process{'es' if processes > 1 else ''}"
    if run["adapter_path"]:
        status_line += f" · adapter `{run['adapter_path']}`"
    st.markdown(status_line)
    if run["error"]:
        st.error(run["error"])
    if last is not None:
        a, b, c = st.columns(3)
        a.metric("Step", f"{int(last['step']):,}" + (f" of {total:,}" if total else ""))
        b.metric("Tokens/s", f"{last['tokens_per_s']:.0f}" if pd.notna(last["tokens_per_s"]) else "-")
        c.metric("GPU memory", f"{last['gpu_mem_bytes'] / 1e9:.1f} GB" if pd.notna(last["gpu_mem_bytes"]) else "CPU")
        losses = metrics.set_index("step")[["train_loss", "eval_loss"]].astype(float).rename(
            columns={"train_loss": "train loss", "eval_loss": "validation loss"})
        if losses.notna().any().any():
            st.line_chart(losses.interpolate(limit_area="inside"), x_label="step", y_label="loss")
    if run["log_path"]:
        st.caption(f"Log `{run['log_path']}`, last lines")
        st.code(jobs.log_tail(run["log_path"], 20) or "(nothing written yet)", language=None, height=300)
    elif run["status"] in ("running", "cancelling"):
        st.caption("Started from a shell: its output is in that terminal.")
    if run["status"] in ("queued", "running") and st.button("Cancel", key=f"cancel-{choice}"):
        with opened(DB) as conn:
            training_runs.request_cancel(conn, choice, actor=user.name, client=CLIENT)
        st.rerun()
    if run["status"] in ("failed", "cancelled", "cancelling") and processes and processes > 1:
        st.caption(f"Trained by {processes} processes; Resume here goes on in one. To keep {processes}, resume from "
                   f"a shell with the launch that started it, on one node: `torchrun --nproc_per_node {processes} "
                   f"-m train --resume {choice} --db {DB}` (docs/scale-out.md)")
    if run["status"] in ("failed", "cancelled", "cancelling") and st.button(
            "Resume", key=f"resume-{choice}", disabled=run["status"] == "cancelling",
            help="Continues from the run's last checkpoint."):
        try:
            job = training_runs.start_process(DB, choice, resume=True, actor=user.name, client=CLIENT)
            st.success(f"Resuming run {choice} (process {job.pid}).")
        except (jobs.RunBusy, training_runs.TrainingConfigError) as exc:
            st.error(f"Not resumed: {exc}")


live_runs()
