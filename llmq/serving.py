"""Which models some worker serves, or will once its pool grows again: the workers'
consumer groups, as Kafka says. The front door asks before it sends a request, the stream
processor before it hands work on to another model."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from llmq.groups import EMPTY, Group, describe_groups
from schemas.names import worker_group
from schemas.settings import ServiceSettings

log = logging.getLogger(__name__)


class Serving:
    """Answers "does any worker serve this model?" from the workers' consumer groups, each
    answer kept for `ttl_s`: yes while the group has members, and for a pool scaled to zero
    (its group empty but kept, with its offsets: the autoscaler brings a worker back on
    the first record); no for a model no worker ever served (no group). When Kafka cannot
    say, or before the client started, it answers yes: the request then waits in its topic,
    as it would for a worker that is starting."""

    def __init__(self, settings: ServiceSettings, client_id: str, ttl_s: float = 5.0) -> None:
        self._settings = settings
        self._client_id = f"{client_id}-admin"
        self._admin: AIOKafkaAdminClient | None = None
        self._ttl_s = ttl_s
        self._known: dict[str, tuple[float, bool]] = {}
        self._looking: dict[str, asyncio.Task[None]] = {}
        """The lookups in flight, by model: concurrent callers share one round trip."""
        self._closed = False

    async def start(self) -> None:
        """Connect (aiokafka's clients are made inside the running loop); a client that
        fails to, is cancelled meanwhile, or connects after `close`, is closed, and the
        answers stay yes."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=self._client_id,
            **self._settings.kafka_security().client_kwargs(),
        )
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        if self._closed:  # closed while it connected: nobody would close it
            await admin.close()
            return
        self._admin = admin

    async def close(self) -> None:
        self._closed = True
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()

    async def serves(self, models: list[str]) -> bool:
        """Whether a worker of any of `models` is in its group now. A model already being
        looked up is not asked again: the caller waits for that lookup (a caller cancelled
        meanwhile leaves it running for the others)."""
        now = time.monotonic()
        stale = [m for m in models if now - self._known.get(m, (-1e9, True))[0] > self._ttl_s]
        if stale:
            if self._admin is None:
                return True
            unasked = [m for m in stale if m not in self._looking]
            if unasked:
                lookup = asyncio.create_task(self._look(self._admin, unasked, now))
                self._looking.update(dict.fromkeys(unasked, lookup))
                lookup.add_done_callback(partial(self._forget, unasked))
            lookups = {self._looking[m] for m in stale}
            await asyncio.wait(lookups)
            for done in lookups:
                done.result()  # an error but Kafka's reaches every caller waiting on it
        return any(self._known[m][1] for m in models)

    async def _look(self, admin: AIOKafkaAdminClient, models: list[str], now: float) -> None:
        """Ask Kafka for the groups of `models` and keep the answers, dated `now`."""
        try:
            groups = await describe_groups(admin, [worker_group(m) for m in models])
        except KafkaError as exc:  # kept as yes as long: not a round trip per request
            log.warning("cannot see the workers' groups (assuming they serve): %r", exc)
            self._known.update(dict.fromkeys(models, (now, True)))
            return
        for model in models:
            self._known[model] = (now, servable(groups[worker_group(model)]))

    def _forget(self, models: list[str], _: asyncio.Task[None]) -> None:
        """Their lookup is over: the next stale answer asks again."""
        for model in models:
            del self._looking[model]


def servable(group: Group) -> bool:
    """A worker serves the group's model now, or did and its pool is at zero."""
    return group.members > 0 or group.state == EMPTY
