"""Who may subscribe or publish to which subjects over WebSocket.

A rule names a subject pattern and the permissions that allow subscribing to it or publishing
to it. Rules come from the ``SUBJECT_RULES`` setting and from service classes
(``Service.subject_rules``), so the service that owns the subjects declares who sees them.
Where no rule allows, the answer is no; a superuser passes every rule, as everywhere in Django,
but nobody subscribes to the system's own subjects (RPC requests, ``$SRV``, inboxes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cliffracer_core.core.auth.identity import Caller
from cliffracer_core.core.settings import cliffracer_settings

USER_ID = "{user_id}"
MAX_SUBJECT_LENGTH = 256


@dataclass(frozen=True)
class SubjectRule:
    """Permissions for one subject pattern.

    ``subscribe`` and ``publish`` list the permissions a caller needs (all of them); an empty
    list lets any signed-in user, None lets nobody. ``"{user_id}"`` in the subject stands for
    the caller's own user id, so ``"notifications.user.{user_id}"`` is each user's own subject.
    """

    subject: str
    subscribe: tuple[str, ...] | None = ()
    publish: tuple[str, ...] | None = None

    @classmethod
    def from_setting(cls, value: Any) -> SubjectRule:
        if isinstance(value, SubjectRule):
            return value
        if not isinstance(value, dict) or not isinstance(value.get("subject"), str):
            raise ValueError(f"A subject rule is a dict with a 'subject' string, not {value!r}.")
        unknown = set(value) - {"subject", "subscribe", "publish"}
        if unknown:
            raise ValueError(f"Unknown keys in subject rule {value!r}: {sorted(unknown)}.")
        return cls(
            subject=value["subject"],
            subscribe=_permissions(value.get("subscribe", ())),
            publish=_permissions(value.get("publish")),
        )

    def pattern_for(self, caller: Caller) -> str | None:
        """The rule's subject for ``caller``; None when it names a user id the caller lacks."""
        if USER_ID not in self.subject:
            return self.subject
        if not caller.user_id or not is_literal_token(caller.user_id):
            return None
        return self.subject.replace(USER_ID, caller.user_id)


def _permissions(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise ValueError(f"Permissions are a list of 'app_label.codename' strings, not {value!r}.")


def is_literal_token(token: str) -> bool:
    return bool(token) and not any(character in token for character in ".*> \t\r\n")


def subject_error(subject: Any, *, wildcards: bool) -> str | None:
    """Why ``subject`` is not a valid subject (or pattern, with ``wildcards``); None if it is."""
    if not isinstance(subject, str) or not subject:
        return "A subject is a non-empty string."
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"A subject is at most {MAX_SUBJECT_LENGTH} characters."
    tokens = subject.split(".")
    for position, token in enumerate(tokens):
        if token in ("*", ">"):
            if not wildcards:
                return "Events are published to a subject without wildcards."
            if token == ">" and position != len(tokens) - 1:
                return "'>' may only be the last token of a subject."
        elif not is_literal_token(token) or not token.isprintable():
            return f"{subject!r} is not a valid subject: tokens are non-empty, without spaces."
    return None


def is_reserved(subject: str) -> bool:
    """Whether ``subject`` reaches into the system's own subjects, which nobody may use here.

    RPC requests carry their callers' tokens and bodies; ``$SRV``, ``$JS``, ``$SYS``, inboxes
    and the channel layer's subjects are plumbing. A pattern that starts with a wildcard would
    cover all of them.
    """
    first = subject.split(".", 1)[0]
    return first in ("*", ">", cliffracer_settings.RPC_SUBJECT_PREFIX) or first.startswith(
        ("$", "_")
    )


def covers(rule: str, subject: str) -> bool:
    """Whether every subject that ``subject`` matches is matched by the pattern ``rule``."""
    rule_tokens = rule.split(".")
    tokens = subject.split(".")
    for position, rule_token in enumerate(rule_tokens):
        if rule_token == ">":
            return position < len(tokens)
        if position >= len(tokens):
            return False
        token = tokens[position]
        if token == ">":
            return False
        if rule_token == "*":
            continue
        if token == "*" or token != rule_token:
            return False
    return len(tokens) == len(rule_tokens)


def configured_rules() -> list[SubjectRule]:
    """The rules of the ``SUBJECT_RULES`` setting and of every installed service class."""
    from cliffracer_core.core.apps import service_app_configs

    rules = [SubjectRule.from_setting(value) for value in cliffracer_settings.SUBJECT_RULES]
    for config in service_app_configs():
        service_class = config.service_class
        if service_class is not None:
            rules.extend(SubjectRule.from_setting(value) for value in service_class.subject_rules)
    return rules


def may(caller: Caller, subject: str, action: str, rules: Iterable[SubjectRule]) -> bool:
    """Whether ``caller`` may ``action`` ("subscribe" or "publish") on ``subject``."""
    if is_reserved(subject):
        return False
    if caller.is_superuser:
        return True
    for rule in rules:
        needed = rule.subscribe if action == "subscribe" else rule.publish
        if needed is None or not caller.has_perms(needed):
            continue
        pattern = rule.pattern_for(caller)
        if pattern is not None and covers(pattern, subject):
            return True
    return False
