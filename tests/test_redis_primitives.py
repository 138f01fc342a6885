"""The Redis primitives that keep work single and bounded, against a real redis-server.

Lease (one holder at a time), Heartbeat (keeps leases alive while a stage runs),
PoolSemaphore (at most N exports/copies per pool), VmLocks (a VM in one run at a
time) and Slots.hold (a run's lease and a pool slot, held together).  Each test
talks to the module's own private redis-server through the real classes; only
time is made short (leases of a fraction of a second) where expiry is the point.
"""
from __future__ import annotations

import threading
import time

import pytest
import redis

from tinabs_tasks.backup.errors import WaitForSlot
from tinabs_tasks.runs import keys
from tinabs_tasks.runs.lease import Heartbeat, Lease, PoolSemaphore
from tinabs_tasks.runs.slots import Slots
from tinabs_tasks.runs.vm_lock import VmLocks

POOL = "pool-a"
VM = "0f6c1a52-vm"


@pytest.fixture
def r(redis_server):
    """A client of the module's Redis as the workers have it (str replies), on an empty DB."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()  # each test starts from nothing an earlier test of this module left
    yield client
    client.close()


def wait_until(check, timeout: float = 5.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


# -- Lease ----------------------------------------------------------------------------------------
def test_a_free_lease_is_acquired_once_by_its_token_for_its_lease_time(r):
    # Given a lease nobody holds
    lease = Lease(r, "export:run1", 10, token="a")
    # When it is acquired
    assert lease.try_acquire()
    # Then Redis holds its token under the lease's key, expiring after the lease time
    assert r.get(keys.lease("export:run1")) == "a"
    assert 9_000 < r.pttl(keys.lease("export:run1")) <= 10_000


def test_a_held_lease_refuses_a_second_token(r):
    # Given a lease held by token a
    assert Lease(r, "export:run1", 10, token="a").try_acquire()
    # When token b asks for it
    taken = Lease(r, "export:run1", 10, token="b").try_acquire()
    # Then it is refused, and a still holds it
    assert not taken
    assert r.get(keys.lease("export:run1")) == "a"


def test_only_the_holder_renews_a_lease(r):
    # Given a lease of 10 s held by a, with 1 s left
    holder, other = Lease(r, "export:run1", 10, token="a"), Lease(r, "export:run1", 10, token="b")
    assert holder.try_acquire()
    r.pexpire(holder.key, 1_000)
    # When another token renews it, then it is refused and the lease keeps its short time
    assert not other.renew()
    assert r.pttl(holder.key) <= 1_000 and r.get(holder.key) == "a"
    # When the holder renews it, then it has its whole lease time again
    assert holder.renew()
    assert 9_000 < r.pttl(holder.key) <= 10_000 and r.get(holder.key) == "a"


def test_only_the_holder_releases_a_lease(r):
    # Given a lease held by a
    holder, other = Lease(r, "export:run1", 10, token="a"), Lease(r, "export:run1", 10, token="b")
    assert holder.try_acquire()
    # When another token releases it, then a still holds it
    other.release()
    assert r.get(holder.key) == "a"
    # When the holder releases it, then it is free: another token can take it
    holder.release()
    assert not r.exists(holder.key)
    assert other.try_acquire()


def test_an_expired_lease_is_free_and_its_old_holder_cannot_renew_it(r):
    # Given a lease of 0.2 s that its holder stopped renewing (a dead worker)
    holder, other = Lease(r, "export:run1", 0.2, token="a"), Lease(r, "export:run1", 0.2, token="b")
    assert holder.try_acquire()
    assert not other.try_acquire()
    # When its time has passed
    time.sleep(0.3)
    # Then another token acquires it, and the old holder's renewal is refused
    assert other.try_acquire()
    assert not holder.renew()
    assert r.get(holder.key) == "b"


# -- Heartbeat ------------------------------------------------------------------------------------
class Renewal:
    """A renewal that counts its calls and answers from ``answers`` (then its last answer);
    an answer that is an exception is raised."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers) or [True], 0

    def __call__(self):
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_heartbeat_calls_every_renewal_periodically_until_it_exits(r):
    # Given two renewals that succeed
    first, second = Renewal(), Renewal()
    # When a heartbeat of 0.05 s runs for a while
    with Heartbeat([first, second], 0.05) as beat:
        assert wait_until(lambda: first.calls >= 4 and second.calls >= 4), (first.calls, second.calls)
    # Then it called each of them again and again, lost nothing, and stops calling once it has exited
    assert not beat.lost.is_set()
    calls = first.calls, second.calls
    time.sleep(0.2)
    assert (first.calls, second.calls) == calls


