//! stream._native: the compiled engine behind stream.engine.native.NativePartitionEngine.
//!
//! This file is the Python edge only: it reads the batch (bytes objects, no copies), decodes each record
//! with decode.rs (records it is not sure about go to the Python decoder, the single authority on reject
//! reasons), runs engine.rs, and turns the outputs, changes and state into plain Python values. Reject
//! reasons and details and notice money come from Python so their wording and arithmetic exist once: the
//! engine's own rejects are stream.engine.model's templates (`RejectTexts`), filled with parameters here.

mod batch_builder;
use batch_builder::RecordBatchBuilder;
mod changelog;
mod decode;
mod engine;
mod ids;
mod sharded;
mod msgpack;
mod staged;
mod murmur2;
mod record_batch;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write as _;

// foldhash: fast on short string keys and seeded per process (ids come from clients: no fixed-seed hash).
use foldhash::{HashMap, HashSet};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use decode::{decode_fast, Event, EventSpans};
use ids::{Id, StreakKey};
use sharded::ChunkedVec;
use staged::Staged;

// Most of the engine's allocations are small strings (ids, keys) that live briefly or long; mimalloc
// handles that mix much better than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use engine::{Account, AccountRecord, Creator, Engine, Output, PayoutResult, PreparedId, Regions, Reject, RegionRule,
             Settings, State, Streak, Tally, Window};

/// mimalloc asks the kernel for transparent huge pages; on the machines measured, a restore, which touches all
/// of its state for the first time, spends most of its kernel time zeroing them, and small pages cost less per
/// byte (docs/benchmarks.md, "Huge pages off"). So the process opts out unless MIMALLOC_ALLOW_THP says yes (1, true,
/// on or yes). The setting is the process's and its children inherit it, so it is set either way.
fn set_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        let allow = std::env::var("MIMALLOC_ALLOW_THP")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes"));
        // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, libc::c_ulong::from(!allow), 0, 0, 0) };
    }
}

/// A partition engine. Built by stream.engine.native from the policy and the Python it calls back
/// (stream.engine.reference.EngineHooks: decode fallback, dead letters, notices), checked here when it is built.
#[pyclass(module = "stream._native")]
struct Core {
    engine: Engine,
    hooks: Hooks,
    max_record_bytes: usize,
    max_json_depth: usize, // stream.engine.model.MAX_JSON_DEPTH
    window_names: Vec<Py<PyAny>>,
    version: Py<PyAny>,
    window_total_cls: Py<PyAny>,
    late_cls: Py<PyAny>,
    missed_cls: Py<PyAny>,
    reject_texts: RejectTexts,
    staged: Staged, // gifts decoded for their merge time, for `process` to take (staged.rs)
}

/// The wording of the engine's rejects: stream.engine.model.EVENT_REJECTIONS, in its order (model.Rejection
/// objects: `of(**parameters)` gives the dead letter's reason and detail). Called only for a rejected record.
struct RejectTexts {
    wrong_partition: Py<PyAny>,
    unknown_region: Py<PyAny>,
    too_far_future: Py<PyAny>,
    too_old: Py<PyAny>,
    no_region: Py<PyAny>,
    account_region: Py<PyAny>,
}

/// (name, milli_diamonds per coin, min_age, the threshold of each account status in `statuses` order)
type RegionArg = (String, i128, i64, Vec<Option<i128>>);
type RejectsArg = (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>);
const OUTPUTS_KEPT: usize = 1 << 16; // outputs a batch's buffer keeps room for between batches
type WindowArg = (String, i64, i64);

/// The Python callbacks of a Core, looked up once: each must be a callable attribute of the hooks object.
struct Hooks {
    decode_one: Py<PyAny>,  // (raw) -> GiftEvent | (reason, detail)
    reject: Py<PyAny>,      // (reason, detail, raw, offset, out)
    emit_notice: Py<PyAny>, // (out, creator_id, region, crossing_seq, balance, event_id, ts)
}

impl Hooks {
    const NAMES: [&'static str; 3] = ["decode_one", "reject", "emit_notice"];

    /// The hooks object's callables; a TypeError naming the first one it lacks.
    fn of(hooks: &Bound<'_, PyAny>) -> PyResult<Self> {
        let get = |name: &str| -> PyResult<Py<PyAny>> {
            match hooks.getattr(name) {
                Ok(f) if f.is_callable() => Ok(f.unbind()),
                _ => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "Core hooks: {} has no callable `{name}` (a hooks object needs {})",
                    hooks.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "the object".to_owned()),
                    Self::NAMES.join(", ")))),
            }
        };
        Ok(Hooks { decode_one: get(Self::NAMES[0])?, reject: get(Self::NAMES[1])?, emit_notice: get(Self::NAMES[2])? })
    }
}

enum Decoded<'a> {
    Event(Event<'a>),
    Bad(Reject),
}

/// One record: the native decoder's event when it is certain, else the Python decoder's verdict (an event
/// or a reject with msgspec's reason and wording).
fn decode_record<'a>(bytes: &'a Bound<'_, PyBytes>, max_bytes: usize, max_depth: usize, hooks: &Hooks)
                     -> PyResult<Decoded<'a>> {
    if let Some(ev) = decode_fast(bytes.as_bytes(), max_bytes, max_depth) {
        return Ok(Decoded::Event(ev));
    }
    let decoded = hooks.decode_one.bind(bytes.py()).call1((bytes,))?;
    if let Ok(t) = decoded.cast::<PyTuple>() {
        let (reason, detail): (String, String) = t.extract()?;
        return Ok(Decoded::Bad(Reject::Decode { reason, detail }));
    }
    Ok(Decoded::Event(owned_event(&decoded)?))
}

