"""TikTokLive (the real library, 7.x) into giftstream: gift messages built as protobuf bytes with the library's own
classes, wrapped in the frame the client receives (a ProtoMessageFetchResult of BaseProtoMessages, method
"WebcastGiftMessage"), parsed by the library itself, then written by `giftstream capture`'s handler and read back
by `import --from tiktoklive` from the saved form, and replayed: the credited diamonds are exact.

Two library paths parse the frames. `TikTokLiveClient._parse_webcast_response` (what the client's receive loop
calls on every frame) is called without a connection; and in `test_capture_end_to_end_stops_cleanly_on_sigint`
the whole client runs (`client.start`, its websocket loop, its event emitter) with its transports replaced at the
boundary: httpx's MockTransport for TikTok's web routes and the sign server, a websocket server on 127.0.0.1 as
the push server. No test touches the network.

TikTokLive is a dev dependency (make test installs .[dev]): without it these tests fail, they are not skipped.

Expected numbers are worked out by hand from the messages below (1 coin = 1 diamond = 1,000 milli-diamonds in the
built-in policy, checked in `test_the_policy_rate_these_numbers_assume`).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import os
import signal
from pathlib import Path

import pytest
from TikTokLive import TikTokLiveClient
from TikTokLive.events import GiftEvent
from TikTokLive.proto import (
    CommonMessageData,
    Gift,
    GiftMonitorInfo,
    ProtoMessageFetchResult,
    ProtoMessageFetchResultBaseProtoMessage,
    User,
    WebcastGiftMessage,
    WebcastPushFrame,
)

from stream.engine.policy import load_policy
from stream.kafka.session_files import read_session
from stream.live_clients import tiktoklive as ttl
from stream.live_clients.contract import Unmapped
from stream.live_clients.imports import import_sessions
from stream.runtime.replay import replay

# 64-bit ids above 2**53: a float cannot hold them (float(HOST) != HOST), so any float on the way would show.
ROOM = 7_400_000_000_000_000_123
HOST = 7_000_000_000_000_000_001  # the room's owner
COHOST = 6_900_000_000_000_000_777  # a multi-guest co-host
S1, S2, S3, S4 = (7_100_000_000_000_000_000 + i for i in (11, 22, 33, 44))
G1, G2 = 7_200_000_000_000_000_001, 7_200_000_000_000_000_002  # streak group ids
T0 = 1_760_000_000_000  # epoch ms; every message within 3 s (the policy's streak timeout is 30 s)
ROSE, WEIGHTS, UNIVERSE, HEARTS = 5655, 5760, 7312, 5660


def msg_id(i: int) -> int:
    return 7_300_000_000_000_000_000 + i


def gift_message(i: int, *, sender: int, gift_id: int, coins: int, gift_type: int, count: int, end: bool = False,
                 group: int = 0, to: int = 0, ts: int = 0,
                 monitor: GiftMonitorInfo | None = None) -> WebcastGiftMessage:
    return WebcastGiftMessage(
        common=CommonMessageData(method="WebcastGiftMessage", msg_id=msg_id(i), room_id=ROOM, create_time=T0 + ts),
        gift_id=gift_id, repeat_count=count, repeat_end=int(end), group_id=group, user=User(id=sender),
        to_user=User(id=to) if to else None, gift=Gift(id=gift_id, type=gift_type, diamond_count=coins),
        monitor_info=monitor)


# The session, as TikTok sends it: every streak update is a message of its own.
STREAK_ENDED = [gift_message(i, sender=S1, gift_id=ROSE, coins=1, gift_type=1, count=n, end=n == 5, group=G1, to=HOST,
                             ts=100 * i) for i, n in enumerate((1, 2, 3, 5), 1)]  # 5 roses x 1 coin, final event
STREAK_LOST = [gift_message(10 + i, sender=S2, gift_id=WEIGHTS, coins=5, gift_type=1, count=n, group=G2, to=HOST,
                            ts=1000 + 100 * i) for i, n in enumerate((1, 4, 7), 1)]  # 7 x 5 coins, no final event
UNIVERSE_GIFT = gift_message(20, sender=S3, gift_id=UNIVERSE, coins=44_999, gift_type=2, count=1, ts=2000)  # no to_user
TO_COHOST = gift_message(21, sender=S4, gift_id=HEARTS, coins=100, gift_type=2, count=1, to=COHOST, ts=2100)
# TikTok's monitor_info names the receiver when to_user is absent.
VIA_MONITOR = gift_message(22, sender=S4, gift_id=HEARTS, coins=100, gift_type=2, count=1, ts=2200,
                           monitor=GiftMonitorInfo(anchor_id=HOST, to_user_id=COHOST))
RESEND = UNIVERSE_GIFT  # the same message again (same msg_id)

FRAMES = [STREAK_ENDED[:2], STREAK_ENDED[2:] + STREAK_LOST[:1], STREAK_LOST[1:], [UNIVERSE_GIFT, TO_COHOST],
          [VIA_MONITOR, RESEND]]
MESSAGES = [m for f in FRAMES for m in f]

COINS_WITHOUT_FINAL = 5 * 1 + 44_999 + 100 + 100  # the lost streak stays open
COINS_FINAL = COINS_WITHOUT_FINAL + 7 * 5  # end of session: the lost streak times out at its last count
COINS_BY_CREATOR = {str(HOST): 5 + 35 + 44_999, str(COHOST): 100 + 100}
MILLI = 1000  # milli-diamonds per diamond; 1 diamond per coin


def frame(messages: list[WebcastGiftMessage], first: bool = False, **extra) -> ProtoMessageFetchResult:
    """The frame (ProtoMessageFetchResult) the client receives: each message's bytes under its method."""
    return ProtoMessageFetchResult(
        messages=[ProtoMessageFetchResultBaseProtoMessage(method="WebcastGiftMessage", payload=bytes(m),
                                                          msg_id=m.common.msg_id) for m in messages],
        is_first=first, **extra)


