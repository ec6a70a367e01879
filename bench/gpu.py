"""The GPU check: s3t on models of the paper's sizes, on one GPU, in a few minutes.

No checkpoint can be downloaded, so the models are random-initialised from real configs: a
RoBERTa-large classifier (355M parameters, the paper's GLUE/SuperGLUE model) and a ~1B
Llama (TinyLlama's shape with 16 layers) tuned on instructions. For each model and precision
it trains one sequence of two stages through the product's own path (``S3T.fit``), then
retrains the sequence from scratch (``S3T.reference``) on the same device, and reports:

- stage throughput (training samples per second, mean of the two stages);
- peak GPU memory (``torch.cuda.max_memory_allocated``; peak RSS on a CPU) next to the
  estimate shown before training;
- whether every stage is bit-identical to its from-scratch reference, and the largest
  difference;
- a 4-bit (NF4, QLoRA-style) Llama stage, with bitsandbytes.

It prints one markdown table (and ``--json`` writes the rows). ``--device cpu --tiny`` runs
the same path on tiny configs in seconds: the test suite does, so the script keeps working.

    python bench/gpu.py                       # on the GPU (auto picks it)
    python bench/gpu.py --device cpu --tiny   # the harness, on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "plot", "is", "was"]
WORDS += ["what", "how", "answer", "question", "capital", "of", "and", "a", "it", "very"]


def tokenizer() -> Any:
    """A word-level tokenizer (no tokenizer can be downloaded either)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab_words = specials + WORDS + list(string.ascii_lowercase) + list(string.digits)
    vocab = {w: i for i, w in enumerate(dict.fromkeys([*vocab_words, ".", "?", ":", ","]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def save_models(root: Path, tiny: bool) -> dict[str, Path]:
    """Random-initialised RoBERTa-large and ~1B Llama (or tiny twins), saved like checkpoints."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, RobertaConfig
    from transformers import RobertaForSequenceClassification as Roberta

    tok = tokenizer()
    torch.manual_seed(0)
    roberta = RobertaConfig(
        vocab_size=50265,
        hidden_size=64 if tiny else 1024,
        num_hidden_layers=4 if tiny else 24,
        num_attention_heads=2 if tiny else 16,
        intermediate_size=128 if tiny else 4096,
        max_position_embeddings=514,
        pad_token_id=tok.pad_token_id,
        num_labels=2,
    )
    llama = LlamaConfig(
        vocab_size=32000,
        hidden_size=64 if tiny else 2048,
        intermediate_size=128 if tiny else 5632,
        num_hidden_layers=2 if tiny else 16,
        num_attention_heads=2 if tiny else 32,
        num_key_value_heads=2 if tiny else 4,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    paths = {}
    for name, model in (("roberta", Roberta(roberta)), ("llama", LlamaForCausalLM(llama))):
        path = root / name
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths[name] = path
        del model
    return paths


def datasets(samples: int) -> dict[str, Any]:
    """Seeded synthetic data: labelled reviews, and instruction/response pairs."""
    import numpy as np

    from s3t.data import Dataset, Examples

    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(8, 40)))) for _ in range(samples)]
    labels = np.array([int("good" in t or "great" in t) for t in texts], dtype=np.int64)
    ids = tuple(f"s{i}" for i in range(samples))
    reviews = Examples(
        ids, "classification", text=tuple(texts), labels=labels, label_names=("neg", "pos")
    )
    prompts = tuple(f"question: {t}?" for t in texts)
    answers = tuple(" ".join(rng.choice(words, size=int(rng.integers(4, 16)))) for _ in texts)
    pairs = Examples(ids, "instruction", prompt=prompts, response=answers)
    return {"roberta": Dataset("reviews", reviews), "llama": Dataset("instructions", pairs)}


def run_one(
    model: Path,
    data: Any,
    device: str,
    precision: str,
    quantize: str | None,
    work: Path,
    tiny: bool,
) -> dict[str, Any]:
    """Train one sequence of two stages, then its from-scratch reference; one table row."""
    import torch

    from s3t.engine.settings import Compute, LoraSettings, ModelSpec, TrainSettings
    from s3t.system.api import S3T
    from s3t.system.config import LayoutSettings, S3TConfig

    config = S3TConfig(
        model=ModelSpec(str(model), max_length=32 if tiny else 64, quantize=quantize),
        layout=LayoutSettings(shards=1, slices=2, budget=1, seed=0),
        lora=LoraSettings(rank=8),
        train=TrainSettings(
            lr=1e-4,
            epochs=1,
            batch_size=8 if tiny else 16,
            validation_fraction=0.0,
            precision=precision,
            gradient_checkpointing=quantize is not None,
        ),
    )
    cuda = device.startswith("cuda")
    if cuda:  # what earlier rows held is gone before this row's peak is measured
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    estimate: dict[str, Any] = {}
    rates: list[float] = []

    def on_event(event: Any) -> None:
        if event.kind == "memory":
            estimate.update(event.detail)
        elif event.kind == "swapped":
            rates.append(float(event.detail.get("samples_per_second", 0.0)))

    shutil.rmtree(work, ignore_errors=True)
    began = time.perf_counter()
    system = S3T.fit(work, data, config, on_event=on_event, compute=Compute(device=device))
    trained = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else _peak_rss_gib()
    system.close()
    del system
    began = time.perf_counter()
    check = S3T.open(work, read_only=True, compute=Compute(device=device)).reference(0)
    return {
        "model": model.name,
        "precision": precision,
        "quantize": quantize or "-",
        "samples_per_second": round(sum(rates) / max(len(rates), 1), 1),
        "peak_memory_gib": round(peak, 2),
        "estimated_gib": round(float(estimate.get("bytes", 0)) / 2**30, 2),
        "identical_to_reference": check.identical,
        "max_abs_diff": max((s.max_abs_diff for s in check.stages), default=0.0),
        "train_seconds": round(trained, 1),
        "reference_seconds": round(time.perf_counter() - began, 1),
    }


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def table(rows: list[dict[str, Any]], device: str) -> str:
    """One markdown table."""
    head = "| model | precision | base | samples/s | peak memory GiB (estimate) | bit-identical to reference | max abs diff |"
    lines = [f"Device: {device}.", "", head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['quantize']} | skipped: {r['skipped']} | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['quantize']} | {r['samples_per_second']} | "
            f"{r['peak_memory_gib']} ({r['estimated_gib']}) | {'yes' if r['identical_to_reference'] else 'NO'} | "
            f"{r['max_abs_diff']:.3g} |"
        )
    return "\n".join(lines)


def describe(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()} CPU, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (checks the harness)")
    parser.add_argument("--samples", type=int, default=None, help="samples per model")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)

    from s3t.engine.compute import resolve_device

    device = str(resolve_device(args.device))
    samples = args.samples or (48 if args.tiny else 512)
    plan: list[tuple[str, str, str | None]] = [
        ("roberta", "fp32", None),
        ("roberta", "bf16", None),
        ("roberta", "fp16", None),
        ("llama", "fp32", None),
        ("llama", "bf16", None),
        ("llama", "bf16", "4bit"),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="s3t-gpu-") as scratch:
        root = Path(scratch)
        print(
            f"saving random-initialised models ({'tiny' if args.tiny else 'real sizes'}) ...",
            flush=True,
        )
        models = save_models(root / "models", args.tiny)
        data = datasets(samples)
        for name, precision, quantize in plan:
            label = f"{name} {precision}{' ' + quantize if quantize else ''}"
            print(f"{label} ...", flush=True)
            if quantize is not None:
                try:
                    import bitsandbytes  # noqa: F401
                except ImportError:
                    rows.append(
                        {
                            "model": name,
                            "precision": precision,
                            "quantize": quantize,
                            "skipped": "pip install 's3t[quantize]'",
                        }
                    )
                    continue
            row = run_one(
                models[name], data[name], device, precision, quantize, root / "ws", args.tiny
            )
            rows.append(row)
            print(f"  {json.dumps(row)}", flush=True)
    print()
    print(table(rows, describe(device)))
    if args.json is not None:
        args.json.write_text(json.dumps({"device": describe(device), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
