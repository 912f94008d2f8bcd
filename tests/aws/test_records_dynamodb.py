"""Instance records in DynamoDB (``--lock dynamodb://TABLE``, item ``record/<instance>``), on a moto_server."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest

from reconciler.backends.aws_lease import DynamoDbLease
from reconciler.backends.aws_records import DynamoDbRecordStore, RecordStoreError
from reconciler.lease import LeaseError
from reconciler.state import InstanceRecord, Pin
from tests.aws.conftest import REGION
from tests.aws.test_lease_dynamodb import create_lock_table
from tests.support import RECONCILER, SpecRepo

pytestmark = pytest.mark.aws


@pytest.fixture
def table(moto_url: str) -> str:
    name = f"records-{uuid.uuid4().hex[:8]}"
    create_lock_table(moto_url, name)
    return name


def store(moto_url: str, table: str) -> DynamoDbRecordStore:
    return DynamoDbRecordStore(table, region=REGION, endpoint_url=moto_url)


def pin(revision: str) -> Pin:
    return Pin(revision=revision, tag=None, pinned_at="2026-01-01T00:00:00+00:00")


def test_a_record_round_trips_with_a_rising_version(moto_url: str, table: str) -> None:
    records = store(moto_url, table)
    assert records.load("default") == InstanceRecord(instance="default")

    def applied(record: InstanceRecord) -> None:
        record.applied_revision = "a" * 40

    records.update("default", applied)
    records.update("default", lambda r: setattr(r, "pinned", pin("b" * 40)))
    again = store(moto_url, table).load("default")
    assert (again.applied_revision, again.pinned, again.version) == ("a" * 40, pin("b" * 40), 2)
    item = boto3.client("dynamodb", endpoint_url=moto_url, region_name=REGION).get_item(
        TableName=table, Key={"id": {"S": "record/default"}}
    )
    assert item["Item"]["version"]["N"] == "2"


def test_concurrent_writers_lose_nothing(moto_url: str, table: str) -> None:
    """The leader's write that lost the race to a laptop's pin is re-applied on top of it: both stay."""
    leader, laptop = store(moto_url, table), store(moto_url, table)
    raced = []

    def applied(record: InstanceRecord) -> None:
        if not raced:  # between the leader's read and its write, a rollback pins the instance
            raced.append(True)
            laptop.update("default", lambda r: setattr(r, "pinned", pin("c" * 40)))
        record.applied_revision = "d" * 40

    leader.update("default", applied)
    final = store(moto_url, table).load("default")
    assert final.pinned == pin("c" * 40) and final.applied_revision == "d" * 40 and final.version == 2


def test_only_writes_of_other_processes_are_reported(moto_url: str, table: str) -> None:
    """The daemon wakes for a pin made elsewhere, never for its own writes."""
    mine, other = store(moto_url, table), store(moto_url, table)
    seen: list[str] = []
    mine.watch(seen.append)
    mine.load("default")
    mine.update("default", lambda r: setattr(r, "last_error", "x"))
    mine.load("default")
    assert seen == []
    other.update("default", lambda r: setattr(r, "pinned", pin("e" * 40)))
    mine.load("default")
    mine.load("default")
    assert seen == ["default"]


def test_a_table_with_another_key_is_a_permanent_error_naming_id(moto_url: str) -> None:
    """A lock table keyed on something other than ``id`` stops the start with one line naming the expected key."""
    name = f"wrong-key-{uuid.uuid4().hex[:6]}"
    boto3.client("dynamodb", endpoint_url=moto_url, region_name=REGION).create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(RecordStoreError, match=r"partition key 'id'") as caught:
        store(moto_url, name).update("default", lambda r: None)
    assert caught.value.temporary is False and "\n" not in str(caught.value)
    lease = DynamoDbLease(name, "reconciler/default", region=REGION, endpoint_url=moto_url)
    with pytest.raises(LeaseError, match=r"partition key 'id'") as refused:
        lease.acquire("me", 15)
    assert refused.value.temporary is False


def test_the_daemon_refuses_to_start_on_a_lock_table_with_another_key(moto_url: str, tmp_path: Path) -> None:
    """`run --lock` on a table keyed on `pk`: exit 1 and one cannot_start line naming the expected key `id`."""
    name = f"wrong-key-{uuid.uuid4().hex[:6]}"
    boto3.client("dynamodb", endpoint_url=moto_url, region_name=REGION).create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    repo = SpecRepo(tmp_path / "repo")
    repo.copy_example()
    repo.commit("specs")
    argv = [str(RECONCILER), "run", "--repo", str(repo.path), "--state-dir", str(repo.state_dir)]
    argv += ["--lock", f"dynamodb://{name}", "--endpoint-url", moto_url, "--region", REGION, "--log-format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    [refusal] = [e for e in lines if e["event"] == "cannot_start"]
    assert "partition key 'id'" in refusal["error"]
