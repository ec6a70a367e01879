"""Loading files and saved datasets: column inference, ids, labels, task, splits, limits."""

import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pytest

from s3t.data import TEMPLATES, format_alpaca, load_dataset
from s3t.errors import DataError


def write_csv(path: Path, rows: list[dict[str, Any]]) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def review_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"sample_id": f"r{i}", "review": f"review number {i}", "category": "ab"[i % 2]}
        for i in range(n)
    ]


def test_columns_are_inferred_from_common_names(tmp_path: Path) -> None:
    rows = [{**row, "extra": 1} for row in review_rows(6)]
    train = load_dataset(write_csv(tmp_path / "reviews.csv", rows)).train
    assert train.ids == tuple(f"r{i}" for i in range(6))
    assert train.text == tuple(f"review number {i}" for i in range(6))
    assert train.task == "classification"
    assert train.label_names == ("a", "b")
    assert train.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_text_column_order_and_explicit_options(tmp_path: Path) -> None:
    rows = [{"content": "c", "text": "t", "other": "o", "label": 1, "score": 5}]
    path = write_csv(tmp_path / "d.csv", rows)
    assert load_dataset(path).train.text == ("t",)
    explicit = load_dataset(path, text_column="other", label_column="score").train
    assert explicit.text == ("o",)
    assert explicit.label_names == ("5",)


def test_ids_default_to_row_numbers_and_are_text(tmp_path: Path) -> None:
    rows = [{"text": "x", "label": 0}, {"text": "y", "label": 1}]
    assert load_dataset(write_csv(tmp_path / "a.csv", rows)).train.ids == ("0", "1")
    with_ids = [{"id": "007", "text": "x", "label": 0}, {"id": "12", "text": "y", "label": 1}]
    assert load_dataset(write_csv(tmp_path / "b.csv", with_ids)).train.ids == ("007", "12")
    int_ids = [{"idx": 5, "text": "x", "label": 0}, {"idx": 9, "text": "y", "label": 1}]
    assert load_dataset(write_jsonl(tmp_path / "c.jsonl", int_ids)).train.ids == ("5", "9")


def test_missing_named_column_is_reported_first_with_the_available_columns(
    tmp_path: Path,
) -> None:
    # The label is missing too, but the unknown column must be what is reported.
    rows: list[dict[str, Any]] = [
        {"id": "a", "text": "x", "label": None},
        {"id": "b", "text": "y", "label": 1},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="'body'") as info:
        load_dataset(path, text_column="body")
    for column in ("id", "text", "label"):
        assert repr(column) in str(info.value)


def test_duplicate_ids_are_listed(tmp_path: Path) -> None:
    rows = [{"id": sid, "text": "x", "label": 0} for sid in ("a", "dup1", "dup1", "b")]
    with pytest.raises(DataError, match="dup1"):
        load_dataset(write_csv(tmp_path / "d.csv", rows))


def test_missing_label_names_the_row(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"id": "a", "text": "x", "label": 1},
        {"id": "gap", "text": "y", "label": None},
    ]
    with pytest.raises(DataError, match="gap"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))


def test_int_labels_sort_numerically_and_strings_lexicographically(tmp_path: Path) -> None:
    ints = [{"text": str(v), "label": v} for v in (10, 2, 33, 2)]
    train = load_dataset(write_csv(tmp_path / "i.csv", ints)).train
    assert train.label_names == ("2", "10", "33")
    assert train.labels.tolist() == [1, 0, 2, 0]
    strings = [{"text": v, "label": v} for v in ("pear", "Apple", "fig")]
    train = load_dataset(write_csv(tmp_path / "s.csv", strings)).train
    assert train.label_names == ("Apple", "fig", "pear")
    assert train.labels.tolist() == [2, 0, 1]


def test_mixed_label_types_are_refused(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"text": "x", "label": 1}, {"text": "y", "label": "one"}]
    with pytest.raises(DataError, match="all strings or all numbers"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", rows))


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        ([0.5, 1.25, 3.0, 2.0], "regression"),  # non-integer values
        ([float(v) for v in range(25)], "regression"),  # floats, > 20 distinct values
        ([0.0, 1.0, 1.0, 0.0], "classification"),  # few integral floats
        (list(range(30)), "classification"),  # ints are classes however many
    ],
)
def test_task_is_inferred_from_labels(tmp_path: Path, labels: list[Any], task: str) -> None:
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate(labels)]
    train = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows)).train
    assert train.task == task
    if task == "regression":
        assert train.labels.dtype == np.float64
        assert train.labels.tolist() == labels
        assert train.num_labels == 1
    else:
        assert train.num_labels == len(set(labels))


def test_task_can_be_forced(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate([0.5, 1.5, 0.5])]
    train = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows), task="classification").train
    assert train.label_names == ("0.5", "1.5")
    words = [{"text": "x", "label": "high"}]
    with pytest.raises(DataError, match="'high'"):
        load_dataset(write_jsonl(tmp_path / "w.jsonl", words), task="regression")


