"""SNS/SQS for the SQS transport's tests: the session's moto server, with a deployment prefix
of a test's own whose queues are deleted after it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import boto3

from tests.moto_server import CREDENTIALS, REGION


@contextmanager
def sqs_url(endpoint: str) -> Iterator[str]:
    """An ``sqs://`` URL on moto's server at ``endpoint`` with a prefix of its own; the AWS
    credentials moto takes are put in the environment meanwhile (botocore reads them there)."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield f"sqs://?prefix={prefix}&region={REGION}&endpoint_url={endpoint}"
    finally:
        client = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
        for url in client.list_queues(QueueNamePrefix=f"{prefix}-").get("QueueUrls", []):
            client.delete_queue(QueueUrl=url)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
