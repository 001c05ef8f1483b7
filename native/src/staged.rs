//! Gift records decoded before their turn. The merge of a partition's inputs (stream.engine.order) reads a gift's
//! time before the engine processes it, which decodes the record; a Core keeps what that decode found, in record
//! order, and its next `process` takes it instead of decoding the record again.
//!
//! The stage holds each record's bytes object (so it is the same bytes when its turn comes) and compares identity,
//! never content: a record comes back staged only when it is the very object staged next. Any other record first
//! means the stage is not what is processed (records dropped on a revocation, say): it is emptied, and every record
//! decodes as if nothing had been staged. A stage that is full stages nothing more until it drains, so what it
//! costs is bounded; records not staged decode as usual.

use std::collections::VecDeque;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::decode::EventSpans;

/// Records staged at most per Core: about 100 bytes each.
pub const MAX_STAGED: usize = 1 << 20;

#[derive(Default)]
pub struct Staged {
    /// In record order; None for a record the fast decoder did not take (it decodes again when its turn comes).
    records: VecDeque<(Py<PyBytes>, Option<EventSpans>)>,
}

impl Staged {
    /// Stage the next record; nothing when the stage is full.
    pub fn push(&mut self, raw: &Bound<'_, PyBytes>, spans: Option<EventSpans>) {
        if self.records.len() < MAX_STAGED {
            self.records.push_back((raw.clone().unbind(), spans));
        }
    }

    /// What was staged for `raw` when it is the record staged next (then it is no longer staged); None when it
    /// was staged without an event, or not staged (then the stage is emptied unless it was already empty).
    pub fn take(&mut self, raw: &Bound<'_, PyBytes>) -> Option<EventSpans> {
        let (front, _) = self.records.front()?;
        if front.as_ptr() != raw.as_ptr() {
            self.records.clear();
            return None;
        }
        self.records.pop_front().and_then(|(_, spans)| spans)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}
