"""Whether the user a token names still exists and is active, as the database says.

A signed access token stays valid until it expires, even after its user is deleted or
deactivated; REST refuses such a token because simplejwt reads the user, and services and
WebSocket sockets must too. Each process asks the database once per user and trusts the
answer for ``USER_CHECK_INTERVAL`` seconds (30 by default: a token lives minutes, and one
indexed query per active user per half minute costs nothing). Saving or deleting a user
announces it on ``USERS_CHANGED_SUBJECT`` (``cliffracer_core.core.auth.signals``), and every
process forgets what it knew of that user at once. An announcement only makes a process ask
the database again, so a forged one does no harm.

The system identity names no user and is never looked up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict

from cliffracer_core.core.auth.identity import Caller
from cliffracer_core.core.errors import NotAuthenticated, Unavailable
from cliffracer_core.core.settings import cliffracer_settings

logger = logging.getLogger("cliffracer.auth")

# Published (plain NATS, broadcast) with {"user_id": "<id>"} when a user is saved or deleted.
USERS_CHANGED_SUBJECT = "_cliffracer.users.changed"
# Users remembered per process; the least recently used are forgotten first.
CACHE_SIZE = 10_000

ACTIVE, INACTIVE, MISSING = "active", "inactive", "missing"


class UserStatus:
    """What this process last read of each user: active, inactive or missing, and when."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.cache: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.lock = threading.Lock()

    def cached(self, user_id: str) -> str | None:
        """The state read less than ``USER_CHECK_INTERVAL`` ago, or None."""
        entry = self.cache.get(user_id)
        if entry is None:
            return None
        state, read_at = entry
        if time.monotonic() - read_at > float(cliffracer_settings.USER_CHECK_INTERVAL):
            return None
        return state

    def read(self, user_id: str) -> str:
        """Ask the database (sync code only); a stale answer serves if the database fails."""
        from django.contrib.auth import get_user_model

        try:
            active = (
                get_user_model()
                .objects.filter(pk=user_id)
                .values_list("is_active", flat=True)
                .first()
            )
        except (ValueError, TypeError):  # an id that is no primary key of this user model
            active = None
        except Exception as error:
            stale = self.cache.get(user_id)
            if stale is not None:
                logger.warning(
                    "Cannot read user %s (%s); using what was read before.",
                    user_id,
                    type(error).__name__,
                )
                return stale[0]
            raise Unavailable(
                "The caller's account cannot be checked now.", type="identity_unavailable"
            ) from None
        state = MISSING if active is None else ACTIVE if active else INACTIVE
        with self.lock:
            self.cache[user_id] = (state, time.monotonic())
            self.cache.move_to_end(user_id)
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return state

    def forget(self, user_id: str | None = None) -> None:
        """Forget one user (a change was announced), or everyone."""
        with self.lock:
            if user_id is None:
                self.cache.clear()
            else:
                self.cache.pop(str(user_id), None)


user_status = UserStatus()


def changed_user(body: bytes) -> str | None:
    """The user id an announcement on ``USERS_CHANGED_SUBJECT`` names, if it names one."""
    try:
        user_id = json.loads(body)["user_id"]
    except (ValueError, TypeError, KeyError):
        return None
    return user_id if isinstance(user_id, str) and 0 < len(user_id) <= 64 else None


def needs_check(caller: Caller | None) -> bool:
    """Whether ``caller`` names a user whose state is not known fresh in this process."""
    return (
        caller is not None
        and caller.user_id is not None
        and user_status.cached(caller.user_id) is None
    )


def require_active(caller: Caller | None) -> Caller | None:
    """Return ``caller``, or raise 401 when its user was deleted or deactivated.

    Reads the database when this process's answer is older than ``USER_CHECK_INTERVAL``:
    call it from sync code, or after ``needs_check`` said no, from async code.
    """
    if caller is None or caller.user_id is None:
        return caller
    state = user_status.cached(caller.user_id) or user_status.read(caller.user_id)
    if state == MISSING:
        raise NotAuthenticated("The user of this token no longer exists.", type="user_not_found")
    if state == INACTIVE:
        raise NotAuthenticated("The user of this token is inactive.", type="user_inactive")
    return caller
