"""Signed webhooks: a transactional outbox (`outbox.enqueue`), a delivery worker, and their API."""

from runtime.webhooks.signing import sign, verify  # noqa: F401 (what receivers written in Python use)
