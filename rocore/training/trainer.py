"""QLoRA supervised fine-tuning: a 4-bit base (bitsandbytes NF4) with a LoRA adapter (peft), trained
with transformers' Trainer on prompt/answer pairs from rocore.model.prompts, loss on the answer tokens only.

The same function trains the embedded demo's adapter on the CPU and a 7B model's on a GPU, in one
process or data parallel in several (`torchrun` or `accelerate launch`: one copy of the base per
process, on its own GPU), of which the main one saves the adapter.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rocore.model.loading import QUANTIZATIONS, device_precision, load_base, resolve_device, write_adapter_info
from rocore.model.prompts import (PROMPT_FORMATS, TASKS, build_example, chat_template_id, check_prompt_format,
                                  check_tasks, default_prompt_format, template_id)

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised by a callback to stop training at once, from a step, an evaluation or a save:
    train_adapter then keeps a checkpoint of where training stopped and saves no adapter."""


class MainProcessFailed(RuntimeError):
    """Raised in the other processes of a data-parallel run when the main process failed at work they
    were waiting for: they stop too (the main process reports why) instead of waiting for it forever."""


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes of one run: rank 0 is the main process."""

    rank: int = 0
    count: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_processes(device: str = "auto") -> Processes:
    """One process, unless a launcher (torchrun, accelerate launch) started several (WORLD_SIZE > 1):
    then their process group is started here (gloo on the CPU, nccl on GPUs, as the Trainer would), so
    that they can agree on their run before training. Safe to call again. FSDP and DeepSpeed (from
    `accelerate launch` with their configuration) are refused: each process here loads the whole base
    on its own GPU, and the main one saves the adapter from its own copy (docs/scale-out.md)."""
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true":
            raise ValueError(f"{name} is not supported: rocore trains data parallel, one copy of the base per "
                             "process; launch with torchrun --nproc_per_node N or accelerate launch --multi_gpu "
                             "(docs/scale-out.md)")
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    import torch.distributed as dist
    from accelerate import PartialState

    # On the CPU the state must be told so: without cpu=True accelerate 1.15 starts the group but
    # then counts a single process. The timeout is the Trainer's (ddp_timeout), which reuses this group.
    PartialState(cpu=resolve_device(device) == "cpu", timeout=datetime.timedelta(seconds=1800))
    atexit.register(_leave_processes)
    return Processes(dist.get_rank(), dist.get_world_size())


def _leave_processes() -> None:
    """Close the process group before the interpreter ends: a gloo group left open can abort the
    process on exit ("terminate called without an active exception"), which the launcher reports as a
    failure of a run that finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def from_main(work: Callable[[], object]) -> object:
    """`work()` done by the main process alone, its result handed to every process. When it raises, the
    main process raises that and the others raise it too (TrainingCancelled, so that all keep their
    checkpoint together) or MainProcessFailed. In one process, just `work()`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return work()
    if dist.get_rank() != 0:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        result, error = box[0]
        if error is not None:
            raise error
        return result
    try:
        result = work()
    except BaseException as exc:
        shared = exc if isinstance(exc, TrainingCancelled) else MainProcessFailed(
            f"the main process stopped: {type(exc).__name__}: {exc}")
        dist.broadcast_object_list([(None, shared)], src=0)
        raise
    dist.broadcast_object_list([(result, None)], src=0)
    return result


@dataclass
class TrainingConfig:
    """Hyper-parameters of one fine-tune (defaults: a typical LLaMA-2 QLoRA recipe, the base's precision by device)."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    # "auto": the one rule of rocore.model.loading.resolve_quantization (nf4 on a GPU; fp32 on the CPU
    # for a small model, where bitsandbytes' 4-bit kernels are ~20x slower).
    quantization: str = "auto"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    # "auto": on only when the estimated activations would not fit the GPU; off on the CPU.
    gradient_checkpointing: bool | str = "auto"
    # Batches of similar length waste little compute on padding.
    group_by_length: bool = True
    warmup_steps: float = 0.03
    logging_steps: int = 10
    # None: evaluate (and checkpoint) once per epoch.
    eval_steps: int | None = None
    # Stop after this many evaluations without a lower validation loss (None: never stop early).
    early_stopping_patience: int | None = 3
    # Evaluate on this many validation examples (case x task), drawn once with `seed` (None: all). A
    # full pass over a large validation part can take as long as a short training run.
    eval_max_examples: int | None = None
    seed: int = 0
    # "chat" (the tokenizer's chat template) or "plain"; "auto": chat for an instruction-tuned model
    # with a chat template (rocore.model.prompts.default_prompt_format). Generation must use the same.
    prompt_format: str = "auto"


def check_config(config: TrainingConfig) -> list[str]:
    """Every reason the hyper-parameters cannot be used, each saying what would be right."""
    problems = []
    try:
        check_tasks(config.tasks)
    except ValueError as exc:
        problems.append(f"tasks: {exc}")
    if config.quantization not in QUANTIZATIONS:
        problems.append(f"quantization: {config.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    for name, low in (("lora_r", 1), ("lora_alpha", 1), ("batch_size", 1), ("gradient_accumulation_steps", 1),
                      ("max_length", 16), ("logging_steps", 1)):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{name}: {value!r} must be a whole number of at least {low}")
    for name in ("learning_rate", "epochs"):
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            problems.append(f"{name}: {value!r} must be a number above 0")
    if not isinstance(config.lora_dropout, (int, float)) or not 0 <= config.lora_dropout < 1:
        problems.append(f"lora_dropout: {config.lora_dropout!r} must be at least 0 and below 1")
    if not isinstance(config.learning_rate, (int, float)) or config.learning_rate > 1e-2:
        problems.append(f"learning_rate: {config.learning_rate!r} is above 0.01; LoRA diverges there")
    if config.prompt_format not in ("auto", *PROMPT_FORMATS):
        problems.append(f"prompt_format: {config.prompt_format!r} must be auto, {' or '.join(PROMPT_FORMATS)}")
    if config.gradient_checkpointing not in (True, False, "auto"):
        problems.append(f"gradient_checkpointing: {config.gradient_checkpointing!r} must be true, false or auto")
    for name in ("eval_steps", "early_stopping_patience", "eval_max_examples"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.append(f"{name}: {value!r} must be a whole number of at least 1, or empty")
    return problems


def batch_activation_bytes(batch_size: int, longest_example: int, model_config) -> int:
    """What one training batch keeps for the backward pass without checkpointing: about 34 bytes x
    hidden x layers per token in half precision, plus the fp32 logits (batch x tokens x vocab x 4
    bytes: about 10 GB for 8 x 2,400 tokens at a 128k vocabulary). A batch is padded only to its own
    longest example, so the longest tokenised example bounds it, not max_length."""
    tokens = batch_size * longest_example
    layers = 34 * model_config.hidden_size * model_config.num_hidden_layers * tokens
    return layers + 4 * model_config.vocab_size * tokens


def needs_gradient_checkpointing(config: TrainingConfig, model_config, device: str, longest_example: int,
                                 free_bytes: int | None = None) -> bool:
    """Checkpointing trades about 40% of the speed for memory: use it only when one batch of the
    longest examples would not fit in 80% of the free GPU memory (`free_bytes`, default: measured)."""
    if config.gradient_checkpointing != "auto":
        return bool(config.gradient_checkpointing)
    if device != "cuda":
        return False
    if free_bytes is None:
        import torch

        free_bytes, _ = torch.cuda.mem_get_info()
    return batch_activation_bytes(config.batch_size, longest_example, model_config) > 0.8 * free_bytes


def sft_examples(tokenizer, cases: Sequence[dict], tasks: Sequence[str], max_length: int,
                 prompt_format: str) -> list[dict]:
    """One tokenised example per case and task, built as generation builds its prompt: everything up to
    the answer masked out of the loss, the answer and its end-of-turn (chat) or EOS (plain) kept.
    Over-long prompts are cut from the left of the diagnosis side so the answer always survives."""
    examples, tasks = [], check_tasks(list(tasks))
    for case in cases:
        for task in tasks:
            prompt_text, completion = build_example(tokenizer, task, case["diagnosis"], case[task], prompt_format)
            prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
            answer = tokenizer(completion, add_special_tokens=False)["input_ids"]
            prompt = prompt[-max(1, max_length - len(answer)):]
            input_ids = (prompt + answer)[:max_length]
            labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
            examples.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels})
    return examples


