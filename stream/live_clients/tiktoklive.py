"""TikTokLive (PyPI `TikTokLive` 7.x, Python): its gift messages into giftstream's gift contract, for
`giftstream capture @user` (listen to a LIVE room) and `giftstream import --from tiktoklive` (a saved session).

What the library gives (TikTokLive 7.0.1 with TikTokLiveProto 0.2.2 and betterproto2 0.9.1):
- `TikTokLiveClient` (TikTokLive/client/client.py) reads the Webcast push service: each websocket frame is a
  `ProtoMessageFetchResult` (TikTokLiveProto/v3/webcast/shared/message) of `BaseProtoMessage`s (method, payload
  bytes); `_parse_webcast_response_message` parses a payload with `EVENT_MAPPINGS[method]`, for
  "WebcastGiftMessage" a `GiftEvent` (TikTokLive/events/proto_events.py), a subclass of TikTokLiveProto's
  `WebcastGiftMessage` (v3/webcast/model/message), and emits it; once per streak update: TikTok sends a gift
  message for every update of a streak (cumulative repeat_count, repeat_end 1 on the last).
- The fields: `common` (CommonMessageData: msg_id, room_id, create_time, all int64; create_time in epoch ms),
  `user.id` (the sender, int64), `to_user.id` (the receiver, int64, absent when the message names none),
  `monitor_info.to_user_id` and `.anchor_id` (int64: the receiver and the room's anchor, by their names),
  `gift_id` (int64), `gift` (the gift's details, `Gift`: id, `type` int32 (1 = streakable: ExtendedGift.streakable),
  `diamond_count` int32, the gift's coin price per unit), `repeat_count` int32, `repeat_end` int32, `group_id`
  int64. Absent scalars read as 0 (proto3), absent messages as None.
- The library's own serialisation is betterproto2's proto3 JSON mapping: `event.to_json()` / `to_dict()` write
  int64 fields as decimal strings ("msgId": "7290000000000000001"), so nothing is rounded; `from_dict` reads
  camelCase or snake_case keys, numbers or strings. It has no session file of its own (its only recorder is
  the video's, fetch_video_data).

giftstream keeps coins as integers. `GiftEvent.value` (proto_events.py) is `repeat_count * gift.diamond_count *
0.005`, a float of US dollars (None mid-streak): a float sum drifts and 0.005 is one policy's rate. Here the
record carries diamond_count and repeat_count as they came and the engine credits them in exact milli-diamonds
at the policy's rate.

The saved form `import --from tiktoklive` reads, one record per line (JSONL, .gz ok), each line one of:
- a gift message in the library's proto3 JSON: `event.to_json()` of a GiftEvent (what `capture --save-raw`
  writes), or `to_dict()` in either casing;
- a frame as the client received it: `bytes(WebsocketResponseEvent.raw)` (a ProtoMessageFetchResult) in base64,
  or its `to_json()`; or one `BaseProtoMessage` (`{"method": ..., "payload": base64}`); gift messages in them
  are parsed by the library's own EVENT_MAPPINGS, other messages are not gifts and skipped;
- `{"giftstream_room": {"room_id": "...", "host_id": "..."}}`: what the capture knew of the room (its owner),
  for the gift messages after it that name no receiver.
A line that is none of these, or a gift that cannot be mapped, is an Unmapped with its file:line and reason.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from stream.live_clients.contract import STREAKABLE, LiveGift, Unmappable, Unmapped, gift_event

INSTALL_HINT = 'TikTokLive is not installed: pip install "giftstream[capture]" (TikTokLive>=7,<8)'
GIFT_METHOD = "WebcastGiftMessage"
ROOM_LINE = "giftstream_room"


class ClientMissing(RuntimeError):
    """TikTokLive is not installed."""


def library() -> Any:
    """TikTokLive's event and proto modules (a namespace), or ClientMissing with how to install it."""
    try:
        from TikTokLive import proto
        from TikTokLive.events import proto_events
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("TikTokLive", "TikTokLiveProto", "betterproto2"):
            raise ClientMissing(INSTALL_HINT) from None
        raise

    class Lib:
        GiftEvent = proto_events.GiftEvent
        EVENT_MAPPINGS = proto_events.EVENT_MAPPINGS
        ProtoMessageFetchResult = proto.ProtoMessageFetchResult
        BaseProtoMessage = proto.ProtoMessageFetchResultBaseProtoMessage

    return Lib


