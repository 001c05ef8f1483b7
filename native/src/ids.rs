//! Compact keys for the two biggest tables: the dedupe ids and the streaks.
//!
//! Ids are strings to the contract, but real ones are almost always decimal numbers (snowflake-style,
//! up to 19 digits). An id whose text is exactly the canonical decimal form of a number (no sign, no
//! leading zero, at most 19 digits) is held as that number; any other id keeps its text. The mapping is
//! one-to-one, so two ids are equal exactly when their texts are, and the text comes back unchanged when
//! it is written out (changelog, snapshots). Holding numbers saves an allocation per id and hashes and
//! compares 8 bytes instead of a string. Other ids of at most 14 bytes (handles, short generated ids) are held
//! inline, so they allocate nothing either; only longer texts (UUIDs, say) are on the heap.

use std::fmt::{self, Write as _};

/// Between the parts of a streak key's text (stream.state.changelog_schema.STREAK_KEY_SEP).
pub const STREAK_KEY_SEP: char = '\x1f';

/// Numbers below this have at most 19 digits; it also marks "no group" in a streak key.
const NO_GROUP: u64 = u64::MAX;

/// The number whose canonical decimal text is `s`, if there is one.
fn canonical_number(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 19 || (b[0] == b'0' && b.len() > 1) {
        return None;
    }
    let mut n: u64 = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + d as u64; // 19 digits never overflow a u64
    }
    Some(n)
}

/// A client's id (event, payout): a number when its text is a canonical decimal, else the text (inline when
/// short). Each text has exactly one form (`Id::new` picks it), so the derived equality and hash are the texts'.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[allow(clippy::box_collection)] // on purpose: a thin pointer, see below
pub enum Id {
    Num(u64),
    Short(InlineText<ID_INLINE_MAX>),
    Text(Box<String>), // a thin box keeps an Id at 16 bytes
}

/// The longest text an Id holds inline: what fits in its 16 bytes beside the tag and the length.
const ID_INLINE_MAX: usize = 14;

/// A text of at most N bytes, held in place (no allocation); the bytes after it are zero, so the derived
/// equality and hash are the text's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct InlineText<const N: usize> {
    len: u8,
    bytes: [u8; N],
}

impl<const N: usize> InlineText<N> {
    fn new(s: &str) -> Option<Self> {
        let mut bytes = [0u8; N];
        bytes.get_mut(..s.len())?.copy_from_slice(s.as_bytes());
        Some(InlineText { len: s.len() as u8, bytes })
    }

    fn as_str(&self) -> &str {
        // SAFETY: `new` is the only maker, and it copies the bytes of a str.
        unsafe { std::str::from_utf8_unchecked(&self.bytes[..usize::from(self.len)]) }
    }
}

impl Id {
    pub fn new(s: &str) -> Id {
        match canonical_number(s) {
            Some(n) => Id::Num(n),
            None => InlineText::new(s).map_or_else(|| Id::Text(Box::new(s.to_owned())), Id::Short),
        }
    }
}

impl Id {
    /// Call `f` with the id's text, written on the stack for a number.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Id::Num(n) => f(itoa::Buffer::new().format(*n)),
            Id::Short(t) => f(t.as_str()),
            Id::Text(s) => f(s),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_str(|s| f.write_str(s))
    }
}

/// A streak's key: (room, sender, gift, group), whose text is the four joined by U+001F as in
/// stream/engine/reference.py. When room, sender and group (or its absence) are canonical numbers the key is held as
/// numbers; otherwise as the joined text. Like `Id`, equal keys have equal texts and vice versa: a text key
/// is only made when some part is not a canonical number, and then its text cannot be split into four
/// canonical parts (a part holding U+001F adds separators; any other part stays non-canonical). A text key
/// of at most KEY_INLINE_MAX bytes is held inline. Keys order as their texts do (the streak timers break
/// ties by key, like the Python engine's heap).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum StreakKey {
    Num { room: u64, sender: u64, gift: i64, group: u64 }, // group NO_GROUP: none
    Short(InlineText<KEY_INLINE_MAX>),
    Text(Box<str>),
}

/// The longest text a StreakKey holds inline: what fits in its 40 bytes (the numeric form's size) beside the
/// tag and the length.
const KEY_INLINE_MAX: usize = 38;

