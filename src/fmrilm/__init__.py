"""fmrilm: an open foundation model bridging functional MRI and language.

The public API::

    from fmrilm import Cohort, Corpus, FMRITokenizer, FMRILM

``Cohort`` (the on-disk cohort store) and ``Corpus`` (the descriptive corpus) need only the
scientific Python stack; ``FMRITokenizer`` (stage 1) and ``FMRILM`` (stages 2-3) need torch
and the LLM stack (the ``llm`` extra). The names are resolved on first use (PEP 562), so
``import fmrilm`` and the command line start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fmrilm._version import __version__
from fmrilm.errors import FmrilmError

if TYPE_CHECKING:
    from fmrilm.corpus.build import Corpus  # noqa: F401 (for type checkers)
    from fmrilm.data.atlas import Atlas  # noqa: F401 (for type checkers)
    from fmrilm.data.cohort import Cohort  # noqa: F401 (for type checkers)
    from fmrilm.data.scan import Scan  # noqa: F401 (for type checkers)
    from fmrilm.model.fusion import FMRILM  # noqa: F401 (for type checkers)
    from fmrilm.tokenizer.neural_tokenizer import FMRITokenizer  # noqa: F401 (for type checkers)

# public name -> module that defines it
_PUBLIC = {
    "Atlas": "fmrilm.data.atlas",
    "Cohort": "fmrilm.data.cohort",
    "Corpus": "fmrilm.corpus.build",
    "FMRILM": "fmrilm.model.fusion",
    "FMRITokenizer": "fmrilm.tokenizer.neural_tokenizer",
    "Scan": "fmrilm.data.scan",
}

__all__ = ["FmrilmError", "__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'fmrilm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
