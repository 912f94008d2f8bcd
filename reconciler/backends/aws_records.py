"""Instance records in the ``--lock dynamodb://TABLE`` table: item ``record/<instance>``, conditional writes.

The DynamoDB ``RecordStore`` of ``records.py``.  The item is ``{"id":
"record/<instance>", "version": N, "record": "<JSON of the record>", "updated_at":
N}`` in the lease table (string partition key ``id``).  Every write is a
``PutItem`` conditioned on the version it read (or on the item not existing),
so the leader and a ``rollback``/``resume`` run from a laptop with the same
``--lock`` never lose each other's changes: the loser reads again and re-applies
its change.  Reads are strongly consistent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from reconciler.backends.aws_lease import describe_dynamodb_error, dynamodb_client
from reconciler.errors import StateError
from reconciler.records import UPDATE_ATTEMPTS, VersionTracker
from reconciler.state import InstanceRecord, record_from_json

KEY_PREFIX = "record/"


class RecordStoreError(StateError):
    """The record table could not be read or written; temporary unless it cannot work at all."""

    def __init__(self, message: str, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class DynamoDbRecordStore(VersionTracker):
    """Records as items ``record/<instance>`` of the DynamoDB table ``table``."""

    def __init__(self, table: str, region: str | None = None, endpoint_url: str | None = None) -> None:
        super().__init__()
        self.table = table
        self.where = f"DynamoDB table {table!r}"
        self.client = dynamodb_client(region, endpoint_url)

    def load(self, instance: str) -> InstanceRecord:
        record = self._read(instance)
        self._saw(record)
        return record

    def update(self, instance: str, change: Callable[[InstanceRecord], None], durable: bool = True) -> InstanceRecord:
        del durable  # every DynamoDB write is durable once acknowledged
        for _ in range(UPDATE_ATTEMPTS):
            record = self.load(instance)
            read_version = record.version
            change(record)
            record.version = read_version + 1
            if self._write(record, read_version):
                self._wrote(record)
                return record
        raise RecordStoreError(
            f"cannot update the record of {instance!r} in {self.where}: {UPDATE_ATTEMPTS} writes in a row lost "
            "to other writers; try again"
        )

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ items

    def _read(self, instance: str) -> InstanceRecord:
        key = KEY_PREFIX + instance
        try:
            found = self.client.get_item(TableName=self.table, Key={"id": {"S": key}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("read", instance, exc) from None
        item = found.get("Item")
        if not item:
            return InstanceRecord(instance=instance)
        try:
            record = record_from_json(json.loads(item["record"]["S"]))
            record.version = int(item["version"]["N"])
        except (KeyError, ValueError, TypeError) as exc:
            raise RecordStoreError(
                f"the record item {key!r} in {self.where} is unreadable ({exc}); delete the item to start afresh",
                temporary=False,
            ) from None
        record.instance = instance
        return record

    def _write(self, record: InstanceRecord, read_version: int) -> bool:
        """Put the record if the item is still at ``read_version``; False if another writer got there first."""
        key = KEY_PREFIX + record.instance
        body = {k: v for k, v in record.as_json().items() if k != "version"}
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    "id": {"S": key},
                    "version": {"N": str(record.version)},
                    "record": {"S": json.dumps(body, separators=(",", ":"), sort_keys=True)},
                    "updated_at": {"N": f"{time.time():.3f}"},
                },
                ConditionExpression="attribute_not_exists(#id) OR #version = :read",  # versions start at 1
                ExpressionAttributeNames={"#id": "id", "#version": "version"},
                ExpressionAttributeValues={":read": {"N": str(read_version)}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise self._error("write", record.instance, exc) from None
        except BotoCoreError as exc:
            raise self._error("write", record.instance, exc) from None
        return True

    def _error(self, what: str, instance: str, exc: ClientError | BotoCoreError) -> RecordStoreError:
        where = f"the record {KEY_PREFIX}{instance!r} in {self.where}"
        message, temporary = describe_dynamodb_error(what, where, exc)
        return RecordStoreError(message, temporary=temporary)
