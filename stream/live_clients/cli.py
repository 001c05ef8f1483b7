"""The commands of LIVE clients' sessions: `giftstream import` and `giftstream capture`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stream.live_clients.imports import IMPORTERS
from stream.live_clients.tiktoklive import ClientMissing


def cmd_import(args: argparse.Namespace) -> int:
    from stream.engine import model
    from stream.kafka.session_files import write_session
    from stream.live_clients.imports import import_sessions

    try:
        got = import_sessions(args.source, args.files)
    except ClientMissing as e:  # the client's library reads its saved form
        print(f"giftstream import: {e}", file=sys.stderr)
        return 2
    n = write_session(args.out, got.records)
    for u in got.unmapped:
        print(f"unmapped {u.where}: {u.reason}", file=sys.stderr)
    if args.unmapped:
        write_session(args.unmapped, (model.encode({"where": u.where, "reason": u.reason}) for u in got.unmapped))
    print(f"imported {n:,} gift events from {len(args.files)} {args.source} file(s) to {args.out}; "
          f"{len(got.unmapped):,} record(s) could not be mapped", file=sys.stderr)
    return 1 if args.strict and got.unmapped else 0


def cmd_capture(args: argparse.Namespace) -> int:
    import asyncio

    from stream.live_clients import tiktoklive as ttl

    try:
        ttl.library()
        from TikTokLive import TikTokLiveClient
    except ClientMissing as e:
        print(f"giftstream capture: {e}", file=sys.stderr)
        return 2
    if args.host_id and not args.host_id.isdigit():
        raise SystemExit(f"giftstream capture: --host-id {args.host_id!r} is not a decimal user id")
    if args.to_kafka:
        from stream.cli import _check_kafka, _worker_config

        cfg = _worker_config(args)
        _check_kafka(cfg)
        sink: ttl.Sink = ttl.KafkaSink(cfg, args.topic)
        target = f"{sink.topic} at {cfg.bootstrap_servers}"
    else:
        sink = ttl.FileSink(args.out)
        target = args.out
    capture = ttl.Capture(sink, raw=args.save_raw)
    progress = ttl.Progress(capture.tally) if not args.quiet else None
    client = TikTokLiveClient(unique_id=args.unique_id)
    print(f"capture: @{client.unique_id} -> {target}" + (f" (saved form: {args.save_raw})" if args.save_raw else "")
          + "; Ctrl-C stops", file=sys.stderr)
    try:
        why = asyncio.run(ttl.run_capture(client, capture, host_id=args.host_id or "", room_id=args.room_id,
                                          fetch_room_info=not args.no_room_info, progress=progress))
    except Exception as e:  # the connection could not be made (offline, blocked, sign server): say why
        print(f"giftstream capture: {type(e).__name__}: {e}", file=sys.stderr)
        print(f"capture: {capture.tally.line()}", file=sys.stderr)
        return 1
    print(f"capture: {why}: {capture.tally.line()} -> {target}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("import", help="turn sessions saved by a LIVE client into a giftstream gift session",
                       description="Map the gift messages of sessions saved by TikTokLive or TikTok-Live-Connector "
                                   "to giftstream gift events (JSONL, .gz ok), which `giftstream replay FILE` and "
                                   "`replay --to-kafka` take. A record that cannot be mapped is listed with its "
                                   "reason.")
    p.add_argument("--from", dest="source", required=True, choices=sorted(IMPORTERS), help="the client that saved them")
    p.add_argument("files", nargs="+", help="saved session files")
    p.add_argument("--out", required=True, help="the giftstream session to write (JSONL, .gz ok)")
    p.add_argument("--unmapped", help="also write the unmapped records' places and reasons here (JSONL)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any record could not be mapped")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("capture", help="listen to a TikTok LIVE room (TikTokLive) and write its gifts as gift events",
                       description="Connect to @UNIQUE_ID's LIVE with TikTokLive (pip install giftstream[capture]) and "
                                   "write every gift message (each streak update, the final one too) as a gift "
                                   "event: appended to a JSONL file (flushed per record) or produced to the gifts "
                                   "topic keyed by creator_id. Ctrl-C stops cleanly: the client disconnects, "
                                   "everything received is written, a summary is printed, exit 0.")
    p.add_argument("unique_id", metavar="@UNIQUE_ID", help="the LIVE creator's @handle (or their live URL)")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--out", metavar="FILE", help="append gift events here (JSONL, .gz ok)")
    to.add_argument("--to-kafka", action="store_true", help="produce them to the gifts topic (--config/--bootstrap)")
    p.add_argument("--topic", help="with --to-kafka: target topic (default: the gifts topic)")
    p.add_argument("--save-raw", metavar="FILE", help="also append each gift message in TikTokLive's own JSON "
                                                       "(the room's owner on a first line), which `giftstream import "
                                                       "--from tiktoklive` maps again (JSONL, .gz ok)")
    p.add_argument("--host-id", help="the room owner's user id, the creator of a gift that names no receiver "
                                     "(default: from TikTok's room info)")
    p.add_argument("--room-id", type=int, help="connect to this room id (skips looking it up from the @handle)")
    p.add_argument("--no-room-info", action="store_true", help="do not fetch the room info (then the owner is "
                                                               "--host-id's, else unknown)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    from stream.cli import _kafka_args  # stream.cli registers these commands: it is loaded by now

    _kafka_args(p)
    p.set_defaults(func=cmd_capture)
