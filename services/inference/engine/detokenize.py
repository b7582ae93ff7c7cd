"""Turning generated token ids into text one token at a time, for streaming.

A token is not always a whole character (byte-level BPE splits UTF-8 sequences), and
some tokenizers change a token's text depending on the one before it. So each new piece
is the difference between decoding a short window with and without the new token, and
nothing is emitted while the window ends in an incomplete character.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._special = set(tokenizer.all_special_ids)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # the generated text so far, special tokens left out

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def add(self, token_id: int) -> str:
        """The text this token adds ("" while a character is incomplete, or for a special
        token, whose own text is ``token_text``)."""
        if token_id in self._special:
            return ""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix_offset : self._read_offset])
        after = decode(self._ids[self._prefix_offset :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        piece = after[len(before) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self.text += piece
        return piece

    def token_text(self, token_id: int) -> str:
        return self._tokenizer.convert_ids_to_tokens(token_id)
