"""The audit log's HMAC keys: the signing key, its id, and the keys ``verify`` accepts.

Without ``RESILIENCE_AUDIT_HMAC_KEY`` the key is derived from the app's
``SECRET_KEY`` with HKDF-SHA-256 (RFC 5869, empty salt, the fixed ``INFO``
string), so a production app is keyed by default: whoever can write to the
audit table but does not hold the key cannot recompute a chain. Each entry and
checkpoint records the id of the key that signed it, so a rotated key keeps
verifying old entries as long as it is listed among the previous keys
(``RESILIENCE_AUDIT_PREVIOUS_HMAC_KEYS``, or Flask's ``SECRET_KEY_FALLBACKS``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flask import Flask

from .. import config as cfg

logger = logging.getLogger("flask_resilience.audit")

INFO = b"flask-resilience audit log hmac key v1"
_KEY_ID_LABEL = b"flask-resilience audit key id"


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """HKDF-SHA-256 (RFC 5869): extract, then expand to ``length`` bytes."""
    prk = hmac.new(salt or b"\0" * 32, secret, hashlib.sha256).digest()
    output, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
    return output[:length]


def derive_key(secret_key: str | bytes) -> bytes:
    """The audit key derived from a Flask ``SECRET_KEY``."""
    secret = secret_key.encode() if isinstance(secret_key, str) else secret_key
    return hkdf_sha256(secret, INFO)


def key_id(key: bytes) -> str:
    """A short public name of ``key`` (16 hex digits of an HMAC, revealing nothing of the key)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class Keyring:
    """The key new entries are signed with (None: unkeyed SHA-256) and every key
    ``verify`` accepts, by id."""

    signing: bytes | None
    accepted: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def signing_id(self) -> str | None:
        return key_id(self.signing) if self.signing else None

    @property
    def keyed(self) -> bool:
        return bool(self.accepted)

    def key_for(self, kid: str | None) -> bytes | None:
        """The key with id ``kid``; None for unkeyed entries; KeyError for an unknown id."""
        if kid is None:
            return None
        return self.accepted[kid]

    @classmethod
    def of(cls, signing: bytes | None, previous: Iterable[bytes] = ()) -> Keyring:
        keys = [key for key in (signing, *previous) if key]
        return cls(signing, {key_id(key): key for key in keys})


def keyring_from_config(
    hmac_key: str | None,
    previous_keys: Iterable[str],
    secret_key: object,
    secret_key_fallbacks: Iterable[object] = (),
) -> Keyring:
    """The configured key, else one derived from ``SECRET_KEY``; previous keys
    (and keys derived from the fallback secrets) are accepted by ``verify``."""
    previous = [key.encode() for key in previous_keys]
    secrets = [
        secret
        for secret in (secret_key, *secret_key_fallbacks)
        if isinstance(secret, (str, bytes)) and secret
    ]
    derived = [derive_key(secret) for secret in secrets]
    if hmac_key:
        return Keyring.of(hmac_key.encode(), [*previous, *derived])
    if derived:
        return Keyring.of(derived[0], [*previous, *derived[1:]])
    return Keyring.of(None, previous)


def warn_if_unkeyed(keyring: Keyring, *, debug: bool, testing: bool) -> None:
    if keyring.signing is None and not (debug or testing):
        logger.warning(
            "the audit log is not keyed: set RESILIENCE_AUDIT_HMAC_KEY or the app's SECRET_KEY. "
            "Without a key anyone who can write to the audit table can rewrite a whole chain undetected."
        )


def app_keyring(app: Flask, config: cfg.Config) -> Keyring:
    """The keyring of ``app``: its configured key, or one derived from its ``SECRET_KEY``."""
    previous: tuple[str, ...] = config[cfg.AUDIT_PREVIOUS_HMAC_KEYS]
    return keyring_from_config(
        config[cfg.AUDIT_HMAC_KEY],
        previous,
        app.config.get("SECRET_KEY"),
        app.config.get("SECRET_KEY_FALLBACKS") or (),
    )