async def library_events(frames: list[ProtoMessageFetchResult]) -> list[GiftEvent]:
    """The GiftEvents the library makes of the frames: the client's own parse (the one its receive loop calls)."""
    client = TikTokLiveClient(unique_id="host")
    client._room_id = ROOM
    events = [e for f in frames async for e in client._parse_webcast_response(f)]
    await client.web.close()
    return [e for e in events if isinstance(e, GiftEvent)]


async def capture_to(out: Path, raw: Path, events: list[GiftEvent], room: ttl.Room) -> ttl.Capture:
    """Drive the capture's handler as run_capture does: start, the room known, every event, drain, close."""
    reports: list[str] = []
    capture = ttl.Capture(ttl.FileSink(out), raw=raw, report=reports.append)
    await capture.start()
    capture.begin(room)
    drain = asyncio.create_task(capture.drain())
    for e in events:
        capture.on_gift(e)
    capture.finish()
    await drain
    await capture.close()
    capture.reports = reports
    return capture


def credited(records: list[bytes], final: bool = False):
    return replay(records, load_policy(), partitions=1, final=final)


def per_creator(result) -> dict[str, int]:
    """milli-diamonds per creator over one window kind's totals (every window closes at the end of the session)."""
    totals: dict[str, int] = {}
    for w in result.outputs.window_totals:
        if w.window == "tumbling-1d":
            totals[w.creator_id] = totals.get(w.creator_id, 0) + w.milli_diamonds
    return totals


def test_the_policy_rate_these_numbers_assume():
    policy = load_policy()
    assert policy.regions[policy.default_region].milli_diamonds_per_coin == MILLI  # gifts name no region: US
    assert policy.streak_timeout_ms > 3_000  # the whole session is within 3 s: no streak times out before its end


def test_ids_above_2_53_would_not_survive_a_float():
    assert all(float(i) != i for i in (ROOM, HOST, COHOST, S1, G1, msg_id(20)))


async def test_the_library_parses_every_streak_update_and_the_resend():
    events = await library_events([frame(f) for f in FRAMES])
    assert [e.common.msg_id for e in events] == [m.common.msg_id for m in MESSAGES]
    assert [e.repeat_count for e in events[:4]] == [1, 2, 3, 5]
    assert [e.streaking for e in events[:4]] == [True, True, True, False]  # the library's own streak view
    # the library's value: a float of dollars, None mid-streak; giftstream keeps the integer coins instead
    assert events[3].value == pytest.approx(5 * 0.005)
    assert events[0].value is None


