"""The shared tail of every benchmark: peak memory, library versions, and the JSON result.

A benchmark script imports this module by name (``benchmarks/`` is the script's folder, so it is
on ``sys.path``)::

    from _common import peak_rss_mb, write_result

    result = {...}
    return write_result(args.json, result)  # adds peak RSS + versions, prints, writes
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from importlib import metadata
from typing import Any

from fmrilm.io import write_json

# reported when the benchmark has imported them (never imported here)
LIBRARIES = (
    "fmrilm",
    "numpy",
    "scipy",
    "pandas",
    "sklearn",
    "networkx",
    "nilearn",
    "torch",
    "transformers",
    "peft",
)
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size so far, in MiB, to 0.1: of this process, or with ``children`` of
    its largest waited-for child process (e.g. a joblib worker or a measured subprocess)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    kib = resource.getrusage(who).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return round(kib / 1024, 1)  # ru_maxrss is KiB on Linux, bytes on macOS


def versions() -> dict[str, str]:
    """Python, platform, CPU count and the versions of the libraries this run has imported."""
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }
    for name in LIBRARIES:
        if name in sys.modules:
            try:
                out[name] = metadata.version(_DISTRIBUTIONS.get(name, name))
            except metadata.PackageNotFoundError:
                out[name] = str(getattr(sys.modules[name], "__version__", "unknown"))
    return out


def write_result(path: str | os.PathLike | None, result: dict[str, Any]) -> dict[str, Any]:
    """Finish a benchmark: ``result`` plus ``peak_rss_mb`` (this process, at the end) and
    ``versions``, printed as JSON and, when ``path`` is given, written there atomically
    (:func:`fmrilm.io.write_json`). Returns the completed result."""
    result = {**result, "peak_rss_mb": peak_rss_mb(), "versions": versions()}
    print(json.dumps(result, indent=2, default=str))
    if path is not None:
        write_json(path, result)
    return result


__all__ = ["peak_rss_mb", "versions", "write_result"]
