//! A Kafka record batch (message format v2, uncompressed) built natively, standing in for aiokafka's
//! BatchBuilder in producer.send_batch(): the worker's changelog is most of what it writes (about one
//! record per event), and aiokafka's builder spends ~1 µs of Python per record.
//!
//! aiokafka's accumulator uses only this surface of a builder: record_count(), closed(), close(),
//! size(), append(...) (for producer.send() into an open batch; ours are filled here and closed before they
//! are handed over, so it answers None like a full batch), _set_producer_state(...) and _build().
//! The header is written like aiokafka's DefaultRecordBatchBuilder writes it (base offset 0, no partition
//! leader epoch, CRC-32C from the attributes on).

use pyo3::prelude::*;
use pyo3::types::PyBytes;

const HEADER: usize = 61;
const TRANSACTIONAL: i16 = 0x10;

fn varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64; // zigzag
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[pyclass(module = "stream._native")]
pub struct RecordBatchBuilder {
    records: Vec<u8>,
    scratch: Vec<u8>,
    count: i32,
    max_bytes: usize,
    transactional: bool,
    timestamp_ms: i64,
    closed: bool,
    producer: (i64, i16, i32), // producer id, epoch, base sequence (set by the producer when it sends)
    built: Option<Py<PyBytes>>,
}

impl RecordBatchBuilder {
    pub fn create(max_bytes: usize, transactional: bool, timestamp_ms: i64) -> Self {
        Self::with_capacity(max_bytes, transactional, timestamp_ms, max_bytes.min(1 << 20))
    }

    /// `capacity`: bytes of records reserved up front (create() reserves a whole batch, for batches that fill).
    pub fn with_capacity(max_bytes: usize, transactional: bool, timestamp_ms: i64, capacity: usize) -> Self {
        RecordBatchBuilder { records: Vec::with_capacity(capacity), scratch: Vec::new(), count: 0,
                             max_bytes, transactional, timestamp_ms, closed: false, producer: (-1, -1, -1),
                             built: None }
    }

    /// Add a record; false (and the batch closes) when it would grow past max_bytes. The first record is
    /// always taken, however big (the producer's max_request_size is the real limit).
    pub fn add_record(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        if self.closed {
            return false;
        }
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // record attributes
        varint(body, 0); // timestamp delta: every record carries the batch's timestamp
        varint(body, self.count as i64); // offset delta
        for field in [key, value] {
            match field {
                Some(b) => {
                    varint(body, b.len() as i64);
                    body.extend_from_slice(b);
                }
                None => varint(body, -1),
            }
        }
        varint(body, 0); // no headers
        let mut length = Vec::with_capacity(5);
        varint(&mut length, body.len() as i64);
        if self.count > 0 && HEADER + self.records.len() + length.len() + body.len() > self.max_bytes {
            self.closed = true;
            return false;
        }
        self.records.extend_from_slice(&length);
        self.records.extend_from_slice(body);
        self.count += 1;
        true
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.records.len());
        let (pid, epoch, seq) = self.producer;
        out.extend_from_slice(&0i64.to_be_bytes()); // base offset: the broker assigns it
        out.extend_from_slice(&((HEADER - 12 + self.records.len()) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // no partition leader epoch
        out.push(2); // magic
        out.extend_from_slice(&0u32.to_be_bytes()); // CRC, below
        out.extend_from_slice(&(if self.transactional { TRANSACTIONAL } else { 0 }).to_be_bytes());
        out.extend_from_slice(&(self.count - 1).max(0).to_be_bytes()); // last offset delta
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes()); // first timestamp
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes()); // max timestamp
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.records);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

#[pymethods]
impl RecordBatchBuilder {
    #[new]
    #[pyo3(signature = (max_bytes, transactional, timestamp_ms, capacity=None))]
    fn py_new(max_bytes: usize, transactional: bool, timestamp_ms: i64, capacity: Option<usize>) -> Self {
        match capacity {
            Some(capacity) => Self::with_capacity(max_bytes, transactional, timestamp_ms, capacity),
            None => Self::create(max_bytes, transactional, timestamp_ms),
        }
    }

    /// Change the batch's timestamp (every record carries it) until it is built: a batch filled ahead of time
    /// is stamped when it is handed to the producer.
    fn set_timestamp(&mut self, timestamp_ms: i64) -> PyResult<()> {
        if self.built.is_some() {
            return Err(pyo3::exceptions::PyValueError::new_err("the batch is built already"));
        }
        self.timestamp_ms = timestamp_ms;
        Ok(())
    }

    /// Add a record (key and value bytes or None); False when the batch is full.
    #[pyo3(signature = (key, value))]
    fn add(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        self.add_record(key, value)
    }

    /// aiokafka's BatchBuilder.append (producer.send() into a queued batch): this batch takes no more.
    #[pyo3(signature = (*, timestamp, key, value, headers=None))]
    fn append(&mut self, timestamp: Option<Py<PyAny>>, key: Option<Py<PyAny>>, value: Option<Py<PyAny>>,
              headers: Option<Py<PyAny>>) -> Option<Py<PyAny>> {
        let _ = (timestamp, key, value, headers);
        None
    }

    fn record_count(&self) -> i32 {
        self.count
    }

    fn size(&self) -> usize {
        HEADER + self.records.len()
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn closed(&self) -> bool {
        self.closed
    }

    #[pyo3(name = "_set_producer_state")]
    fn set_producer_state(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer = (producer_id, producer_epoch, base_sequence);
    }

    /// The batch's bytes (built once, like aiokafka's builder; the producer state must be set before).
    #[pyo3(name = "_build")]
    fn build<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.closed = true;
        if self.built.is_none() {
            self.built = Some(PyBytes::new(py, &self.bytes()).unbind());
        }
        self.built.as_ref().expect("built").bind(py).clone()
    }
}
