//! The oplog: every write as an entry stamped with a strictly increasing cluster time, bounded
//! to a number of entries; resume tokens are positions in it.

use bson::{Binary, Bson, Document, Timestamp, doc};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

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
    /// `document` is the version the collection stored, shared with it rather than copied.
    Insert {
        ns: Namespace,
        document: Arc<Document>,
    },
    /// An update by operators or pipeline; `before`/`after` let the change stream describe it.
    Update {
        ns: Namespace,
        document_key: Document,
        before: Document,
        after: Document,
        /// A pipeline update, whose change is computed as mongod diffs two documents (with
        /// its size bound), rather than from the fields the operators touched.
        pipeline: bool,
        /// The collection recorded pre- and post-images for this write
        /// (`changeStreamPreAndPostImages` was enabled): `before` is the pre-image.
        images: bool,
    },
    Replace {
        ns: Namespace,
        document_key: Document,
        document: Document,
        /// The replaced version, when the collection records pre-images.
        pre_image: Option<Arc<Document>>,
    },
    Delete {
        ns: Namespace,
        document_key: Document,
        /// The deleted version, when the collection records pre-images.
        pre_image: Option<Arc<Document>>,
    },
    /// A collection was created (explicitly or by its first insert), or a view; `description`
    /// is the event's `operationDescription` (`idIndex` and options, or `viewOn`/`pipeline`).
    Create {
        ns: Namespace,
        description: Document,
    },
    /// Indexes were built (`createIndexes`, or `commitIndexBuild` for several at once).
    CreateIndexes {
        ns: Namespace,
        indexes: Vec<Document>,
    },
    /// One index was dropped.
    DropIndexes {
        ns: Namespace,
        index: Document,
    },
    /// `collMod`: what it changed, and the options before.
    Modify {
        ns: Namespace,
        description: Document,
        state_before: Document,
    },
    Drop {
        ns: Namespace,
    },
    Rename {
        from: Namespace,
        to: Namespace,
        /// The UUID of the collection a `dropTarget` rename replaced.
        drop_target: Option<Binary>,
    },
    DropDatabase {
        db: String,
    },
}

impl OplogOp {
    /// The namespace a DDL entry's collection-scoped change events name, for the operations
    /// only expanded change streams report.
    pub fn ddl_namespace(&self) -> Option<&Namespace> {
        match self {
            OplogOp::Create { ns, .. }
            | OplogOp::CreateIndexes { ns, .. }
            | OplogOp::DropIndexes { ns, .. }
            | OplogOp::Modify { ns, .. } => Some(ns),
            _ => None,
        }
    }
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
    /// The cluster time of the newest entry dropped to respect `capacity`: a reader positioned
    /// before it has lost history.
    truncated_through: Option<Timestamp>,
    /// Collections that exist according to the entries written so far, with their UUIDs, so
    /// that a `dropDatabase` is preceded by one drop per collection as mongod writes it.
    live: BTreeMap<Namespace, Option<Binary>>,
}

/// Where the oplog ended: the entries written after it can be undone.
pub struct Savepoint {
    next_seq: u64,
    live: BTreeMap<Namespace, Option<Binary>>,
}

