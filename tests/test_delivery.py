"""The stream position read from a reply subject equals nats-py's own parse of it. (Real
deliveries go through it in every projection and rebuild test.)"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from events.delivery import consumer_sequence, pending, stream_sequence

counts = st.integers(min_value=0, max_value=2**63)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_ABC0123456789-", min_size=1, max_size=12)


def message(reply: str) -> Msg:
    return Msg(_client=None, subject="ev.x", reply=reply, data=b"")  # type: ignore[arg-type]


@given(names, names, counts, counts, counts, counts, counts)
def test_v1_reply_subjects(
    stream: str, consumer: str, delivered: int, sseq: int, cseq: int, ts: int, left: int
) -> None:
    msg = message(f"$JS.ACK.{stream}.{consumer}.{delivered}.{sseq}.{cseq}.{ts}.{left}")
    assert stream_sequence(msg) == msg.metadata.sequence.stream == sseq
    assert consumer_sequence(msg) == msg.metadata.sequence.consumer == cseq
    assert pending(msg) == msg.metadata.num_pending == left


@given(
    names,
    names,
    names,
    names,
    counts,
    counts,
    counts,
    counts,
    counts,
    st.sampled_from(["", ".tok"]),
)
def test_v2_reply_subjects_with_domain_and_account(
    domain: str,
    account: str,
    stream: str,
    consumer: str,
    delivered: int,
    sseq: int,
    cseq: int,
    left: int,
    ts: int,
    tail: str,
) -> None:
    reply = f"$JS.ACK.{domain}.{account}.{stream}.{consumer}.{delivered}.{sseq}.{cseq}.{ts}.{left}"
    msg = message(reply + tail)
    assert stream_sequence(msg) == msg.metadata.sequence.stream == sseq
    assert consumer_sequence(msg) == msg.metadata.sequence.consumer == cseq
    assert pending(msg) == msg.metadata.num_pending == left
