"""The DynamoDB lease of ``--lock`` on a real moto_server, and the elector's timing on a fake store and clock."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator

import boto3
import pytest

from reconciler.backends.aws_lease import DynamoDbLease
from reconciler.errors import UsageError
from reconciler.lease import Elector, LeaseError, LeaseHolder
from reconciler.stores import make_lease
from tests.aws.conftest import REGION

pytestmark = pytest.mark.aws


def create_lock_table(url: str, name: str) -> None:
    """The table as the README creates it: string partition key ``id``, on demand."""
    client = boto3.client("dynamodb", endpoint_url=url, region_name=REGION)
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )


@pytest.fixture
def table(moto_url: str) -> str:
    """A fresh lease table on the moto_server (its own name: other tests may share the server)."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    create_lock_table(moto_url, name)
    return name


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def lease_of(moto_url: str, table: str, clock: Clock) -> Iterator[type[DynamoDbLease]]:
    made: list[DynamoDbLease] = []

    class Bound(DynamoDbLease):
        def __init__(self, key: str = "reconciler/default") -> None:
            super().__init__(table, key, region=REGION, endpoint_url=moto_url, clock=clock)
            made.append(self)

    yield Bound
    for lease in made:
        lease.close()


def test_free_lease_is_taken_and_the_item_names_holder_and_expiry(lease_of: type[DynamoDbLease], clock: Clock) -> None:
    """The first acquire writes the item with the holder and an expiry ``duration`` seconds ahead."""
    lease = lease_of()
    assert lease.acquire("a", 15) is True
    assert lease.read() == LeaseHolder("a", clock.now + 15)


def test_unexpired_lease_of_another_holder_is_refused(lease_of: type[DynamoDbLease], clock: Clock) -> None:
    """While a's lease runs, b's conditional write fails and the item still names a."""
    lease = lease_of()
    assert lease.acquire("a", 15)
    clock.now += 14.9
    assert lease.acquire("b", 15) is False
    assert lease.read().holder == "a"


def test_holder_renews_its_own_lease(lease_of: type[DynamoDbLease], clock: Clock) -> None:
    """The holder's write succeeds before expiry and moves the expiry on."""
    lease = lease_of()
    assert lease.acquire("a", 15)
    clock.now += 5
    assert lease.acquire("a", 15)
    assert lease.read() == LeaseHolder("a", clock.now + 15)


def test_expired_lease_is_taken_over(lease_of: type[DynamoDbLease], clock: Clock) -> None:
    """Once a's expiry has passed, b takes the lease."""
    lease = lease_of()
    assert lease.acquire("a", 15)
    clock.now += 15.1
    assert lease.acquire("b", 15)
    assert lease.read().holder == "b"


def test_release_frees_the_lease_only_for_its_holder(lease_of: type[DynamoDbLease]) -> None:
    """b's release leaves a's lease alone; a's release deletes it, and b can take it at once."""
    lease = lease_of()
    assert lease.acquire("a", 15)
    lease.release("b")
    assert lease.read().holder == "a"
    lease.release("a")
    assert lease.read() == LeaseHolder()
    assert lease.acquire("b", 15)


def test_instances_have_separate_leases(lease_of: type[DynamoDbLease]) -> None:
    """Two instances in one table hold a lease each."""
    assert lease_of("reconciler/prod").acquire("a", 15)
    assert lease_of("reconciler/staging").acquire("b", 15)


def test_missing_table_is_a_permanent_error_naming_the_table(moto_url: str) -> None:
    """A lock table that does not exist is a permanent error that says how to create it."""
    lease = DynamoDbLease("no-such-table", "reconciler/default", region=REGION, endpoint_url=moto_url)
    with pytest.raises(LeaseError, match=r"no-such-table.*does not exist.*partition key 'id'") as caught:
        lease.acquire("a", 15)
    assert caught.value.temporary is False
    lease.close()


def test_unreachable_endpoint_is_a_temporary_error(moto_url: str) -> None:
    """A store that does not answer is a temporary one-line error (the elector retries)."""
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    lease = DynamoDbLease("t", "reconciler/default", region=REGION, endpoint_url=dead)
    with pytest.raises(LeaseError) as caught:
        lease.acquire("a", 15)
    assert caught.value.temporary and "\n" not in str(caught.value)
    lease.close()


