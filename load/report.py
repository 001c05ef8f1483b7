"""The report files of a load run: report.json, report.md and the rate, lag and latency plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from load.timeline import series


def write_report(out_dir: str | Path, report: dict[str, Any]) -> dict[str, Path]:
    """report.json, report.md and three PNG plots (matplotlib, Agg backend) from a report dict with a
    `series` entry as made by series()."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "rate": out / "rate.png",
             "lag": out / "lag.png", "latency": out / "latency.png"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n")
    s = report.get("series") or series([], [])
    t = s["t"]
    faults = (report.get("chaos") or {}).get("faults", [])

    def plot(path: Path, title: str, ylabel: str, lines: list[tuple[str, list]]) -> None:
        fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
        for label, ys in lines:
            xs = [x for x, y in zip(t, ys, strict=False) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], label=label, linewidth=1.4)
        for i, f in enumerate(faults):  # a fault: a line where it began, its healing shaded, its number on top
            ax.axvline(f["at"], color=FAULT_COLOURS.get(f["kind"], "grey"), linewidth=0.8, alpha=0.8)
            if f.get("healed_at") is not None:
                ax.axvspan(f["at"], f["healed_at"], color=FAULT_COLOURS.get(f["kind"], "grey"), alpha=0.08)
            ax.annotate(str(i + 1), (f["at"], 1.0), xycoords=("data", "axes fraction"), fontsize=6,
                        ha="center", va="bottom")
        for kind in dict.fromkeys(f["kind"] for f in faults):
            ax.plot([], [], color=FAULT_COLOURS.get(kind, "grey"), linewidth=0.8, label=kind)
        ax.set_title(title)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)

    plot(paths["rate"], "Throughput", "events/s", [("produced", s["produced_per_s"]),
                                                  ("committed by the group", s["committed_per_s"])])
    plot(paths["lag"], "Consumer lag (end offsets - committed offsets)", "records", [("lag", s["lag"])])
    plot(paths["latency"], "End-to-end latency to committed outputs (per second of commit time)", "seconds",
         [("p50", s["latency_p50"]), ("p99", s["latency_p99"])])
    paths["markdown"].write_text(markdown(report))
    return paths


FAULT_COLOURS = {"worker-kill": "tab:red", "worker-term": "tab:orange", "worker-stop": "tab:purple",
                 "broker-kill": "black", "worker-add": "tab:green"}