def shuffled_copy(tmp_path: Path, rows: list[dict[str, Any]]) -> tuple[str, str]:
    mixed = rows[:]
    random.Random(5).shuffle(mixed)
    return write_csv(tmp_path / "a.csv", rows), write_csv(tmp_path / "b.csv", mixed)


def test_limit_is_a_seeded_sample_independent_of_row_order(tmp_path: Path) -> None:
    a, b = shuffled_copy(tmp_path, review_rows(200))
    first = load_dataset(a, limit=30, seed=3).train
    assert len(first) == 30
    assert set(first.ids) == set(load_dataset(b, limit=30, seed=3).train.ids)
    assert set(first.ids) != set(load_dataset(a, limit=30, seed=4).train.ids)
    assert set(first.ids) != {f"r{i}" for i in range(30)}  # a sample, not the head
    assert len(load_dataset(a, limit=10_000).train) == 200
    with pytest.raises(DataError, match="got 0"):
        load_dataset(a, limit=0)


def test_test_fraction_is_a_keyed_hash_split_independent_of_row_order(tmp_path: Path) -> None:
    a, b = shuffled_copy(tmp_path, review_rows(400))
    one, two = (
        load_dataset(a, test_fraction=0.25, seed=1),
        load_dataset(b, test_fraction=0.25, seed=1),
    )
    assert one.test is not None and two.test is not None
    assert set(one.test.ids) == set(two.test.ids)
    assert 60 <= len(one.test) <= 140
    assert set(one.train.ids) | set(one.test.ids) == {f"r{i}" for i in range(400)}
    other = load_dataset(a, test_fraction=0.25, seed=2).test
    assert other is not None and set(other.ids) != set(one.test.ids)
    limited = load_dataset(a, test_fraction=0.25, seed=1, limit=50)
    assert len(limited.train) == 50
    assert limited.test is not None and limited.test.ids == one.test.ids
    with pytest.raises(DataError, match=r"got 1\.5"):
        load_dataset(a, test_fraction=1.5)


def test_saved_dataset_dict_uses_its_own_test_split(tmp_path: Path) -> None:
    features = datasets.Features(
        {
            "idx": datasets.Value("int64"),
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos", "neutral"]),
        }
    )
    train = datasets.Dataset.from_dict(
        {"idx": [0, 1, 2], "sentence": ["a", "b", "c"], "label": [0, 1, 0]}, features=features
    )
    validation = datasets.Dataset.from_dict(
        {"idx": [0, 1], "sentence": ["d", "e"], "label": [1, 2]}, features=features
    )
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(str(path))
    loaded = load_dataset(str(path), test_fraction=0.5)
    assert loaded.train.ids == ("0", "1", "2")
    assert loaded.test is not None and loaded.test.ids == ("test-0", "test-1")
    assert loaded.train.label_names == ("neg", "pos", "neutral")
    assert loaded.test.labels.tolist() == [1, 2]


def test_saved_single_dataset_with_images(tmp_path: Path) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.int64).reshape(3, 4, 5)
    saved = datasets.Dataset.from_dict({"image": images.tolist(), "label": ["x", "y", "x"]})
    saved.save_to_disk(str(tmp_path / "imgs"))
    train = load_dataset(str(tmp_path / "imgs")).train
    assert train.image.dtype == np.uint8 and train.image.shape == (3, 4, 5)
    np.testing.assert_array_equal(train.image, images)


def test_parquet_and_jsonl_images(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).random((4, 3, 3, 2))
    rows = [{"pixels": p.tolist(), "label": i % 2} for i, p in enumerate(pixels)]
    path = tmp_path / "p.parquet"
    pd.DataFrame(rows).to_parquet(path)
    train = load_dataset(str(path)).train
    assert train.image.dtype == np.float32 and train.image.shape == (4, 3, 3, 2)
    np.testing.assert_allclose(np.asarray(train.image), np.asarray(pixels), rtol=1e-6)
    ragged = [{"image": [[1, 2], [3, 4]], "label": 0}, {"image": [[1, 2, 3]], "label": 1}]
    with pytest.raises(DataError, match="one shape"):
        load_dataset(write_jsonl(tmp_path / "r.jsonl", ragged))


def test_text_pair_column(tmp_path: Path) -> None:
    rows = [{"q": "is it?", "a": "yes", "label": 1}, {"q": "why?", "a": "no", "label": 0}]
    train = load_dataset(
        write_jsonl(tmp_path / "d.jsonl", rows), text_column="q", text_pair_column="a"
    ).train
    assert train.text == ("is it?", "why?") and train.text_pair == ("yes", "no")


def test_alpaca_columns_are_found_and_formatted(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Name a color.", "input": "", "output": "Red"},
    ]
    train = load_dataset(write_jsonl(tmp_path / "alpaca.jsonl", rows)).train
    assert train.task == "instruction" and train.labels is None
    assert train.prompt == (
        format_alpaca("Add.", "2 and 3", "5")[0],
        format_alpaca("Name a color.", "", "Red")[0],
    )
    assert "### Input:\n2 and 3" in train.prompt[0] and "### Input" not in train.prompt[1]
    assert train.response == ("5", "Red")


