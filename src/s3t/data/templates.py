"""Input formatting for GLUE/SuperGLUE rows and Alpaca-style instruction tuning.

Each entry of :data:`TEMPLATES` turns one raw row of a benchmark task (a mapping from the
task's field names to values) into the ``(text, text_pair)`` a cross-encoder reads, so a
user with those datasets on disk can run the paper's setups with ``template="rte"`` etc.
Tasks with more than two inputs are folded into a pair:

- ``copa``: text = ``"{premise} What was the {question}?"`` (question is ``cause`` or
  ``effect``), pair = ``"{choice1} [or] {choice2}"``; label 0/1 picks the choice.
- ``wic``: text = ``"{word}: {sentence1}"``, pair = ``sentence2``; is the word used in the
  same sense in both sentences?
- ``wsc``: text = ``text``, pair = ``"Does '{span2_text}' refer to '{span1_text}'?"``.
- ``multirc``: text = ``paragraph``, pair = ``"{question} {answer}"``; is the answer true?
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from s3t.errors import DataError

Template = Callable[[Mapping[str, Any]], tuple[str, str | None]]

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_alpaca(instruction: str, input: str | None, output: str) -> tuple[str, str]:
    """Return (prompt, response) in the Alpaca format; an empty or missing input drops the
    "### Input" section, as the original Alpaca data does."""
    if input is None or (isinstance(input, float) and math.isnan(input)) or not str(input):
        return ALPACA_NO_INPUT.format(instruction=instruction), str(output)
    return ALPACA_WITH_INPUT.format(instruction=instruction, input=input), str(output)


def _field(row: Mapping[str, Any], template: str, name: str) -> str:
    """Return one field of a row as text; a missing or null field is a :class:`DataError`."""
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise DataError(
            f"template {template!r} needs field {name!r}, which this row lacks or leaves "
            f"empty; got fields {sorted(row)!r}. Pick the template that matches the data."
        )
    return str(value)


def _single(template: str, text: str) -> Template:
    """Build a template that reads one sentence field."""

    def apply(row: Mapping[str, Any]) -> tuple[str, str | None]:
        return _field(row, template, text), None

    return apply


def _pair(template: str, text: str, text_pair: str) -> Template:
    """Build a template that reads two fields as (text, text_pair)."""

    def apply(row: Mapping[str, Any]) -> tuple[str, str | None]:
        return _field(row, template, text), _field(row, template, text_pair)

    return apply


def _copa(row: Mapping[str, Any]) -> tuple[str, str | None]:
    """COPA: premise plus the asked relation, against both choices."""
    question = _field(row, "copa", "question")
    if question not in ("cause", "effect"):
        raise DataError(f"copa field 'question' must be 'cause' or 'effect', got {question!r}")
    text = f"{_field(row, 'copa', 'premise')} What was the {question}?"
    return text, f"{_field(row, 'copa', 'choice1')} [or] {_field(row, 'copa', 'choice2')}"


def _wic(row: Mapping[str, Any]) -> tuple[str, str | None]:
    """WiC: the target word prefixed to the first sentence, against the second."""
    text = f"{_field(row, 'wic', 'word')}: {_field(row, 'wic', 'sentence1')}"
    return text, _field(row, "wic", "sentence2")


def _wsc(row: Mapping[str, Any]) -> tuple[str, str | None]:
    """WSC: the passage, against the coreference question."""
    span1, span2 = _field(row, "wsc", "span1_text"), _field(row, "wsc", "span2_text")
    return _field(row, "wsc", "text"), f"Does '{span2}' refer to '{span1}'?"


def _multirc(row: Mapping[str, Any]) -> tuple[str, str | None]:
    """MultiRC: the paragraph, against the question followed by the candidate answer."""
    question, answer = _field(row, "multirc", "question"), _field(row, "multirc", "answer")
    return _field(row, "multirc", "paragraph"), f"{question} {answer}"


TEMPLATES: dict[str, Template] = {
    "sst2": _single("sst2", "sentence"),
    "cola": _single("cola", "sentence"),
    "mrpc": _pair("mrpc", "sentence1", "sentence2"),
    "qqp": _pair("qqp", "question1", "question2"),
    "stsb": _pair("stsb", "sentence1", "sentence2"),
    "mnli": _pair("mnli", "premise", "hypothesis"),
    "qnli": _pair("qnli", "question", "sentence"),
    "rte": _pair("rte", "sentence1", "sentence2"),
    "wnli": _pair("wnli", "sentence1", "sentence2"),
    "boolq": _pair("boolq", "question", "passage"),
    "cb": _pair("cb", "premise", "hypothesis"),
    "copa": _copa,
    "wic": _wic,
    "wsc": _wsc,
    "multirc": _multirc,
}


def get_template(name: str) -> Template:
    """Return the formatter of one task; an unknown name lists the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise DataError(
            f"unknown template, got {name!r}; choose one of {sorted(TEMPLATES)}"
        ) from None
