"""The state one input partition owns, as plain msgspec structs so it snapshots to bytes and back.

Everything the engine needs to continue exactly where it stopped lives here; derived runtime data (the
streak timer heap, the next-timer time) is rebuilt from it on restore. Dict iteration order is never
relied on for outputs (a changelog restore inserts keys in another order), only sorted views are.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import msgspec
from msgspec import Struct

RETENTION_BUCKET_MS = 60_000  # dedupe ids and closed streaks expire a minute-bucket at a time


class CreatorState(Struct, gc=False):
    region: str
    balance: int = 0  # milli-diamonds credited minus paid out
    credited: int = 0  # lifetime milli-diamonds credited
    paid_out: int = 0  # lifetime milli-diamonds paid out
    crossings: int = 0  # notices emitted so far (the next notice's sequence is crossings + 1)
    above: bool = False  # a notice is out, not re-armed yet (its lowest balance since was not under the threshold)
    low: int = 0  # the lowest balance since the last notice (payouts lower it; see stream.engine.reference)
    panes: dict[int, list[int]] = {}  # pane start ms -> [milli_diamonds, credits] for open windows


CreatorFields = tuple[str, int, int, int, int, bool, int]
# A creator without its panes, in declaration order: its changelog record (`c:`, stream.state.changelog_schema)
# and what the native engine is handed. The panes come last, so CreatorState(*fields) rebuilds one.
CREATOR_FIELDS: tuple[str, ...] = tuple(f for f in CreatorState.__struct_fields__ if f != "panes")
assert CreatorState.__struct_fields__ == (*CREATOR_FIELDS, "panes")

creator_fields: Callable[[CreatorState], CreatorFields] = operator.attrgetter(*CREATOR_FIELDS)  # c -> its fields


class Streak(Struct, gc=False, array_like=True):
    """A streak of a streakable gift: (room, sender, gift, group). Credited once with its highest
    cumulative count; kept after closing (for groups with an id) so stragglers are not counted again.
    Encoded as an array of its fields in this order (most of the state is closed streaks: field names would
    be half of each record); stream.state.changelog still reads the older map form."""

    creator_id: str
    region: str
    diamond_count: int
    count: int  # highest cumulative repeat_count seen
    credited: int  # repeat_count already credited
    last_ts: int  # event time of the newest event seen (the timeout runs from here)
    last_event_id: str
    open: bool = True


class Account(Struct, gc=False, array_like=True):
    """A creator's account as the partition holds it (from topic creator-accounts). A tombstone leaves the account
    here with status policy.CLOSED (and the last region, method and age it had), so a closed account is never
    mistaken for a creator without one. Encoded as an array of its fields in this order."""

    region: str  # "" only for an account closed before any record or credit named a region
    account_status: str
    payout_method: str
    age: int
    updated_ts: int


class PartitionState(Struct, gc=False):
    watermark: int | None = None  # highest accepted event time on this partition
    close_cursor: int | None = None  # every window ending at or before this is closed and emitted
    creators: dict[str, CreatorState] = {}
    streaks: dict[str, Streak] = {}
    seen: set[str] = set()  # event ids inside the dedupe horizon
    seen_buckets: dict[int, list[str]] = {}  # retention bucket -> event ids (for expiry)
    streak_buckets: dict[int, list[str]] = {}  # retention bucket -> closed streak keys (for expiry)
    payouts_seen: set[str] = set()
    accounts: dict[str, Account] = {}  # creator_id -> its account (creators without a record have none)
    pane_creators: dict[int, dict[str, None]] = {}  # pane start -> creators holding a tally there


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PartitionState)


def snapshot(state: PartitionState) -> bytes:
    return _encoder.encode(state)


def restore(data: bytes) -> PartitionState:
    return _decoder.decode(data)
