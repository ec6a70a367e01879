"""What kind of model this is, and where its parts are: the transformer layer stack, the
task head, and the projections LoRA goes on. Found by inspecting the module tree, so any
Hugging Face encoder classifier, image classifier or decoder LM works without a per-
checkpoint table of names.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from s3t.engine.settings import Family
from s3t.errors import ModelError

# Projection names tried in order; the first group whose names all occur in a layer wins.
# Paper defaults: query/value for RoBERTa and ViT, all 7 projections for Llama.
_TARGET_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    ("query", "value"),
    ("query_proj", "value_proj"),
    ("q_lin", "v_lin"),
    ("q_proj", "v_proj"),
    ("c_attn",),
    ("query_key_value",),
    ("qkv",),
)

_IMAGE_MODEL_TYPES = {"vit", "deit", "beit", "dinov2", "swin", "convnext", "data2vec-vision"}


@dataclass(frozen=True)
class Anatomy:
    """Where a model's parts live.

    ``layers_path`` is the dotted path of the transformer layer ``nn.ModuleList`` (e.g.
    ``bert.encoder.layer``); ``head`` the dotted paths of the modules trained at every stage
    (empty for causal LMs); ``targets`` the projection names LoRA is put on by default.
    """

    family: Family
    layers_path: str
    num_layers: int
    head: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def layers_attr(self) -> str:
        """The attribute name of the layer list (what peft calls ``layers_pattern``)."""
        return self.layers_path.rsplit(".", 1)[-1]

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """Return the layer list of ``model``."""
        found = model.get_submodule(self.layers_path)
        assert isinstance(found, nn.ModuleList)
        return found


def guess_family(config: object) -> Family:
    """Return the family a Hugging Face config describes."""
    model_type = str(getattr(config, "model_type", ""))
    archs = " ".join(getattr(config, "architectures", None) or [])
    if model_type in _IMAGE_MODEL_TYPES or "ImageClassification" in archs:
        return Family.IMAGE
    if "CausalLM" in archs or "LMHeadModel" in archs or getattr(config, "is_decoder", False):
        return Family.CAUSAL_LM
    if model_type in {"llama", "gpt2", "mistral", "qwen2", "gpt_neox", "opt", "phi", "gemma"}:
        return Family.CAUSAL_LM
    return Family.ENCODER


def inspect_model(model: nn.Module, family: Family) -> Anatomy:
    """Find the layer stack, head and default LoRA targets of a loaded model."""
    layers_path = _find_layer_stack(model)
    layers = model.get_submodule(layers_path)
    assert isinstance(layers, nn.ModuleList)
    head: tuple[str, ...] = ()
    if family is not Family.CAUSAL_LM:
        head = _find_head(model)
        if not head:
            raise ModelError(
                f"{type(model).__name__} has no task head next to its base model; load it "
                "with a sequence- or image-classification class"
            )
    return Anatomy(
        family=family,
        layers_path=layers_path,
        num_layers=len(layers),
        head=head,
        targets=_default_targets(layers[0]),
    )


def _find_layer_stack(model: nn.Module) -> str:
    """Return the path of the ModuleList of identical blocks holding the most parameters."""
    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or not name:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name)
    if best is None:
        raise ModelError(
            f"{type(model).__name__} has no stack of transformer layers (an nn.ModuleList of "
            "identical blocks); s3t trains transformer models only"
        )
    return best[1]


def _find_head(model: nn.Module) -> tuple[str, ...]:
    """Return the top-level children that are not the pretrained base and hold parameters."""
    base_name = getattr(model, "base_model_prefix", "")
    return tuple(
        name
        for name, child in model.named_children()
        if name != base_name and any(True for _ in child.parameters())
    )


def _default_targets(layer: nn.Module) -> tuple[str, ...]:
    names = set()
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            names.add(name.rsplit(".", 1)[-1])
    for group in _TARGET_GROUPS:
        if set(group) <= names:
            return group
    raise ModelError(
        "could not find attention projections to put LoRA on; pass target modules "
        f"explicitly (linear layers found: {sorted(names)!r})"
    )