@dataclass(frozen=True, slots=True)
class Room:
    """What is known of the room besides its messages: its id and its owner's user id (0 when unknown)."""

    room_id: int | str = 0
    host_id: int | str = 0


def live_gift(msg: Any, room: Room = Room()) -> LiveGift:
    """A GiftEvent / WebcastGiftMessage as the facts of one gift message; Unmappable when it lacks a part every gift
    message has. The receiver is `to_user.id`, else `monitor_info.to_user_id`; the room's owner (for a message that
    names no receiver) is the one the capture knows, else `monitor_info.anchor_id`."""
    common, gift, monitor = msg.common, msg.gift, msg.monitor_info
    if common is None:
        raise Unmappable("the gift message has no common part (msg_id, room id, create time)")
    if gift is None:
        raise Unmappable("the gift message has no gift details (diamond_count, type)")
    if msg.gift_id and gift.id and msg.gift_id != gift.id:
        raise Unmappable(f"gift_id {msg.gift_id} and the gift details' id {gift.id} differ")
    receiver = (msg.to_user.id if msg.to_user is not None else 0) or (monitor.to_user_id if monitor else 0)
    return LiveGift(
        msg_id=common.msg_id,
        room_id=common.room_id or room.room_id,
        receiver_id=receiver,
        host_id=room.host_id or (monitor.anchor_id if monitor else 0),
        sender_id=msg.user.id if msg.user is not None else 0,
        gift_id=msg.gift_id or gift.id,
        gift_type=gift.type,
        diamond_count=gift.diamond_count,
        repeat_count=msg.repeat_count,
        repeat_end=bool(msg.repeat_end),
        group_id=msg.group_id,
        create_time_ms=common.create_time,
    )


def saved_line(event: Any) -> bytes:
    """A gift message in the saved form: the library's own proto3 JSON (int64 as strings)."""
    return event.to_json().encode()


def room_line(room: Room) -> bytes:
    return json.dumps({ROOM_LINE: {"room_id": str(room.room_id or ""), "host_id": str(room.host_id or "")}},
                      separators=(",", ":")).encode()


# The int64/int32 fields a gift is made of, as paths in the proto3 JSON (camelCase; snake_case is looked up too).
_EXACT = (("common", "msgId"), ("common", "roomId"), ("common", "createTime"), ("user", "id"), ("toUser", "id"),
          ("monitorInfo", "toUserId"), ("monitorInfo", "anchorId"), ("giftId",), ("groupId",), ("repeatCount",),
          ("repeatEnd",), ("gift", "id"), ("gift", "type"), ("gift", "diamondCount"))


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def _inexact(obj: dict) -> str | None:
    """Why a saved gift message's id or count cannot be trusted: a JSON number with a fraction or an exponent (it was
    a float somewhere, and betterproto2's from_dict would truncate it silently); None when every one is exact."""
    for path in _EXACT:
        node: Any = obj
        for key in path:
            node = node.get(key, node.get(_snake(key))) if isinstance(node, dict) else None
        if isinstance(node, float):
            return f"{'.'.join(path)} is {node!r}, a JSON number with a fraction or exponent: not an exact integer"
    return None


def _mapped(msg: Any, where: str, room: Room) -> LiveGift | Unmapped:
    # gift_event runs here too (import maps it again) so an unmappable gift is reported at its file:line.
    try:
        g = live_gift(msg, room)
        gift_event(g)
        return g
    except Unmappable as e:
        return Unmapped(where, str(e))


def _frame_gifts(lib: Any, messages: list, where: str, room: Room) -> Iterator[LiveGift | Unmapped]:
    """The gift messages of a frame, parsed as the client parses them (EVENT_MAPPINGS[method]().parse)."""
    for i, m in enumerate(messages, 1):
        if m.method != GIFT_METHOD:
            continue
        at = f"{where} message {i}"
        try:
            msg = lib.EVENT_MAPPINGS[m.method]().parse(m.payload)
        except Exception as e:  # a corrupt payload: betterproto2 raises several kinds
            yield Unmapped(at, f"the WebcastGiftMessage payload does not parse: {type(e).__name__}: {e}")
            continue
        yield _mapped(msg, at, room)


