"""What `/creators/<id>` answers: a creator's balance and the tallies of the windows still open, computed
from the state one engine holds (pure: the HTTP handler only finds the engine that owns the creator)."""

from __future__ import annotations

from msgspec import Struct

from stream.engine.policy import Policy
from stream.state.tables import Account, CreatorState


class OpenWindow(Struct):
    window: str
    window_start: int
    window_end: int
    milli_diamonds: int
    credits: int
    final: bool = False  # open windows are never final: the window-totals topic carries the final tallies


class AccountView(Struct):
    """The creator's account record as the partition holds it, and what the policy makes of it now."""

    region: str
    account_status: str
    payout_method: str
    age: int
    updated_ts: int
    eligible: bool  # a notice can go out (status, region and age allow it)
    threshold_cents: int | None  # None while not eligible


class CreatorView(Struct):
    creator_id: str
    partition: int
    region: str
    balance_milli_diamonds: int
    balance_cents: int
    credited_milli_diamonds: int
    paid_out_milli_diamonds: int
    notices: int
    above_threshold: bool
    watermark: int | None
    open_windows: list[OpenWindow]
    account: AccountView | None = None  # None: no account record (the policy's missing status applies)


def open_windows(c: CreatorState, policy: Policy, close_cursor: int) -> list[OpenWindow]:
    """Every window instance holding one of the creator's panes and not closed yet (ends after the cursor),
    by window in policy order, then by start."""
    out = []
    for w in policy.windows:
        starts = sorted({pane - pane % w.hop_ms - k * w.hop_ms for pane in c.panes
                         for k in range(w.size_ms // w.hop_ms)})
        for start in starts:
            if start + w.size_ms <= close_cursor:
                continue
            tallies = [t for pane, t in c.panes.items() if start <= pane < start + w.size_ms]
            if tallies:
                out.append(OpenWindow(w.name, start, start + w.size_ms, sum(t[0] for t in tallies),
                                      sum(t[1] for t in tallies)))
    return out


def account_view(a: Account, policy: Policy) -> AccountView:
    # policy.threshold_milli is None for a closed account too (CLOSED is never one of the policy's statuses)
    eligible = a.region in policy.regions and \
        policy.threshold_milli(a.region, a.account_status, a.age) is not None
    cents = policy.regions[a.region].thresholds_cents.get(a.account_status) if eligible else None
    return AccountView(a.region, a.account_status, a.payout_method, a.age, a.updated_ts, eligible, cents)


def creator_view(creator_id: str, partition: int, c: CreatorState | None, policy: Policy, watermark: int | None,
                 close_cursor: int | None, account: Account | None = None) -> CreatorView:
    """c None: a creator known only by its account record (nothing credited yet)."""
    if c is None:
        c = CreatorState(account.region if account is not None else "")
    value = policy.regions[c.region].value_cents(c.balance) if c.region in policy.regions else 0
    return CreatorView(
        creator_id=creator_id, partition=partition, region=c.region, balance_milli_diamonds=c.balance,
        balance_cents=value, credited_milli_diamonds=c.credited,
        paid_out_milli_diamonds=c.paid_out, notices=c.crossings, above_threshold=c.above, watermark=watermark,
        open_windows=open_windows(c, policy, close_cursor or 0),
        account=account_view(account, policy) if account is not None else None)
