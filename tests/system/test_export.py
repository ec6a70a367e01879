"""export(): a standard PEFT adapter folder that reproduces our logits for the shard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import registry_of, workspace_of
from s3t.engine.features import FeatureStore
from s3t.engine.settings import block_layers
from s3t.errors import InvalidRequestError
from s3t.system.api import S3T
from s3t.system.serving.server import Server
from s3t.system.serving.source import WorkspaceSource

TEXTS = ["good film", "awful boring plot", "the actor was superb"]


def test_exported_adapter_loads_with_peft_and_matches_predict(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    system = S3T.open(trained)
    # truncate shard 1 so that the export is of a partial depth, not just the full model
    row = registry_of(system).sequences(1)[0]
    system.forget([next(s.id for s in system.samples(1) if s.slice == row.perm[2])])
    served = next(s for s in system.served() if s.shard == 1)
    exported = system.export(1, tmp_path / "export")
    out = exported.path
    assert (exported.shard, exported.sequence, exported.depth) == (1, served.seq, served.depth)
    assert exported.artifacts == list(served.artifacts)
    info = json.loads((out / "s3t_export.json").read_text())
    assert (info["shard"], info["sequence"], info["depth"]) == (1, served.seq, served.depth)
    config = json.loads((out / "adapter_config.json").read_text())
    blocks = block_layers(system.model_info().layers, 3)
    assert sorted(config["layers_to_transform"]) == sorted(
        i for block in blocks[: served.depth] for i in block
    )

    server = Server(WorkspaceSource(workspace_of(system)))
    base_path = system.config.model.name_or_path
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    for text in TEXTS:  # one input at a time: identical batch shapes on both sides
        ours = server.shard_logits(FeatureStore(server.engine.backbone, ["x"], text=[text]))[1][1]
        with torch.no_grad():
            theirs = model(**tokenizer([text], return_tensors="pt")).logits
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-6)


def test_export_of_a_dead_shard_is_refused(trained, tmp_path) -> None:  # type: ignore[no-untyped-def]
    system = S3T.open(trained)
    rows = registry_of(system).sequences(0)
    system.forget([next(s.id for s in system.samples(0) if s.slice == r.perm[0]) for r in rows])
    with pytest.raises(InvalidRequestError, match="shard 0 serves no model"):
        system.export(0, tmp_path / "x")
