"""The id layout of the joint fMRI + text sequence, derived from the two tokenizers.

* ``0 .. text_size - 1``: the text tokenizer's ids (the backbone's embeddings and LM head);
* ``text_size + c`` for code ``c`` of the fMRI tokenizer (``0 <= c < n_codes``);
* ``text_size + n_codes + {0, 1, 2}``: ``<fmri>``, ``</fmri>`` and the time-step delimiter.

Every id is derived from the two tokenizers, never written as a literal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmrilm.errors import FmrilmError
from fmrilm.tokenizer.codes import complete_steps


@dataclass(frozen=True)
class FmriVocab:
    """The id layout of the joint sequence, derived from the two tokenizers."""

    text_size: int
    n_codes: int

    @classmethod
    def from_tokenizers(cls, text_tokenizer, fmri_tokenizer) -> FmriVocab:
        return cls(text_size=len(text_tokenizer), n_codes=fmri_tokenizer.config.codebook_size)

    @property
    def start(self) -> int:
        return self.text_size + self.n_codes

    @property
    def end(self) -> int:
        return self.text_size + self.n_codes + 1

    @property
    def step(self) -> int:
        return self.text_size + self.n_codes + 2

    @property
    def n_new(self) -> int:
        return self.n_codes + 3

    @property
    def size(self) -> int:
        return self.text_size + self.n_new

    def codes_to_ids(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_codes):
            raise FmrilmError(
                f"fMRI codes must lie in [0, {self.n_codes}), got {codes.min()}..{codes.max()}"
            )
        return codes + self.text_size

    def span(self, codes: np.ndarray) -> list[int]:
        """The token ids of one window's codes (ROIs, patches), time step by time step."""
        codes = np.asarray(codes)
        if codes.ndim != 2:
            raise FmrilmError(
                f"a window's codes must have shape (ROIs, patches), got {codes.shape}"
            )
        ids = [self.start]
        # a short last window: stop at the first missing patch
        for p in range(complete_steps(codes)):
            ids.append(self.step)
            ids.extend(self.codes_to_ids(codes[:, p]).tolist())
        ids.append(self.end)
        return ids
