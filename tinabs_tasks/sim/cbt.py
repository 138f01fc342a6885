"""Changed block tracking: each CBT-enabled VDI's change log, as SM keeps it.

SM (``drivers/VDI.py``) gives every CBT-enabled VDI a log: a bitmap with one
bit per 64 KiB block (blktap ``cbt-util.h`` ``CBT_BLOCK_SIZE``), set by tapdisk
on every write, and parent/child links.  A snapshot (``_cbt_snapshot``) renames
the VDI's log to the snapshot's and starts an empty one for the VDI, linked as
the snapshot's child, so a snapshot's log holds the blocks written between the
previous snapshot and itself.  ``list_changed_blocks(from, to)`` ORs the logs
met walking child links from ``from`` until ``to``; a walk that never meets
``to`` means the two are unrelated.  Disabling CBT deletes the VDI's log and
unlinks it from its parent (later snapshots start a new chain); destroying a
VDI merges its bitmap into its child's (``VDI.delete``), so deleting Tuesday's
snapshot keeps Monday..Wednesday right.

The tracker hears every write to a VDI's bytes through ``pool.write_observers``.
"""
from __future__ import annotations

import base64

from tinabs_tasks.sim.errors import XapiError

BLOCK = 64 * 1024


class Log:
    """One cbtlog file: the blocks written while it was current, and its chain links."""

    def __init__(self, size: int, parent: "Log | None" = None):
        self.size = size
        self.blocks: set[int] = set()
        self.parent = parent
        self.child: Log | None = None

    def mark(self, offset: int, length: int) -> None:
        if length > 0:
            self.blocks.update(range(offset // BLOCK, (offset + length - 1) // BLOCK + 1))


class ChangeTracker:
    """The logs of one pool, by VDI ref."""

    def __init__(self, pool):
        self.pool = pool
        self.logs: dict[str, Log] = {}
        pool.write_observers.append(self.written)

    # -- what SM does ---------------------------------------------------------
    def written(self, vdi: str, offset: int, length: int) -> None:
        log = self.logs.get(vdi)
        if log is not None:
            log.mark(offset, length)

    def enable(self, vdi: str) -> None:
        with self.pool.store.lock:
            if vdi not in self.logs:
                self.logs[vdi] = Log(self.pool.store.get("VDI", vdi, "virtual_size"))

    def disable(self, vdi: str) -> None:
        with self.pool.store.lock:
            log = self.logs.pop(vdi, None)
            if log is not None and log.parent is not None and log.parent.child is log:
                log.parent.child = None

    def snapshotted(self, vdi: str, snapshot: str) -> bool:
        """``snapshot`` was just taken of ``vdi``: the log so far becomes the snapshot's; the VDI
        starts an empty one after it.  False when ``vdi`` does not track changes."""
        with self.pool.store.lock:
            self.forget_destroyed()
            log = self.logs.get(vdi)
            if log is None:
                return False
            fresh = Log(self.pool.store.get("VDI", vdi, "virtual_size"), parent=log)
            fresh.child, log.child = log.child, fresh
            self.logs[snapshot] = log
            self.logs[vdi] = fresh
            return True

    def forget_destroyed(self) -> None:
        """Logs of VDIs that are gone: merged into their child and unlinked (SM ``VDI.delete``)."""
        with self.pool.store.lock:
            for vdi in [v for v in self.logs if not self.pool.store.exists("VDI", v)]:
                log = self.logs.pop(vdi)
                if log.child is not None:
                    log.child.blocks |= log.blocks
                    log.child.parent = log.parent
                if log.parent is not None and log.parent.child is log:
                    log.parent.child = log.child

    def changed_blocks(self, vdi_from: str, vdi_to: str) -> str:
        """The base64 bitmap of the blocks written after ``vdi_from`` up to ``vdi_to``."""
        with self.pool.store.lock:
            self.forget_destroyed()
            if vdi_from == vdi_to:
                raise changed_blocks_error("Source and target VDI are same")
            start, goal = self.logs.get(vdi_from), self.logs.get(vdi_to)
            if start is None or goal is None:
                raise changed_blocks_error("Source and target VDI are unrelated")
            merged: set[int] = set()
            log = start.child
            while log is not None:
                merged |= log.blocks
                if log is goal:
                    return encode_bitmap(merged, goal.size)
                log = log.child
            raise changed_blocks_error("Source and target VDI are unrelated")


def encode_bitmap(blocks: set[int], size: int) -> str:
    """One bit per 64 KiB block, block i at bit i, most significant bit first within a byte (SM
    ``list_changed_blocks`` byte-reverses cbt-util's bitmap into a big-endian bitarray), in
    ceil(ceil(size / 64 KiB) / 8) bytes (``cbt-util.h bitmap_size``)."""
    nblocks = -(-size // BLOCK)
    bitmap = bytearray(-(-nblocks // 8))
    for block in blocks:
        if block < nblocks:
            bitmap[block >> 3] |= 0x80 >> (block & 7)
    return base64.b64encode(bytes(bitmap)).decode()


def changed_blocks_error(reason: str) -> XapiError:
    """SM's CBTChangedBlocksError (XE_SR_ERRORCODES.xml code 460) as xapi passes an SM fault on:
    SR_BACKEND_FAILURE_<code> ["", description [opterr=...], ""] (sm_exec.ml)."""
    return XapiError("SR_BACKEND_FAILURE_460", "",
                     f"Failed to calculate changed blocks for given VDIs. [opterr={reason}]", "")


def tracker(pool) -> ChangeTracker:
    """The pool's tracker, made (and hooked to its writes) on first use."""
    with pool.store.lock:
        found = getattr(pool, "cbt", None)
        if found is None:
            found = pool.cbt = ChangeTracker(pool)
        return found


def on_snapshot(pool, vdi: str, snapshot: str) -> None:
    """Storage hook for VDI.snapshot: a snapshot of a CBT-enabled VDI has CBT (its log) too."""
    found = getattr(pool, "cbt", None)
    if found is not None and found.snapshotted(vdi, snapshot):
        pool.store.set("VDI", snapshot, "cbt_enabled", True)


def assert_has_data(pool, vdi: str) -> None:
    """xapi_vdi.ml check_operation_error: a cbt_metadata VDI (data destroyed) refuses clone, copy,
    snapshot, resize, mirror, set_on_boot and CBT changes with VDI_INCOMPATIBLE_TYPE."""
    if pool.store.get("VDI", vdi, "type") == "cbt_metadata":
        raise XapiError("VDI_INCOMPATIBLE_TYPE", vdi, "cbt_metadata")