fn owned_event(obj: &Bound<'_, PyAny>) -> PyResult<Event<'static>> {
    let s = |name: &str| -> PyResult<Cow<'static, str>> { Ok(Cow::Owned(obj.getattr(name)?.extract::<String>()?)) };
    let i = |name: &str| -> PyResult<i64> { obj.getattr(name)?.extract::<i64>() };
    Ok(Event {
        event_id: s("event_id")?, room_id: s("room_id")?, creator_id: s("creator_id")?, sender_id: s("sender_id")?,
        gift_id: i("gift_id")?, gift_type: i("gift_type")?, diamond_count: i("diamond_count")?,
        repeat_count: i("repeat_count")?, repeat_end: obj.getattr("repeat_end")?.extract::<bool>()?, ts: i("ts")?,
        region: s("region")?, group_id: s("group_id")?,
    })
}

#[pymethods]
impl Core {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (regions, windows, pane_ms, grace_ms, streak_timeout_ms, dedupe_horizon_ms, max_future_ms,
                        max_record_bytes, version, classes, track_changes=true, *, statuses, missing_status,
                        default_region, max_json_depth, partition, partitions, rejects, hooks))]
    fn new(py: Python<'_>, regions: Vec<RegionArg>, windows: Vec<WindowArg>, pane_ms: i64, grace_ms: i64,
           streak_timeout_ms: i64, dedupe_horizon_ms: i64, max_future_ms: i64, max_record_bytes: usize,
           version: String, classes: (Py<PyAny>, Py<PyAny>, Py<PyAny>), track_changes: bool,
           statuses: Vec<String>, missing_status: String, default_region: Option<String>,
           max_json_depth: usize, partition: u32, partitions: u32, rejects: RejectsArg,
           hooks: &Bound<'_, PyAny>) -> PyResult<Self> {
        let hooks = Hooks::of(hooks)?;
        let invalid = |text: &str| Err(pyo3::exceptions::PyValueError::new_err(text.to_owned()));
        if pane_ms <= 0 || windows.iter().any(|w| w.1 <= 0 || w.2 <= 0) {
            return invalid("pane and window sizes must be positive");
        }
        if partition >= partitions {
            return invalid("partition must be below partitions");
        }
        if statuses.len() > usize::from(u16::MAX) || statuses.iter().any(|s| s == engine::CLOSED) {
            return invalid("statuses: at most 65535, and not the closed status (a closed account's, reserved)");
        }
        let Some(missing) = statuses.iter().position(|s| *s == missing_status) else {
            return invalid("missing_status must be one of statuses");
        };
        if regions.iter().any(|r| r.3.len() != statuses.len()) {
            return invalid("each region needs one threshold per status");
        }
        if default_region.as_ref().is_some_and(|d| !regions.iter().any(|r| r.0 == *d)) {
            return invalid("default_region must be one of the regions");
        }
        let window_names = windows.iter().map(|w| pyo3::types::PyString::new(py, &w.0).into_any().unbind()).collect();
        let cfg = Settings {
            regions: Regions::new(regions.into_iter()
                .map(|(name, rate, min_age, thresholds)| {
                    (name, RegionRule { milli_per_coin: rate, missing: thresholds[missing], thresholds, min_age })
                }).collect()),
            windows: windows.into_iter().map(|(_, size_ms, hop_ms)| Window { size_ms, hop_ms }).collect(),
            pane_ms, grace_ms, streak_timeout_ms, dedupe_horizon_ms, max_future_ms, partition, partitions,
            statuses, default_region,
        };
        Ok(Core { engine: Engine::new(cfg, State::default(), track_changes), hooks, max_record_bytes, max_json_depth,
                  window_names,
                  version: version.into_pyobject(py)?.into_any().unbind(), window_total_cls: classes.0,
                  late_cls: classes.1, missed_cls: classes.2,
                  reject_texts: RejectTexts { wrong_partition: rejects.0, unknown_region: rejects.1,
                                              too_far_future: rejects.2, too_old: rejects.3,
                                              no_region: rejects.4, account_region: rejects.5 },
                  staged: Staged::default() })
    }

    /// The merge times of this partition's gift records values[lo:] (stream.engine.order.gift_times); what was
    /// decoded of them is kept for `process`, which takes it when they come next (staged.rs).
    fn gift_times(&mut self, values: &Bound<'_, PyList>, lo: usize, fallback: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
        let depth = self.max_json_depth;
        merge_times(values, lo, depth, fallback, Some(self))
    }

    /// How many records are staged (staged.rs): for tests.
    fn staged_count(&self) -> usize {
        self.staged.len()
    }

    /// One batch of raw records of this partition, in offset order.
    #[pyo3(signature = (raws, offsets, out))]
    fn process(slf: &Bound<'_, Self>, py: Python<'_>, raws: &Bound<'_, PyList>, offsets: Option<&Bound<'_, PyAny>>,
               out: &Bound<'_, PyAny>) -> PyResult<()> {
        {
            let mut core = slf.borrow_mut();
            let me = &mut *core;
            let (partitions, partition) = (me.engine.cfg.partitions, me.engine.cfg.partition);
            let limits = (me.max_record_bytes, me.max_json_depth);
            decode_and_process(&mut [&mut me.engine], &me.hooks, limits, raws, Some(&mut me.staged), |ev| {
                engine::owned_by(partitions, partition, &ev.creator_id).map(|()| 0)
            })?;
            me.engine.stats.events_in += raws.len() as u64;
        }
        Self::flush(slf, py, Some(raws), offsets, out, true)
    }

    /// A payout: "applied", "duplicate", or the balance it exceeds (an int).
    fn apply_payout(slf: &Bound<'_, Self>, py: Python<'_>, payout_id: &str, creator_id: &str, milli: i128,
                    out: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let applied = slf.borrow_mut().engine.apply_payout(payout_id, creator_id, milli);
        let result = match applied {
            PayoutResult::Applied => "applied".into_pyobject(py)?.into_any().unbind(),
            PayoutResult::Duplicate => "duplicate".into_pyobject(py)?.into_any().unbind(),
            PayoutResult::ExceedsBalance(b) => b.into_pyobject(py)?.into_any().unbind(),
        };
        Self::flush(slf, py, None, None, out, false)?;
        Ok(result)
    }

    /// A valid creator-accounts record (stream.engine.reference.EngineEdges.apply_accounts checked it): the
    /// creator's account now; a notice when it makes the balance reach an eligible threshold.
    #[allow(clippy::too_many_arguments)]
    fn apply_account(slf: &Bound<'_, Self>, py: Python<'_>, creator_id: &str, region: &str, account_status: &str,
                     payout_method: &str, age: i64, updated_ts: i64, out: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.borrow_mut().engine.apply_account(creator_id, AccountRecord::Open { region, status: account_status,
                                                                                payout_method, age, updated_ts });
        Self::flush(slf, py, None, None, out, false)
    }

    /// A tombstone of creator-accounts: the creator's account is closed as of ts.
    fn close_account(slf: &Bound<'_, Self>, py: Python<'_>, creator_id: &str, ts: i64, out: &Bound<'_, PyAny>)
                     -> PyResult<()> {
        slf.borrow_mut().engine.apply_account(creator_id, AccountRecord::Closed { ts });
        Self::flush(slf, py, None, None, out, false)
    }

    /// One creator's account (region, account_status, payout_method, age, updated_ts), or None.
    fn account(&self, creator_id: &str) -> Option<AccountTuple> {
        self.engine.state.accounts.get(creator_id).map(account_tuple)
    }

    fn end_of_stream(slf: &Bound<'_, Self>, py: Python<'_>, out: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.borrow_mut().engine.end_of_stream();
        Self::flush(slf, py, None, None, out, false)
    }

    /// The changelog records of the keys changed since the last call (and forget them), encoded like
    /// stream.state.changelog.encode_changes: (records, new dedupe chunks [(bucket, start)], expired buckets).
    fn take_changelog<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let records = PyList::empty(py);
        let (chunks, expired) = self.encode_changelog(&mut |key, value| {
            records.append((PyBytes::new(py, key), value.map(|v| PyBytes::new(py, v))))
        })?;
        (records, chunks, expired).into_pyobject(py)
    }

    /// take_changelog's records written straight into Kafka record batches (RecordBatchBuilder, at most
    /// max_bytes each) for producer.send_batch: (batches, new dedupe chunks, expired buckets).
    fn take_changelog_batches<'py>(&mut self, py: Python<'py>, max_bytes: usize, transactional: bool,
                                   timestamp_ms: i64) -> PyResult<Bound<'py, PyTuple>> {
        let mut batches = vec![RecordBatchBuilder::create(max_bytes, transactional, timestamp_ms)];
        let (chunks, expired) = self.encode_changelog(&mut |key, value| {
            let last = batches.last_mut().expect("one batch at least");
            if !last.add_record(Some(key), value) {
                let mut next = RecordBatchBuilder::create(max_bytes, transactional, timestamp_ms);
                next.add_record(Some(key), value);
                batches.push(next);
            }
            Ok(())
        })?;
        let batches = batches.into_iter().filter(|b| !b.is_empty()).map(|b| Py::new(py, b))
            .collect::<PyResult<Vec<_>>>()?;
        (batches, chunks, expired).into_pyobject(py)
    }

    /// Drop the changed-key bookkeeping (offline replays have no changelog to write it to).
    fn clear_changes(&mut self) {
        self.engine.take_changed();
    }

    /// The whole state as plain values (see stream.engine.native for the layout).
    fn export_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let st = &self.engine.state;
        let creators = PyList::empty(py);
        for (cid, c) in &st.creators {
            let panes: Vec<(i64, i128, i64)> = c.panes.iter().map(|(p, t)| (*p, t.milli, t.credits)).collect();
            creators.append((cid, creator_tuple(c), panes))?;
        }
        let streaks = PyList::empty(py);
        for (key, s) in st.streaks.iter() {
            streaks.append((key.to_string(), streak_tuple(s)))?;
        }
        let seen_buckets = PyList::empty(py);
        for (bucket, ids) in &st.seen_buckets {
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            seen_buckets.append((*bucket, ids))?;
        }
        let streak_buckets: Vec<(i64, Vec<String>)> = st.streak_buckets.iter()
            .map(|(b, keys)| (*b, keys.iter().map(|k| k.to_string()).collect())).collect();
        let payouts: Vec<&String> = st.payouts_seen.iter().collect();
        let accounts: Vec<(&String, AccountTuple)> = st.accounts.iter().map(|(cid, a)| (cid, account_tuple(a))).collect();
        let pane_creators: Vec<(i64, Vec<&String>)> =
            st.pane_creators.iter().map(|(p, h)| (*p, h.iter().collect())).collect();
        (st.watermark, st.close_cursor, creators, streaks, seen_buckets, streak_buckets, payouts, accounts,
         pane_creators).into_pyobject(py)
    }

    /// Replace the state with one given as export_state's plain values (the layout Python's
    /// NativePartitionEngine._load writes: one argument per part of PartitionState).
    #[allow(clippy::too_many_arguments)]
    fn load_state(&mut self, watermark: Option<i64>, close_cursor: Option<i64>,
                  creators: Vec<(String, CreatorTuple, PaneTallies)>, streaks: Vec<(String, StreakTuple)>,
                  seen_buckets: Vec<(i64, Vec<String>)>, streak_buckets: Vec<(i64, Vec<String>)>,
                  payouts: Vec<String>, accounts: Vec<(String, AccountTuple)>, pane_creators: Vec<(i64, Vec<String>)>) {
        let mut st = State { watermark, close_cursor, ..Default::default() };
        for (cid, (region, balance, credited, paid_out, crossings, above, low), panes) in creators {
            let panes = panes.into_iter().map(|(p, milli, credits)| (p, Tally { milli, credits, dirty: false })).collect();
            st.creators.insert(cid, Creator { region, balance, credited, paid_out, crossings, above, low, panes,
                                              dirty: false, changed_panes: Vec::new(), account: None });
        }
        for (key, (creator_id, region, diamond_count, count, credited, last_ts, last_event_id, open)) in streaks {
            let (creator_id, region, last_event_id) = (Id::new(&creator_id), st.region_name(&region), Id::new(&last_event_id));
            st.streaks.insert(StreakKey::parse(&key), Streak { creator_id, region, diamond_count, count, credited, last_ts, last_event_id,
                                            open, dirty: false });
        }
        for (bucket, ids) in seen_buckets {
            let ids: ChunkedVec<Id> = ids.iter().map(|id| Id::new(id)).collect();
            for id in ids.iter() {
                st.seen.insert_new(id.clone());
            }
            st.seen_buckets.insert(bucket, ids);
        }
        st.streak_buckets = streak_buckets.into_iter()
            .map(|(b, keys)| (b, keys.iter().map(|k| StreakKey::parse(k)).collect())).collect();
        st.payouts_seen = payouts.into_iter().collect();
        for (cid, (region, status, payout_method, age, updated_ts)) in accounts {
            let region = st.region_name(&region);
            st.accounts.insert(cid, Account { region, status, payout_method, age, updated_ts, dirty: false });
        }
        st.pane_creators = pane_creators.into_iter().map(|(p, h)| (p, h.into_iter().collect::<HashSet<_>>()))
            .collect::<HashMap<_, _>>();
        let cfg = std::mem::replace(&mut self.engine.cfg, empty_settings());
        self.engine = Engine::new(cfg, st, self.engine.track_changes);
    }

    /// Take the state a ChangelogRestore has rebuilt (it is empty afterwards) and run on it. Returns each
    /// dedupe bucket's chunk starts [(bucket, [start, ...])] for the changelog writer. The rebuilding of the
    /// derived parts runs without the GIL (the caller runs this in a thread, so the event loop goes on).
    fn adopt(&mut self, py: Python<'_>, restore: &mut ChangelogRestore) -> PyResult<Vec<(i64, Vec<usize>)>> {
        let taken = std::mem::take(&mut restore.inner);
        let cfg = std::mem::replace(&mut self.engine.cfg, empty_settings());
        let track = self.engine.track_changes;
        let built = py.detach(move || taken.finish().map(|(st, starts)| (Engine::new(cfg, st, track), starts)));
        match built {
            Ok((engine, starts)) => {
                self.engine = engine;
                Ok(starts)
            }
            Err(e) => Err(pyo3::exceptions::PyValueError::new_err(e)),
        }
    }

    /// The whole state as a checkpoint's body (stream.state.checkpoint): changelog records, the dedupe ids cut at
    /// `chunks` (the changelog writer's chunk starts per bucket). Written without the GIL: the caller runs it in
    /// a thread and does not run this engine meanwhile.
    fn snapshot<'py>(&self, py: Python<'py>, chunks: HashMap<i64, Vec<usize>>) -> PyResult<Bound<'py, PyBytes>> {
        let state = &self.engine.state;
        let body = py.detach(|| changelog::snapshot(state, &chunks))
            .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("a state value does not fit in 64 bits"))?;
        Ok(PyBytes::new(py, &body))
    }

    /// One creator's ((region, balance, credited, paid_out, crossings, above, low), [(pane, milli, credits)]) or None.
    fn creator(&self, creator_id: &str) -> Option<(CreatorTuple, PaneTallies)> {
        self.engine.state.creators.get(creator_id)
            .map(|c| (creator_tuple(c), c.panes.iter().map(|(p, t)| (*p, t.milli, t.credits)).collect()))
    }

    /// What the state needs the policy to price (stream.engine.protocol.PricedIn): the regions of the open streaks,
    /// and the (region, payout method) of every account that is not closed, each once, sorted.
    fn priced_in(&self) -> (Vec<String>, Vec<(String, String)>) {
        let st = &self.engine.state;
        let regions: std::collections::BTreeSet<String> =
            st.streaks.values().filter(|s| s.open).map(|s| s.region.to_string()).collect();
        let methods: std::collections::BTreeSet<(String, String)> = st.accounts.values()
            .filter(|a| a.status != engine::CLOSED)
            .map(|a| (a.region.to_string(), a.payout_method.clone())).collect();
        (regions.into_iter().collect(), methods.into_iter().collect())
    }

    /// (creators, streaks, dedupe ids, pane tallies, open streaks, summed balance, accounts) held now.
    fn sizes(&self) -> (usize, usize, usize, usize, usize, i128, usize) {
        let st = &self.engine.state;
        (st.creators.len(), st.streaks.len(), st.seen.len(), st.creators.values().map(|c| c.panes.len()).sum(),
         st.streaks.values().filter(|s| s.open).count(), st.creators.values().map(|c| c.balance).sum(),
         st.accounts.len())
    }

    /// (creators, streaks, dedupe ids): the tables' lengths, without walking them (the worker's gauges).
    fn counts(&self) -> (usize, usize, usize) {
        let st = &self.engine.state;
        (st.creators.len(), st.streaks.len(), st.seen.len())
    }

    fn watermark(&self) -> Option<i64> {
        self.engine.state.watermark
    }

    fn close_cursor(&self) -> Option<i64> {
        self.engine.state.close_cursor
    }
}

