"""fmrilm: an open foundation model bridging functional MRI and language."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fmrilm")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

from fmrilm.errors import FmrilmError

__all__ = ["FmrilmError", "__version__"]