def validation_subsample(examples: list[dict], max_examples: int | None, seed: int) -> list[dict]:
    """At most `max_examples` of the validation examples, drawn with `seed` and kept in their order.
    Every evaluation of a run sees the same ones, so its validation losses (and early stopping on
    them) compare like with like."""
    if max_examples is None or len(examples) <= max_examples:
        return examples
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), max_examples))]


def load_for_training(base_path: str | Path, config: TrainingConfig, device: str = "auto"):
    """The base in the configured precision (right-padded for training) with a fresh LoRA adapter on
    all linear layers; a base that cannot be loaded raises ModelError. Checkpointing is left to the
    Trainer, decided once the examples' real lengths are known (needs_gradient_checkpointing)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    base = load_base(base_path, config.quantization, device, padding_side="right", training=True)
    model, tokenizer, device, quantization = base.model, base.tokenizer, base.device, base.quantization
    if quantization in ("nf4", "int8"):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tokenizer, device, quantization


def train_adapter(base_path: str | Path, train_cases: Sequence[dict], eval_cases: Sequence[dict],
                  output_dir: str | Path, config: TrainingConfig | None = None, device: str = "auto",
                  callbacks: Sequence = (), resume: bool = False, details: dict | None = None) -> Path:
    """Fine-tune and save the adapter (with its tokenizer and a record of how it was made, plus
    `details`) in `output_dir/adapter`; checkpoints go to `output_dir/checkpoints` for resuming.
    Launched in several processes, each trains on its share of every batch and the main one saves."""
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

    config = config or TrainingConfig()
    problems = check_config(config)
    if problems:
        raise ValueError("; ".join(problems))
    processes = join_processes(device)
    set_seed(config.seed)
    output_dir = Path(output_dir)
    model, tokenizer, device, quantization = load_for_training(base_path, config, device)
    log.info("loaded %s in %s on %s", base_path, quantization, device)
    prompt_format = (default_prompt_format(tokenizer, base_path) if config.prompt_format == "auto"
                     else config.prompt_format)
    check_prompt_format(tokenizer, prompt_format)
    train_set = sft_examples(tokenizer, train_cases, config.tasks, config.max_length, prompt_format)
    random.Random(config.seed).shuffle(train_set)
    validation = sft_examples(tokenizer, eval_cases or (), config.tasks, config.max_length, prompt_format)
    eval_set = validation_subsample(validation, config.eval_max_examples, config.seed) or None
    longest = max((len(example["input_ids"]) for example in train_set), default=1)
    # The main process's choice: free memory can differ between the GPUs.
    checkpointing = from_main(lambda: needs_gradient_checkpointing(config, model.config, device, longest))
    precision = device_precision(device)
    log.info("%d training and %d validation examples (%s prompts), %s compute, gradient checkpointing %s, "
             "%d process%s", len(train_set), len(eval_set or []), prompt_format, precision,
             "on" if checkpointing else "off", processes.count, "" if processes.count == 1 else "es")
    by_steps = config.eval_steps is not None
    args = TrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_steps,
        logging_steps=config.logging_steps,
        logging_first_step=True,  # a loss from the first step, not only after logging_steps of them
        eval_strategy=("steps" if by_steps else "epoch") if eval_set else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps" if by_steps else "epoch",
        save_steps=config.eval_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=bool(eval_set and config.early_stopping_patience),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=checkpointing,
        # Reentrant checkpointing needs inputs that require grad and breaks with frozen 4-bit bases.
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_cpu=device == "cpu",
        # Every LoRA weight takes part in every forward pass: DDP need not search for unused ones.
        ddp_find_unused_parameters=False,
        seed=config.seed,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX,
                                                           pad_to_multiple_of=8),
                      callbacks=list(callbacks) + ([EarlyStoppingCallback(config.early_stopping_patience)]
                                                   if eval_set and config.early_stopping_patience else []))
    try:
        trainer.train(resume_from_checkpoint=resume or None)
    except TrainingCancelled:
        _keep_checkpoint(trainer)
        raise
    adapter_dir = output_dir / "adapter"
    if not processes.main:
        return adapter_dir
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    write_adapter_info(adapter_dir, base_path, {
        **(details or {}), "config": asdict(config), "quantization": quantization, "device": device,
        "precision": precision, "gradient_checkpointing": checkpointing, "processes": processes.count,
        "prompt_format": prompt_format,
        "chat_template": chat_template_id(tokenizer) if prompt_format == "chat" else None,
        "templates": {t: template_id(tokenizer, t, prompt_format) for t in config.tasks},
        "n_train_examples": len(train_set),
        "n_eval_examples": len(eval_set or []), "n_validation_examples": len(validation),
        "final_train_loss": _last(trainer.state.log_history, "loss"),
        "final_eval_loss": _last(trainer.state.log_history, "eval_loss"),
    })
    return adapter_dir


def _keep_checkpoint(trainer) -> None:
    """A checkpoint at the step training was stopped at, so a resume loses nothing, unless the stop
    came right after one was saved there. A stop during an evaluation skips the save that follows it;
    Trainer has no public call for a checkpoint off its schedule, so this is the one its loop makes.
    Every process of the run saves it together (each writes its own random state), or none does."""
    step = trainer.state.global_step
    if step and not from_main(lambda: (Path(trainer.args.output_dir) / f"checkpoint-{step}").is_dir()):
        trainer._save_checkpoint(trainer.model, trial=None)
        log.info("saved checkpoint-%d", step)


def _last(history: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in history if key in entry]
    return values[-1] if values else None
