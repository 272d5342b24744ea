"""The tortoise model of the ``shadows`` table.

The schema itself is owned by the migrations (``shadow/server/migrations.py``), not by tortoise's
schema generator, and the store reads and writes through SQL on the connection it owns. The model
exists because a tortoise app needs one, and it documents the columns for ad-hoc tooling. It is
bound to whichever tortoise context initialised it last, so the store never queries through it.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

__all__ = ["ShadowRow"]


class ShadowRow(Model):
    """One stored shadow: both sections as JSON text, their versions and the node's presence."""

    node_id = fields.CharField(max_length=255, primary_key=True)
    desired = fields.TextField()
    desired_meta = fields.TextField()
    desired_version = fields.BigIntField()
    reported = fields.TextField()
    reported_meta = fields.TextField()
    reported_version = fields.BigIntField()
    online = fields.BooleanField(default=False)
    last_seen = fields.BigIntField(null=True)
    updated_at = fields.BigIntField()

    class Meta:
        table = "shadows"
