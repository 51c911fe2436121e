"""The tenant and API key repository.

Keys are stored as a salted hash of their secret (the caller hashes:
``service/auth.py``); a key is never stored, nor shown again after creation.
A revoked key keeps its row, so ``assay keys list`` shows when it was revoked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from store.db import Database, database
from store.models import ApiKey, Tenant, utcnow
from store.records import ApiKeyRecord, TenantRecord
from store.retry import retried

TENANT_FIELDS = frozenset({"policies", "rate_per_min", "burst", "max_active_jobs"})
"""What ``save_tenant`` may change."""


def _ensure_tenant(s: Session, name: str) -> Tenant:
    tenant = s.get(Tenant, name)
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        s.add(tenant)
        s.flush()
    return tenant


class KeyStore:
    """Tenants and keys on ``db``; calls retry an unreachable database for ``retry_s`` s."""

    def __init__(self, db: Database, *, retry_s: float = 0.0) -> None:
        self.db = db
        self.retry_s = retry_s

    @retried
    def save_tenant(self, name: str, changes: Mapping[str, Any] | None = None) -> TenantRecord:
        """Create the tenant if it is new, then apply ``changes`` (fields of ``TENANT_FIELDS``)."""
        unknown = set(changes or {}) - TENANT_FIELDS
        if unknown:
            raise ValueError(f"unknown tenant fields: {sorted(unknown)}")
        with self.db.session() as s:
            tenant = _ensure_tenant(s, name)
            for key, value in (changes or {}).items():
                setattr(tenant, key, value)
            s.flush()
            return TenantRecord.model_validate(tenant)

    @retried
    def tenant(self, name: str) -> TenantRecord | None:
        with self.db.session() as s:
            tenant = s.get(Tenant, name)
            return None if tenant is None else TenantRecord.model_validate(tenant)

    @retried
    def tenants(self) -> list[TenantRecord]:
        with self.db.session() as s:
            return [TenantRecord.model_validate(t) for t in s.scalars(select(Tenant).order_by(Tenant.name))]

    @retried
    def create_key(
        self,
        *,
        key_id: str,
        tenant: str,
        role: str,
        secret_hash: str,
        name: str | None = None,
        expires_at: dt.datetime | None = None,
    ) -> ApiKeyRecord:
        """Record a new key (and its tenant, if new)."""
        with self.db.session() as s:
            _ensure_tenant(s, tenant)
            key = ApiKey(
                id=key_id,
                tenant=tenant,
                role=role,
                name=name,
                secret_hash=secret_hash,
                created_at=utcnow(),
                expires_at=expires_at,
            )
            s.add(key)
            s.flush()
            return ApiKeyRecord.model_validate(key)

    @retried
    def key(self, key_id: str) -> tuple[ApiKeyRecord, TenantRecord] | None:
        """A key with its tenant, revoked or not (the caller decides), or None."""
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None:
                return None
            tenant = s.get(Tenant, key.tenant)
            assert tenant is not None  # a foreign key
            return ApiKeyRecord.model_validate(key), TenantRecord.model_validate(tenant)

    @retried
    def keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        """Keys, oldest first; only ``tenant``'s when given."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        with self.db.session() as s:
            return [ApiKeyRecord.model_validate(k) for k in s.scalars(query)]

    @retried
    def revoke(self, key_id: str, tenant: str | None = None) -> ApiKeyRecord | None:
        """Revoke a key (once: the first time is kept); None when there is no such key (of ``tenant``)."""
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None or (tenant is not None and key.tenant != tenant):
                return None
            if key.revoked_at is None:
                key.revoked_at = utcnow()
                s.flush()
            return ApiKeyRecord.model_validate(key)

    @retried
    def touch(self, key_id: str) -> None:
        """Note that the key was used now (``assay keys list`` shows it, to find unused keys)."""
        with self.db.session() as s:
            s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def key_store(url: str, *, retry_s: float = 0.0) -> KeyStore:
    """The key repository on the process's shared ``Database`` for ``url``."""
    return KeyStore(database(url, retry_s=retry_s), retry_s=retry_s)
