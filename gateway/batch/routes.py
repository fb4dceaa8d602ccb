"""OpenAI's Files and Batches routes: upload a JSONL file of requests, run it as a batch,
follow it, cancel it, read its output and error files."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from gateway.batch.lines import ENDPOINTS
from gateway.batch.objects import FINAL, batch_object, file_object
from gateway.batch.store import MAX_FILE_BYTES, TOO_LARGE, BatchStore, new_id
from gateway.door import ApiError, FrontDoor, Tenant, body_chunks, json_body
from gateway.openai import checked_metadata
from schemas.errors import ErrorCode, LlmqError

COMPLETION_WINDOW = "24h"
READ_CHUNK = 1 << 20
MAX_BATCHES_LISTED = 100
"""The most batches one page lists, as OpenAI's (20 by default)."""
MAX_FILES_LISTED = 10_000
"""The most files one page lists, and by default, as OpenAI's."""
MAX_GONE_PASSED = 1_000
"""Ids of objects gone (expired, deleted) a listing passes, and drops from the index, in one
step, and in all once it has an object to show: its page may then be short, `has_more` true
(OpenAI's SDK asks on after the page's last object; it stops at an empty page). A listing
by purpose reads this many ids a step."""
MAX_UPLOAD_BYTES = MAX_FILE_BYTES + (64 << 10)
"""The most an upload's body may carry: a file at OpenAI's limit, its multipart framing and
the purpose field."""
EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)
"""OpenAI's bounds on the seconds of a file's `expires_after` and of a batch's
`output_expires_after`."""


def _parts(request: Request) -> tuple[FrontDoor, BatchStore]:
    door: FrontDoor = request.app.state.door
    return door, door.batches


router = APIRouter()


def _bad(message: str, status: int = 400) -> ApiError:
    return ApiError(LlmqError(ErrorCode.INVALID_REQUEST, message), status)


@router.post("/v1/files")
async def upload(request: Request, tenant: Tenant) -> dict[str, Any]:
    """Keep a batch input file: JSONL, one request a line (checked when a batch runs it),
    for its `expires_after` if it names one (see BatchStore.create_file)."""
    _, store = _parts(request)
    form = await _form(request)
    try:
        return file_object(await _keep(store, tenant, form))
    finally:
        await form.close()


async def _keep(store: BatchStore, tenant: str, form: FormData) -> dict[str, str]:
    """The form's file, stored line by line: its fields."""
    file, purpose = form.get("file"), form.get("purpose")
    if not isinstance(file, UploadFile):
        raise _bad("no file: send it as the multipart field `file`")
    if purpose != "batch":
        raise _bad(f"purpose {purpose!r} is not served: llmq keeps files for batches (batch)")
    keep_s = _expires_after("expires_after", _form_policy(form, "expires_after"))

    async def chunks() -> AsyncIterator[bytes]:
        while chunk := await file.read(READ_CHUNK):
            yield chunk

    try:
        name = file.filename or "upload.jsonl"
        return await store.create_file(tenant, name, purpose, chunks(), expires_after_s=keep_s)
    except LlmqError as exc:
        raise ApiError(exc) from None


async def _form(request: Request) -> FormData:
    """The upload's multipart form. A body declared past MAX_UPLOAD_BYTES is refused unread,
    one that grows past it as it comes (chunked) is refused there: never spooled whole."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "multipart/form-data":
        raise _bad("send the file as multipart/form-data, with the fields file and purpose")
    chunks = body_chunks(request, MAX_UPLOAD_BYTES, _bad(TOO_LARGE))
    parser = MultiPartParser(request.headers, chunks, max_files=1, max_fields=8)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise _bad(f"the upload is not a multipart form llmq can read: {exc.message}") from None


@router.get("/v1/files")
async def files(
    request: Request,
    tenant: Tenant,
    *,
    after: str | None = None,
    limit: int = MAX_FILES_LISTED,
    order: str = "desc",
    purpose: str | None = None,
) -> dict[str, Any]:
    """The tenant's files, newest first (`order` asc: oldest), of one `purpose` if named."""
    if order not in ("asc", "desc"):
        raise _bad("order must be asc or desc")
    page = Page("files", after, limit, MAX_FILES_LISTED, order == "asc", purpose)
    return await _listed(request, tenant, page)


