"""Prompt redaction: each kind of personal data in the formats people write it, and the
numbers, dates, times and version strings that must stay."""

from __future__ import annotations

import copy

import pytest

from observability.redact import redact, redact_messages


@pytest.mark.parametrize(
    "email",
    [
        "john.doe@example.com",
        "JANE_99@mail.example.org",
        "first.last+tag@sub.example.co.uk",
        "a-b%c@x-y.io",
        "user1234567890@example.com",  # digits in the local part are not a phone
    ],
)
def test_emails(email: str) -> None:
    assert redact(f"write to {email}, thanks") == "write to [EMAIL], thanks"


@pytest.mark.parametrize(
    "card",
    [
        "4111111111111111",  # Visa, whole
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",  # Mastercard
        "3782 822463 10005",  # Amex 4-6-5
        "378282246310005",
        "6011000990139424",  # Discover
        "4222222222222",  # 13 digits
        "6759649826438453",  # Maestro
    ],
)
def test_cards(card: str) -> None:
    assert redact(f"my card: {card}.") == "my card: [CARD]."


def test_a_card_after_other_numbers_in_the_same_run() -> None:
    assert redact("order 12 4111 1111 1111 1111 done") == "order 12 [CARD] done"
    assert redact("4111 1111 1111 1111 and 22") == "[CARD] and 22"


@pytest.mark.parametrize(
    "phone",
    [
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "4155552671",
        "+1 415 555 2671",
        "1-800-555-0199",
        "+44 20 7946 0958",  # international: its own country's rules
        "+33 1 42 68 53 00",
        "+49 30 901820",
    ],
)
def test_phones(phone: str) -> None:
    assert redact(f"call {phone} today") == "call [PHONE] today"


@pytest.mark.parametrize(
    "address",
    [
        "192.168.1.10",
        "8.8.8.8",
        "255.255.255.255",
        "2001:db8::1",
        "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
        "fe80::1%eth0",
        "::1",
        "::ffff:192.0.2.1",
    ],
)
def test_ip_addresses(address: str) -> None:
    assert redact(f"host {address} is down") == "host [IP] is down"


def test_ip_addresses_with_ports_and_punctuation() -> None:
    assert redact("GET 10.0.0.1:8080/x") == "GET [IP]:8080/x"
    assert redact("[2001:db8::1]:443") == "[[IP]]:443"
    assert redact("bound to ::1: refused") == "bound to [IP]: refused"


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "12345 apples, 1234567 people, 99 bottles, the year 2023, 1000000 steps",
        "On 2024-01-15 at 12:30 (or 12:30:45), 01/15/2024, 15.01.2024",
        "ts 2024-01-15T12:30:45Z, epoch 1705321845",
        "version 1.2.3, v1.2.3.4, python 3.11.9, pi 3.14159265358979323846",
        "not a card: 4111111111111112 nor 1234567890123456",  # 16 digits, Luhn fails
        "4111 1111 1111 1112",
        "no address: 10.0.0.256, 1.2.3.4.5, de:ad:be:ef:00:11",
        "code: std::vector<int>, a::b, x ::= y",
        "price $1,234,567.89, ISBN 978-3-16-148410-0, zip 94105-1234",
        "call 555-1234",  # too short to be a valid number
        "",
    ],
)
def test_what_must_stay(text: str) -> None:
    assert redact(text) == text


def test_mixed_text() -> None:
    text = (
        "Hi, I am John (john.doe@example.com), call +1 415 555 2671 or 415-555-2671. "
        "Card 4111 1111 1111 1111, server 10.0.0.12 / 2001:db8::7, v1.2.3 on 2024-01-15 "
        "12:30, order 123456."
    )
    assert redact(text) == (
        "Hi, I am John ([EMAIL]), call [PHONE] or [PHONE]. "
        "Card [CARD], server [IP] / [IP], v1.2.3 on 2024-01-15 12:30, order 123456."
    )


def test_redacting_twice_changes_nothing_more() -> None:
    once = redact("mail a@b.com, card 4111111111111111, ip 1.2.3.4, phone 415-555-2671")
    assert redact(once) == once == "mail [EMAIL], card [CARD], ip [IP], phone [PHONE]"


def test_chat_body_is_redacted_in_a_copy() -> None:
    body = {
        "model": "m",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I am a@b.com"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "call 415-555-2671"},
                    {"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}},
                ],
            },
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
    }
    original = copy.deepcopy(body)
    out = redact_messages(body)
    assert body == original  # the request itself is untouched
    assert out["model"] == "m" and out["temperature"] == 0
    assert [m.get("content") for m in out["messages"][:2]] == ["Be brief.", "I am [EMAIL]"]
    text_part, image_part = out["messages"][2]["content"]
    assert text_part == {"type": "text", "text": "call [PHONE]"}
    assert image_part == body["messages"][2]["content"][1]
    assert out["messages"][3] == body["messages"][3]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("card 4111111111111111", "card [CARD]"),
        (["a@b.com", "plain"], ["[EMAIL]", "plain"]),
        ([1, 2, 3], [1, 2, 3]),  # token ids
    ],
)
def test_completions_prompt(prompt: object, expected: object) -> None:
    body = {"model": "m", "prompt": prompt}
    assert redact_messages(body) == {"model": "m", "prompt": expected}
    assert body["prompt"] == prompt


def test_a_body_without_text_is_copied_as_is() -> None:
    body = {"model": "m", "max_tokens": 5}
    out = redact_messages(body)
    assert out == body and out is not body
