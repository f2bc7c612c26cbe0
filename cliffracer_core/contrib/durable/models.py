"""What durable events keep in the database: processed messages, dead letters, the outbox."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


def new_message_id() -> str:
    return uuid.uuid4().hex


class ProcessedMessage(models.Model):
    """A message a consumer has processed, written in the same transaction as its effects.

    ``processed_once`` (and ``@event(..., idempotent=True)``) insert one; a redelivered
    message finds it and skips its side effects.
    """

    consumer = models.CharField(max_length=200)
    message_id = models.CharField(max_length=255)
    processed_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name = "processed message"
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "message_id"], name="durable_processed_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.consumer}: {self.message_id}"


class DeadLetter(models.Model):
    """An event a durable handler failed on: retrying, or given up on (a dead letter).

    One row per consumer and stream message. Headers are stored without ``Authorization``: a
    token is a secret, and it would have expired by the time anyone replays the event.
    """

    class Status(models.TextChoices):
        # Failed, and JetStream delivers it again after a delay.
        RETRYING = "retrying", "retrying"
        # Out of deliveries: waits for an operator to replay or discard it.
        PENDING = "pending", "pending"
        REPLAYED = "replayed", "replayed"
        DISCARDED = "discarded", "discarded"

    service = models.CharField(max_length=100)
    handler = models.CharField(max_length=100)
    consumer = models.CharField(max_length=200)
    stream = models.CharField(max_length=100)
    stream_sequence = models.BigIntegerField()
    subject = models.CharField(max_length=255, db_index=True)
    # The message's identity for processed_once: its Nats-Msg-Id (or stream:sequence).
    message_id = models.CharField(max_length=255)
    # The event's body, or its first DEAD_LETTER_MAX_PAYLOAD_BYTES bytes: a replay of a cut
    # one reads the whole body from the stream (docs/durable.md).
    payload = models.TextField(blank=True)
    # "utf-8" for the usual JSON body; "base64" for a body that is not text.
    payload_encoding = models.CharField(max_length=10, default="utf-8")
    # The size of the whole body in bytes.
    payload_size = models.PositiveIntegerField(default=0)
    headers = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=128, blank=True)
    # The username the event's token named when it was delivered (its token is not kept).
    caller = models.CharField(max_length=150, blank=True)
    error_type = models.CharField(max_length=255, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    first_failed_at = models.DateTimeField()
    last_failed_at = models.DateTimeField()
    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.RETRYING, db_index=True
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True)
    # The Nats-Msg-Id of the replayed copy.
    replay_message_id = models.CharField(max_length=255, blank=True)

    class Meta:
        verbose_name = "dead letter"
        ordering = ["-last_failed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "stream", "stream_sequence"], name="durable_one_dead_letter"
            )
        ]
        permissions = [("replay_deadletter", "Can replay dead letters")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.service}.{self.handler} ({self.status})"


class OutboxMessage(models.Model):
    """An event to publish once the transaction that wrote it commits (``publish_on_commit``).

    The relay publishes unsent rows to JetStream with ``Nats-Msg-Id`` = ``message_id``, so a
    row published twice (a relay that died before marking it sent) is stored once.
    """

    # Not unique: publishing the same id twice (a deliberate re-announcement) is allowed;
    # JetStream stores it once within the stream's duplicate window.
    message_id = models.CharField(max_length=255, default=new_message_id, db_index=True)
    subject = models.CharField(max_length=255)
    payload = models.TextField()
    # Correlation id and trace context; never a token.
    headers = models.JSONField(default=dict, blank=True)
    # Who caused the event (a username), for audit and the Cliffracer-Origin-Caller header.
    caller = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # A relay claims rows until lease_until; another takes them over once it has passed.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "outbox message"
        ordering = ["id"]
        indexes = [
            # The relay's question, "what is unsent?", reads only unsent rows.
            models.Index(fields=["id"], name="durable_outbox_unsent", condition=Q(sent_at=None)),
            models.Index(fields=["sent_at"], name="durable_outbox_sent"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} ({'sent' if self.sent_at else 'unsent'})"
