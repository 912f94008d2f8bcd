"""The DynamoDB ``Lease`` of ``run --lock dynamodb://TABLE``: one item, conditional writes; built by ``stores.py``.

The table has a string partition key ``id`` (the README, Running in a cluster, creates it).  The
item ``{"id": KEY, "holder": S, "expires": N (Unix seconds), "renewed_at": N}``
is written with ``PutItem`` only when ``attribute_not_exists(id) OR expires <
:now OR holder = :me``, so at most one replica holds an unexpired lease.
Expiry compares wall clocks of the replicas: keep them in sync (NTP); a skew
smaller than the elector's margin (5 s by default) is harmless.  Short
timeouts and two attempts per call: a renewal must fail fast, never hang past
the lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError

from reconciler.errors import UsageError
from reconciler.lease import LeaseError, LeaseHolder

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# fail fast: a table that hangs must not hold a pass, or a stop, for long
CLIENT_CONFIG = Config(connect_timeout=2, read_timeout=2, retries={"mode": "standard", "max_attempts": 2})
TAKE_IF_FREE = "attribute_not_exists(#id) OR #expires < :now OR #holder = :me"
NAMES = {"#id": "id", "#holder": "holder", "#expires": "expires"}


class DynamoDbLease:
    """One lease item (partition key ``id`` = ``key``) in the DynamoDB table ``table``."""

    def __init__(
        self,
        table: str,
        key: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.key = key
        self._clock = clock
        self.client = dynamodb_client(region, endpoint_url)

    def acquire(self, holder: str, duration: float) -> bool:
        now = self._clock()
        try:
            self.client.put_item(
                TableName=self.table,
                Item={
                    "id": {"S": self.key},
                    "holder": {"S": holder},
                    "expires": {"N": f"{now + duration:.3f}"},
                    "renewed_at": {"N": f"{now:.3f}"},
                },
                ConditionExpression=TAKE_IF_FREE,
                ExpressionAttributeNames=NAMES,
                ExpressionAttributeValues={":now": {"N": f"{now:.3f}"}, ":me": {"S": holder}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise self._error("write", exc) from None
        except BotoCoreError as exc:
            raise self._error("write", exc) from None
        return True

    def read(self) -> LeaseHolder:
        try:
            item = self.client.get_item(TableName=self.table, Key={"id": {"S": self.key}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("read", exc) from None
        found = item.get("Item")
        if not found:
            return LeaseHolder()
        holder = found.get("holder", {}).get("S")
        expires = found.get("expires", {}).get("N")
        return LeaseHolder(holder, float(expires) if expires is not None else None)

    def release(self, holder: str) -> None:
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={"id": {"S": self.key}},
                ConditionExpression="#holder = :me",
                ExpressionAttributeNames={"#holder": "holder"},
                ExpressionAttributeValues={":me": {"S": holder}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return  # not ours any more: nothing to give up
            raise self._error("release", exc) from None
        except BotoCoreError as exc:
            raise self._error("release", exc) from None

    def close(self) -> None:
        self.client.close()

    def _error(self, what: str, exc: ClientError | BotoCoreError) -> LeaseError:
        message, temporary = describe_dynamodb_error(
            what, f"the lease {self.key!r} in DynamoDB table {self.table!r}", exc
        )
        return LeaseError(message, temporary=temporary)


def dynamodb_client(region: str | None, endpoint_url: str | None) -> DynamoDBClient:
    """The DynamoDB client of ``--lock`` (the lease and the record store): short timeouts, two attempts."""
    try:
        return boto3.client("dynamodb", region_name=region, endpoint_url=endpoint_url, config=CLIENT_CONFIG)
    except NoRegionError:
        raise UsageError("--lock needs an AWS region: set --region or AWS_DEFAULT_REGION") from None


def describe_dynamodb_error(what: str, where: str, exc: ClientError | BotoCoreError) -> tuple[str, bool]:
    """One line for a failed call on the ``--lock`` table, and whether retrying can help (a missing table or a
    wrong key schema cannot)."""
    if not isinstance(exc, ClientError):
        return f"cannot {what} {where}: {' '.join(str(exc).split())}", True
    code = exc.response.get("Error", {}).get("Code", "")
    message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
    if code == "ResourceNotFoundException":
        return (
            f"cannot {what} {where}: the table does not exist; create it with a string partition key "
            "'id' (see the README, Running in a cluster)",
            False,
        )
    if code == "ValidationException" and "key" in message.lower():
        return (
            f"cannot {what} {where}: the table's key schema does not fit ({message}); expected a string "
            "partition key 'id' and no sort key",
            False,
        )
    return f"cannot {what} {where}: {code}: {message}".rstrip(": "), True
