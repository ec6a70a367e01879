"""export(): a standard PEFT adapter folder that reproduces our logits for the shard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from s3t.engine.features import FeatureStore
from s3t.errors import InvalidRequestError
from s3t.system.api import S3T

TEXTS = ["good film", "awful boring plot", "the actor was superb"]


def test_exported_adapter_loads_with_peft_and_matches_predict(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    system = S3T.open(trained)
    # truncate shard 1 so that the export is of a partial depth, not just the full model
    row = system.workspace.registry().sequences(1)[0]
    system.forget([next(s["id"] for s in system.samples(1) if s["slice"] == row.perm[2])])
    served = next(s for s in system.served() if s.shard == 1)
    out = system.export(1, tmp_path / "export")
    info = json.loads((out / "s3t_export.json").read_text())
    assert (info["shard"], info["sequence"], info["depth"]) == (1, served.seq, served.depth)
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["layers_to_transform"]) == system.server.engine.active_layers(served.depth)

    base_path = system.workspace.config.model.name_or_path
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:  # one input at a time: identical batch shapes on both sides
        ours = system.server.shard_logits(
            FeatureStore(system.server.engine.backbone, ["x"], text=[text])
        )[1][1]
        with torch.no_grad():
            theirs = model(**tokenizer([text], return_tensors="pt")).logits
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-6)


def test_export_of_a_dead_shard_is_refused(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    rows = system.workspace.registry().sequences(0)
    system.forget(
        [next(s["id"] for s in system.samples(0) if s["slice"] == r.perm[0]) for r in rows]
    )
    with pytest.raises(InvalidRequestError, match="shard 0 serves no model"):
        system.export(0, tmp_path / "x")