def test_a_heartbeat_keeps_a_real_lease_past_its_lease_time(r):
    # Given a lease of 0.5 s, held
    lease = Lease(r, "export:run1", 0.5, token="a")
    assert lease.try_acquire()
    # When a heartbeat renews it every 0.1 s for three lease times
    with Heartbeat([lease.renew], 0.1) as beat:
        time.sleep(1.5)
        # Then the lease is still held by its token, and nothing was lost
        assert r.get(lease.key) == "a"
    assert not beat.lost.is_set()


def test_a_heartbeat_sets_lost_when_a_renewal_is_refused(r):
    # Given a heartbeat renewing a real lease held by a
    lease = Lease(r, "export:run1", 10, token="a")
    assert lease.try_acquire()
    with Heartbeat([lease.renew], 0.05) as beat:
        time.sleep(0.15)
        assert not beat.lost.is_set()  # renewals succeed while a holds it
        # When the lease passes to another token (a's expired, b took it)
        r.set(lease.key, "b", px=10_000)
        # Then the heartbeat says the lease was lost, and b keeps it
        assert beat.lost.wait(2)
    assert r.get(lease.key) == "b"


def test_a_heartbeat_sets_lost_when_any_of_its_renewals_is_refused(r):
    # Given two renewals, the second refused from its third call on
    good, bad = Renewal(True), Renewal(True, True, False)
    # When a heartbeat runs them
    with Heartbeat([good, bad], 0.05) as beat:
        # Then lost is set once the refusal comes, not before
        assert beat.lost.wait(2)
    assert bad.calls >= 3


def test_a_heartbeat_survives_a_renewal_that_raises(r):
    # Given a renewal that raises on its first call (a Redis blip), then succeeds
    flaky = Renewal(redis.ConnectionError("blip"), True)
    # When a heartbeat runs it
    with Heartbeat([flaky], 0.05) as beat:
        # Then it goes on calling it on the next beats, and the blip is not a lost lease
        assert wait_until(lambda: flaky.calls >= 3), flaky.calls
    assert not beat.lost.is_set()


# -- PoolSemaphore --------------------------------------------------------------------------------
def test_a_pool_semaphore_has_at_most_limit_holders(r):
    # Given a pool limited to 2
    sem = PoolSemaphore(r, POOL, 2, 30)
    # When three tokens ask for a slot
    got = [sem.try_acquire(t) for t in ("a", "b", "c")]
    # Then the first two get one and the third is refused
    assert got == [True, True, False]
    assert sem.holders() == 2
    assert set(r.zrange(keys.semaphore(POOL), 0, -1)) == {"a", "b"}


def test_a_holder_acquiring_again_keeps_its_one_slot(r):
    # Given a pool limited to 2, with a holding one slot
    sem = PoolSemaphore(r, POOL, 2, 30)
    assert sem.try_acquire("a")
    # When a acquires again (a redelivered stage), then it is granted, and it still holds one slot only
    assert sem.try_acquire("a")
    assert sem.holders() == 1
    # And once the pool is full, its holder acquiring again is still granted, without a third slot
    assert sem.try_acquire("b")
    assert sem.try_acquire("a") and sem.try_acquire("b")
    assert sem.holders() == 2 and not sem.try_acquire("c")


def test_an_expired_lease_frees_its_slot(r):
    # Given a pool limited to 1 whose holder's lease (0.3 s) is not renewed
    sem = PoolSemaphore(r, POOL, 1, 0.3)
    assert sem.try_acquire("a")
    assert not sem.try_acquire("b")
    # When the lease time has passed
    time.sleep(0.4)
    # Then the slot is free: b gets it (nothing else looked at the set meanwhile), and a's renewal is refused
    assert sem.try_acquire("b")
    assert not sem.renew("a")
    assert r.zrange(keys.semaphore(POOL), 0, -1) == ["b"]


def test_an_expired_lease_is_not_counted_as_a_holder(r):
    # Given a pool limited to 2 whose one holder's lease (0.3 s) is not renewed
    sem = PoolSemaphore(r, POOL, 2, 0.3)
    assert sem.try_acquire("a")
    assert sem.holders() == 1
    # When the lease time has passed, then the pool has no holder (while the set itself still exists)
    time.sleep(0.4)
    assert r.exists(keys.semaphore(POOL))
    assert sem.holders() == 0


