"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): SHA-1, 30-second steps,
six digits, as every authenticator app reads them from an ``otpauth://`` URI."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
import unicodedata
from urllib.parse import quote, urlencode

STEP_SECONDS = 30
DIGITS = 6
# A code is accepted one step either side of now: clocks drift and people type slowly.
WINDOW = 1


def new_secret() -> str:
    """160 random bits in base32 (RFC 4226's recommended length), without padding."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    cleaned = secret.replace(" ", "").upper()
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def code_at(secret: str, step: int, digits: int = DIGITS) -> str:
    """HOTP of ``step`` (RFC 4226 section 5.3: dynamic truncation)."""
    mac = hmac.new(_key(secret), struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(when: float | None = None) -> int:
    return int((time.time() if when is None else when) // STEP_SECONDS)


def matching_step(
    secret: str, code: str, *, after_step: int, when: float | None = None
) -> int | None:
    """The step whose code ``code`` is, within the window around ``when``, if it is later than
    ``after_step`` (a code is good once: replaying one that was accepted fails)."""
    code = "".join(code.split())
    if len(code) != DIGITS or not code.isdecimal():
        return None
    # Any script's decimal digits (Arabic-Indic, full-width...) as the ASCII ones.
    code = "".join(str(unicodedata.decimal(c)) for c in code)
    now = step_at(when)
    for step in range(now - WINDOW, now + WINDOW + 1):
        if step > after_step and hmac.compare_digest(code_at(secret, step), code):
            return step
    return None


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans (Key Uri Format)."""
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"
