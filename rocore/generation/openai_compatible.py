"""Generation through an OpenAI-compatible server (vLLM, `transformers serve`, TGI, llama.cpp's server).

The product builds every prompt itself, with the local model folder's tokenizer and chat template, and
sends it to the server's `/v1/completions` as text, so a served run and a local run of one model see
the same prompts and are stored, resumed, compared and rated alike. Greedy decoding, the run's limits
and stop strings go with each request; requests run with bounded concurrency, and the OpenAI client
retries what a retry can cure (a refused connection, a timeout, 408, 409, 429, 5xx) with exponential
backoff. Anything else stops the run with a ServerError that names the server and what it said.

An API key, where the server wants one, is read from $ROCORE_OPENAI_API_KEY (else $OPENAI_API_KEY):
never from the command line, the database or a log.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

API_KEY_ENV = ("ROCORE_OPENAI_API_KEY", "OPENAI_API_KEY")
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 5
# The OpenAI client logs each request's body, prompts included, at DEBUG: case text must never reach a log.
logging.getLogger("openai").setLevel(logging.INFO)


class ServerError(RuntimeError):
    """A server that cannot be used or stopped answering; the message names it and says what it said."""


def clean_server_url(url: str) -> str:
    """The base URL as it is stored and shown: scheme, host, port and path, ending at /v1. Refused with
    credentials or a query in it, which would end up in the database, the audit log and shell history."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"server URL {url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    if parts.username or parts.password or parts.query:
        raise ServerError("the server URL must not carry credentials or a query: give the API key in "
                          f"${API_KEY_ENV[0]} instead")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1"):
        path += "/v1"
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def api_key() -> str:
    """The key from the environment; servers started without one accept any."""
    return next((os.environ[name] for name in API_KEY_ENV if os.environ.get(name)), "none")


@dataclass(frozen=True)
class Server:
    """Where a served run's outputs come from: the server's base URL and the model name it serves."""

    url: str
    model: str
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES

    def __post_init__(self):
        object.__setattr__(self, "url", clean_server_url(self.url))
        if not self.model or not self.model.strip():
            raise ServerError("name the model the server serves (--served-model): vLLM's --served-model-name or "
                              "--lora-modules name, or for `transformers serve` the model path it was started with")
        if self.concurrency < 1:
            raise ServerError(f"concurrency {self.concurrency} must be at least 1")

    @cached_property
    def client(self):
        """One client (and connection pool) for all of a run's requests; it is safe across threads."""
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key=api_key(), timeout=self.timeout_s, max_retries=self.retries)


def server_said(exc: Exception) -> str:
    """What a failed request's server said, without echoing request content back: FastAPI's validation
    errors carry the offending value (possibly a prompt), so only their location and message are kept."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "no answer within the time limit"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return f"cannot connect ({cause or exc})"
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        detail = body.get("detail", body.get("message", body.get("error", body))) if isinstance(body, dict) else body
        if isinstance(detail, dict):
            detail = detail.get("message", detail)
        if isinstance(detail, list):
            detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" if isinstance(d, dict)
                               else str(d) for d in detail)
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return f"HTTP {exc.status_code}: {text[:400].rstrip('.')}"
    return f"{type(exc).__name__}: {exc}"


def describe_failure(server: Server, exc: Exception) -> str:
    """A ServerError's message: the server, what it said and what to do about it."""
    import openai

    said = server_said(exc)
    if isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError):
        advice = "is it running? start it, or correct --base-url; then rerun to resume"
    elif isinstance(exc, openai.APITimeoutError):
        advice = f"it did not answer in {server.timeout_s:.0f} s, {server.retries + 1} times; rerun to resume"
    elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
        advice = f"set the API key it expects in ${API_KEY_ENV[0]}"
    elif isinstance(exc, openai.NotFoundError) or (isinstance(exc, openai.BadRequestError) and (
            server.model in said or "model" in said.lower())):
        advice = (f"check that it serves a model named {server.model!r} (--served-model), and that "
                  f"{server.url}/completions is its completions endpoint")
    elif isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        advice = f"it kept failing after {server.retries} retries; see the server's log, then rerun to resume"
    else:
        advice = "see the server's log"
    return f"server {server.url} (model {server.model}): {said}; {advice}"


def check_server(server: Server) -> None:
    """Refuse a server that is not there, or that lists its models and not this one, before a run starts.
    A server without a usable model list (`transformers serve` answers 500 without a Hugging Face cache)
    is let through: the first request then says whether the name is right."""
    import openai

    try:
        listed = [m.id for m in server.client.with_options(max_retries=1, timeout=15).models.list()]
    except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise ServerError(describe_failure(server, exc)) from exc
    except openai.APIError:
        return
    if listed and server.model not in listed:
        raise ServerError(f"server {server.url} serves {', '.join(listed)}, not {server.model!r}: pass one of "
                          "them as --served-model")


