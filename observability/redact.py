"""Replaces personal data in text before it is stored (the opt-in prompt log).

E-mail addresses, payment card numbers, IP addresses and phone numbers become ``[EMAIL]``,
``[CARD]``, ``[IP]`` and ``[PHONE]``. Each kind is found by a cheap precompiled candidate
pattern and confirmed by a real check (Luhn, ``ipaddress``, ``phonenumbers``), so numbers,
dates, times and version strings stay. The order matters: e-mails first (their local part may
hold digits), then cards (a card's digit groups would read as a phone), then IP addresses
(whose dotted digits would too), phones last.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import phonenumbers

EMAIL, PHONE, CARD, IP = "[EMAIL]", "[PHONE]", "[CARD]", "[IP]"
DEFAULT_REGION = "US"  # how a phone number without a leading "+CC" is read
CARD_DIGITS = (13, 19)
CARD_GROUP = (3, 6)  # digits in one group of a card written in groups

_EMAIL_RE = re.compile(
    r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])"
)
# Digit groups joined by single spaces or dashes, not part of a longer number or a decimal.
_DIGIT_RUN_RE = re.compile(r"(?<!\d)(?<!\d[.,])\d+(?:[ -]\d+)*(?!\d)(?![.,]\d)")
_GROUP_RE = re.compile(r"\d+")
_DIGIT_RE = re.compile(r"\d")
# Four dotted numbers, not inside a longer dotted run nor after a letter ("v1.2.3.4").
_IPV4_RE = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w.]*\d)")
# At least two colons (a time "12:30" has one); optional dotted IPv4 tail and zone id.
_IPV6_RE = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}(?:%[\w.-]+)?"
)
_LENIENCY = phonenumbers.Leniency.VALID


def redact(text: str) -> str:
    """``text`` with every e-mail, card number, IP address and phone number replaced."""
    if "@" in text:
        text = _EMAIL_RE.sub(EMAIL, text)
    if not _DIGIT_RE.search(text):
        return text  # all that is left to find has digits
    text = _DIGIT_RUN_RE.sub(_cards_in_run, text)
    if ":" in text:
        text = _IPV6_RE.sub(_ipv6, text)
    if "." in text:
        text = _IPV4_RE.sub(_ipv4, text)
    return _phones(text)


def redact_messages(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of an OpenAI completions or chat request body with its text redacted: ``prompt``
    (a string or a list of them) and each message's ``content`` (a string or text parts).
    The input is left as it was; token-id prompts and non-text parts are kept as they are."""
    out = dict(body)
    if "prompt" in body:
        out["prompt"] = _redact_prompt(body["prompt"])
    if isinstance(body.get("messages"), list):
        out["messages"] = [_redact_message(m) for m in body["messages"]]
    return out


# ------------------------------------------------------------------ cards


def _cards_in_run(match: re.Match[str]) -> str:
    """Replaces the Luhn-valid card numbers inside one run of digit groups.

    A run may hold more than a card ("order 12 4111 1111 1111 1111"), so every span of whole
    groups with 13-19 digits is tried, leftmost and longest first; the rest stays.
    """
    run = match.group()
    groups = [(g.start(), g.end()) for g in _GROUP_RE.finditer(run)]
    pieces, kept_to, i = [], 0, 0
    while i < len(groups):
        j = _card_span(run, groups, i)
        if j is None:
            i += 1
            continue
        pieces += [run[kept_to : groups[i][0]], CARD]
        kept_to, i = groups[j - 1][1], j
    return "".join(pieces) + run[kept_to:] if pieces else run


def _card_span(run: str, groups: list[tuple[int, int]], i: int) -> int | None:
    """The end (exclusive) of the longest span of groups from ``i`` that is a card, or None.

    A card is written whole or in groups of 3-6 digits (4-4-4-4, Amex 4-6-5): other groupings
    (a table of numbers) are not tried, which keeps chance Luhn matches rare and time linear.
    """
    low, high = CARD_DIGITS
    first = run[groups[i][0] : groups[i][1]]
    if len(first) > CARD_GROUP[1]:
        return i + 1 if low <= len(first) <= high and _luhn_ok(first) else None
    digits, spans = "", []
    for j in range(i, len(groups)):
        group = run[groups[j][0] : groups[j][1]]
        digits += group
        if len(digits) > high or not CARD_GROUP[0] <= len(group) <= CARD_GROUP[1]:
            break
        if len(digits) >= low:
            spans.append((j + 1, digits))
    return next((j for j, d in reversed(spans) if _luhn_ok(d)), None)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for k, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if k % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ------------------------------------------------------------------ IP addresses


def _ipv4(match: re.Match[str]) -> str:
    try:
        ipaddress.IPv4Address(match.group())
    except ValueError:
        return match.group()
    return IP


def _ipv6(match: re.Match[str]) -> str:
    """``[IP]`` for a valid address; a colon that ends a sentence ("at ::1: down") is kept."""
    text = match.group()
    if not _DIGIT_RE.search(text):  # "::", "a::b", "std::vector" are code more often
        return text
    for candidate in (text, text[:-1] if text.endswith(":") and not text.endswith("::") else ""):
        if candidate and _is_ipv6(candidate):
            return IP + text[len(candidate) :]
    return text


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ phones and bodies


def _phones(text: str) -> str:
    """Replaces the numbers ``phonenumbers`` finds valid (national ones read as US)."""
    pieces, kept_to = [], 0
    for found in phonenumbers.PhoneNumberMatcher(text, DEFAULT_REGION, leniency=_LENIENCY):
        pieces += [text[kept_to : found.start], PHONE]
        kept_to = found.end
    return "".join(pieces) + text[kept_to:] if pieces else text


def _redact_prompt(prompt: Any) -> Any:
    if isinstance(prompt, str):
        return redact(prompt)
    if isinstance(prompt, list):
        return [redact(p) if isinstance(p, str) else p for p in prompt]
    return prompt


def _redact_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": redact(content)}
    if isinstance(content, list):
        return {**message, "content": [_redact_part(p) for p in content]}
    return message


def _redact_part(part: Any) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": redact(part["text"])}
    return part
