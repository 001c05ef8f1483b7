//! The changelog's records, natively: the value encodings (the same bytes as stream/state/changelog.py's
//! msgspec encodings), a partition's state rebuilt from its records (`Restore`, the steps of
//! stream.state.changelog.restore_state), and a whole state written as records (`snapshot`, a checkpoint's body).
//!
//! The schema (keys and value layouts) is stream/state/changelog_schema.py's, its one home: it is compiled in
//! here as the constants below, which every encoder and decoder of this file goes through, and `describe`
//! lists them back; stream._native does not load when that is not the Python module's SCHEMA (lib.rs).
//!
//! A restore applies records oldest first, each replacing its key's value (a tombstone removes it), so any
//! suffix of the log applied again over a state that already holds it gives the same state: a checkpoint plus
//! the changelog from an offset at or before the checkpoint's.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::engine::{intern_region, sort_prefix, Account, Creator, State, Streak, Tally, RETENTION_BUCKET_MS};
use crate::ids::{Id, StreakKey, STREAK_KEY_SEP};
use crate::msgpack::{self, Reader, Writer};
use crate::record_batch;
use crate::sharded::{ChunkedVec, ShardedMap};

// ------------------------------------------------------------------------------------ the schema

/// Kind bytes: the first byte of a key (then NAME_SEP and the name; the cursor's key is its kind alone).
pub const CURSOR: u8 = b'm';
pub const CREATOR: u8 = b'c';
pub const PANE: u8 = b'w';
pub const STREAK: u8 = b's';
pub const DEDUPE: u8 = b'd';
pub const PAYOUT: u8 = b'p';
pub const ACCOUNT: u8 = b'a';
pub const NAME_SEP: u8 = b':';
pub const CURSOR_KEY: &[u8] = &[CURSOR];
pub const PANE_SEP: char = '\x1e'; // between creator id and pane start in a pane key
pub const DEDUPE_SEP: char = ':'; // between bucket and chunk start in a dedupe key
pub const PAYOUT_VALUE: &[u8] = b"1";
pub const STREAK_OPEN_DEFAULT: bool = true; // a streak record may leave its trailing `open` out

/// The fields of a record's value: an enum whose declaration order is the layout (`ALL`), with their names.
macro_rules! layout {
    ($(#[$doc:meta])* $name:ident { $($field:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub enum $name { $($field),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$field),+];
            pub fn name(self) -> &'static str {
                match self { $($name::$field => $text),+ }
            }
        }
    };
}

layout!(/// The cursor record's value (CURSOR_FIELDS).
    CursorField { Watermark = "watermark", CloseCursor = "close_cursor" });
layout!(/// A creator's value (CREATOR_FIELDS): CreatorState's fields but its panes.
    CreatorField { Region = "region", Balance = "balance", Credited = "credited", PaidOut = "paid_out",
                   Crossings = "crossings", Above = "above", Low = "low" });
/// A creator record written before `low` (the last field) holds the others only: its `low` is its balance
/// (CREATOR_FALLBACKS: the field whose value a left-out trailing field takes).
pub const CREATOR_FALLBACKS: &[(CreatorField, CreatorField)] = &[(CreatorField::Low, CreatorField::Balance)];
layout!(/// A pane tally's value (PANE_FIELDS).
    PaneField { MilliDiamonds = "milli_diamonds", Credits = "credits" });
layout!(/// A streak's value (STREAK_FIELDS): stream.state.tables.Streak's fields in declaration order.
    StreakField { CreatorId = "creator_id", Region = "region", DiamondCount = "diamond_count", Count = "count",
                  Credited = "credited", LastTs = "last_ts", LastEventId = "last_event_id", Open = "open" });
layout!(/// An account's value (ACCOUNT_FIELDS): stream.state.tables.Account's fields in declaration order.
    AccountField { Region = "region", AccountStatus = "account_status", PayoutMethod = "payout_method", Age = "age",
                   UpdatedTs = "updated_ts" });

