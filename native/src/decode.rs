//! Fast decoding of one gift event. It accepts only records that are certainly valid (every field
//! present with the right JSON type and inside the bounds of stream/engine/model.py); anything else is left to
//! the Python decoder, which stays the single authority on reject reasons and their wording.

use foldhash::HashSet;
use serde::Deserialize;
use std::borrow::Cow;

const INT32_MAX: i64 = (1 << 31) - 1;
const MAX_COINS: i64 = 10_000_000;
const MAX_UNITS: i64 = 1_000_000;
const MAX_EPOCH_MS: i64 = 100_000_000_000_000;
const MAX_ID_CHARS: usize = 64;

/// A gift event (stream.engine.model.GiftEvent); strings borrow from the record unless they hold escapes.
#[derive(Deserialize, Debug, Clone)]
pub struct Event<'a> {
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub room_id: Cow<'a, str>,
    #[serde(borrow)]
    pub creator_id: Cow<'a, str>,
    #[serde(borrow)]
    pub sender_id: Cow<'a, str>,
    pub gift_id: i64,
    pub gift_type: i64,
    pub diamond_count: i64,
    pub repeat_count: i64,
    pub repeat_end: bool,
    pub ts: i64,
    #[serde(borrow, default)]
    pub region: Cow<'a, str>, // optional: "" when the record names none (stream.engine.model.GiftEvent)
    #[serde(borrow, default)]
    pub group_id: Cow<'a, str>,
}

/// An id within stream.engine.model.ID_PATTERN: 1 to 64 of [0-9A-Za-z_-] (ASCII, so bytes are characters).
fn id_ok(s: &str) -> bool {
    !s.is_empty() && group_ok(s)
}

/// A group id within stream.engine.model.GROUP_ID_PATTERN: id_ok, or empty.
fn group_ok(s: &str) -> bool {
    s.len() <= MAX_ID_CHARS && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

impl Event<'_> {
    fn valid(&self) -> bool {
        id_ok(&self.event_id)
            && id_ok(&self.room_id)
            && id_ok(&self.creator_id)
            && id_ok(&self.sender_id)
            && group_ok(&self.group_id)
            && (0..=INT32_MAX).contains(&self.gift_id)
            && (0..=INT32_MAX).contains(&self.gift_type)
            && (1..=MAX_COINS).contains(&self.diamond_count)
            && (1..=MAX_UNITS).contains(&self.repeat_count)
            && (0..=MAX_EPOCH_MS).contains(&self.ts)
    }
}

/// The event when the record is certainly valid, not longer than `max_bytes` and nested at most
/// `max_depth` deep (stream.engine.model.MAX_JSON_DEPTH); None otherwise (then the Python decoder decides).
pub fn decode_fast(raw: &[u8], max_bytes: usize, max_depth: usize) -> Option<Event<'_>> {
    if raw.len() > max_bytes {
        return None;
    }
    // The flat scanner handles the usual record (one flat object: nothing to check for structure);
    // serde_json handles the rest of JSON (escapes, floats, nested unknown fields) and still rejects what
    // it must, but nests up to 128 deep, so the records it accepts get the structural scan too.
    let ev = match FlatScanner::new(raw).event() {
        Some(ev) => ev,
        None => {
            let ev: Event = serde_json::from_slice(raw).ok()?;
            if first_violation(raw, max_depth).is_some() {
                return None;
            }
            ev
        }
    };
    ev.valid().then_some(ev)
}

/// Where a decoded event's strings are in its record, and its numbers: enough to give the same event again from
/// the same bytes without decoding them (stream._native's staged gifts, decoded when the merge needed their time).
#[derive(Clone, Copy, Debug)]
pub struct EventSpans {
    strs: [(u32, u32); 6], // (start, length) of event_id, room_id, creator_id, sender_id, region, group_id
    ints: [i64; 5],        // gift_id, gift_type, diamond_count, repeat_count, ts
    repeat_end: bool,
}

