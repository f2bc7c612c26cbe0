"""The caller of the message being handled: who they are and what they may do."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caller:
    """An authenticated user, or the named system identity, as an access token describes it."""

    user_id: str | None
    username: str
    groups: frozenset[str] = field(default_factory=frozenset)
    permissions: frozenset[str] = field(default_factory=frozenset)
    is_superuser: bool = False
    is_system: bool = False

    def has_perm(self, permission: str) -> bool:
        # As in Django, a superuser passes every check.
        return self.is_superuser or permission in self.permissions

    def has_perms(self, permissions: Iterable[str]) -> bool:
        return all(self.has_perm(permission) for permission in permissions)


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "cliffracer_current_caller", default=None
)


def get_caller() -> Caller | None:
    """Return the caller of the message being handled (None for a public, anonymous call)."""
    return current_caller.get()
