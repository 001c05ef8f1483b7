//! The changelog's records, natively: the value encodings (the same bytes as stream/state/changelog.py's
//! msgspec encodings), a partition's state rebuilt from its records (`Restore`, the steps of
//! stream.state.changelog.restore_state), and a whole state written as records (`snapshot`, a checkpoint's body).
//!
//! Keys, as in stream/state/changelog.py: `m`, `c:<creator>`, `w:<creator>\x1e<pane>`, `s:<streak key>`,
//! `d:<bucket>:<start>`, `p:<payout id>`. A restore applies records oldest first, each replacing its key's
//! value (a tombstone removes it), so any suffix of the log applied again over a state that already holds it
//! gives the same state: a checkpoint plus the changelog from an offset at or before the checkpoint's.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::engine::{intern_region, Creator, State, Streak, Tally, RETENTION_BUCKET_MS};
use crate::ids::{Id, StreakKey};
use crate::msgpack::{Reader, Writer};
use crate::sharded::{ChunkedVec, ShardedMap};

pub const PANE_SEP: char = '\x1e'; // between creator id and pane start in a `w:` key

/// A value does not fit the changelog's 64-bit integers (msgspec raises then too).
pub struct TooBig;

pub fn cursor_value(watermark: Option<i64>, close_cursor: Option<i64>) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(2);
    w.opt_int(watermark);
    w.opt_int(close_cursor);
    w.0
}

pub fn creator_value(c: &Creator) -> Result<Vec<u8>, TooBig> {
    let mut w = Writer::new();
    w.array(6);
    w.str(&c.region);
    for v in [c.balance, c.credited, c.paid_out, c.crossings as i128] {
        w.int(v).ok_or(TooBig)?;
    }
    w.bool(c.above);
    Ok(w.0)
}

pub fn tally_value(t: &Tally) -> Result<Vec<u8>, TooBig> {
    let mut w = Writer::new();
    w.array(2);
    w.int(t.milli).ok_or(TooBig)?;
    w.int(t.credits as i128).ok_or(TooBig)?;
    Ok(w.0)
}

const STREAK_FIELDS: [&str; 8] =
    ["creator_id", "region", "diamond_count", "count", "credited", "last_ts", "last_event_id", "open"];

/// An array_like msgspec Struct: its fields in declaration order (stream.state.tables.Streak).
pub fn streak_value(s: &Streak) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(8);
    s.creator_id.with_str(|id| w.str(id));
    w.str(&s.region);
    for v in [s.diamond_count, s.count, s.credited, s.last_ts] {
        w.int(v as i128).expect("an i64 fits");
    }
    s.last_event_id.with_str(|id| w.str(id));
    w.bool(s.open);
    w.0
}

pub fn ids_value<'a>(ids: impl ExactSizeIterator<Item = &'a Id>) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(ids.len());
    let mut text = String::new();
    for id in ids {
        text.clear();
        std::fmt::Write::write_fmt(&mut text, format_args!("{id}")).expect("writing to a String");
        w.str(&text);
    }
    w.0
}

pub fn pane_key(creator_id: &str, pane: i64) -> Vec<u8> {
    format!("w:{creator_id}{PANE_SEP}{pane}").into_bytes()
}

/// Each dedupe bucket's chunk starts, as the changelog holds them: [(bucket, [start, ...])].
pub type ChunkStarts = Vec<(i64, Vec<usize>)>;

/// A partition's state being rebuilt from changelog records (and checkpoints, which are records too).
#[derive(Default)]
pub struct Restore {
    watermark: Option<i64>,
    close_cursor: Option<i64>,
    creators: HashMap<String, Creator>,
    unknown: HashSet<String>, // creators holding a pane but no `c:` record: a corrupt changelog if it stays
    streaks: ShardedMap<StreakKey, Streak>,
    chunks: HashMap<i64, BTreeMap<usize, Vec<Id>>>, // dedupe bucket -> chunk start -> its ids
    payouts: HashSet<String>,
    region_names: Vec<Arc<str>>,
    pub records: u64,
}

fn bad(key: &[u8]) -> String {
    format!("changelog record {:?} cannot be read", String::from_utf8_lossy(key))
}

