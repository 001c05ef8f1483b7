//! The engine's core in Rust: the same steps as stream/engine/reference.py (read its docstring first), event by
//! event, with the partition state held natively. It has no Python in it: outputs are collected as
//! `Output` values and the caller (lib.rs) turns them into the Python records. Money is i128, so sums
//! are exact far beyond anything the changelog's 64-bit integers can hold.

// foldhash: fast on short string keys and seeded per process (ids come from clients: no fixed-seed hash).
use foldhash::{HashMap, HashSet, HashSetExt};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::decode::Event;
use crate::ids::{Id, StreakKey};
use crate::sharded::{ChunkedVec, ShardedMap, ShardedSet};

pub const RETENTION_BUCKET_MS: i64 = 60_000;
pub const STREAKABLE: i64 = 1;
/// stream.engine.policy.CLOSED: the status of an account whose record was deleted (never eligible, never a
/// policy status).
pub const CLOSED: &str = "closed";

pub struct RegionRule {
    pub milli_per_coin: i128,
    /// Per account status (Settings::statuses, in its order): the threshold of an account of that status (None:
    /// no notice while so, the region or the status is not eligible). policy.threshold_milli(region, status).
    pub thresholds: Vec<Option<i128>>,
    pub missing: Option<i128>, // the threshold of a creator without an account record (the missing status's)
    pub min_age: i64,          // an account younger than this gets no notice
}

impl RegionRule {
    /// The threshold of a creator of this region with `account` (None: no account record), as
    /// stream.engine.reference.PartitionEngine._threshold: None means no notice while so.
    pub fn threshold(&self, account: Option<&AccountBrief>) -> Option<i128> {
        match account {
            None => self.missing,
            Some(a) if i64::from(a.age) < self.min_age => None,
            Some(a) => *self.thresholds.get(usize::from(a.status?))?, // a closed account has no status index
        }
    }
}

pub struct Window {
    pub size_ms: i64,
    pub hop_ms: i64,
}

/// The policy's regions: a handful of two-letter codes, so a scan comparing each code as one 16-bit number
/// beats hashing (and a byte-string compare per entry).
#[derive(Default)]
pub struct Regions {
    codes: Vec<u16>,
    rules: Vec<RegionRule>,
}

fn code(region: &str) -> Option<u16> {
    match region.as_bytes() {
        &[a, b] => Some(u16::from_le_bytes([a, b])),
        _ => None, // policy regions are two letters (validated): any other string is unknown
    }
}

impl Regions {
    pub fn new(regions: Vec<(String, RegionRule)>) -> Self {
        let mut r = Regions::default();
        for (name, rule) in regions {
            // The policy validates ISO 3166 alpha-2 codes; anything else could never match an event.
            if let Some(c) = code(&name) {
                r.codes.push(c);
                r.rules.push(rule);
            }
        }
        r
    }

    pub fn get(&self, region: &str) -> Option<&RegionRule> {
        let c = code(region)?;
        self.codes.iter().position(|&x| x == c).map(|i| &self.rules[i])
    }
}

pub struct Settings {
    pub regions: Regions,
    pub windows: Vec<Window>,
    pub pane_ms: i64,
    pub grace_ms: i64,
    pub streak_timeout_ms: i64,
    pub dedupe_horizon_ms: i64,
    pub max_future_ms: i64,
    pub partition: u32,
    pub partitions: u32, // of the input topics: a creator belongs to murmur2(creator_id) % partitions
    pub statuses: Vec<String>, // the policy's account statuses (RegionRule::thresholds are in this order)
    pub default_region: Option<String>, // the region of a gift that names none, for a creator without an account
}

impl Settings {
    /// What a creator's credits need of its account.
    pub fn brief(&self, a: &Account) -> AccountBrief {
        AccountBrief { region: (!a.region.is_empty()).then(|| a.region.clone()),
                       status: self.statuses.iter().position(|s| *s == a.status).and_then(|i| u16::try_from(i).ok()),
                       // min ages are 0 to 150: an age clamped to 32 bits compares with them as the age does
                       age: a.age.clamp(i32::MIN.into(), i32::MAX.into()) as i32 }
    }

    /// The creator's threshold now: its region's rule and its account (stream.engine.reference's _threshold). A
    /// region or status the policy does not have (state restored under an older policy) has none.
    pub fn threshold(&self, region: &str, account: Option<&AccountBrief>) -> Option<i128> {
        self.regions.get(region)?.threshold(account)
    }

    /// An account naming a region the policy does not have (restored under an older policy): its creator's gifts
    /// cannot be priced (they are rejected unknown_region).
    pub fn unknown_region(&self, a: &Account) -> bool {
        !a.region.is_empty() && self.regions.get(&a.region).is_none()
    }
}

#[derive(Clone, Debug)]
pub struct Creator {
    pub region: String,
    pub balance: i128,
    pub credited: i128,
    pub paid_out: i128,
    pub crossings: i64,
    pub above: bool, // a notice is out, not re-armed yet
    pub low: i128,   // the lowest balance since the last notice (a payout lowers it; under the threshold: re-armed)
    pub panes: Panes,                // pane start -> tally
    pub dirty: bool,                 // changed since the last drain (listed in Dirty::creators)
    pub changed_panes: Vec<i64>,     // tallies whose flag is set (a creator holds up to a day of panes)
    /// Its account (State::accounts) as its credits need it, None without an account record: kept here so a
    /// credit looks nothing else up. Set when the creator is made or the state is loaded, and by apply_account.
    pub account: Option<AccountBrief>,
}

/// A creator's account (stream.state.tables.Account), as the last creator-accounts record (or its tombstone) left it.
#[derive(Clone, Debug)]
pub struct Account {
    pub region: Arc<str>, // from State::region_name; "" only for an account closed before any region was known
    pub status: String,   // CLOSED for a closed account
    pub payout_method: String,
    pub age: i64,
    pub updated_ts: i64,
    pub dirty: bool, // changed since the last drain (listed in Dirty::accounts)
}

/// The part of a creator's account its credits and payouts need (Creator::account): 24 bytes in each creator.
#[derive(Clone, Debug)]
pub struct AccountBrief {
    pub region: Option<Arc<str>>, // None: the account names no region
    pub status: Option<u16>,      // index in Settings::statuses; None for a closed account (never a notice)
    pub age: i32,
}

#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub milli: i128,
    pub credits: i64,
    pub dirty: bool, // changed since the last drain
}

impl Creator {
    pub fn new(region: &str) -> Self {
        Creator { region: region.to_owned(), balance: 0, credited: 0, paid_out: 0, crossings: 0, above: false, low: 0,
                  panes: Panes::default(), dirty: false, changed_panes: Vec::new(), account: None }
    }
}

