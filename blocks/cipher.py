"""ContextCipher: Fernet encryption at rest for conversation contexts, keyed from a Prefect Secret block.

What an encrypted context protects, and what it leaks (by design, so that search keeps working):

- Encrypted: message content and tool arguments (context_messages.sealed), and each chunk's text (the
  Fernet token travels in the chunk's metadata as "sealed"; search helpers decrypt it for the caller).
- Leaked, as plaintext: chunks.content holds the chunk's *bag of english lexemes* (stemmed, stop words
  removed, sorted, with repetitions), so that the full-text index and BM25 statistics stay correct; that
  reveals which words were said and how often, not their order. The BM25 postings (chunk_postings) hold the
  same lexemes with their counts; a deleted context's entries stay there, never returned by a search, until the
  hourly compact-keyword-index run rebuilds the tenant's postings (a process's cache of postings rows keeps
  them at most 10 minutes longer, tasks/postings.py CACHE_TTL_S). The embeddings are computed from the
  plaintext and reveal its meaning to anyone who can compare vectors (embedding inversion recovers much of
  a short text). Roles, speaker and tool names, message sizes and times, user/agent/session ids, the
  context's metadata and chunk boundaries are plaintext too.
- Chunk content hashes are HMAC-SHA256 under a key derived from the Fernet key, not plain sha256, so
  nobody can confirm a guessed text by hashing it, and the embedding cache is shared only by chunks
  encrypted under the same key.

Keys: a Fernet key (urlsafe base64 of 32 bytes), or several separated by commas for rotation (the first
encrypts, all decrypt: cryptography's MultiFernet).
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from blocks.errors import ConfigError

__all__ = ["ContextCipher", "load_cipher", "aload_cipher", "register_cipher", "DEFAULT_KEY_NAME"]

DEFAULT_KEY_NAME = "devmesh-context-key"
_cache: dict[str, "ContextCipher"] = {}
_lock = threading.Lock()


class ContextCipher:
    """Encrypts and decrypts context text with Fernet; fingerprints text with a derived HMAC key.

    Args:
        key: a Fernet key (str or bytes), or comma-separated keys, newest first.

    Example:
        cipher = ContextCipher(ContextCipher.generate_key())
        assert cipher.decrypt(cipher.encrypt("hello")) == "hello"
    """

    def __init__(self, key: str | bytes) -> None:
        raw = key.decode() if isinstance(key, bytes) else str(key)
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        if not keys:
            raise ConfigError("the context encryption key is empty")
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"not a Fernet key (expected urlsafe base64 of 32 bytes): {exc}") from None
        # Fingerprints must not depend on which key is newest, or rotation would break the embedding cache.
        self._mac_key = hashlib.sha256(b"devmesh-context-fingerprint\x00" + keys[-1].encode()).digest()

    @staticmethod
    def generate_key() -> str:
        """A new random Fernet key, to store in a Secret block."""
        return Fernet.generate_key().decode()

    @classmethod
    def from_secret(cls, name: str) -> "ContextCipher":
        """The cipher whose key is the value of Prefect Secret block `name` (sync contexts only)."""
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(name).get()
        except ValueError as exc:
            raise ConfigError(f"no Secret block {name!r} holding the context encryption key: {exc}") from exc
        return cls(value)

    @classmethod
    async def afrom_secret(cls, name: str) -> "ContextCipher":
        """`from_secret` for code running inside an event loop."""
        from prefect.blocks.system import Secret

        try:
            block = await Secret.aload(name)
        except ValueError as exc:
            raise ConfigError(f"no Secret block {name!r} holding the context encryption key: {exc}") from exc
        return cls(block.get())

    def encrypt(self, text: str) -> bytes:
        """Fernet token of the UTF-8 text."""
        return self._fernet.encrypt(text.encode("utf-8"))

    def decrypt(self, token: bytes | str) -> str:
        """The text of a token; ConfigError when no key of this cipher made it."""
        try:
            return self._fernet.decrypt(token.encode() if isinstance(token, str) else bytes(token)).decode("utf-8")
        except InvalidToken:
            raise ConfigError("cannot decrypt context data: wrong key, or the data was altered") from None

    def fingerprint(self, text: str) -> str:
        """HMAC-SHA256 of the text (hex): a content hash that only holders of the key can compute."""
        return hmac.new(self._mac_key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def register_cipher(name: str, cipher: ContextCipher) -> None:
    """Make `cipher` what load_cipher(name) returns in this process (tests, keys from elsewhere)."""
    with _lock:
        _cache[name] = cipher


def load_cipher(name: str) -> ContextCipher:
    """The cipher registered under `name`, else loaded once from the Secret block of that name."""
    with _lock:
        cipher = _cache.get(name)
    if cipher is None:
        cipher = ContextCipher.from_secret(name)
        register_cipher(name, cipher)
    return cipher


async def aload_cipher(name: str) -> ContextCipher:
    """`load_cipher` for code running inside an event loop."""
    with _lock:
        cipher = _cache.get(name)
    if cipher is None:
        cipher = await ContextCipher.afrom_secret(name)
        register_cipher(name, cipher)
    return cipher
