"""A request whose send on timed out waiting for Kafka's ack keeps its budget hold: the record
may still be delivered, and then generated and metered, which a released hold would not
cover (the budget would admit others into its room). The hold expires by itself."""

from __future__ import annotations

import pytest

from schemas.names import DLQ, REQUESTS_KEYED, WORK_PREFIX
from tests.unit.stages import FailingSend, FakeLedger, Pipeline, raw_request, result_of

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("topic", [REQUESTS_KEYED, WORK_PREFIX], ids=["admission", "dedupe"])
@pytest.mark.parametrize(
    ("error", "released"),
    [(TimeoutError(), []), (ConnectionError("broker gone"), ["release t-1"])],
    ids=["ack-timed-out", "send-failed"],
)
def test_a_send_whose_ack_timed_out_keeps_the_hold_one_that_failed_gives_it_back(
    topic: str, error: Exception, released: list[str]
) -> None:
    ledger = FakeLedger()
    send = FailingSend(topic, 1, error)
    Pipeline(ledger=ledger, send=send).on_request(None, raw_request(cid="t-1"))
    dead, reply = send.sent
    assert dead.topic == DLQ
    assert result_of(reply).error is not None and result_of(reply).correlation_id == "t-1"
    assert ledger.calls == released
