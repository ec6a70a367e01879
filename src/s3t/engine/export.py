"""Export a served model as a standard PEFT adapter folder.

The folder holds one LoRA adapter over the active blocks' layers plus the head (as peft
``modules_to_save``), so ``PeftModel.from_pretrained(base, folder)`` on a freshly loaded
base model reproduces our logits without s3t installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from s3t.engine.blocks import BlockModel, State, peft_config
from s3t.engine.loading import load_backbone, resolve_model_path
from s3t.errors import ConfigError


def export_adapter(
    engine: BlockModel,
    blocks: Sequence[State],
    head: State | None,
    out_dir: str | Path,
    provenance: dict[str, Any],
    seed: int = 0,
) -> Path:
    """Write the model of depth len(blocks) (blocks 1..d, head d) to ``out_dir``."""
    from peft import get_peft_model

    if not blocks:
        raise ConfigError("a depth-0 model has nothing to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = engine.backbone.spec
    fresh = load_backbone(spec, seed=seed)
    config = peft_config(
        engine.lora, fresh, engine.active_layers(len(blocks)), engine.backbone.anatomy.head
    )
    config.base_model_name_or_path = resolve_model_path(spec.name_or_path)
    model = get_peft_model(fresh.model, config)
    params = dict(model.named_parameters())
    wanted: dict[str, torch.Tensor] = {}
    for state in blocks:
        for name, tensor in state.items():
            wanted[f"base_model.model.{name}"] = tensor
    for name, tensor in (head or {}).items():
        module, leaf = name.split(".", 1)
        wanted[f"base_model.model.{module}.modules_to_save.default.{leaf}"] = tensor
    missing = sorted(set(wanted) - set(params))
    if missing:
        raise ConfigError(f"export could not place tensors {missing[:3]} in the PEFT model")
    with torch.no_grad():
        for name, tensor in wanted.items():
            params[name].copy_(tensor)
    model.save_pretrained(str(out))
    if fresh.tokenizer is not None:
        fresh.tokenizer.save_pretrained(str(out))
    (out / "s3t_export.json").write_text(json.dumps(provenance, indent=2, sort_keys=True))
    return out