async def test_capture_writes_every_streak_event_and_replays_exactly(tmp_path):
    events = await library_events([frame(f) for f in FRAMES])
    out, raw = tmp_path / "gifts.jsonl", tmp_path / "raw.jsonl.gz"
    capture = await capture_to(out, raw, events, ttl.Room(ROOM, HOST))

    records = read_session(out)
    assert len(records) == len(MESSAGES) == 11  # every streak update, the final one and the resend: nothing dropped
    lines = [json.loads(r) for r in records]
    assert [g["repeat_count"] for g in lines[:4]] == [1, 2, 3, 5]
    assert [g["repeat_end"] for g in lines[:4]] == [False, False, False, True]
    assert lines[7] == {"event_id": str(msg_id(20)), "room_id": str(ROOM), "creator_id": str(HOST),
                        "sender_id": str(S3), "gift_id": UNIVERSE, "gift_type": 2, "diamond_count": 44_999,
                        "repeat_count": 1, "repeat_end": False, "ts": T0 + 2000}
    assert lines[8]["creator_id"] == lines[9]["creator_id"] == str(COHOST)  # to_user, then monitor_info.to_user_id
    assert lines[0]["group_id"] == str(G1) and lines[0]["event_id"] == str(msg_id(1))
    assert capture.tally.coins == COINS_WITHOUT_FINAL + 7 * 5  # the open streak at its last count
    assert (capture.tally.resends, capture.tally.streaks_open, capture.tally.unmapped) == (1, 1, [])

    result = credited(records)
    assert result.summary["milli_diamonds_credited"] == COINS_WITHOUT_FINAL * MILLI
    assert result.summary["duplicates"] == 1 and result.summary["open_streaks"] == 1
    final = credited(records, final=True)
    assert final.summary["milli_diamonds_credited"] == COINS_FINAL * MILLI
    assert final.summary["streak_timeouts"] == 1
    assert per_creator(final) == {k: v * MILLI for k, v in COINS_BY_CREATOR.items()}


async def test_import_of_the_saved_form_gives_the_same_records(tmp_path):
    events = await library_events([frame(f) for f in FRAMES])
    out, raw = tmp_path / "gifts.jsonl", tmp_path / "raw.jsonl.gz"
    await capture_to(out, raw, events, ttl.Room(ROOM, HOST))

    with gzip.open(raw) as f:
        saved = f.read().splitlines()
    assert json.loads(saved[0]) == {"giftstream_room": {"room_id": str(ROOM), "host_id": str(HOST)}}
    assert json.loads(saved[8])["common"]["msgId"] == str(msg_id(20))  # the library's JSON: int64 as strings
    got = import_sessions("tiktoklive", [raw])
    assert got.unmapped == []
    assert got.records == read_session(out)
    assert credited(got.records, final=True).summary["milli_diamonds_credited"] == COINS_FINAL * MILLI


async def test_import_of_raw_frames_base64_and_json(tmp_path):
    """The frames as the client received them (WebsocketResponseEvent.raw), base64 of their bytes or their JSON;
    the owner from the room line (UNIVERSE_GIFT names no receiver)."""
    frames = [frame(f) for f in FRAMES]
    path = tmp_path / "frames.jsonl"
    lines = [ttl.room_line(ttl.Room(ROOM, HOST)).decode()]
    lines += [base64.b64encode(bytes(f)).decode() if i % 2 else f.to_json() for i, f in enumerate(frames)]
    path.write_text("\n".join(lines) + "\n")
    got = import_sessions("tiktoklive", [path])
    assert got.unmapped == []
    assert [json.loads(r)["event_id"] for r in got.records] == [str(m.common.msg_id) for m in MESSAGES]
    result = credited(got.records, final=True)
    assert result.summary["milli_diamonds_credited"] == COINS_FINAL * MILLI
    assert result.summary["duplicates"] == 1


async def test_no_receiver_and_no_known_owner_is_unmapped_with_its_reason(tmp_path):
    events = await library_events([frame([UNIVERSE_GIFT, TO_COHOST])])
    capture = await capture_to(tmp_path / "g.jsonl", tmp_path / "raw.jsonl", events, ttl.Room(ROOM, 0))
    assert [json.loads(r)["creator_id"] for r in read_session(tmp_path / "g.jsonl")] == [str(COHOST)]
    assert len(capture.tally.unmapped) == 1
    assert capture.tally.unmapped[0].where == "gift message 1"
    assert "no receiving user" in capture.tally.unmapped[0].reason and "--host-id" in capture.tally.unmapped[0].reason
    assert capture.reports == [f"unmapped gift message 1: {capture.tally.unmapped[0].reason}"]
    # the saved form without an owner: the import says the same, at its file:line
    got = import_sessions("tiktoklive", [tmp_path / "raw.jsonl"])
    assert len(got.records) == 1
    assert [(u.where, "no receiving user" in u.reason) for u in got.unmapped] == [(f"{tmp_path / 'raw.jsonl'}:2", True)]


