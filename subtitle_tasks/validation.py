"""Checks at the edge: input that can never succeed fails in the web request.

Every check matches the whole value (``re.fullmatch``: a trailing newline is not
"the end"), refuses rather than repairs, and raises :class:`InvalidSubtitleRequest`
naming the field. Callback signatures are checked in ``callbacks.py``, broker names
here (``broker_name``), because the same rule guards the settle script.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import InvalidSubtitleRequest
from .sites import Site, SiteRegistry, valid_alias

# DatoCMS upload ids are URL-safe tokens (base64url-ish or numeric).
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Request ids appear in keys, in comma-separated subscriber lists and in callback task ids.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

# RFC 5646 (BCP 47) language tag syntax, section 2.1. ASCII classes only.
_ALPHANUM = "[A-Za-z0-9]"
_LANGTAG = re.compile(
    r"(?P<language>[A-Za-z]{2,3}(?:-[A-Za-z]{3}){0,3}|[A-Za-z]{4}|[A-Za-z]{5,8})"  # language [extlang]
    r"(?:-(?P<script>[A-Za-z]{4}))?"
    r"(?:-(?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    rf"(?P<variants>(?:-(?:{_ALPHANUM}{{5,8}}|[0-9]{_ALPHANUM}{{3}}))*)"
    rf"(?P<extensions>(?:-[0-9A-WYZa-wyz](?:-{_ALPHANUM}{{2,8}})+)*)"
    rf"(?:-(?P<privateuse>[xX](?:-{_ALPHANUM}{{1,8}})+))?"
)
_PRIVATEUSE = re.compile(rf"[xX](?:-{_ALPHANUM}{{1,8}})+")
# The tags RFC 5646 keeps for compatibility ("grandfathered"), matched case-insensitively.
_GRANDFATHERED = frozenset(t.lower() for t in (
    "en-GB-oed", "i-ami", "i-bnn", "i-default", "i-enochian", "i-hak", "i-klingon", "i-lux", "i-mingo",
    "i-navajo", "i-pwn", "i-tao", "i-tay", "i-tsu", "sgn-BE-FR", "sgn-BE-NL", "sgn-CH-DE", "art-lojban",
    "cel-gaulish", "no-bok", "no-nyn", "zh-guoyu", "zh-hakka", "zh-min", "zh-min-nan", "zh-xiang",
))
# Longer than any registered tag with a few extensions; DatoCMS only needs a language.
MAX_LANGUAGE_TAG = 64

# Languages Mux's automatic captions accept (stable, then beta), per the reference.
SUPPORTED_LANGUAGES = frozenset((
    "en", "es", "it", "pt", "de", "fr",  # stable
    "pl", "ru", "nl", "ca", "tr", "sv", "uk", "no", "fi", "sk", "el", "cs", "hr", "da", "ro", "bg",  # beta
))
MAX_NAME = 255

# Characters refused in names shown to editors: C0/C1 controls, line and paragraph
# separators, and the bidirectional overrides/isolates that can disguise text.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})


def upload_id(value: object) -> str:
    if not isinstance(value, str) or not _UPLOAD_ID.fullmatch(value):
        raise InvalidSubtitleRequest("upload_id", f"expected a DatoCMS upload id (1-128 letters, digits, - and _), "
                                                  f"got {_show(value)}")
    return value


def language_code(value: object, *, check_supported: bool = True) -> str:
    """A well-formed RFC 5646 tag (extensions and private use included), returned as given."""
    field = "language_code"
    if not isinstance(value, str):
        raise InvalidSubtitleRequest(field, f"expected a BCP 47 tag such as 'it-IT', got {_show(value)}")
    if len(value) > MAX_LANGUAGE_TAG:
        raise InvalidSubtitleRequest(field, f"a language tag of {len(value)} characters is too long "
                                            f"(at most {MAX_LANGUAGE_TAG})")
    primary = _primary_language(value)
    if check_supported and primary not in SUPPORTED_LANGUAGES:
        raise InvalidSubtitleRequest(
            field,
            f"automatic subtitles are not offered for {primary or value!r}; supported: "
            f"{', '.join(sorted(SUPPORTED_LANGUAGES))} (pass check_language=False to send it anyway)",
        )
    return value


def _primary_language(value: str) -> str | None:
    """The primary language subtag (lowercase) of a well-formed tag; None for private use only."""
    if value.lower() in _GRANDFATHERED or _PRIVATEUSE.fullmatch(value):
        return None
    match = _LANGTAG.fullmatch(value)
    if not match:
        raise InvalidSubtitleRequest("language_code", f"{_show(value)} is not a BCP 47 tag such as 'it-IT'")
    variants = [v.lower() for v in match.group("variants").split("-") if v]
    if len(variants) != len(set(variants)):
        raise InvalidSubtitleRequest("language_code", f"{_show(value)} repeats a variant subtag (RFC 5646 2.2.5)")
    extensions = match.group("extensions")
    singletons = [s.lower() for s in re.findall(r"(?:^|-)([0-9A-WYZa-wyz])(?=-)", extensions)]
    if len(singletons) != len(set(singletons)):
        raise InvalidSubtitleRequest("language_code", f"{_show(value)} repeats an extension (RFC 5646 2.2.6)")
    return match.group("language").split("-")[0].lower()


def track_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidSubtitleRequest("name", f"expected a non-empty string of at most {MAX_NAME} characters")
    bad = next((ch for ch in value if ch in _BIDI_CONTROLS or unicodedata.category(ch) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise InvalidSubtitleRequest("name", f"control character U+{ord(bad):04X} is not allowed in a track name")
    return value


def site(value: object, sites: SiteRegistry) -> Site:
    """The configured site an alias names (None: the default site)."""
    alias: str | None = None
    if value is not None:
        if not valid_alias(value):
            raise InvalidSubtitleRequest("site", f"expected a site alias (1-32 of a-z, 0-9, '_', '-'), "
                                                 f"got {_show(value)}")
        alias = value
    found = sites.get(alias)
    if found is None:
        raise InvalidSubtitleRequest("site", f"unknown site {value!r}; configured: "
                                             f"{', '.join(sites.aliases()) or 'none'}")
    return found


def deadline(value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 30 * 86400:
        raise InvalidSubtitleRequest("deadline", f"expected seconds between 0 and 30 days, got {_show(value)}")
    return float(value)


def upload_duration(value: object) -> float | None:
    """The video's length in seconds, a hint for the learned poll schedule (None: not given)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 7 * 86400:
        raise InvalidSubtitleRequest("upload_duration",
                                     f"expected the video's length in seconds, over 0 and at most 7 days, "
                                     f"got {_show(value)}")
    return float(value)