def test_a_renewal_keeps_a_slot_past_its_lease_and_only_a_holder_renews(r):
    # Given a pool limited to 1, held by a with a lease of 0.4 s
    sem = PoolSemaphore(r, POOL, 1, 0.4)
    assert sem.try_acquire("a")
    # When a renews it every 0.1 s for a second, and b (no holder) tries to renew too
    for _ in range(10):
        time.sleep(0.1)
        assert sem.renew("a")
        assert not sem.renew("b")
    # Then a still holds the slot and b never got into the set
    assert not sem.try_acquire("b")
    assert r.zrange(keys.semaphore(POOL), 0, -1) == ["a"]


def test_a_release_frees_the_slot_and_wakes_a_waiter_at_once(r):
    # Given a pool limited to 1, held by a, and a worker waiting (up to 10 s) for a slot
    sem = PoolSemaphore(r, POOL, 1, 30)
    assert sem.try_acquire("a")
    waited: list[float] = []

    def waiter():
        began = time.monotonic()
        PoolSemaphore(r, POOL, 1, 30).wait_for_release(10)
        waited.append(time.monotonic() - began)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.3)  # the waiter is blocked in BLPOP on the wake list
    # When a releases its slot
    sem.release("a")
    thread.join(timeout=15)
    # Then the waiter wakes well before its timeout, and the slot is free for it
    assert waited and waited[0] < 3, waited
    assert sem.holders() == 0 and sem.try_acquire("b")


def test_the_wake_list_holds_at_most_limit_wake_ups_and_expires(r):
    # Given a pool limited to 2 with nobody waiting
    sem = PoolSemaphore(r, POOL, 2, 30)
    # When slots are released five times
    for token in "abcde":
        assert sem.try_acquire(token)
        sem.release(token)
    # Then the wake list keeps only as many wake-ups as there are slots, and expires within a minute
    assert r.llen(keys.semaphore_wake(POOL)) == 2
    assert 0 < r.ttl(keys.semaphore_wake(POOL)) <= 60


def test_the_semaphores_expiry_follows_its_latest_lease(r):
    # Given a pool semaphore with leases of 5 s
    sem = PoolSemaphore(r, POOL, 2, 5)
    key = keys.semaphore(POOL)
    # When a slot is acquired, then the set expires just after that lease (at the next whole second + 1)
    assert sem.try_acquire("a")
    assert 5_000 < r.pttl(key) <= 7_000
    # When its expiry is near and a second slot is acquired, then the set's expiry moves with that lease
    r.pexpire(key, 500)
    assert sem.try_acquire("b")
    assert 5_000 < r.pttl(key) <= 7_000
    # When its expiry is near and a holder renews, then the set's expiry moves with the renewed lease
    r.pexpire(key, 500)
    assert sem.renew("a")
    assert 5_000 < r.pttl(key) <= 7_000
    # And a refused renewal (no such holder) does not move it
    r.pexpire(key, 500)
    assert not sem.renew("nobody")
    assert r.pttl(key) <= 500


def test_a_semaphore_whose_last_lease_expired_is_gone(r):
    # Given a pool semaphore whose only lease (0.2 s) is not renewed
    sem = PoolSemaphore(r, POOL, 1, 0.2)
    assert sem.try_acquire("a")
    # When its lease and the second after it have passed, then the set itself is gone from Redis
    assert wait_until(lambda: not r.exists(keys.semaphore(POOL)), timeout=4, step=0.1)


# -- VmLocks --------------------------------------------------------------------------------------
def test_a_vm_lock_is_none_for_its_holder_and_the_holder_for_anyone_else(r):
    # Given a VM whose lock run1 takes
    locks = VmLocks(r, 600)
    assert locks.acquire(POOL, VM, "run1") is None
    # When run1 asks again, then it still holds it
    assert locks.acquire(POOL, VM, "run1") is None
    # When run2 asks, then it is told run1 holds it, and run1 keeps it
    assert locks.acquire(POOL, VM, "run2") == "run1"
    assert r.get(keys.lease(f"vm:{POOL}:{VM}")) == "run1"
    # And another VM of the pool is free for run2
    assert locks.acquire(POOL, "other-vm", "run2") is None


def test_a_vm_lock_lives_its_ttl(r):
    # Given VM locks that outlive a chain by 600 s, when run1 takes one
    locks = VmLocks(r, 600)
    assert locks.acquire(POOL, VM, "run1") is None
    # Then it expires after that time, unless renewed
    assert 595 < r.ttl(keys.lease(f"vm:{POOL}:{VM}")) <= 600