def _room_of(value: Any) -> Room:
    if not isinstance(value, dict):
        raise ValueError(f"{ROOM_LINE} is not an object")
    ids = [value.get(k, "") for k in ("room_id", "host_id")]
    if not all(isinstance(v, str) and (v == "" or v.isdigit()) for v in ids):
        raise ValueError(f"{ROOM_LINE}'s room_id and host_id must be decimal strings, got {ids}")
    return Room(*ids)


def read_saved(path: Path) -> Iterator[LiveGift | Unmapped]:
    """A session saved from TikTokLive (the forms above): a LiveGift per gift message, an Unmapped per line or gift
    that cannot be read or mapped."""
    lib = library()
    room = Room()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            where = f"{path}:{line_no}"
            try:
                if line.startswith(b"{"):
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                    if ROOM_LINE in obj:
                        room = _room_of(obj[ROOM_LINE])
                    elif "messages" in obj:
                        frame = lib.ProtoMessageFetchResult.from_dict(obj, ignore_unknown_fields=True)
                        yield from _frame_gifts(lib, frame.messages, where, room)
                    elif "payload" in obj and "method" in obj:
                        one = lib.BaseProtoMessage.from_dict(obj, ignore_unknown_fields=True)
                        yield from _frame_gifts(lib, [one], where, room)
                    elif reason := _inexact(obj):
                        yield Unmapped(where, reason)
                    else:
                        msg = lib.GiftEvent.from_dict(obj, ignore_unknown_fields=True)
                        method = msg.common.method if msg.common is not None else ""
                        if method not in ("", GIFT_METHOD):
                            yield Unmapped(where, f"not a gift message: its method is {method!r}")
                        else:
                            yield _mapped(msg, where, room)
                else:
                    frame = lib.ProtoMessageFetchResult().parse(base64.b64decode(line, validate=True))
                    if not frame.messages:
                        raise ValueError("a frame (ProtoMessageFetchResult) with no messages")
                    yield from _frame_gifts(lib, frame.messages, where, room)
            except Exception as e:  # a corrupt line: bad JSON, bad base64, a frame that does not parse, ...
                yield Unmapped(where, f"not a TikTokLive saved record: {type(e).__name__}: {e}")


# -- capture -----------------------------------------------------------------------------------------------------


class Sink(Protocol):
    async def start(self) -> None: ...
    async def write(self, key: bytes, record: bytes) -> None: ...
    async def close(self) -> None: ...


def _append(path: str | Path) -> BinaryIO:
    """A file to append lines to (.gz: a new gzip member, which gzip readers read as one stream)."""
    return gzip.open(path, "ab") if str(path).endswith(".gz") else open(path, "ab")


class FileSink:
    """Gift records appended to a JSONL file (.gz ok), flushed after each: a stop loses nothing written."""

    def __init__(self, path: str | Path):
        self.path = path
        self._f: BinaryIO | None = None

    async def start(self) -> None:
        self._f = _append(self.path)

    async def write(self, key: bytes, record: bytes) -> None:
        assert self._f is not None
        self._f.write(record + b"\n")
        self._f.flush()

    async def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class KafkaSink:
    """Gift records produced to the gifts topic keyed by creator_id (idempotent, acks=all: stream.kafka's
    bulk_producer); close waits until every record is acknowledged."""

    def __init__(self, cfg: Any, topic: str | None = None):
        self.cfg, self.topic = cfg, topic or cfg.topics.gifts
        self._producer: Any = None
        self._pending: list[asyncio.Future] = []

    async def start(self) -> None:
        from stream.kafka.session_io import bulk_producer

        self._producer = bulk_producer(self.cfg, linger_ms=5)
        await self._producer.start()

    async def write(self, key: bytes, record: bytes) -> None:
        for f in self._pending:
            if f.done():
                f.result()  # a send that failed raises here: the capture stops instead of losing records
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(await self._producer.send(self.topic, record, key=key))

    async def close(self) -> None:
        if self._producer is None:
            return
        try:
            await self._producer.flush()
            await asyncio.gather(*self._pending)
        finally:
            await self._producer.stop()
            self._producer = None


