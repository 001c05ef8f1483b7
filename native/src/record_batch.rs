//! Kafka record batches (message format v2) straight from a fetch response's bytes: the offsets, values and
//! timestamps of each batch's records, as aiokafka would read them, without a Python object per record.
//! Batches are cut exactly like aiokafka's MemoryRecords cuts them; a batch this parser does not handle
//! (an older format, compression, anything malformed) comes back as None and the caller lets aiokafka
//! read that one.

pub struct Columns<'a> {
    pub offsets: Vec<i64>,
    pub keys: Vec<Option<&'a [u8]>>,
    pub values: Vec<Option<&'a [u8]>>,
    pub timestamps: Vec<i64>,
}

const LOG_OVERHEAD: usize = 12; // base offset (8) + batch length (4)
const RECORDS_START: usize = 61; // the v2 batch header (aiokafka rejects anything under 26 bytes as corrupt)

/// Every complete batch in `buf`, in order (a partial batch at the end is left out, like aiokafka does).
pub fn split_batches(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= LOG_OVERHEAD {
        let length = i32::from_be_bytes(buf[pos + 8..pos + 12].try_into().expect("4 bytes"));
        let Some(end) = usize::try_from(length).ok().and_then(|l| (pos + LOG_OVERHEAD).checked_add(l)) else {
            break;
        };
        if end > buf.len() {
            break;
        }
        out.push(&buf[pos..end]);
        pos = end;
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }

    fn varlong(&mut self) -> Option<i64> {
        // zigzag-encoded base-128 varint, at most 10 bytes
        let mut raw: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            raw |= ((byte & 0x7f) as u64).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        None
    }

    /// A length-prefixed byte string; None inside Some for a null (-1).
    fn nullable(&mut self) -> Option<Option<&'a [u8]>> {
        let n = self.varlong()?;
        if n == -1 {
            return Some(None);
        }
        Some(Some(self.bytes(usize::try_from(n).ok()?)?))
    }
}

/// Whether `read_batch` can read the batch's format (v2, no compression), from its header alone: the CRC and
/// the records are checked when it is read.
pub fn readable(batch: &[u8]) -> bool {
    batch.len() >= RECORDS_START && batch[16] == 2 && batch[22] & 0x07 == 0
}

/// The records of one v2 batch with no compression whose CRC-32C holds; None for anything else (the caller's
/// aiokafka path then checks the CRC itself and reports a corrupt batch).
pub fn read_batch(batch: &[u8]) -> Option<Columns<'_>> {
    if !readable(batch) {
        return None; // an older format, or compressed: aiokafka reads it
    }
    // The CRC covers everything from the attributes on. Checked here with the CPU's CRC32 instruction:
    // aiokafka's own check is a table-driven loop, ~4% of the worker's CPU at 130,000 records/s.
    let crc = u32::from_be_bytes(batch[17..21].try_into().expect("4 bytes"));
    if crc32c::crc32c(&batch[21..]) != crc {
        return None;
    }
    let be64 = |at: usize| i64::from_be_bytes(batch[at..at + 8].try_into().expect("8 bytes"));
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let log_append_time = attributes & 0x08 != 0;
    let base_offset = be64(0);
    let base_timestamp = be64(27);
    let max_timestamp = be64(35);
    let count = i32::from_be_bytes(batch[57..61].try_into().expect("4 bytes"));
    let count = usize::try_from(count).ok()?;
    let mut r = Reader { b: batch, i: RECORDS_START };
    let cap = count.min(batch.len() / 7); // a record takes at least 7 bytes: never trust the count for memory
    let mut cols = Columns { offsets: Vec::with_capacity(cap), keys: Vec::with_capacity(cap), values: Vec::with_capacity(cap),
                             timestamps: Vec::with_capacity(cap) };
    for _ in 0..count {
        let length = usize::try_from(r.varlong()?).ok()?;
        let end = r.i.checked_add(length)?;
        if end > batch.len() {
            return None;
        }
        r.bytes(1)?; // record attributes (unused)
        let ts_delta = r.varlong()?;
        let offset_delta = r.varlong()?;
        let key = r.nullable()?;
        let value = r.nullable()?;
        let headers = r.varlong()?;
        for _ in 0..headers {
            let key_len = usize::try_from(r.varlong()?).ok()?;
            r.bytes(key_len)?;
            r.nullable()?;
        }
        if r.i != end {
            return None; // the record's length disagrees with its fields
        }
        cols.offsets.push(base_offset.checked_add(offset_delta)?);
        cols.timestamps.push(if log_append_time { max_timestamp } else { base_timestamp.checked_add(ts_delta)? });
        cols.keys.push(key);
        cols.values.push(value);
    }
    (r.i == batch.len()).then_some(cols)
}