def test_prompt_response_columns(tmp_path: Path) -> None:
    rows = [{"q": "Say hi", "a": "hi", "text": "unused"}]
    train = load_dataset(
        write_jsonl(tmp_path / "d.jsonl", rows), prompt_column="q", response_column="a"
    ).train
    assert train.prompt == ("Say hi",) and train.response == ("hi",)
    with pytest.raises(DataError, match="instruction"):
        load_dataset(write_jsonl(tmp_path / "d.jsonl", rows), prompt_column="q", task="regression")


def test_glue_template_on_a_file(tmp_path: Path) -> None:
    rows = [
        {"idx": i, "sentence1": f"s{i}", "sentence2": f"t{i}", "label": 0.3 * i} for i in range(5)
    ]
    train = load_dataset(write_csv(tmp_path / "stsb.csv", rows), template="stsb").train
    assert train.text == tuple(f"s{i}" for i in range(5))
    assert train.text_pair == tuple(f"t{i}" for i in range(5))
    assert train.task == "regression"
    with pytest.raises(DataError, match=r"'copa'.*'question'"):
        load_dataset(write_csv(tmp_path / "stsb.csv", rows), template="copa")


def test_superglue_templates_fold_inputs_into_a_pair() -> None:
    copa = {
        "premise": "The man fell.",
        "choice1": "He slipped.",
        "choice2": "He sang.",
        "question": "cause",
    }
    assert TEMPLATES["copa"](copa) == (
        "The man fell. What was the cause?",
        "He slipped. [or] He sang.",
    )
    wic = {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan."}
    assert TEMPLATES["wic"](wic) == ("bank: A river bank.", "A bank loan.")
    wsc = {"text": "Tom thanked Bob because he helped.", "span1_text": "Bob", "span2_text": "he"}
    assert TEMPLATES["wsc"](wsc) == (wsc["text"], "Does 'he' refer to 'Bob'?")
    multirc = {"paragraph": "P.", "question": "Who?", "answer": "Ann."}
    assert TEMPLATES["multirc"](multirc) == ("P.", "Who? Ann.")
    assert TEMPLATES["sst2"]({"sentence": "good"}) == ("good", None)
    assert TEMPLATES["boolq"]({"question": "q", "passage": "p"}) == ("q", "p")


def test_template_errors_name_the_template_and_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'wsc'.*'span2_text'"):
        TEMPLATES["wsc"]({"text": "t", "span1_text": "a"})
    with pytest.raises(DataError, match="'cause' or 'effect'"):
        TEMPLATES["copa"]({"premise": "p", "choice1": "a", "choice2": "b", "question": "why"})
    path = write_csv(tmp_path / "d.csv", [{"sentence": "s", "label": 0}])
    with pytest.raises(DataError, match=r"'glue9'.*sst2"):
        load_dataset(path, template="glue9")


def test_format_alpaca() -> None:
    prompt, response = format_alpaca("Add.", "1 and 2", "3")
    assert prompt == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1 and 2\n\n### Response:\n"
    )
    assert response == "3"
    assert format_alpaca("Say hi.", None, "hi")[0] == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.csv"))
    (tmp_path / "d.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported"):
        load_dataset(str(tmp_path / "d.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a saved dataset"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no label column"):
        load_dataset(write_csv(tmp_path / "n.csv", [{"text": "x", "y": 1}]))


def test_saved_image_feature_is_decoded(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 6, 7), dtype=np.uint8)
    saved = datasets.Dataset.from_dict(
        {"image": [pil.fromarray(p) for p in pixels], "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    saved.save_to_disk(str(tmp_path / "pngs"))
    train = load_dataset(str(tmp_path / "pngs")).train
    assert train.image.dtype == np.uint8
    np.testing.assert_array_equal(train.image, pixels)


def test_alpaca_dump_with_a_formatted_text_column(tmp_path: Path) -> None:
    rows = [{"instruction": "Say hi.", "input": "", "output": "hi", "text": "### Say hi. hi"}]
    train = load_dataset(write_jsonl(tmp_path / "alpaca.jsonl", rows)).train
    assert train.task == "instruction"
    assert train.prompt == (format_alpaca("Say hi.", "", "hi")[0],)


def test_named_id_column_keeps_leading_zeros_and_paths_work(tmp_path: Path) -> None:
    rows = [{"uid": "007", "text": "x", "label": 0}, {"uid": "010", "text": "y", "label": 1}]
    path = tmp_path / "d.csv"
    write_csv(path, rows)
    assert load_dataset(path, id_column="uid").train.ids == ("007", "010")


def test_a_subject_column_names_each_sample_s_person(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {
            "id": f"r{i}",
            "text": f"review {i}",
            "label": i % 2,
            "author": "" if i == 3 else f"a{i % 2}",
        }
        for i in range(6)
    ]
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", rows), subject_column="author")
    assert data.train.subjects == ("a0", "a1", "a0", "r3", "a0", "a1")  # empty: its own
    with pytest.raises(DataError, match="'writer'"):
        load_dataset(write_jsonl(tmp_path / "e.jsonl", rows), subject_column="writer")
