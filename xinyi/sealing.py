"""Sealing answers so that only the asking institution can open them (NaCl SealedBox, X25519).

The asker makes a fresh key pair per query and puts the public half in the signed query; the
node seals its signed answer to it. A relay in between sees only ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from xinyi.errors import Refusal

ANSWER_KEY_BYTES = 32


@dataclass(frozen=True)
class AnswerKey:
    """A one-query X25519 key pair held by the asker."""

    private: PrivateKey

    @classmethod
    def generate(cls) -> "AnswerKey":
        return cls(PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return bytes(self.private.public_key)

    def open(self, sealed: bytes) -> bytes:
        try:
            return SealedBox(self.private).decrypt(sealed)
        except CryptoError:
            raise ValueError("sealed answer does not open with this query's key") from None


def seal_to(answer_key: bytes, plaintext: bytes) -> bytes:
    if len(answer_key) != ANSWER_KEY_BYTES:
        raise Refusal.invalid("query.answer_key", f"must be a {ANSWER_KEY_BYTES}-byte X25519 public key")
    return SealedBox(PublicKey(answer_key)).encrypt(plaintext)
