"""The installed fmrilm version (the lowest layer: every module may record it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fmrilm")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
