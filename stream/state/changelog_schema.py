"""The changelog's schema, written here and nowhere else: the keys of a partition's changelog records and the
layout of their values. stream.state.changelog (the reference engine's encoder and decoder, and checkpoint
bodies) is built from these names. The compiled engine (native/src/changelog.rs) compiles the same schema in,
for a hot path without lookups, and describes it back as `stream._native.changelog_schema()`: the extension
refuses to load when that is not this module's SCHEMA, so neither side can change alone. The bytes themselves
are pinned by tests/contract/golden/changelog.json.

Keys are bytes: a kind byte, NAME_SEP, then the record's name (UTF-8); the cursor's key is its kind byte alone.
Both decoders dispatch on the first byte. Values are msgpack arrays of the fields listed, in that order (each
int in its smallest msgpack form, as msgspec writes it); None is a tombstone (the key is deleted).

  kind     key                              value                                      tombstone
  cursor   m                                CURSOR_FIELDS [watermark, close_cursor]    never
                                            (nil before the first event)
  creator  c:<creator id>                   CREATOR_FIELDS [region, balance, credited, never
                                            paid_out, crossings, above, low]; a
                                            record written before `low` holds the
                                            first six: its low is its balance
                                            (CREATOR_FALLBACKS)
  pane     w:<creator id>\\x1e<pane start>   PANE_FIELDS [milli_diamonds, credits]      when the pane is dropped
  streak   s:<streak key>                   STREAK_FIELDS: Streak's fields in their    when it expires
                                            declaration order (an older map form of
                                            the same names is still read); a trailing
                                            field with a default may be left out
  dedupe   d:<bucket>:<start>               [event id, ...]: the bucket's ids from     every chunk of a bucket
                                            index <start> on (a chunk per batch)       when it expires
  payout   p:<payout id>                    PAYOUT_VALUE (the byte "1")                never
  account  a:<creator id>                   ACCOUNT_FIELDS: Account's fields in their  never (a closed account
                                            declaration order                          has status "closed")

<pane start> and <bucket> are epoch milliseconds, <start> an index, written in decimal. <streak key> is the
engine's: room, sender, gift and group ids joined by STREAK_KEY_SEP (no id may hold it: model.ID_PATTERN).

A checkpoint body (stream.state.checkpoint) is the whole state as such records, each framed as
[u32 key length][key][u32 value length][value], big-endian (BODY_LENGTH).
"""

from __future__ import annotations

import struct

from stream.state.tables import CREATOR_FIELDS, Account, Streak

# The kind bytes (the first byte of a key: distinct single bytes, the decoders dispatch on them) and what follows
# the kind in a key with a name.
CURSOR, CREATOR, PANE, STREAK, DEDUPE, PAYOUT, ACCOUNT = b"m", b"c", b"w", b"s", b"d", b"p", b"a"
NAME_SEP = b":"
CURSOR_KEY = CURSOR
CREATOR_PREFIX, PANE_PREFIX, STREAK_PREFIX, DEDUPE_PREFIX, PAYOUT_PREFIX, ACCOUNT_PREFIX = (
    kind + NAME_SEP for kind in (CREATOR, PANE, STREAK, DEDUPE, PAYOUT, ACCOUNT))
NAME_AT = len(CREATOR_PREFIX)  # where the name starts in a key

PANE_SEP = "\x1e"  # between the creator id and the pane start (creator ids never hold it: model.ID_PATTERN)
DEDUPE_SEP = ":"  # between the bucket and the chunk start
STREAK_KEY_SEP = "\x1f"  # between the parts of a streak key (reference engine, native/src/ids.rs)
PAYOUT_VALUE = b"1"

CURSOR_FIELDS = ("watermark", "close_cursor")  # PartitionState's fields of these names
# CREATOR_FIELDS: CreatorState's fields but its panes (stream.state.tables), which are records of their own
# Trailing creator fields an older record leaves out, each with the field whose value it then takes. low (the lowest
# balance since the last notice) is unknown then: the balance, so nothing re-arms until a payout lowers it.
CREATOR_FALLBACKS = {"low": "balance"}
PANE_FIELDS = ("milli_diamonds", "credits")  # the two ints of a pane tally (CreatorState.panes)
STREAK_FIELDS: tuple[str, ...] = Streak.__struct_fields__  # an array_like Struct: encoded in this order
ACCOUNT_FIELDS: tuple[str, ...] = Account.__struct_fields__  # an array_like Struct: encoded in this order
STREAK_DEFAULTS = dict(zip(STREAK_FIELDS[len(STREAK_FIELDS) - len(Streak.__struct_defaults__):],
                           Streak.__struct_defaults__, strict=True))

BODY_LENGTH = struct.Struct(">I")

# The schema as plain values: what stream._native compares its compiled-in schema with when it is imported.
SCHEMA = {
    "kinds": {"cursor": CURSOR.decode(), "creator": CREATOR.decode(), "pane": PANE.decode(),
              "streak": STREAK.decode(), "dedupe": DEDUPE.decode(), "payout": PAYOUT.decode(),
              "account": ACCOUNT.decode()},
    "name_sep": NAME_SEP.decode(),
    "pane_sep": PANE_SEP,
    "dedupe_sep": DEDUPE_SEP,
    "streak_key_sep": STREAK_KEY_SEP,
    "fields": {"cursor": CURSOR_FIELDS, "creator": CREATOR_FIELDS, "pane": PANE_FIELDS, "streak": STREAK_FIELDS,
               "account": ACCOUNT_FIELDS},
    "defaults": {"streak": STREAK_DEFAULTS},
    "fallbacks": {"creator": CREATOR_FALLBACKS},
    "payout_value": PAYOUT_VALUE.decode(),
}
