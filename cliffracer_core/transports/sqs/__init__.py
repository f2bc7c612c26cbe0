"""The SNS/SQS transport: SQS queues for subscriptions and replies, an SNS topic for events."""

from cliffracer_core.transports.sqs.transport import SqsTransport

__all__ = ["SqsTransport"]