def test_corrupt_saved_lines_are_listed_with_their_reasons(tmp_path):
    good = json.loads(TO_COHOST.to_json())
    floated = json.loads(TO_COHOST.to_json())
    floated["common"]["msgId"] = float(msg_id(21))  # what a float on the way makes of a 64-bit id
    no_msg_id = json.loads(TO_COHOST.to_json())
    del no_msg_id["common"]["msgId"]
    chat = {"common": {"method": "WebcastChatMessage", "msgId": "5"}}
    path = tmp_path / "saved.jsonl"
    path.write_text("\n".join([json.dumps(good), '{"common": {"msgId": "1"', json.dumps(floated), "!!not base64!!",
                               json.dumps(no_msg_id), json.dumps(chat), "", json.dumps(good)]) + "\n")
    items = list(ttl.read_saved(path))
    assert [type(i).__name__ for i in items] == ["LiveGift", "Unmapped", "Unmapped", "Unmapped", "Unmapped",
                                                 "Unmapped", "LiveGift"]
    reasons = {u.where.rsplit(":", 1)[1]: u.reason for u in items if isinstance(u, Unmapped)}
    assert reasons["2"].startswith("not a TikTokLive saved record: JSONDecodeError")
    assert "common.msgId is 7.3e+18" in reasons["3"] and "not an exact integer" in reasons["3"]
    assert reasons["4"].startswith("not a TikTokLive saved record: Error")  # binascii.Error
    assert reasons["5"] == "no msg_id: the message carries none (empty or 0)"
    assert reasons["6"] == "not a gift message: its method is 'WebcastChatMessage'"
    got = import_sessions("tiktoklive", [path])
    assert len(got.records) == 2 and len(got.unmapped) == 5  # the same message twice: the engine dedupes it
    assert credited(got.records).summary["milli_diamonds_credited"] == 100 * MILLI