def request_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _REQUEST_ID.fullmatch(value):
        raise InvalidSubtitleRequest("request_id", "expected 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    return value


# -- broker names (queue, exchange, routing key of a callback) ---------------------------
# Names a callback may route to. Plain characters only: kombu's Redis transport turns a
# queue name into a key, and a priority suffix or a separator must not be smuggled in.
_BROKER_NAME = re.compile(r"[A-Za-z0-9_.@-][A-Za-z0-9_.@:-]{0,199}")
# Keys kombu and Celery keep beside the queues on a Redis broker (plus our own prefix,
# added per call). A callback routed to one of them would corrupt the broker or us.
RESERVED_BROKER_PREFIXES = ("_kombu.", "unacked", "celery-task-meta-", "celery-taskset-meta-", "celeryev")


def broker_name(field: str, option: str, value: object, key_prefix: str) -> str:
    """A queue/exchange/routing-key name that can never address a key of ours or kombu's."""
    if not isinstance(value, str) or not _BROKER_NAME.fullmatch(value):
        raise InvalidSubtitleRequest(field, f"callback option {option!r} must be 1-200 letters, digits, "
                                            f"'_', '.', '@', ':' or '-', got {_show(value)}")
    lowered = value.lower()
    reserved = (*RESERVED_BROKER_PREFIXES, f"{key_prefix.lower()}:")
    if lowered == key_prefix.lower() or lowered.startswith(reserved):
        raise InvalidSubtitleRequest(field, f"callback option {option}={value!r} names a reserved key "
                                            f"(ours or the broker's); choose another name")
    return value


def _show(value: object, limit: int = 80) -> str:
    """A value for an error message, cut short (an attacker may send megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
