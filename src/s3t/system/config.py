"""The whole configuration of an S3T system, stored in its workspace.

One frozen dataclass per concern (model, LoRA, training, layout); :class:`S3TConfig` holds
them. ``config_hash`` covers everything that shapes trained tensors, so an artifact is
only ever reused by a system that would have trained it identically.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from s3t.core.sequences import DEFAULT_T, METHODS, check_budget
from s3t.engine.settings import Family, LoraSettings, ModelSpec, TrainSettings, option
from s3t.errors import ConfigError, SequenceError


@dataclass(frozen=True)
class LayoutSettings:
    """How data is split and which sequences are trained."""

    shards: int = option(1, "Number of shards m.")
    slices: int = option(3, "Slices per shard L (and LoRA blocks per model).")
    budget: int = option(3, "Sequences per shard B (B = L saturates the deletion rate).")
    method: str = option("cyclic", "Sequence selection: cyclic, bms, random or full.")
    bms_t: float = option(DEFAULT_T, "BMS's score exponent t.")
    stratify: bool = option(True, "Spread every class evenly over shards and slices.")
    seed: int = option(0, "Seed of partitioning, sequence selection and training.")

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ConfigError(f"shards must be >= 1, got {self.shards!r}")
        if self.slices < 1:
            raise ConfigError(f"slices must be >= 1, got {self.slices!r}")
        if self.budget < 1:
            raise ConfigError(f"budget must be >= 1, got {self.budget!r}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.bms_t <= 0:
            raise ConfigError(f"bms_t must be > 0, got {self.bms_t!r}")
        try:
            check_budget(self.slices, self.budget)
        except SequenceError as exc:
            raise ConfigError(str(exc)) from None
        if (
            self.method == "full"
            and self.slices <= 9
            and self.budget != math.factorial(self.slices)
        ):
            raise ConfigError(
                f"method 'full' trains all {math.factorial(self.slices)} sequences of "
                f"{self.slices} slices; got budget {self.budget}"
            )


@dataclass(frozen=True)
class S3TConfig:
    """Everything that defines a trained S3T system."""

    model: ModelSpec
    layout: LayoutSettings = field(default_factory=LayoutSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["model"]["family"] = self.model.family.value if self.model.family else None
        if self.lora.targets is not None:
            data["lora"]["targets"] = list(self.lora.targets)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S3TConfig:
        """Build a config from :meth:`to_dict` output or a user's config file (unknown keys
        are an error naming them)."""
        model = dict(data.get("model", {}))
        if "name_or_path" not in model:
            raise ConfigError("config needs model.name_or_path")
        if model.get("family") is not None:
            try:
                model["family"] = Family(model["family"])
            except ValueError:
                raise ConfigError(
                    f"model.family must be one of {[f.value for f in Family]}, got {model['family']!r}"
                ) from None
        lora = dict(data.get("lora", {}))
        if lora.get("targets") is not None:
            lora["targets"] = tuple(lora["targets"])
        return cls(
            model=_build(ModelSpec, model, "model"),
            layout=_build(LayoutSettings, data.get("layout", {}), "layout"),
            lora=_build(LoraSettings, lora, "lora"),
            train=_build(TrainSettings, data.get("train", {}), "train"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> S3TConfig:
        """Read a TOML or JSON config file."""
        file = Path(path)
        try:
            text = file.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        try:
            data = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {file} is not valid {file.suffix[1:]}: {exc}") from None
        return cls.from_dict(data)

    def config_hash(self) -> str:
        """Hash of everything that shapes trained tensors (not the layout's shard count:
        a stage's data and seed already pin that down)."""
        data = self.to_dict()
        for section, name in _LATER_FIELDS:  # at their defaults: the hashes of s3t 0.1
            if data[section].get(name) == _LATER_DEFAULTS[(section, name)]:
                data[section].pop(name, None)
        data["train"].pop("gradient_checkpointing", None)  # memory, not results (bit-identical)
        shaping = {
            "model": data["model"],
            "lora": data["lora"],
            "train": data["train"],
            "seed": self.layout.seed,
            "slices": self.layout.slices,
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **sections: dict[str, Any]) -> S3TConfig:
        """Return a copy with some fields of some sections replaced."""
        updated = {
            name: replace(getattr(self, name), **values)
            for name, values in sections.items()
            if values
        }
        return replace(self, **updated)


#: settings added after s3t 0.1, left out of the hash at their defaults so that existing
#: workspaces keep their config hash (and reuse their stages)
_LATER_DEFAULTS: dict[tuple[str, str], Any] = {
    ("model", "quantize"): None,
    ("train", "precision"): "fp32",
    ("train", "accumulation_steps"): 1,
}
_LATER_FIELDS = tuple(_LATER_DEFAULTS)


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section} setting(s) {unknown}; known: {sorted(known)}")
    return kind(**values)
