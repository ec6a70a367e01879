"""LoRA blocks: the unit of S3T training and deletion.

The layers of a model are grouped into L blocks of ℓ layers, counted from the top (block 1
holds the output-side layers). Stage i of a sequence trains block i's LoRA (and the task
head) with everything else frozen. Blocks are matched by *layer index*: every LoRA
parameter is attributed to a block through the layer module that owns it, never through
a substring of its name (``"layer.1"`` would also match layers 10 and 11).

:class:`BlockModel` owns one LoRA-injected model and can (re)initialise, snapshot, load and
zero each block and the head, and run a forward pass that starts at any layer from cached
hidden states.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, cast

import torch
from torch import nn

from s3t.engine.compute import autocast, precision_dtype
from s3t.engine.loading import Backbone
from s3t.engine.settings import LoraSettings, block_layers
from s3t.errors import ConfigError

State = dict[str, torch.Tensor]


def peft_config(
    lora: LoraSettings,
    backbone: Backbone,
    layers: Sequence[int],
    modules_to_save: Sequence[str] | None = None,
) -> Any:
    """Return the peft ``LoraConfig`` for LoRA on ``layers`` of a backbone (layers matched by
    index within the layer stack), optionally saving whole modules (a head) with it."""
    from peft import LoraConfig

    anatomy = backbone.anatomy
    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha_for(anatomy.family),  # type: ignore[arg-type]
        lora_dropout=lora.dropout,
        use_rslora=lora.rslora,
        target_modules=list(lora.targets or anatomy.targets),
        layers_to_transform=list(layers),
        layers_pattern=anatomy.layers_attr,
        fan_in_fan_out=_uses_conv1d(backbone.model),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )


class BlockModel:
    """One backbone with LoRA on every block's layers, plus its task head."""

    def __init__(
        self,
        backbone: Backbone,
        lora: LoraSettings,
        slices: int,
        device: torch.device | None = None,
        precision: str = "fp32",
    ) -> None:
        from peft import inject_adapter_in_model

        self.backbone = backbone
        self.lora = lora
        self.device = device or torch.device("cpu")
        self.precision = precision
        anatomy = backbone.anatomy
        self.family = anatomy.family
        self.blocks = block_layers(anatomy.num_layers, slices, lora.layers_per_slice, lora.order)
        config = peft_config(lora, backbone, sorted(i for block in self.blocks for i in block))
        self.lora_config = config
        self.model = inject_adapter_in_model(config, backbone.model)
        self.model.requires_grad_(False)
        self.model.eval()
        layers = anatomy.layers(self.model)
        self._layers = layers
        self.block_params: list[dict[str, nn.Parameter]] = []
        for block in self.blocks:
            params: dict[str, nn.Parameter] = {}
            for idx in block:
                prefix = f"{anatomy.layers_path}.{idx}"
                for name, param in layers[idx].named_parameters(prefix=prefix):
                    if ".lora_" in name:
                        params[name] = param
            if not params:
                raise ConfigError(
                    f"no LoRA parameters in layers {block}: target modules "
                    f"{config.target_modules!r} do not occur there"
                )
            self.block_params.append(params)
        self.head_params: dict[str, nn.Parameter] = {
            f"{head}.{name}": param
            for head in anatomy.head
            for name, param in self.model.get_submodule(head).named_parameters()
        }
        self._trainable: int | None = None
        self._place()
        for i in range(len(self.blocks)):
            self.zero_block(i + 1)

    def _place(self) -> None:
        """The frozen base in the compute dtype, LoRA and the head in fp32, all on the device
        (a quantised base was placed by bitsandbytes already)."""
        quantized = self.backbone.spec.quantize is not None
        trained = {id(p) for p in self.head_params.values()}
        trained |= {id(p) for block in self.block_params for p in block.values()}
        if self.precision != "fp32" and not quantized:
            dtype = precision_dtype(self.precision)
            for param in self.model.parameters():
                if id(param) not in trained and param.is_floating_point():
                    param.data = param.data.to(dtype)
        for param in self.model.parameters():
            if id(param) in trained:
                param.data = param.data.float()
        if not quantized:
            self.model.to(self.device)

    # ----- structure -------------------------------------------------------------------
    @property
    def slices(self) -> int:
        """Number of blocks L."""
        return len(self.blocks)

    def start_layer(self, stage: int) -> int:
        """The lowest layer index a stage-``stage`` forward must run (everything below it
        equals the base model when blocks are top-down)."""
        return min(self.blocks[stage - 1])

    def active_layers(self, depth: int) -> list[int]:
        """Layer indices whose LoRA is live in a model of this depth."""
        return sorted(i for block in self.blocks[:depth] for i in block)

    # ----- parameters --------------------------------------------------------------------
    def init_block(self, stage: int, seed: int) -> None:
        """Reset block ``stage`` to LoRA's initial state from ``seed``: A ~ Kaiming-uniform
        (peft's default), B = 0, so the block adds nothing until trained."""
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in sorted(self.block_params[stage - 1].items()):
                if ".lora_A." in name:
                    bound = 1.0 / math.sqrt(param.shape[1])  # kaiming_uniform_(a=sqrt(5))
                    param.copy_(torch.rand(param.shape, generator=gen) * 2 * bound - bound)
                else:
                    param.zero_()

    def zero_block(self, stage: int) -> None:
        """Make block ``stage`` add exactly nothing (A = B = 0)."""
        with torch.no_grad():
            for param in self.block_params[stage - 1].values():
                param.zero_()

    def init_head(self, seed: int) -> None:
        """Give the task head fresh weights from ``seed`` (normal(0, initializer_range) for
        linear layers, identity for norms), independent of how the checkpoint was loaded."""
        gen = torch.Generator().manual_seed(seed)
        std = float(getattr(self.model.config, "initializer_range", 0.02))
        with torch.no_grad():
            for name, param in sorted(self.head_params.items()):
                if param.ndim >= 2:
                    param.copy_(torch.randn(param.shape, generator=gen) * std)
                elif "norm" in name.lower() and name.endswith("weight"):
                    param.fill_(1.0)
                else:
                    param.zero_()

    def block_state(self, stage: int) -> State:
        """Return a CPU copy of block ``stage``'s LoRA tensors."""
        return {k: v.detach().cpu().clone() for k, v in self.block_params[stage - 1].items()}

    def head_state(self) -> State:
        """Return a CPU copy of the head's tensors."""
        return {k: v.detach().cpu().clone() for k, v in self.head_params.items()}

    def enable_checkpointing(self, layers: Sequence[int]) -> None:
        """Recompute these layers' activations in the backward pass instead of storing them
        (their dropout stays as it is: only the layer's own training flag is raised)."""
        from functools import partial

        from torch.utils.checkpoint import checkpoint

        for idx, module in enumerate(self._layers):
            layer: Any = module  # transformers' GradientCheckpointingLayer flags
            on = idx in layers
            layer.gradient_checkpointing = on
            if on:
                layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
                layer.training = True

    def to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A batch's tensors on the engine's device."""
        return {k: v.to(self.device) for k, v in batch.items()}

    def load_block(self, stage: int, state: Mapping[str, torch.Tensor]) -> None:
        """Copy tensors into block ``stage`` (names must match exactly)."""
        _load(self.block_params[stage - 1], state, f"block {stage}")

    def load_head(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy tensors into the head (names must match exactly)."""
        _load(self.head_params, state, "head")

    def assemble(
        self, blocks: Sequence[Mapping[str, torch.Tensor]], head: Mapping[str, torch.Tensor] | None
    ) -> None:
        """Set up the model of depth len(blocks): blocks 1..d loaded, the rest zero, head d."""
        for i in range(1, self.slices + 1):
            if i <= len(blocks):
                self.load_block(i, blocks[i - 1])
            else:
                self.zero_block(i)
        if head is not None:
            self.load_head(head)

    # ----- modes ---------------------------------------------------------------------------
    def set_stage(self, stage: int, checkpointing: bool | None = None) -> list[nn.Parameter]:
        """Make block ``stage``'s LoRA and the head the only trainable parameters, put them
        (and the head's parameter-free neighbours, e.g. classifier dropout) in train mode and
        everything else in eval mode; return the trainable parameters."""
        self.model.requires_grad_(False)
        self.model.eval()
        params = list(self.block_params[stage - 1].values()) + list(self.head_params.values())
        for param in params:
            param.requires_grad_(True)
        for idx in self.blocks[stage - 1]:
            self._layers[idx].train()
        base = getattr(self.model, "base_model_prefix", "")
        for name, child in self.model.named_children():
            if name != base:
                child.train()
        self._trainable = stage
        if checkpointing is not None:
            self._checkpointing = checkpointing
        if getattr(self, "_checkpointing", False):
            low = min(self.blocks[stage - 1])
            self.enable_checkpointing([i for i in range(len(self._layers)) if i >= low])
        return params

    def set_eval(self) -> None:
        """Freeze everything and switch dropout off."""
        self.model.requires_grad_(False)
        self.model.eval()
        self._trainable = None

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the exact base model (LoRA layers bypassed) inside the block."""
        from peft.tuners.lora import LoraLayer

        lora_layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        for layer in lora_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in lora_layers:
                layer.enable_adapters(True)
            stage = self._trainable
            self.set_eval()
            if stage is not None:
                self.set_stage(stage)

    # ----- forward -----------------------------------------------------------------------
    def forward(
        self,
        batch: Mapping[str, torch.Tensor],
        start_layer: int = 0,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the logits for a batch. With ``hidden`` (the input of layer
        ``start_layer``, e.g. from the activation cache) the layers below are skipped."""
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        with autocast(self.device, self.precision):
            if hidden is None:
                return cast(torch.Tensor, self.model(**inputs).logits).float()
            with self.layers_from(start_layer, hidden.to(self.device)):
                return cast(torch.Tensor, self.model(**inputs).logits).float()

    @contextmanager
    def layers_from(self, start_layer: int, hidden: torch.Tensor) -> Iterator[None]:
        """Temporarily run only layers ``start_layer``… with ``hidden`` fed into the first."""
        anatomy = self.backbone.anatomy
        parent_path, attr = anatomy.layers_path.rsplit(".", 1)
        parent = self.model.get_submodule(parent_path)
        full = self._layers
        first = full[start_layer]

        def feed(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        handle = first.register_forward_pre_hook(feed, with_kwargs=True)
        setattr(parent, attr, nn.ModuleList(list(full)[start_layer:]))
        try:
            yield
        finally:
            setattr(parent, attr, full)
            handle.remove()

    def hidden_states_at(
        self, batch: Mapping[str, torch.Tensor], layers: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """Return the base model's input to each of ``layers`` (LoRA bypassed, eval mode),
        stopping the forward pass at the highest one."""
        captured: dict[int, torch.Tensor] = {}
        top = max(layers)

        class _StopForwardError(Exception):
            pass

        def capture(idx: int) -> Any:
            def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                captured[idx] = (args[0] if args else kwargs["hidden_states"]).detach()
                if idx == top:
                    raise _StopForwardError

            return hook

        handles = [
            self._layers[i].register_forward_pre_hook(capture(i), with_kwargs=True)
            for i in set(layers)
        ]
        inputs = {k: v.to(self.device) for k, v in batch.items() if k != "labels"}
        try:
            with self.adapters_disabled(), torch.no_grad(), autocast(self.device, self.precision):
                self.model.eval()
                with suppress(_StopForwardError):
                    self.model(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        return captured


def _load(params: Mapping[str, nn.Parameter], state: Mapping[str, torch.Tensor], what: str) -> None:
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:3]
        extra = sorted(set(state) - set(params))[:3]
        raise ConfigError(
            f"{what} tensors do not fit this model (missing {missing}, unexpected {extra}); "
            "was the artifact trained with other LoRA settings or another model?"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])


def _uses_conv1d(model: nn.Module) -> bool:
    return any(type(m).__name__ == "Conv1D" for m in model.modules())