/// `key` emptied and started as the key of a record with a name: its kind byte and NAME_SEP (the name follows).
pub fn key_start(key: &mut Vec<u8>, kind: u8) -> &mut Vec<u8> {
    key.clear();
    key.push(kind);
    key.push(NAME_SEP);
    key
}

/// A described schema: (the entry's name, its value), as stream.state.changelog_schema.SCHEMA holds it.
pub enum Described {
    Text(String),
    Bool(bool),
    Names(Vec<&'static str>),
    Table(Vec<(&'static str, Described)>),
}

/// The schema this build writes and reads, in the shape of stream.state.changelog_schema.SCHEMA.
pub fn describe() -> Described {
    use Described::*;
    let ch = |b: u8| Text((b as char).to_string());
    let names = |all: &[&'static str]| Names(all.to_vec());
    Table(vec![
        ("kinds", Table(vec![("cursor", ch(CURSOR)), ("creator", ch(CREATOR)), ("pane", ch(PANE)),
                             ("streak", ch(STREAK)), ("dedupe", ch(DEDUPE)), ("payout", ch(PAYOUT)),
                             ("account", ch(ACCOUNT))])),
        ("name_sep", ch(NAME_SEP)),
        ("pane_sep", Text(PANE_SEP.to_string())),
        ("dedupe_sep", Text(DEDUPE_SEP.to_string())),
        ("streak_key_sep", Text(STREAK_KEY_SEP.to_string())),
        ("fields", Table(vec![
            ("cursor", names(&CursorField::ALL.iter().map(|f| f.name()).collect::<Vec<_>>())),
            ("creator", names(&CreatorField::ALL.iter().map(|f| f.name()).collect::<Vec<_>>())),
            ("pane", names(&PaneField::ALL.iter().map(|f| f.name()).collect::<Vec<_>>())),
            ("streak", names(&StreakField::ALL.iter().map(|f| f.name()).collect::<Vec<_>>())),
            ("account", names(&AccountField::ALL.iter().map(|f| f.name()).collect::<Vec<_>>())),
        ])),
        ("defaults", Table(vec![("streak", Table(vec![(StreakField::Open.name(), Bool(STREAK_OPEN_DEFAULT))]))])),
        ("fallbacks", Table(vec![("creator", Table(CREATOR_FALLBACKS.iter()
            .map(|(field, from)| (field.name(), Text(from.name().to_owned()))).collect()))])),
        ("payout_value", Text(String::from_utf8(PAYOUT_VALUE.to_vec()).expect("ASCII"))),
    ])
}

// ------------------------------------------------------------------------------------ values

/// A value does not fit the changelog's 64-bit integers (msgspec raises then too).
pub struct TooBig;

pub fn cursor_value(watermark: Option<i64>, close_cursor: Option<i64>) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(CursorField::ALL.len());
    for f in CursorField::ALL {
        w.opt_int(match f {
            CursorField::Watermark => watermark,
            CursorField::CloseCursor => close_cursor,
        });
    }
    w.0
}

pub fn creator_value(c: &Creator) -> Result<Vec<u8>, TooBig> {
    let mut w = Writer::new();
    w.array(CreatorField::ALL.len());
    for f in CreatorField::ALL {
        match f {
            CreatorField::Region => w.str(&c.region),
            CreatorField::Balance => w.int(c.balance).ok_or(TooBig)?,
            CreatorField::Credited => w.int(c.credited).ok_or(TooBig)?,
            CreatorField::PaidOut => w.int(c.paid_out).ok_or(TooBig)?,
            CreatorField::Crossings => w.int(c.crossings as i128).ok_or(TooBig)?,
            CreatorField::Above => w.bool(c.above),
            CreatorField::Low => w.int(c.low).ok_or(TooBig)?,
        }
    }
    Ok(w.0)
}

pub fn tally_value(t: &Tally) -> Result<Vec<u8>, TooBig> {
    let mut w = Writer::new();
    w.array(PaneField::ALL.len());
    for f in PaneField::ALL {
        match f {
            PaneField::MilliDiamonds => w.int(t.milli).ok_or(TooBig)?,
            PaneField::Credits => w.int(t.credits as i128).ok_or(TooBig)?,
        }
    }
    Ok(w.0)
}

/// An array_like msgspec Struct: its fields in declaration order (stream.state.tables.Streak).
pub fn streak_value(s: &Streak) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(StreakField::ALL.len());
    for f in StreakField::ALL {
        match f {
            StreakField::CreatorId => s.creator_id.with_str(|id| w.str(id)),
            StreakField::Region => w.str(&s.region),
            StreakField::DiamondCount => w.int(s.diamond_count as i128).expect("an i64 fits"),
            StreakField::Count => w.int(s.count as i128).expect("an i64 fits"),
            StreakField::Credited => w.int(s.credited as i128).expect("an i64 fits"),
            StreakField::LastTs => w.int(s.last_ts as i128).expect("an i64 fits"),
            StreakField::LastEventId => s.last_event_id.with_str(|id| w.str(id)),
            StreakField::Open => w.bool(s.open),
        }
    }
    w.0
}

/// An array_like msgspec Struct: its fields in declaration order (stream.state.tables.Account).
pub fn account_value(a: &Account) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(AccountField::ALL.len());
    for f in AccountField::ALL {
        match f {
            AccountField::Region => w.str(&a.region),
            AccountField::AccountStatus => w.str(&a.status),
            AccountField::PayoutMethod => w.str(&a.payout_method),
            AccountField::Age => w.int(a.age as i128).expect("an i64 fits"),
            AccountField::UpdatedTs => w.int(a.updated_ts as i128).expect("an i64 fits"),
        }
    }
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
    let mut key = Vec::with_capacity(creator_id.len() + 24);
    write!(key_start(&mut key, PANE), "{creator_id}{PANE_SEP}{pane}").expect("writing to a Vec");
    key
}

pub fn dedupe_key(key: &mut Vec<u8>, bucket: i64, start: usize) {
    write!(key_start(key, DEDUPE), "{bucket}{DEDUPE_SEP}{start}").expect("writing to a Vec");
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
    accounts: HashMap<String, Account>,
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
        if kind == Some(CURSOR) {
            if let Some(v) = value {
                let mut r = Reader::new(v);
                let ok = (|| {
                    (r.array()? == CursorField::ALL.len()).then_some(())?;
                    let (mut watermark, mut close_cursor) = (None, None);
                    for f in CursorField::ALL {
                        let v = Some(r.opt_i64()?);
                        match f {
                            CursorField::Watermark => watermark = v,
                            CursorField::CloseCursor => close_cursor = v,
                        }
                    }
                    Some((watermark?, close_cursor?))
                })();
                (self.watermark, self.close_cursor) = ok.filter(|_| r.done()).ok_or_else(|| bad(key))?;
            }
            return Ok(());
        }
        let name = key.get(2..).filter(|_| key.get(1) == Some(&NAME_SEP));
        let Some(name) = name.and_then(msgpack::text) else {
            return if matches!(kind, Some(CREATOR | PANE | STREAK | DEDUPE | PAYOUT | ACCOUNT)) {
                Err(bad(key))
            } else {
                Ok(())
            };
        };
        match kind {
            Some(CREATOR) => self.creator(name, value).ok_or_else(|| bad(key)),
            Some(PANE) => self.pane(name, value).ok_or_else(|| bad(key)),
            Some(STREAK) => self.streak(name, value).ok_or_else(|| bad(key)),
            Some(DEDUPE) => self.dedupe_chunk(name, value).ok_or_else(|| bad(key)),
            Some(PAYOUT) => {
                match value {
                    Some(_) => self.payouts.insert(name.to_owned()),
                    None => self.payouts.remove(name),
                };
                Ok(())
            }
            Some(ACCOUNT) => self.account(name, value).ok_or_else(|| bad(key)),
            _ => Ok(()),
        }
    }