impl EventSpans {
    /// The spans of `ev`, decoded from `raw`; None when one of its strings is not a slice of `raw` (serde
    /// unescaped it).
    pub fn of(ev: &Event<'_>, raw: &[u8]) -> Option<Self> {
        let base = raw.as_ptr() as usize;
        let span = |s: &Cow<'_, str>| -> Option<(u32, u32)> {
            match s {
                _ if s.is_empty() => Some((0, 0)), // serde's default is an empty owned string
                Cow::Borrowed(text) => {
                    let start = (text.as_ptr() as usize).checked_sub(base)?;
                    (start + text.len() <= raw.len()).then_some((start as u32, text.len() as u32))
                }
                Cow::Owned(_) => None,
            }
        };
        Some(EventSpans {
            strs: [span(&ev.event_id)?, span(&ev.room_id)?, span(&ev.creator_id)?, span(&ev.sender_id)?,
                   span(&ev.region)?, span(&ev.group_id)?],
            ints: [ev.gift_id, ev.gift_type, ev.diamond_count, ev.repeat_count, ev.ts],
            repeat_end: ev.repeat_end,
        })
    }

    /// The event again. `raw` must be the very bytes `of` was given (the caller holds them: a Python bytes object
    /// is immutable).
    pub fn event<'a>(&self, raw: &'a [u8]) -> Event<'a> {
        let s = |k: usize| -> Cow<'a, str> {
            let (start, len) = self.strs[k];
            let bytes = &raw[start as usize..(start + len) as usize];
            debug_assert!(std::str::from_utf8(bytes).is_ok());
            // SAFETY: the same bytes held this span as a str when `of` took it.
            Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(bytes) })
        };
        let [gift_id, gift_type, diamond_count, repeat_count, ts] = self.ints;
        Event { event_id: s(0), room_id: s(1), creator_id: s(2), sender_id: s(3), gift_id, gift_type, diamond_count,
                repeat_count, repeat_end: self.repeat_end, ts, region: s(4), group_id: s(5) }
    }
}

/// A structural rule a record breaks (stream.engine.model.scan_structure words it; the native decoder only
/// declines such records, so the reason and detail come from Python).
#[derive(Debug, PartialEq, Eq)]
pub enum Violation {
    TooDeep,
    DuplicateKey,
    /// A key whose escapes serde_json will not unescape: doubtful, so Python decides.
    Unreadable,
}

/// The first structural violation of a record in document order, or None: nesting deeper than
/// `max_depth`, or an object holding a key twice (compared unescaped, so "a" and "\u0061" are one key).
/// `raw` is JSON (serde_json has parsed it), so only strings need care: brackets inside them do not count.
pub fn first_violation(raw: &[u8], max_depth: usize) -> Option<Violation> {
    // Per open container: an object's keys so far, None for an array. A set, not a list: a 64 KiB record
    // can hold thousands of keys.
    let mut stack: Vec<Option<HashSet<Cow<'_, [u8]>>>> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let start = i + 1;
                let mut escaped = false;
                i += 1;
                while i < raw.len() && raw[i] != b'"' {
                    escaped |= raw[i] == b'\\';
                    i += if raw[i] == b'\\' { 2 } else { 1 };
                }
                if expect_key {
                    expect_key = false;
                    let key: Cow<'_, [u8]> = if escaped {
                        match serde_json::from_slice::<String>(&raw[start - 1..(i + 1).min(raw.len())]) {
                            Ok(text) => Cow::Owned(text.into_bytes()),
                            Err(_) => return Some(Violation::Unreadable),
                        }
                    } else {
                        Cow::Borrowed(&raw[start..i.min(raw.len())])
                    };
                    if let Some(Some(keys)) = stack.last_mut() {
                        if !keys.insert(key) {
                            return Some(Violation::DuplicateKey);
                        }
                    }
                }
            }
            c @ (b'{' | b'[') => {
                if stack.len() == max_depth {
                    return Some(Violation::TooDeep);
                }
                expect_key = c == b'{';
                stack.push(expect_key.then(HashSet::default));
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => expect_key = matches!(stack.last(), Some(Some(_))),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A scanner for the common shape of a gift record: one flat JSON object whose values are strings without
/// escapes, integers and booleans, every key once. Anything else (or anything doubtful) returns None and
/// the caller uses the complete JSON parser instead, so this only has to be right on what it accepts.
struct FlatScanner<'a> {
    b: &'a [u8],
    i: usize,
    /// No byte of the record is a control character, a backslash or non-ASCII (the usual case, checked in
    /// one pass): then a string ends at the next quote and needs no further checks.
    plain: bool,
}

/// Index of the first '"' in b, eight bytes at a time (the zero-byte trick on b ^ '"' repeated).
fn find_quote(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= b.len() {
        let x = u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes")) ^ (ONES * b'"' as u64);
        let zero = x.wrapping_sub(ONES) & !x & HIGH; // lowest set bit marks the first quote
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..].iter().position(|&c| c == b'"').map(|p| i + p)
}