@router.get("/v1/files/{file_id}")
async def file_info(file_id: str, request: Request, tenant: Tenant) -> dict[str, Any]:
    _, store = _parts(request)
    return file_object(await _file(store, file_id, tenant))


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request, tenant: Tenant) -> dict[str, Any]:
    """Forget a file and its lines; 409 while a batch still reads it (its input) or writes it
    (its output or error file, until the batch ends)."""
    _, store = _parts(request)
    meta = await _file(store, file_id, tenant)
    if "batch" in meta:
        found = await store.batch(meta["batch"], tenant)
        running = [] if found is None else [(found["id"], found["status"])]
    else:
        running = await store.readers(file_id)
    for batch_id, status in running:
        if status not in FINAL:
            why = f"file {file_id} belongs to batch {batch_id}, which is {status}"
            raise _bad(f"{why}: cancel it or wait for its end", 409)
    await store.delete_file(meta)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request, tenant: Tenant) -> StreamingResponse:
    """The file's lines as they are kept: streamed, never held whole."""
    _, store = _parts(request)
    fields = await _file(store, file_id, tenant)
    return StreamingResponse(store.content(fields), media_type="application/jsonl")


@router.post("/v1/batches")
async def create_batch(request: Request, tenant: Tenant) -> dict[str, Any]:
    """Run an uploaded file's lines on the batch lane, within the completion window; its
    output and error files are kept for its `output_expires_after` if it names one (see
    BatchStore.add_file). 429 while the tenant has the most batches running that llmq runs
    for one (see BatchStore.create_batch)."""
    door, store = _parts(request)
    data = await json_body(request)
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object")
    endpoint = data.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise _bad(f"endpoint must be one of {', '.join(ENDPOINTS)}, those llmq's batches call")
    if data.get("completion_window") != COMPLETION_WINDOW:
        raise _bad(f"completion_window must be {COMPLETION_WINDOW!r}")
    try:
        metadata = checked_metadata(data.get("metadata"))
    except LlmqError as exc:
        raise ApiError(exc) from None
    output_s = _expires_after("output_expires_after", data.get("output_expires_after"))
    input_file = await _input_file(store, data.get("input_file_id"), tenant)
    now = time.time()
    fields = {
        "id": new_id("batch_"),
        "tenant": tenant,
        "endpoint": endpoint,
        "input_file_id": input_file["id"],
        "lines": input_file["lines"],
        "completion_window": COMPLETION_WINDOW,
        "status": "validating",
        "created_at": str(int(now)),
        "expires_at": str(now + door.settings.batch_window_s),
        "metadata": json.dumps(metadata),
    }
    if output_s is not None:
        fields["output_expires_after_s"] = str(output_s)
    try:
        await store.create_batch(fields)
    except LlmqError as exc:
        raise ApiError(exc) from None
    return batch_object(fields)


@router.get("/v1/batches")
async def batches(
    request: Request, tenant: Tenant, after: str | None = None, limit: int = 20
) -> dict[str, Any]:
    """The tenant's batches, newest first."""
    return await _listed(request, tenant, Page("batches", after, limit, MAX_BATCHES_LISTED))


@router.get("/v1/batches/{batch_id}")
async def batch(batch_id: str, request: Request, tenant: Tenant) -> dict[str, Any]:
    _, store = _parts(request)
    return batch_object(await _batch(store, batch_id, tenant))


@router.post("/v1/batches/{batch_id}/cancel")
async def cancel(batch_id: str, request: Request, tenant: Tenant) -> dict[str, Any]:
    """Stop a batch: lines in flight are cancelled, the rest are not run; what was answered
    stays in its output file."""
    _, store = _parts(request)
    found = await _batch(store, batch_id, tenant)
    moved = await store.move(batch_id, "cancelling", "validating", "in_progress")
    if not moved and found["status"] not in ("cancelling", "cancelled"):
        raise _bad(f"batch {batch_id} is {found['status']}: it cannot be cancelled", 409)
    return batch_object(await _batch(store, batch_id, tenant))


async def _input_file(store: BatchStore, file_id: object, tenant: str) -> dict[str, str]:
    """The file a batch names as its input: the tenant's, uploaded for batches."""
    if not isinstance(file_id, str) or not file_id:
        raise _bad("input_file_id must be the id of an uploaded file (purpose batch)")
    found = await _file(store, file_id, tenant)
    if found["purpose"] != "batch":
        raise _bad(f"file {found['id']} is not a batch input file (purpose batch)")
    return found


async def _file(store: BatchStore, file_id: str, tenant: str) -> dict[str, str]:
    found = await store.file(file_id, tenant)
    if found is None:
        raise _bad(f"no file {file_id}", 404)
    return found


async def _batch(store: BatchStore, batch_id: str, tenant: str) -> dict[str, str]:
    found = await store.batch(batch_id, tenant)
    if found is None:
        raise _bad(f"no batch {batch_id}", 404)
    return found


