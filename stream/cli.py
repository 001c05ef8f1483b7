"""The `giftstream` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from stream.config import settings_help
from stream.engine.policy import PolicyError, load_policy
from stream.live_clients.cli import register as register_live_clients

DEMO_SESSION = "demo-session.jsonl.gz"
DEMO_ACCOUNTS = "demo-accounts.jsonl"  # the creator accounts of the demo session's creators


def _default_session() -> Path:
    return Path(str(resources.files("stream.data").joinpath(DEMO_SESSION)))


def _session(args: argparse.Namespace):
    """The replay's inputs: a recorded session directory (--session), or the gifts file (the bundled demo by
    default, with its accounts) and the payouts and accounts files given."""
    from stream.engine.order import Input
    from stream.kafka.session_files import read_accounts, read_session, session_path
    from stream.runtime.replay import Session

    payouts, accounts = args.payouts, args.accounts
    if args.session:
        if args.file:
            raise SystemExit("giftstream replay: give a session FILE or --session DIR, not both")
        path = session_path(args.session, Input.GIFTS)
        if path is None:
            raise SystemExit(f"giftstream replay: {args.session} holds no gifts.jsonl(.gz)")
        payouts = payouts or session_path(args.session, Input.PAYOUTS)
        accounts = accounts or session_path(args.session, Input.ACCOUNTS)
    else:
        path = Path(args.file) if args.file else _default_session()
    if accounts is None and not args.file and not args.session:
        bundled = resources.files("stream.data").joinpath(DEMO_ACCOUNTS)
        accounts = str(bundled) if bundled.is_file() else None
    return path, Session(read_session(path), read_session(payouts) if payouts else [],
                         read_accounts(accounts) if accounts else [])


def _utc(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def cmd_replay(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from stream.engine.order import Input
    from stream.runtime.replay import replay, write_outputs

    policy = load_policy(args.policy)
    path, records = _session(args)
    extra = f" (+ {len(records.payouts):,} payouts, {len(records.accounts):,} account records)" if records.merged \
        else ""
    print(f"replaying {len(records.gifts):,} records from {path}{extra} with policy {policy.version} "
          f"over {args.partitions} partitions", file=sys.stderr)
    with tqdm(total=len(records), unit="ev", unit_scale=True, disable=args.quiet, file=sys.stderr,
              mininterval=0.2) as bar:
        result = replay(records, policy, partitions=args.partitions, batch_size=args.batch_size,
                        final=args.end_of_session, source=f"file:{path.name}", progress=bar.update,
                        topics={Input.PAYOUTS: f"file:{Path(args.payouts).name}" if args.payouts else "payouts",
                                Input.ACCOUNTS: "creator-accounts"})
    if args.out:
        paths = write_outputs(result, args.out)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if not args.quiet:
        for n in sorted(result.outputs.notices, key=lambda n: n.notice_id)[: args.show]:
            print(f"NOTICE {n.notice_id:<28} {n.region} {n.account_status:<9} balance "
                  f"{n.balance_milli_diamonds // 1000:>9,} diamonds  gross ${n.gross_cents / 100:>9,.2f}  "
                  f"service fee ${n.service_fee_cents / 100:>8,.2f}  {n.payout_method} fee "
                  f"${n.method_fee_cents / 100:>6,.2f}  net ${n.net_cents / 100:>9,.2f}"
                  + ("  (sent by an account update)" if n.trigger == "account" else ""))
        if len(result.outputs.notices) > args.show:
            print(f"... and {len(result.outputs.notices) - args.show} more notices")
        top = sorted(result.outputs.window_totals, key=lambda w: -w.milli_diamonds)[: args.show]
        for w in top:
            print(f"WINDOW {w.window:<14} {w.creator_id:<22} {_utc(w.window_start)} .. {_utc(w.window_end)} "
                  f"{w.milli_diamonds // 1000:>9,} diamonds in {w.credits:,} gifts")
    print(json.dumps(result.summary, indent=2))
    return 0


def _worker_config(args: argparse.Namespace):
    from stream.config import load_config

    return load_config(getattr(args, "config", None), bootstrap_servers=getattr(args, "bootstrap", None))


def _check_kafka(cfg, log_json: bool = False) -> None:
    """Fail in seconds with a clear cause (bad password, untrusted certificate, wrong listener, unreachable
    advertised broker) instead of aiokafka's "Unable to bootstrap" or endless metadata retries: exit code 3."""
    import asyncio

    from stream.kafka.connect import ConnectionCheckError, check_connection

    try:
        asyncio.run(check_connection(cfg))
    except ConnectionCheckError as e:
        if log_json:  # the worker's logs are JSON lines; say it there too
            import logging

            logging.getLogger("stream.cli").error("cannot start: Kafka connection check failed",
                                                  extra={"error": str(e), "bootstrap": cfg.bootstrap_servers})
        print(f"giftstream: cannot use Kafka: {e}", file=sys.stderr)
        raise SystemExit(3) from None


