"""Where the tests find Redis: 127.0.0.1:6379 (what scripts/test-services.sh starts) unless
LORAMEM_TEST_REDIS names another server, so that two checkouts can test side by side, each
on its own server. Each suite that flushes gets a database of its own."""

from __future__ import annotations

import os

REDIS_SERVER = os.environ.get("LORAMEM_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")


def redis_db_url(db: int) -> str:
    return f"{REDIS_SERVER}/{db}"