/// A cluster time as an ordered pair (seconds, counter).
pub fn ts_key(ts: Timestamp) -> (u32, u32) {
    (ts.time, ts.increment)
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
            truncated_through: None,
            live: BTreeMap::new(),
        }
    }

    /// Where the oplog ends now, for [`Oplog::rollback`].
    pub fn savepoint(&self) -> Savepoint {
        Savepoint {
            next_seq: self.next_seq,
            live: self.live.clone(),
        }
    }

    /// Removes the entries written since `savepoint`, as if the writes that made them had
    /// never committed. Only for writes nobody has read yet (the caller holds the data lock
    /// throughout); cluster times handed out stay used.
    pub fn rollback(&mut self, savepoint: Savepoint) {
        while self
            .entries
            .back()
            .is_some_and(|e| e.seq >= savepoint.next_seq)
        {
            self.entries.pop_back();
        }
        self.next_seq = savepoint.next_seq;
        self.live = savepoint.live;
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
    ///
    /// mongod writes `dropDatabase` as one `drop` entry per collection followed by the
    /// `dropDatabase` entry (manual: "Change Events", dropDatabase); collections of the database
    /// not yet dropped by earlier entries get their `drop` entry here, so change streams on
    /// them are invalidated whichever way the caller records the drop.
    pub fn record(&mut self, op: OplogOp, ui: Option<Binary>) -> Timestamp {
        if let OplogOp::DropDatabase { db } = &op {
            let remaining: Vec<(Namespace, Option<Binary>)> = self
                .live
                .iter()
                .filter(|(ns, _)| &ns.db == db)
                .map(|(ns, ui)| (ns.clone(), ui.clone()))
                .collect();
            for (ns, ui) in remaining {
                self.push(OplogOp::Drop { ns }, ui);
            }
        }
        self.push(op, ui)
    }

    fn push(&mut self, op: OplogOp, ui: Option<Binary>) -> Timestamp {
        self.track_collections(&op, &ui);
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
            if let Some(dropped) = self.entries.pop_front() {
                self.truncated_through = Some(dropped.ts);
            }
        }
        ts
    }

    fn track_collections(&mut self, op: &OplogOp, ui: &Option<Binary>) {
        match op {
            OplogOp::Insert { ns, .. }
            | OplogOp::Update { ns, .. }
            | OplogOp::Replace { ns, .. }
            | OplogOp::Delete { ns, .. }
            | OplogOp::Create { ns, .. }
            | OplogOp::CreateIndexes { ns, .. }
            | OplogOp::DropIndexes { ns, .. }
            | OplogOp::Modify { ns, .. } => {
                // Looked up before `entry`, which would copy the namespace on every write.
                let known = match self.live.get_mut(ns) {
                    Some(known) => known,
                    None => self.live.entry(ns.clone()).or_insert(None),
                };
                if ui.is_some() && known != ui {
                    known.clone_from(ui);
                }
            }
            OplogOp::Drop { ns } => {
                self.live.remove(ns);
            }
            OplogOp::Rename { from, to, .. } => {
                let uuid = self.live.remove(from).flatten().or_else(|| ui.clone());
                self.live.insert(to.clone(), uuid);
            }
            OplogOp::DropDatabase { db } => self.live.retain(|ns, _| &ns.db != db),
        }
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

    /// The cluster time of the oldest retained entry.
    pub fn oldest_ts(&self) -> Option<Timestamp> {
        self.entries.front().map(|e| e.ts)
    }

    /// The cluster time of the newest entry lost to the capacity bound, if any was.
    pub fn truncated_through(&self) -> Option<Timestamp> {
        self.truncated_through
    }

    /// Index in [`Oplog::entries`] of the first entry whose cluster time is `>= ts`.
    pub fn first_at_or_after(&self, ts: Timestamp) -> usize {
        let key = ts_key(ts);
        self.entries.partition_point(|e| ts_key(e.ts) < key)
    }

    /// Index in [`Oplog::entries`] of the first entry whose cluster time is `> ts`.
    pub fn first_after(&self, ts: Timestamp) -> usize {
        let key = ts_key(ts);
        self.entries.partition_point(|e| ts_key(e.ts) <= key)
    }

    /// Index in [`Oplog::entries`] of the first entry whose sequence number is `> seq`.
    pub fn first_after_seq(&self, seq: u64) -> usize {
        self.entries.partition_point(|e| e.seq <= seq)
    }
}

impl Oplog {
    /// The retained entries as mongod shows them in `local.oplog.rs` (`op`, `ns`, `ui`, `o`,
    /// `o2`, `ts`, `t`, `v`, `wall`), oldest first.
    pub fn as_documents(&self) -> Vec<Document> {
        self.entries.iter().map(OplogEntry::to_document).collect()
    }

    /// The oldest retained entry as a `local.oplog.rs` document, without converting the rest
    /// (`find` with `sort: {$natural: 1}, limit: 1`, how clients learn the oplog window).
    pub fn oldest_document(&self) -> Option<Document> {
        self.entries.front().map(OplogEntry::to_document)
    }

    /// The newest entry as a `local.oplog.rs` document (`sort: {$natural: -1}, limit: 1`).
    pub fn newest_document(&self) -> Option<Document> {
        self.entries.back().map(OplogEntry::to_document)
    }
}

