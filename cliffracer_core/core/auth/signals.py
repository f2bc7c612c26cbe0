"""Announce saved and deleted users, so that every process checks their tokens again."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

from cliffracer_core.core.auth.users import USERS_CHANGED_SUBJECT, user_status

logger = logging.getLogger("cliffracer.auth")


def user_saved(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """A user was saved: announce it, unless the save cannot have changed ``is_active``
    (a login saves ``last_login`` alone)."""
    if update_fields is not None and "is_active" not in update_fields:
        return
    announce_user_change(instance.pk)


def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    announce_user_change(instance.pk)


def announce_user_change(user_id: Any) -> None:
    """Once the transaction commits, forget the user here and tell every other process."""
    if user_id is None:
        return

    def announce() -> None:
        user_status.forget(str(user_id))
        from cliffracer_core.core.client import publish

        try:
            publish(USERS_CHANGED_SUBJECT, {"user_id": str(user_id)})
        except Exception as error:  # noqa: BLE001  (the change stands; caches expire anyway)
            logger.warning(
                "Could not announce the change of user %s (%s); other processes notice it "
                "within USER_CHECK_INTERVAL.",
                user_id,
                type(error).__name__,
            )

    transaction.on_commit(announce)
