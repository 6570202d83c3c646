"""Checks at the edge: input that can never succeed fails in the web request."""

from __future__ import annotations

import re

from .errors import InvalidSubtitleRequest

# DatoCMS upload ids are URL-safe tokens (base64url-ish or numeric).
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# BCP 47 shape: language, optional script, optional region, optional variants.
_BCP47 = re.compile(
    r"^(?P<language>[A-Za-z]{2,3})"
    r"(-[A-Za-z]{4})?"
    r"(-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$"
)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

# Languages Mux's automatic captions accept (stable, then beta), per the reference.
SUPPORTED_LANGUAGES = frozenset(
    "en es it pt de fr".split() + "pl ru nl ca tr sv uk no fi sk el cs hr da ro bg".split()
)
MAX_NAME = 255


def upload_id(value: object) -> str:
    if not isinstance(value, str) or not _UPLOAD_ID.match(value):
        raise InvalidSubtitleRequest("upload_id", f"expected a DatoCMS upload id (letters, digits, - and _), got {value!r}")
    return value


def language_code(value: object, *, check_supported: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidSubtitleRequest("language_code", f"expected a BCP 47 tag such as 'it-IT', got {value!r}")
    match = _BCP47.match(value.strip())
    if not match:
        raise InvalidSubtitleRequest("language_code", f"{value!r} is not a BCP 47 tag such as 'it-IT'")
    primary = match.group("language").lower()
    if check_supported and primary not in SUPPORTED_LANGUAGES:
        raise InvalidSubtitleRequest(
            "language_code",
            f"automatic subtitles are not offered for {primary!r}; supported: {', '.join(sorted(SUPPORTED_LANGUAGES))} "
            "(pass check_language=False to send it anyway)",
        )
    return value.strip()


def track_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidSubtitleRequest("name", f"expected a non-empty string of at most {MAX_NAME} characters")
    return value


def deadline(value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 30 * 86400:
        raise InvalidSubtitleRequest("deadline", f"expected seconds between 0 and 30 days, got {value!r}")
    return float(value)


def request_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _REQUEST_ID.match(value):
        raise InvalidSubtitleRequest("request_id", "expected 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    return value
