"""Tiny random Hugging Face models and a word-level tokenizer, built in code and saved to
a folder, so tests exercise the same loading path as real checkpoints (in seconds)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import torch

POSITIVE = ["good", "great", "fine", "love", "best", "fun", "superb"]
NEGATIVE = ["bad", "awful", "poor", "hate", "worst", "dull", "boring"]
FILLER = [
    "the",
    "a",
    "film",
    "movie",
    "plot",
    "actor",
    "story",
    "is",
    "was",
    "very",
    "and",
    "it",
    "of",
    "this",
    "that",
]
WORDS = [*POSITIVE, *NEGATIVE, *FILLER, "not", "but"]


def word_tokenizer(extra: list[str] | None = None):  # type: ignore[no-untyped-def]
    """A WordLevel tokenizer over a small vocabulary, with BERT-style specials and an EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>", "<s>"]
    vocab_words = specials + WORDS + list(string.ascii_lowercase) + list(string.digits)
    vocab_words += [w for w in (extra or []) if w not in vocab_words]
    vocab_words += ["#", ":", ".", ",", "?", "!", "'", "-", "+", "="]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(vocab_words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="</s>",
        bos_token="<s>",
        model_max_length=128,
    )


def save_tiny_text_model(
    path: Path, kind: str = "bert", layers: int = 4, num_labels: int = 2
) -> Path:
    """Save a tiny random encoder classifier (bert/roberta) with the word tokenizer."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    tokenizer = word_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model: Any
    if kind == "roberta":
        model = RobertaForSequenceClassification(RobertaConfig(**common, type_vocab_size=1))
    else:
        model = BertForSequenceClassification(BertConfig(**common))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_vit(path: Path, layers: int = 3, num_labels: int = 10, image_size: int = 8) -> Path:
    """Save a tiny random ViT image classifier for single-channel images."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(  # type: ignore[call-arg]
        image_size=image_size,
        patch_size=4 if image_size % 4 == 0 else 2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    return path


def save_tiny_causal_lm(path: Path, kind: str = "llama", layers: int = 3, hidden: int = 32) -> Path:
    """Save a tiny random decoder LM (llama/gpt2) with the word tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    model: Any
    if kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_embd=32,
                n_layer=layers,
                n_head=2,
                n_positions=256,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id,
            )
        )
    else:
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=layers,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=256,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sentiment_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Short synthetic reviews whose label is learnable from their words."""
    rng = np.random.default_rng(seed)
    pos, neg, filler = POSITIVE, NEGATIVE, FILLER
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(filler, size=int(rng.integers(3, 9))))
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(pos if label else neg)))
        texts.append(" ".join(words))
        labels.append(label)
    return texts, np.array(labels)
