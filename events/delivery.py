"""Where a JetStream message sits in the stream, read straight from its reply subject.

nats-py's `Msg.metadata` parses every token of the reply subject into dataclasses and a datetime;
a reader needs only the sequences and the pending count, and that parse was a quarter of a
rebuild's CPU. The subject is `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`
(v1, 9 tokens) or, from servers with domains, `$JS.ACK.<domain>.<account>.<stream>.…` (v2, 12
tokens, sometimes 11): the same fields two places later. Anything else goes to nats-py."""

from __future__ import annotations

from nats.aio.msg import Msg

_V1 = 9


def _tokens(msg: Msg) -> list[str] | None:
    reply = msg.reply
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    return tokens if len(tokens) == _V1 or len(tokens) >= _V1 + 2 else None


def stream_sequence(msg: Msg) -> int:
    tokens = _tokens(msg)
    if tokens is None:
        return int(msg.metadata.sequence.stream)
    return int(tokens[5] if len(tokens) == _V1 else tokens[7])


def consumer_sequence(msg: Msg) -> int:
    tokens = _tokens(msg)
    if tokens is None:
        return int(msg.metadata.sequence.consumer)
    return int(tokens[6] if len(tokens) == _V1 else tokens[8])


def pending(msg: Msg) -> int:
    tokens = _tokens(msg)
    if tokens is None:
        return int(msg.metadata.num_pending or 0)
    return int(tokens[8] if len(tokens) == _V1 else tokens[10])
