"""The demo's base model, made on the spot with no download: a byte-level BPE tokenizer trained on the
synthetic cases' text and a small Llama pretrained on case reports of other synthetic patients.

The reports stand in for the literature a real base model has read: they pair a diagnosis with its
treatment, modality and code in prose, never in the product's prompt layout. So, like a real base
model, the demo base knows the field but has not been taught the three tasks, and the fine-tune has
something a LoRA adapter can do in minutes: teach the tasks, not the field. (Pretrained on notes and
prescriptions that were never paired, the base knew no codes, and its adapter learnt only the most
frequent answers: docs/benchmarks.md.)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from rocore.model.prompts import TASKS, build_example
from rocore.data.synthetic import generate_cases

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
ARCHITECTURE = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 512}


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2000):
    """A byte-level BPE tokenizer (no unknown characters) fitted to the demo's text, which starts every
    text with BOS as Llama-2's does: the base is pretrained on BOS-led documents, so prompts start so too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


CASE_REPORT_PHRASINGS = (
    "{diagnosis} Treated with {regimen} ({modality} therapy). Diagnosis code {icd10}.",
    "Diagnosis {icd10}. {diagnosis} Radiotherapy: {regimen}.",
    "{diagnosis} Recommended: {regimen}. Modality: {modality}. ICD-10-CM {icd10}.",
)


def case_reports(n: int, seed: int, exclude: Collection[str] = ()) -> list[str]:
    """Reports on `n` synthetic patients drawn with `seed`; any whose note is in `exclude` (the demo's
    own cases) is dropped, so pretraining never reads a case the demo evaluates."""
    rng = random.Random(seed)
    return [rng.choice(CASE_REPORT_PHRASINGS).format(**case) for case in generate_cases(n, seed)
            if case["diagnosis"] not in exclude]


def build_demo_base(out_dir: str | Path, train_cases: Sequence[dict], documents: Sequence[str], seed: int = 0,
                    epochs: float = 2.0, architecture: dict | None = None,
                    progress: Callable[[str], None] = print) -> Path:
    """Tokenizer + randomly initialised Llama + causal-LM pretraining on `documents`; saved to `out_dir`."""
    import torch
    from transformers import (DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, Trainer,
                              TrainingArguments, set_seed)

    set_seed(seed)
    out_dir = Path(out_dir)
    architecture = architecture or ARCHITECTURE
    # The tokenizer learns from the very text the model will read and write, prompts included, so
    # the instructions cost a few tokens each instead of one per character.
    examples = ["".join(build_example(None, task, case["diagnosis"], case[task], "plain"))
                for case in train_cases for task in TASKS]
    tokenizer = train_tokenizer(examples)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True, **architecture)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    progress(f"demo base model: Llama {architecture['num_hidden_layers']} layers x {architecture['hidden_size']}, "
             f"{n_params / 1e6:.1f}M parameters, vocabulary {len(tokenizer)}; pretraining on "
             f"{len(documents)} case reports")
    dataset = [tokenizer(f"{tokenizer.bos_token}{doc}{tokenizer.eos_token}", add_special_tokens=False,
                         truncation=True, max_length=architecture["max_position_embeddings"])
               for doc in documents]
    args = TrainingArguments(output_dir=str(out_dir / "pretraining"), num_train_epochs=epochs,
                             per_device_train_batch_size=32, learning_rate=2e-3, lr_scheduler_type="cosine",
                             warmup_steps=0.05, weight_decay=0.01, logging_steps=50, save_strategy="no",
                             train_sampling_strategy="group_by_length", use_cpu=not torch.cuda.is_available(),
                             report_to=[], disable_tqdm=True, seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=8))
    result = trainer.train()
    progress(f"demo base model: pretraining loss {result.training_loss:.2f}")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