def _form_policy(form: FormData, name: str) -> object:
    """An expiry policy as OpenAI's SDK sends one in a form, the fields `name[anchor]` and
    `name[seconds]` (digits: taken as an integer); None if neither is there. A field `name`
    itself comes back as it is, to be refused."""
    if name in form:
        return form[name]
    prefix = f"{name}["
    policy: dict[str, object] = {
        key[len(prefix) : -1]: value
        for key, value in form.multi_items()
        if key.startswith(prefix) and key.endswith("]")
    }
    seconds = policy.get("seconds")
    if isinstance(seconds, str) and seconds.isascii() and seconds.isdigit():
        policy["seconds"] = int(seconds)
    return policy or None


def _expires_after(name: str, policy: object) -> int | None:
    """The seconds of an expiry policy (`name`) as OpenAI takes one: anchor created_at, an
    integer of seconds within EXPIRES_AFTER_S; None if none was given."""
    if policy is None:
        return None
    low, high = EXPIRES_AFTER_S
    seconds = policy.get("seconds") if isinstance(policy, dict) else None
    if (
        not isinstance(policy, dict)
        or policy.keys() != {"anchor", "seconds"}
        or policy["anchor"] != "created_at"
        or type(seconds) is not int
        or not low <= seconds <= high
    ):
        why = f"{name} must be {{anchor: created_at, seconds: an integer from {low} to {high}}}"
        raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why, param=name), 400)
    return seconds


@dataclass(frozen=True)
class Page:
    """Which page of a tenant's files or batches (`kind`) a listing asks for."""

    kind: str
    after: str | None
    limit: int
    most: int
    """The largest `limit` taken."""
    oldest_first: bool = False
    purpose: str | None = None
    """Files of this purpose only."""


async def _listed(request: Request, tenant: str, page: Page) -> dict[str, Any]:
    """A page of the tenant's files or batches, as OpenAI pages: ids of objects since gone
    (expired, deleted) are skipped, and dropped from the tenant's index, MAX_GONE_PASSED at
    most once the page has an object; 400 for an `after` that is not one of them (nor one
    dropped lately: it resumes from where it was)."""
    _, store = _parts(request)
    if not 1 <= page.limit <= page.most:
        raise _bad(f"limit must be 1 to {page.most}")
    found: list[dict[str, str]] = []
    passed, cut = 0, False  # ids of objects gone since the page has one; MAX_GONE_PASSED hit
    after = page.after
    while len(found) <= page.limit:  # one more than the page says whether there is more
        # A step by purpose may find none of it (files of another purpose): it reads
        # MAX_GONE_PASSED ids, not the few the page lacks, or a small page walked two a step.
        lacking = page.limit + 1 - len(found)
        wanted = MAX_GONE_PASSED if page.purpose is not None else min(lacking, MAX_GONE_PASSED)
        ids = await store.listed(tenant, page.kind, after, wanted, page.oldest_first)
        if ids is None:  # not an empty last page: an app would stop with objects left
            why = f"after: {after} is none of your {page.kind}, nor one a listing forgot lately"
            raise ApiError(LlmqError(ErrorCode.INVALID_REQUEST, why, param="after"), 400)
        objects = await store.objects(page.kind, ids, tenant)
        gone, passed, cut = _sorted(page, zip(ids, objects, strict=True), found, passed)
        # Dropped step by step, no script takes them all: the next step's `after`, if one of
        # them, is found where UNLIST moves it.
        await store.unlist(tenant, page.kind, gone)
        if cut or len(ids) < wanted:
            break
        after = ids[-1]
    show = file_object if page.kind == "files" else batch_object
    return _page([show(f) for f in found[: page.limit]], cut or len(found) > page.limit)


def _sorted(
    page: Page,
    step: Iterable[tuple[str, dict[str, str] | None]],
    found: list[dict[str, str]],
    passed: int,
) -> tuple[list[str], int, bool]:
    """Add a step's objects of the page's purpose to `found`: the ids of those gone, how many
    the page has `passed` since it has an object, and whether MAX_GONE_PASSED of them cut the
    step short (the rest on the next page)."""
    gone: list[str] = []
    for object_id, fields in step:
        if passed >= MAX_GONE_PASSED:
            return gone, passed, True
        if fields is None:
            gone.append(object_id)
            passed += 1 if found else 0
        elif page.purpose in (None, fields.get("purpose")):
            found.append(fields)
    return gone, passed, False


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """OpenAI's cursor page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }
