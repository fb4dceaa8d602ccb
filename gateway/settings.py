"""The front door's settings (LLMQ_* environment variables)."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from schemas.lanes import Lane
from schemas.settings import ServiceSettings
from schemas.tenants import TenantPolicy

REPLY_GRACE_S = 5.0
"""How long past a request's deadline the front door waits for its `expired` reply."""


def _default_instance() -> str:
    return f"gateway-{socket.gethostname()}-{os.getpid()}"


class GatewaySettings(ServiceSettings):
    """One front-door instance; run several behind a load balancer, each on its own."""

    api_host: str = "127.0.0.1"
    """The address the HTTP server binds to (LLMQ_API_HOST); 0.0.0.0 in a container."""
    api_port: int = Field(default=28080, ge=1, le=65535)
    """LLMQ_API_PORT."""
    tenants_file: Path | None = None
    """The tenants file (LLMQ_TENANTS_FILE): its [api_keys] table maps hashed keys to
    tenants. Without keys the front door serves tenant `default` on a loopback address only."""
    api_open_calls: int = Field(default=2048, ge=1, le=1_000_000)
    """Requests open at once, each from its arrival to its answer's end: its body read, its
    answer waited for or streamed (LLMQ_API_OPEN_CALLS). One past it is refused at once, a
    503 with Retry-After, unread: a burst would otherwise grow the door's memory until it is
    OOM-killed with every stream it holds. 2,048: room for many engines' worth of answers at
    once, while what each request holds (its waiter, its answer so far) stays a small part
    of that memory. /healthz and /metrics are not counted. With keys of several tenants, one
    holds at most three quarters of it and of LLMQ_API_BODY_BYTES (gateway.open_calls)."""
    api_body_bytes: int = Field(default=256 << 20, ge=8 << 20)
    """Bytes of the bodies of the requests open at once (LLMQ_API_BODY_BYTES), each counted
    as its Content-Length, up to the 8 MiB a JSON body may take (one sent chunked: 8 MiB): a
    request past it is refused as past LLMQ_API_OPEN_CALLS. A body read whole, then the call
    parsed from it, holds about its size until answered (parsing's peak, about four times,
    is one body's at a time: it runs on the event loop); 256 MiB is a quarter of
    deploy/k8s/gateway.yaml's 1 GiB. At least 8 MiB, so that the largest body fits."""
    api_default_lane: Lane = Lane.INTERACTIVE
    """The lane of a request that names none (LLMQ_API_DEFAULT_LANE)."""
    request_timeout_s: float = Field(default=580.0, gt=0, le=24 * 3600)
    """Each request's deadline: an answer not ready by then is `expired`, 408
    (LLMQ_REQUEST_TIMEOUT_S). 580 s: the 408 (by REPLY_GRACE_S later at most) reaches a
    client before the openai SDK's default timeout of 600 s (LangChain's and LiteLLM's
    too), which would take the silence for a failure and send the request twice more."""

    @property
    def reply_wait_s(self) -> float:
        """How long a route waits for a reply: the deadline, and REPLY_GRACE_S for the
        expired reply itself to arrive."""
        return self.request_timeout_s + REPLY_GRACE_S

    stream_retention_s: float = Field(default=120.0, gt=0, le=3600)
    """How long a streamed answer stays at hand for a coalesced copy or a client that
    resumes with Last-Event-ID (LLMQ_STREAM_RETENTION_S); of the streams this door does not
    serve, and of those it served once ended PARSED_AFTER_END_S, at most
    llmq.stream_logs.UNREAD_BYTES."""
    resume_grace_s: float = Field(default=5.0, ge=0, le=3600)
    """A client that goes away is given this long to resume its stream (Last-Event-ID)
    before its request is cancelled and the worker aborts it (LLMQ_RESUME_GRACE_S)."""
    drain_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM: how long open requests may still finish (LLMQ_DRAIN_TIMEOUT_S)."""
    batch_window_s: float = Field(default=24 * 3600.0, gt=0, le=24 * 3600)
    """How long a batch may run: its completion window, "24h" as OpenAI's; a batch not
    done by then expires (LLMQ_BATCH_WINDOW_S; shorter in tests)."""
    batch_in_flight: int = Field(default=1000, ge=1, le=50_000)
    """Lines of one batch sent and not answered yet, at most (LLMQ_BATCH_IN_FLIGHT): the
    budget holds, and the work topic's backlog, of a batch stay this size."""
    batch_cancel_grace_s: float = Field(default=60.0, ge=0, le=3600)
    """A cancelled batch's lines in flight may finish this long (LLMQ_BATCH_CANCEL_GRACE_S)."""
    batch_retention_s: int = Field(default=30 * 24 * 3600, ge=60)
    """How long files and finished batches are kept (LLMQ_BATCH_RETENTION_S): 30 days; at
    least LLMQ_BATCH_WINDOW_S. A batch's input file is kept this long past the batch's
    expires_at."""
    response_retention_s: int = Field(default=30 * 24 * 3600, ge=60)
    """How long a stored response is kept to be fetched and continued from
    (LLMQ_RESPONSE_RETENTION_S): 30 days, as OpenAI keeps them."""
    instance_id: str = Field(default_factory=_default_instance, min_length=1)
    """Names this instance's Kafka clients (LLMQ_INSTANCE_ID)."""

    @model_validator(mode="after")
    def _batches_are_kept_past_their_window(self) -> Self:
        if self.batch_retention_s < self.batch_window_s:
            raise ValueError(
                f"LLMQ_BATCH_RETENTION_S ({self.batch_retention_s}) is shorter than "
                f"LLMQ_BATCH_WINDOW_S ({self.batch_window_s:g}): a batch, and the files it "
                "reads, would expire while it runs; keep them at least the window"
            )
        return self

    @model_validator(mode="after")
    def _metrics_has_a_port_of_its_own(self) -> Self:
        if self.metrics_port == self.api_port:
            raise ValueError(
                "LLMQ_METRICS_PORT is LLMQ_API_PORT: the front door serves /metrics on its API "
                "port too; give the scrapers' endpoint another port, or 0 for none"
            )
        return self

    def policy(self) -> TenantPolicy:
        """The tenants file; ValueError when the front door must not start with it: no API
        keys while listening beyond loopback would serve anyone as tenant `default`."""
        policy = TenantPolicy.load(self.tenants_file)
        if not policy.api_keys and not _loopback(self.api_host):
            raise ValueError(
                f"no API keys (the [api_keys] of LLMQ_TENANTS_FILE) while listening on "
                f"{self.api_host}: anyone could use llmq. Make keys with `llmq keys new "
                "TENANT`, or listen on 127.0.0.1 (LLMQ_API_HOST)"
            )
        return policy


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
