"""Which pools work is sent to (by the front door, and on by the stream processor): those with
workers, and those scaled to zero."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import cast

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from llmq.groups import DEAD, EMPTY, Group, describe_groups
from llmq.serving import Serving, servable
from schemas.settings import ServiceSettings


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (Group(2, "Stable"), True),
        (Group(1, "PreparingRebalance"), True),
        (Group(0, EMPTY), True),  # scaled to zero: the first record brings a worker back
        (Group(0, DEAD), False),  # no worker ever served it
    ],
)
def test_a_pool_is_servable_with_workers_or_scaled_to_zero(group: Group, expected: bool) -> None:
    assert servable(group) is expected


class Admin:
    """Kafka's admin client answering DescribeGroups for every group with `error` (0: none),
    `members` members and `state`; counts the questions."""

    def __init__(self, error: int = 0, members: int = 0, state: str = "") -> None:
        self.error, self.members, self.state = error, members, state
        self.asked = 0

    async def describe_consumer_groups(self, groups: list[str]) -> list[SimpleNamespace]:
        self.asked += 1
        entry = (self.error, groups[0], self.state, "consumer", "", ["m"] * self.members)
        return [SimpleNamespace(groups=[entry])]


def test_a_group_kafka_answers_with_an_error_is_not_read_as_a_pool_without_workers() -> None:
    """A coordinator moving (a broker restart) answers with an error, no state and no members:
    read as a group, no worker served the model, and the stream processor skipped it."""
    admin = Admin(error=16)  # NOT_COORDINATOR
    with pytest.raises(KafkaError):
        asyncio.run(describe_groups(cast(AIOKafkaAdminClient, admin), ["llmq.workers.m"]))
    found = asyncio.run(describe_groups(cast(AIOKafkaAdminClient, Admin()), ["llmq.workers.m"]))
    assert found == {"llmq.workers.m": Group(0, "")}


def test_when_kafka_cannot_say_every_model_counts_as_served_for_a_while() -> None:
    """Not a round trip per request while the admin API fails (an ACL denying it, say)."""
    admin = Admin(error=16)
    serving = Serving(ServiceSettings(), "test")
    serving._admin = cast(AIOKafkaAdminClient, admin)

    async def twice() -> list[bool]:
        return [await serving.serves(["m"]), await serving.serves(["m"])]

    assert asyncio.run(twice()) == [True, True]
    assert admin.asked == 1


def test_a_client_that_connects_after_close_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream processor closes its watcher as it stops, maybe while it still connects."""
    made: list[Connecting] = []

    class Connecting:
        def __init__(self, **_: object) -> None:
            self.closed = False
            made.append(self)

        async def start(self) -> None:
            await serving.close()  # the app stops meanwhile

        async def close(self) -> None:
            self.closed = True

    monkeypatch.setattr("llmq.serving.AIOKafkaAdminClient", Connecting)
    serving = Serving(ServiceSettings(), "test")
    asyncio.run(serving.start())
    assert [c.closed for c in made] == [True]
    assert asyncio.run(serving.serves(["m"])), "never started: every model counts as served"


class SlowAdmin(Admin):
    """An Admin that answers once `answer` is set: callers meanwhile overlap."""

    def __init__(self, error: int = 0) -> None:
        super().__init__(error=error, members=1)
        self.answer = asyncio.Event()

    async def describe_consumer_groups(self, groups: list[str]) -> list[SimpleNamespace]:
        await self.answer.wait()
        return await super().describe_consumer_groups(groups)


@pytest.mark.parametrize("error", [0, 16])  # answered; NOT_COORDINATOR: cannot say, so yes
def test_callers_whose_answer_went_stale_together_share_one_lookup(error: int) -> None:
    """When the cached answer lapses under load, one DescribeGroups asks for all the callers,
    not one each; a caller that gives up meanwhile leaves the lookup to the others."""
    admin = SlowAdmin(error)
    serving = Serving(ServiceSettings(), "test")
    serving._admin = cast(AIOKafkaAdminClient, admin)

    async def crowd() -> list[bool]:
        callers = [asyncio.create_task(serving.serves(["m"])) for _ in range(20)]
        await asyncio.sleep(0)  # each caller now waits on Kafka
        callers[0].cancel()
        admin.answer.set()
        await asyncio.wait(callers)
        assert callers[0].cancelled()
        return [c.result() for c in callers[1:]]

    assert asyncio.run(crowd()) == [True] * 19
    assert admin.asked == 1