impl StreakKey {
    fn text(text: &str) -> StreakKey {
        InlineText::new(text).map_or_else(|| StreakKey::Text(text.into()), StreakKey::Short)
    }
}

impl StreakKey {
    pub fn new(room: &str, sender: &str, gift: i64, group: &str) -> StreakKey {
        StreakKey::numeric(room, sender, gift, group).unwrap_or_else(|| {
            StreakKey::text(&format!("{room}{STREAK_KEY_SEP}{sender}{STREAK_KEY_SEP}{gift}{STREAK_KEY_SEP}{group}"))
        })
    }

    /// The numeric form, when room, sender and group (or its absence) are canonical numbers.
    fn numeric(room: &str, sender: &str, gift: i64, group: &str) -> Option<StreakKey> {
        let group = if group.is_empty() { NO_GROUP } else { canonical_number(group)? };
        Some(StreakKey::Num { room: canonical_number(room)?, sender: canonical_number(sender)?, gift, group })
    }

    /// The key of a joined text (a snapshot's or changelog's key): numbers when `new` would have made them.
    pub fn parse(text: &str) -> StreakKey {
        // The separators' places, in one pass over the bytes (the separator is ASCII: a char boundary).
        let (mut seps, mut n) = ([0usize; 3], 0);
        for (i, &b) in text.as_bytes().iter().enumerate() {
            if b == STREAK_KEY_SEP as u8 {
                if n == seps.len() {
                    return StreakKey::text(text); // more than four parts
                }
                (seps[n], n) = (i, n + 1);
            }
        }
        if n == seps.len() {
            let [a, b, c] = seps;
            let (room, sender, gift, group) = (&text[..a], &text[a + 1..b], &text[b + 1..c], &text[c + 1..]);
            if let Ok(g) = gift.parse::<i64>() {
                if itoa::Buffer::new().format(g) == gift {
                    if let Some(key) = StreakKey::numeric(room, sender, g, group) {
                        return key;
                    }
                }
            }
        }
        StreakKey::text(text)
    }

    /// Whether the streak has a group id (without one, nothing tells a straggler from a new streak).
    pub fn has_group(&self) -> bool {
        match self {
            StreakKey::Num { group, .. } => *group != NO_GROUP,
            StreakKey::Short(t) => !t.as_str().ends_with(STREAK_KEY_SEP),
            StreakKey::Text(s) => !s.ends_with(STREAK_KEY_SEP),
        }
    }
}

/// The longest text of a numeric key: 19 + 19 + 20 + 19 digits and 3 separators.
const KEY_TEXT_MAX: usize = 80;

impl StreakKey {
    /// Call `f` with the key's text, written on the stack for a numeric key.
    pub fn with_text<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            StreakKey::Num { .. } => {
                let mut buf = [0u8; KEY_TEXT_MAX];
                let mut w = &mut buf[..];
                std::io::Write::write_fmt(&mut w, format_args!("{self}")).expect("a numeric key fits");
                let len = KEY_TEXT_MAX - w.len();
                f(&buf[..len])
            }
            StreakKey::Short(t) => f(t.as_str().as_bytes()),
            StreakKey::Text(s) => f(s.as_bytes()),
        }
    }
}

impl Ord for StreakKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.with_text(|a| other.with_text(|b| a.cmp(b)))
    }
}

