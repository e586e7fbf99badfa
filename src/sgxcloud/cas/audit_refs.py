"""Opaque names of audit entries, for callers who must not learn chain positions.

An entry's sequence number is its position in the one chain every tenant
shares: handed to an enclave (or anyone posting to ``/v1/attest``), or to an
owner reading their entries, two of them count every other tenant's
attestations and policy changes in between.  Outside the operator's tools an
entry is named by its *ref* instead: the sequence number encrypted under a
key derived from the master key and the deployment id, one AES block
(8 bytes of label, 8 of number), 22 characters of base64url.  Only the CAS
(and an operator holding the master key) can turn a ref back into a
position; anyone else sees 128 random-looking bits, the same for the same
entry every time.  Refs made under a retired master key still resolve while
that key is configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sgxcloud.cas import secrets

_LABEL = b"sgxcloud-cas audit entry ref v1\0"
_MAGIC = b"sgxaudit"
REF_LENGTH = 22
REF_PATTERN = "^[A-Za-z0-9_-]{22}$"


class EntryRefs:
    """Turns sequence numbers into refs and back, for one deployment's keys."""

    def __init__(self, keyring: secrets.Keyring, deployment: str = "") -> None:
        label = _LABEL + deployment.encode() + b"\0"
        self._keys = [
            hmac.new(k.key, label, hashlib.sha256).digest()
            for k in (keyring.current, *keyring.retired)
        ]

    def ref(self, seq: int) -> str:
        """The ref of entry ``seq`` (made under the current master key)."""
        # One block of distinct plaintexts under a pseudorandom permutation:
        # ECB is exactly that here (no second block, no pattern to show).
        encryptor = Cipher(algorithms.AES(self._keys[0]), modes.ECB()).encryptor()  # noqa: S305
        block = encryptor.update(_MAGIC + struct.pack(">Q", seq)) + encryptor.finalize()
        return base64.urlsafe_b64encode(block).rstrip(b"=").decode()

    def seq(self, ref: str) -> int | None:
        """The entry a ref names, or None for anything this deployment did not make."""
        if len(ref) != REF_LENGTH:
            return None
        try:
            block = base64.urlsafe_b64decode(ref + "==")
        except (binascii.Error, ValueError):
            return None
        if len(block) != 16:
            return None
        for key in self._keys:
            decryptor = Cipher(algorithms.AES(key), modes.ECB()).decryptor()  # noqa: S305
            plain = decryptor.update(block) + decryptor.finalize()
            if hmac.compare_digest(plain[:8], _MAGIC):
                (seq,) = struct.unpack(">Q", plain[8:])
                return seq
        return None


_CHECKPOINT_LABEL = b"sgxcloud-cas audit checkpoint v1\0"


class CheckpointTags:
    """HMAC tags of verified chain positions kept in the database.

    Whoever can write the database but holds no master key cannot make a
    position look verified; a tag under a retired key still checks while
    that key is configured.
    """

    def __init__(self, keyring: secrets.Keyring, deployment: str = "") -> None:
        label = _CHECKPOINT_LABEL + deployment.encode() + b"\0"
        self._keys = [
            hmac.new(k.key, label, hashlib.sha256).digest()
            for k in (keyring.current, *keyring.retired)
        ]

    def tag(self, seq: int, entry_hash: str) -> str:
        return self._tag(self._keys[0], seq, entry_hash)

    def check(self, seq: int, entry_hash: str, tag: str) -> bool:
        return any(hmac.compare_digest(tag, self._tag(key, seq, entry_hash)) for key in self._keys)

    @staticmethod
    def _tag(key: bytes, seq: int, entry_hash: str) -> str:
        return hmac.new(key, f"{seq}:{entry_hash}".encode(), hashlib.sha256).hexdigest()