type CreatorTuple = (String, i128, i128, i128, i64, bool, i128); // stream.state.tables.CREATOR_FIELDS
type PaneTallies = Vec<(i64, i128, i64)>; // (pane start, milli_diamonds, credits)
/// Receives each changelog record: key, value (None for a tombstone).
type RecordSink<'s> = &'s mut dyn FnMut(&[u8], Option<&[u8]>) -> PyResult<()>;
type StreakTuple = (String, String, i64, i64, i64, i64, String, bool);
type AccountTuple = (String, String, String, i64, i64); // (region, account_status, payout_method, age, updated_ts)

fn account_tuple(a: &Account) -> AccountTuple {
    (a.region.to_string(), a.status.clone(), a.payout_method.clone(), a.age, a.updated_ts)
}

fn creator_tuple(c: &Creator) -> CreatorTuple {
    (c.region.clone(), c.balance, c.credited, c.paid_out, c.crossings, c.above, c.low)
}

fn streak_tuple(s: &Streak) -> StreakTuple {
    (s.creator_id.to_string(), s.region.to_string(), s.diamond_count, s.count, s.credited, s.last_ts, s.last_event_id.to_string(),
     s.open)
}

/// (reason, detail) of one of the engine's rejects: its model.Rejection filled with the parameters.
fn reject_text<'py>(rejection: &Py<PyAny>, params: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyTuple>> {
    Ok(rejection.bind(params.py()).call_method("of", (), Some(params))?.cast_into::<PyTuple>()?)
}