def _fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.3f}{unit}" if abs(v) < 100 else f"{v:,.0f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def markdown(report: dict[str, Any]) -> str:
    c, r = report.get("config", {}), report.get("results", {})
    lat = r.get("latency_s", {})
    steady = r.get("latency_after_warmup_s") or {}
    v = report.get("verification", {})
    lines = [
        "# giftstream load run",
        "",
        f"Target rate **{c.get('rate')}** events/s for {_fmt(c.get('duration_s'))} s into `{c.get('topic')}` "
        f"({c.get('partitions')} partitions), consumer group `{c.get('group')}`, broker {c.get('bootstrap')}.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| events produced | {_fmt(r.get('produced'))} |",
        f"| produce rate (achieved) | {_fmt(r.get('produce_rate'), ' /s')} |",
        f"| committed events | {_fmt(r.get('committed'))} |",
        f"| throughput (committed events/s, first to last commit) | {_fmt(r.get('throughput'), ' /s')} |",
        f"| peak committed events/s (1 s) | {_fmt(r.get('peak_throughput'), ' /s')} |",
        f"| max consumer lag | {_fmt(r.get('max_lag'))} |",
        f"| final consumer lag | {_fmt(r.get('final_lag'))} |",
        f"| latency p50 | {_fmt(lat.get('p50'), ' s')} |",
        f"| latency p90 | {_fmt(lat.get('p90'), ' s')} |",
        f"| latency p99 | {_fmt(lat.get('p99'), ' s')} |",
        f"| latency max | {_fmt(lat.get('max'), ' s')} |",
        f"| latency p50 / p90 / p99 after the first {_fmt(c.get('warmup_s'))} s (steady state) | "
        f"{_fmt(steady.get('p50'), ' s')} / {_fmt(steady.get('p90'), ' s')} / {_fmt(steady.get('p99'), ' s')} |",
        f"| records with a latency | {_fmt(lat.get('records'))} |",
        f"| committed-offset poll period (median / max) | {_fmt((r.get('poll_period_s') or {}).get('p50'), ' s')} / "
        f"{_fmt((r.get('poll_period_s') or {}).get('max'), ' s')} |",
        f"| drained in (after the last send) | {_fmt(r.get('drain_s'), ' s')} |",
        "",
        f"Latency = time the record's offset was first seen committed by the group (polled every "
        f"{_fmt(c.get('poll_interval_s'))} s) - time its batch was handed to the producer; the worker commits "
        "offsets in the same transaction as the batch's outputs, so it is the latency to committed outputs. "
        "It is overstated by up to one poll period (half of one on average).",
        "",
        f"## Verification: {'PASSED' if v.get('passed') else 'FAILED' if v.get('checks') else 'skipped'}",
        "",
    ]
    if v.get("checks"):
        lines += ["| check | result | detail |", "|---|---|---|"]
        lines += [f"| {ch['name']} | {'ok' if ch['passed'] else 'FAIL'} | {ch['detail']} |" for ch in v["checks"]]
    else:
        lines.append(v.get("reason", "verification was not run"))
    if report.get("chaos"):
        lines += chaos_markdown(report["chaos"])
    lines += ["", "## Plots", "", "![rate](rate.png)", "", "![lag](lag.png)", "", "![latency](latency.png)", ""]
    return "\n".join(lines)


def chaos_markdown(chaos: dict[str, Any]) -> list[str]:
    """The faults of a chaos run: a summary per kind, then every fault (numbered as on the plots)."""
    out = chaos.get("latency_outside_faults_s") or {}
    lines = ["", f"## Faults (seed {chaos.get('seed')}, {chaos.get('workers')} workers, session timeout "
             f"{chaos.get('session_timeout_ms')} ms)", "",
             f"{chaos.get('healed')} of {len(chaos.get('faults', []))} faults healed; latency outside the fault "
             f"windows ({_fmt(chaos.get('outside_records'))} records after the warm-up): p50 "
             f"{_fmt(out.get('p50'), ' s')}, p99 {_fmt(out.get('p99'), ' s')}, max {_fmt(out.get('max'), ' s')}.",
             "", "| kind | faults | healed | recovery p50 | recovery max | worst p99 in a fault window |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind, k in (chaos.get("by_kind") or {}).items():
        lines.append(f"| {kind} | {k['faults']} | {k['healed']} | {_fmt(k['recovery_p50_s'], ' s')} | "
                     f"{_fmt(k['recovery_max_s'], ' s')} | {_fmt(k['p99_in_fault_max_s'], ' s')} |")
    lines += ["", "| # | at | kind | target | action | lag before / max | recovered in | p99 in it | details |",
              "|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for i, f in enumerate(chaos.get("faults", [])):
        lines.append(f"| {i + 1} | {_fmt(f['at'], ' s')} | {f['kind']} | {f['target']} | "
                     f"{_fmt(f['action_s'], ' s')} | {_fmt(f['pre_fault_lag'])} / {_fmt(f['max_lag'])} | "
                     f"{_fmt(f['recovery_s'], ' s') if f['healed_at'] is not None else 'NOT healed'}"
                     f"{' (overlapped)' if f['overlapped'] else ''} | "
                     f"{_fmt((f['latency_s'] or {}).get('p99'), ' s')} | "
                     f"{', '.join(f'{k} {v}' for k, v in f['details'].items())} |")
    if chaos.get("unexpected_exits"):
        lines += ["", "Workers that ended on their own: " + "; ".join(chaos["unexpected_exits"])]
    return lines
