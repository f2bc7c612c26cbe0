"""The admin of durable events: dead letters (replay, discard) and the outbox."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from cliffracer_core.contrib.durable import dead_letters
from cliffracer_core.contrib.durable.models import DeadLetter, OutboxMessage, ProcessedMessage


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows the framework writes; people look at them, or act on them through actions."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "status",
        "service",
        "handler",
        "subject",
        "error_type",
        "attempts",
        "first_failed_at",
        "last_failed_at",
    )
    list_filter = ("status", "service", "handler", "subject")
    search_fields = ("subject", "message_id", "correlation_id", "error_message")
    date_hierarchy = "last_failed_at"
    actions = ("replay", "discard")
    readonly_fields = (
        "status",
        "service",
        "handler",
        "consumer",
        "subject",
        "stream",
        "stream_sequence",
        "message_id",
        "correlation_id",
        "caller",
        "error_type",
        "error_message",
        "attempts",
        "first_failed_at",
        "last_failed_at",
        "resolved_at",
        "resolved_by",
        "replay_message_id",
        "pretty_payload",
        "pretty_headers",
    )
    exclude = ("payload", "payload_encoding", "headers")

    @admin.display(description="payload")
    def pretty_payload(self, letter: DeadLetter) -> str:
        text = letter.payload
        if letter.payload_encoding == "utf-8":
            with contextlib.suppress(ValueError):
                text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        else:
            text = f"({letter.payload_encoding}) {text}"
        return format_html("<pre>{}</pre>", text)

    @admin.display(description="headers (without Authorization)")
    def pretty_headers(self, letter: DeadLetter) -> str:
        return format_html("<pre>{}</pre>", json.dumps(letter.headers, indent=2))

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable.replay_deadletter")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("durable.change_deadletter")

    @admin.action(description="Replay the selected dead letters", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        by = request.user.get_username()
        replayed, errors = dead_letters.replay(queryset.order_by("id"), by=by)
        if replayed:
            self.message_user(request, f"Replayed {replayed} dead letter(s).", messages.SUCCESS)
        for error in errors:
            self.message_user(request, error, messages.WARNING)

    @admin.action(description="Discard the selected dead letters", permissions=["discard"])
    def discard(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        count = dead_letters.discard(queryset, by=request.user.get_username())
        self.message_user(request, f"Discarded {count} dead letter(s).", messages.SUCCESS)


class SentFilter(admin.SimpleListFilter):
    title = "sent"
    parameter_name = "sent"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "not yet"), ("yes", "sent")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "no":
            return queryset.filter(sent_at=None)
        if self.value() == "yes":
            return queryset.exclude(sent_at=None)
        return queryset


@admin.register(OutboxMessage)
class OutboxMessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "subject", "created_at", "sent_at", "attempts", "last_error")
    list_filter = (SentFilter, "subject")
    search_fields = ("subject", "message_id")
    date_hierarchy = "created_at"


@admin.register(ProcessedMessage)
class ProcessedMessageAdmin(ReadOnlyAdmin):
    list_display = ("consumer", "message_id", "processed_at")
    list_filter = ("consumer",)
    search_fields = ("message_id",)