fn empty_settings() -> Settings {
    Settings { regions: Regions::default(), windows: Vec::new(), pane_ms: 1, grace_ms: 0, streak_timeout_ms: 0,
               dedupe_horizon_ms: 0, max_future_ms: 0, partition: 0, partitions: 1, statuses: Vec::new(),
               default_region: None }
}

type ChunkList = Vec<(i64, usize)>;

impl Core {
    /// The changed keys' changelog records, each handed to `put` (key, value or None for a tombstone);
    /// returns the new dedupe chunks and the expired buckets.
    fn encode_changelog(&mut self, put: RecordSink<'_>)
                        -> PyResult<(ChunkList, Vec<i64>)> {
        let changed = self.engine.take_changed();
        let st = &self.engine.state;
        let too_big = || pyo3::exceptions::PyOverflowError::new_err("a changelog value does not fit in 64 bits");
        put(changelog::CURSOR_KEY, Some(&changelog::cursor_value(st.watermark, st.close_cursor)))?;
        let mut key = Vec::with_capacity(64);
        for cid in &changed.creators {
            changelog::key_start(&mut key, changelog::CREATOR).extend_from_slice(cid.as_bytes());
            match st.creators.get(cid) {
                Some(c) => put(&key, Some(&changelog::creator_value(c).map_err(|_| too_big())?))?,
                None => put(&key, None)?,
            }
        }
        for (cid, pane) in &changed.panes {
            let key = changelog::pane_key(cid, *pane);
            match st.creators.get(cid).and_then(|c| c.panes.get(pane)) {
                Some(t) => put(&key, Some(&changelog::tally_value(t).map_err(|_| too_big())?))?,
                None => put(&key, None)?,
            }
        }
        for k in &changed.streaks {
            write!(changelog::key_start(&mut key, changelog::STREAK), "{k}").expect("writing to a Vec");
            match st.streaks.get(k) {
                Some(s) => put(&key, Some(&changelog::streak_value(s)))?,
                None => put(&key, None)?,
            }
        }
        let mut chunks = Vec::new();
        for (bucket, start) in &changed.seen_buckets {
            if let Some(ids) = st.seen_buckets.get(bucket) {
                if ids.len() > *start {
                    let new_ids: Vec<&Id> = ids.iter_from(*start).collect();
                    changelog::dedupe_key(&mut key, *bucket, *start);
                    put(&key, Some(&changelog::ids_value(new_ids.into_iter())))?;
                    chunks.push((*bucket, *start));
                }
            }
        }
        for pid in &changed.payouts {
            changelog::key_start(&mut key, changelog::PAYOUT).extend_from_slice(pid.as_bytes());
            put(&key, Some(changelog::PAYOUT_VALUE))?;
        }
        for cid in &changed.accounts {
            if let Some(a) = st.accounts.get(cid) { // accounts are never deleted
                changelog::key_start(&mut key, changelog::ACCOUNT).extend_from_slice(cid.as_bytes());
                put(&key, Some(&changelog::account_value(a)))?;
            }
        }
        let expired: Vec<i64> = changed.expired_buckets.iter().copied().collect();
        Ok((chunks, expired))
    }

    /// The collected outputs and counters, taken (the engine starts on empty ones).
    fn take_outputs(&mut self) -> (Vec<Output>, engine::Stats) {
        (std::mem::take(&mut self.engine.outputs), std::mem::take(&mut self.engine.stats))
    }

    /// Stage the next record of this partition with what the fast decoder found in it (None: not taken, or taken
    /// past this core's size limit, where `process` must give the Python decoder's verdict).
    fn stage(&mut self, raw: &Bound<'_, PyBytes>, spans: Option<EventSpans>) {
        let spans = spans.filter(|_| raw.as_bytes().len() <= self.max_record_bytes);
        self.staged.push(raw, spans);
    }

    /// Turn the collected outputs into Python records (in emission order) and add the counters to out.stats.
    /// The core is not borrowed mutably meanwhile: the hooks read it back (a notice's account: Core.account).
    fn flush(slf: &Bound<'_, Self>, py: Python<'_>, raws: Option<&Bound<'_, PyList>>,
             offsets: Option<&Bound<'_, PyAny>>, out: &Bound<'_, PyAny>, batch: bool) -> PyResult<()> {
        let taken = slf.borrow_mut().take_outputs();
        Self::emit(slf, py, taken, raws, offsets, out, batch)
    }

    /// flush's second half: emit outputs taken from the core.
    fn emit(slf: &Bound<'_, Self>, py: Python<'_>, taken: (Vec<Output>, engine::Stats),
            raws: Option<&Bound<'_, PyList>>, offsets: Option<&Bound<'_, PyAny>>, out: &Bound<'_, PyAny>,
            batch: bool) -> PyResult<()> {
        let (mut outputs, stats) = taken;
        let emitted = slf.borrow().emit_outputs(py, &mut outputs, stats, raws, offsets, out, batch);
        // Given back, so the next batch starts with room (up to OUTPUTS_KEPT) instead of growing anew.
        outputs.clear();
        outputs.shrink_to(OUTPUTS_KEPT); // a window close over a million creators must not stay allocated
        slf.borrow_mut().engine.outputs = outputs;
        emitted
    }

    #[allow(clippy::too_many_arguments)]
    fn emit_outputs(&self, py: Python<'_>, outputs: &mut Vec<Output>, s: engine::Stats,
                    raws: Option<&Bound<'_, PyList>>, offsets: Option<&Bound<'_, PyAny>>, out: &Bound<'_, PyAny>,
                    batch: bool) -> PyResult<()> {
        if !outputs.is_empty() {
            let window_totals = out.getattr("window_totals")?;
            let late = out.getattr("late")?;
            let cfg = &self.engine.cfg;
            for o in outputs.drain(..) {
                match o {
                    Output::Reject { index, reject } => {
                        // The parameters of the engine's rejects, for their model.Rejection (dead letters are rare).
                        let (texts, p) = (&self.reject_texts, PyDict::new(py));
                        let text = match reject {
                            Reject::Decode { reason, detail } => (reason, detail).into_pyobject(py)?,
                            Reject::UnknownRegion(region) => {
                                p.set_item("region", region)?;
                                p.set_item("policy_version", self.version.bind(py))?;
                                reject_text(&texts.unknown_region, &p)?
                            }
                            Reject::WrongPartition { creator_id, owner } => {
                                p.set_item("creator_id", creator_id)?;
                                p.set_item("owner", owner)?;
                                p.set_item("partitions", cfg.partitions)?;
                                p.set_item("partition", cfg.partition)?;
                                reject_text(&texts.wrong_partition, &p)?
                            }
                            Reject::TooFarFuture { ts, watermark } => {
                                p.set_item("ts", ts)?;
                                p.set_item("max_future_ms", cfg.max_future_ms)?;
                                p.set_item("watermark", watermark)?;
                                reject_text(&texts.too_far_future, &p)?
                            }
                            Reject::TooOld { ts, watermark } => {
                                p.set_item("ts", ts)?;
                                p.set_item("dedupe_horizon_ms", cfg.dedupe_horizon_ms)?;
                                p.set_item("watermark", watermark)?;
                                reject_text(&texts.too_old, &p)?
                            }
                            Reject::NoRegion { creator_id } => {
                                p.set_item("creator_id", creator_id)?;
                                p.set_item("policy_version", self.version.bind(py))?;
                                reject_text(&texts.no_region, &p)?
                            }
                            Reject::AccountRegion { creator_id, region } => {
                                p.set_item("creator_id", creator_id)?;
                                p.set_item("region", region)?;
                                p.set_item("policy_version", self.version.bind(py))?;
                                reject_text(&texts.account_region, &p)?
                            }
                        };
                        let (reason, detail) = (text.get_item(0)?, text.get_item(1)?);
                        let raw = raws.expect("rejects come from a batch").get_item(index)?;
                        // offsets: a list (one per record), or the offset of the first of consecutive records
                        let offset = match offsets {
                            Some(o) => match o.cast::<PyList>() {
                                Ok(list) if list.is_empty() => None,
                                Ok(list) => Some(list.get_item(index)?),
                                Err(_) => Some((o.extract::<i64>()? + index as i64).into_pyobject(py)?.into_any()),
                            },
                            None => None,
                        };
                        self.hooks.reject.bind(py).call1((reason, detail, raw, offset, out))?;
                    }
                    Output::Notice { creator_id, region, crossing_seq, balance, event_id, ts } => {
                        self.hooks.emit_notice.bind(py)
                            .call1((out, creator_id, region, crossing_seq, balance, event_id, ts))?;
                    }
                    Output::WindowTotal { creator_id, window, start, end, milli, credits } => {
                        let wt = self.window_total_cls.bind(py).call1((creator_id, self.window_names[window].bind(py),
                                                                       start, end, milli, credits, self.version.bind(py)))?;
                        window_totals.call_method1("append", (wt,))?;
                    }
                    Output::Late { event_id, creator_id, ts, watermark, milli, missed } => {
                        let missed = missed.into_iter()
                            .map(|(w, s, e)| self.missed_cls.bind(py).call1((self.window_names[w].bind(py), s, e)))
                            .collect::<PyResult<Vec<_>>>()?;
                        let lg = self.late_cls.bind(py).call1((event_id, creator_id, ts, watermark, milli, missed))?;
                        late.call_method1("append", (lg,))?;
                    }
                }
            }
        }
        let stats = out.getattr("stats")?;
        let add = |key: &str, v: i128, always: bool| -> PyResult<()> {
            if v != 0 || always {
                let cur: i128 = stats.get_item(key)?.extract()?;
                stats.set_item(key, cur + v)?;
            }
            Ok(())
        };
        add("events_in", s.events_in as i128, batch)?;
        add("duplicates", s.duplicates as i128, batch)?;
        add("streaks", s.streaks as i128, false)?;
        if s.credits != 0 {
            add("credits", s.credits as i128, true)?;
            add("milli_diamonds", s.milli, true)?;
        }
        add("late", s.late as i128, false)?;
        add("notices", s.notices as i128, false)?;
        add("window_totals", s.window_totals as i128, false)?;
        add("streak_timeouts", s.streak_timeouts as i128, false)?;
        add("streak_stragglers", s.streak_stragglers as i128, false)?;
        add("payouts", s.payouts as i128, false)?;
        add("payout_duplicates", s.payout_duplicates as i128, false)?;
        add("gifts_without_account", s.gifts_without_account as i128, false)?;
        Ok(())
    }
}

/// How many records ahead of its engine `decode_and_process` decodes and prepares a record: enough for a
/// prefetch to arrive from memory while the records before it are processed, few enough to stay in the cache.
const PREPARE_AHEAD: usize = 8;

/// A record decoded and routed, waiting for its engine.
enum Routed<'a> {
    Event { p: usize, ev: Event<'a>, id: PreparedId },
    Bad(Reject),
}

/// A batch's records, in order, each decoded (or taken from `staged`, when the merge decoded it already) and sent
/// to `engines[route(event)]`; a record the decoder rejects,
/// or whose event `route` refuses, becomes a reject of `engines[0]`. Each record is decoded, routed and
/// prepared (its dedupe slot prefetched) PREPARE_AHEAD records before its engine processes it; the engines still
/// see the records one at a time, in order. Returns how many records each engine took. A record that is not
/// bytes, or that the decode hook fails on, ends the call with its error after the records before it are
/// processed.
fn decode_and_process(engines: &mut [&mut Engine], hooks: &Hooks, (max_bytes, max_depth): (usize, usize),
                      raws: &Bound<'_, PyList>, mut staged: Option<&mut Staged>,
                      route: impl Fn(&Event) -> Result<usize, Reject>) -> PyResult<Vec<u64>> {
    let mut items = Vec::with_capacity(raws.len());
    let mut failed = None;
    for item in raws.iter() {
        match item.cast_into::<PyBytes>() {
            Ok(bytes) => items.push(bytes),
            Err(e) => {
                failed = Some(PyErr::from(e));
                break;
            }
        }
    }
    let mut counts = vec![0u64; engines.len()];
    let process = |engines: &mut [&mut Engine], counts: &mut [u64], index: usize, routed: Routed<'_>| {
        let p = match routed {
            Routed::Event { p, ev, id } => {
                engines[p].process_prepared(&ev, index, id);
                p
            }
            Routed::Bad(reject) => {
                engines[0].outputs.push(Output::Reject { index, reject });
                0
            }
        };
        counts[p] += 1;
    };
    let mut ahead: VecDeque<(usize, Routed<'_>)> = VecDeque::with_capacity(PREPARE_AHEAD + 1);
    for (i, bytes) in items.iter().enumerate() {
        let decoded = match staged.as_deref_mut().and_then(|stage| stage.take(bytes)) {
            Some(spans) => Ok(Decoded::Event(spans.event(bytes.as_bytes()))),
            None => decode_record(bytes, max_bytes, max_depth, hooks),
        };
        let routed = match decoded {
            Ok(Decoded::Event(ev)) => match route(&ev) {
                Ok(p) => Routed::Event { p, id: engines[p].prepare(&ev), ev },
                Err(reject) => Routed::Bad(reject),
            },
            Ok(Decoded::Bad(reject)) => Routed::Bad(reject),
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        ahead.push_back((i, routed));
        if ahead.len() > PREPARE_AHEAD {
            let (index, routed) = ahead.pop_front().expect("not empty");
            process(engines, &mut counts, index, routed);
        }
    }
    for (index, routed) in ahead {
        process(engines, &mut counts, index, routed);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(counts),
    }
}

/// One batch for several partitions' engines (an offline replay): each record goes to the engine of its
/// creator's partition (Kafka's murmur2, like the reference engine's process_routed; a record the Python decoder
/// rejects goes to partition 0), decoded once (by the first core's hooks when the native decoder is not sure).
/// Outputs are emitted partition by partition, as when each engine processes its own share of the batch.
#[pyfunction]
fn process_routed(py: Python<'_>, cores: Vec<Bound<'_, Core>>, raws: &Bound<'_, PyList>,
                  offsets: Option<&Bound<'_, PyAny>>, out: &Bound<'_, PyAny>) -> PyResult<()> {
    if cores.is_empty() {
        return Err(pyo3::exceptions::PyValueError::new_err("process_routed needs at least one engine"));
    }
    let mut engines: Vec<PyRefMut<'_, Core>> = cores.iter().map(|c| c.try_borrow_mut()).collect::<Result<_, _>>()?;
    let n = engines.len() as u32;
    // The routing below is each engine's own ownership check: it holds only when engine p is partition p of n.
    if engines.iter().enumerate().any(|(p, e)| e.engine.cfg.partitions != n || e.engine.cfg.partition != p as u32) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "process_routed needs one engine per partition, engines[p] for partition p"));
    }
    let limits = (engines[0].max_record_bytes, engines[0].max_json_depth);
    let counts = {
        let (first, rest) = engines.split_first_mut().expect("at least one engine");
        let Core { engine, hooks, .. } = &mut **first;
        let mut all: Vec<&mut Engine> = vec![engine];
        all.extend(rest.iter_mut().map(|core| &mut core.engine));
        decode_and_process(&mut all, hooks, limits, raws, None, |ev| {
            Ok(murmur2::partition_for(ev.creator_id.as_bytes(), n) as usize)
        })?
    };
    let taken: Vec<_> = engines.iter_mut().zip(&counts).map(|(engine, &count)| {
        (count > 0).then(|| {
            engine.engine.stats.events_in += count;
            engine.take_outputs()
        })
    }).collect();
    drop(engines); // the hooks read the cores back while their outputs are emitted
    for (core, taken) in cores.iter().zip(taken) {
        if let Some(taken) = taken {
            Core::emit(core, py, taken, Some(raws), offsets, out, true)?;
        }
    }
    Ok(())
}

