"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmrilm.errors import FmrilmError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    The temporary file lives in the same folder so the final ``os.replace`` is atomic on
    POSIX file systems. On any exception the temporary file is removed and ``path`` is
    untouched (a full disk mid-write leaves the previous version intact).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str | os.PathLike, missing: str | None = None) -> Any:
    """Parse a JSON file; a missing or corrupt file is a one-line :class:`FmrilmError`.

    ``missing`` is the message for an absent file (default: "<path> does not exist").
    """
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FmrilmError(missing or f"{path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise FmrilmError(f"{path}: corrupt JSON ({exc})") from None


def read_meta(
    path: str | os.PathLike,
    format: str,
    version: Any = None,
    *,
    version_key: str = "format_version",
    missing: str | None = None,
    wrong_format: str = "{path}: not an fmrilm {format} file (format={found!r})",
    wrong_version: str = "{path}: format version {found} differs from this fmrilm's {expected}",
) -> dict[str, Any]:
    """The one format/version guard of every versioned JSON file (cohort, corpus, norms,
    tokenizer, model): the parsed file, or a one-line :class:`FmrilmError`.

    ``format``: the expected value of the file's ``"format"`` key; ``version``: the expected
    value of ``version_key`` (None: not checked). The messages are templates with ``{path}``,
    ``{format}``, ``{found}`` and ``{expected}``, so each file type keeps its own advice.
    """
    meta = read_json(path, missing=missing)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != format:
        raise FmrilmError(wrong_format.format(path=path, format=format, found=found))
    if version is not None and meta.get(version_key) != version:
        raise FmrilmError(
            wrong_version.format(
                path=path, format=format, found=meta.get(version_key), expected=version
            )
        )
    return meta


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_default(obj: Any) -> Any:

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_ids(ids) -> str:
    """A short, order-free fingerprint of a set of ids (e.g. a training split's scan ids)."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]
