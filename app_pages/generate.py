"""Generate: answer a split part's cases with a base model, with or without its adapter, in the background."""

import time

import pandas as pd
import streamlit as st

from app_pages.access import require_staff
from rocore.review import auth
from rocore.generation import openai_compatible as served
from rocore.generation import runs as generation
from rocore.store import jobs
from rocore.model import loading as models
from rocore.model import prompts
from rocore.data import splits
from rocore.store.db import default_db_path, opened

DB = default_db_path()
user = require_staff()

st.title("Generate")
st.caption("Base and fine-tuned models answer the same held-out cases; every output is stored as it is made. "
           "A run keeps going if this page is closed, and an interrupted run resumes where it stopped.")

with opened(DB) as conn:
    stored_splits = splits.list_splits(conn)
    known = conn.execute("SELECT kind, path FROM models ORDER BY model_id DESC").fetchall()
bases = [m["path"] for m in known if m["kind"] == "base"]
adapters = [m["path"] for m in known if m["kind"] == "adapter"]

if not stored_splits:
    st.info("Create a split on the Data page first.")
    st.stop()

left, right = st.columns(2)
model = left.selectbox("Base model directory", bases, index=0 if bases else None, accept_new_options=True,
                       help="A local Hugging Face model directory; type a path to use another one.")
adapter = right.selectbox("LoRA adapter (empty: the base model alone)", adapters, index=None,
                          accept_new_options=True)
split_name = left.selectbox("Split", [s["name"] for s in reversed(stored_splits)])
part = right.selectbox("Part", splits.PARTS, index=splits.PARTS.index("test"))
tasks = left.multiselect("Tasks", prompts.TASKS, default=list(prompts.TASKS))
backend = right.radio("Backend", ["local", "openai"], horizontal=True,
                      format_func={"local": "This machine (transformers)", "openai": "OpenAI-compatible server"}.get,
                      help="A server (vLLM, transformers serve) answers prompts the product builds from the model "
                           "directory above, so its outputs compare with local ones. An API key, where it wants "
                           f"one, is read from ${served.API_KEY_ENV[0]} in the app's environment.")
if backend == "local":
    quantization = left.selectbox("Quantization", models.QUANTIZATIONS,
                                  help="auto: bf16 on a GPU with room for it, else nf4; fp32 for small models on "
                                       "the CPU")
    device = right.selectbox("Device", models.DEVICES)
else:
    base_url = left.text_input("Server URL", placeholder="http://127.0.0.1:8000/v1")
    served_model = right.text_input("Served model name",
                                    help="vLLM: --served-model-name, or the name of a --lora-modules adapter (e.g. "
                                         "finetuned); transformers serve: the model path it was started with.")
    concurrency = left.number_input("Requests at once", 1, 256, served.DEFAULT_CONCURRENCY)
batch_size = right.number_input("Batch size (outputs stored together)", 1, 512, 32)
prompt_format = left.selectbox("Prompt format", ["auto", *prompts.PROMPT_FORMATS],
                               help="chat: the model's chat template; plain: the '### Patient' layout. auto: the "
                                    "adapter's own, else chat for an instruction-tuned model with a chat template.")
limit = right.number_input("Outputs to try first (0: all)", 0, 100_000, 0,
                            help="Generate only this many outputs now, to try a model on a few cases; the rest "
                                 "stay pending and the same run finishes them when started again with 0.")
submitted = st.button("Start generation", type="primary")

args = ["generate", "--db", str(DB), "--model", str(model or ""), "--split", part, "--split-name", split_name,
        "--tasks", ",".join(tasks), "--batch-size", str(batch_size), "--prompt-format", prompt_format,
        "--actor", user.name, "--client", auth.web_client(st.context.ip_address)]
if backend == "local":
    args += ["--quantization", quantization, "--device", device]
else:
    args += ["--backend", "openai", "--base-url", base_url, "--served-model", served_model,
             "--concurrency", str(concurrency)]
if adapter:
    args += ["--adapter", str(adapter)]
if limit:
    args += ["--limit", str(limit)]
st.caption("Command line equivalent")
st.code(jobs.command_line("rocore", args), language="bash", wrap_lines=True)
if submitted:
    try:
        server = served.Server(base_url, served_model, concurrency) if backend == "openai" else None
        with opened(DB) as conn:
            generation.check_generation_request(conn, model, adapter, split_name, part, tasks, prompt_format,
                                                device if backend == "local" else "auto", server=server)
    except served.ServerError as exc:
        st.error(f"Not started.\n\nServer: {exc}")
    except generation.GenerationRequestError as exc:
        st.error("\n\n".join(["Not started.", *exc.problems]))
    else:
        launched = time.time()
        job = jobs.launch("rocore", args, DB.parent / "logs")
        st.session_state["generate-job"] = {"pid": job.pid, "log": str(job.log_path), "since": launched}


def launched_job(runs: list[dict]) -> None:
    """What became of the process this session launched last: a failed start shows here, with its log's end."""
    job = st.session_state.get("generate-job")
    if job is None:
        return
    pid, log = job["pid"], job["log"]
    code = jobs.exit_code(pid)
    with opened(DB) as conn:
        run_id = generation.run_started_by(conn, pid, job["since"])
    status = next((r["status"] for r in runs if r["run_id"] == run_id), None)
    if code is None:
        doing = f"is generating run {run_id}" if run_id else "is still starting (it loads the model first)"
        st.info(f"Process {pid} {doing}; its log is {log}.")
    elif code == 0:
        st.success(f"Process {pid} is done: run {run_id} is {status}.")
    else:
        where = f"while generating run {run_id}" if run_id else "before starting a run"
        st.error(f"The process ended with exit code {code} {where}. The end of its log ({log}):")
        st.code(jobs.log_tail(log, 20), language=None, wrap_lines=True)


@st.fragment(run_every=3)
def runs_table():
    with opened(DB) as conn:
        runs = generation.list_runs(conn)
    launched_job(runs)
    if not runs:
        st.info("No generation runs yet.")
        return
    for run in runs:
        if run["status"] in ("running", "queued") and run["total"]:
            st.progress(min(run["done"] / run["total"], 1.0),
                        text=f"Run {run['run_id']} ({run['status']}): {run['done']:,} of {run['total']:,} outputs")
    table = pd.DataFrame([{
        "run": r["run_id"], "status": r["status"], "model": r["base_path"].rsplit("/", 1)[-1],
        "adapter": (r["adapter_path"] or "").rsplit("/", 1)[-1] or "(base)", "split": f"{r['split_name']}/{r['part']}",
        "format": r["prompt_format"] or "",
        "backend": f"{r['served_model']} at {r['server_url']}" if r["backend"] == "openai" else "local",
        "outputs": f"{r['done']:,} / {r['total']:,}", "quantization": r["quantization"],
        "started": r["created_at"], "error": r["error"] or ""} for r in runs])
    st.dataframe(table, hide_index=True)


runs_table()