@dataclass(frozen=True)
class Completion:
    """One answer as stored: raw text cut at the first stop string, token counts, seconds, finish reason."""

    text: str
    prompt_tokens: int
    output_tokens: int
    seconds: float
    finish_reason: str


def wire_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the server must receive it: servers tokenize with special tokens, so the BOS the
    product writes for a tokenizer that adds one is left for the server to add, else it would be doubled."""
    from rocore.model.prompts import adds_bos

    bos = getattr(tokenizer, "bos_token", None)
    return prompt[len(bos):] if bos and adds_bos(tokenizer) and prompt.startswith(bos) else prompt


def complete(server: Server, client, prompt: str, max_tokens: int, stop_strings: Sequence[str],
             stop_token_ids: Sequence[int] = ()) -> Completion:
    """One greedy completion. Stop strings are cut here too: vLLM drops them from the text, `transformers
    serve` keeps them. stop_token_ids (vLLM's extension) only where the model's own stop tokens lack one."""
    extra = {"stop_token_ids": list(stop_token_ids)} if stop_token_ids else None
    started = time.monotonic()
    response = client.completions.create(model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                         top_p=1, n=1, stop=list(stop_strings) or None, extra_body=extra)
    seconds = time.monotonic() - started
    choices = response.choices or []
    if len(choices) != 1 or not isinstance(choices[0].text, str):
        raise ServerError(f"server {server.url} (model {server.model}) returned {len(choices)} choices where one "
                          "answer was asked for: it is not answering as an OpenAI-compatible completions endpoint")
    text, reason = choices[0].text, choices[0].finish_reason
    cut = min((text.index(s) for s in stop_strings if s in text), default=None)
    if cut is not None:
        text, reason = text[:cut], "stop"
    usage = response.usage
    if usage is None or usage.prompt_tokens is None or usage.completion_tokens is None:
        raise ServerError(f"server {server.url} (model {server.model}) returned no token counts (usage), which "
                          "every stored output records")
    finish = "length" if reason == "length" else "stop"
    return Completion(text, usage.prompt_tokens, usage.completion_tokens, seconds, finish)


def complete_all(server: Server, tokenizer, prompts: Sequence[str], max_tokens: int, stop_strings: Sequence[str],
                 stop_token_ids: Sequence[int] = (), stored: Callable[[list[tuple[int, Completion]]], None] | None = None
                 ) -> list[Completion]:
    """Every prompt's completion, `server.concurrency` requests at a time, in the prompts' order. When a
    request fails for good, the requests in flight finish, `stored` receives the completions made so far
    (index, completion) so nothing answered is lost, and a ServerError names the server and the failure."""
    client = server.client
    results: dict[int, Completion] = {}
    with ThreadPoolExecutor(max_workers=min(server.concurrency, len(prompts)) or 1) as pool:
        futures = {pool.submit(complete, server, client, wire_prompt(tokenizer, p), max_tokens, stop_strings,
                               stop_token_ids): i for i, p in enumerate(prompts)}
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            for future in pending:
                future.cancel()
            done, _ = wait([f for f in futures if not f.cancelled()])
        for future in done:
            if future.exception() is None:
                results[futures[future]] = future.result()
    if failed is not None:
        if stored and results:
            stored(sorted(results.items()))
        exc = failed.exception()
        if isinstance(exc, ServerError):
            raise exc
        raise ServerError(describe_failure(server, exc)) from exc
    return [results[i] for i in range(len(prompts))]


@dataclass(frozen=True)
class ServedModel:
    """A model served elsewhere, with the local folder it was served from: its tokenizer builds the
    prompts and its generation config says which stop tokens the server already stops on."""

    server: Server
    tokenizer: object
    path: Path
    adapter_path: Path | None = None

    @property
    def configured_stop_ids(self) -> list[int]:
        """The stop tokens of the folder's generation config, which the server stops on by itself."""
        config = self.path / "generation_config.json"
        ids = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id") if config.is_file() else None
        return [ids] if isinstance(ids, int) else list(ids or [])

    @property
    def server_stop_ids(self) -> set[int]:
        """What vLLM and `transformers serve` stop on unasked: the generation config's tokens and EOS."""
        eos = self.tokenizer.eos_token_id
        return {*self.configured_stop_ids, *([eos] if eos is not None else [])}


def load_served(server: Server, model_path: str | Path, adapter_path: str | Path | None = None) -> ServedModel:
    """The tokenizer of the local model folder the server serves (for an adapter served as a LoRA
    module or merged: the base's folder and the adapter's, whose prompt format the run must use)."""
    from transformers import AutoTokenizer

    from rocore.model.loading import ModelError, check_adapter_dir, check_model_dir

    path = Path(model_path)
    check_model_dir(path)
    if adapter_path is not None:
        check_adapter_dir(adapter_path, path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"the tokenizer of {path} could not be loaded: {exc}") from exc
    return ServedModel(server, tokenizer, path, Path(adapter_path) if adapter_path is not None else None)
