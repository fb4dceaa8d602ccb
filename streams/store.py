"""Redis-backed state of the stream processor: the exact response cache and the result store,
both per tenant (the fingerprint covers the tenant; results are keyed by it), the claims of
speculative streamed requests, and the marks of work handed on."""

from __future__ import annotations

import logging
import math

from pydantic import ValidationError
from redis.exceptions import RedisError

from llmq.pipelined import Pipelined
from schemas.names import cache_key, claim_key, handed_key, result_key
from schemas.request import DEFAULT_TENANT
from schemas.result import ChatCompletion, InferenceResult
from schemas.work import CLAIM_CACHE, CLAIM_TTL_S

log = logging.getLogger(__name__)


class RedisStore:
    """Both stores degrade rather than fail: with Redis down, requests flow uncached. The
    commands of a cache hit go in the loop turn's pipeline (Pipelined)."""

    def __init__(self, redis: Pipelined, cache_ttl_s: int, result_ttl_s: int) -> None:
        self._pipelined = redis
        self._redis = redis.client
        self._cache_ttl_s = cache_ttl_s
        self._result_ttl_s = result_ttl_s

    async def cached(self, fingerprint: str) -> ChatCompletion | None:
        """The cached answer for this fingerprint, or None (a miss, or Redis unavailable)."""
        try:
            key = cache_key(fingerprint)
            raw = await self._pipelined.run(lambda pipe: pipe.get(key))
        except RedisError as exc:
            log.warning("response cache unavailable, treating as a miss: %s", exc)
            return None
        if raw is None:
            return None
        try:
            return ChatCompletion.model_validate_json(raw)
        except ValidationError:
            log.warning("dropping an unreadable cache entry %s", fingerprint)
            return None

    async def cache(self, fingerprint: str, response: ChatCompletion) -> None:
        """Keep an answer for identical requests."""
        try:
            key, value = cache_key(fingerprint), response.model_dump_json()
            ttl_s = self._cache_ttl_s
            await self._pipelined.run(lambda pipe: pipe.set(key, value, ex=ttl_s))
        except RedisError as exc:
            log.warning("response cache unavailable, answer not cached: %s", exc)

    async def claim(self, tenant: str, correlation_id: str) -> bool:
        """Claim a speculative streamed request for the cache's answer: False when an engine
        claimed it first (its tokens are on their way), or with Redis away (the engine then
        answers, and nobody gets both)."""
        try:
            before = await self._redis.set(
                claim_key(tenant, correlation_id), CLAIM_CACHE, ex=CLAIM_TTL_S, nx=True, get=True
            )
        except RedisError as exc:
            log.warning(
                "cannot claim %s/%s; its generation answers: %s", tenant, correlation_id, exc
            )
            return False
        return before is None or before == CLAIM_CACHE.encode()

    async def handed_on(self, tenant: str, correlation_id: str, step: str) -> bool:
        """Whether the work that takes over the generation `step` of a request was sent
        (mark_handed_on); False with Redis away: it is sent again rather than lost."""
        try:
            return bool(await self._redis.exists(handed_key(tenant, correlation_id, step)))
        except RedisError as exc:
            log.warning("cannot tell whether %s/%s was handed on: %s", tenant, correlation_id, exc)
            return False

    async def mark_handed_on(
        self, tenant: str, correlation_id: str, step: str, until: float
    ) -> None:
        """Mark the work that takes over the generation `step` of a request as sent, until
        the Unix time `until`; with Redis away, it is not (its completion read again sends it
        again)."""
        try:
            await self._redis.set(
                handed_key(tenant, correlation_id, step), 1, exat=math.ceil(until)
            )
        except RedisError as exc:
            log.warning("cannot mark %s/%s handed on: %s", tenant, correlation_id, exc)

    async def keep_result(self, result: InferenceResult) -> InferenceResult:
        """Store a result by tenant and correlation_id unless one is stored already, and
        return the one to publish: the first. A request served twice (a redelivery after a
        crash) is so answered twice with the very same reply. A rejection whose tenant could
        not be read is kept as the default tenant's, the tenant of a request that names none."""
        if result.correlation_id is None:
            return result
        try:
            key = result_key(result.tenant or DEFAULT_TENANT, result.correlation_id)
            value, ttl_s = result.model_dump_json(), self._result_ttl_s
            first = await self._pipelined.run(
                lambda pipe: pipe.set(key, value, ex=ttl_s, nx=True, get=True)
            )
        except RedisError as exc:
            log.warning("result store unavailable; result only on the reply topic: %s", exc)
            return result
        if not isinstance(first, bytes):  # None: this one is the first (GET is typed bool)
            return result
        try:
            return InferenceResult.model_validate_json(first)
        except ValidationError:
            log.warning(
                "an unreadable stored result for %s; publishing the new one", result.correlation_id
            )
            return result
