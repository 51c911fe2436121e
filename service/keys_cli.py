"""``assay keys`` and ``assay tenants``: API keys and tenants, on the store the API reads.

The store is ``ASSAY_DATABASE_URL`` (or the embedded SQLite under
``ASSAY_DATA_DIR``), as for the API. A key is printed once, at creation;
only a salted scrypt hash of it is stored.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from store.keys import KeyStore
from store.records import ApiKeyRecord, TenantRecord


def _store() -> KeyStore:
    from store.keys import key_store
    from workers.settings import worker_settings

    return key_store(worker_settings().resolved_database_url())


def _iso(value: dt.datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "-"


def _key_json(key: ApiKeyRecord) -> dict[str, Any]:
    return key.model_dump(mode="json", exclude={"secret_hash"})


def _tenant_json(tenant: TenantRecord) -> dict[str, Any]:
    return tenant.model_dump(mode="json")


def cmd_keys_create(args: Any) -> int:
    from service.auth import issue_key

    expires = None
    if args.expires_in_days is not None:
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(days=args.expires_in_days)
    record, token = issue_key(_store(), args.tenant, args.role, args.name, expires)
    if args.json:
        print(json.dumps({**_key_json(record), "key": token}))
        return 0
    print(f"created key {record.id} for tenant {record.tenant} (role {record.role})")
    print(f"key: {token}")
    print("Store it now: it is not shown again, and only its hash is kept.", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: Any) -> int:
    record = _store().revoke(args.id)
    if record is None:
        print(f"error: no API key {args.id!r}", file=sys.stderr)
        return 1
    print(
        f"revoked key {record.id} (tenant {record.tenant}, role {record.role}) at {_iso(record.revoked_at)}"
    )
    print("API processes stop accepting it within ASSAY_AUTH_CACHE_S (5 s by default).", file=sys.stderr)
    return 0


def cmd_keys_list(args: Any) -> int:
    keys = _store().keys(args.tenant)
    if args.json:
        print(json.dumps([_key_json(k) for k in keys]))
        return 0
    print("id\ttenant\trole\tname\tcreated\texpires\trevoked\tlast used")
    for k in keys:
        cells = [k.id, k.tenant, k.role, k.name or "-", _iso(k.created_at), _iso(k.expires_at)]
        print("\t".join([*cells, _iso(k.revoked_at), _iso(k.last_used_at)]))
    return 0


def cmd_tenants_set(args: Any) -> int:
    changes: dict[str, Any] = {}
    if args.all_policies:
        changes["policies"] = None
    elif args.policies is not None:
        changes["policies"] = sorted({p.strip() for p in args.policies.split(",") if p.strip()})
    for field in ("rate_per_min", "burst", "max_active_jobs"):
        value = getattr(args, field)
        if value is not None:
            # A negative number puts the field back to the service's default.
            changes[field] = value if value >= 0 else None
    tenant = _store().save_tenant(args.name, changes)
    print(json.dumps(_tenant_json(tenant)))
    return 0


def cmd_tenants_list(args: Any) -> int:
    print(json.dumps([_tenant_json(t) for t in _store().tenants()]))
    return 0


def add_parser(sub: Any) -> None:
    """``assay keys ...`` and ``assay tenants ...`` subcommands."""
    from service.auth import ROLES

    keys = sub.add_parser("keys", help="API keys (ASSAY_AUTH=required)").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key and print it, once")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for (created if new)")
    create.add_argument(
        "--role", required=True, choices=ROLES, help="app: moderate and generate; auditor: audits, drift "
        "and reports; admin: everything, keys included",
    )  # fmt: skip
    create.add_argument("--name", default=None, help="a label, e.g. the app that uses it")
    create.add_argument("--expires-in-days", type=float, default=None, help="stop working after N days")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    create.set_defaults(func=cmd_keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", help="the key's id (the 16 characters after 'assay_')")
    revoke.set_defaults(func=cmd_keys_revoke)
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="as JSON")
    listing.set_defaults(func=cmd_keys_list)

    tenants = sub.add_parser("tenants", help="tenants: their policies and quotas").add_subparsers(
        dest="tenants_command", required=True
    )
    tset = tenants.add_parser("set", help="create a tenant or change its policies and quotas")
    tset.add_argument("name", help="tenant name")
    group = tset.add_mutually_exclusive_group()
    group.add_argument("--policies", default=None, help="comma-separated policy names it may use")
    group.add_argument("--all-policies", action="store_true", help="it may use every loaded policy")
    tset.add_argument(
        "--rate-per-min", type=int, default=None, help="requests a minute per key (-1: default)"
    )
    tset.add_argument("--burst", type=int, default=None, help="requests a key may send at once (-1: default)")
    tset.add_argument(
        "--max-active-jobs",
        type=int,
        default=None,
        help="queued and running jobs (0: unlimited, -1: default)",
    )
    tset.set_defaults(func=cmd_tenants_set)
    tlist = tenants.add_parser("list", help="list tenants as JSON")
    tlist.set_defaults(func=cmd_tenants_list)
