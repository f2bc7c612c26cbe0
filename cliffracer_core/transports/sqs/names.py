"""What subjects are called on SQS and SNS, and back.

SQS queue names take letters, digits, ``-`` and ``_``, 80 at most; subjects have dots, ``*``,
``>``, ``$`` and anything else. A subject is written reversibly: a letter or digit stays, a dot
becomes ``-``, and every other character becomes ``_`` and a code letter (``_u`` for ``_``,
``_h`` for ``-``, ``_s`` for ``*``, ``_g`` for ``>``, ``_d`` for ``$``, ``_x`` and six hex
digits for the rest). ``_`` is never followed by ``_`` in a written subject, so ``__``
separates the parts of a name.

A queue's name is ``<prefix>-<kind>-<parts>``: the deployment's prefix (letters, digits and
``_``: no ``-``, so that one prefix is never the start of another's names), then

- ``g``: a queue group's queue, ``<group>__<pattern>``, shared by the group's members;
- ``b``: a subscription without a group, ``<client>__<pattern>``, of one connection;
- ``r``: the reply queue of a connection, ``<client>``.

Durable streams (``streams.py``) add ``<prefix>-streams.fifo`` (their registry), and per
stream ``u`` (its unclaimed queue), ``x`` (its dead letters) and per durable consumer ``c``:
``<prefix>-<kind>-<readable part>__<id>``, the id one of the registry's, new in each life of the
stream or consumer (SQS refuses a name deleted less than 60 s ago); an ordered stream's end in
``.fifo`` (FIFO queues, as its topic ``<prefix>-events.fifo``).

A name longer than 80 keeps the start of its parts and ends with a hash of the whole; its kind
is then upper case (``G``, ``B``) and the group and pattern are in the queue's tags, read once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

# SQS's limit on a queue name.
MAX_NAME = 80
# A deployment prefix: short enough to leave room for a subject.
PREFIX = re.compile(r"^[A-Za-z0-9_]{1,32}$")
CODES = {"_": "u", "-": "h", "*": "s", ">": "g", "$": "d"}
CHARACTERS = {code: character for character, code in CODES.items()}
# The tags that hold a hashed name's group and pattern (a tag value takes 256 characters).
GROUP_TAG = "cliffracer-group"
SUBJECT_TAG = "cliffracer-subject"
MAX_TAG = 256
HASH = 16
# FIFO queues' and topics' names end so; a message group or deduplication id takes 128
# printable ASCII characters.
FIFO = ".fifo"
MAX_FIFO_ID = 128
FIFO_ID = re.compile(r"[!-~]{1,128}")


def encode(text: str) -> str:
    """``text`` in the characters a queue name takes, reversibly."""
    out = []
    for character in text:
        if character.isascii() and character.isalnum():
            out.append(character)
        elif character == ".":
            out.append("-")
        elif character in CODES:
            out.append("_" + CODES[character])
        else:
            out.append(f"_x{ord(character):06x}")
    return "".join(out)


def decode(written: str) -> str:
    """The text ``encode`` wrote as ``written``; ``ValueError`` when it did not."""
    out = []
    index = 0
    while index < len(written):
        character = written[index]
        if character == "-":
            out.append(".")
        elif character != "_":
            out.append(character)
        else:
            code = written[index + 1 : index + 2]
            if code == "x":
                out.append(chr(int(written[index + 2 : index + 8], 16)))
                index += 6
            elif code in CHARACTERS:
                out.append(CHARACTERS[code])
            else:
                raise ValueError(f"{written!r} is not a written subject.")
            index += 1
        index += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class QueueName:
    """A subscription's queue: its kind ("g", "b" or "r"), group or client, and pattern."""

    kind: str
    owner: str
    pattern: str = ""


