"""The three model families (and RoBERTa, GPT-2 variants) train a 2-shard, 2-sequence,
3-slice layout end to end on tiny random models, then forget, serve and verify."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from helpers import registry_of, tensors_of, toy_dataset
from s3t.data import load_dataset
from s3t.data.examples import Dataset
from s3t.engine.settings import LoraSettings, ModelSpec, TrainSettings
from s3t.system.api import S3T
from s3t.system.config import LayoutSettings, S3TConfig

LAYOUT = LayoutSettings(shards=2, slices=3, budget=2, seed=1)


def _config(path, **train) -> S3TConfig:  # type: ignore[no-untyped-def]
    return S3TConfig(
        model=ModelSpec(str(path), max_length=64),
        layout=LAYOUT,
        lora=LoraSettings(rank=2),
        train=TrainSettings(lr=5e-3, epochs=1, batch_size=8, **train),
    )


def _check_trained(system: S3T) -> None:
    rows = registry_of(system).sequences()
    assert len(rows) == 4
    assert all(r.depth == system.config.layout.slices for r in rows)
    for r in rows:
        for artifact in r.positions:
            block, _head = tensors_of(system, artifact)
            b = [t for name, t in block.items() if "lora_B" in name]
            assert b and all(float(t.abs().sum()) > 0 for t in b)
    victim = system.samples(shard=1)[0].id
    system.forget([victim])
    assert system.verify().ok


@pytest.mark.parametrize("model", ["tiny_bert", "tiny_roberta"])
def test_encoder_classifiers(model, request, tmp_path) -> None:  # type: ignore[no-untyped-def]
    system = S3T.fit(tmp_path / "ws", toy_dataset(72, 12), _config(request.getfixturevalue(model)))
    _check_trained(system)
    prediction = system.predict(["good film"])
    assert prediction.labels[0] in ("neg", "pos")


def test_text_pairs_and_regression(tiny_bert, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = toy_dataset(72, 12)
    values = np.linspace(0, 5, 72).astype(np.float32)
    train = base.train
    from s3t.data.examples import Examples

    pairs = Examples(
        ids=train.ids,
        task="regression",
        text=train.text,
        text_pair=tuple(reversed(train.text or ())),
        labels=values,
    )
    config = _config(tiny_bert)
    system = S3T.fit(tmp_path / "ws", Dataset("pairs", pairs), config)
    assert system.config.model.num_labels == 1
    _check_trained(system)
    out = system.predict([("good film", "the plot")])
    assert isinstance(out.labels[0], float)


def test_image_classifier_vit(tiny_vit, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = load_dataset("builtin:digits", limit=90)
    system = S3T.fit(tmp_path / "ws", data, _config(tiny_vit))
    _check_trained(system)
    assert data.test is not None and data.test.image is not None
    prediction = system.predict(data.test.image)
    assert len(prediction.labels) == len(data.test)
    names = list(data.train.label_names or ())
    truth = [names[i] for i in np.asarray(data.test.labels)]
    agreed = np.mean([p == t for p, t in zip(prediction.labels, truth, strict=True)])
    assert system.evaluate()["accuracy"] == pytest.approx(agreed)  # two paths, one answer


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_gpt2"])
def test_causal_lm_instruction_tuning(model, request, tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = load_dataset("builtin:tiny_alpaca")
    system = S3T.fit(tmp_path / "ws", data, _config(request.getfixturevalue(model)))
    _check_trained(system)
    assert registry_of(system).artifacts()[0].metrics != {}
    out = system.generate(["What is the capital of France?", "b"], max_new_tokens=4)
    assert len(out.outputs) == len(out.served) == 2  # the models behind each response
    assert out.served[0] == system.served()


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_a_quantised_llama_base_trains_serves_and_forgets(bits, tiny_llama64, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """QLoRA-style: the frozen base loaded by bitsandbytes (which runs on CPUs too), the LoRA
    blocks and head trained in fp32 on top of it."""
    pytest.importorskip("bitsandbytes", reason="the quantize extra is not installed")
    config = S3TConfig(
        model=ModelSpec(str(tiny_llama64), max_length=64, quantize=bits),
        layout=LayoutSettings(shards=2, slices=2, budget=2, seed=1),
        lora=LoraSettings(rank=2),
        train=TrainSettings(lr=5e-3, epochs=1, batch_size=8, gradient_checkpointing=True),
    )
    with warnings.catch_warnings():  # a kernel without a backward would train wrong blocks
        warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
        system = S3T.fit(tmp_path / "ws", load_dataset("builtin:tiny_alpaca"), config)
    base = system._get_trainer().local.worker.engine.model
    kinds = {type(m).__name__ for m in base.modules()}
    assert ("Linear4bit" if bits == "4bit" else "Linear8bitLt") in kinds
    _check_trained(system)
    system.close()
    served = S3T.open(tmp_path / "ws")
    out = served.generate(["What is the capital of France?"], max_new_tokens=3)
    assert len(out.outputs) == 1
