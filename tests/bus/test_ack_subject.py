"""A delivery's attempt count is read off its ack subject, as nats-py's metadata reads it."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from triggerbus.bus.jetstream import Delivery


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.tb_run.run_f_c.3.10.9.1700000000000000000.0",  # the first form
        "$JS.ACK.hub.ACCHASH.tb_run.run_f_c.7.10.9.1700000000000000000.0.rnd",  # with a domain
        "$JS.ACK._.ACCHASH.tb_run.run_f_c.2.10.9.1700000000000000000.0",  # no domain, no token
    ],
)
def test_the_attempt_is_the_one_nats_py_reads(reply: str) -> None:
    msg = Msg(None, subject="tb.f.run.c", reply=reply)  # type: ignore[arg-type]
    assert Delivery(msg).num_delivered == msg.metadata.num_delivered


@pytest.mark.parametrize(
    "reply",
    ["_INBOX.abc", "$JS.ACK.a.b.c.4.5.6.7.8"],  # not an ack subject; one of neither form (10)
)
def test_what_nats_py_refuses_is_refused(reply: str) -> None:
    with pytest.raises(NatsError):
        _ = Delivery(Msg(None, subject="x", reply=reply)).num_delivered  # type: ignore[arg-type]