impl Restore {
    /// Apply one record (value None: a tombstone). Records of unknown kinds are skipped, as in Python.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), String> {
        self.records += 1;
        let kind = key.first().copied();
        if kind == Some(b'm') {
            if let Some(v) = value {
                let mut r = Reader::new(v);
                let ok = (|| {
                    (r.array()? == 2).then_some(())?;
                    Some((r.opt_i64()?, r.opt_i64()?))
                })();
                (self.watermark, self.close_cursor) = ok.filter(|_| r.done()).ok_or_else(|| bad(key))?;
            }
            return Ok(());
        }
        let name = key.get(2..).filter(|_| key.get(1) == Some(&b':'));
        let Some(name) = name.and_then(|n| std::str::from_utf8(n).ok()) else {
            return if matches!(kind, Some(b'c' | b'w' | b's' | b'd' | b'p')) { Err(bad(key)) } else { Ok(()) };
        };
        match kind {
            Some(b'c') => self.creator(name, value).ok_or_else(|| bad(key)),
            Some(b'w') => self.pane(name, value).ok_or_else(|| bad(key)),
            Some(b's') => self.streak(name, value).ok_or_else(|| bad(key)),
            Some(b'd') => self.dedupe_chunk(name, value).ok_or_else(|| bad(key)),
            Some(b'p') => {
                match value {
                    Some(_) => self.payouts.insert(name.to_owned()),
                    None => self.payouts.remove(name),
                };
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn creator(&mut self, cid: &str, value: Option<&[u8]>) -> Option<()> {
        let Some(v) = value else {
            if let Some(c) = self.creators.remove(cid) {
                if !c.panes.is_empty() {
                    self.creators.insert(cid.to_owned(), Creator { panes: c.panes, ..Creator::new("") });
                    self.unknown.insert(cid.to_owned());
                }
            }
            return Some(());
        };
        let mut r = Reader::new(v);
        (r.array()? == 6).then_some(())?;
        let region = r.str()?;
        let (balance, credited, paid_out, crossings) = (r.int()?, r.int()?, r.int()?, r.i64()?);
        let above = r.bool()?;
        r.done().then_some(())?;
        let c = match self.creators.get_mut(cid) {
            Some(c) => c,
            None => self.creators.entry(cid.to_owned()).or_insert_with(|| Creator::new(region)),
        };
        if c.region != region {
            c.region = region.to_owned();
        }
        (c.balance, c.credited, c.paid_out, c.crossings, c.above) = (balance, credited, paid_out, crossings, above);
        if !self.unknown.is_empty() {
            self.unknown.remove(cid);
        }
        Some(())
    }

    fn pane(&mut self, name: &str, value: Option<&[u8]>) -> Option<()> {
        let (cid, pane) = name.rsplit_once(PANE_SEP)?;
        let pane: i64 = pane.parse().ok()?;
        let Some(v) = value else {
            if let Some(c) = self.creators.get_mut(cid) {
                c.panes.remove(&pane);
            }
            return Some(());
        };
        let mut r = Reader::new(v);
        (r.array()? == 2).then_some(())?;
        let tally = Tally { milli: r.int()?, credits: r.i64()?, dirty: false };
        r.done().then_some(())?;
        if !self.creators.contains_key(cid) {
            self.creators.insert(cid.to_owned(), Creator::new(""));
            self.unknown.insert(cid.to_owned());
        }
        self.creators.get_mut(cid)?.panes.insert(pane, tally);
        Some(())
    }

    fn streak<'v>(&mut self, name: &str, value: Option<&'v [u8]>) -> Option<()> {
        let key = StreakKey::parse(name);
        let Some(v) = value else {
            self.streaks.remove(&key);
            return Some(());
        };
        let mut r = Reader::new(v);
        let (mut creator_id, mut region, mut last_event_id) = (None, None, None);
        let mut nums = [None::<i64>; 4];
        let mut open = true; // the field's default
        let mut field = |r: &mut Reader<'v>, i: usize| -> Option<()> {
            match i {
                0 => creator_id = Some(Id::new(r.str()?)),
                1 => region = Some(r.str()?),
                2..=5 => nums[i - 2] = Some(r.i64()?),
                6 => last_event_id = Some(Id::new(r.str()?)),
                _ => open = r.bool()?,
            }
            Some(())
        };
        if r.is_map() {
            // The older form (changelogs written before streaks were arrays): a map of field names.
            for _ in 0..r.map()? {
                let name = r.str()?;
                field(&mut r, STREAK_FIELDS.iter().position(|f| *f == name)?)?;
            }
        } else {
            let n = r.array()?;
            (n == 7 || n == 8).then_some(())?; // msgspec reads a trailing default (open) as optional
            for i in 0..n {
                field(&mut r, i)?;
            }
        }
        r.done().then_some(())?;
        let region = intern_region(&mut self.region_names, region?);
        let [diamond_count, count, credited, last_ts] = nums;
        self.streaks.insert(key, Streak { creator_id: creator_id?, region, diamond_count: diamond_count?,
                                          count: count?, credited: credited?, last_ts: last_ts?,
                                          last_event_id: last_event_id?, open, dirty: false });
        Some(())
    }