    fn account(&mut self, cid: &str, value: Option<&[u8]>) -> Option<()> {
        let Some(v) = value else {
            self.accounts.remove(cid); // never written: the latest record of a key wins, as in Python
            return Some(());
        };
        let mut r = Reader::new(v);
        (r.array()? == AccountField::ALL.len()).then_some(())?;
        let (mut region, mut status, mut payout_method, mut age, mut updated_ts) = (None, None, None, None, None);
        for f in AccountField::ALL {
            match f {
                AccountField::Region => region = Some(r.str()?),
                AccountField::AccountStatus => status = Some(r.str()?),
                AccountField::PayoutMethod => payout_method = Some(r.str()?),
                AccountField::Age => age = Some(r.i64()?),
                AccountField::UpdatedTs => updated_ts = Some(r.i64()?),
            }
        }
        r.done().then_some(())?;
        let account = Account { region: intern_region(&mut self.region_names, region?), status: status?.to_owned(),
                                payout_method: payout_method?.to_owned(), age: age?, updated_ts: updated_ts?,
                                dirty: false };
        self.accounts.insert(cid.to_owned(), account);
        Some(())
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
        let n = r.array()?;
        let all = CreatorField::ALL;
        // an older record leaves out the trailing fields CREATOR_FALLBACKS names (`low`)
        (all.len() - CREATOR_FALLBACKS.len()..=all.len()).contains(&n).then_some(())?;
        let (mut region, mut balance, mut credited, mut paid_out, mut crossings, mut above, mut low) =
            (None, None, None, None, None, None, None);
        for f in &all[..n] {
            match f {
                CreatorField::Region => region = Some(r.str()?),
                CreatorField::Balance => balance = Some(r.int()?),
                CreatorField::Credited => credited = Some(r.int()?),
                CreatorField::PaidOut => paid_out = Some(r.int()?),
                CreatorField::Crossings => crossings = Some(r.i64()?),
                CreatorField::Above => above = Some(r.bool()?),
                CreatorField::Low => low = Some(r.int()?),
            }
        }
        r.done().then_some(())?;
        let (region, balance, credited, paid_out, crossings, above) =
            (region?, balance?, credited?, paid_out?, crossings?, above?);
        let low = low.unwrap_or(balance); // CREATOR_FALLBACKS: an older record's low is its balance
        let c = match self.creators.get_mut(cid) {
            Some(c) => c,
            None => self.creators.entry(cid.to_owned()).or_insert_with(|| Creator::new(region)),
        };
        if c.region != region {
            c.region = region.to_owned();
        }
        (c.balance, c.credited, c.paid_out, c.crossings, c.above, c.low) =
            (balance, credited, paid_out, crossings, above, low);
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
        (r.array()? == PaneField::ALL.len()).then_some(())?;
        let (mut milli, mut credits) = (None, None);
        for f in PaneField::ALL {
            match f {
                PaneField::MilliDiamonds => milli = Some(r.int()?),
                PaneField::Credits => credits = Some(r.i64()?),
            }
        }
        r.done().then_some(())?;
        let tally = Tally { milli: milli?, credits: credits?, dirty: false };
        let c = match self.creators.get_mut(cid) {
            Some(c) => c,
            None => {
                self.unknown.insert(cid.to_owned());
                self.creators.entry(cid.to_owned()).or_insert_with(|| Creator::new(""))
            }
        };
        c.panes.insert(pane, tally);
        Some(())
    }

