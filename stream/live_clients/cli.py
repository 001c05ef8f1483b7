"""The commands of LIVE clients' sessions: `giftstream import` (and `capture`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from stream.live_clients.imports import IMPORTERS


def cmd_import(args: argparse.Namespace) -> int:
    from stream.engine import model
    from stream.kafka.session_files import write_session
    from stream.live_clients.imports import import_sessions

    got = import_sessions(args.source, args.files)
    n = write_session(args.out, got.records)
    for u in got.unmapped:
        print(f"unmapped {u.where}: {u.reason}", file=sys.stderr)
    if args.unmapped:
        write_session(args.unmapped, (model.encode({"where": u.where, "reason": u.reason}) for u in got.unmapped))
    print(f"imported {n:,} gift events from {len(args.files)} {args.source} file(s) to {args.out}; "
          f"{len(got.unmapped):,} record(s) could not be mapped", file=sys.stderr)
    return 1 if args.strict and got.unmapped else 0


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
