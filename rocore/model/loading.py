"""Loading a local Hugging Face causal LM in 4-bit (or 8-bit, bf16, fp16, fp32) with its LoRA adapters.

Base and fine-tuned outputs come from one loaded base: adapters are attached to it by name and
switched per request under the model's lock, so app sessions sharing a model (Streamlit's
`st.cache_resource`) cannot switch an adapter under each other's generate call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

QUANTIZATIONS = ("auto", "nf4", "int8", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
ADAPTER_INFO = "rocore_adapter.json"


class ModelError(RuntimeError):
    """A model or adapter that cannot be used; the message says what to change."""


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    path: Path
    quantization: str
    device: str
    adapters: dict[str, Path] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


def base_fingerprint(path: str | Path) -> str:
    """What makes two base models interchangeable for an adapter: their architecture config."""
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    keys = ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "vocab_size")
    shape = {k: config.get(k) for k in keys}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def resolve_device(device: str = "auto") -> str:
    import torch

    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for, but this machine has no usable CUDA GPU; "
                         "choose the cpu device (slow for large models) or run on a GPU server")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def compute_precision(device: str, bf16_supported: bool) -> str:
    """The precision GPU arithmetic runs in: bf16 where the GPU has it (Ampere and newer), else fp16
    (a T4 or V100 raises at bf16); fp32 on the CPU, where half precision is emulated and slow."""
    if device != "cuda":
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def device_precision(device: str) -> str:
    """compute_precision for this machine's GPU."""
    import torch

    return compute_precision(device, device == "cuda" and torch.cuda.is_bf16_supported())


def resolve_quantization(quantization: str, device: str, path: str | Path, training: bool = False) -> str:
    """`auto`: on a GPU, nf4 for training (QLoRA, the method the product reproduces) and for generation
    bf16 (fp16 on a GPU without bf16) where the model fits, else nf4; on the CPU fp32 for small models,
    else nf4 (bitsandbytes' 4-bit kernels are about 20 times slower there)."""
    import torch

    if quantization not in QUANTIZATIONS:
        raise ModelError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization != "auto":
        return quantization
    if device == "cuda" and training:
        return "nf4"
    weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors")) or \
        sum(f.stat().st_size for f in Path(path).glob("*.bin"))
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return device_precision(device) if weights * 1.3 < free else "nf4"
    return "fp32" if weights < 2 * 1024**3 else "nf4"


def check_model_dir(path: Path) -> dict:
    if not path.exists():
        raise ModelError(f"model directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{path} has no config.json: it is not a Hugging Face model directory "
                         "(expected the output of save_pretrained)")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise ModelError(f"{path} holds a {', '.join(architectures)} model, not a causal language model")
    return config


def load_kwargs(quantization: str, device: str) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    placement = {"device_map": {"": 0 if device == "cuda" else "cpu"}}
    if quantization == "nf4":
        return {**placement, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float16 if device_precision(device) == "fp16" else torch.bfloat16)}
    if quantization == "int8":
        return {**placement, "quantization_config": BitsAndBytesConfig(load_in_8bit=True)}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[quantization]
    return {**placement, "dtype": dtype}


def load_base(path: str | Path, quantization: str = "auto", device: str = "auto",
              padding_side: str = "left", training: bool = False) -> LoadedModel:
    """A base model and its tokenizer, for generation or for training: one loader, so every way a
    model directory can fail to load is a ModelError that names it and says what to change."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    check_model_dir(path)
    device = resolve_device(device)
    quantization = resolve_quantization(quantization, device, path, training)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **load_kwargs(quantization, device))
    except torch.cuda.OutOfMemoryError as exc:
        raise ModelError(f"out of GPU memory loading {path} in {quantization}: choose nf4 (about a "
                         "quarter of bf16's memory), free the GPU, or use a smaller model") from exc
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt file
        raise ModelError(f"{path} could not be loaded in {quantization}: {exc}") from exc
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, path, quantization, device)


def load_model(path: str | Path, quantization: str = "auto", device: str = "auto") -> LoadedModel:
    """A base model and its tokenizer, ready for batched left-padded generation."""
    loaded = load_base(path, quantization, device)
    loaded.model.eval()
    return loaded


def check_adapter_dir(adapter_path: str | Path, base_path: str | Path) -> None:
    """Refuse a folder that is not a LoRA adapter, or one recorded as trained on another base: read
    from small files only, so a request can be refused before any weights are loaded."""
    adapter_path = Path(adapter_path)
    if not (adapter_path / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_path} has no adapter_config.json: it is not a LoRA adapter directory")
    info_file = adapter_path / ADAPTER_INFO
    if info_file.is_file():
        trained_on = json.loads(info_file.read_text(encoding="utf-8")).get("base_fingerprint")
        fingerprint = base_fingerprint(base_path)
        if trained_on and trained_on != fingerprint:
            raise ModelError(f"adapter {adapter_path} was trained on another base model (fingerprint "
                             f"{trained_on}, this base {base_path} is {fingerprint}); load the "
                             "base it was trained on")


def attach_adapter(loaded: LoadedModel, adapter_path: str | Path, name: str = "finetuned") -> None:
    """Attach a LoRA adapter to the loaded base under `name`, refusing one made for another base."""
    from peft import PeftModel

    adapter_path = Path(adapter_path)
    check_adapter_dir(adapter_path, loaded.path)
    with loaded.lock:
        try:
            if isinstance(loaded.model, PeftModel):
                loaded.model.load_adapter(str(adapter_path), adapter_name=name)
            else:
                loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter_path), adapter_name=name)
        except RuntimeError as exc:
            if "size mismatch" in str(exc):
                raise ModelError(f"adapter {adapter_path} does not fit the base model {loaded.path} "
                                 "(its weight shapes differ): it was trained on another base") from exc
            raise
        loaded.model.eval()
        loaded.adapters[name] = adapter_path


@contextlib.contextmanager
def using_adapter(loaded: LoadedModel, name: str | None) -> Iterator[object]:
    """Hold the model's lock with adapter `name` active (None: the plain base) and yield the model."""
    with loaded.lock:
        if name is None:
            if loaded.adapters:
                with loaded.model.disable_adapter():
                    yield loaded.model
            else:
                yield loaded.model
            return
        if name not in loaded.adapters:
            raise ModelError(f"no adapter named {name!r} is attached (attached: {', '.join(loaded.adapters) or 'none'})")
        loaded.model.set_adapter(name)
        yield loaded.model


def write_adapter_info(adapter_dir: str | Path, base_path: str | Path, details: dict) -> None:
    """Record beside an adapter which base it belongs to, so a wrong pairing is refused on load."""
    info = {"base_path": str(base_path), "base_fingerprint": base_fingerprint(base_path), **details}
    (Path(adapter_dir) / ADAPTER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
