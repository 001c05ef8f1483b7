//! The few msgpack forms the changelog uses, written exactly as msgspec writes them (the smallest form of
//! each int, string and container header), so both engines produce byte-identical changelog records.

pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn new() -> Self {
        Writer(Vec::with_capacity(64))
    }

    pub fn nil(&mut self) {
        self.0.push(0xc0);
    }

    pub fn bool(&mut self, v: bool) {
        self.0.push(if v { 0xc3 } else { 0xc2 });
    }

    /// An integer; None when msgpack cannot hold it (msgspec raises then too).
    pub fn int(&mut self, v: i128) -> Option<()> {
        let out = &mut self.0;
        if v >= 0 {
            match v {
                0..=0x7f => out.push(v as u8),
                0x80..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
                0x100..=0xffff => {
                    out.push(0xcd);
                    out.extend_from_slice(&(v as u16).to_be_bytes());
                }
                0x1_0000..=0xffff_ffff => {
                    out.push(0xce);
                    out.extend_from_slice(&(v as u32).to_be_bytes());
                }
                _ => {
                    let v = u64::try_from(v).ok()?;
                    out.push(0xcf);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        } else {
            match v {
                -32..=-1 => out.push(v as i8 as u8),
                -128..=-33 => out.extend_from_slice(&[0xd0, v as i8 as u8]),
                -32768..=-129 => {
                    out.push(0xd1);
                    out.extend_from_slice(&(v as i16).to_be_bytes());
                }
                -2_147_483_648..=-32769 => {
                    out.push(0xd2);
                    out.extend_from_slice(&(v as i32).to_be_bytes());
                }
                _ => {
                    let v = i64::try_from(v).ok()?;
                    out.push(0xd3);
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        Some(())
    }

    pub fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => {
                self.int(v as i128).expect("an i64 fits");
            }
            None => self.nil(),
        }
    }

    pub fn str(&mut self, s: &str) {
        let n = s.len();
        let out = &mut self.0;
        match n {
            0..=31 => out.push(0xa0 | n as u8),
            32..=0xff => out.extend_from_slice(&[0xd9, n as u8]),
            0x100..=0xffff => {
                out.push(0xda);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(0xdb);
                out.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        out.extend_from_slice(s.as_bytes());
    }

    fn header(&mut self, n: usize, fix: u8, b16: u8, b32: u8) {
        match n {
            0..=15 => self.0.push(fix | n as u8),
            16..=0xffff => {
                self.0.push(b16);
                self.0.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.0.push(b32);
                self.0.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
    }

    pub fn array(&mut self, n: usize) {
        self.header(n, 0x90, 0xdc, 0xdd);
    }
}

/// Reads the same forms back (a changelog restore). Every method is None on bytes it does not expect, so a
/// corrupt value is an error, never a wrong number.
pub struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, i: 0 }
    }

    pub fn done(&self) -> bool {
        self.i == self.b.len()
    }

    fn byte(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0u64, |acc, &x| acc << 8 | x as u64))
    }

    /// Peek: is the next value nil? (consumes it when it is)
    pub fn nil(&mut self) -> bool {
        if self.b.get(self.i) == Some(&0xc0) {
            self.i += 1;
            return true;
        }
        false
    }

    /// Is the next value a map (without consuming it)?
    pub fn is_map(&self) -> bool {
        matches!(self.b.get(self.i), Some(0x80..=0x8f | 0xde | 0xdf))
    }

    pub fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }

    pub fn int(&mut self) -> Option<i128> {
        let t = self.byte()?;
        Some(match t {
            0x00..=0x7f => t as i128,
            0xe0..=0xff => t as i8 as i128,
            0xcc => self.be(1)? as i128,
            0xcd => self.be(2)? as i128,
            0xce => self.be(4)? as i128,
            0xcf => self.be(8)? as i128,
            0xd0 => self.be(1)? as u8 as i8 as i128,
            0xd1 => self.be(2)? as u16 as i16 as i128,
            0xd2 => self.be(4)? as u32 as i32 as i128,
            0xd3 => self.be(8)? as i64 as i128,
            _ => return None,
        })
    }

    pub fn i64(&mut self) -> Option<i64> {
        i64::try_from(self.int()?).ok()
    }

    pub fn opt_i64(&mut self) -> Option<Option<i64>> {
        if self.nil() {
            return Some(None);
        }
        self.i64().map(Some)
    }

    pub fn str(&mut self) -> Option<&'a str> {
        let t = self.byte()?;
        let n = match t {
            0xa0..=0xbf => (t & 0x1f) as usize,
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        };
        text(self.take(n)?)
    }

    fn header(&mut self, fix: u8, b16: u8, b32: u8) -> Option<usize> {
        let t = self.byte()?;
        match t {
            _ if t & 0xf0 == fix => Some((t & 0x0f) as usize),
            _ if t == b16 => Some(self.be(2)? as usize),
            _ if t == b32 => Some(self.be(4)? as usize),
            _ => None,
        }
    }

    pub fn array(&mut self) -> Option<usize> {
        self.header(0x90, 0xdc, 0xdd)
    }

    pub fn map(&mut self) -> Option<usize> {
        self.header(0x80, 0xde, 0xdf)
    }
}

/// The bytes as text. Most changelog texts are ASCII ids: one ASCII pass is cheaper than the UTF-8 check.
pub fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(vs: &[i128]) -> String {
        let mut w = Writer::new();
        w.array(vs.len());
        for &v in vs {
            w.int(v).unwrap();
        }
        w.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn ints_take_msgspecs_smallest_forms() {
        // msgspec.msgpack.encode([2**63-1, -1, -33, 128, 255, 256, 65536, 2**32, -129, -32769, -2**31-1])
        assert_eq!(ints(&[(1 << 63) - 1, -1, -33, 128, 255, 256, 65536, 1 << 32, -129, -32769, -(1 << 31) - 1]),
                   "9bcf7fffffffffffffffffd0dfcc80ccffcd0100ce00010000cf0000000100000000d1ff7fd2ffff7fffd3ffffffff7fffffff");
        assert!(Writer::new().int(1 << 64).is_none());
        assert!(Writer::new().int(-(1 << 63) - 1).is_none());
    }

    #[test]
    fn the_reader_reads_what_the_writer_writes() {
        let vals = [(1i128 << 63) - 1, -1, -33, 128, 255, 256, 65536, 1 << 32, -129, -32769, -(1 << 31) - 1, 0, 127];
        let mut w = Writer::new();
        w.array(vals.len() + 3);
        for &v in &vals {
            w.int(v).unwrap();
        }
        w.str(&"x".repeat(40));
        w.bool(true);
        w.nil();
        let mut r = Reader::new(&w.0);
        assert_eq!(r.array(), Some(vals.len() + 3));
        for &v in &vals {
            assert_eq!(r.int(), Some(v));
        }
        assert_eq!(r.str(), Some("x".repeat(40).as_str()));
        assert_eq!(r.bool(), Some(true));
        assert_eq!(r.opt_i64(), Some(None));
        assert!(r.done());
        assert_eq!(Reader::new(&[0xc1]).int(), None);
        assert_eq!(Reader::new(&[0xa5, b'a']).str(), None); // cut short
    }
}
