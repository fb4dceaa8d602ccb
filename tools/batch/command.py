"""`llmq batch submit FILE.jsonl --wait`, `status`, `cancel`, `results`: OpenAI's Batch API
on llmq's front door, with a progress bar, for people without the SDK. A failure is one
`llmq:` line, exit status 2 where the request or a setting is to fix, else 1 (the `llmq`
command's contract)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.batch.lines import ENDPOINT, ENDPOINTS
from llmq.settings import ClientSettings
from tools.batch.client import BatchApi, BatchApiError
from tools.progress import Progress


def register(sub: Any) -> None:
    """Add `batch` to the `llmq` subcommands (argparse's private subparsers type)."""
    batch = sub.add_parser(
        "batch",
        help="run a JSONL file of chat requests as a batch (OpenAI's Batch API)",
        description=(
            "Talks to the front door (LLMQ_API_URL, or the local stack's at LLMQ_API_PORT) "
            "as the tenant of LLMQ_API_KEY (none for an open door). Each line of FILE is "
            '{"custom_id": ..., "method": "POST", "url": "/v1/chat/completions", "body": {...}}.'
        ),
    )
    actions = batch.add_subparsers(required=True, metavar="ACTION")
    submit = actions.add_parser("submit", help="upload FILE and start its batch; print its id")
    submit.add_argument("file", type=Path)
    submit.add_argument("--metadata", action="append", type=_pair, default=[], metavar="KEY=VALUE")
    submit.add_argument(
        "--endpoint",
        choices=ENDPOINTS,
        default=ENDPOINT,
        help="what every line calls: chat, text completions of raw prompts, or responses",
    )
    submit.add_argument("--wait", action="store_true", help="show progress, then save results")
    submit.add_argument("--out", type=Path, default=Path(), help="where results go (with --wait)")
    submit.set_defaults(func=_submit)
    for name, what in (("status", "print a batch (JSON)"), ("cancel", "cancel a batch")):
        action = actions.add_parser(name, help=what)
        action.add_argument("batch_id")
        action.set_defaults(func=_status if name == "status" else _cancel)
    results = actions.add_parser("results", help="save a batch's output and error files")
    results.add_argument("batch_id")
    results.add_argument("--out", type=Path, default=Path())
    results.set_defaults(func=_results)


def _pair(text: str) -> tuple[str, str]:
    """A --metadata KEY=VALUE (argparse refuses anything else as a usage error)."""
    key, equals, value = text.partition("=")
    if not key or not equals:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _api(_: argparse.Namespace) -> BatchApi:
    settings = ClientSettings()
    key = None if settings.api_key is None else settings.api_key.get_secret_value()
    return BatchApi(settings.api_url, key)


def _submit(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"llmq: no file {args.file}", file=sys.stderr)
        return 2
    api = _api(args)
    try:
        uploaded = api.upload(args.file)
        batch_id = api.create(uploaded["id"], dict(args.metadata) or None, args.endpoint)["id"]
    except BatchApiError as exc:
        return _failed(exc)
    print(batch_id)
    if not args.wait:
        return 0
    try:
        return _save(api, _follow(api, batch_id), args.out)
    except BatchApiError as exc:
        status = _failed(exc)
        if exc.retriable:  # the door was away: the batch is not
            print(
                f"the batch goes on: llmq batch results {batch_id} --out {args.out} "
                "saves its files once it has ended",
                file=sys.stderr,
            )
        return status


def _failed(exc: BatchApiError) -> int:
    """Say why a call failed; its exit status."""
    print(f"llmq: {exc}", file=sys.stderr)
    return 2 if exc.to_fix else 1


def _follow(api: BatchApi, batch_id: str) -> dict[str, Any]:
    """Wait for the batch with a progress bar of its answered lines; through a restart of
    the door too (BatchApi.outage_s)."""
    with Progress(desc=batch_id, unit="line", file=sys.stderr, dynamic_ncols=True) as bar:

        def seen(batch: dict[str, Any]) -> None:
            counts = batch["request_counts"]
            bar.total = counts["total"] or None
            bar.n = counts["completed"] + counts["failed"]
            bar.set_postfix(status=batch["status"], failed=counts["failed"], refresh=False)
            bar.refresh()

        return api.wait(batch_id, seen, say=lambda line: bar.write(line, file=sys.stderr))


def _save(api: BatchApi, batch: dict[str, Any], out: Path) -> int:
    """Write the output and error files into `out`; 0 when the batch completed, even with
    lines that failed (said, with the file that has their errors)."""
    out.mkdir(parents=True, exist_ok=True)
    saved: dict[str, Path] = {}
    for field, name in (("output_file_id", "output"), ("error_file_id", "errors")):
        if batch.get(field):
            saved[name] = path = out / f"{batch['id']}_{name}.jsonl"
            api.save(batch[field], path)
            print(f"{name}: {path}")
    counts = batch["request_counts"]
    print(
        f"{batch['status']}: {counts['completed']} completed, {counts['failed']} failed "
        f"of {counts['total']}"
    )
    if counts["failed"]:
        where = f"see {saved['errors']}" if "errors" in saved else "the door kept no error file"
        print(
            f"llmq batch: {counts['failed']} of {counts['total']} lines failed; {where}",
            file=sys.stderr,
        )
    for error in (batch.get("errors") or {}).get("data") or []:
        print(f"  line {error.get('line')}: {error.get('message')}", file=sys.stderr)
    return 0 if batch["status"] == "completed" else 1


def _status(args: argparse.Namespace) -> int:
    return _print(lambda: _api(args).batch(args.batch_id))


def _cancel(args: argparse.Namespace) -> int:
    return _print(lambda: _api(args).cancel(args.batch_id))


def _print(call: Any) -> int:
    try:
        print(json.dumps(call(), indent=2))
    except BatchApiError as exc:
        return _failed(exc)
    return 0


def _results(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        return _save(api, api.batch(args.batch_id), args.out)
    except BatchApiError as exc:
        return _failed(exc)
