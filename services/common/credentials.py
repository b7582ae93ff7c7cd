"""API keys and feedback tokens: how a secret becomes an id, shared by gateway and feedback.

An API key's id is a fingerprint of the key itself (``key_`` + 24 hex digits of its
SHA-256). The gateway records that id with every answer it serves; the feedback service
computes the id of the bearer key a client presents and compares. So only the key that
received an answer can rate it, and no service needs a shared key table to check that:
finding another key with the same 96-bit fingerprint is out of reach.

A feedback token is a random secret the gateway mints per candidate group and returns
with the answers, so a browser can rate them without holding the API key. Services store
and compare only its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "fwk_"
FEEDBACK_TOKEN_PREFIX = "fwt_"
_ID_HEX_DIGITS = 24


def _sha256_hex(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    """A fresh API key: prefix + 256 random bits, URL-safe."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_id(api_key: str) -> str:
    """The public id of an API key (safe to log, store and export)."""
    return "key_" + _sha256_hex(api_key)[:_ID_HEX_DIGITS]


def new_feedback_token() -> str:
    """A fresh feedback token for one candidate group."""
    return FEEDBACK_TOKEN_PREFIX + secrets.token_urlsafe(24)


def token_hash(token: str) -> str:
    """What a service stores instead of a feedback token."""
    return _sha256_hex(token)


def token_matches(token: str, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    return hmac.compare_digest(token_hash(token), stored_hash)
