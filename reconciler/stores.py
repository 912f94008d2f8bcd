"""Builds the shared stores ``--lock`` names: the lease and the instance records (boto3 only for ``dynamodb://``).

Called by the engine and the daemon.  ``lease.py`` and ``records.py`` define
the protocols (and the state-directory record store); the DynamoDB ones in
``backends/aws_lease.py`` and ``backends/aws_records.py`` implement them.
Choosing between them lives here, above both, so imports point one way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.errors import UsageError
from reconciler.records import FileRecordStore, RecordStore
from reconciler.state import StateDir

if TYPE_CHECKING:  # a type only: `validate` (records, no lease) loads no lease module, nor its logging
    from reconciler.lease import Lease


def dynamodb_table(lock: str) -> str:
    """The table of ``--lock dynamodb://TABLE``; one clear line for anything else."""
    scheme, sep, table = lock.partition("://")
    if scheme != "dynamodb" or not sep or not table or "/" in table:
        raise UsageError(f"--lock {lock!r}: expected dynamodb://TABLE")
    return table


def make_lease(lock: str, key: str, region: str | None, endpoint_url: str | None) -> Lease:
    """The store ``--lock`` names (``dynamodb://TABLE``); boto3 is imported only when one is asked for."""
    table = dynamodb_table(lock)
    from reconciler.backends.aws_lease import DynamoDbLease

    return DynamoDbLease(table, key, region=region, endpoint_url=endpoint_url)


def make_record_store(
    lock: str | None, state: StateDir, region: str | None = None, endpoint_url: str | None = None
) -> RecordStore:
    """With ``--lock dynamodb://TABLE`` the records live in that table (boto3 imported only then); else in ``state``."""
    if lock is None:
        return FileRecordStore(state)
    table = dynamodb_table(lock)
    from reconciler.backends.aws_records import DynamoDbRecordStore

    return DynamoDbRecordStore(table, region=region, endpoint_url=endpoint_url)