@dataclass
class Tally:
    messages: int = 0  # gift messages the client emitted (every streak update, resends too)
    written: int = 0  # gift records written: one per message that maps
    resends: int = 0  # of those, a msg_id already written (the engine counts it once)
    unmapped: list[Unmapped] = field(default_factory=list)
    coins: int = 0  # what the engine will credit, in coins: a gift once, a streak at its last count
    streaks_open: int = 0  # streaks without their final event yet (the engine times them out at their last count)

    def line(self) -> str:
        return (f"{self.messages:,} gift messages, {self.written:,} written ({self.resends:,} resends), "
                f"{self.coins:,} coins, {self.streaks_open:,} open streaks, {len(self.unmapped):,} unmapped")


class Capture:
    """The capture's handler of the client's GiftEvents: each one mapped (contract.gift_event) and queued for the
    sink, its saved form written to `raw` (--save-raw), an unmappable one reported with its reason. `on_gift` is a
    plain function (pyee calls it inside the client's receive loop, in order); `drain` writes the queue to the sink
    and ends when `finish` is called and everything queued is written."""

    def __init__(self, sink: Sink, raw: str | Path | None = None, room: Room = Room(),
                 report: Callable[[str], None] | None = None):
        self.sink, self.room, self.tally = sink, room, Tally()
        self._raw_path = raw
        self._raw: BinaryIO | None = None
        self._queue: asyncio.Queue[tuple[bytes, bytes] | None] = asyncio.Queue()
        self._seen: set[str] = set()
        self._streaks: dict[tuple[str, str, int, str], tuple[int, bool]] = {}  # -> (coins at last count, ended)
        self.report = report or (lambda text: print(text, file=sys.stderr))

    async def start(self) -> None:
        await self.sink.start()
        if self._raw_path is not None:
            self._raw = _append(self._raw_path)

    def begin(self, room: Room) -> None:
        """The room is known (connected): its owner becomes the receiver of gifts that name none."""
        self.room = room
        if self._raw is not None:
            self._raw.write(room_line(room) + b"\n")
            self._raw.flush()

    def on_gift(self, event: Any) -> None:
        t = self.tally
        t.messages += 1
        if self._raw is not None:
            self._raw.write(saved_line(event) + b"\n")
            self._raw.flush()
        try:
            record = gift_event(live_gift(event, self.room))
        except Unmappable as e:
            hint = " (give the room owner's user id with --host-id)" if "owner is unknown" in str(e) else ""
            u = Unmapped(f"gift message {t.messages}", str(e) + hint)
            t.unmapped.append(u)
            self.report(f"unmapped {u.where}: {u.reason}")
            return
        g = json.loads(record)
        self._queue.put_nowait((g["creator_id"].encode(), record))
        t.written += 1
        if g["event_id"] in self._seen:
            t.resends += 1
            return
        self._seen.add(g["event_id"])
        coins = g["diamond_count"] * g["repeat_count"]
        if g["gift_type"] != STREAKABLE:
            t.coins += coins
            return
        key = (g["room_id"], g["sender_id"], g["gift_id"], g.get("group_id", ""))
        was_open = key in self._streaks
        before, ended = self._streaks.get(key, (0, False))
        if ended:  # an update after the streak's end: the engine credited the streak when it ended
            return
        self._streaks[key] = (max(before, coins), g["repeat_end"])
        t.coins += max(before, coins) - before  # repeat_count is cumulative: the streak's coins at its last count
        t.streaks_open += (0 if was_open else 1) - (1 if g["repeat_end"] else 0)

    def finish(self) -> None:
        self._queue.put_nowait(None)

    async def drain(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self.sink.write(*item)

    async def close(self) -> None:
        try:
            await self.sink.close()
        finally:
            if self._raw is not None:
                self._raw.close()
                self._raw = None


def owner_of(room_info: dict | None) -> str:
    """The room owner's user id in TikTok's room info (`client.room_info`, fetch_room_info=True): `owner.id_str`,
    else `owner_user_id_str` / `owner.id` / `owner_user_id`; "" when it names none. Python's json keeps the
    numbers exact."""
    info = room_info or {}
    owner = info.get("owner") if isinstance(info.get("owner"), dict) else {}
    for value in (owner.get("id_str"), info.get("owner_user_id_str"), owner.get("id"), info.get("owner_user_id")):
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).isdigit() and str(value) != "0":
            return str(value)
    return ""