/// A creator's pane tallies, ordered by pane start: a handful to a day's worth (288 five-minute panes), so
/// a sorted Vec inline in the creator beats a hash table (one allocation to reach instead of a control
/// block and a bucket; a window close reads its panes as one run). Credits go to the newest pane almost
/// always, so a lookup searches from the end; panes are dropped from the front.
#[derive(Clone, Debug, Default)]
pub struct Panes(Vec<(i64, Tally)>);

impl Panes {
    /// Where `pane` is (Ok) or would go (Err), searching from the newest.
    fn find(&self, pane: i64) -> Result<usize, usize> {
        match self.0.last() {
            Some((p, _)) if *p == pane => Ok(self.0.len() - 1),
            Some((p, _)) if *p < pane => Err(self.0.len()),
            _ => self.0.binary_search_by_key(&pane, |(p, _)| *p),
        }
    }

    pub fn get(&self, pane: &i64) -> Option<&Tally> {
        self.find(*pane).ok().map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, pane: &i64) -> Option<&mut Tally> {
        self.find(*pane).ok().map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, pane: &i64) -> bool {
        self.find(*pane).is_ok()
    }

    pub fn insert(&mut self, pane: i64, tally: Tally) -> Option<Tally> {
        match self.find(pane) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, tally)),
            Err(i) => {
                // Most creators hold one or two panes: a Vec's first growth would make room for four.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, (pane, tally));
                None
            }
        }
    }

    pub fn remove(&mut self, pane: &i64) -> Option<Tally> {
        self.find(*pane).ok().map(|i| self.0.remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// (pane start, tally) in pane order.
    pub fn iter(&self) -> impl Iterator<Item = (&i64, &Tally)> {
        self.0.iter().map(|(p, t)| (p, t))
    }

    /// The tallies of the panes in [start, end), summed: (milli, credits).
    fn sum(&self, start: i64, end: i64) -> (i128, i64) {
        let from = self.0.partition_point(|(p, _)| *p < start);
        self.0[from..].iter().take_while(|(p, _)| *p < end)
            .fold((0, 0), |(m, n), (_, t)| (m + t.milli, n + t.credits))
    }
}

impl FromIterator<(i64, Tally)> for Panes {
    fn from_iter<I: IntoIterator<Item = (i64, Tally)>>(items: I) -> Self {
        let mut v: Vec<(i64, Tally)> = items.into_iter().collect();
        v.sort_by_key(|(p, _)| *p);
        v.dedup_by_key(|(p, _)| *p); // a map's keys are unique; keep the first of any repeat
        Panes(v)
    }
}

/// A streak (stream.state.tables.Streak). Kept for the dedupe horizon after it closes, so there are many: the ids
/// are compact and the region is shared, and a streak allocates nothing besides its table slot.
#[derive(Clone, Debug)]
pub struct Streak {
    pub creator_id: Id,
    pub region: Arc<str>, // from State::region_name
    pub diamond_count: i64,
    pub count: i64,
    pub credited: i64,
    pub last_ts: i64,
    pub last_event_id: Id,
    pub open: bool,
    pub dirty: bool, // changed since the last drain (listed in Dirty::streaks)
}


#[derive(Default)]
pub struct State {
    pub watermark: Option<i64>,
    pub close_cursor: Option<i64>,
    pub creators: HashMap<String, Creator>,
    pub streaks: ShardedMap<StreakKey, Streak>, // sharded: the two tables that grow to millions of entries
    pub seen: ShardedSet<Id>,
    pub seen_buckets: HashMap<i64, ChunkedVec<Id>>, // a minute's ids: a million at high rates
    pub streak_buckets: HashMap<i64, ChunkedVec<StreakKey>>, // a minute's closed streaks
    pub payouts_seen: HashSet<String>,
    pub accounts: HashMap<String, Account>, // creator_id -> its account (creators without a record have none)
    pub pane_creators: HashMap<i64, HashSet<String>>,
    pub region_names: Vec<Arc<str>>, // each region a streak or an account names, once
}

impl State {
    /// The shared copy of a region's name (a handful of regions, so a scan).
    pub fn region_name(&mut self, name: &str) -> Arc<str> {
        intern_region(&mut self.region_names, name)
    }
}

/// The shared copy of a region's name in `names` (a handful of regions, so a scan), added when new.
pub fn intern_region(names: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(r) = names.iter().find(|r| r.as_ref() == name) {
        return r.clone();
    }
    let r: Arc<str> = Arc::from(name);
    names.push(r.clone());
    r
}

/// Keys changed since the last changelog drain (stream.engine.reference.Dirty). Creators, tallies and streaks carry a
/// `dirty` flag so marking them costs no hashing; these lists say where to look.
#[derive(Default)]
pub struct Dirty {
    pub creators: Vec<String>,            // each creator once (its flag was clear when listed)
    pub removed_panes: Vec<(String, i64)>, // tallies dropped when their last window closed
    pub streaks: Vec<StreakKey>,          // changed or deleted streaks (a key may repeat)
    pub seen_buckets: HashMap<i64, usize>, // bucket -> its length before this batch
    pub expired_buckets: HashSet<i64>,
    pub payouts: Vec<String>,
    pub accounts: Vec<String>, // each account once, in the order first changed (its flag was clear when listed)
}

/// What changed since the last drain, each key once.
pub struct Changed {
    pub creators: Vec<String>,
    pub panes: Vec<(String, i64)>,
    pub streaks: Vec<StreakKey>,
    pub seen_buckets: HashMap<i64, usize>,
    pub expired_buckets: HashSet<i64>,
    pub payouts: Vec<String>,
    pub accounts: Vec<String>,
}

#[derive(Default)]
pub struct Stats {
    pub events_in: u64,
    pub duplicates: u64,
    pub streaks: u64,
    pub credits: u64,
    pub milli: i128,
    pub late: u64,
    pub notices: u64,
    pub window_totals: u64,
    pub streak_timeouts: u64,
    pub streak_stragglers: u64,
    pub payouts: u64,
    pub payout_duplicates: u64,
    pub gifts_without_account: u64,
}

pub enum Reject {
    Decode { reason: String, detail: String }, // from the Python decoder
    UnknownRegion(String),
    WrongPartition { creator_id: String, owner: u32 },
    TooFarFuture { ts: i64, watermark: i64 },
    TooOld { ts: i64, watermark: i64 },
    NoRegion { creator_id: String }, // the gift names no region, its creator's account none, the policy no default
    AccountRegion { creator_id: String, region: String }, // the creator's account names a region the policy lacks
}

pub enum Output {
    /// Record `index` of the batch is rejected by the engine (decode rejects are the caller's).
    Reject { index: usize, reject: Reject },
    Notice { creator_id: String, region: String, crossing_seq: i64, balance: i128, event_id: String, ts: i64 },
    WindowTotal { creator_id: String, window: usize, start: i64, end: i64, milli: i128, credits: i64 },
    Late { event_id: String, creator_id: String, ts: i64, watermark: i64, milli: i128,
           missed: Vec<(usize, i64, i64)> },
}

pub enum PayoutResult {
    Applied,
    Duplicate,
    ExceedsBalance(i128),
}

/// A valid creator-accounts record (the caller, stream.engine.reference.EngineEdges.apply_accounts, checked it
/// against the policy).
pub enum AccountRecord<'a> {
    Open { region: &'a str, status: &'a str, payout_method: &'a str, age: i64, updated_ts: i64 },
    /// A tombstone: the account is closed as of `ts` (the record's time).
    Closed { ts: i64 },
}

/// What a credit is worth, in the region it is priced in.
enum Priced<'a> {
    /// A plain gift of `coins` (diamond_count x repeat_count): priced in its creator's account's region, else the
    /// gift's own (`region`, maybe ""), else the policy's default region.
    Gift { region: &'a str, coins: i128 },
    /// The rest of a streak, priced in the streak's region when it began.
    Streak { region: &'a str, milli: i128 },
}

fn mark_creator(dirty: &mut Dirty, c: &mut Creator, creator_id: &str) {
    if !c.dirty {
        c.dirty = true;
        dirty.creators.push(creator_id.to_owned());
    }
}

/// A notice of the creator's next threshold crossing (event_id "": an account record made it).
fn notice(outputs: &mut Vec<Output>, stats: &mut Stats, c: &mut Creator, creator_id: &str, event_id: String, ts: i64) {
    c.crossings += 1;
    c.above = true;
    c.low = c.balance;
    stats.notices += 1;
    outputs.push(Output::Notice { creator_id: creator_id.to_owned(), region: c.region.clone(), crossing_seq: c.crossings,
                                  balance: c.balance, event_id, ts });
}

/// Ok when a creator's events belong to `partition` of `partitions` (Kafka's murmur2 partitioner), else the
/// reject that says whose they are. ~10 ns for a short id: cheaper than remembering owners.
pub fn owned_by(partitions: u32, partition: u32, creator_id: &str) -> Result<(), Reject> {
    if partitions > 1 {
        let owner = crate::murmur2::partition_for(creator_id.as_bytes(), partitions);
        if owner != partition {
            return Err(Reject::WrongPartition { creator_id: creator_id.to_owned(), owner });
        }
    }
    Ok(())
}

/// An event's dedupe id, made by `Engine::prepare`.
pub struct PreparedId {
    id: Id,
    hash: u64, // in the engine's dedupe set
}

/// What a streak event found under its key (Engine::streak_key_event), once it is not an open streak's next event.
enum Found {
    Absent,
    Restarted { last_ts: i64, last_event_id: Id },
    Closed,
}

/// The streak twin of mark_creator: list a streak key as changed once (its flag says it is listed).
fn mark_streak_changed(dirty: &mut Dirty, s: &mut Streak, key: &StreakKey) {
    if !s.dirty {
        s.dirty = true;
        dirty.streaks.push(key.clone());
    }
}

/// The first 16 bytes of `s` as a big-endian number, zero-padded: when two strings' prefixes differ they
/// order as the strings do (a shorter string pads with zeros, which no byte is below); when they are equal
/// the strings may still differ, from the 17th byte or in trailing zero bytes, so ties compare the strings.
pub fn sort_prefix(b: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    let n = b.len().min(16);
    buf[..n].copy_from_slice(&b[..n]);
    u128::from_be_bytes(buf)
}

fn floor_to(x: i64, step: i64) -> i64 {
    x - x.rem_euclid(step)
}

pub struct Engine {
    pub cfg: Settings,
    pub state: State,
    pub dirty: Dirty,
    pub stats: Stats,
    pub outputs: Vec<Output>,
    heap: BinaryHeap<Reverse<(i64, StreakKey)>>, // streak deadlines (stale entries are skipped when popped)
    min_bucket: Option<i64>,
    next_timer: i64,
    /// Off for an offline replay, which has no changelog: then nothing is marked changed (set at creation).
    pub track_changes: bool,
    /// Accounts naming a region the policy does not have (Settings::unknown_region; only a restored state holds
    /// them, as account records are checked against the policy): while there are none, a gift needs no account
    /// lookup to know its price.
    unknown_region_accounts: usize,
}

impl Engine {
    pub fn new(cfg: Settings, state: State, track_changes: bool) -> Self {
        let mut e = Engine { cfg, state, dirty: Dirty::default(), stats: Stats::default(), outputs: Vec::new(),
                             heap: BinaryHeap::new(), min_bucket: None, next_timer: -1,
                             track_changes, unknown_region_accounts: 0 };
        e.rebuild_timers();
        e.brief_accounts();
        e
    }

    /// Each creator's Creator::account from State::accounts (a state loaded or restored has none set), and the
    /// count of accounts naming a region the policy does not have.
    fn brief_accounts(&mut self) {
        let (cfg, st) = (&self.cfg, &mut self.state);
        let mut unknown = 0;
        for (cid, a) in &st.accounts {
            if let Some(c) = st.creators.get_mut(cid) {
                c.account = Some(cfg.brief(a));
            }
            unknown += usize::from(cfg.unknown_region(a));
        }
        self.unknown_region_accounts = unknown;
    }

    /// Note a streak key as changed (or deleted, when it is gone).
    fn mark_streak(&mut self, key: &StreakKey, h: u64) {
        if !self.track_changes {
            return;
        }
        match self.state.streaks.get_mut_hashed(h, key) {
            Some(s) => mark_streak_changed(&mut self.dirty, s, key),
            None => self.dirty.streaks.push(key.clone()),
        }
    }

    /// The changed keys, each once, and a clean slate for the next batch.
    pub fn take_changed(&mut self) -> Changed {
        let dirty = std::mem::take(&mut self.dirty);
        let mut panes = Vec::new();
        for cid in &dirty.creators {
            if let Some(c) = self.state.creators.get_mut(cid) {
                c.dirty = false;
                for pane in c.changed_panes.drain(..) {
                    // A tally dropped since is in removed_panes; one dropped and started again is listed twice.
                    if let Some(t) = c.panes.get_mut(&pane).filter(|t| t.dirty) {
                        t.dirty = false;
                        panes.push((cid.clone(), pane));
                    }
                }
            }
        }
        for (cid, pane) in dirty.removed_panes {
            // A tally dropped and started again in the same batch is listed above with its new value.
            if !self.state.creators.get(&cid).is_some_and(|c| c.panes.contains_key(&pane)) {
                panes.push((cid, pane));
            }
        }
        let mut streaks = Vec::with_capacity(dirty.streaks.len());
        let mut listed: HashSet<&StreakKey> = HashSet::with_capacity(dirty.streaks.len());
        for key in &dirty.streaks {
            if listed.insert(key) {
                if let Some(s) = self.state.streaks.get_mut(key) {
                    s.dirty = false;
                }
                streaks.push(key.clone());
            }
        }
        for cid in &dirty.accounts {
            if let Some(a) = self.state.accounts.get_mut(cid) {
                a.dirty = false;
            }
        }
        Changed { creators: dirty.creators, panes, streaks, seen_buckets: dirty.seen_buckets,
                  expired_buckets: dirty.expired_buckets, payouts: dirty.payouts, accounts: dirty.accounts }
    }

    // ------------------------------------------------------------------------------------ timers

    fn rebuild_timers(&mut self) {
        let timeout = self.cfg.streak_timeout_ms;
        self.heap = self.state.streaks.iter().filter(|(_, s)| s.open)
            .map(|(k, s)| Reverse((s.last_ts + timeout, k.clone()))).collect();
        self.min_bucket = self.smallest_bucket();
        self.next_timer = self.compute_next_timer();
    }

    fn smallest_bucket(&self) -> Option<i64> {
        self.state.seen_buckets.keys().chain(self.state.streak_buckets.keys()).copied().min()
    }

    fn compute_next_timer(&self) -> i64 {
        let Some(_) = self.state.watermark else { return -1 };
        let mut nxt = self.state.close_cursor.unwrap_or(0) + self.cfg.pane_ms + self.cfg.grace_ms;
        if let Some(Reverse((deadline, _))) = self.heap.peek() {
            nxt = nxt.min(*deadline);
        }
        if let Some(b) = self.min_bucket {
            nxt = nxt.min(b + RETENTION_BUCKET_MS + self.cfg.dedupe_horizon_ms);
        }
        nxt
    }

    // ------------------------------------------------------------------------------------ gifts

    /// The event's dedupe id and its hash in the dedupe set, whose slot starts loading into the cache now: a
    /// caller with several events in hand prepares each a few events before it is processed, so the insert
    /// finds that memory there instead of waiting for it.
    pub fn prepare(&self, ev: &Event) -> PreparedId {
        let id = Id::new(&ev.event_id);
        let hash = self.state.seen.hash(&id);
        self.state.seen.prefetch(hash);
        PreparedId { id, hash }
    }

    /// One decoded event, record `index` of the current batch, `prepare`d by this engine; its creator is this
    /// partition's (the caller checked it with `owned_by`). events_in is counted by the caller.
    pub fn process_prepared(&mut self, ev: &Event, index: usize, prepared: PreparedId) {
        let ts = ev.ts;
        if !ev.region.is_empty() {
            if self.cfg.regions.get(ev.region.as_ref()).is_none() {
                self.outputs.push(Output::Reject { index, reject: Reject::UnknownRegion(ev.region.to_string()) });
                return;
            }
        } else if self.cfg.default_region.is_none()
            && self.state.accounts.get(ev.creator_id.as_ref()).is_none_or(|a| a.region.is_empty()) {
            self.outputs.push(Output::Reject { index, reject: Reject::NoRegion { creator_id: ev.creator_id.to_string() } });
            return;
        }
        if self.unknown_region_accounts != 0 {
            // the gift would be priced in its account's region, which the policy does not have
            if let Some(a) = self.state.accounts.get(ev.creator_id.as_ref()).filter(|a| self.cfg.unknown_region(a)) {
                let reject = Reject::AccountRegion { creator_id: ev.creator_id.to_string(), region: a.region.to_string() };
                self.outputs.push(Output::Reject { index, reject });
                return;
            }
        }
        if let Some(wm) = self.state.watermark {
            if ts > wm + self.cfg.max_future_ms {
                self.outputs.push(Output::Reject { index, reject: Reject::TooFarFuture { ts, watermark: wm } });
                return;
            }
            if ts < wm - self.cfg.dedupe_horizon_ms {
                self.outputs.push(Output::Reject { index, reject: Reject::TooOld { ts, watermark: wm } });
                return;
            }
        }
        let PreparedId { id: event_id, hash } = prepared;
        if !self.state.seen.insert_new_hashed(hash, event_id.clone()) {
            self.stats.duplicates += 1;
            return;
        }
        let bucket = floor_to(ts, RETENTION_BUCKET_MS);
        let ids = match self.state.seen_buckets.get_mut(&bucket) {
            Some(ids) => ids,
            None => {
                if self.min_bucket.is_none_or(|m| bucket < m) {
                    self.min_bucket = Some(bucket);
                }
                self.state.seen_buckets.entry(bucket).or_default()
            }
        };
        let len = ids.len();
        ids.push(event_id.clone());
        if self.track_changes {
            self.dirty.seen_buckets.entry(bucket).or_insert(len);
        }
        match self.state.watermark {
            None => self.start(ts),
            Some(wm) if ts > wm => {
                self.state.watermark = Some(ts);
                if ts >= self.next_timer {
                    self.fire_timers(ts);
                }
            }
            Some(_) => {}
        }
        if ev.gift_type != STREAKABLE {
            let coins = ev.diamond_count as i128 * ev.repeat_count as i128;
            self.credit(&ev.creator_id, Priced::Gift { region: &ev.region, coins }, ts, &event_id);
        } else {
            if self.state.accounts.is_empty() || !self.state.accounts.contains_key(ev.creator_id.as_ref()) {
                self.stats.gifts_without_account += 1;
            }
            self.streak_event(ev, event_id);
        }
    }

    /// The region a new streak is priced in (stream.engine.reference's _credit_region): its creator's account's,
    /// else the gift's, else the policy's default region (a gift with none of them was rejected).
    fn streak_region(&mut self, ev: &Event) -> Arc<str> {
        if let Some(a) = self.state.accounts.get(ev.creator_id.as_ref()).filter(|a| !a.region.is_empty()) {
            return a.region.clone();
        }
        let region = match ev.region.as_ref() {
            "" => self.cfg.default_region.as_deref().expect("a gift without a region has the default region"),
            r => r,
        };
        intern_region(&mut self.state.region_names, region)
    }

    /// First accepted event of the partition: windows ending before it (plus grace) are closed.
    fn start(&mut self, ts: i64) {
        self.state.watermark = Some(ts);
        self.state.close_cursor = Some(floor_to(ts - self.cfg.grace_ms, self.cfg.pane_ms));
        self.next_timer = self.compute_next_timer();
    }

    // ------------------------------------------------------------------------------------ streaks

    fn streak_event(&mut self, ev: &Event, event_id: Id) {
        let key = StreakKey::new(&ev.room_id, &ev.sender_id, ev.gift_id, &ev.group_id);
        self.streak_key_event(ev, event_id, &key);
    }

    fn streak_key_event(&mut self, ev: &Event, event_id: Id, key: &StreakKey) {
        let count = ev.repeat_count;
        // The key is hashed once: a new streak would otherwise hash it for the lookup, the insert and the close.
        let h = self.state.streaks.hash(key);
        let found = match self.state.streaks.get_mut_hashed(h, key) {
            None => Found::Absent,
            // The common case: a further event (or the end) of an open streak.
            Some(s) if s.open && (!ev.group_id.is_empty() || count >= s.count) => {
                if self.track_changes {
                    mark_streak_changed(&mut self.dirty, s, key);
                }
                if count > s.count {
                    s.count = count;
                }
                if ev.ts >= s.last_ts {
                    s.last_ts = ev.ts;
                    s.last_event_id = event_id.clone();
                }
                if ev.repeat_end {
                    let last_ts = s.last_ts;
                    self.close_streak(key, h, last_ts, &event_id);
                }
                return;
            }
            // Open, without a group id and a lower cumulative count: that can only mean a new streak began.
            Some(s) if s.open => Found::Restarted { last_ts: s.last_ts, last_event_id: s.last_event_id.clone() },
            Some(_) => Found::Closed,
        };
        match found {
            Found::Absent => {}
            Found::Restarted { last_ts, last_event_id } => {
                // without a group id the close forgets the key, so the new streak below is absent too
                self.close_streak(key, h, last_ts, &last_event_id);
            }
            Found::Closed => {
                let s = self.state.streaks.get_mut_hashed(h, key).expect("streak exists");
                if count > s.credited {
                    // A straggler with a higher count after a timeout (or the real end arriving late): credit the rest.
                    s.count = count;
                    s.last_ts = s.last_ts.max(ev.ts);
                    self.close_streak(key, h, ev.ts, &event_id);
                } else {
                    self.stats.streak_stragglers += 1;
                }
                self.mark_streak(key, h);
                return;
            }
        }
        let s = Streak { creator_id: Id::new(&ev.creator_id), region: self.streak_region(ev),
                         diamond_count: ev.diamond_count, count, credited: 0, last_ts: ev.ts,
                         last_event_id: event_id.clone(), open: true, dirty: self.track_changes };
        self.state.streaks.insert_absent_hashed(h, key.clone(), s);
        self.stats.streaks += 1;
        if self.track_changes {
            self.dirty.streaks.push(key.clone());
        }
        if ev.repeat_end {
            self.close_streak(key, h, ev.ts, &event_id);
        } else {
            let deadline = ev.ts + self.cfg.streak_timeout_ms;
            self.heap.push(Reverse((deadline, key.clone())));
            if deadline < self.next_timer {
                self.next_timer = deadline;
            }
        }
    }

    /// `h`: the key's hash in `state.streaks`.
    fn close_streak(&mut self, key: &StreakKey, h: u64, ts: i64, event_id: &Id) {
        let s = self.state.streaks.get_mut_hashed(h, key).expect("closing a known streak");
        let delta = s.count - s.credited;
        s.credited = s.count;
        s.open = false;
        if self.track_changes {
            mark_streak_changed(&mut self.dirty, s, key);
        }
        let last_ts = s.last_ts;
        if delta != 0 {
            let rate = self.cfg.regions.get(&s.region).expect("a streak's region is in the policy").milli_per_coin;
            let milli = s.diamond_count as i128 * delta as i128 * rate;
            // credit() needs all of self: copy the creator and the region out (no allocation)
            let (creator_id, region) = (s.creator_id.clone(), s.region.clone());
            creator_id.with_str(|cid| self.credit(cid, Priced::Streak { region: &region, milli }, ts, event_id));
        }
        if !key.has_group() {
            // no group id: nothing can tell a straggler from a new streak
            self.state.streaks.remove_hashed(h, key);
        } else {
            let bucket = floor_to(last_ts, RETENTION_BUCKET_MS);
            let keys = match self.state.streak_buckets.get_mut(&bucket) {
                Some(keys) => keys,
                None => {
                    self.next_timer = self.next_timer.min(bucket + RETENTION_BUCKET_MS + self.cfg.dedupe_horizon_ms);
                    if self.min_bucket.is_none_or(|m| bucket < m) {
                        self.min_bucket = Some(bucket);
                    }
                    self.state.streak_buckets.entry(bucket).or_default()
                }
            };
            keys.push(key.clone());
        }
    }

    // ------------------------------------------------------------------------------------ credits and notices

    /// Credit a gift or the rest of a streak to the creator (stream.engine.reference's _credit_region and _credit):
    /// the creator's own region is its account's when it has one with a region, else the credit's.
    fn credit(&mut self, creator_id: &str, priced: Priced<'_>, ts: i64, event_id: &Id) {
        let pane_ms = self.cfg.pane_ms;
        let cursor = self.state.close_cursor.unwrap_or(i64::MIN);
        let c = match self.state.creators.get_mut(creator_id) {
            Some(c) => c,
            None => {
                let account = self.state.accounts.get(creator_id).map(|a| self.cfg.brief(a));
                self.state.creators.entry(creator_id.to_owned()).or_insert_with(|| Creator { account, ..Creator::new("") })
            }
        };
        let account_region = c.account.as_ref().and_then(|a| a.region.as_deref());
        let (milli, threshold) = match priced {
            Priced::Gift { region, coins } => {
                if c.account.is_none() {
                    self.stats.gifts_without_account += 1;
                }
                let region = match (account_region, region) {
                    (Some(home), _) => home,
                    (None, "") => self.cfg.default_region.as_deref().expect("a gift without a region has the default region"),
                    (None, own) => own,
                };
                let rule = self.cfg.regions.get(region).expect("a credit's region is in the policy");
                if c.region != region {
                    c.region = region.to_owned(); // the creator's payout region moved: its threshold applies from now on
                }
                (coins * rule.milli_per_coin, rule.threshold(c.account.as_ref()))
            }
            Priced::Streak { region, milli } => {
                let home = account_region.unwrap_or(region);
                if c.region != home {
                    c.region = home.to_owned();
                }
                (milli, self.cfg.threshold(&c.region, c.account.as_ref()))
            }
        };
        if self.track_changes {
            mark_creator(&mut self.dirty, c, creator_id);
        }
        c.balance += milli;
        c.credited += milli;
        self.stats.credits += 1;
        self.stats.milli += milli;
        let pane = floor_to(ts, pane_ms);
        let c = if pane + pane_ms > cursor {
            Self::add_to_pane(&mut self.state.pane_creators, c, creator_id, pane, milli, self.track_changes);
            c
        } else {
            self.late_credit(creator_id, pane, milli, ts, event_id);
            self.state.creators.get_mut(creator_id).expect("credited creator")
        };
        if let Some(t) = threshold {
            if c.above && c.low < t {
                c.above = false; // re-armed (the creator is marked changed above)
            }
            if !c.above && c.balance >= t {
                notice(&mut self.outputs, &mut self.stats, c, creator_id, event_id.to_string(), ts);
            }
        }
    }

    /// Add a credit to a tally (the creator is already marked changed, so the tally's flag suffices).
    fn add_to_pane(pane_creators: &mut HashMap<i64, HashSet<String>>, c: &mut Creator, creator_id: &str, pane: i64,
                   milli: i128, track: bool) {
        match c.panes.get_mut(&pane) {
            Some(t) => {
                t.milli += milli;
                t.credits += 1;
                if track && !t.dirty {
                    t.dirty = true;
                    c.changed_panes.push(pane);
                }
            }
            None => {
                c.panes.insert(pane, Tally { milli, credits: 1, dirty: track });
                if track {
                    c.changed_panes.push(pane);
                }
                pane_creators.entry(pane).or_default().insert(creator_id.to_owned());
            }
        }
    }

    /// Some window holding ts is already closed: the balance still gets the money, the closed windows do
    /// not (their totals are final), and the gift is reported on gifts-late.
    fn late_credit(&mut self, creator_id: &str, pane: i64, milli: i128, ts: i64, event_id: &Id) {
        let cursor = self.state.close_cursor.unwrap_or(i64::MIN);
        let mut missed = Vec::new();
        for (i, w) in self.cfg.windows.iter().enumerate() {
            let last = floor_to(ts, w.hop_ms);
            let mut start = last - w.size_ms + w.hop_ms;
            while start <= last {
                if start + w.size_ms <= cursor {
                    missed.push((i, start, start + w.size_ms));
                }
                start += w.hop_ms;
            }
        }
        if self.pane_needed_until(pane) > cursor {
            let c = self.state.creators.get_mut(creator_id).expect("credited creator");
            Self::add_to_pane(&mut self.state.pane_creators, c, creator_id, pane, milli, self.track_changes);
        }
        self.stats.late += 1;
        self.outputs.push(Output::Late { event_id: event_id.to_string(), creator_id: creator_id.to_owned(), ts,
                                         watermark: self.state.watermark.unwrap_or(ts), milli, missed });
    }

    /// End of the last window that holds this pane.
    fn pane_needed_until(&self, pane: i64) -> i64 {
        self.cfg.windows.iter().map(|w| floor_to(pane, w.hop_ms) + w.size_ms).max().unwrap_or(pane)
    }

    // ------------------------------------------------------------------------------------ timers

    fn fire_timers(&mut self, wm: i64) {
        let timeout = self.cfg.streak_timeout_ms;
        while let Some(Reverse((deadline, _))) = self.heap.peek() {
            if *deadline > wm {
                break;
            }
            let Reverse((deadline, key)) = self.heap.pop().expect("peeked");
            let h = self.state.streaks.hash(&key);
            let Some(s) = self.state.streaks.get_hashed(h, &key) else { continue };
            if !s.open {
                continue;
            }
            let real = s.last_ts + timeout;
            if real != deadline {
                // the streak moved on since this entry was pushed
                self.heap.push(Reverse((real, key)));
                continue;
            }
            self.stats.streak_timeouts += 1;
            let (ts, last_event_id) = (s.last_ts, s.last_event_id.clone());
            self.close_streak(&key, h, ts, &last_event_id);
        }
        let target = wm - self.cfg.grace_ms;
        let pane_ms = self.cfg.pane_ms;
        while let Some(cursor) = self.state.close_cursor {
            if cursor + pane_ms > target {
                break;
            }
            self.state.close_cursor = Some(cursor + pane_ms);
            self.close_windows(cursor + pane_ms);
        }
        self.expire(wm);
        self.next_timer = self.compute_next_timer();
    }

    fn close_windows(&mut self, end: i64) {
        let pane_ms = self.cfg.pane_ms;
        for (wi, w) in self.cfg.windows.iter().enumerate() {
            if end.rem_euclid(w.hop_ms) != 0 {
                continue;
            }
            let start = end - w.size_ms;
            // Each creator once, in creator id order. With a million creators a window has hundreds of
            // thousands of holders (each listed once per pane it has): sorting them as strings chased a
            // pointer per comparison, so they are sorted by their first 16 bytes held inline (the same
            // order; ties go to the whole ids).
            let mut holders: Vec<(u128, &String)> = Vec::new();
            let mut pane = start;
            while pane < end {
                if let Some(h) = self.state.pane_creators.get(&pane) {
                    holders.reserve(h.len());
                    holders.extend(h.iter().map(|cid| (sort_prefix(cid.as_bytes()), cid)));
                }
                pane += pane_ms;
            }
            holders.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            holders.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            self.outputs.reserve(holders.len());
            for (_, creator_id) in holders {
                let (milli, credits) = self.state.creators[creator_id.as_str()].panes.sum(start, end);
                self.stats.window_totals += 1;
                self.outputs.push(Output::WindowTotal { creator_id: creator_id.clone(), window: wi, start, end,
                                                        milli, credits });
            }
        }
        let done: Vec<i64> = self.state.pane_creators.keys().copied()
            .filter(|&p| self.pane_needed_until(p) <= end).collect();
        for pane in done {
            for creator_id in self.state.pane_creators.remove(&pane).unwrap_or_default() {
                if let Some(c) = self.state.creators.get_mut(&creator_id) {
                    c.panes.remove(&pane);
                }
                if self.track_changes {
                    self.dirty.removed_panes.push((creator_id, pane));
                }
            }
        }
    }

    /// Forget event ids and closed streaks older than the dedupe horizon: events that old are now rejected
    /// as ts_too_old, so nothing they could match can be accepted again.
    fn expire(&mut self, wm: i64) {
        let cutoff = wm - self.cfg.dedupe_horizon_ms;
        match self.min_bucket {
            Some(m) if m + RETENTION_BUCKET_MS <= cutoff => {}
            _ => return, // even the oldest bucket is still inside the horizon
        }
        let old: Vec<i64> = self.state.seen_buckets.keys().copied()
            .filter(|b| b + RETENTION_BUCKET_MS <= cutoff).collect();
        for bucket in old {
            for id in self.state.seen_buckets.remove(&bucket).unwrap_or_default() {
                self.state.seen.remove(&id);
            }
            if self.track_changes {
                self.dirty.expired_buckets.insert(bucket);
                self.dirty.seen_buckets.remove(&bucket);
            }
        }
        let old: Vec<i64> = self.state.streak_buckets.keys().copied()
            .filter(|b| b + RETENTION_BUCKET_MS <= cutoff).collect();
        for bucket in old {
            for key in self.state.streak_buckets.remove(&bucket).unwrap_or_default() {
                // A straggler may have moved the streak to a newer bucket; it expires from that one.
                let h = self.state.streaks.hash(&key);
                let expired = matches!(self.state.streaks.get_hashed(h, &key),
                                       Some(s) if !s.open && floor_to(s.last_ts, RETENTION_BUCKET_MS) == bucket);
                if expired {
                    self.state.streaks.remove_hashed(h, &key);
                    self.mark_streak(&key, h);
                }
            }
        }
        self.min_bucket = self.smallest_bucket();
    }

    // ------------------------------------------------------------------------------------ payouts, end

    pub fn apply_payout(&mut self, payout_id: &str, creator_id: &str, milli: i128) -> PayoutResult {
        if self.state.payouts_seen.contains(payout_id) {
            self.stats.payout_duplicates += 1;
            return PayoutResult::Duplicate;
        }
        let Some(c) = self.state.creators.get_mut(creator_id) else { return PayoutResult::ExceedsBalance(0) };
        if milli > c.balance {
            return PayoutResult::ExceedsBalance(c.balance);
        }
        self.state.payouts_seen.insert(payout_id.to_owned());
        if self.track_changes {
            self.dirty.payouts.push(payout_id.to_owned());
            mark_creator(&mut self.dirty, c, creator_id);
        }
        c.balance -= milli;
        c.paid_out += milli;
        if c.balance < c.low {
            c.low = c.balance;
        }
        // re-armed when the lowest balance since the notice is under the threshold; with none, only `low` moves
        if c.above && self.cfg.threshold(&c.region, c.account.as_ref()).is_some_and(|t| c.low < t) {
            c.above = false;
        }
        self.stats.payouts += 1;
        PayoutResult::Applied
    }

    // ------------------------------------------------------------------------------------ accounts

    /// An account record replaces the creator's account (a closing keeps its region, method and age with status
    /// CLOSED); the creator's region follows it (balances already credited are not re-priced); and when the
    /// balance is now at or above an eligible account's threshold with no notice out, the notice goes now
    /// (stream.engine.reference.PartitionEngine._apply_account).
    pub fn apply_account(&mut self, creator_id: &str, record: AccountRecord<'_>) {
        let st = &mut self.state;
        let account = match record {
            AccountRecord::Open { region, status, payout_method, age, updated_ts } => Account {
                region: intern_region(&mut st.region_names, region), status: status.to_owned(),
                payout_method: payout_method.to_owned(), age, updated_ts, dirty: false },
            AccountRecord::Closed { ts } => match st.accounts.get(creator_id) {
                Some(prev) => Account { region: prev.region.clone(), status: CLOSED.to_owned(),
                                        payout_method: prev.payout_method.clone(), age: prev.age, updated_ts: ts,
                                        dirty: false },
                None => {
                    let region = st.creators.get(creator_id).map_or("", |c| c.region.as_str());
                    Account { region: intern_region(&mut st.region_names, region), status: CLOSED.to_owned(),
                              payout_method: String::new(), age: 0, updated_ts: ts, dirty: false }
                }
            },
        };
        let updated_ts = account.updated_ts;
        let brief = self.cfg.brief(&account);
        let track = self.track_changes;
        self.unknown_region_accounts += usize::from(self.cfg.unknown_region(&account)); // a closing keeps its region
        let listed = match st.accounts.get_mut(creator_id) {
            Some(a) => {
                self.unknown_region_accounts -= usize::from(self.cfg.unknown_region(a));
                let listed = a.dirty;
                *a = Account { dirty: listed || track, ..account };
                listed
            }
            None => {
                st.accounts.insert(creator_id.to_owned(), Account { dirty: track, ..account });
                false
            }
        };
        if track && !listed {
            self.dirty.accounts.push(creator_id.to_owned());
        }
        let Some(c) = st.creators.get_mut(creator_id) else { return };
        let region = brief.region.clone();
        c.account = Some(brief);
        if let Some(region) = region {
            if *c.region != *region {
                c.region = region.to_string();
                if track {
                    mark_creator(&mut self.dirty, c, creator_id);
                }
            }
        }
        if let Some(t) = self.cfg.threshold(&c.region, c.account.as_ref()) {
            if c.above && c.low < t {
                c.above = false; // re-armed: the balance was under this threshold since the notice
                if track {
                    mark_creator(&mut self.dirty, c, creator_id);
                }
            }
            if !c.above && c.balance >= t {
                if track {
                    mark_creator(&mut self.dirty, c, creator_id);
                }
                notice(&mut self.outputs, &mut self.stats, c, creator_id, String::new(), updated_ts);
            }
        }
    }

    /// The input is finished (end of a recorded session): time out every open streak and close every
    /// window, as if event time had moved far enough past the last event.
    pub fn end_of_stream(&mut self) {
        let Some(wm) = self.state.watermark else { return };
        let longest = self.cfg.windows.iter().map(|w| w.size_ms).fold(self.cfg.streak_timeout_ms, i64::max);
        let fin = wm + longest + self.cfg.grace_ms + self.cfg.pane_ms;
        self.state.watermark = Some(fin);
        self.fire_timers(fin);
    }
}

/// The engine without Python: `GIFTSTREAM_BENCH_RECORDS=FILE cargo test --release bench_records -- --ignored
/// --nocapture` reads a session (JSONL, e.g. one load.bench_state --cache wrote), then times decoding alone
/// and decoding plus the engine (the default policy's settings, one partition, no change tracking),
/// batches of 20,000 with the outputs dropped after each: what the engine costs before lib.rs turns its
/// outputs into Python objects. Records the native decoder leaves to Python are skipped.
#[cfg(test)]
mod bench {
    use super::*;
    use std::hint::black_box;
    use std::time::Instant;

    fn default_policy() -> Settings {
        let region = |name: &str, milli_per_coin, threshold: Option<i128>| {
            (name.to_owned(), RegionRule { milli_per_coin, thresholds: vec![threshold.map(|t| t / 2), threshold],
                                           missing: threshold, min_age: 18 })
        };
        let regions = vec![region("US", 1000, Some(2_000_000)), region("GB", 1000, Some(2_000_000)),
                           region("DE", 1000, Some(4_000_000)), region("FR", 1000, Some(4_000_000)),
                           region("BR", 1000, Some(1_000_000)), region("MX", 1000, Some(1_000_000)),
                           region("ID", 500, Some(200_000)), region("JP", 1000, Some(10_000_000)),
                           region("KR", 1000, Some(20_000_000)), region("TR", 1000, None)];
        Settings { regions: Regions::new(regions),
                   windows: vec![Window { size_ms: 3_600_000, hop_ms: 3_600_000 },
                                 Window { size_ms: 86_400_000, hop_ms: 86_400_000 },
                                 Window { size_ms: 3_600_000, hop_ms: 300_000 }],
                   pane_ms: 300_000, grace_ms: 300_000, streak_timeout_ms: 30_000, dedupe_horizon_ms: 7_200_000,
                   max_future_ms: 3_600_000, partition: 0, partitions: 1,
                   statuses: vec!["verified".to_owned(), "standard".to_owned()], default_region: Some("US".to_owned()) }
    }

    #[test]
    #[ignore]
    fn bench_records() {
        let Ok(path) = std::env::var("GIFTSTREAM_BENCH_RECORDS") else {
            eprintln!("GIFTSTREAM_BENCH_RECORDS not set: nothing to do");
            return;
        };
        let data = std::fs::read(&path).expect("reading the session");
        let records: Vec<&[u8]> = data.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let n = records.len() as f64;
        let (max_bytes, max_depth) = (65_536, 32);
        let t = Instant::now();
        let mut decoded = 0usize;
        for r in &records {
            if let Some(ev) = crate::decode::decode_fast(r, max_bytes, max_depth) {
                black_box(&ev);
                decoded += 1;
            }
        }
        let t_dec = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut e = Engine::new(default_policy(), State::default(), false);
        let (mut totals, mut notices, mut late, mut rejects) = (0usize, 0usize, 0usize, 0usize);
        let mut t_drop = 0.0;
        for batch in records.chunks(20_000) {
            for (i, r) in batch.iter().enumerate() {
                if let Some(ev) = crate::decode::decode_fast(r, max_bytes, max_depth) {
                    let id = e.prepare(&ev);
                    e.process_prepared(&ev, i, id);
                }
            }
            let outputs = std::mem::take(&mut e.outputs);
            for o in &outputs {
                match o {
                    Output::WindowTotal { .. } => totals += 1,
                    Output::Notice { .. } => notices += 1,
                    Output::Late { .. } => late += 1,
                    Output::Reject { .. } => rejects += 1,
                }
            }
            let td = Instant::now();
            drop(outputs);
            t_drop += td.elapsed().as_secs_f64();
        }
        let t_eng = t.elapsed().as_secs_f64();
        let st = &e.state;
        println!("{} records, {decoded} decoded natively", records.len());
        println!("decode alone      {:>10.0} ev/s  {:.2} s", n / t_dec, t_dec);
        println!("decode + engine   {:>10.0} ev/s  {:.2} s  ({:.2} µs/event beyond decoding; dropping outputs {:.2} s)",
                 n / t_eng, t_eng, 1e6 * (t_eng - t_dec) / n, t_drop);
        println!("outputs: {totals} window totals, {notices} notices, {late} late, {rejects} rejects");
        println!("held: {} creators, {} pane tallies, {} streaks, {} dedupe ids", st.creators.len(),
                 st.creators.values().map(|c| c.panes.len()).sum::<usize>(), st.streaks.len(), st.seen.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_follows_the_account() {
        // statuses: verified, standard, restricted (not eligible: no threshold); the missing status is standard
        let rule = RegionRule { milli_per_coin: 1000, thresholds: vec![Some(1), Some(2), None], missing: Some(2),
                                min_age: 19 };
        let brief = |status: Option<u16>, age: i32| AccountBrief { region: None, status, age };
        assert_eq!(rule.threshold(None), Some(2));
        assert_eq!(rule.threshold(Some(&brief(Some(0), 19))), Some(1));
        assert_eq!(rule.threshold(Some(&brief(Some(0), 18))), None); // too young
        assert_eq!(rule.threshold(Some(&brief(Some(2), 40))), None); // not eligible
        assert_eq!(rule.threshold(Some(&brief(None, 40))), None); // closed
        assert_eq!(rule.threshold(Some(&brief(Some(7), 40))), None); // a status the policy no longer has
        let cfg = Settings { regions: Regions::default(), windows: Vec::new(), pane_ms: 1, grace_ms: 0,
                             streak_timeout_ms: 0, dedupe_horizon_ms: 0, max_future_ms: 0, partition: 0, partitions: 1,
                             statuses: vec!["verified".into(), "standard".into()], default_region: None };
        let account = |status: &str, age: i64| Account { region: Arc::from(""), status: status.into(),
                                                        payout_method: String::new(), age, updated_ts: 0, dirty: false };
        let b = cfg.brief(&account("standard", i64::MAX));
        assert_eq!((b.region, b.status, b.age), (None, Some(1), i32::MAX));
        assert_eq!(cfg.brief(&account(CLOSED, i64::MIN)).status, None);
        assert_eq!(cfg.brief(&account(CLOSED, i64::MIN)).age, i32::MIN);
        assert_eq!(std::mem::size_of::<Option<AccountBrief>>(), 24); // in every creator
    }

    #[test]
    fn panes_behave_like_an_ordered_map() {
        let mut panes = Panes::default();
        let mut reference = std::collections::BTreeMap::new();
        let tally = |m: i128| Tally { milli: m, credits: 1, dirty: false };
        for i in 0..2_000i64 {
            let p = (i * 7_919) % 97 * 300 - 3_000; // in and out of order, negative too
            assert_eq!(panes.insert(p, tally(i.into())).map(|t| t.milli), reference.insert(p, i).map(i128::from));
            if i % 5 == 0 {
                let q = (i * 31) % 97 * 300 - 3_000;
                assert_eq!(panes.remove(&q).map(|t| t.milli), reference.remove(&q).map(i128::from));
            }
            assert_eq!(panes.len(), reference.len());
        }
        assert!(panes.iter().map(|(p, t)| (*p, t.milli)).eq(reference.iter().map(|(p, m)| (*p, i128::from(*m)))));
        for q in [-3_300, -3_000, 0, 150, 300, 28_800, 30_000] {
            assert_eq!(panes.contains_key(&q), reference.contains_key(&q));
            assert_eq!(panes.get(&q).map(|t| t.milli), reference.get(&q).map(|m| i128::from(*m)));
            let want: i128 = reference.range(q..q + 3_600).map(|(_, m)| i128::from(*m)).sum();
            assert_eq!(panes.sum(q, q + 3_600).0, want);
        }
        let rebuilt: Panes = reference.iter().rev().map(|(p, m)| (*p, tally((*m).into()))).collect();
        assert!(rebuilt.iter().map(|(p, _)| *p).eq(reference.keys().copied()));
    }

    #[test]
    fn prefix_then_string_orders_as_strings() {
        let ids = ["", "\0", "a", "a\0", "a\0\0", "ab", "7000000000000000000", "7000000000000000001",
                   "700000000000000000", "70000000000000000000", "6999999999999999999", "1234567890123456",
                   "1234567890123456\0", "12345678901234560", "1234567890123457", "é", "zz", "z\u{1f}"];
        let mut by_prefix: Vec<&str> = ids.to_vec();
        by_prefix.sort_unstable_by(|a, b| sort_prefix(a.as_bytes()).cmp(&sort_prefix(b.as_bytes())).then_with(|| a.cmp(b)));
        let mut by_string = ids.to_vec();
        by_string.sort_unstable();
        assert_eq!(by_prefix, by_string);
        for a in ids {
            for b in ids {
                if sort_prefix(a.as_bytes()) != sort_prefix(b.as_bytes()) {
                    assert_eq!(sort_prefix(a.as_bytes()).cmp(&sort_prefix(b.as_bytes())), a.cmp(b), "{a:?} vs {b:?}");
                }
            }
        }
    }
}