/// A partition's state rebuilt from changelog records as they are read (stream.state.changelog's restore steps,
/// natively: no Python object is kept per record); Core.adopt takes the result.
#[pyclass(module = "stream._native")]
#[derive(Default)]
struct ChangelogRestore {
    inner: changelog::Restore,
}

#[pymethods]
impl ChangelogRestore {
    #[new]
    fn new() -> Self {
        ChangelogRestore::default()
    }

    /// Apply records oldest first: keys and values (None for a tombstone) side by side. The records are applied
    /// without the GIL (bytes objects are immutable, and the lists hold them while this runs), so restores of
    /// several partitions can run in threads side by side.
    fn apply(&mut self, py: Python<'_>, keys: &Bound<'_, PyList>, values: &Bound<'_, PyList>) -> PyResult<()> {
        if keys.len() != values.len() {
            return Err(pyo3::exceptions::PyValueError::new_err("keys and values differ in length"));
        }
        let mut held = Vec::with_capacity(keys.len());
        for (key, value) in keys.iter().zip(values.iter()) {
            let key = key.cast_into::<PyBytes>()?;
            let value = if value.is_none() { None } else { Some(value.cast_into::<PyBytes>()?) };
            held.push((key, value));
        }
        let records: Vec<(&[u8], Option<&[u8]>)> =
            held.iter().map(|(k, v)| (k.as_bytes(), v.as_ref().map(|v| v.as_bytes()))).collect();
        let inner = &mut self.inner;
        py.detach(|| records.iter().try_for_each(|(k, v)| inner.apply(k, *v)))
            .map_err(pyo3::exceptions::PyValueError::new_err)
    }