class Progress:
    """The capture's progress on stderr: one line redrawn on a terminal (at most 5 a second), a line every 10 s
    otherwise."""

    def __init__(self, tally: Tally, stream: Any = None):
        self.tally, self.stream = tally, stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 10.0):
            return
        self._last = now
        text = "capture: " + self.tally.line()
        self.stream.write(f"\r\x1b[K{text}" if self.tty else f"{text}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")


async def run_capture(client: Any, capture: Capture, *, host_id: str = "", room_id: int | None = None,
                      fetch_room_info: bool = True, progress: Progress | None = None) -> str:
    """Listen with a TikTokLiveClient until the LIVE ends or SIGINT/SIGTERM, every GiftEvent through `capture`;
    returns why it stopped. On the way out, whatever happened: the client is disconnected, the queued records
    written, the sink and the raw file closed. The room's owner: host_id, else the room info's."""
    from TikTokLive.events import DisconnectEvent, GiftEvent

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = [s for s in (signal.SIGINT, signal.SIGTERM) if _add_signal(loop, s, stop.set)]
    client.add_listener(GiftEvent, capture.on_gift)
    if progress is not None:
        client.add_listener(GiftEvent, lambda _: progress.show())
    client.add_listener(DisconnectEvent, lambda _: stop.set())
    await capture.start()
    drain = asyncio.create_task(capture.drain())
    drain.add_done_callback(lambda _: stop.set())  # a sink that fails stops the capture (the error is raised below)
    why = "stopped"
    try:
        stopper = asyncio.create_task(stop.wait())
        starting = asyncio.create_task(_start(client, capture, host_id, room_id, fetch_room_info))
        await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return "stopped before the connection was made"
        listening = starting.result()  # raises what the connection raised
        done, _ = await asyncio.wait({listening, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if listening in done:
            failed = listening.exception()
            why = f"the connection failed: {type(failed).__name__}: {failed}" if failed else \
                "the connection closed (the LIVE ended?)"
        elif drain.done():
            why = "the sink failed"
        stopper.cancel()
        return why
    finally:
        for s in signals:
            loop.remove_signal_handler(s)
        try:
            await client.disconnect()  # waits for its receive loop: no GiftEvent after this
            await client.web.close()
        finally:
            capture.finish()
            try:
                await drain
            finally:
                await capture.close()
                if progress is not None:
                    progress.show(force=True)
                    progress.end()


def _add_signal(loop: asyncio.AbstractEventLoop, sig: int, callback: Callable[[], None]) -> bool:
    try:
        loop.add_signal_handler(sig, callback)
        return True
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
        return False


async def _start(client: Any, capture: Capture, host_id: str, room_id: int | None, fetch_room_info: bool) -> Any:
    """Connect (the library's client.start) and tell the capture the room; the client's receive-loop task."""
    from TikTokLive.client.errors import AgeRestrictedError
    from TikTokLive.client.web.routes.fetch_room_info import FailedFetchRoomInfoError

    try:
        task = await client.start(fetch_room_info=fetch_room_info and not host_id, room_id=room_id)
    except (AgeRestrictedError, FailedFetchRoomInfoError) as e:
        capture.report(f"capture: no room info ({type(e).__name__}: {e}); the room's owner is unknown")
        task = await client.start(fetch_room_info=False, room_id=room_id or client.room_id)
    # No await between start() and begin(): the receive loop has not run yet, so the room line comes first.
    capture.begin(Room(client.room_id or 0, host_id or owner_of(client.room_info)))
    if not capture.room.host_id:
        capture.report("capture: the room's owner is unknown: a gift that names no receiver is unmapped "
                        "(--host-id gives it)")
    return task