def cmd_replay_to_kafka(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from stream.engine.order import Input
    from stream.kafka.session_io import produce_session

    cfg = _worker_config(args)
    _check_kafka(cfg)
    path, session = _session(args)
    speed = None if args.speed == "max" else float(args.speed)
    with tqdm(total=len(session), unit="rec", unit_scale=True, disable=args.quiet, file=sys.stderr) as bar:
        # The accounts and payouts first, unpaced: each record's timestamp (its own time) decides the order the
        # worker merges them in, not when it was produced.
        if session.accounts:
            asyncio.run(produce_session([a.value for a in session.accounts], cfg, None, None, bar.update,
                                        Input.ACCOUNTS, [a.key for a in session.accounts],
                                        [a.ts for a in session.accounts]))
        if session.payouts:
            asyncio.run(produce_session(session.payouts, cfg, None, None, bar.update, Input.PAYOUTS))
        sent = asyncio.run(produce_session(session.gifts, cfg, args.topic, speed, bar.update))
    print(f"produced {sent:,} records from {path} to {args.topic or cfg.topics.gifts}"
          + (f", {len(session.payouts):,} to {cfg.topics.payouts}" if session.payouts else "")
          + (f", {len(session.accounts):,} to {cfg.topics.accounts}" if session.accounts else "")
          + f" at {cfg.bootstrap_servers}", file=sys.stderr)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    import asyncio

    from stream.kafka.session_files import write_session
    from stream.kafka.session_io import record_session, record_topic

    cfg = _worker_config(args)
    if args.session:
        if args.topic or args.file:
            raise SystemExit("giftstream record: give TOPIC FILE or --session DIR, not both")
        _check_kafka(cfg)
        written = asyncio.run(record_session(cfg, args.session))
        print(f"recorded {', '.join(f'{n:,} records to {name}' for name, n in written.items())} in {args.session}",
              file=sys.stderr)
        return 0
    if not (args.topic and args.file):
        raise SystemExit("giftstream record: give TOPIC FILE, or --session DIR")
    _check_kafka(cfg)
    lines = asyncio.run(record_topic(cfg, args.topic))
    n = write_session(args.file, lines)
    print(f"recorded {n:,} committed records of {args.topic} to {args.file}", file=sys.stderr)
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    import asyncio

    from stream.kafka.topics import create_topics, delete_topics, parse_retention

    cfg = _worker_config(args)
    _check_kafka(cfg)
    if args.action == "delete":
        asyncio.run(delete_topics(cfg))
        print("deleted giftstream topics", file=sys.stderr)
        return 0
    created = asyncio.run(create_topics(cfg, args.partitions, parse_retention(args.retention)))
    print(f"created {', '.join(created) or 'nothing (all topics exist)'}", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from stream.service.http import serve_worker
    from stream.service.logs import setup_logging

    setup_logging(args.log_level)
    cfg = _worker_config(args)
    if args.at_least_once:
        cfg.exactly_once = False
    if args.http_port is not None:
        cfg.http_port = args.http_port
    policy = load_policy(args.policy or cfg.policy)
    _check_kafka(cfg, log_json=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_worker(cfg, policy, stop, worker_id=args.worker_id)

    asyncio.run(main())
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    print(f"policy {policy.version} from {policy.source}: {len(policy.regions)} regions, windows "
          f"{', '.join(w.name for w in policy.windows)}, grace {policy.grace_ms} ms: OK")
    return 0


def _kafka_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default 127.0.0.1:19092 or the config's)")
    p.add_argument("--config", help="worker config TOML (see `giftstream worker --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giftstream",
        description="Exactly-once processing of live-stream gift events into diamond balances, "
                    "windowed tallies and payout-eligible notices.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="run a recorded session (JSONL, .gz ok) through the engine offline",
                       description="Run a recorded session through the engine with no broker. Records are "
                                   "routed to partitions like Kafka's default partitioner, so notices match "
                                   "a live run on a topic with the same partition count.")
    p.add_argument("file", nargs="?", help=f"session file (default: the bundled {DEMO_SESSION})")
    p.add_argument("--session", metavar="DIR", help="a recorded session directory (`giftstream record --session`): "
                                                    "its gifts, payouts and creator accounts")
    p.add_argument("--payouts", help="payouts made (JSONL, .gz ok): one payout record per line")
    p.add_argument("--accounts", help="creator accounts (JSONL, .gz ok): one account record per line, "
                                      '{"tombstone": "<creator id>", "ts": <ms>} for a closed one (default with '
                                      "the bundled session: its accounts)")
    p.add_argument("--policy", help="policy TOML file (default: the built-in policy)")
    p.add_argument("--partitions", type=int, default=6, help="partitions to simulate (default 6)")
    p.add_argument("--batch-size", type=int, default=20_000, help="records per engine batch")
    p.add_argument("--out", help="directory for payout-notices.jsonl, creator-window-totals.jsonl, "
                                 "gifts-late.jsonl, gifts-dlq.jsonl and summary.json")
    p.add_argument("--end-of-session", action="store_true",
                   help="after the last record, time out open streaks and close every window")
    p.add_argument("--show", type=int, default=10, help="notices and window totals to print")
    p.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    p.add_argument("--to-kafka", action="store_true", help="produce the session to Kafka instead")
    p.add_argument("--speed", default="max", help="with --to-kafka: 'max' or N times the event-time pace")
    p.add_argument("--topic", help="with --to-kafka: target topic (default: the gifts topic)")
    _kafka_args(p)
    p.set_defaults(func=lambda a: cmd_replay_to_kafka(a) if a.to_kafka else cmd_replay(a))

    p = sub.add_parser("topics", help="create (or delete) the topics giftstream uses")
    p.add_argument("action", choices=["create", "delete"])
    p.add_argument("--partitions", type=int, default=6, help="partitions of every topic (default 6)")
    p.add_argument("--retention", default="7d", help="retention of non-compacted topics (default 7d)")
    _kafka_args(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="run the streaming worker (consumer group member, exactly-once)",
                       description="Consume `gifts`, `payouts` and `creator-accounts` (merged in one order by "
                                   "record timestamp), keep per-creator state, emit notices, "
                                   "window totals, late gifts and dead letters in one transaction per batch.",
                       epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _kafka_args(p)
    p.add_argument("--policy", help="policy TOML file (default: the config's, else the built-in policy)")
    p.add_argument("--worker-id", default="worker", help="client id shown in logs and the group")
    p.add_argument("--http-port", type=int, help="serve /metrics /healthz /readyz /creators/ID here")
    p.add_argument("--at-least-once", action="store_true", help="no transactions (for comparison only)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("record", help="write a topic's committed records to a session file, or all three inputs "
                                      "to a session directory (--session)")
    p.add_argument("topic", nargs="?")
    p.add_argument("file", nargs="?", help="output JSONL (.gz ok)")
    p.add_argument("--session", metavar="DIR", help="record gifts, payouts and creator-accounts into DIR "
                                                    "(gifts.jsonl, payouts.jsonl, creator-accounts.jsonl), which "
                                                    "`giftstream replay --session DIR` replays")
    _kafka_args(p)
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("policy", help="validate a policy file")
    p.add_argument("policy", nargs="?", help="policy TOML file (default: the built-in policy)")
    p.set_defaults(func=cmd_policy_check)
    register_live_clients(sub)
    register_load = load_kit()
    if register_load is not None:
        register_load(sub)
    return parser


def load_kit() -> Callable[[Any], None] | None:
    """The load kit's command registration; None without it: load/ comes with a checkout (pip install -e .),
    not with the runtime image's wheel. Only the kit's absence is tolerated, not an error inside it."""
    try:
        from load.cli import register
    except ModuleNotFoundError as e:
        if e.name != "load":
            raise
        return None
    return register


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PolicyError as e:
        print(f"giftstream: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # configuration errors carry the setting's name
        print(f"giftstream: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"giftstream: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
