"""`loramem keys`: make, list and revoke API keys, straight in Redis through the registry,
so that an operator can make the first admin key before any key exists."""

from __future__ import annotations

import argparse
import sys
import time

from loramem.errors import LoramemError
from loramem.registry import Registry
from loramem.registry.apikeys import ApiKey, Role
from loramem.settings import Settings


def add_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="make, list and revoke API keys (LORAMEM_AUTH)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key; it is printed once, on the last line")
    create.add_argument("--tenant", required=True)
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", default="")
    actions.add_parser("list", help="every key's id, tenant, role, name and use (never the key)")
    revoke = actions.add_parser("revoke", help="revoke a key; it fails on its next request")
    revoke.add_argument("key_or_id")


def run(args: argparse.Namespace, settings: Settings) -> int:
    store = Registry.from_settings(settings).api_keys
    try:
        if args.keys_command == "create":
            key, record = store.create(args.tenant, args.role, args.name)
            print(f"made key {record.id} for tenant {record.tenant}, role {record.role}.")
            print("It is shown this once; Redis keeps only its hash:")
            print(key)
        elif args.keys_command == "list":
            print(f"{'id':16}  {'tenant':20}  {'role':6}  {'created':16}  {'last used':16}  name")
            for record in store.all():
                print(_row(record))
        else:
            record = store.revoke(args.key_or_id)
            print(f"revoked key {record.id} (tenant {record.tenant}, role {record.role})")
    except LoramemError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    return 0


def _row(record: ApiKey) -> str:
    name = record.name + (" (revoked)" if record.revoked else "")
    return (
        f"{record.id:16}  {record.tenant:20}  {record.role.value:6}  "
        f"{_when(record.created_at_s):16}  {_when(record.last_used_s):16}  {name}"
    )


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "-"