@pytest.mark.parametrize("lock", ["dynamodb:/t", "s3://bucket", "dynamodb://", "dynamodb://t/x"])
def test_lock_must_name_a_dynamodb_table(lock: str) -> None:
    """--lock takes dynamodb://TABLE and nothing else."""
    with pytest.raises(UsageError, match="dynamodb://TABLE"):
        make_lease(lock, "reconciler/default", REGION, None)


# ------------------------------------------------------- the elector's timing


class MemoryLease:
    """An in-memory lease store with the same conditional semantics, on the test's wall clock."""

    def __init__(self, wall: Clock) -> None:
        self.wall = wall
        self.item: LeaseHolder = LeaseHolder()
        self.failing = False

    def acquire(self, holder: str, duration: float) -> bool:
        if self.failing:
            raise LeaseError("store unreachable")
        free = self.item.expires_at is None or self.item.expires_at < self.wall.now
        if free or self.item.holder == holder:
            self.item = LeaseHolder(holder, self.wall.now + duration)
            return True
        return False

    def read(self) -> LeaseHolder:
        return self.item

    def release(self, holder: str) -> None:
        if self.item.holder == holder:
            self.item = LeaseHolder()

    def close(self) -> None:
        pass


def elector(store: MemoryLease, holder: str, monotonic: Clock, **kwargs: float) -> Elector:
    return Elector(store, holder, clock=monotonic, wall_clock=store.wall, **kwargs)  # type: ignore[arg-type]


def test_leader_that_cannot_renew_stops_before_its_lease_ends(clock: Clock) -> None:
    """With the store unreachable, the leader gives up leading ``margin`` seconds before expiry, never after it."""
    store, monotonic = MemoryLease(clock), Clock(100.0)
    leader = elector(store, "a", monotonic)  # 15 s lease, renewed every 5 s, margin 5 s
    leader.step()
    assert leader.is_leader()
    store.failing = True
    monotonic.now += 9.9
    leader.step()
    assert leader.is_leader() and math.isclose(leader.remaining(), 5.1)
    monotonic.now += 0.2
    assert not leader.is_leader() and leader.remaining() > 0  # stopped with 4.9 s of lease still left


def test_leader_whose_lease_was_taken_stops_at_once(clock: Clock) -> None:
    """When another holder overwrote the item, the next renewal fails and leadership ends immediately."""
    store, monotonic = MemoryLease(clock), Clock(100.0)
    leader = elector(store, "a", monotonic)
    leader.step()
    store.item = LeaseHolder("intruder", clock.now + 60)
    monotonic.now += 5
    leader.step()
    assert not leader.is_leader() and leader.remaining() == 0


def test_standby_tries_again_just_after_the_holder_lease_lapses(clock: Clock) -> None:
    """A standby waits until the holder's expiry (not a whole renew interval more) and then takes over."""
    store, monotonic = MemoryLease(clock), Clock(100.0)
    elector(store, "a", monotonic).step()
    standby = elector(store, "b", monotonic)
    clock.now += 12
    wait = standby.step()
    assert not standby.is_leader() and 3 < wait < 3.2
    clock.now += wait
    standby.step()
    assert standby.is_leader() and store.item.holder == "b"


def test_leadership_changes_are_reported_once_each(clock: Clock) -> None:
    """on_change hears True when the lease is taken and False when it is lost, not on every renewal."""
    store, monotonic = MemoryLease(clock), Clock(100.0)
    changes: list[bool] = []
    leader = Elector(store, "a", clock=monotonic, wall_clock=clock, on_change=changes.append)  # type: ignore[arg-type]
    leader.step()
    leader.step()
    store.item = LeaseHolder("intruder", clock.now + 60)
    leader.step()
    assert changes == [True, False]


@pytest.mark.parametrize(
    ("duration", "renew"), [(15, 10), (10, 5), (15, 0)], ids=["renew-too-slow", "no-slack", "zero"]
)
def test_renew_interval_must_leave_room_before_the_margin(duration: float, renew: float, clock: Clock) -> None:
    """A renewal interval that would let the lease run into the margin between renewals is refused."""
    with pytest.raises(UsageError, match="renewal interval"):
        elector(MemoryLease(clock), "a", Clock(), duration=duration, renew_every=renew)