def test_cli_import_from_tiktoklive(tmp_path, capsys):
    from stream.cli import main

    saved = tmp_path / "saved.jsonl"
    lines = [ttl.room_line(ttl.Room(ROOM, HOST))] + [m.to_json().encode() for m in MESSAGES] + [b"garbage"]
    saved.write_bytes(b"\n".join(lines) + b"\n")
    out, unmapped = tmp_path / "session.jsonl.gz", tmp_path / "unmapped.jsonl"
    assert main(["import", "--from", "tiktoklive", str(saved), "--out", str(out), "--unmapped", str(unmapped)]) == 0
    err = capsys.readouterr().err
    assert f"imported {len(MESSAGES)} gift events from 1 tiktoklive file(s)" in err and "1 record(s) could not" in err
    assert [json.loads(x)["where"] for x in unmapped.read_text().splitlines()] == [f"{saved}:{len(lines)}"]
    assert main(["import", "--from", "tiktoklive", str(saved), "--out", str(out), "--strict"]) == 1
    assert main(["replay", str(out), "--end-of-session", "--partitions", "1", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["milli_diamonds_credited"] == COINS_FINAL * MILLI


def test_capture_without_tiktoklive_says_how_to_install(monkeypatch, tmp_path, capsys):
    import sys

    from stream.cli import main

    monkeypatch.setitem(sys.modules, "TikTokLive", None)  # import TikTokLive -> ModuleNotFoundError
    assert main(["capture", "@someone", "--out", str(tmp_path / "g.jsonl")]) == 2
    assert 'pip install "giftstream[capture]"' in capsys.readouterr().err
    assert main(["import", "--from", "tiktoklive", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert 'pip install "giftstream[capture]"' in capsys.readouterr().err


def test_owner_of_room_info():
    assert ttl.owner_of({"owner": {"id": HOST, "id_str": str(HOST)}}) == str(HOST)
    assert ttl.owner_of({"owner_user_id": HOST}) == str(HOST)
    assert ttl.owner_of({"owner": {"id": 0}}) == "" and ttl.owner_of(None) == ""


# -- the whole client, its transports replaced at the boundary ---------------------------------------------------


class FakeTikTok:
    """TikTok's side of a connection: the web routes and the sign server (httpx.MockTransport), the push server
    (a websocket server on 127.0.0.1) sending the frames as WebcastPushFrames, gzipped as TikTok does."""

    def __init__(self, frames: list[ProtoMessageFetchResult], owner: int):
        self.frames, self.owner = frames, owner
        self.port = 0
        self.sent = asyncio.Event()
        self.requests: list[str] = []

    def web(self, request):
        import httpx

        self.requests.append(request.url.path)
        path = request.url.path
        if path == "/@host/live":
            state = {"LiveRoom": {"liveRoomUserInfo": {"user": {"roomId": str(ROOM), "status": 2,
                                                                "uniqueId": "host"}}}}
            return httpx.Response(200, text=f'<script id="SIGI_STATE" type="application/json">{json.dumps(state)}'
                                            "</script>")
        if path.endswith("/room/check_alive/"):
            return httpx.Response(200, json={"data": [{"alive": True, "room_id": ROOM}]})
        if path.endswith("/room/info/"):
            return httpx.Response(200, json={"data": {"id_str": str(ROOM), "status": 2,
                                                      "owner": {"id": self.owner, "id_str": str(self.owner)}}})
        # the sign server's webcast fetch: the first frame, raw protobuf, and the websocket's address
        first = ProtoMessageFetchResult(cursor="c1", push_server=f"ws://127.0.0.1:{self.port}/webcast/im/push/v2/",
                                        route_params={"imprp": "p"}, is_first=True, fetch_interval=1000)
        return httpx.Response(200, content=bytes(first), headers={"X-Set-TT-Cookie": "ttwid=t; Path=/"})

    async def push(self, ws):
        for f in self.frames:
            await ws.send(bytes(WebcastPushFrame(payload_type="msg", payload_encoding="pb", log_id=1,
                                                 headers=[], payload=bytes(f))))
        self.sent.set()
        async for _ in ws:  # the client's enter-room and heartbeats; the connection stays open until it closes
            pass

    def client(self) -> TikTokLiveClient:
        import httpx

        client = TikTokLiveClient(unique_id="@host", web_kwargs={"httpx_kwargs": {
            "transport": httpx.MockTransport(self.web)}})
        signer = client.web.signer.sdk_client
        signer.set_async_httpx_client(httpx.AsyncClient(base_url=str(signer._base_url),
                                                        transport=httpx.MockTransport(self.web)))
        return client


async def test_capture_end_to_end_stops_cleanly_on_sigint(tmp_path):
    from websockets.asyncio.server import serve

    fake = FakeTikTok([frame(f) for f in FRAMES], owner=HOST)
    out, raw = tmp_path / "gifts.jsonl.gz", tmp_path / "raw.jsonl"
    reports: list[str] = []
    capture = ttl.Capture(ttl.FileSink(out), raw=raw, report=reports.append)
    async with serve(fake.push, "127.0.0.1", 0, subprotocols=["echo-protocol"]) as server:
        fake.port = server.sockets[0].getsockname()[1]
        client = fake.client()
        running = asyncio.create_task(ttl.run_capture(client, capture))
        await asyncio.wait_for(fake.sent.wait(), 10)
        for _ in range(200):  # until the client has emitted every message
            if capture.tally.messages == len(MESSAGES):
                break
            await asyncio.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: run_capture's handler stops it, the test process lives on
        why = await asyncio.wait_for(running, 10)
    assert why == "stopped"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is removed again
    assert not client.connected
    assert capture.tally.line().startswith(f"{len(MESSAGES)} gift messages, {len(MESSAGES)} written (1 resends), "
                                           f"{COINS_FINAL:,} coins, 1 open streaks, 0 unmapped")
    assert any(p.endswith("/room/info/") for p in fake.requests)  # the owner came from the room info
    records = read_session(out)  # closed: a whole gzip stream
    assert len(records) == len(MESSAGES)
    assert credited(records, final=True).summary["milli_diamonds_credited"] == COINS_FINAL * MILLI
    assert json.loads(raw.read_text().splitlines()[0]) == {"giftstream_room": {"room_id": str(ROOM),
                                                                               "host_id": str(HOST)}}
    assert import_sessions("tiktoklive", [raw]).records == records