    /// Apply the records of a fetch's raw record set (stream.kafka.columnar_fetch.RawRecords) straight from its
    /// bytes, without the GIL: the batches `take` (indices in the set), records from `from_offset` on. Returns
    /// (records applied, the last one's offset or -1).
    fn apply_batches(&mut self, py: Python<'_>, raw: &[u8], take: Vec<usize>, from_offset: i64)
        -> PyResult<(u64, i64)> {
        let inner = &mut self.inner;
        py.detach(|| inner.apply_batches(raw, &take, from_offset)).map_err(pyo3::exceptions::PyValueError::new_err)
    }

    /// Apply a checkpoint's body (stream.state.checkpoint): length-prefixed records.
    fn apply_body(&mut self, py: Python<'_>, body: &[u8]) -> PyResult<()> {
        let inner = &mut self.inner;
        py.detach(|| inner.apply_body(body)).map_err(pyo3::exceptions::PyValueError::new_err)
    }

    /// Records applied so far.
    #[getter]
    fn records(&self) -> u64 {
        self.inner.records
    }
}

/// The record batches of a fetch response's record set, cut like aiokafka's MemoryRecords: for each, None
/// (leave it to aiokafka: older format, compressed, malformed) or (offsets, values, timestamps), with the
/// keys as a fourth list when `keys` (a changelog restore needs them).
#[pyfunction]
#[pyo3(signature = (buf, keys = false))]
fn read_record_batches<'py>(py: Python<'py>, buf: &[u8], keys: bool) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    let bytes_list = |items: &[Option<&[u8]>]| -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for v in items {
            match v {
                Some(v) => list.append(PyBytes::new(py, v))?,
                None => list.append(py.None())?,
            }
        }
        Ok(list)
    };
    for batch in record_batch::split_batches(buf) {
        match record_batch::read_batch(batch) {
            None => out.append(py.None())?,
            Some(cols) => {
                let values = bytes_list(&cols.values)?;
                if keys {
                    out.append((cols.offsets, values, cols.timestamps, bytes_list(&cols.keys)?))?;
                } else {
                    out.append((cols.offsets, values, cols.timestamps))?;
                }
            }
        }
    }
    Ok(out)
}

