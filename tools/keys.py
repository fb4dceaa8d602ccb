"""`llmq keys new TENANT`: an API key for the front door, and the line of the tenants file
that lets it in (the file holds the key's SHA-256 only)."""

from __future__ import annotations

import argparse
from typing import Any

from schemas.request import IDENTIFIER
from schemas.tenants import key_hash, new_key


def register(sub: Any) -> None:
    """Add `keys` to the `llmq` subcommands (argparse's private subparsers type)."""
    keys = sub.add_parser("keys", help="make an API key of the HTTP front door for a tenant")
    actions = keys.add_subparsers(required=True, metavar="ACTION")
    new = actions.add_parser("new", help="a new key for TENANT, and its tenants-file line")
    new.add_argument("tenant", type=_tenant)
    new.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print a new key once, the line to add under [api_keys] of the tenants file, and that
    the front door reads the file only when it starts."""
    key = new_key()
    print(f"API key of tenant {args.tenant} (shown once: hand it to the tenant):")
    print(f"  {key}")
    print("Add this line under [api_keys] in the tenants file (LLMQ_TENANTS_FILE):")
    print(f'  "{key_hash(key)}" = "{args.tenant}"')
    print("The front door reads that file when it starts: restart it to let the key in.")
    return 0


def _tenant(text: str) -> str:
    if not IDENTIFIER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"a tenant is 1-128 of [A-Za-z0-9._:-], not {text!r}")
    return text