    fn streak(&mut self, name: &str, value: Option<&[u8]>) -> Option<()> {
        let key = StreakKey::parse(name);
        match value {
            Some(v) => {
                let streak = self.streak_value(v)?;
                self.streaks.insert(key, streak);
            }
            None => {
                self.streaks.remove(&key);
            }
        }
        Some(())
    }

    fn streak_value<'v>(&mut self, v: &'v [u8]) -> Option<Streak> {
        let mut r = Reader::new(v);
        let (mut creator_id, mut region, mut last_event_id) = (None, None, None);
        let mut nums = [None::<i64>; 4];
        let mut open = STREAK_OPEN_DEFAULT;
        let mut field = |r: &mut Reader<'v>, f: StreakField| -> Option<()> {
            match f {
                StreakField::CreatorId => creator_id = Some(Id::new(r.str()?)),
                StreakField::Region => region = Some(r.str()?),
                StreakField::DiamondCount => nums[0] = Some(r.i64()?),
                StreakField::Count => nums[1] = Some(r.i64()?),
                StreakField::Credited => nums[2] = Some(r.i64()?),
                StreakField::LastTs => nums[3] = Some(r.i64()?),
                StreakField::LastEventId => last_event_id = Some(Id::new(r.str()?)),
                StreakField::Open => open = r.bool()?,
            }
            Some(())
        };
        if r.is_map() {
            // The older form (changelogs written before streaks were arrays): a map of field names.
            for _ in 0..r.map()? {
                let name = r.str()?;
                field(&mut r, *StreakField::ALL.iter().find(|f| f.name() == name)?)?;
            }
        } else {
            let n = r.array()?;
            let all = StreakField::ALL;
            // msgspec reads a trailing field with a default (open, the last) as optional
            (n == all.len() || n + 1 == all.len() && all[n] == StreakField::Open).then_some(())?;
            for f in &all[..n] {
                field(&mut r, *f)?;
            }
        }
        r.done().then_some(())?;
        let region = intern_region(&mut self.region_names, region?);
        let [diamond_count, count, credited, last_ts] = nums;
        Some(Streak { creator_id: creator_id?, region, diamond_count: diamond_count?, count: count?,
                      credited: credited?, last_ts: last_ts?, last_event_id: last_event_id?, open, dirty: false })
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

    /// Apply the records of a fetch's record batches `take` (indices among `record_batch::split_batches(raw)`,
    /// ascending) whose offset is at least `from`: (records applied, the last one's offset, -1 for none). A batch
    /// that cannot be read (its CRC, a cut record, compression) fails the call, none of its records applied: the
    /// restore it belongs to fails and starts again.
    pub fn apply_batches(&mut self, raw: &[u8], take: &[usize], from: i64) -> Result<(u64, i64), String> {
        let batches = record_batch::split_batches(raw);
        let (mut applied, mut last) = (0, -1);
        for &i in take {
            let batch = batches.get(i).ok_or_else(|| format!("the fetch has no record batch {i}"))?;
            let cols = record_batch::read_batch(batch).ok_or_else(|| {
                format!("the changelog's record batch {i} of the fetch cannot be read (CRC, format or a cut record)")
            })?;
            for ((&offset, key), value) in cols.offsets.iter().zip(&cols.keys).zip(&cols.values) {
                if offset < from {
                    continue; // fetched again from the middle of its batch
                }
                self.apply(key.ok_or_else(|| format!("changelog record {offset} has no key"))?, *value)?;
                (applied, last) = (applied + 1, offset);
            }
        }
        Ok((applied, last))
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
        let mut counts = [0usize; 256]; // records per kind (a key's first byte): the tables are sized once
        while pos < body.len() {
            let key = next(&mut pos)?;
            next(&mut pos)?;
            counts[usize::from(key.first().copied().unwrap_or(0))] += 1;
        }
        self.creators.reserve(counts[usize::from(CREATOR)]);
        self.accounts.reserve(counts[usize::from(ACCOUNT)]);
        self.payouts.reserve(counts[usize::from(PAYOUT)]);
        // A body holds no tombstones, so its streaks can all go in at the end, at once (ShardedMap::insert_all).
        let mut streaks = Vec::with_capacity(counts[usize::from(STREAK)]);
        pos = 0;
        while pos < body.len() {
            let key = next(&mut pos)?;
            let value = next(&mut pos)?;
            match key.strip_prefix(&[STREAK, NAME_SEP]).and_then(msgpack::text) {
                Some(name) => {
                    self.records += 1;
                    streaks.push((StreakKey::parse(name), self.streak_value(value).ok_or_else(|| bad(key))?));
                }
                _ => self.apply(key, Some(value))?,
            }
        }
        self.streaks.insert_all(streaks);
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
                             streaks: self.streaks, payouts_seen: self.payouts, accounts: self.accounts,
                             region_names: self.region_names,
                             ..Default::default() };
        let mut per_pane: HashMap<i64, usize> = HashMap::new();
        for c in st.creators.values() {
            for (pane, _) in c.panes.iter() {
                *per_pane.entry(*pane).or_default() += 1;
            }
        }
        let mut pane_creators: HashMap<i64, HashSet<String>> =
            per_pane.into_iter().map(|(pane, n)| (pane, HashSet::with_capacity(n))).collect();
        for (cid, c) in &st.creators {
            for (pane, _) in c.panes.iter() {
                pane_creators.entry(*pane).or_default().insert(cid.clone());
            }
        }
        st.pane_creators = pane_creators;
        let mut seen = Vec::with_capacity(self.chunks.values().flat_map(BTreeMap::values).map(Vec::len).sum());
        let mut starts = Vec::with_capacity(self.chunks.len());
        for (bucket, chunks) in self.chunks {
            let mut ids = ChunkedVec::default();
            let mut bucket_starts = Vec::with_capacity(chunks.len());
            for (start, part) in chunks {
                bucket_starts.push(start);
                for id in part {
                    seen.push(id.clone());
                    ids.push(id);
                }
            }
            st.seen_buckets.insert(bucket, ids);
            starts.push((bucket, bucket_starts));
        }
        st.seen.insert_all(seen);
        starts.sort_unstable();
        // Keys order as their texts. Each text is written once, into one buffer, and a comparison looks at the
        // first 32 bytes as two numbers before it reads the texts (most keys differ there).
        let mut texts: Vec<u8> = Vec::new();
        let mut closed: Vec<ClosedStreak> = st.streaks.iter().filter(|(_, s)| !s.open).map(|(k, s)| {
            let start = texts.len();
            k.with_text(|t| texts.extend_from_slice(t));
            let text = &texts[start..];
            ClosedStreak { bucket: s.last_ts - s.last_ts.rem_euclid(RETENTION_BUCKET_MS),
                           prefix: (sort_prefix(text), sort_prefix(text.get(16..).unwrap_or_default())),
                           text: start..texts.len(), key: k }
        }).collect();
        closed.sort_unstable_by(|a, b| (a.bucket, a.prefix).cmp(&(b.bucket, b.prefix))
            .then_with(|| texts[a.text.clone()].cmp(&texts[b.text.clone()])));
        let mut streak_buckets: HashMap<i64, ChunkedVec<StreakKey>> = HashMap::new();
        for c in closed {
            streak_buckets.entry(c.bucket).or_default().push(c.key.clone());
        }
        st.streak_buckets = streak_buckets;
        Ok((st, starts))
    }
}