def test_a_vm_lock_is_taken_over_only_from_the_named_old_holder(r):
    # Given a VM locked by run1
    locks = VmLocks(r, 600)
    key = keys.lease(f"vm:{POOL}:{VM}")
    assert locks.acquire(POOL, VM, "run1") is None
    r.expire(key, 30)
    # When run2 takes it over from a run that does not hold it, then it is refused and run1 keeps it
    assert not locks.take_over(POOL, VM, "run0", "run2")
    assert r.get(key) == "run1" and r.ttl(key) <= 30
    # When run2 takes it over from run1, then run2 holds it, for the whole TTL
    assert locks.take_over(POOL, VM, "run1", "run2")
    assert r.get(key) == "run2"
    assert 595 < r.ttl(key) <= 600
    assert locks.acquire(POOL, VM, "run1") == "run2"


def test_a_vm_lock_nobody_holds_is_not_taken_over(r):
    # Given a VM nobody holds the lock of, when run2 takes it over from run1, then nothing is taken
    locks = VmLocks(r, 600)
    assert not locks.take_over(POOL, VM, "run1", "run2")
    assert not r.exists(keys.lease(f"vm:{POOL}:{VM}"))


def test_only_the_holder_renews_a_vm_lock(r):
    # Given a VM locked by run1, 30 s left
    locks = VmLocks(r, 600)
    key = keys.lease(f"vm:{POOL}:{VM}")
    assert locks.acquire(POOL, VM, "run1") is None
    r.expire(key, 30)
    # When run2 renews it, then it is refused and the lock keeps its short time
    assert not locks.renew(POOL, VM, "run2")
    assert r.ttl(key) <= 30
    # When run1 renews it, then it has its whole TTL again
    assert locks.renew(POOL, VM, "run1")
    assert 595 < r.ttl(key) <= 600 and r.get(key) == "run1"


def test_only_the_holder_releases_a_vm_lock(r):
    # Given a VM locked by run1
    locks = VmLocks(r, 600)
    assert locks.acquire(POOL, VM, "run1") is None
    # When run2 releases it, then run1 still holds it
    locks.release(POOL, VM, "run2")
    assert locks.acquire(POOL, VM, "run2") == "run1"
    # When run1 releases it, then the VM is free: run2 takes it
    locks.release(POOL, VM, "run1")
    assert locks.acquire(POOL, VM, "run2") is None


# -- Slots.hold -----------------------------------------------------------------------------------
def _sem_members(r) -> set[str]:
    return set(r.zrange(keys.semaphore(POOL), 0, -1))


def test_holding_slots_takes_the_runs_lease_and_a_pool_slot_and_releases_both(r):
    # Given a pool limited to 1, and nothing held
    slots = Slots(r, POOL, 1, 10, wait_s=0.2)
    lease_key = keys.lease("export:run1")
    # When a run's export holds its slots
    with slots.hold("run1", "export") as beat:
        # Then its lease and the pool's one slot are taken, for it, and a heartbeat runs
        assert r.get(lease_key)
        assert _sem_members(r) == {"export:run1"}
        assert isinstance(beat, Heartbeat) and not beat.lost.is_set()
        with pytest.raises(WaitForSlot):
            with Slots(r, POOL, 1, 10, wait_s=0.2).hold("run2", "export"):
                pass
    # And when it leaves the block, both are free again, and a waiter was woken
    assert not r.exists(lease_key)
    assert _sem_members(r) == set()
    assert r.llen(keys.semaphore_wake(POOL)) == 1
    with slots.hold("run2", "export"):
        assert _sem_members(r) == {"export:run2"}


def test_holding_slots_releases_both_when_the_block_raises(r):
    # Given a pool limited to 1
    slots = Slots(r, POOL, 1, 10, wait_s=0.2)
    # When the block inside the hold raises
    with pytest.raises(RuntimeError, match="export broke"):
        with slots.hold("run1", "export"):
            assert _sem_members(r) == {"export:run1"}
            raise RuntimeError("export broke")
    # Then the error comes out as it was, and the run's lease and the pool's slot are both free
    assert not r.exists(keys.lease("export:run1"))
    assert _sem_members(r) == set()