/// For each record batch of a fetch response's record set (cut as read_record_batches cuts them): whether its
/// format is one the native reader reads (v2, no compression), from its header alone.
#[pyfunction]
fn readable_record_batches(buf: &[u8]) -> Vec<bool> {
    record_batch::split_batches(buf).into_iter().map(record_batch::readable).collect()
}

/// The changelog schema this build writes and reads (native/src/changelog.rs), in the shape of
/// stream.state.changelog_schema.SCHEMA.
#[pyfunction]
fn changelog_schema(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    fn to_py<'py>(py: Python<'py>, d: &changelog::Described) -> PyResult<Bound<'py, PyAny>> {
        Ok(match d {
            changelog::Described::Text(t) => t.into_pyobject(py)?.into_any(),
            changelog::Described::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
            changelog::Described::Names(names) => PyTuple::new(py, names)?.into_any(),
            changelog::Described::Table(entries) => {
                let table = PyDict::new(py);
                for (name, value) in entries {
                    table.set_item(name, to_py(py, value)?)?;
                }
                table.into_any()
            }
        })
    }
    to_py(py, &changelog::describe())
}

/// The entries of two schemas that differ, a line each.
fn schema_differences(ours: &Bound<'_, PyDict>, theirs: &Bound<'_, PyDict>) -> PyResult<String> {
    let names = ours.keys();
    for name in theirs.keys() {
        if !ours.contains(&name)? {
            names.append(name)?;
        }
    }
    let mut out = String::new();
    for name in names.iter() {
        let (a, b) = (ours.get_item(&name)?, theirs.get_item(&name)?);
        let same = match (&a, &b) {
            (Some(a), Some(b)) => a.eq(b)?,
            _ => false,
        };
        if !same {
            let show = |v: Option<Bound<'_, PyAny>>| v.map_or("missing".to_owned(), |v| format!("{v:?}"));
            out.push_str(&format!("\n  {name}: native {}, python {}", show(a), show(b)));
        }
    }
    Ok(out)
}

