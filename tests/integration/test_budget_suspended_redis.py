"""A tenant with budget 0 is suspended (docs/budgets.md), against a real redis-server of this
module's own: it was told it had spent $0.00 of its $0.00 budget and to retry at the reset,
hours away; the SDK was sent a Retry-After, and the Batch API resent its lines at the reset,
refused again, until the batch expired."""

from __future__ import annotations

import json
import time

import pytest
import redis.asyncio as aioredis

from gateway.batch.collector import outcome
from gateway.door import ApiError
from schemas.errors import ErrorCode
from schemas.tenants import TenantLimits
from streams.budget import BudgetExceededError, Budgets, Hold
from streams.replies import from_error
from tests.integration.helpers import run_async

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.usefixtures("sync")]

SUSPENDED = "tenant idle is suspended: its budget_usd is 0 in the tenants file"


def test_a_suspended_tenant_is_told_so_with_no_wait_and_its_batch_lines_fail(
    redis_port: int,
) -> None:
    async def refusals(client: aioredis.Redis) -> list[BudgetExceededError]:
        caught = []
        for usd in (0.0, 0.25):  # a free request is refused too
            with pytest.raises(BudgetExceededError) as refused:
                hold = Hold(f"c-{usd}", usd, time.time() + 3600)
                await Budgets(client).reserve("idle", TenantLimits(budget_usd=0), hold)
            caught.append(refused.value)
        return caught

    for error in run_async(redis_port, refusals):
        assert (error.code, error.message, error.retry_after_s) == (
            ErrorCode.BUDGET_EXCEEDED,
            SUSPENDED,
            None,
        )
        http = ApiError(error)
        assert http.status == 429 and "Retry-After" not in http.headers
        assert http.headers["x-should-retry"] == "false"
        reply = from_error(error, "batch_x.0.1", "idle")
        line = outcome(0, 1, "first", reply, expires_at=time.time() + 2 * 86_400)
        response = line.body["response"]
        assert (line.kind, response["status_code"]) == ("error", 429), json.dumps(line.body)
        assert response["body"]["error"]["message"] == SUSPENDED
