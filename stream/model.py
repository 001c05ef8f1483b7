"""Records at the edges: the gift event we read, the records we emit, and batch decoding.

Structs are msgspec so decoding validates types in C and encoding is byte-stable (field order is the
declaration order), which is what makes offline and live notices byte-identical.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

Id = Annotated[str, Meta(min_length=1, max_length=64)]
# Upper bounds keep every sum far inside 64 bits (the changelog's msgpack cannot hold more): a single gift
# is at most 10 M coins x 1 M units, and nothing real comes close (the dearest gift costs 44,999 coins).
Int32 = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Coins = Annotated[int, Meta(ge=1, le=10_000_000)]
Units = Annotated[int, Meta(ge=1, le=1_000_000)]
EpochMs = Annotated[int, Meta(ge=0, le=100_000_000_000_000)]


class GiftEvent(Struct, frozen=True, gc=False):
    """One gift event from topic `gifts` (schemas/gift-event.schema.json). Unknown fields are ignored."""

    event_id: Id
    room_id: Id
    creator_id: Id
    sender_id: Id
    gift_id: Int32
    gift_type: Int32
    diamond_count: Coins
    repeat_count: Units
    repeat_end: bool
    ts: EpochMs
    region: str
    group_id: Annotated[str, Meta(max_length=64)] = ""


class Payout(Struct, frozen=True, gc=False):
    """A payout actually made (topic `payouts`): lowers the balance, re-arms the threshold."""

    payout_id: Id
    creator_id: Id
    milli_diamonds: Annotated[int, Meta(ge=1, le=2**62)]
    ts: EpochMs


class PayoutNotice(Struct, frozen=True, gc=False):
    notice_id: str
    creator_id: str
    region: str
    crossing_seq: int
    balance_milli_diamonds: int
    gross_cents: int
    payable_cents: int
    fee_cents: int
    net_cents: int
    threshold_cents: int
    daily_cap_cents: int
    payout_method: str
    currency: str
    policy_version: str
    trigger_event_id: str
    trigger_ts: int


class WindowTotal(Struct, frozen=True, gc=False):
    creator_id: str
    window: str
    window_start: int
    window_end: int
    milli_diamonds: int
    credits: int
    policy_version: str


class MissedWindow(Struct, frozen=True, gc=False):
    window: str
    window_start: int
    window_end: int


class LateGift(Struct, frozen=True, gc=False):
    event_id: str
    creator_id: str
    ts: int
    watermark: int
    milli_diamonds: int
    missed_windows: list[MissedWindow]


class DeadLetter(Struct, frozen=True, gc=False):
    reason: str
    detail: str
    raw_b64: str
    source_topic: str
    partition: int | None
    offset: int | None
    policy_version: str


# Reject reason codes (the `reason` of a dead letter and the label of the rejected metric).
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_VALUE = "invalid_value"
NON_POSITIVE_COUNT = "non_positive_count"
UNKNOWN_REGION = "unknown_region"
TS_TOO_FAR_FUTURE = "ts_too_far_future"
TS_TOO_OLD = "ts_too_old"
OVERSIZE = "oversize"
REJECT_REASONS = (
    NOT_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, INVALID_VALUE, NON_POSITIVE_COUNT,
    UNKNOWN_REGION, TS_TOO_FAR_FUTURE, TS_TOO_OLD, OVERSIZE,
)

_event_decoder = msgspec.json.Decoder(GiftEvent)
_payout_decoder = msgspec.json.Decoder(Payout)
encode = msgspec.json.Encoder().encode


# msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a JSON string.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError)


def classify_error(err: msgspec.DecodeError | UnicodeDecodeError) -> str:
    """Map a msgspec decode/validation error to a reason code."""
    msg = str(err)
    if not isinstance(err, msgspec.ValidationError):
        return NOT_JSON
    if msg.startswith("Object missing required field"):
        return MISSING_FIELD
    if msg.startswith("Expected `object`"):
        return NOT_OBJECT
    if ">= 1" in msg and ("$.diamond_count" in msg or "$.repeat_count" in msg):
        return NON_POSITIVE_COUNT
    if msg.startswith("Expected `"):
        # "Expected `int`, got `str`" is a type error; "Expected `int` >= 0" a value error.
        return WRONG_TYPE if ", got `" in msg else INVALID_VALUE
    return INVALID_VALUE


def decode_event(raw: bytes) -> GiftEvent | tuple[str, str]:
    """Decode one record: the event, or (reason, detail) when it is bad input."""
    try:
        return _event_decoder.decode(raw)
    except DECODE_ERRORS as e:
        return classify_error(e), str(e)[:300]


def decode_events(raws: list[bytes], max_bytes: int) -> list[GiftEvent | tuple[str, str]]:
    """Decode a batch. Fast path: one comprehension with no per-record error handling; only when some
    record is bad (or too big) does it go record by record so each bad one gets its own reason."""
    decode = _event_decoder.decode
    if not raws or max(map(len, raws)) <= max_bytes:
        try:
            return [decode(r) for r in raws]
        except DECODE_ERRORS:
            pass
    return [
        (OVERSIZE, f"record is {len(r)} bytes, limit {max_bytes}") if len(r) > max_bytes else decode_event(r)
        for r in raws
    ]


def decode_payout(raw: bytes) -> Payout | tuple[str, str]:
    try:
        return _payout_decoder.decode(raw)
    except DECODE_ERRORS as e:
        return classify_error(e), str(e)[:300]


_notice_decoder = msgspec.json.Decoder(PayoutNotice)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
_window_total_decoder = msgspec.json.Decoder(WindowTotal)


def decode_notice(raw: bytes) -> PayoutNotice:
    return _notice_decoder.decode(raw)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(raw)


def decode_window_total(raw: bytes) -> WindowTotal:
    return _window_total_decoder.decode(raw)