/// A session's gift records split by the partition Kafka's default partitioner gives their key (creator_id), each
/// share in file order, with the merge time of each record (stream.engine.order): what the merged replay queues per
/// partition. A record the native decoder takes is certainly a valid gift, so its key is its creator_id and its time
/// its ts; any other record is asked of `fallback(raw) -> (key or None, merge time)` (the Python rules), and a
/// record without a key goes to partition 0. `cores`, when given, are the partitions' engines, cores[p] for
/// partition p: each keeps what was decoded of its share for its `process` (staged.rs).
#[pyfunction]
#[pyo3(signature = (raws, partitions, max_bytes, max_depth, fallback, cores=None))]
fn split_gifts<'py>(py: Python<'py>, raws: &Bound<'py, PyList>, partitions: u32, max_bytes: usize,
                    max_depth: usize, fallback: &Bound<'py, PyAny>, cores: Option<Vec<Bound<'py, Core>>>)
                    -> PyResult<Vec<(Bound<'py, PyList>, Vec<i64>)>> {
    if partitions == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err("split_gifts needs at least one partition"));
    }
    let mut stages: Vec<PyRefMut<'_, Core>> = match &cores {
        Some(cores) if cores.len() != partitions as usize => {
            return Err(pyo3::exceptions::PyValueError::new_err("split_gifts needs one core per partition"));
        }
        Some(cores) => cores.iter().map(|c| c.try_borrow_mut()).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    if stages.iter().any(|core| (core.max_record_bytes, core.max_json_depth) != (max_bytes, max_depth)) {
        // What was decoded under other limits is not what the cores' own decode would give.
        return Err(pyo3::exceptions::PyValueError::new_err("split_gifts' limits must be the cores' own"));
    }
    let mut shares: Vec<(Vec<Bound<'py, PyAny>>, Vec<i64>)> = (0..partitions).map(|_| (Vec::new(), Vec::new())).collect();
    for item in raws.iter() {
        let bytes = item.cast::<PyBytes>()?;
        let raw = bytes.as_bytes();
        let (p, time, spans) = match decode_fast(raw, max_bytes, max_depth) {
            Some(ev) => (murmur2::partition_for(ev.creator_id.as_bytes(), partitions), ev.ts, EventSpans::of(&ev, raw)),
            None => {
                let (key, time): (Option<Vec<u8>>, i64) = fallback.call1((&item,))?.extract()?;
                (key.map_or(0, |k| murmur2::partition_for(&k, partitions)), time, None)
            }
        };
        if let Some(core) = stages.get_mut(p as usize) {
            core.stage(bytes, spans);
        }
        let share = &mut shares[p as usize];
        share.0.push(item);
        share.1.push(time);
    }
    shares.into_iter().map(|(values, times)| Ok((PyList::new(py, values)?, times))).collect()
}

/// The merge times of gift records from index `lo` on (stream.engine.order.Pending.stamps): a record the native
/// decoder takes is certainly a valid gift, and its time is its ts; any other (None included) is asked of
/// `fallback(value) -> time` (the Python rules, stream.engine.order.record_time). `core`, when given, keeps what
/// was decoded for its `process` (staged.rs).
fn merge_times(values: &Bound<'_, PyList>, lo: usize, max_depth: usize, fallback: &Bound<'_, PyAny>,
               mut core: Option<&mut Core>) -> PyResult<Vec<i64>> {
    let mut times = Vec::with_capacity(values.len().saturating_sub(lo));
    for j in lo..values.len() {
        let item = values.get_item(j)?;
        let Ok(bytes) = item.cast::<PyBytes>() else {
            times.push(fallback.call1((&item,))?.extract()?);
            continue;
        };
        let raw = bytes.as_bytes();
        let fast = decode_fast(raw, usize::MAX, max_depth); // a record's time does not depend on its size
        times.push(match &fast {
            Some(ev) => ev.ts,
            None => fallback.call1((&item,))?.extract()?,
        });
        if let Some(core) = core.as_deref_mut() {
            core.stage(bytes, fast.and_then(|ev| EventSpans::of(&ev, raw)));
        }
    }
    Ok(times)
}

#[pyfunction]
fn gift_times(values: &Bound<'_, PyList>, lo: usize, max_depth: usize, fallback: &Bound<'_, PyAny>)
              -> PyResult<Vec<i64>> {
    merge_times(values, lo, max_depth, fallback, None)
}

/// The end of a merge run (stream.engine.order.run_end): the first index in [lo, hi) whose stamp is past `limit`
/// (at it too, unless `through_ties`), else hi.
#[pyfunction]
fn run_end(stamps: &Bound<'_, PyList>, lo: usize, hi: usize, limit: i64, through_ties: bool) -> PyResult<usize> {
    let hi = hi.min(stamps.len());
    for j in lo..hi {
        let t: i64 = stamps.get_item(j)?.extract()?;
        if t > limit || (t == limit && !through_ties) {
            return Ok(j);
        }
    }
    Ok(hi.max(lo))
}

/// murmur2 partition of a key (for tests against aiokafka's).
#[pyfunction]
fn partition_for(key: &[u8], partitions: u32) -> u32 {
    murmur2::partition_for(key, partitions)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    set_huge_pages();
    // The changelog schema has one home, stream.state.changelog_schema; this build's compiled-in copy must be it.
    let py = m.py();
    let expected = py.import("stream.state.changelog_schema")?.getattr("SCHEMA")?;
    let built = changelog_schema(py)?;
    if !built.eq(&expected)? {
        let differ = match (built.cast::<PyDict>(), expected.cast::<PyDict>()) {
            (Ok(ours), Ok(theirs)) => schema_differences(ours, theirs)?,
            _ => format!("\n  python: {expected}"),
        };
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!(
            "stream._native was built for another changelog schema than stream.state.changelog_schema's: rebuild it \
             (make install), or make native/src/changelog.rs write the Python one{differ}")));
    }
    m.add_function(wrap_pyfunction!(changelog_schema, m)?)?;
    m.add_class::<Core>()?;
    m.add_class::<ChangelogRestore>()?;
    m.add_class::<batch_builder::RecordBatchBuilder>()?;
    m.add_function(wrap_pyfunction!(process_routed, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for, m)?)?;
    m.add_function(wrap_pyfunction!(split_gifts, m)?)?;
    m.add_function(wrap_pyfunction!(run_end, m)?)?;
    m.add_function(wrap_pyfunction!(gift_times, m)?)?;
    m.add_function(wrap_pyfunction!(read_record_batches, m)?)?;
    m.add_function(wrap_pyfunction!(readable_record_batches, m)?)?;
    Ok(())
}
