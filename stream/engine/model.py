"""Records at the edges: the gift event we read, the records we emit, and batch decoding.

Structs are msgspec so decoding validates types in C and encoding is byte-stable (field order is the
declaration order), which is what makes offline and live notices byte-identical.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import msgspec
from msgspec import Meta, Struct

# Every id of a gift or payout: 1 to 64 of [0-9A-Za-z_-] (real ids are decimal numbers). No id may hold a
# separator or control character, so the engine's joined streak keys (room, sender, gift, group joined by
# U+001F) cannot collide. The JSON schemas carry the same patterns; native/src/decode.rs checks them with a
# byte loop and leaves every id they reject to msgspec. `(?!\n)`: Python's `$` also matches before a final
# newline, and msgspec (and jsonschema in Python) use Python's re.
ID_PATTERN = "^[0-9A-Za-z_-]{1,64}$(?!\n)"
GROUP_ID_PATTERN = "^[0-9A-Za-z_-]{0,64}$(?!\n)"  # optional: empty means no group
# msgspec checks a pattern with Python's re, ~0.5 us an id: 3x the cost of decoding a whole record. So the
# structs the hot path decodes bound only the length, a one-pass byte check (_PLAIN_BYTES) clears the usual
# record, and the rest are decoded again with the pattern (_strict) so that msgspec words the reason.
Id = Annotated[str, Meta(min_length=1, max_length=64)]
GroupId = Annotated[str, Meta(max_length=64)]
_PATTERNS = {Id: Annotated[str, Meta(pattern=ID_PATTERN)], GroupId: Annotated[str, Meta(pattern=GROUP_ID_PATTERN)]}
# The bytes a record may hold besides quotes for the byte check to clear it: then each of its strings is
# within ID_PATTERN. `raw.translate(None, _PLAIN_BYTES)` leaves the quotes and any other byte, in one pass.
_PLAIN_BYTES = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-:,{}"
# The quotes of a flat event: its 10 required keys and 4 string values, plus 4 with a region, plus 4 with a group id
# (indexed by (has region) << 1 | (has group id)).
_FLAT_EVENT = tuple(b'"' * (28 + 4 * (i >> 1) + 4 * (i & 1)) for i in range(4))
_FLAT_PAYOUT = b'"' * 12
_FLAT_ACCOUNT = b'"' * 20  # 6 keys, 4 string values
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
    region: str = ""  # the creator's payout region; real LIVE clients send none (the account has it)
    group_id: GroupId = ""


class CreatorAccount(Struct, frozen=True, gc=False):
    """A creator's account (topic `creator-accounts`, compacted, key = creator_id;
    schemas/creator-account.schema.json). Unknown fields are ignored."""

    creator_id: Id
    region: str
    account_status: Annotated[str, Meta(min_length=1, max_length=32)]
    payout_method: Annotated[str, Meta(min_length=1, max_length=32)]
    age: Annotated[int, Meta(ge=0, le=150)]  # verified age in years, as of updated_ts
    updated_ts: EpochMs


class AccountClosed(NamedTuple):
    """A tombstone on `creator-accounts`: the account of `creator_id` is closed as of `ts` (the record's time)."""

    creator_id: str
    ts: int


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
    account_status: str
    payout_method: str
    crossing_seq: int
    balance_milli_diamonds: int
    gross_cents: int
    payable_cents: int
    service_fee_bps: int
    service_fee_cents: int
    method_fee_cents: int
    net_cents: int
    threshold_cents: int
    daily_cap_cents: int
    currency: str
    policy_version: str
    trigger: str  # "gift" (a credit crossed the threshold) or "account" (the account became eligible above it)
    trigger_event_id: str | None  # the gift's event_id; None for an account trigger
    trigger_ts: int  # the gift's event time, or the account record's updated_ts


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
TOO_DEEP = "too_deep"
DUPLICATE_KEY = "duplicate_key"
WRONG_PARTITION = "wrong_partition"
UNKNOWN_ACCOUNT_STATUS = "unknown_account_status"
UNKNOWN_PAYOUT_METHOD = "unknown_payout_method"
KEY_MISMATCH = "key_mismatch"
REJECT_REASONS = (
    NOT_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, INVALID_VALUE, NON_POSITIVE_COUNT,
    UNKNOWN_REGION, TS_TOO_FAR_FUTURE, TS_TOO_OLD, OVERSIZE, TOO_DEEP, DUPLICATE_KEY, WRONG_PARTITION,
    UNKNOWN_ACCOUNT_STATUS, UNKNOWN_PAYOUT_METHOD, KEY_MISMATCH,
)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A reject an engine decides about a record it decoded: the dead letter's reason code and the wording of
    its detail, a str.format template of named parameters. Written here only: the reference engine formats it
    when it rejects, the compiled core is handed these (EVENT_REJECTIONS) and calls `of` with the parameters,
    only for a record it rejects. (The decoder's rejects are worded by msgspec and scan_structure, below.)"""

    reason: str
    template: str

    def of(self, **params: object) -> tuple[str, str]:
        """(reason, detail)."""
        return self.reason, self.template.format(**params)


class EventRejections(NamedTuple):
    """The rejects of a decoded gift event, in the order the compiled core takes them (native/src/lib.rs
    RejectTexts)."""

    wrong_partition: Rejection  # creator_id, owner, partitions, partition
    unknown_region: Rejection  # region, policy_version
    too_far_future: Rejection  # ts, max_future_ms, watermark
    too_old: Rejection  # ts, dedupe_horizon_ms, watermark
    no_region: Rejection  # creator_id, policy_version
    account_region: Rejection  # creator_id, region, policy_version


EVENT_REJECTIONS = EventRejections(
    wrong_partition=Rejection(WRONG_PARTITION, "creator {creator_id} belongs to partition {owner} of {partitions}, "
                                               "not {partition}"),
    unknown_region=Rejection(UNKNOWN_REGION, "region {region!r} is not in policy {policy_version}"),
    too_far_future=Rejection(TS_TOO_FAR_FUTURE, "ts {ts} is more than {max_future_ms} ms after the watermark "
                                                "{watermark}"),
    too_old=Rejection(TS_TOO_OLD, "ts {ts} is older than the dedupe horizon ({dedupe_horizon_ms} ms before the "
                                  "watermark {watermark})"),
    no_region=Rejection(UNKNOWN_REGION, "the gift names no region, creator {creator_id} has no account record and "
                                        "policy {policy_version} has no accounts.default_region"),
    # an account kept from an older policy: the gift would be priced in its region, which this policy does not have
    account_region=Rejection(UNKNOWN_REGION, "the account of creator {creator_id} names region {region!r}, which is "
                                             "not in policy {policy_version}"),
)
# The rejects of a decoded payout (both engines' payout loop is Python: stream.engine.reference.EngineEdges).
PAYOUT_WRONG_PARTITION = Rejection(WRONG_PARTITION, "payout {payout_id} is for creator {creator_id}, who belongs to "
                                                    "partition {owner} of {partitions}, not {partition}")
PAYOUT_OVER_BALANCE = Rejection(INVALID_VALUE, "payout {payout_id} of {milli_diamonds} exceeds the balance {balance}")
# The rejects of a creator-accounts record (its loop is Python in both engines, as the payouts').
ACCOUNT_WRONG_PARTITION = Rejection(WRONG_PARTITION, "the account of creator {creator_id} belongs to partition "
                                                     "{owner} of {partitions}, not {partition}")
ACCOUNT_UNKNOWN_REGION = Rejection(UNKNOWN_REGION, "the account of creator {creator_id}: region {region!r} is not "
                                                   "in policy {policy_version}")
ACCOUNT_UNKNOWN_STATUS = Rejection(UNKNOWN_ACCOUNT_STATUS, "the account of creator {creator_id}: status {status!r} "
                                                           "is not in policy {policy_version}")
ACCOUNT_UNKNOWN_METHOD = Rejection(UNKNOWN_PAYOUT_METHOD, "the account of creator {creator_id}: payout method "
                                                          "{method!r} is not offered in region {region} (policy "
                                                          "{policy_version})")
ACCOUNT_KEY_MISMATCH = Rejection(KEY_MISMATCH, "the record's key {key!r} is not its creator_id {creator_id!r}")
ACCOUNT_BAD_TOMBSTONE = Rejection(INVALID_VALUE, "a tombstone (null value) needs a creator id as its key, got "
                                                 "{key!r}")

# The deepest nesting a record may have (the top-level object is depth 1; each array or object inside adds
# one). Real records are flat; the bound keeps every decoder far from its recursion limit (msgspec raised
# RecursionError near 1000, serde_json stops at 128). The native core gets it at construction.
MAX_JSON_DEPTH = 32

def _strict(cls: type[Struct]) -> type[Struct]:
    """cls with every id held to its pattern (for the wording of the rejects only: it decodes, then is
    dropped)."""
    fields = [(f.name, _PATTERNS.get(f.type, f.type)) if f.required else (f.name, _PATTERNS.get(f.type, f.type),
                                                                          f.default)
              for f in msgspec.structs.fields(cls)]
    return msgspec.defstruct(cls.__name__, fields, frozen=True, gc=False)


_event_decoder = msgspec.json.Decoder(GiftEvent)
_payout_decoder = msgspec.json.Decoder(Payout)
_strict_event_decoder = msgspec.json.Decoder(_strict(GiftEvent))
_strict_payout_decoder = msgspec.json.Decoder(_strict(Payout))
_account_decoder = msgspec.json.Decoder(CreatorAccount)
_strict_account_decoder = msgspec.json.Decoder(_strict(CreatorAccount))
_ID_RE = re.compile(ID_PATTERN)
encode = msgspec.json.Encoder().encode


# msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a JSON string, and
# RecursionError for nesting near Python's recursion limit (such a record is too deep: scan_structure says so).
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

# ---------------------------------------------------------------- the structural scan

# One JSON token after optional whitespace (group 1): a string (group 2: its body; escapes are checked by
# msgspec when the body has a backslash), a structural character (group 3), or a scalar.
_TOKEN = re.compile(rb'([ \t\n\r]*)(?:"((?:[^"\\\x00-\x1f]|\\.)*)"|([{}\[\]:,])'
                    rb'|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null)')
_WS = re.compile(rb"[ \t\n\r]*")
_VALUE, _FIRST_KEY, _KEY, _COLON, _NEXT, _FIRST_VALUE, _DONE = range(7)


def scan_structure(raw: bytes, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """The structural verdict on a record, before any typed decoding: (NOT_JSON, detail) when it is not JSON
    at all, else the first violation in document order, (TOO_DEEP, detail) or (DUPLICATE_KEY, detail) for
    an object holding a key twice (compared unescaped: "a" and "\\u0061" are one key; msgspec would keep
    the last), else None. Iterative, so no depth can crash it. It only runs on records the decoders' cheap
    checks cannot clear (see decode_event); native/src/decode.rs first_violation is its twin."""
    try:
        raw.decode()
    except UnicodeDecodeError as e:
        return NOT_JSON, f"JSON is malformed: invalid UTF-8 (byte {e.start})"
    first: tuple[str, str] | None = None
    depth = 0
    stack: list[set[bytes] | None] = []  # per open container: an object's keys so far, None for an array
    state = _VALUE
    pos, end = 0, len(raw)
    match = _TOKEN.match
    while pos < end and state != _DONE:
        m = match(raw, pos)
        if m is None:
            break
        at, pos = m.end(1), m.end()  # where the token starts, where the next one may
        body, punct = m.group(2), m.group(3)
        if punct is None:  # a string or a scalar
            key = body
            if body is not None and b"\\" in body:
                try:
                    key = msgspec.json.decode(b'"' + body + b'"').encode()  # msgspec's own verdict on escapes
                except DECODE_ERRORS:
                    return NOT_JSON, f"JSON is malformed: invalid string (byte {at})"
            if state in (_FIRST_KEY, _KEY):
                if key is None:
                    break  # a key must be a string
                keys = stack[-1]
                if key in keys:
                    if first is None:
                        first = DUPLICATE_KEY, f"key {key.decode()[:64]!r} repeated in one object (byte {at})"
                else:
                    keys.add(key)
                state = _COLON
                continue
            if state not in (_VALUE, _FIRST_VALUE):
                break
            state = _NEXT if stack else _DONE
            continue
        c = punct[0]
        if c in b"{[":
            if state not in (_VALUE, _FIRST_VALUE):
                break
            depth += 1
            if depth > max_depth and first is None:
                first = TOO_DEEP, f"nested deeper than {max_depth} levels (byte {at})"
            is_object = c == 0x7B
            stack.append(set() if is_object else None)
            state = _FIRST_KEY if is_object else _FIRST_VALUE
        elif c in b"}]":
            if not stack or (stack[-1] is not None) != (c == 0x7D) or state not in (
                    _NEXT, _FIRST_KEY if c == 0x7D else _FIRST_VALUE):
                break
            stack.pop()
            depth -= 1
            state = _NEXT if stack else _DONE
        elif c == 0x3A:  # ':'
            if state != _COLON:
                break
            state = _VALUE
        else:  # ','
            if state != _NEXT:
                break
            state = _KEY if stack[-1] is not None else _VALUE
    pos = _WS.match(raw, pos).end()
    if state != _DONE or pos != end:
        return NOT_JSON, f"JSON is malformed (byte {pos})"
    return first


def _structure_checked(raw: bytes, decoded: object, strict: msgspec.json.Decoder) -> object:
    """A record the cheap checks could not clear: the scan's violation if it has one, else the id patterns'
    (msgspec's wording), else what msgspec decoded. (A record msgspec decoded is JSON: a not_json from the
    scan there would be the scan's mistake.)"""
    bad = scan_structure(raw)
    if bad is not None and bad[0] != NOT_JSON:
        return bad
    try:
        strict.decode(raw)
    except DECODE_ERRORS as e:
        return classify_error(e), str(e)[:300]
    return decoded


def _rejected(raw: bytes, err: Exception) -> tuple[str, str]:
    """A record msgspec could not decode: the scan's verdict comes first (not JSON, too deep), then
    msgspec's reason and wording."""
    bad = scan_structure(raw)
    # A not_json from the scan goes before a schema reason, and before msgspec's recursion error; for
    # other malformed input msgspec's wording is kept.
    if bad is not None and (bad[0] != NOT_JSON or isinstance(err, (RecursionError, msgspec.ValidationError))):
        return bad
    if isinstance(err, RecursionError):  # cannot happen within MAX_JSON_DEPTH; a dead letter all the same
        return TOO_DEEP, f"nested too deep to decode: {err}"[:300]
    return classify_error(err), str(err)[:300]


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
        ev = _event_decoder.decode(raw)
    except DECODE_ERRORS as e:
        return _rejected(raw, e)
    # The cheap check that lets a decoded record skip the structural scan and the id patterns: besides bytes
    # of _PLAIN_BYTES (so every id is within its pattern) it holds exactly as many quotes as its required
    # strings need (11 keys and 5 string values, plus group_id's key and value when it has one). Any further
    # key, at any depth, would add at least two quotes. So such a record is one flat object with no key but
    # the struct's, each once: nothing deep, nothing repeated.
    if raw.translate(None, _PLAIN_BYTES) == _FLAT_EVENT[(ev.region != "") << 1 | (ev.group_id != "")]:
        return ev
    return _structure_checked(raw, ev, _strict_event_decoder)


def decode_events(raws: list[bytes], max_bytes: int) -> list[GiftEvent | tuple[str, str]]:
    """Decode a batch. Fast path: one comprehension with no per-record error handling; only when some
    record is bad (or too big) does it go record by record so each bad one gets its own reason."""
    decode = _event_decoder.decode
    plain, flat = _PLAIN_BYTES, _FLAT_EVENT
    if not raws or max(map(len, raws)) <= max_bytes:
        try:
            # decode_event's cheap check, inlined: it runs once per record.
            return [ev if r.translate(None, plain) == flat[(ev.region != "") << 1 | (ev.group_id != "")]
                    else _structure_checked(r, ev, _strict_event_decoder) for r in raws for ev in (decode(r),)]
        except DECODE_ERRORS:
            pass
    return [
        (OVERSIZE, f"record is {len(r)} bytes, limit {max_bytes}") if len(r) > max_bytes else decode_event(r)
        for r in raws
    ]


def decode_payout(raw: bytes) -> Payout | tuple[str, str]:
    try:
        p = _payout_decoder.decode(raw)
    except DECODE_ERRORS as e:
        return _rejected(raw, e)
    # decode_event's cheap check: 4 keys and 2 string values are 12 quotes.
    if raw.translate(None, _PLAIN_BYTES) == _FLAT_PAYOUT:
        return p
    return _structure_checked(raw, p, _strict_payout_decoder)


def decode_account(key: bytes | None, raw: bytes | None, ts: int) -> CreatorAccount | AccountClosed | tuple[str, str]:
    """Decode one creator-accounts record (key, value, record timestamp): the account, the closing of one (a
    tombstone), or (reason, detail) when it is bad input. The key must be the account's creator_id."""
    try:
        key_text = None if key is None else key.decode()
    except UnicodeDecodeError:
        key_text = None
    if raw is None:
        if key_text is None or not _ID_RE.match(key_text):
            return ACCOUNT_BAD_TOMBSTONE.of(key=key)
        return AccountClosed(key_text, ts)
    try:
        account = _account_decoder.decode(raw)
    except DECODE_ERRORS as e:
        return _rejected(raw, e)
    if raw.translate(None, _PLAIN_BYTES) != _FLAT_ACCOUNT:
        checked = _structure_checked(raw, account, _strict_account_decoder)
        if type(checked) is tuple:
            return checked
    if key_text != account.creator_id:
        return ACCOUNT_KEY_MISMATCH.of(key=key_text if key_text is not None else key, creator_id=account.creator_id)
    return account


_notice_decoder = msgspec.json.Decoder(PayoutNotice)
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)
_window_total_decoder = msgspec.json.Decoder(WindowTotal)


def decode_notice(raw: bytes) -> PayoutNotice:
    return _notice_decoder.decode(raw)


def decode_dead_letter(raw: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(raw)


def decode_window_total(raw: bytes) -> WindowTotal:
    return _window_total_decoder.decode(raw)
