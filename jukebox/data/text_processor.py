"""Character-level lyric vocabulary of the lyric priors.

Token 0 is ``<unk>`` (textises to the empty string); the characters below are numbered from 1.
The v2 vocabulary (5b/5b_lyrics, 80 entries) has ``+``; the v3 one (1b_lyrics, 79 entries) does not.
"""
from __future__ import annotations

import warnings

from unidecode import unidecode

_LETTERS_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
V2_CHARS = _LETTERS_DIGITS + ".,:;!?-+'\"()[] \t\n"
V3_CHARS = _LETTERS_DIGITS + ".,:;!?-'\"()[] \t\n"
UNK = "<unk>"


class TextProcessor:
    """Cleans lyrics to the model's character set and maps characters <-> token ids."""

    def __init__(self, v3: bool = False) -> None:
        self.v3 = v3
        chars = V3_CHARS if v3 else V2_CHARS
        self.vocab: dict[str, int] = {UNK: 0, **{c: i + 1 for i, c in enumerate(chars)}}
        self.n_vocab = len(self.vocab)
        self._chars = [""] + list(chars)  # token id -> text; <unk> becomes ''
        self._reported: set[str] = set()

    def clean(self, text: str) -> str:
        """Transliterate to ASCII, turn every backslash into a newline, drop characters outside the vocab.

        Characters that are dropped (wholly or partly) are named in one warning; each only the first time.
        """
        dropped = sorted(c for c in set(text) - self._reported if not self._kept(c))
        if dropped:
            self._reported.update(dropped)
            warnings.warn(f"lyrics characters outside the {'v3' if self.v3 else 'v2'} vocabulary are dropped: "
                          f"{', '.join(map(repr, dropped))}", stacklevel=2)
        text = unidecode(text).replace("\\", "\n")
        return "".join(c for c in text if c in self.vocab)

    def _kept(self, char: str) -> bool:
        ascii_text = unidecode(char).replace("\\", "\n")
        return bool(ascii_text) and all(c in self.vocab for c in ascii_text)

    def tokenise(self, text: str) -> list[int]:
        """Token ids of a cleaned string (one per character)."""
        try:
            return [self.vocab[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in the {'v3' if self.v3 else 'v2'} lyric vocabulary; "
                "pass the text through TextProcessor.clean() first"
            ) from None

    def characterise(self, tokens) -> list[str]:
        """One string per token id (``''`` for id 0)."""
        out = []
        for token in tokens:
            token = int(token)
            if not 0 <= token < self.n_vocab:
                raise ValueError(f"lyric token {token} is outside the vocabulary [0, {self.n_vocab})")
            out.append(self._chars[token])
        return out

    def textise(self, tokens) -> str:
        """The text of a sequence of token ids."""
        return "".join(self.characterise(tokens))
