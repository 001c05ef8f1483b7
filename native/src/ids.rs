//! Compact keys for the two biggest tables: the dedupe ids and the streaks.
//!
//! Ids are strings to the contract, but real ones are almost always decimal numbers (snowflake-style,
//! up to 19 digits). An id whose text is exactly the canonical decimal form of a number (no sign, no
//! leading zero, at most 19 digits) is held as that number; any other id keeps its text. The mapping is
//! one-to-one, so two ids are equal exactly when their texts are, and the text comes back unchanged when
//! it is written out (changelog, snapshots). Holding numbers saves an allocation per id and hashes and
//! compares 8 bytes instead of a string.

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

/// A client's id (event, payout): a number when its text is a canonical decimal, else the text.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[allow(clippy::box_collection)] // on purpose: a thin pointer, see below
pub enum Id {
    Num(u64),
    Text(Box<String>), // a thin box keeps an Id at 16 bytes; text ids are rare
}

impl Id {
    pub fn new(s: &str) -> Id {
        match canonical_number(s) {
            Some(n) => Id::Num(n),
            None => Id::Text(Box::new(s.to_owned())),
        }
    }
}

impl Id {
    /// Call `f` with the id's text, written on the stack for a number.
    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Id::Num(n) => f(itoa::Buffer::new().format(*n)),
            Id::Text(s) => f(s),
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Num(n) => f.write_str(itoa::Buffer::new().format(*n)),
            Id::Text(s) => f.write_str(s),
        }
    }
}

/// A streak's key: (room, sender, gift, group), whose text is the four joined by U+001F as in
/// stream/engine/reference.py. When room, sender and group (or its absence) are canonical numbers the key is held as
/// numbers; otherwise as the joined text. Like `Id`, equal keys have equal texts and vice versa: a text key
/// is only made when some part is not a canonical number, and then its text cannot be split into four
/// canonical parts (a part holding U+001F adds separators; any other part stays non-canonical). Keys order
/// as their texts do (the streak timers break ties by key, like the Python engine's heap).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum StreakKey {
    Num { room: u64, sender: u64, gift: i64, group: u64 }, // group NO_GROUP: none
    Text(Box<str>),
}

impl StreakKey {
    pub fn new(room: &str, sender: &str, gift: i64, group: &str) -> StreakKey {
        let group_num = if group.is_empty() { Some(NO_GROUP) } else { canonical_number(group) };
        match (canonical_number(room), canonical_number(sender), group_num) {
            (Some(room), Some(sender), Some(group)) => StreakKey::Num { room, sender, gift, group },
            _ => StreakKey::Text(format!("{room}{STREAK_KEY_SEP}{sender}{STREAK_KEY_SEP}{gift}{STREAK_KEY_SEP}{group}")
                .into()),
        }
    }

    /// The key of a joined text (a snapshot's or changelog's key): numbers when `new` would have made them.
    pub fn parse(text: &str) -> StreakKey {
        let parts: Vec<&str> = text.split(STREAK_KEY_SEP).collect();
        if let [room, sender, gift, group] = parts[..] {
            if let Ok(g) = gift.parse::<i64>() {
                let key = StreakKey::new(room, sender, g, group);
                if matches!(key, StreakKey::Num { .. }) && itoa::Buffer::new().format(g) == gift {
                    return key;
                }
            }
        }
        StreakKey::Text(text.into())
    }

    /// Whether the streak has a group id (without one, nothing tells a straggler from a new streak).
    pub fn has_group(&self) -> bool {
        match self {
            StreakKey::Num { group, .. } => *group != NO_GROUP,
            StreakKey::Text(s) => !s.ends_with(STREAK_KEY_SEP),
        }
    }
}

/// The longest text of a numeric key: 19 + 19 + 20 + 19 digits and 3 separators.
const KEY_TEXT_MAX: usize = 80;

impl StreakKey {
    /// Call `f` with the key's text, written on the stack for a numeric key.
    fn with_text<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            StreakKey::Num { .. } => {
                let mut buf = [0u8; KEY_TEXT_MAX];
                let mut w = &mut buf[..];
                std::io::Write::write_fmt(&mut w, format_args!("{self}")).expect("a numeric key fits");
                let len = KEY_TEXT_MAX - w.len();
                f(&buf[..len])
            }
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
        assert!(matches!(Id::new("01"), Id::Text(_)));
        assert_ne!(Id::new("01"), Id::new("1"));
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
        assert!(matches!(StreakKey::parse("1\x1f2\x1f+3\x1f4"), StreakKey::Text(_)));
        // Keys order as their texts.
        let mut keys: Vec<StreakKey> = ["9\x1f1\x1f1\x1f", "10\x1f1\x1f1\x1f2", "a\x1f1\x1f1\x1f", "10\x1f1\x1f1\x1f"]
            .iter().map(|t| StreakKey::parse(t)).collect();
        keys.sort();
        let texts: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
    }
}