impl PartialOrd for StreakKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for StreakKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreakKey::Num { room, sender, gift, group } => {
                let mut b = itoa::Buffer::new();
                f.write_str(b.format(*room))?;
                f.write_char(STREAK_KEY_SEP)?;
                f.write_str(b.format(*sender))?;
                f.write_char(STREAK_KEY_SEP)?;
                f.write_str(b.format(*gift))?;
                f.write_char(STREAK_KEY_SEP)?;
                if *group != NO_GROUP {
                    f.write_str(b.format(*group))?;
                }
                Ok(())
            }
            StreakKey::Short(t) => f.write_str(t.as_str()),
            StreakKey::Text(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_keep_equality_of_texts() {
        for s in ["0", "7", "1992986610555159599", "9999999999999999999", "10000000000000000000", "007", "-1",
                  "12a", "", "abc", "1 ", "é"] {
            assert_eq!(Id::new(s).to_string(), s);
        }
        assert!(matches!(Id::new("1992986610555159599"), Id::Num(_)));
        assert!(matches!(Id::new("10000000000000000000"), Id::Text(_)));
        assert!(matches!(Id::new("01"), Id::Short(_)));
        assert_ne!(Id::new("01"), Id::new("1"));
    }

    #[test]
    fn text_keys_are_inline_up_to_38_bytes_and_order_as_their_texts() {
        assert_eq!(std::mem::size_of::<StreakKey>(), 40);
        let room = "r991028"; // 7 + 1 + 9 + 1 + 4 + 1 + 15 = 38 bytes, then 39
        for (group, inline) in [("g991028-2222222", true), ("g991028-22222222", false), ("", true)] {
            let key = StreakKey::new(room, "v75362433", 7934, group);
            let text = format!("{room}\x1fv75362433\x1f7934\x1f{group}");
            assert_eq!(matches!(key, StreakKey::Short(_)), inline, "{text:?}");
            assert_eq!(key.to_string(), text);
            assert_eq!(StreakKey::parse(&text), key);
            assert_eq!(key.has_group(), !group.is_empty());
        }
        // inline and heap keys order together as their texts
        assert_keys_sort_as_their_texts(&["r1\x1fv1\x1f1\x1fg1", "r1\x1fv1\x1f1\x1f", "9\x1f9\x1f1\x1f9",
            "r1\x1fv1\x1f1\x1fg1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "r0\x1fv1\x1f1\x1fg1-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]);
    }

    fn assert_keys_sort_as_their_texts(texts: &[&str]) {
        let mut keys: Vec<StreakKey> = texts.iter().map(|t| StreakKey::parse(t)).collect();
        keys.sort();
        let sorted_keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let mut sorted_texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        sorted_texts.sort();
        assert_eq!(sorted_keys, sorted_texts);
    }

    #[test]
    fn short_texts_are_held_inline_and_equal_as_their_texts() {
        assert_eq!(std::mem::size_of::<Id>(), 16);
        let (at_most, longer) = ("abcdefghijkl\u{e9}", "abcdefghijklm\u{e9}"); // 14 and 15 bytes
        for s in ["", "a", "568836p0", "abcdefghijklmn", "abcdefghijklmno", "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
                  at_most, longer, "123e4567-e89b-12d3-a456-426614174000"] {
            let id = Id::new(s);
            assert_eq!(id.to_string(), s);
            assert_eq!(matches!(id, Id::Short(_)), s.len() <= ID_INLINE_MAX, "{s:?}");
            assert_eq!(id, Id::new(s));
        }
        assert_ne!(Id::new("ab"), Id::new("ab\0"));
        assert_ne!(Id::new("abcdefghijklmn"), Id::new("abcdefghijklmno"));
        use std::hash::BuildHasher;
        let hash = |id: &Id| foldhash::fast::FixedState::with_seed(1).hash_one(id);
        assert_eq!(hash(&Id::new("568836p0")), hash(&Id::new("568836p0")));
        assert_ne!(hash(&Id::new("568836p0")), hash(&Id::new("568836p1")));
    }

    #[test]
    fn streak_keys_round_trip_through_their_text() {
        let cases = [("1", "2", 3, "4"), ("1", "2", 3, ""), ("a", "2", 3, "4"), ("1", "2", -3, "04"),
                     ("1\x1f2", "3", 4, ""), ("1", "2\x1f3", 4, "5"), ("0", "0", 0, "0")];
        for (room, sender, gift, group) in cases {
            let key = StreakKey::new(room, sender, gift, group);
            let text = format!("{room}\x1f{sender}\x1f{gift}\x1f{group}");
            assert_eq!(key.to_string(), text);
            assert_eq!(StreakKey::parse(&text), key);
            assert_eq!(key.has_group(), !text.ends_with('\x1f'));
        }
        // Texts that split differently but join the same are the same key, as in the Python engine.
        assert_eq!(StreakKey::new("1\x1f2", "3", 4, ""), StreakKey::new("1", "2\x1f3", 4, ""));
        assert!(matches!(StreakKey::parse("1\x1f2\x1f+3\x1f4"), StreakKey::Short(_)));
        assert!(matches!(StreakKey::parse("1\x1f2\x1f3"), StreakKey::Short(_))); // three parts: held as its text
        // Keys order as their texts.
        assert_keys_sort_as_their_texts(&["9\x1f1\x1f1\x1f", "10\x1f1\x1f1\x1f2", "a\x1f1\x1f1\x1f", "10\x1f1\x1f1\x1f"]);
    }
}