def test_holding_slots_renews_both_leases_while_the_block_runs(r):
    # Given leases of 1 s
    slots = Slots(r, POOL, 1, 1.0, wait_s=0.2)
    # When the block runs for twice as long
    with slots.hold("run1", "export") as beat:
        time.sleep(2.0)
        # Then both are still held: the heartbeat renewed them
        assert r.exists(keys.lease("export:run1"))
        assert _sem_members(r) == {"export:run1"}
        assert not beat.lost.is_set()


def test_holding_slots_waits_for_slot_when_another_worker_has_the_runs_lease(r):
    # Given another worker doing this run's export (a redelivered duplicate): it holds the run's lease
    other = Lease(r, "export:run1", 10, token="other-worker")
    assert other.try_acquire()
    # When this worker holds slots for the same run's export
    began = time.monotonic()
    with pytest.raises(WaitForSlot, match="another worker is doing the export of run run1"):
        with Slots(r, POOL, 2, 10, wait_s=1.0).hold("run1", "export"):
            pytest.fail("the block must not run")
    # Then it is told to come back at once, takes no pool slot, and leaves the other's lease alone
    assert time.monotonic() - began < 0.5
    assert _sem_members(r) == set()
    assert r.get(other.key) == "other-worker"


def test_holding_slots_waits_for_slot_when_the_pool_is_at_its_limit(r):
    # Given a pool limited to 1 whose slot another run's export holds
    assert PoolSemaphore(r, POOL, 1, 30).try_acquire("export:run0")
    # When a worker holds slots for run1, willing to wait 0.5 s
    began = time.monotonic()
    with pytest.raises(WaitForSlot, match=f"pool {POOL} is at its limit of 1"):
        with Slots(r, POOL, 1, 30, wait_s=0.5).hold("run1", "export"):
            pytest.fail("the block must not run")
    took = time.monotonic() - began
    # Then it waited about that long, then gave up: the other keeps its slot, and run1's lease is free again
    assert 0.4 < took < 3, took
    assert _sem_members(r) == {"export:run0"}
    assert not r.exists(keys.lease("export:run1"))


def test_holding_slots_gets_a_slot_freed_while_it_waits(r):
    # Given a pool limited to 1 whose slot another export holds, released 0.3 s from now
    sem = PoolSemaphore(r, POOL, 1, 30)
    assert sem.try_acquire("export:run0")
    timer = threading.Timer(0.3, sem.release, args=("export:run0",))
    timer.start()
    try:
        # When a worker holds slots for run1, willing to wait 5 s
        began = time.monotonic()
        with Slots(r, POOL, 1, 30, wait_s=5).hold("run1", "export"):
            took = time.monotonic() - began
            # Then it gets the freed slot soon after the release, not at the end of its wait
            assert _sem_members(r) == {"export:run1"}
    finally:
        timer.cancel()
    assert 0.2 < took < 2, took


# -- parked transfers -------------------------------------------------------------------------------
def test_a_transfer_that_finds_the_pool_full_parks_and_a_released_slot_sends_it_on(r):
    # Given a pool limited to 1, held by run1's export, and a sender that records what it sends
    sent = []
    slots = Slots(r, POOL, 1, 10, wait_s=0.1, send=lambda stage, ctx: sent.append((stage, ctx["run"])))
    with slots.hold("run1", "export"):
        # When run2's and then run3's exports find the pool full
        for run in ("run2", "run3"):
            with pytest.raises(WaitForSlot) as waited:
                with slots.hold(run, "export", park=("export", {"run": run})):
                    pass
            # Then each is parked (it need not come back soon), and nothing is sent yet
            assert waited.value.parked
        assert r.zcard(keys.semaphore_parked(POOL)) == 2 and sent == []
    # And when run1's export releases its slot, the oldest parked transfer is sent on, once
    assert sent == [("export", "run2")]
    assert r.zcard(keys.semaphore_parked(POOL)) == 1
    assert 0 < r.ttl(keys.semaphore_parked(POOL)) <= 24 * 3600


def test_a_transfer_without_anything_to_park_only_waits(r):
    # Given a full pool
    slots = Slots(r, POOL, 1, 10, wait_s=0.1, send=lambda stage, ctx: None)
    with slots.hold("run1", "export"):
        # When another transfer gives nothing to park (or the slots have no sender)
        for other in (slots, Slots(r, POOL, 1, 10, wait_s=0.1)):
            with pytest.raises(WaitForSlot) as waited:
                with other.hold("run2", "export", park=("export", {"run": "run2"}) if other is not slots else None):
                    pass
            # Then it is told to come back soon, and the parked set stays empty
            assert not waited.value.parked
    assert not r.exists(keys.semaphore_parked(POOL))