impl OplogEntry {
    /// This entry as a `local.oplog.rs` document (manual: "Replica Set Oplog").
    pub fn to_document(&self) -> Document {
        let command_ns = |db: &str| format!("{db}.$cmd");
        let (op, ns, o, o2): (&str, String, Document, Option<Document>) = match &self.op {
            OplogOp::Insert { ns, document } => {
                let key = document
                    .get("_id")
                    .map(|id| doc! {"_id": id.clone()})
                    .unwrap_or_default();
                ("i", ns.to_string(), Document::clone(document), Some(key))
            }
            OplogOp::Update {
                ns,
                document_key,
                before,
                after,
                ..
            } => (
                "u",
                ns.to_string(),
                doc! {"$v": 2, "diff": update_diff(before, after)},
                Some(document_key.clone()),
            ),
            OplogOp::Replace {
                ns,
                document_key,
                document,
                ..
            } => (
                "u",
                ns.to_string(),
                document.clone(),
                Some(document_key.clone()),
            ),
            OplogOp::Delete {
                ns, document_key, ..
            } => ("d", ns.to_string(), document_key.clone(), None),
            OplogOp::Create { ns, description } => {
                let mut o = doc! {"create": ns.coll.clone()};
                o.extend(description.clone());
                ("c", command_ns(&ns.db), o, None)
            }
            OplogOp::CreateIndexes { ns, indexes } => {
                let o = match indexes.as_slice() {
                    [one] => {
                        let mut o = doc! {"createIndexes": ns.coll.clone()};
                        o.extend(one.clone());
                        o
                    }
                    many => doc! {"commitIndexBuild": ns.coll.clone(), "indexes": many.to_vec()},
                };
                ("c", command_ns(&ns.db), o, None)
            }
            OplogOp::DropIndexes { ns, index } => {
                let name = index.get_str("name").unwrap_or_default().to_string();
                let mut o2 = doc! {"dropIndexes": ns.coll.clone()};
                o2.extend(index.clone());
                (
                    "c",
                    command_ns(&ns.db),
                    doc! {"dropIndexes": ns.coll.clone(), "index": name},
                    Some(o2),
                )
            }
            OplogOp::Modify {
                ns,
                description,
                state_before,
            } => {
                let mut o = doc! {"collMod": ns.coll.clone()};
                o.extend(description.clone());
                let mut o2 = Document::new();
                if let Ok(options) = state_before.get_document("collectionOptions") {
                    o2.insert("collectionOptions_old", options.clone());
                }
                if let Ok(options) = state_before.get_document("indexOptions") {
                    o2.insert("indexOptions_old", options.clone());
                }
                ("c", command_ns(&ns.db), o, Some(o2))
            }
            OplogOp::Drop { ns } => (
                "c",
                command_ns(&ns.db),
                doc! {"drop": ns.coll.clone()},
                None,
            ),
            OplogOp::Rename {
                from,
                to,
                drop_target,
            } => {
                let mut o = doc! {"renameCollection": from.to_string(), "to": to.to_string()};
                if let Some(uuid) = drop_target {
                    o.insert("dropTarget", Bson::Binary(uuid.clone()));
                }
                o.insert("stayTemp", false);
                ("c", command_ns(&from.db), o, None)
            }
            OplogOp::DropDatabase { db } => ("c", command_ns(db), doc! {"dropDatabase": 1}, None),
        };
        let mut d = doc! {"op": op, "ns": ns};
        if let Some(ui) = &self.ui {
            d.insert("ui", Bson::Binary(ui.clone()));
        }
        d.insert("o", o);
        if let Some(o2) = o2 {
            d.insert("o2", o2);
        }
        d.insert("ts", self.ts);
        d.insert("t", 1i64);
        d.insert("v", 2i64);
        d.insert("wall", self.wall);
        d
    }
}