    fn dedupe_chunk(&mut self, name: &str, value: Option<&[u8]>) -> Option<()> {
        let (bucket, start) = name.split_once(':')?;
        let (bucket, start): (i64, usize) = (bucket.parse().ok()?, start.parse().ok()?);
        let Some(v) = value else {
            if let Some(chunks) = self.chunks.get_mut(&bucket) {
                chunks.remove(&start);
                if chunks.is_empty() {
                    self.chunks.remove(&bucket);
                }
            }
            return Some(());
        };
        let mut r = Reader::new(v);
        let n = r.array()?;
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(Id::new(r.str()?));
        }
        r.done().then_some(())?;
        self.chunks.entry(bucket).or_default().insert(start, ids);
        Some(())
    }

    /// Apply a checkpoint's body: records as [u32 key length][key][u32 value length][value], big-endian.
    pub fn apply_body(&mut self, body: &[u8]) -> Result<(), String> {
        let cut = || "the checkpoint's body is cut short".to_owned();
        let mut pos = 0;
        let next = |pos: &mut usize| -> Result<&[u8], String> {
            let len = body.get(*pos..*pos + 4).ok_or_else(cut)?;
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            let part = body.get(*pos + 4..*pos + 4 + len).ok_or_else(cut)?;
            *pos += 4 + len;
            Ok(part)
        };
        while pos < body.len() {
            let key = next(&mut pos)?;
            let value = next(&mut pos)?;
            self.apply(key, Some(value))?;
        }
        Ok(())
    }

    /// The state the records add up to, and each dedupe bucket's chunk starts (for the changelog writer, which
    /// tombstones a bucket's chunks when it expires). Derived parts are built here: which creators hold a pane,
    /// the dedupe set, which closed streaks expire when (sorted by key, so both engines expire them alike).
    pub fn finish(self) -> Result<(State, ChunkStarts), String> {
        if let Some(cid) = self.unknown.iter().next() {
            return Err(format!("changelog holds panes of creator {cid:?} but no record of the creator"));
        }
        let mut st = State { watermark: self.watermark, close_cursor: self.close_cursor, creators: self.creators,
                             streaks: self.streaks, payouts_seen: self.payouts, region_names: self.region_names,
                             ..Default::default() };
        let mut pane_creators: HashMap<i64, HashSet<String>> = HashMap::new();
        for (cid, c) in &st.creators {
            for (pane, _) in c.panes.iter() {
                pane_creators.entry(*pane).or_default().insert(cid.clone());
            }
        }
        st.pane_creators = pane_creators;
        let mut starts = Vec::with_capacity(self.chunks.len());
        for (bucket, chunks) in self.chunks {
            let mut ids = ChunkedVec::default();
            let mut bucket_starts = Vec::with_capacity(chunks.len());
            for (start, part) in chunks {
                bucket_starts.push(start);
                for id in part {
                    st.seen.insert_new(id.clone());
                    ids.push(id);
                }
            }
            st.seen_buckets.insert(bucket, ids);
            starts.push((bucket, bucket_starts));
        }
        starts.sort_unstable();
        // Keys order as their texts: written once each, not at every comparison.
        let mut closed: Vec<(i64, String, &StreakKey)> = st.streaks.iter().filter(|(_, s)| !s.open)
            .map(|(k, s)| (s.last_ts - s.last_ts.rem_euclid(RETENTION_BUCKET_MS), k.to_string(), k)).collect();
        closed.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut streak_buckets: HashMap<i64, ChunkedVec<StreakKey>> = HashMap::new();
        for (bucket, _, key) in closed {
            streak_buckets.entry(bucket).or_default().push(key.clone());
        }
        st.streak_buckets = streak_buckets;
        Ok((st, starts))
    }
}

/// The whole state as changelog records (a checkpoint's body, see Restore::apply_body): the dedupe ids cut
/// at the chunk starts the changelog holds (`chunks`), so expiring a bucket later tombstones the same keys.
pub fn snapshot(st: &State, chunks: &HashMap<i64, Vec<usize>>) -> Result<Vec<u8>, TooBig> {
    let mut out = Vec::with_capacity(64 * (st.creators.len() + st.streaks.len()) + 24 * st.seen.len());
    let mut put = |key: &[u8], value: &[u8]| {
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    };
    put(b"m", &cursor_value(st.watermark, st.close_cursor));
    let mut key = Vec::with_capacity(64);
    for (cid, c) in &st.creators {
        key.clear();
        key.extend_from_slice(b"c:");
        key.extend_from_slice(cid.as_bytes());
        put(&key, &creator_value(c)?);
        for (pane, t) in c.panes.iter() {
            put(&pane_key(cid, *pane), &tally_value(t)?);
        }
    }
    for (k, s) in st.streaks.iter() {
        put(format!("s:{k}").as_bytes(), &streak_value(s));
    }
    for (bucket, ids) in &st.seen_buckets {
        let all: Vec<&Id> = ids.iter().collect();
        let mut bounds: Vec<usize> = chunks.get(bucket).cloned().unwrap_or_default();
        bounds.retain(|&s| s < all.len());
        if bounds.first() != Some(&0) {
            bounds.insert(0, 0); // ids the writer has no chunk for yet: cannot happen after a commit
        }
        for (i, &start) in bounds.iter().enumerate() {
            let end = bounds.get(i + 1).copied().unwrap_or(all.len());
            put(format!("d:{bucket}:{start}").as_bytes(), &ids_value(all[start..end].iter().copied()));
        }
    }
    for pid in &st.payouts_seen {
        put(format!("p:{pid}").as_bytes(), b"1");
    }
    Ok(out)
}
