"""Curation before publication: remove personal data and secrets, and find duplicates.

`scrub_text` / `scrub` replace e-mail addresses, phone numbers, payment cards (Luhn-checked), IPv4/IPv6 addresses,
IBANs (mod-97 checked), URLs carrying credentials or tokens, API keys and other secrets, and postal addresses with
typed placeholders such as `<EMAIL>`, and return how many of each type were replaced (never the values). Everything
here is a regular expression plus a validator written in this module: it runs offline, needs no model, and is fast
enough to run on every conversation. Person names need a model; an operator may pass one in as `name_finder`.

`Deduplicator` finds exact duplicates (hash of lower-cased, whitespace-collapsed roles and contents) and near
duplicates (MinHash LSH over word 3-grams) against already-published conversations and within a batch; the published
ones' keys (hash, signature, band keys) live in the store and are looked up there, so no run re-reads the dataset.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from thresher.conversation import Conversation, Judgment, messages_hash

# A person-name finder, only ever supplied by the operator (e.g. a local NER model loaded from a path they chose):
# given a text, it returns the (start, end) character spans of names. thresher never downloads one.
NameFinder = Callable[[str], Iterable[tuple[int, int]]]

PLACEHOLDER_TYPES = ("EMAIL", "PHONE", "CARD", "IP_ADDRESS", "IBAN", "URL_WITH_SECRET", "SECRET", "ADDRESS", "PERSON")

# --- secrets -----------------------------------------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    # A pasted key may be cut off before its END line: then everything key-like after BEGIN goes.
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----|[\w\s+/=:-]*)",
    re.S,
)
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s<>\"'`]+")
_URL_USERINFO = re.compile(r"^[^:/]+://[^/@\s:]+:[^/@\s]+@")
_SECRET_PARAM = re.compile(
    r"[?&#;]((?:[\w.-]*[_-])?(?:access_?token|refresh_?token|id_?token|auth_?token|token|api_?key|apikey|key|secret"
    r"|password|passwd|pwd|pass|sig|signature|credential|auth))=[^&#\s]",
    re.I,
)
# Known key formats. Each is distinctive enough that a match is a secret whatever its entropy.
_KEY_FORMATS = re.compile(
    r"\b(?:"
    r"(?:sk|rk|pk)[-_](?:(?:live|test|proj|ant|svcacct)[-_])?[A-Za-z0-9_-]{16,}"  # OpenAI, Anthropic, Stripe
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}"  # AWS access key ids
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"  # JSON web tokens
    r")"
)
# The scheme word stays so the text still reads right: "Authorization: Bearer <SECRET>".
_AUTH_HEADER = re.compile(
    r"(?i)(\bauthorization\s*[:=]\s*(?:(?:bearer|basic|token|digest)\s+)?)"
    r"(?!(?:bearer|basic|token|digest)\b)[^\s<\"']{6,}"
)
_BEARER = re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/-]{8,}=*)")
_ASSIGNMENT = re.compile(
    r"(?i)(\b(?:[\w-]*[_-])?(?:password|passwd|pwd|secret|api_?key|apikey|access_?key|secret_?key|token|auth_?token)"
    r"[\"']?\s*[:=]\s*[\"']?)([^\s\"'<>,;]{6,})"
)
_TOKEN = re.compile(r"(?<![A-Za-z0-9_+/=-])[A-Za-z0-9_+/=-]{24,}(?![A-Za-z0-9_+/=-])")
TOKEN_MIN_ENTROPY = 3.0  # bits per character; random base62 of 24 chars is ~4.2, a 24-char hex hash ~3.5


def shannon_entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(n / len(s) * math.log2(n / len(s)) for n in counts.values())


def _looks_random(token: str) -> bool:
    """A long token is a secret if it mixes letters and digits inside one segment (identifiers such as
    `test_case_42` keep them apart), or flips case as often as random text does (CamelCase flips rarely)."""
    if shannon_entropy(token) < TOKEN_MIN_ENTROPY:
        return False
    segments = re.split(r"[_+/=-]+", token)
    if any(re.search(r"[A-Za-z]", s) and re.search(r"\d", s) for s in segments):
        return True
    letters = [c for c in token if c.isalpha()]
    flips = sum(a.isupper() != b.isupper() for a, b in zip(letters, letters[1:], strict=False))
    return len(letters) >= 20 and flips / (len(letters) - 1) >= 0.4


def _has_secret_param(url: str) -> bool:
    return bool(_URL_USERINFO.match(url) or _SECRET_PARAM.search(url))


# --- numbers: cards, IBANs, addresses of machines -------------------------------------------------------------------

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_CARD = re.compile(r"(?<![\w-])\d[\d -]{11,}\d(?![\w-])")  # a run of digits; `_is_card` finds cards in it
_IBAN_LENGTHS = dict(
    (cc, int(n))
    for cc, n in re.findall(
        r"([A-Z]{2}):(\d+)",
        "AD:24 AE:23 AL:28 AT:20 AZ:28 BA:20 BE:16 BG:22 BH:22 BR:29 BY:28 CH:21 CR:22 CY:28 CZ:24 DE:22 DK:18 DO:28 "
        "EE:20 EG:29 ES:24 FI:18 FO:18 FR:27 GB:22 GE:22 GI:23 GL:18 GR:27 GT:28 HR:21 HU:28 IE:22 IL:23 IQ:23 IS:26 "
        "IT:27 JO:30 KW:30 KZ:20 LB:28 LC:32 LI:21 LT:20 LU:20 LV:21 MC:27 MD:24 ME:22 MK:19 MR:27 MT:31 MU:30 NL:18 "
        "NO:15 PK:24 PL:28 PS:29 PT:25 QA:29 RO:24 RS:22 SA:24 SC:31 SE:24 SI:19 SK:24 SM:27 ST:25 SV:28 TL:23 TN:24 "
        "TR:26 UA:29 VA:22 VG:24 XK:20",
    )
)

# One alternative per IBAN length, so a match ends exactly where the IBAN does (grouped in fours or not).
_IBAN = re.compile(
    r"(?i)\b(?:"
    + "|".join(
        rf"(?:{'|'.join(cc for cc, n in _IBAN_LENGTHS.items() if n == length)})\d{{2}}(?:[ -]?[A-Z0-9]){{{length - 4}}}"
        for length in sorted(set(_IBAN_LENGTHS.values()), reverse=True)
    )
    + r")\b"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?:%\w+)?"
                   r"(?![\w:])")
_VERSION_CONTEXT = re.compile(r"(?i)(?:\bv|version\s*|release\s*|ver\.?\s*)$")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    iban = iban.upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]+", iban) or _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def _iban(m: re.Match[str]) -> str | None:
    return "<IBAN>" if iban_ok(re.sub(r"[ -]", "", m.group())) else None


def _is_card(part: str, context: str) -> bool:
    groups = re.split(r"[ -]", part)
    digits = "".join(groups)
    # Printed card layouts only (one block, fours, or Amex 4-6-5): a list of numbers rarely looks like that.
    layout = len(groups) == 1 or all(len(g) == 4 for g in groups[:-1]) or [len(g) for g in groups] == [4, 6, 5]
    return (
        part[0] in "23456" and digits.isdigit() and 13 <= len(digits) <= 19 and layout and len(set(digits)) > 1
        and luhn_ok(digits)
    )


def _card(m: re.Match[str]) -> str | None:
    out = _longest_parts(m.group(), m.start(), m.string, " -", _is_card, "<CARD>")
    return out if out != m.group() else None


def _ipv4(m: re.Match[str]) -> str | None:
    if _VERSION_CONTEXT.search(m.string[max(0, m.start() - 12) : m.start()]):
        return None
    ip = ipaddress.IPv4Address(m.group())
    # Loopback and 0.0.0.0 say nothing about anyone and fill programming answers: keep them readable.
    return None if ip.is_loopback or ip.is_unspecified else "<IP_ADDRESS>"


def _ipv6(m: re.Match[str]) -> str | None:
    raw = m.group()
    try:
        ip = ipaddress.IPv6Address(raw.split("%")[0])
    except ValueError:
        return None
    groups = [g for g in raw.split("%")[0].split(":") if g]
    # "a[1::2]" is valid IPv6 but a slice: demand a real-looking address.
    if ip.is_loopback or ip.is_unspecified or not (len(groups) >= 3 or any(len(g) >= 3 for g in groups)):
        return None
    return "<IP_ADDRESS>"


# --- phone numbers ------------------------------------------------------------------------------------------------

# An opening parenthesis belongs to the number only as an area code: "(555) 123-4567", not "(020 7946 0958)".
_PHONE = re.compile(r"(?<![\w+.,/-])(?:\+|\(\d{1,5}\)\s?)?\d[\d \-.()/]{5,}\d(?![\w-]|[.,/]\d)")
_PHONE_CONTEXT = re.compile(
    r"(?i)\b(?:tel|telephone|phone|mobile|cell|fax|whatsapp|call me|text me|reach me)\b(?:\s+(?:number|no\.?|nr\.?))?"
    r"(?:\s+(?:is|at|on))?\W{0,4}$"
)
# Total digits (country code included) of common countries, so "+1 202 555 0147 020" is not taken as one number.
_INTL_DIGITS = {"1": (11,), "7": (11,), "44": (11, 12), "33": (11,), "61": (11,), "91": (12,), "34": (11,),
                "49": range(10, 15), "81": (11, 12), "86": (12, 13), "39": range(10, 14)}
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")
_NANP = re.compile(r"(?:1[-. ]?)?(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}")


def _is_phone(raw: str, context: str) -> bool:
    digits = re.sub(r"\D", "", raw.replace("(0)", ""))  # +44 (0)20 …: the trunk 0 is dialled only at home
    intl = raw.startswith(("+", "00"))
    if not (8 if intl else 7) <= len(digits) <= 15 or _DATE.fullmatch(raw) or raw.count("(") != raw.count(")"):
        return False
    if _PHONE_CONTEXT.search(context):  # "call me on 5551234567": the words say what the digits are
        return True
    groups = [g for g in re.split(r"\D+", raw.replace("(0)", "")) if g]
    if len(groups) == 2 and "." in raw and not intl:  # a decimal such as 0.1234567
        return False
    if all(len(g) == 3 for g in groups[1:]) and (len(groups[0]) < 3 or groups[1:].count("000") > 0) and not intl:
        return False  # thousands: 1 000 000, 12.345.678
    if intl:
        cc = groups[0][2:] if raw.startswith("00") else groups[0]
        expected = _INTL_DIGITS.get(cc[:2], _INTL_DIGITS.get(cc[:1], range(8, 16)))
        return (len(digits) - 2 * raw.startswith("00")) in expected and all(len(g) >= 2 for g in groups[2:])
    if _NANP.fullmatch(raw) or re.match(r"\(\d{2,5}\)", raw):
        return True
    # National formats elsewhere start with a trunk 0: 020 7946 0958, 030 1234567, 07700 900123, 01 23 45 67 89.
    return raw[0] == "0" and 9 <= len(digits) <= 12 and all(len(g) >= 2 for g in groups)


def _longest_parts(
    text: str, start: int, full: str, cuts_at: str, accept: Callable[[str, str], bool], placeholder: str
) -> str:
    """Replace what `accept` takes inside one run of digits and separators. A run may join a number to unrelated
    ones ("room 12 555-123-4567", two cards in a row), so the longest acceptable parts are taken, then the rest is
    searched again. `accept` gets the part and the 24 characters before it."""
    cuts = [0, *(i + 1 for i, c in enumerate(text) if c in cuts_at), len(text) + 1]
    for width in range(min(len(cuts) - 1, 7), 0, -1):  # no card or phone has more than 7 groups
        for i in range(len(cuts) - width):
            a, b = cuts[i], cuts[i + width] - 1
            if text[a : a + 1] == "(" and text.count("(", a, b) > text.count(")", a, b):
                a += 1  # "(020 7946 0958": the parenthesis opens the aside, not an area code
            part = text[a:b]
            if part and part[-1].isdigit() and accept(part, full[max(0, start + a - 24) : start + a]):
                left = _longest_parts(text[:a], start, full, cuts_at, accept, placeholder)
                return left + placeholder + _longest_parts(text[b:], start + b, full, cuts_at, accept, placeholder)
    return text


def _phone(m: re.Match[str]) -> str | None:
    out = _longest_parts(m.group(), m.start(), m.string, " ", _is_phone, "<PHONE>")
    return out if out != m.group() else None


# --- postal addresses ---------------------------------------------------------------------------------------------

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|Terrace|Way|Close"
    r"|Crescent|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Gardens|Grove|Row|Mews|Walk|Alley|Trail)"
)
_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|OR"
    "|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC|PR"
)
_UK_POSTCODE = r"(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2})"
_CITY_STATE_ZIP = rf"[A-Z][a-z]+(?:\s[A-Z][a-z]+)?,\s*(?:{_STATES})\s+\d{{5}}(?:-\d{{4}})?"
_ADDRESS = re.compile(
    # 221B Baker Street, London NW1 6XE / 1600 Pennsylvania Avenue NW, Washington, DC 20500 / 12 Oak Ln., Apt 4
    rf"(?<![\w$£€.,-])\d{{1,5}}[A-Za-z]?(?:[-/]\d{{1,4}})?,?\s+(?:[A-Z][a-z'’]+\s+){{1,4}}{_SUFFIX}\b\.?"
    r"(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b)?"
    r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|#)\.?\s*#?\w+)?"
    rf"(?:,?\s+{_UK_POSTCODE}\b|,\s*{_CITY_STATE_ZIP}\b|,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)?(?:,?\s+{_UK_POSTCODE}\b)?)?"
    # Hauptstraße 5, 10115 Berlin
    r"|\b[A-ZÄÖÜ][a-zäöüß]+(?:straße|strasse|weg|platz|allee|gasse|ring|damm)\s+\d{1,4}[a-z]?\b"
    r"(?:,\s*\d{5}\s+[A-ZÄÖÜ][a-zäöüß]+)?"
    # Springfield, IL 62704-1234 on its own, and UK postcodes on their own
    rf"|\b{_CITY_STATE_ZIP}\b|\b(?:{_STATES})\s+\d{{5}}-\d{{4}}\b|\b{_UK_POSTCODE}\b"
)


# --- the scrubber -------------------------------------------------------------------------------------------------

Replacer = Callable[[re.Match[str]], str | None]


def _fixed(kind: str, keep_group: int | None = None) -> Replacer:
    def repl(m: re.Match[str]) -> str:
        return (m.group(keep_group) if keep_group else "") + f"<{kind}>"

    return repl


# Order matters: whole URLs and key blocks go before the e-mail and number rules could take pieces of them; IBANs go
# before long tokens (a 27-character IBAN is also a long token); numbers go from the most to the least specific.
# Each rule's gate is a cheap pattern that every text the rule would change contains (an IBAN starts with two letters
# and two digits, an address holds a digit): where the gate finds nothing the rule is skipped, which is most rules for
# most texts.
_DIGIT, _DIGIT_DOT, _LETTERS_DIGITS = re.compile(r"\d"), re.compile(r"\d\."), re.compile(r"(?i)[a-z]{2}\d{2}")
_NEEDS_DIGIT = (_DIGIT, _DIGIT_DOT, _LETTERS_DIGITS)  # replacing never adds a digit: a text without one keeps none
_RULES: list[tuple[str, re.Pattern[str], Replacer, re.Pattern[str] | None]] = [
    ("SECRET", _PRIVATE_KEY, _fixed("SECRET"), re.compile("-----BEGIN ")),
    ("URL_WITH_SECRET", _URL, lambda m: "<URL_WITH_SECRET>" if _has_secret_param(m.group()) else None,
     re.compile("://")),
    ("EMAIL", _EMAIL, _fixed("EMAIL"), re.compile("@")),
    ("SECRET", _KEY_FORMATS, lambda m: "<SECRET>" if re.search(r"\d", m.group()) else None, _DIGIT),
    ("SECRET", _AUTH_HEADER, _fixed("SECRET", 1), re.compile("(?i)authorization")),
    ("SECRET", _BEARER, lambda m: m.group(1) + "<SECRET>" if re.search(r"\d", m.group(2)) or len(m.group(2)) >= 16
     else None, re.compile("(?i)bearer")),
    ("SECRET", _ASSIGNMENT, _fixed("SECRET", 1), re.compile("(?i)[pskt](?:ass|wd|ecret|ey|oken)")),
    ("IBAN", _IBAN, _iban, _LETTERS_DIGITS),
    ("SECRET", _TOKEN, lambda m: "<SECRET>" if _looks_random(m.group()) else None, None),
    ("CARD", _CARD, _card, _DIGIT),
    ("IP_ADDRESS", _IPV6, _ipv6, re.compile(":")),
    ("IP_ADDRESS", _IPV4, _ipv4, _DIGIT_DOT),
    ("PHONE", _PHONE, _phone, _DIGIT),
    ("ADDRESS", _ADDRESS, _fixed("ADDRESS"), _DIGIT),
]


def scrub_text(text: str, *, name_finder: NameFinder | None = None) -> tuple[str, Counter[str]]:
    """Replace personal data and secrets in `text` with typed placeholders; return the text and counts by type.

    Idempotent: placeholders are never matched again. `name_finder` (operator-supplied, default none) adds `<PERSON>`
    for the spans it returns; without it, names are not touched."""
    counts: Counter[str] = Counter()
    digits = _DIGIT.search(text) is not None
    for kind, pattern, replacer, gate in _RULES:
        if gate is not None and ((not digits and gate in _NEEDS_DIGIT) or not gate.search(text)):
            continue

        def sub(m: re.Match[str], kind: str = kind, replacer: Replacer = replacer) -> str:
            out = replacer(m)
            if out is None:
                return m.group()
            counts[kind] += out.count(f"<{kind}>")
            return out

        text = pattern.sub(sub, text)
    if name_finder is not None:
        spans = sorted({(a, b) for a, b in name_finder(text) if 0 <= a < b <= len(text)}, reverse=True)
        last = len(text) + 1
        for a, b in spans:  # right to left so earlier offsets stay valid; overlapping spans are skipped
            if b <= last and "<" not in text[a:b]:
                text, last = text[:a] + "<PERSON>" + text[b:], a
                counts["PERSON"] += 1
    return text, counts


def scrub(conv: Conversation, *, name_finder: NameFinder | None = None) -> tuple[Conversation, Counter[str]]:
    """A copy of `conv` with every message scrubbed, and the counts by type over the whole conversation."""
    total: Counter[str] = Counter()
    messages = []
    for m in conv.messages:
        content, counts = scrub_text(m.content, name_finder=name_finder)
        total += counts
        messages.append(replace(m, content=content))
    return replace(conv, messages=messages), total


# --- dedup --------------------------------------------------------------------------------------------------------


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def normalised_messages(conv: Conversation) -> list[dict[str, str]]:
    return [{"role": m.role, "content": _normalise(m.content)} for m in conv.messages]


def normalised_hash(conv: Conversation) -> str:
    """The exact-duplicate key: roles and contents, lower-cased, whitespace collapsed."""
    return messages_hash(normalised_messages(conv))


def _shingles(conv: Conversation, n: int = 3) -> set[bytes]:
    words = " ".join(f"{m['role']}: {m['content']}" for m in normalised_messages(conv)).split()
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}


# MinHash over 128 permutations, cut into 14 bands of 9 values: what datasketch's MinHashLSH chooses for a threshold
# of 0.7. The band keys are stored with each publication (`Store.dedup_by_band`), so the banding is fixed here, not
# derived from the threshold: changing it means a migration that recomputes every publication's keys.
NUM_PERM, BANDS, ROWS = 128, 14, 9


def band_keys(signature: bytes) -> list[int]:
    """The LSH keys of a MinHash signature (its 128 hash values' bytes): per band, its number and values hashed to a
    signed 64-bit integer (what SQL stores everywhere). Conversations sharing a key are candidate near duplicates."""
    if not signature or len(signature) % NUM_PERM:
        return []
    width = ROWS * (len(signature) // NUM_PERM)
    return [int.from_bytes(hashlib.blake2b(bytes([i]) + signature[i * width:(i + 1) * width], digest_size=8)
                           .digest(), "big", signed=True) for i in range(BANDS)]


class DedupIndex(Protocol):
    """The published conversations' dedup keys, kept and looked up outside memory: the store implements it."""

    def dedup_by_hash(self, hashes: Sequence[str]) -> dict[str, str]:
        """For each of these normalised hashes that a published conversation has, the earliest such id."""
        ...

    def dedup_by_band(self, bands: Sequence[int]) -> list[tuple[int, str, bytes]]:
        """(band key, id, signature) of every published conversation with one of these band keys."""
        ...


class Deduplicator:
    """Exact and near-duplicate detection against a growing set of conversations.

    Seed it with what is already published, or give it the `index` (the store) that holds the keys of everything
    published, then for each candidate in turn ask `duplicate_of` and `add` the ones that are kept: each candidate is
    compared with the published conversations and with the candidates added before it. With an index
    only what was added since is held in memory, and `prefetch` looks a whole batch up in a few queries. Compare
    scrubbed conversations with scrubbed ones, so that placeholders match placeholders. The default threshold
    (estimated Jaccard similarity of word 3-grams >= 0.7) flags a 100-word conversation with three words changed."""

    def __init__(
        self, published: Iterable[Conversation] = (), *, threshold: float = 0.7, index: DedupIndex | None = None
    ) -> None:
        self.threshold, self.index = threshold, index
        self._added: set[str] = set()
        self._hashes: dict[str, str] = {}  # normalised hash -> id, of what was added here
        self._bands: dict[int, list[str]] = {}  # band key -> ids, of what was added here
        self._found_hashes: dict[str, str] = {}  # the same two, of what the index answered
        self._found_bands: dict[int, list[str]] = {}
        self._asked_hashes: set[str] = set()
        self._asked_bands: set[int] = set()
        self._signatures: dict[str, Any] = {}  # id -> MinHash values (numpy), added here or found in the index
        self._computed: dict[str, tuple[Conversation, str, Any, list[int]]] = {}  # id -> (conv, hash, values, bands)
        self._template: Any = None
        for conv in published:
            self.add(conv)

    def _keys_of(self, conv: Conversation) -> tuple[str, Any, list[int]]:
        entry = self._computed.get(conv.id)
        if entry is None or entry[0] is not conv:  # each conversation's MinHash is computed once
            from datasketch import MinHash  # heavy (numpy, scipy): only curation pays for it

            if self._template is None:  # computing the permutations is most of a MinHash's set-up: do it once
                self._template = MinHash(num_perm=NUM_PERM, seed=1)
            mh = MinHash(num_perm=NUM_PERM, seed=1, permutations=self._template.permutations,
                         scheme=self._template.scheme)
            mh.update_batch(_shingles(conv))  # in any order: a MinHash keeps minima
            entry = (conv, normalised_hash(conv), mh.hashvalues, band_keys(mh.hashvalues.tobytes()))
            self._computed[conv.id] = entry
        return entry[1], entry[2], entry[3]

    def prefetch(self, convs: Sequence[Conversation]) -> None:
        """Look up in the index, in a few queries, what checking these conversations needs."""
        if self.index is None:
            return
        import numpy as np

        hashes, bands = set(), set()
        for conv in convs:
            h, _, keys = self._keys_of(conv)
            hashes.add(h)
            bands.update(keys)
        hashes -= self._asked_hashes
        bands -= self._asked_bands
        if hashes:
            self._found_hashes.update(self.index.dedup_by_hash(sorted(hashes)))
            self._asked_hashes |= hashes
        if bands:
            dtype = self._template.hashvalues.dtype
            for band, cid, signature in self.index.dedup_by_band(sorted(bands)):
                if len(signature) == NUM_PERM * dtype.itemsize:
                    self._found_bands.setdefault(band, []).append(cid)
                    self._signatures.setdefault(cid, np.frombuffer(signature, dtype=dtype))
            self._asked_bands |= bands

    def add(self, conv: Conversation) -> None:
        if conv.id in self._added:
            return
        h, values, bands = self._keys_of(conv)
        self._added.add(conv.id)
        self._hashes.setdefault(h, conv.id)
        for band in bands:
            self._bands.setdefault(band, []).append(conv.id)
        self._signatures[conv.id] = values

    def keys(self, conv: Conversation) -> tuple[str, bytes]:
        """The keys to store for a conversation: its normalised hash and MinHash signature bytes."""
        h, values, _ = self._keys_of(conv)
        return h, values.tobytes()

    def duplicate_of(self, conv: Conversation) -> str | None:
        """Why `conv` is a duplicate ("exact duplicate of ID" / "near duplicate of ID (jaccard ~0.91)"), or None."""
        import numpy as np

        self.prefetch([conv])  # a no-op when the batch was prefetched
        h, values, bands = self._keys_of(conv)
        exact = self._found_hashes.get(h) or self._hashes.get(h)
        if exact is not None and exact != conv.id:
            return f"exact duplicate of {exact}"
        # Sharing a band makes a candidate; the estimated Jaccard similarity decides (bands have false positives).
        candidates = {k for b in bands for k in (*self._found_bands.get(b, ()), *self._bands.get(b, ()))}
        candidates.discard(conv.id)
        best = max(((np.count_nonzero(values == self._signatures[k]) / NUM_PERM, k) for k in candidates),
                   default=None)
        if best is not None and best[0] >= self.threshold:
            return f"near duplicate of {best[1]} (jaccard ~{best[0]:.2f})"
        return None


# --- selection ---------------------------------------------------------------------------------------------------


def rejection(conv: Conversation, judgment: Judgment, threshold: float) -> str | None:
    """Selection: why a judged conversation may not be published (consent, flags, score), or None. Duplicates and
    the daily cap are decided by the caller, which sees the whole batch."""
    if not conv.publish_allowed:
        return "owner opted out"
    if judgment.status == "flagged":
        return f"flagged for a human: {', '.join(judgment.flags)}"
    if judgment.score is None:
        return f"no score ({judgment.status})"
    if judgment.score < threshold:
        return f"score {judgment.score:.2f} below the threshold {threshold:g}"
    return None