/// A closed streak as the restore sorts them: by retention bucket, then by its key's text.
struct ClosedStreak<'a> {
    bucket: i64,
    prefix: (u128, u128), // the text's bytes 0-15 and 16-31, zero-padded: they order as the bytes do
    text: std::ops::Range<usize>,
    key: &'a StreakKey,
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
    put(CURSOR_KEY, &cursor_value(st.watermark, st.close_cursor));
    let mut key = Vec::with_capacity(64);
    for (cid, c) in &st.creators {
        key_start(&mut key, CREATOR).extend_from_slice(cid.as_bytes());
        put(&key, &creator_value(c)?);
        for (pane, t) in c.panes.iter() {
            put(&pane_key(cid, *pane), &tally_value(t)?);
        }
    }
    for (k, s) in st.streaks.iter() {
        k.with_text(|t| key_start(&mut key, STREAK).extend_from_slice(t));
        put(&key, &streak_value(s));
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
            dedupe_key(&mut key, *bucket, start);
            put(&key, &ids_value(all[start..end].iter().copied()));
        }
    }
    for pid in &st.payouts_seen {
        key_start(&mut key, PAYOUT).extend_from_slice(pid.as_bytes());
        put(&key, PAYOUT_VALUE);
    }
    for (cid, a) in &st.accounts {
        key_start(&mut key, ACCOUNT).extend_from_slice(cid.as_bytes());
        put(&key, &account_value(a));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_streak(creator: &str, last_ts: i64) -> Streak {
        Streak { creator_id: Id::new(creator), region: Arc::from("US"), diamond_count: 1, count: 1, credited: 1,
                 last_ts, last_event_id: Id::new("1"), open: false, dirty: false }
    }

    fn body(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    #[test]
    fn a_restored_bucket_of_closed_streaks_is_in_key_text_order() {
        // Numeric keys and text keys, many alike in their first 32 bytes, some a prefix of another.
        let sep = STREAK_KEY_SEP;
        let mut texts: Vec<String> = Vec::new();
        for room in ["7234567890123456789", "723456789012345678", "72", "7"] {
            for sender in ["1234567890123456789", "123456789012345678", "5"] {
                texts.push(format!("{room}{sep}{sender}{sep}5655{sep}9"));
                texts.push(format!("{room}{sep}{sender}{sep}-3{sep}"));
                texts.push(format!("{room}{sep}{sender}x{sep}5655{sep}9")); // not numeric: a text key
                texts.push(format!("{room}{sep}{sender}{sep}5655{sep}9{sep}extra"));
            }
        }
        texts.push("a".repeat(40));
        texts.push(format!("{}\0", "a".repeat(40)));
        texts.push("a".repeat(16));
        let mut restore = Restore::default();
        let records: Vec<(Vec<u8>, Vec<u8>)> = texts.iter().enumerate().map(|(i, t)| {
            let mut key = Vec::new();
            key_start(&mut key, STREAK).extend_from_slice(t.as_bytes());
            // two retention buckets, the keys spread over both
            (key, streak_value(&closed_streak("1", (i as i64 % 2) * RETENTION_BUCKET_MS + 5)))
        }).collect();
        restore.apply_body(&body(&records)).map_err(|e| e.to_string()).unwrap();
        assert_eq!(restore.streaks.len(), texts.len());
        let (st, _) = restore.finish().unwrap();
        for bucket in [0, RETENTION_BUCKET_MS] {
            let got: Vec<String> = st.streak_buckets[&bucket].iter().map(|k| k.to_string()).collect();
            let mut expected = got.clone();
            expected.sort();
            assert_eq!(got, expected, "bucket {bucket}");
            assert_eq!(got.len(), texts.len() / 2 + (texts.len() % 2) * usize::from(bucket == 0));
        }
    }

    #[test]
    fn a_body_gives_the_state_its_records_give_one_at_a_time() {
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..3_000).map(|i| {
            let text = format!("{}{STREAK_KEY_SEP}{i}{STREAK_KEY_SEP}7{STREAK_KEY_SEP}{i}", i % 17);
            let mut key = Vec::new();
            key_start(&mut key, STREAK).extend_from_slice(text.as_bytes());
            (key, streak_value(&closed_streak(&format!("{}", i % 5), i)))
        }).collect();
        let mut at_once = Restore::default();
        at_once.apply_body(&body(&records)).unwrap();
        let mut one_by_one = Restore::default();
        for (k, v) in &records {
            one_by_one.apply(k, Some(v)).unwrap();
        }
        assert_eq!(at_once.records, one_by_one.records);
        let snapshot_of = |r: Restore| {
            let (st, _) = r.finish().unwrap();
            let mut all: Vec<(String, Vec<u8>)> = st.streaks.iter().map(|(k, s)| (k.to_string(), streak_value(s))).collect();
            all.sort();
            let order: Vec<Vec<String>> = {
                let mut buckets: Vec<_> = st.streak_buckets.iter().collect();
                buckets.sort_by_key(|(b, _)| **b);
                buckets.into_iter().map(|(_, keys)| keys.iter().map(|k| k.to_string()).collect()).collect()
            };
            (all, order)
        };
        assert_eq!(snapshot_of(at_once), snapshot_of(one_by_one));
    }
}