def queue_name(prefix: str, queue: QueueName) -> tuple[str, dict[str, str]]:
    """The queue's SQS name, and the tags it needs (for a hashed name)."""
    if queue.kind == "r":
        return f"{prefix}-r-{queue.owner}", {}
    owner = queue.owner if queue.kind == "b" else encode(queue.owner)
    parts = f"{owner}__{encode(queue.pattern)}"
    name = f"{prefix}-{queue.kind}-{parts}"
    if len(name) <= MAX_NAME:
        return name, {}
    digest = hashlib.sha256(f"{queue.owner}\n{queue.pattern}".encode()).hexdigest()[:HASH]
    room = MAX_NAME - len(prefix) - len(digest) - 5
    name = f"{prefix}-{queue.kind.upper()}-{parts[:room]}__{digest}"
    return name, {GROUP_TAG: queue.owner, SUBJECT_TAG: queue.pattern}


def parse(prefix: str, name: str) -> QueueName | None:
    """What the queue ``name`` of this deployment is for; None for a hashed name (read its
    tags) or a name that is not this deployment's."""
    start = f"{prefix}-"
    if not name.startswith(start) or name[len(start) + 1 : len(start) + 2] != "-":
        return None
    kind, parts = name[len(start)], name[len(start) + 2 :]
    if kind == "r":
        return QueueName("r", parts)
    if kind not in ("g", "b"):
        return None
    owner, separator, pattern = parts.partition("__")
    if not separator:
        return None
    try:
        return QueueName(kind, owner if kind == "b" else decode(owner), decode(pattern))
    except ValueError:
        return None


def is_hashed(prefix: str, name: str) -> bool:
    return name.startswith(f"{prefix}-G-") or name.startswith(f"{prefix}-B-")


def from_tags(name: str, prefix: str, tags: dict[str, str]) -> QueueName | None:
    if GROUP_TAG not in tags or SUBJECT_TAG not in tags:
        return None
    return QueueName(name[len(prefix) + 1].lower(), tags[GROUP_TAG], tags[SUBJECT_TAG])


def filter_policy(pattern: str) -> dict[str, Any] | None:
    """The SNS filter policy on the ``subject`` attribute that lets through what ``pattern``
    matches and as little else as it can say: the subject itself, or the tokens before the
    first wildcard as a prefix (``*`` and ``>`` are then checked by the consumer); None (take
    everything) when the pattern starts with a wildcard."""
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if token in ("*", ">"):
            if index == 0:
                return None
            return {"subject": [{"prefix": ".".join(tokens[:index]) + "."}]}
    return {"subject": [pattern]}


def registry_name(prefix: str) -> str:
    """The FIFO queue whose one message is the deployment's stream registry."""
    return f"{prefix}-streams.fifo"


def durable_name(prefix: str, kind: str, identifier: str, *parts: str, fifo: bool = False) -> str:
    """A durable queue's name: ``kind`` (``u``, ``x``, ``c``), the stream's (and consumer's)
    names as far as they fit, and the registry's ``identifier`` that makes it unique; a FIFO
    queue's ends in ``.fifo``, as SQS requires."""
    readable = "__".join(encode(part) for part in parts)
    suffix = FIFO if fifo else ""
    room = MAX_NAME - len(prefix) - len(kind) - len(identifier) - 4 - len(suffix)
    return f"{prefix}-{kind}-{readable[:room]}__{identifier}{suffix}"


def topic_name(prefix: str) -> str:
    """The deployment's one SNS topic, which every plain publish goes to."""
    return f"{prefix}-events"


def fifo_topic_name(prefix: str) -> str:
    """The deployment's FIFO SNS topic, which carries the events of its ordered streams."""
    return f"{prefix}-events{FIFO}"


def group_id(stream: str) -> str:
    """The FIFO message group of an ordered stream's events: the stream (one order for all its
    subjects, as JetStream stores them), within SQS's 128 characters."""
    if len(stream) <= MAX_FIFO_ID:
        return stream
    return hashlib.sha256(stream.encode()).hexdigest()


def deduplication_id(msg_id: str, sequence: int) -> str:
    """What SQS deduplicates an ordered stream's event by: its ``Nats-Msg-Id`` (hashed when
    SQS would refuse it: over 128 characters, or not printable ASCII), else its sequence."""
    if not msg_id:
        return str(sequence)
    if FIFO_ID.fullmatch(msg_id):
        return msg_id
    return hashlib.sha256(msg_id.encode()).hexdigest()
