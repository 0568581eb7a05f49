"""Typed configuration: dataclasses per stage, loaded from YAML and ``key=value`` overrides.

Every stage's settings are one flat dataclass (``TokenizerConfig`` for stage 1). A config is
built from its defaults, then a YAML file, then command-line overrides, in that order, and
validated once at the end. Unknown keys and values of the wrong type are one-line errors that
name the key and where it came from (the YAML file or the command line).

>>> cfg = load_config(TokenizerConfig, overrides=["steps=50", "contrastive=false"])
>>> cfg.steps, cfg.contrastive
(50, False)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from fmrilm.errors import FmrilmError
from fmrilm.io import write_text

C = TypeVar("C")


@dataclass
class TokenizerConfig:
    """Stage 1: the neural tokenizer (see docs/tokenizer.md for what each setting does)."""

    # -- input: every scan is resampled to `tr`, scaled per ROI, cut into windows of
    #    `window` frames; a token is one ROI x `patch` consecutive frames
    tr: float = 2.0
    window: int = 48
    patch: int = 8
    scaling: Literal["robust", "zscore"] = "robust"
    # -- atlas-free ROI embedding: Fourier features of the MNI centroid + network label
    fourier_features: int = 32
    fourier_sigma: float = 1.0
    coord_jitter_mm: float = 3.0
    roi_dropout: float = 0.2
    # -- transformer encoder / decoder
    d_model: int = 64
    n_heads: int = 4
    enc_layers: int = 2
    dec_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.0
    # -- vector quantizer (cosine codebook, EMA updates, dead-code restart)
    codebook_size: int = 512
    code_dim: int = 32
    ema_decay: float = 0.95
    commitment: float = 0.25
    dead_code_threshold: float = 1.0
    # -- language alignment
    contrastive: bool = True
    contrastive_weight: float = 0.2
    text_encoder: Literal["minilm", "llm"] = "minilm"
    adversarial: bool = True
    adversarial_weight: float = 0.1
    adversarial_noise: float = 1.0
    adversarial_mode: Literal["nonsaturating", "grl"] = "nonsaturating"
    llm: str = "smollm2-135m-instruct"
    # -- optimisation
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    grad_clip: float = 1.0
    # bf16 autocast measured slower for this small model on AVX512-BF16 CPUs (63 vs 110 win/s)
    bf16: Literal["auto", "on", "off"] = "off"
    seed: int = 0
    # -- bookkeeping
    log_every: int = 50
    ckpt_every: int = 250

    def validate(self) -> None:
        _positive(self, "tr", "fourier_sigma", "lr", "grad_clip")
        _at_least(
            self,
            1,
            "window",
            "patch",
            "fourier_features",
            "d_model",
            "n_heads",
            "enc_layers",
            "dec_layers",
            "ff_mult",
            "codebook_size",
            "code_dim",
            "steps",
            "batch_size",
            "log_every",
            "ckpt_every",
        )
        if self.codebook_size < 2:
            raise FmrilmError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.window % self.patch:
            raise FmrilmError(
                f"window ({self.window} frames) must be a multiple of patch ({self.patch} frames)"
            )
        if self.d_model % self.n_heads:
            raise FmrilmError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for name in ("roi_dropout", "dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise FmrilmError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.ema_decay < 1:
            raise FmrilmError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        for name in (
            "commitment",
            "contrastive_weight",
            "adversarial_weight",
            "adversarial_noise",
            "coord_jitter_mm",
        ):
            if getattr(self, name) < 0:
                raise FmrilmError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def n_patches(self) -> int:
        return self.window // self.patch

    @classmethod
    def tiny(cls, **overrides: Any) -> TokenizerConfig:
        """A model small enough to train in well under a second a step (tests, smoke runs).

        Alignment is off unless switched on; ``llm="tiny"`` is the random test Llama.
        """
        base: dict[str, Any] = dict(
            d_model=16,
            n_heads=2,
            enc_layers=1,
            dec_layers=1,
            fourier_features=8,
            codebook_size=16,
            code_dim=8,
            window=16,
            patch=4,
            batch_size=4,
            steps=4,
            llm="tiny",
            contrastive=False,
            adversarial=False,
        )
        base.update(overrides)
        cfg = cls(**base)
        cfg.validate()
        return cfg


@dataclass
class _LoopConfig:
    """The optimisation settings shared by the LLM stages (2 and 3); see their defaults."""

    steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-3  # LoRA adapters
    new_params_lr: float = 5e-3  # fMRI embeddings, fMRI head (and projector)
    weight_decay: float = 0.0
    warmup: int = 20
    grad_clip: float = 1.0
    bf16: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 50


@dataclass
class PretrainConfig(_LoopConfig):
    """Stage 2: joint fMRI-language modelling with LoRA (``fmrilm pretrain``)."""

    llm: str = "smollm2-135m-instruct"
    # LoRA on the backbone's attention and MLP projections (targets from the backbone spec)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # sequences: each fMRI span holds `span_patches` time steps of one window
    span_patches: int = 3
    max_len: int = 768
    # how fMRI enters the LLM: the code tokens' embeddings (discrete) or, as an ablation, a
    # projector of the tokenizer's continuous encoder outputs at the same positions
    fmri_input: Literal["discrete", "continuous"] = "discrete"
    # objectives: a micro-batch of each kind per step, losses weighted (0 switches one off)
    temporal_weight: float = 1.0
    description_weight: float = 1.0
    replay_weight: float = 0.5

    def validate(self) -> None:
        _positive(self, "lr", "new_params_lr", "grad_clip")
        _at_least(
            self, 1, "lora_r", "lora_alpha", "span_patches", "max_len", "steps", "batch_size",
            "grad_accum", "log_every", "ckpt_every",
        )  # fmt: skip
        weights = ("temporal_weight", "description_weight", "replay_weight")
        if any(getattr(self, w) < 0 for w in weights) or not any(getattr(self, w) for w in weights):
            raise FmrilmError(f"objective weights {weights} must be >= 0 and not all 0")
        if not 0 <= self.lora_dropout < 1:
            raise FmrilmError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class InstructConfig(_LoopConfig):
    """Stage 3: multi-task instruction tuning of a stage-2 model (``fmrilm instruct``).

    The stage-2 LoRA adapters and fMRI tables continue training on questions about scans;
    the backbone stays frozen.
    """

    # tasks: names of fmrilm.tasks.registry (or any phenotype column); empty = all applicable
    tasks: list[str] = field(default_factory=list)
    # never trained on: kept for zero-shot evaluation
    held_out_tasks: list[str] = field(default_factory=list)
    # each scan enters as `span_patches` time steps of one window (random in training)
    span_patches: int = 3
    max_len: int = 1536
    # prompt mix
    multi_question: float = 0.2  # share of prompts that ask several questions at once
    context_prob: float = 0.3  # share with a dataset/acquisition context line
    # share with the scan's descriptor summary from the corpus (needs --corpus); the rest are
    # fMRI tokens alone, so the model answers both ways
    descriptor_prob: float = 0.5
    fewshot_prob: float = 0.2  # share with in-context exemplars from other training subjects
    fewshot_k: int = 1  # exemplars per class in those prompts
    # objectives (weight 0 switches one off); descriptions are one of the tasks
    instruct_weight: float = 1.0
    temporal_weight: float = 0.0
    description_weight: float = 0.0
    replay_weight: float = 0.2
    # optimisation (other defaults as in stage 2)
    steps: int = 300
    lr: float = 5e-4
    new_params_lr: float = 1e-3

    def validate(self) -> None:
        _positive(self, "lr", "new_params_lr", "grad_clip", "instruct_weight")
        _at_least(
            self, 1, "span_patches", "max_len", "steps", "batch_size", "grad_accum",
            "log_every", "ckpt_every", "fewshot_k",
        )  # fmt: skip
        for name in ("multi_question", "context_prob", "descriptor_prob", "fewshot_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise FmrilmError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("temporal_weight", "description_weight", "replay_weight"):
            if getattr(self, name) < 0:
                raise FmrilmError(f"{name} must be >= 0, got {getattr(self, name)}")
        both = sorted(set(self.tasks) & set(self.held_out_tasks))
        if both:
            raise FmrilmError(f"task {both[0]!r} is both trained (tasks) and held out")


# -- loading -------------------------------------------------------------------------------


def load_config(
    cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> C:
    """Defaults <- YAML file <- ``key=value`` overrides, validated."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FmrilmError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise FmrilmError(f"{path}: not valid YAML ({_first_line(exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise FmrilmError(
                f"{path}: expected a mapping of settings, got {type(loaded).__name__}"
            )
        values.update(_check_keys(cls, loaded, str(path)))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FmrilmError(f"override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        values.update(_check_keys(cls, {key.strip(): value}, "the command line"))
    return from_dict(cls, values, where=str(path) if path else "the command line")


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    """Build and validate a config from plain values (e.g. a saved ``config.json``)."""
    values = _check_keys(cls, values, where)
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], k, where) for k, v in values.items()}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _check_keys(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise FmrilmError(f"{where}: unknown {cls.__name__} setting {unknown[0]!r}{extra}")
    return dict(values)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = FmrilmError(f"{where}: {key} = {value!r} is not a valid {_type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except FmrilmError:
                pass
        raise bad
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, bool) and "on" in args:  # YAML reads on/off as booleans
            return "on" if value else "off"
        raise FmrilmError(f"{where}: {key} must be one of {list(args)}, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(v, args[0], key, where) for v in value] if args else list(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise bad
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise bad
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        if not getattr(cfg, n) > 0:
            raise FmrilmError(f"{n} must be > 0, got {getattr(cfg, n)}")


def _at_least(cfg: Any, low: int, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) < low:
            raise FmrilmError(f"{n} must be at least {low}, got {getattr(cfg, n)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
