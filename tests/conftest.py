"""Test set-up: no network, no hub downloads, deterministic threads."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    # local IPC (joblib/loky, AF_UNIX) and loopback stay allowed; everything else is a bug
    if self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    host = address[0] if isinstance(address, tuple) else address
    if host in ("127.0.0.1", "localhost", "::1"):
        return _real_connect(self, address)
    raise RuntimeError(f"tests must not use the network (tried to connect to {address!r})")


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    socket.socket.connect = _guarded_connect
    yield
    socket.socket.connect = _real_connect