#[derive(Clone, Copy)]
enum Key {
    EventId,
    RoomId,
    CreatorId,
    SenderId,
    GiftId,
    GiftType,
    DiamondCount,
    RepeatCount,
    RepeatEnd,
    Ts,
    Region,
    GroupId,
}

/// The known keys with their closing quote, so a match is a prefix compare with no scanning.
const KEYS: [(&[u8], Key); 12] = [
    (b"event_id\"", Key::EventId), (b"room_id\"", Key::RoomId), (b"creator_id\"", Key::CreatorId),
    (b"sender_id\"", Key::SenderId), (b"gift_id\"", Key::GiftId), (b"gift_type\"", Key::GiftType),
    (b"diamond_count\"", Key::DiamondCount), (b"repeat_count\"", Key::RepeatCount),
    (b"repeat_end\"", Key::RepeatEnd), (b"ts\"", Key::Ts), (b"region\"", Key::Region), (b"group_id\"", Key::GroupId),
];

/// KEYS as 16-byte little-endian words, with the mask of the name's bytes: on a record's usual key, one compare.
const KEY_WORDS: [(u128, u128); 12] = key_words();

const fn key_words() -> [(u128, u128); 12] {
    let mut words = [(0u128, 0u128); 12];
    let mut k = 0;
    while k < KEYS.len() {
        let name = KEYS[k].0;
        let (mut word, mut mask, mut j) = (0u128, 0u128, 0);
        while j < name.len() {
            word |= (name[j] as u128) << (8 * j);
            mask |= 0xff << (8 * j);
            j += 1;
        }
        words[k] = (word, mask);
        k += 1;
    }
    words
}

enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> FlatScanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        // Branch-free so it vectorises: c - 0x20 (wrapping) >= 0x60 holds for c < 0x20 and c >= 0x80.
        let odd = b.iter().fold(0u8, |acc, &c| acc | (c.wrapping_sub(0x20) >= 0x60) as u8 | (c == b'\\') as u8);
        FlatScanner { b, i: 0, plain: odd == 0 }
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// A string with no escapes and no control characters, valid UTF-8 (the opening quote is next).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        if self.plain {
            let len = find_quote(&self.b[start..])?;
            self.i = start + len + 1;
            // SAFETY: the whole record is ASCII (`plain`), so any slice of it is valid UTF-8.
            return Some(unsafe { std::str::from_utf8_unchecked(&self.b[start..start + len]) });
        }
        let len = memchr::memchr(b'"', &self.b[start..])?;
        let bytes = &self.b[start..start + len];
        self.i = start + len + 1;
        // One branch-free pass (it vectorises): any backslash or control character sends the record to
        // serde; a byte >= 0x80 means UTF-8 to validate.
        let (odd, high) = bytes.iter().fold((false, false), |(odd, high), &c| (odd | (c < 0x20) | (c == b'\\'), high | (c >= 0x80)));
        if odd {
            return None;
        }
        if !high {
            // SAFETY: every byte is below 0x80, so the slice is ASCII and valid UTF-8.
            Some(unsafe { std::str::from_utf8_unchecked(bytes) })
        } else {
            std::str::from_utf8(bytes).ok()
        }
    }

    /// A known key (the opening quote is next); None for any other key.
    fn key(&mut self) -> Option<Key> {
        self.eat(b'"')?;
        let rest = &self.b[self.i..];
        // The first letter (and for a few keys one more) picks the one candidate to compare.
        let candidate = match (rest.first()?, rest.get(1), rest.get(5), rest.get(7)) {
            (b'e', ..) => 0,
            (b'r', Some(b'o'), ..) => 1,
            (b'c', ..) => 2,
            (b's', ..) => 3,
            (b'g', Some(b'i'), Some(b'i'), _) => 4,
            (b'g', Some(b'i'), ..) => 5,
            (b'd', ..) => 6,
            (b'r', Some(b'e'), _, Some(b'c')) => 7,
            (b'r', Some(b'e'), _, Some(b'e')) => 8,
            (b't', ..) => 9,
            (b'r', Some(b'e'), ..) => 10,
            (b'g', ..) => 11,
            _ => return None,
        };
        let (name, key) = KEYS[candidate];
        let matched = match rest.first_chunk::<16>() {
            Some(chunk) => u128::from_le_bytes(*chunk) & KEY_WORDS[candidate].1 == KEY_WORDS[candidate].0,
            None => rest.starts_with(name),
        };
        if !matched {
            return None;
        }
        self.i += name.len();
        Some(key)
    }

    fn value(&mut self) -> Option<Value<'a>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => self.string().map(Value::Str),
            b't' if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Some(Value::Bool(true))
            }
            b'f' if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Some(Value::Bool(false))
            }
            b'-' | b'0'..=b'9' => {
                let neg = self.b[self.i] == b'-';
                if neg {
                    self.i += 1;
                }
                let start = self.i;
                let mut n: i64 = 0;
                while let Some(d @ b'0'..=b'9') = self.b.get(self.i) {
                    n = n.checked_mul(10)?.checked_add((d - b'0') as i64)?;
                    self.i += 1;
                }
                let digits = self.i - start;
                // JSON has no leading zeros; a fraction or exponent makes a float: leave both to serde.
                if digits == 0 || (digits > 1 && self.b[start] == b'0')
                    || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
                    return None;
                }
                Some(Value::Int(if neg { -n } else { n }))
            }
            _ => None,
        }
    }

    fn event(mut self) -> Option<Event<'a>> {
        self.eat(b'{')?;
        let (mut event_id, mut room_id, mut creator_id, mut sender_id, mut region, mut group_id) =
            (None, None, None, None, None, None);
        let (mut gift_id, mut gift_type, mut diamond_count, mut repeat_count, mut ts) = (None, None, None, None, None);
        let mut repeat_end = None;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            return None;
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            let value = self.value()?;
            // A repeated key, a wrong type or an unknown key (msgspec ignores it, but it may be repeated or
            // nested): all rare, all left to serde.
            let fresh = match (key, value) {
                (Key::EventId, Value::Str(s)) => event_id.replace(s).is_none(),
                (Key::RoomId, Value::Str(s)) => room_id.replace(s).is_none(),
                (Key::CreatorId, Value::Str(s)) => creator_id.replace(s).is_none(),
                (Key::SenderId, Value::Str(s)) => sender_id.replace(s).is_none(),
                (Key::GiftId, Value::Int(n)) => gift_id.replace(n).is_none(),
                (Key::GiftType, Value::Int(n)) => gift_type.replace(n).is_none(),
                (Key::DiamondCount, Value::Int(n)) => diamond_count.replace(n).is_none(),
                (Key::RepeatCount, Value::Int(n)) => repeat_count.replace(n).is_none(),
                (Key::RepeatEnd, Value::Bool(v)) => repeat_end.replace(v).is_none(),
                (Key::Ts, Value::Int(n)) => ts.replace(n).is_none(),
                (Key::Region, Value::Str(s)) => region.replace(s).is_none(),
                (Key::GroupId, Value::Str(s)) => group_id.replace(s).is_none(),
                _ => false,
            };
            if !fresh {
                return None;
            }
            self.ws();
            match self.b.get(self.i)? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return None;
        }
        Some(Event {
            event_id: Cow::Borrowed(event_id?), room_id: Cow::Borrowed(room_id?),
            creator_id: Cow::Borrowed(creator_id?), sender_id: Cow::Borrowed(sender_id?), gift_id: gift_id?,
            gift_type: gift_type?, diamond_count: diamond_count?, repeat_count: repeat_count?,
            repeat_end: repeat_end?, ts: ts?, region: Cow::Borrowed(region.unwrap_or("")),
            group_id: Cow::Borrowed(group_id.unwrap_or("")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = br#"{"event_id":"e1","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1,"repeat_count":3,"repeat_end":false,"ts":1000,"region":"US","extra":[1,{"a":2}]}"#;

    const GOOD_FLAT: &[u8] = b" {\"event_id\":\"e1\", \"room_id\":\"r\xc3\xa9\",\"creator_id\":\"c\",\"sender_id\":\"s\",\"gift_id\":5,\"gift_type\":1,\"diamond_count\":1,\"repeat_count\":3,\"repeat_end\":true,\"ts\":0,\"region\":\"US\",\"group_id\":\"g\"}\n";

    #[test]
    fn accepts_a_valid_event_and_ignores_unknown_fields() {
        let ev = decode_fast(GOOD, 1 << 20, 32).unwrap();
        assert_eq!(ev.event_id, "e1");
        assert_eq!(ev.group_id, "");
        assert_eq!(ev.repeat_count, 3);
    }

    #[test]
    fn the_flat_scanner_and_serde_agree_on_a_plain_record() {
        let fast = FlatScanner::new(GOOD_FLAT).event().unwrap();
        let full: Event = serde_json::from_slice(GOOD_FLAT).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{full:?}"));
        assert!(FlatScanner::new(GOOD).event().is_none()); // an unknown field: serde's job
        // msgspec reads -0 as the integer 0 (serde_json calls it a float): the scanner agrees with msgspec.
        let minus_zero = String::from_utf8_lossy(GOOD_FLAT).replace("\"ts\":0", "\"ts\":-0");
        assert_eq!(FlatScanner::new(minus_zero.as_bytes()).event().unwrap().ts, 0);
        for doubtful in [&br#"{"event_id":"a\"b"}"#[..], br#"{"ts":1.0}"#, br#"{"ts":01}"#, br#"{"a":1} x"#, b"{}"] {
            assert!(FlatScanner::new(doubtful).event().is_none());
        }
    }

    #[test]
    fn every_key_matches_near_the_end_of_a_record_too() {
        // A key within 16 bytes of the end takes the slice compare, any other the word compare.
        for (name, _) in KEYS {
            for tail in ["", ":1}", ":1,\"ts\":1}"] {
                let record = format!("\"{}{tail}", std::str::from_utf8(name).unwrap());
                let mut scanner = FlatScanner::new(record.as_bytes());
                assert!(scanner.key().is_some(), "{record}");
                assert_eq!(scanner.i, 1 + name.len(), "{record}");
                let wrong = record.replacen('_', "-", 1).replacen("ts", "tz", 1).replacen("region", "regiom", 1);
                assert!(FlatScanner::new(wrong.as_bytes()).key().is_none(), "{wrong}");
            }
        }
    }

    #[test]
    fn the_region_is_optional() {
        let without = String::from_utf8_lossy(GOOD_FLAT).replace(",\"region\":\"US\"", "");
        assert!(!without.contains("region"));
        let fast = FlatScanner::new(without.as_bytes()).event().unwrap();
        let full: Event = serde_json::from_slice(without.as_bytes()).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{full:?}"));
        assert_eq!(fast.region, "");
        let empty = String::from_utf8_lossy(GOOD_FLAT).replace("\"region\":\"US\"", "\"region\":\"\"");
        assert_eq!(FlatScanner::new(empty.as_bytes()).event().unwrap().region, "");
        let unflat = String::from_utf8_lossy(GOOD).replace(",\"region\":\"US\"", "");
        assert_eq!(decode_fast(unflat.as_bytes(), 1 << 20, 32).unwrap().region, "");
        for bad in ["null", "1", "[]"] {
            let wrong = String::from_utf8_lossy(GOOD).replace("\"US\"", bad);
            assert!(decode_fast(wrong.as_bytes(), 1 << 20, 32).is_none(), "{wrong}");
        }
    }

    #[test]
    fn every_key_is_recognised_and_near_misses_are_not() {
        for (name, _) in KEYS {
            let quoted = [b"\"", name].concat();
            let mut scanner = FlatScanner::new(&quoted);
            assert!(scanner.key().is_some(), "{}", String::from_utf8_lossy(name));
            assert_eq!(scanner.i, quoted.len());
            let mut near = quoted.clone();
            near.insert(near.len() - 1, b'x'); // "event_idx"
            assert!(FlatScanner::new(&near).key().is_none());
        }
    }

    #[test]
    fn nesting_deeper_than_the_bound_is_declined() {
        let deep = |depth: usize| {
            let mut r = GOOD[..GOOD.len() - 1].to_vec();
            r.extend_from_slice(b",\"y\":");
            r.extend(std::iter::repeat_n(b'[', depth - 1));
            r.extend_from_slice(b"\"[{\\\"]\"");  // brackets inside a string (with an escaped quote) do not count
            r.extend(std::iter::repeat_n(b']', depth - 1));
            r.push(b'}');
            r
        };
        // GOOD's "extra":[1,{"a":2}] is three deep
        assert_eq!(first_violation(GOOD, 3), None);
        assert_eq!(first_violation(GOOD, 2), Some(Violation::TooDeep));
        assert!(decode_fast(&deep(32), 1 << 20, 32).is_some());
        assert_eq!(first_violation(&deep(33), 32), Some(Violation::TooDeep));
        assert!(decode_fast(&deep(33), 1 << 20, 32).is_none());
        assert!(decode_fast(&deep(150), 1 << 20, 32).is_none());
    }

    #[test]
    fn a_repeated_key_at_any_depth_is_declined_and_the_first_violation_is_reported() {
        let with = |field: &[u8]| [&GOOD[..GOOD.len() - 1], b",", field, b"}"].concat();
        for (field, want) in [
            (&br#""diamond_count":9"#[..], Some(Violation::DuplicateKey)), // serde's derive errors, FlatScanner declines
            (br#""extra":2"#, Some(Violation::DuplicateKey)),            // an unknown key: serde ignores it
            (br#""y":{"a":1,"\u0061":2}"#, Some(Violation::DuplicateKey)),
            (br#""y":[{"a":1},{"a":2}],"z":{"a":{"a":"a"}}"#, None),     // one name in different objects
            (br#""y":[[[[{"a":1,"a":2}]]]]"#, Some(Violation::TooDeep)),  // deeper than 4 comes first
            (br#""y":{"a":1,"a":[[[[[]]]]]}"#, Some(Violation::DuplicateKey)),
        ] {
            assert_eq!(first_violation(&with(field), 4), want, "{}", String::from_utf8_lossy(field));
        }
        assert!(decode_fast(&with(br#""extra":2"#), 1 << 20, 32).is_none());
    }

    #[test]
    fn ids_are_held_to_the_pattern() {
        for good in ["1", "A-z_09", &"x".repeat(64)] {
            assert!(id_ok(good) && group_ok(good), "{good}");
        }
        assert!(group_ok("") && !id_ok(""));
        for bad in ["a\u{1f}b", "a\n", "a b", "\u{e9}", "a.b", &"x".repeat(65)] {
            assert!(!id_ok(bad) && !group_ok(bad), "{bad:?}");
        }
        assert!(FlatScanner::new(GOOD_FLAT).event().is_some_and(|ev| !ev.valid())); // room "r\u{e9}"
    }

    #[test]
    fn find_quote_finds_the_first_quote() {
        for len in 0..40 {
            for at in 0..len {
                let mut b = vec![b'a'; len];
                b[at] = b'"';
                if at + 3 < len {
                    b[at + 3] = b'"';
                }
                assert_eq!(find_quote(&b), Some(at));
            }
            assert_eq!(find_quote(&vec![b'x'; len]), None);
        }
    }

    #[test]
    fn leaves_doubtful_records_to_python() {
        assert!(decode_fast(GOOD, 10, 32).is_none()); // oversize
        for bad in [
            &br#"{"event_id":"","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1,"repeat_count":3,"repeat_end":false,"ts":1000,"region":"US"}"#[..],
            br#"{"event_id":"e","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":0,"repeat_count":3,"repeat_end":false,"ts":1000,"region":"US"}"#,
            br#"{"event_id":"e","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1.0,"repeat_count":3,"repeat_end":false,"ts":1000,"region":"US"}"#,
            br#"{"event_id":"e","event_id":"f","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1,"repeat_count":3,"repeat_end":false,"ts":1000,"region":"US"}"#,
            br#"{"event_id":"e","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1,"repeat_count":3,"repeat_end":false,"ts":1000,"region":"US","group_id":null}"#,
            b"[1]",
            b"not json",
        ] {
            assert!(decode_fast(bad, 1 << 20, 32).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn spans_give_the_decoded_event_again() {
        let escaped = br#"{"event_id":"e\u0031","room_id":"r","creator_id":"c","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1,"repeat_count":3,"repeat_end":false,"ts":1000}"#;
        let flat = br#"{"event_id":"e1","room_id":"r","creator_id":"c7","sender_id":"s","gift_id":5,"gift_type":1,"diamond_count":1,"repeat_count":3,"repeat_end":true,"group_id":"g","ts":7,"region":"JP"}"#;
        assert!(FlatScanner::new(flat).event().is_some());
        for raw in [GOOD, &flat[..]] {
            let ev = decode_fast(raw, 1 << 20, 32).unwrap();
            let again = EventSpans::of(&ev, raw).expect("every string is a slice of the record").event(raw);
            assert_eq!(format!("{again:?}"), format!("{ev:?}"));
        }
        let ev = decode_fast(escaped, 1 << 20, 32).unwrap();
        assert_eq!(ev.event_id, "e1");
        assert!(EventSpans::of(&ev, escaped).is_none()); // an unescaped string is not in the record: decode again
        let other = flat.to_vec();
        assert!(EventSpans::of(&decode_fast(GOOD, 1 << 20, 32).unwrap(), &other).is_none()); // another record's
    }
}
