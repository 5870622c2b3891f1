"""Loading a local Hugging Face causal LM in 4-bit (or 8-bit, bf16, fp16, fp32) with its LoRA adapters.

Base and fine-tuned outputs come from one loaded base: adapters are attached to it by name and
switched per request under the model's lock, so app sessions sharing a model (Streamlit's
`st.cache_resource`) cannot switch an adapter under each other's generate call. For a whole
generation run, `adapter_for_generation` merges a LoRA adapter into a copy of the weights it
touches, so the fine-tuned model generates at the base's speed.
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
MERGEABLE = ("fp32", "bf16", "fp16")  # the precisions a LoRA delta can be added to as it is
DEVICES = ("auto", "cpu", "cuda")
ADAPTER_INFO = "rocore_adapter.json"


class ModelError(RuntimeError):
    """A model or adapter that cannot be used; the message says what to change."""


@dataclass
class MergedAdapter:
    """An adapter merged into copies of its layers' base weights, and the base's own tensors, which
    are swapped back on unmerging: bit for bit, where subtracting the delta again would round."""
    name: str
    layers: list
    originals: list  # (parameter, the base's tensor)


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    path: Path
    quantization: str
    device: str
    adapters: dict[str, Path] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    merged: MergedAdapter | None = None
    # False keeps adapters unmerged in generation runs: bench/generate.py times both ways.
    merge_for_generation: bool = True


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
    """How from_pretrained loads the base: the whole model on one device, on a GPU the one of this
    process's LOCAL_RANK, so each data-parallel training process holds its own copy on its own GPU."""
    import os

    import torch
    from transformers import BitsAndBytesConfig

    placement = {"device_map": {"": int(os.environ.get("LOCAL_RANK", "0")) if device == "cuda" else "cpu"}}
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


def _check_attached(loaded: LoadedModel, name: str) -> None:
    if name not in loaded.adapters:
        raise ModelError(f"no adapter named {name!r} is attached (attached: {', '.join(loaded.adapters) or 'none'})")


@contextlib.contextmanager
def using_adapter(loaded: LoadedModel, name: str | None) -> Iterator[object]:
    """Hold the model's lock with adapter `name` active (None: the plain base) and yield the model.
    Within `adapter_for_generation` for the same adapter this costs nothing; asking for another (or
    the base) there unmerges first, since the merged weights are not the base's."""
    with loaded.lock:
        if loaded.merged is not None and loaded.merged.name == name:
            yield loaded.model
            return
        _unmerge(loaded)
        if name is None:
            if loaded.adapters:
                with loaded.model.disable_adapter():
                    yield loaded.model
            else:
                yield loaded.model
            return
        _check_attached(loaded, name)
        loaded.model.set_adapter(name)
        yield loaded.model


def _available_memory(device) -> int:
    """Bytes free on the torch `device`: the GPU's (with what torch holds unused), or the system's
    available memory; 0 where it cannot be told, so nothing is merged blindly."""
    import torch

    if device.type == "cuda":
        return (torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
                - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


def _mergeable_layers(loaded: LoadedModel, name: str) -> list | None:
    """The LoRA layers of adapter `name`, or None where merging would not compute what the unmerged
    adapter does or does not fit: a quantized base (nf4/int8 weights cannot take the delta without requantizing:
    generation stays unmerged), another kind of adapter, a layer whose weight is shared with another
    (tied embeddings: merging would change both), or a copy taking over half the free memory (the
    other half is left to the batches' activations and KV cache)."""
    from peft import PeftType
    from peft.tuners.lora import LoraLayer

    if loaded.quantization not in MERGEABLE or loaded.model.peft_config[name].peft_type != PeftType.LORA:
        return None
    layers = [m for m in loaded.model.modules() if isinstance(m, LoraLayer) and name in m.scaling]
    touched = [p for layer in layers for p in layer.get_base_layer().parameters(recurse=False)]
    uses: dict[int, int] = {}
    for _, parameter in loaded.model.named_parameters(remove_duplicate=False):
        uses[id(parameter)] = uses.get(id(parameter), 0) + 1
    if any(uses[id(p)] > 1 for p in touched):
        return None
    copy_bytes = sum(p.numel() * p.element_size() for p in touched)
    return layers if touched and copy_bytes * 2 <= _available_memory(touched[0].device) else None


def _merge(loaded: LoadedModel, name: str) -> bool:
    """Merge adapter `name` into copies of its layers' weights (peft's safe merge writes the sum to a
    new tensor and leaves the base's untouched); False where it is not merged."""
    import torch

    layers = _mergeable_layers(loaded, name)
    if not layers:
        return False
    originals = [(p, p.data) for layer in layers for p in layer.get_base_layer().parameters(recurse=False)]
    loaded.model.set_adapter(name)
    loaded.merged = MergedAdapter(name, [], originals)
    with torch.no_grad():
        try:
            for layer in layers:
                layer.merge(safe_merge=True, adapter_names=[name])
                loaded.merged.layers.append(layer)
        except BaseException:
            _unmerge(loaded)
            raise
    return True


def _unmerge(loaded: LoadedModel) -> None:
    """Swap the base's own tensors back; nothing to do when nothing is merged."""
    merged, loaded.merged = loaded.merged, None
    if merged is None:
        return
    for parameter, tensor in merged.originals:
        parameter.data = tensor
    for layer in merged.layers:
        layer.merged_adapters.remove(merged.name)


@contextlib.contextmanager
def adapter_for_generation(loaded: LoadedModel, name: str | None) -> Iterator[bool]:
    """Hold the model's lock for a whole generation run with adapter `name` (None: the base), merged
    into a copy of the weights it touches where `_mergeable_layers` allows, so each batch costs what
    the base's does (an unmerged LoRA adds two small matmuls per layer and token). `using_adapter`
    per batch works as before inside. On exit the base's weights are back, bit for bit. Outputs equal
    the unmerged adapter's in fp32; in bf16/fp16 the merged weights round differently, which moves a
    greedy answer where two tokens tie within that rounding (docs/benchmarks.md). Yields whether the
    adapter is merged; re-entered for the adapter already merged, it changes nothing."""
    with loaded.lock:
        if name is None or (loaded.merged is not None and loaded.merged.name == name):
            yield name is not None
            return
        _check_attached(loaded, name)
        _unmerge(loaded)
        merged = loaded.merge_for_generation and _merge(loaded, name)
        try:
            yield merged
        finally:
            _unmerge(loaded)


def write_adapter_info(adapter_dir: str | Path, base_path: str | Path, details: dict) -> None:
    """Record beside an adapter which base it belongs to, so a wrong pairing is refused on load."""
    info = {"base_path": str(base_path), "base_fingerprint": base_fingerprint(base_path), **details}
    (Path(adapter_dir) / ADAPTER_INFO).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
