"""Subjects in NATS syntax: tokens separated by dots, ``*`` for one token, ``>`` for the rest.

One matcher serves every backend that routes by itself (memory) or filters what its broker
routes more loosely (Redis's glob ``*`` crosses dots; RabbitMQ's ``a.#`` matches ``a``): the
broker's own semantics must never leak into what a subscription receives.
"""

from __future__ import annotations

from functools import lru_cache


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a message on ``subject`` reaches a subscription to ``pattern``.

    ``orders.*`` matches ``orders.created`` but not ``orders.eu.created``; ``orders.>`` matches
    ``orders.created`` and ``orders.eu.created`` but not ``orders``.
    """
    if "*" not in pattern and ">" not in pattern:
        return pattern == subject
    return _matches(tuple(pattern.split(".")), subject)


@lru_cache(maxsize=4096)
def _matches(tokens: tuple[str, ...], subject: str) -> bool:
    parts = subject.split(".")
    for index, token in enumerate(tokens):
        if token == ">":
            return len(parts) > index
        if index >= len(parts):
            return False
        if token != "*" and token != parts[index]:
            return False
    return len(parts) == len(tokens)


def covers(pattern: str, subject: str) -> bool:
    """Whether ``pattern`` matches every subject ``subject`` (a pattern too) matches."""
    outer = pattern.split(".")
    inner = subject.split(".")
    for index, token in enumerate(outer):
        if token == ">":
            return index < len(inner)
        if index >= len(inner) or inner[index] == ">":
            return False
        if token != "*" and token != inner[index]:
            return False
    return len(outer) == len(inner)


def overlaps(first: str, second: str) -> bool:
    """Whether some subject matches both patterns."""
    one = first.split(".")
    two = second.split(".")
    for left, right in zip(one, two, strict=False):
        if left == ">" or right == ">":
            return True
        if left != right and "*" not in (left, right):
            return False
    return len(one) == len(two)


def valid_subject(subject: str, *, wildcards: bool = True) -> bool:
    """Whether ``subject`` is a subject NATS takes (a pattern when ``wildcards``): non-empty
    tokens without white space, ``*`` alone in its token, ``>`` alone and last."""
    if not subject:
        return False
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token or any(character.isspace() for character in token):
            return False
        if token == ">" or token == "*":
            if not wildcards or (token == ">" and index != len(tokens) - 1):
                return False
        elif "*" in token or ">" in token:
            return False
    return True