/// The `$v: 2` oplog diff of an update: `u` changed fields, `i` added fields, `d` removed
/// fields, `s<field>` a nested diff of a sub-document present on both sides.
fn update_diff(before: &Document, after: &Document) -> Document {
    let mut updated = Document::new();
    let mut inserted = Document::new();
    let mut deleted = Document::new();
    let mut nested = Document::new();
    for (k, new) in after {
        match before.get(k) {
            None => {
                inserted.insert(k.clone(), new.clone());
            }
            Some(Bson::Document(old)) if matches!(new, Bson::Document(_)) => {
                if let Bson::Document(new) = new
                    && old != new
                {
                    nested.insert(format!("s{k}"), update_diff(old, new));
                }
            }
            Some(old) if old != new => {
                updated.insert(k.clone(), new.clone());
            }
            Some(_) => {}
        }
    }
    for k in before.keys() {
        if !after.contains_key(k) {
            deleted.insert(k.clone(), false);
        }
    }
    let mut diff = Document::new();
    if !deleted.is_empty() {
        diff.insert("d", deleted);
    }
    if !updated.is_empty() {
        diff.insert("u", updated);
    }
    if !inserted.is_empty() {
        diff.insert("i", inserted);
    }
    diff.extend(nested);
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(coll: &str, id: i32) -> OplogOp {
        OplogOp::Insert {
            ns: Namespace::new("db", coll),
            document: Arc::new(doc! {"_id": id}),
        }
    }

    #[test]
    fn every_write_gets_a_strictly_increasing_time_and_sequence() {
        let mut oplog = Oplog::new(10);
        let a = oplog.record(insert("c", 1), None);
        let b = oplog.record(insert("c", 2), None);
        assert!(ts_key(a) < ts_key(b));
        assert_eq!(oplog.head_seq(), 2);
        assert_eq!(oplog.last_ts(), b);
    }

    #[test]
    fn capacity_drops_the_oldest_and_remembers_what_was_lost() {
        let mut oplog = Oplog::new(2);
        let first = oplog.record(insert("c", 1), None);
        assert_eq!(oplog.truncated_through(), None);
        let second = oplog.record(insert("c", 2), None);
        oplog.record(insert("c", 3), None);
        assert_eq!(oplog.entries().len(), 2);
        assert_eq!(oplog.truncated_through(), Some(first));
        assert_eq!(oplog.oldest_ts(), Some(second));
        assert_eq!(oplog.entries()[0].seq, 2);
        let oldest = oplog.oldest_document().unwrap();
        assert_eq!(oldest.get_timestamp("ts").unwrap(), second);
        assert_eq!(Some(oldest), oplog.as_documents().into_iter().next());
        assert_eq!(
            oplog
                .newest_document()
                .unwrap()
                .get_timestamp("ts")
                .unwrap(),
            oplog.last_ts()
        );
    }

    #[test]
    fn binary_search_finds_positions_by_time_and_sequence() {
        let mut oplog = Oplog::new(10);
        let times: Vec<Timestamp> = (0..5).map(|i| oplog.record(insert("c", i), None)).collect();
        assert_eq!(oplog.first_at_or_after(times[2]), 2);
        assert_eq!(oplog.first_after(times[2]), 3);
        assert_eq!(oplog.first_after(times[4]), 5);
        assert_eq!(
            oplog.first_at_or_after(Timestamp {
                time: 0,
                increment: 0
            }),
            0
        );
        assert_eq!(oplog.first_after_seq(3), 3);
    }

    #[test]
    fn drop_database_is_preceded_by_a_drop_of_each_remaining_collection() {
        let mut oplog = Oplog::new(100);
        oplog.record(insert("a", 1), None);
        oplog.record(insert("b", 1), None);
        oplog.record(
            OplogOp::Drop {
                ns: Namespace::new("db", "a"),
            },
            None,
        );
        oplog.record(
            OplogOp::Insert {
                ns: Namespace::new("other", "x"),
                document: Arc::new(doc! {"_id": 1}),
            },
            None,
        );
        oplog.record(OplogOp::DropDatabase { db: "db".into() }, None);
        let ops: Vec<String> = oplog
            .as_documents()
            .iter()
            .map(|d| {
                format!(
                    "{}:{}",
                    d.get_str("op").unwrap(),
                    d.get_document("o").unwrap()
                )
            })
            .collect();
        assert_eq!(ops.len(), 6);
        assert_eq!(ops[4], "c:{ \"drop\": \"b\" }");
        assert_eq!(ops[5], "c:{ \"dropDatabase\": 1 }");
    }

    #[test]
    fn documents_look_like_local_oplog_rs() {
        let mut oplog = Oplog::new(10);
        let ui = Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![7; 16],
        };
        let ts = oplog.record(insert("c", 1), Some(ui.clone()));
        oplog.record(
            OplogOp::Update {
                ns: Namespace::new("db", "c"),
                document_key: doc! {"_id": 1},
                before: doc! {"_id": 1, "a": 1, "n": {"x": 1}, "gone": 1},
                after: doc! {"_id": 1, "a": 2, "n": {"x": 2}, "b": 1},
                pipeline: false,
                images: false,
            },
            Some(ui.clone()),
        );
        let docs = oplog.as_documents();
        let i = &docs[0];
        assert_eq!(i.get_str("op").unwrap(), "i");
        assert_eq!(i.get_str("ns").unwrap(), "db.c");
        assert_eq!(i.get("ui"), Some(&Bson::Binary(ui)));
        assert_eq!(i.get_document("o2").unwrap(), &doc! {"_id": 1});
        assert_eq!(i.get_timestamp("ts").unwrap(), ts);
        assert_eq!(i.get_i64("t").unwrap(), 1);
        assert_eq!(i.get_i64("v").unwrap(), 2);
        assert!(i.get_datetime("wall").is_ok());
        assert_eq!(
            docs[1].get_document("o").unwrap(),
            &doc! {"$v": 2, "diff": {"d": {"gone": false}, "u": {"a": 2}, "i": {"b": 1}, "sn": {"u": {"x": 2}}}}
        );
    }
}
