"""Sealing answers so that only the asking institution can open them (NaCl SealedBox, X25519).

The asker makes a fresh key pair per query and puts the public half in the signed query; the
node seals its signed answer to it. A relay in between sees only ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError
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


def seal_to(answer_key: bytes, plaintext: bytes, field: str = "query.answer_key") -> bytes:
    if len(answer_key) != ANSWER_KEY_BYTES:
        raise Refusal.invalid(field, f"must be a {ANSWER_KEY_BYTES}-byte X25519 public key")
    try:
        return SealedBox(PublicKey(answer_key)).encrypt(plaintext)
    except NaclRuntimeError:  # libsodium refuses a low-order point: no answer could ever be opened
        raise Refusal.invalid(field, "is not a usable X25519 public key; make a fresh key pair") from None


# --- node to node: sealed to a node's signing key, converted to X25519 -------------------------------
# A node's Ed25519 signing key (certified by the root, listed in the signed directory) doubles,
# through the standard Ed25519 -> X25519 conversion, as the key other nodes seal features to.
def seal_to_node(node_signing_public_key: bytes, plaintext: bytes) -> bytes:
    from nacl.signing import VerifyKey

    return SealedBox(VerifyKey(node_signing_public_key).to_curve25519_public_key()).encrypt(plaintext)


def open_as_node(identity, sealed: bytes) -> bytes:
    """Open what another node sealed to this node's key (identity: xinyi.crypto.pki.Identity)."""
    from nacl.signing import SigningKey

    seed = identity.signing_key.private_bytes_raw()
    try:
        return SealedBox(SigningKey(seed).to_curve25519_private_key()).decrypt(sealed)
    except CryptoError:
        raise ValueError("sealed bundle does not open with this node's key") from None
