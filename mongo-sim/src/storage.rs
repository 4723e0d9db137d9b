//! Databases, collections, documents and indexes (unique indexes enforced), and the oplog
//! every write is recorded in.
//!
//! Documents live in natural (insertion) order keyed by a record id that never changes, as
//! WiredTiger's record ids do. Index keys are a canonical byte encoding that sorts as
//! `crate::compare` orders values and encodes equal values (`1`, `1.0`, `NumberLong(1)`)
//! identically, so a `BTreeSet` of `(key, record id)` serves both uniqueness checks and
//! equality lookups.

#![allow(clippy::result_large_err)] // CommandError carries mongod's extra reply fields.

use crate::compare::{as_f64, type_rank};
use crate::error::{self, CommandError, Result};
use crate::expr::Variables;
use crate::oplog::{Namespace, Oplog, OplogOp};
use crate::query::Matcher;
use bson::{Binary, Bson, Document, Uuid};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The largest document a client may store (manual: "BSON Document Size").
pub const MAX_USER_DOCUMENT_SIZE: usize = 16 * 1024 * 1024;

/// All data the server holds.
pub struct Data {
    pub databases: BTreeMap<String, Database>,
    pub oplog: Oplog,
    /// Retryable writes' applied statements, changed with the writes under the same lock.
    pub transactions: crate::retryable::TransactionTable,
}

impl Data {
    pub fn new(oplog_capacity: usize) -> Self {
        Self {
            databases: BTreeMap::new(),
            oplog: Oplog::new(oplog_capacity),
            transactions: crate::retryable::TransactionTable::default(),
        }
    }

    /// The collection at `ns`, when it exists.
    pub fn collection(&self, ns: &Namespace) -> Option<&Collection> {
        self.databases.get(&ns.db)?.collections.get(&ns.coll)
    }

    /// The collection at `ns` for writing, when it exists (nothing is created).
    pub fn collection_mut(&mut self, ns: &Namespace) -> Option<&mut Collection> {
        self.databases
            .get_mut(&ns.db)?
            .collections
            .get_mut(&ns.coll)
    }

    /// The collection, created (and its creation recorded in the oplog) when missing, as an
    /// insert, upsert or createIndexes does implicitly. The flag is true when it was created.
    pub fn ensure_collection(&mut self, ns: &Namespace) -> (&mut Collection, bool) {
        // Looked up before `entry`, which would copy the names on every insert.
        if self.collection(ns).is_some() {
            let coll = self.collection_mut(ns).expect("collection exists");
            return (coll, false);
        }
        let db = self.databases.entry(ns.db.clone()).or_default();
        let created = !db.collections.contains_key(&ns.coll);
        let coll = db.collections.entry(ns.coll.clone()).or_default();
        if created {
            self.oplog.record(
                OplogOp::Create {
                    ns: ns.clone(),
                    description: crate::catalog::create_description(&coll.options),
                },
                Some(coll.ui()),
            );
        }
        (coll, created)
    }

    /// The collection together with the oplog, so that a write can modify one and record
    /// itself in the other.
    pub fn collection_and_oplog(
        &mut self,
        ns: &Namespace,
    ) -> Option<(&mut Collection, &mut Oplog)> {
        let coll = self
            .databases
            .get_mut(&ns.db)?
            .collections
            .get_mut(&ns.coll)?;
        Some((coll, &mut self.oplog))
    }

    /// Removes a database that no longer holds any collection: mongod lists a database only
    /// while it has data.
    pub fn forget_if_empty(&mut self, db: &str) {
        if self
            .databases
            .get(db)
            .is_some_and(|d| d.collections.is_empty() && d.views.is_empty())
        {
            self.databases.remove(db);
        }
    }

    /// The current version of the document with this key (`{_id: ...}`), for
    /// `fullDocument: "updateLookup"`.
    pub fn lookup_document(
        &self,
        ns: &crate::oplog::Namespace,
        document_key: &bson::Document,
    ) -> Option<bson::Document> {
        let coll = self.collection(ns)?;
        let rid = coll.find_by_id(document_key.get("_id")?)?;
        coll.documents.get(&rid).map(|d| Document::clone(d))
    }

    /// The view at `ns`, when there is one.
    pub fn view(&self, ns: &Namespace) -> Option<&crate::catalog::View> {
        self.databases.get(&ns.db)?.views.get(&ns.coll)
    }

    /// The collection's UUID, when it exists.
    pub fn collection_uuid(&self, ns: &crate::oplog::Namespace) -> Option<bson::Uuid> {
        self.collection(ns).map(|c| c.uuid)
    }
}

/// One database: its collections and views by name.
#[derive(Default)]
pub struct Database {
    pub collections: BTreeMap<String, Collection>,
    pub views: BTreeMap<String, crate::catalog::View>,
}

/// What `createIndexes` was asked for, as `listIndexes` reports it back.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSpec {
    pub name: String,
    pub key: Document,
    pub unique: bool,
    pub sparse: bool,
    /// Accepted and reported, but documents never expire.
    pub expire_after_seconds: Option<Bson>,
    /// `partialFilterExpression`: only documents matching it are indexed (manual: "Partial
    /// Indexes"), so a unique partial index constrains only those.
    pub partial_filter: Option<Document>,
    /// `background`, ignored since mongod 4.2 but kept in the catalog and listed back.
    pub background: Option<bool>,
}

impl IndexSpec {
    /// The `listIndexes` form: `{v: 2, key, name, unique?, sparse?, expireAfterSeconds?}`.
    pub fn to_document(&self) -> Document {
        let mut d = Document::new();
        d.insert("v", 2);
        d.insert("key", self.key.clone());
        d.insert("name", self.name.clone());
        // The _id index is unique without saying so.
        if self.unique && self.name != "_id_" {
            d.insert("unique", true);
        }
        if self.sparse {
            d.insert("sparse", true);
        }
        if let Some(e) = &self.expire_after_seconds {
            d.insert("expireAfterSeconds", e.clone());
        }
        if let Some(f) = &self.partial_filter {
            d.insert("partialFilterExpression", f.clone());
        }
        if let Some(b) = self.background {
            d.insert("background", b);
        }
        d
    }

    /// True when the two specs describe the same index apart from its name.
    pub fn same_options(&self, other: &IndexSpec) -> bool {
        self.unique == other.unique
            && self.sparse == other.sparse
            && self.expire_after_seconds == other.expire_after_seconds
            && self.partial_filter == other.partial_filter
    }
}

/// True when two key patterns name the same fields in the same order and directions
/// (`{a: 1}` and `{a: 1.0}` are the same pattern).
pub fn same_key_pattern(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (as_f64(va), as_f64(vb)) {
                    (Some(x), Some(y)) => (x < 0.0) == (y < 0.0),
                    _ => va == vb,
                }
        })
}

/// A B-tree index over one or more fields.
#[derive(Debug, Clone)]
pub struct Index {
    pub spec: IndexSpec,
    /// Each key field: its path, the path's components, and whether it is descending.
    fields: Vec<(String, Vec<String>, bool)>,
    /// Per key field: whether it is `"hashed"` (its key is the value's hash, manual: "Hashed
    /// Indexes").
    hashed: Vec<bool>,
    entries: BTreeSet<(Vec<u8>, u64)>,
    /// True once some document produced several keys (an array value).
    pub multikey: bool,
    /// The parsed `partialFilterExpression`.
    partial: Option<Matcher>,
}

static NULL_KEY: Bson = Bson::Null;
static EMPTY_ARRAY_KEY: Bson = Bson::Undefined;

/// One generated key: its encoding and the values it was made of (for `keyValue`).
type GeneratedKey<'a> = (Vec<u8>, Vec<&'a Bson>);

impl Index {
    /// An empty index for `spec`; [`Collection::create_index`] fills it.
    pub fn new(spec: IndexSpec) -> Index {
        let fields = spec
            .key
            .iter()
            .map(|(k, v)| {
                let parts = k.split('.').map(str::to_string).collect();
                (k.clone(), parts, as_f64(v).is_some_and(|d| d < 0.0))
            })
            .collect();
        let hashed = spec
            .key
            .values()
            .map(|v| matches!(v, Bson::String(k) if k == "hashed"))
            .collect();
        // Validated by createIndexes before the spec gets here.
        let partial = spec
            .partial_filter
            .as_ref()
            .and_then(|f| Matcher::parse(f).ok());
        Index {
            spec,
            fields,
            hashed,
            entries: BTreeSet::new(),
            multikey: false,
            partial,
        }
    }

    /// Field paths of the key, in order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(f, _, _)| f.as_str())
    }

    /// The keys `doc` produces: one per array element for a multikey field, none for a
    /// sparse index when every key field is missing. Two array fields in one compound key
    /// are refused (manual: "Multikey Indexes", compound multikey limitation).
    fn keys<'a>(&self, doc: &'a Document) -> Result<Vec<GeneratedKey<'a>>> {
        if let Some(partial) = &self.partial {
            let vars = Variables::new(
                bson::DateTime::now(),
                bson::Timestamp {
                    time: 0,
                    increment: 0,
                },
            );
            if !partial.matches(doc, &vars)? {
                return Ok(Vec::new());
            }
        }
        let mut per_field: Vec<Vec<&'a Bson>> = Vec::with_capacity(self.fields.len());
        let mut array_field: Option<&str> = None;
        let mut all_missing = true;
        for (path, parts, _) in &self.fields {
            let mut values = Vec::new();
            let mut saw_array = false;
            if let Some(v) = doc.get(&parts[0]) {
                collect_values(v, &parts[1..], &mut values, &mut saw_array);
            }
            if saw_array && self.hashed.get(per_field.len()).copied().unwrap_or(false) {
                return Err(CommandError::from_code(
                    16766,
                    "Error: hashed indexes do not currently support array values",
                ));
            }
            if saw_array {
                if let Some(earlier) = array_field {
                    return Err(CommandError::from_code(
                        171,
                        format!("cannot index parallel arrays [{path}] [{earlier}]"),
                    ));
                }
                array_field = Some(path.as_str());
            }
            if values.is_empty() {
                values.push(&NULL_KEY);
            } else {
                all_missing = false;
            }
            per_field.push(values);
        }
        if self.spec.sparse && all_missing {
            return Ok(Vec::new());
        }
        let mut keys: Vec<GeneratedKey<'a>> = vec![(Vec::new(), Vec::new())];
        for (i, ((_, _, descending), values)) in self.fields.iter().zip(per_field).enumerate() {
            if self.hashed[i] {
                let hash = Bson::Int64(crate::hasher::hash64(values[0])?);
                for (bytes, tuple) in &mut keys {
                    push_component(bytes, &hash, false);
                    tuple.push(values[0]);
                }
            } else if values.len() == 1 {
                for (bytes, tuple) in &mut keys {
                    push_component(bytes, values[0], *descending);
                    tuple.push(values[0]);
                }
            } else {
                let mut next = Vec::with_capacity(keys.len() * values.len());
                for (bytes, tuple) in &keys {
                    for v in &values {
                        let mut b = bytes.clone();
                        push_component(&mut b, v, *descending);
                        let mut t = tuple.clone();
                        t.push(*v);
                        next.push((b, t));
                    }
                }
                keys = next;
            }
        }
        if keys.len() > 1 {
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            keys.dedup_by(|a, b| a.0 == b.0);
        }
        Ok(keys)
    }

    /// The record holding `key` other than `except`, when this unique index has one.
    fn conflict(&self, key: &[u8], except: Option<u64>) -> Option<u64> {
        self.entries
            .range((key.to_vec(), 0)..=(key.to_vec(), u64::MAX))
            .map(|(_, rid)| *rid)
            .find(|rid| Some(*rid) != except)
    }

    fn duplicate_error(&self, ns: &Namespace, values: &[&Bson]) -> CommandError {
        let mut key_value = Document::new();
        for ((field, _, _), v) in self.fields.iter().zip(values) {
            key_value.insert(field.clone(), (*v).clone());
        }
        duplicate_key_error(ns, &self.spec.name, &self.spec.key, key_value)
    }

    /// Record ids whose key for the first field equals `value`, in natural order.
    fn records_with_prefix(&self, value: &Bson) -> Vec<u64> {
        let mut prefix = Vec::new();
        push_component(&mut prefix, value, self.fields[0].2);
        let mut rids: Vec<u64> = self
            .entries
            .range((prefix.clone(), 0)..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, rid)| *rid)
            .collect();
        rids.sort_unstable();
        rids.dedup();
        rids
    }
}

/// mongod's duplicate key error (manual: "Unique Indexes"): `E11000 duplicate key error
/// collection: db.coll index: name dup key: { a: 1 }` with `keyPattern` and `keyValue`.
pub fn duplicate_key_error(
    ns: &Namespace,
    index: &str,
    key_pattern: &Document,
    key_value: Document,
) -> CommandError {
    CommandError::new(
        error::DUPLICATE_KEY,
        format!(
            "E11000 duplicate key error collection: {ns} index: {index} dup key: {}",
            shell_document(&key_value)
        ),
    )
    .with_extra(bson::doc! {"keyPattern": key_pattern.clone(), "keyValue": key_value})
}

/// A document as mongod prints it in messages: `{ a: "x", b: 5 }`.
pub fn shell_document(d: &Document) -> String {
    if d.is_empty() {
        return "{}".to_string();
    }
    let parts: Vec<String> = d
        .iter()
        .map(|(k, v)| format!("{k}: {}", shell_value(v)))
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// A value as mongod prints it in messages.
pub fn shell_value(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("{s:?}"),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => format!("{d:.1}"),
        Bson::Double(d) => d.to_string(),
        Bson::Document(d) => shell_document(d),
        Bson::Array(a) if a.is_empty() => "[]".to_string(),
        Bson::Array(a) => format!(
            "[ {} ]",
            a.iter().map(shell_value).collect::<Vec<_>>().join(", ")
        ),
        Bson::ObjectId(o) => format!("ObjectId('{}')", o.to_hex()),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::MinKey => "MinKey".to_string(),
        Bson::MaxKey => "MaxKey".to_string(),
        other => other.to_string(),
    }
}

/// Values at `parts` below `v`, expanding arrays as index key generation does.
fn collect_values<'a>(
    v: &'a Bson,
    parts: &[String],
    out: &mut Vec<&'a Bson>,
    saw_array: &mut bool,
) {
    let Some((head, rest)) = parts.split_first() else {
        match v {
            Bson::Array(a) => {
                *saw_array = true;
                if a.is_empty() {
                    out.push(&EMPTY_ARRAY_KEY);
                } else {
                    out.extend(a.iter());
                }
            }
            other => out.push(other),
        }
        return;
    };
    match v {
        Bson::Document(d) => {
            if let Some(child) = d.get(head) {
                collect_values(child, rest, out, saw_array);
            }
        }
        Bson::Array(a) => {
            if let Some(child) = head.parse::<usize>().ok().and_then(|i| a.get(i)) {
                collect_values(child, rest, out, saw_array);
                return;
            }
            *saw_array = true;
            for elem in a {
                if let Bson::Document(d) = elem
                    && let Some(child) = d.get(head)
                {
                    collect_values(child, rest, out, saw_array);
                }
            }
        }
        _ => {}
    }
}

/// Appends one key component, bit-inverted for a descending field so the byte order
/// reverses while staying prefix-free.
fn push_component(out: &mut Vec<u8>, v: &Bson, descending: bool) {
    let start = out.len();
    encode_value(v, out);
    if descending {
        for b in &mut out[start..] {
            *b = !*b;
        }
    }
}

fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

/// The canonical, order-preserving encoding of one value: type rank, then a payload in
/// which numbers of every width with the same value encode identically.
pub fn encode_value(v: &Bson, out: &mut Vec<u8>) {
    out.push((type_rank(v) + 2) as u8);
    match v {
        Bson::Double(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Decimal128(_) => {
            let f = as_f64(v).unwrap_or(f64::NAN);
            if f.is_nan() {
                out.push(0);
                return;
            }
            out.push(1);
            let f = if f == 0.0 { 0.0 } else { f };
            let bits = f.to_bits();
            let ordered = if bits >> 63 == 1 {
                !bits
            } else {
                bits | (1 << 63)
            };
            out.extend_from_slice(&ordered.to_be_bytes());
            // Large int64 values are not exact in f64: the remainder keeps them apart.
            let remainder = match v {
                Bson::Int64(i) => (*i as i128 - f as i128) as i64,
                _ => 0,
            };
            out.extend_from_slice(&((remainder as u64) ^ (1 << 63)).to_be_bytes());
        }
        Bson::String(s) | Bson::Symbol(s) => push_escaped(out, s.as_bytes()),
        Bson::Document(d) => {
            for (k, val) in d {
                out.push((type_rank(val) + 2) as u8);
                push_escaped(out, k.as_bytes());
                encode_value(val, out);
            }
            out.push(0);
        }
        Bson::Array(a) => {
            for val in a {
                encode_value(val, out);
            }
            out.push(0);
        }
        Bson::Binary(b) => {
            out.extend_from_slice(&(b.bytes.len() as u32).to_be_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(&b.bytes);
        }
        Bson::ObjectId(o) => out.extend_from_slice(&o.bytes()),
        Bson::Boolean(b) => out.push(*b as u8),
        Bson::DateTime(d) => {
            out.extend_from_slice(&((d.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes())
        }
        Bson::Timestamp(t) => {
            out.extend_from_slice(&t.time.to_be_bytes());
            out.extend_from_slice(&t.increment.to_be_bytes());
        }
        Bson::RegularExpression(r) => {
            push_escaped(out, r.pattern.as_bytes());
            push_escaped(out, r.options.as_bytes());
        }
        Bson::JavaScriptCode(c) => push_escaped(out, c.as_bytes()),
        Bson::JavaScriptCodeWithScope(c) => {
            push_escaped(out, c.code.as_bytes());
            encode_value(&Bson::Document(c.scope.clone()), out);
        }
        Bson::DbPointer(_) => push_escaped(out, format!("{v:?}").as_bytes()),
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => {}
    }
}

/// The exact BSON size of a document, computed without serialising it.
pub fn bson_size(d: &Document) -> usize {
    5 + d
        .iter()
        .map(|(k, v)| 2 + k.len() + value_size(v))
        .sum::<usize>()
}

/// The BSON size of one value, without its type byte and field name.
pub fn value_size(v: &Bson) -> usize {
    match v {
        Bson::Double(_) | Bson::Int64(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Decimal128(_) => 16,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 5 + s.len(),
        Bson::Document(d) => bson_size(d),
        Bson::Array(a) => {
            5 + a
                .iter()
                .enumerate()
                .map(|(i, x)| 2 + decimal_len(i) + value_size(x))
                .sum::<usize>()
        }
        Bson::Binary(b) => {
            let old = u8::from(b.subtype) == 2;
            5 + b.bytes.len() + if old { 4 } else { 0 }
        }
        Bson::ObjectId(_) => 12,
        Bson::Boolean(_) => 1,
        Bson::RegularExpression(r) => r.pattern.len() + r.options.len() + 2,
        Bson::JavaScriptCodeWithScope(c) => 4 + 5 + c.code.len() + bson_size(&c.scope),
        Bson::DbPointer(_) => 5 + 12 + 16,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
    }
}

fn decimal_len(mut i: usize) -> usize {
    let mut n = 1;
    while i >= 10 {
        i /= 10;
        n += 1;
    }
    n
}

/// One collection.
#[derive(Clone)]
pub struct Collection {
    pub uuid: Uuid,
    /// What `create` and `collMod` set: validation, pre- and post-images.
    pub options: crate::catalog::CollectionOptions,
    /// Documents in natural order, by record id. A stored version is never modified in
    /// place (a write replaces it), so the oplog entry that recorded it shares it instead of
    /// holding a copy.
    pub documents: BTreeMap<u64, Arc<Document>>,
    /// `_id_` first, then secondary indexes in creation order.
    pub indexes: Vec<Index>,
    next_record_id: u64,
}

impl Default for Collection {
    fn default() -> Self {
        Self::new()
    }
}

impl Collection {
    /// An empty collection with a fresh UUID and its `_id_` index.
    pub fn new() -> Collection {
        Collection {
            uuid: Uuid::new(),
            options: crate::catalog::CollectionOptions::default(),
            documents: BTreeMap::new(),
            indexes: vec![Index::new(IndexSpec {
                name: "_id_".to_string(),
                key: bson::doc! {"_id": 1},
                unique: true,
                sparse: false,
                expire_after_seconds: None,
                partial_filter: None,
                background: None,
            })],
            next_record_id: 1,
        }
    }

    /// The UUID as the oplog's `ui` carries it.
    pub fn ui(&self) -> Binary {
        Binary::from_uuid(self.uuid)
    }

    /// Generates every index's keys for `doc` and checks unique indexes for a conflict with a
    /// record other than `except`.
    fn keys_for(
        &self,
        ns: &Namespace,
        doc: &Document,
        except: Option<u64>,
    ) -> Result<Vec<Vec<Vec<u8>>>> {
        let mut all = Vec::with_capacity(self.indexes.len());
        for index in &self.indexes {
            let keys = index.keys(doc)?;
            if index.spec.unique {
                for (bytes, values) in &keys {
                    if index.conflict(bytes, except).is_some() {
                        return Err(index.duplicate_error(ns, values));
                    }
                }
            }
            all.push(keys.into_iter().map(|(bytes, _)| bytes).collect());
        }
        Ok(all)
    }

    fn add_keys(&mut self, rid: u64, keys: Vec<Vec<Vec<u8>>>) {
        for (index, keys) in self.indexes.iter_mut().zip(keys) {
            if keys.len() > 1 {
                index.multikey = true;
            }
            for bytes in keys {
                index.entries.insert((bytes, rid));
            }
        }
    }

    fn remove_keys(&mut self, rid: u64, doc: &Document) {
        for index in &mut self.indexes {
            if let Ok(keys) = index.keys(doc) {
                for (bytes, _) in keys {
                    index.entries.remove(&(bytes, rid));
                }
            }
        }
    }

    /// Stores a new document, enforcing unique indexes; returns its record id and the stored
    /// version (shared, for the oplog).
    pub fn insert_document(
        &mut self,
        ns: &Namespace,
        doc: Document,
    ) -> Result<(u64, Arc<Document>)> {
        let rid = self.next_record_id;
        let keys = self.keys_for(ns, &doc, None)?;
        self.add_keys(rid, keys);
        let stored = Arc::new(doc);
        self.documents.insert(rid, stored.clone());
        self.next_record_id += 1;
        Ok((rid, stored))
    }

    /// Replaces the document at `rid`, enforcing unique indexes; returns the old version.
    pub fn replace_document(
        &mut self,
        ns: &Namespace,
        rid: u64,
        new: Document,
    ) -> Result<Arc<Document>> {
        let keys = self.keys_for(ns, &new, Some(rid))?;
        let Some(old) = self.documents.remove(&rid) else {
            return Err(CommandError::new(
                error::INTERNAL_ERROR,
                "record vanished during update",
            ));
        };
        self.remove_keys(rid, &old);
        self.add_keys(rid, keys);
        self.documents.insert(rid, Arc::new(new));
        Ok(old)
    }

    /// Drops the oldest documents of a capped collection while it holds more than its bounds
    /// allow (manual: "Capped Collections": insertion order, oldest out first). The
    /// evictions are not written to the oplog.
    pub fn evict_over_cap(&mut self) {
        let Some(capped) = self.options.capped else {
            return;
        };
        let mut size = self.data_size() as i64;
        let too_many = |n: usize| capped.max.is_some_and(|max| n as i64 > max);
        while self.documents.len() > 1 && (size > capped.size || too_many(self.documents.len())) {
            let Some(&oldest) = self.documents.keys().next() else {
                break;
            };
            if let Some(old) = self.delete_document(oldest) {
                size -= bson_size(&old) as i64;
            }
        }
    }

    /// Removes the document at `rid`, returning it.
    pub fn delete_document(&mut self, rid: u64) -> Option<Arc<Document>> {
        let old = self.documents.remove(&rid)?;
        self.remove_keys(rid, &old);
        Some(old)
    }

    /// The record id of the document whose `_id` equals `id`.
    pub fn find_by_id(&self, id: &Bson) -> Option<u64> {
        self.indexes[0].records_with_prefix(id).into_iter().next()
    }

    /// Record ids that may match: through an index when the filter pins `_id` or an index's
    /// first field to one value or to a list of values (`$in`), otherwise every record.
    /// Natural order either way.
    pub fn candidates(&self, matcher: &Matcher) -> Vec<u64> {
        for index in &self.indexes {
            if index.spec.sparse || index.partial.is_some() || index.hashed.iter().any(|h| *h) {
                continue;
            }
            let field = &index.fields[0].0;
            if let Some(v) = matcher.equality_on(field) {
                return index.records_with_prefix(v);
            }
            if let Some(values) = matcher.in_values_on(field) {
                let mut rids: Vec<u64> = values
                    .iter()
                    .flat_map(|v| index.records_with_prefix(v))
                    .collect();
                rids.sort_unstable();
                rids.dedup();
                return rids;
            }
        }
        self.documents.keys().copied().collect()
    }

    /// Record ids of matching documents in natural order; at most one when `just_one`.
    pub fn matching(
        &self,
        matcher: &Matcher,
        vars: &Variables,
        just_one: bool,
    ) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for rid in self.candidates(matcher) {
            let Some(doc) = self.documents.get(&rid) else {
                continue;
            };
            if matcher.matches(doc, vars)? {
                out.push(rid);
                if just_one {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn index_by_name(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.spec.name == name)
    }

    pub fn index_by_key(&self, key: &Document) -> Option<&Index> {
        self.indexes
            .iter()
            .find(|i| same_key_pattern(&i.spec.key, key))
    }

    /// Builds a new index over the existing documents; a unique index over duplicates fails
    /// with 11000 and leaves the collection unchanged.
    pub fn create_index(&mut self, ns: &Namespace, spec: IndexSpec) -> Result<()> {
        let mut index = Index::new(spec);
        for (rid, doc) in &self.documents {
            let keys = index.keys(doc)?;
            if keys.len() > 1 {
                index.multikey = true;
            }
            for (bytes, values) in keys {
                if index.spec.unique && index.conflict(&bytes, Some(*rid)).is_some() {
                    return Err(index.duplicate_error(ns, &values));
                }
                index.entries.insert((bytes, *rid));
            }
        }
        self.indexes.push(index);
        Ok(())
    }

    /// Drops the index named `name`; false when there is none.
    pub fn drop_index(&mut self, name: &str) -> bool {
        let before = self.indexes.len();
        self.indexes.retain(|i| i.spec.name != name);
        self.indexes.len() != before
    }

    /// Total BSON size of the documents, for `listDatabases`/`collStats`-like reports.
    pub fn data_size(&self) -> usize {
        self.documents.values().map(|d| bson_size(d)).sum()
    }
}

/// `{_id: <id>}` of a document, the `documentKey` of its change events.
pub fn document_key(doc: &Document) -> Document {
    let mut key = Document::new();
    if let Some(id) = doc.get("_id") {
        key.insert("_id", id.clone());
    }
    key
}

/// Byte-level sameness, as mongod decides whether an update changed a document: field order
/// and numeric types matter (`bson::Document`'s `==` ignores field order).
pub fn identical_documents(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && identical_values(va, vb))
}

/// Byte-level sameness of two values (field order and numeric types matter).
pub fn identical_values(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => identical_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical_values(p, q))
        }
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code == y.code && identical_documents(&x.scope, &y.scope)
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    fn ns() -> Namespace {
        Namespace::new("db", "c")
    }

    fn encoded(v: Bson) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(&v, &mut out);
        out
    }

    #[test]
    fn equal_numbers_encode_equal_and_order_is_preserved() {
        assert_eq!(encoded(Bson::Int32(1)), encoded(Bson::Double(1.0)));
        assert_eq!(encoded(Bson::Int64(1)), encoded(Bson::Int32(1)));
        assert_eq!(encoded(Bson::Double(-0.0)), encoded(Bson::Int32(0)));
        assert_ne!(
            encoded(Bson::Int64(i64::MAX)),
            encoded(Bson::Int64(i64::MAX - 1))
        );
        let ordered = vec![
            Bson::MinKey,
            Bson::Null,
            Bson::Double(f64::NAN),
            Bson::Int32(-5),
            Bson::Double(-0.5),
            Bson::Int32(0),
            Bson::Double(2.5),
            Bson::Int64(1 << 40),
            Bson::String("".into()),
            Bson::String("a".into()),
            Bson::String("a\0".into()),
            Bson::String("ab".into()),
            Bson::Document(doc! {}),
            Bson::Document(doc! {"a": 1}),
            Bson::Document(doc! {"a": 1, "b": 1}),
            Bson::Document(doc! {"a": 2}),
            Bson::ObjectId(ObjectId::from_bytes([0; 12])),
            Bson::Boolean(false),
            Bson::Boolean(true),
            Bson::DateTime(bson::DateTime::from_millis(-1)),
            Bson::DateTime(bson::DateTime::from_millis(1)),
            Bson::MaxKey,
        ];
        for w in ordered.windows(2) {
            assert!(
                encoded(w[0].clone()) < encoded(w[1].clone()),
                "{:?} < {:?}",
                w[0],
                w[1]
            );
            assert_eq!(
                crate::compare::compare(&w[0], &w[1]),
                std::cmp::Ordering::Less
            );
        }
    }

    fn unique_compound() -> IndexSpec {
        IndexSpec {
            name: "agg_seq".into(),
            key: doc! {"aggregateId": 1, "sequenceNumber": 1},
            unique: true,
            sparse: false,
            expire_after_seconds: None,
            partial_filter: None,
            background: None,
        }
    }

    #[test]
    fn unique_index_reports_mongod_duplicate_key_error() {
        let mut c = Collection::new();
        c.create_index(&ns(), unique_compound()).unwrap();
        c.insert_document(
            &ns(),
            doc! {"_id": 1, "aggregateId": "a", "sequenceNumber": 5},
        )
        .unwrap();
        let err = c
            .insert_document(
                &ns(),
                doc! {"_id": 2, "aggregateId": "a", "sequenceNumber": 5i64},
            )
            .unwrap_err();
        assert_eq!(err.code, 11000);
        assert_eq!(
            err.errmsg,
            "E11000 duplicate key error collection: db.c index: agg_seq dup key: { aggregateId: \"a\", sequenceNumber: 5 }"
        );
        assert_eq!(
            err.extra,
            doc! {"keyPattern": {"aggregateId": 1, "sequenceNumber": 1},
            "keyValue": {"aggregateId": "a", "sequenceNumber": 5i64}}
        );
        assert_eq!(c.documents.len(), 1);
        let err = c.insert_document(&ns(), doc! {"_id": 1.0}).unwrap_err();
        assert!(err.errmsg.contains("index: _id_ dup key: { _id: 1.0 }"));
    }

    #[test]
    fn missing_fields_index_as_null_unless_sparse() {
        let mut c = Collection::new();
        c.create_index(
            &ns(),
            IndexSpec {
                name: "a_1".into(),
                key: doc! {"a": 1},
                unique: true,
                sparse: false,
                expire_after_seconds: None,
                partial_filter: None,
                background: None,
            },
        )
        .unwrap();
        c.insert_document(&ns(), doc! {"_id": 1}).unwrap();
        let err = c.insert_document(&ns(), doc! {"_id": 2}).unwrap_err();
        assert!(
            err.errmsg.ends_with("dup key: { a: null }"),
            "{}",
            err.errmsg
        );
        let mut s = Collection::new();
        s.create_index(
            &ns(),
            IndexSpec {
                name: "a_1".into(),
                key: doc! {"a": 1},
                unique: true,
                sparse: true,
                expire_after_seconds: None,
                partial_filter: None,
                background: None,
            },
        )
        .unwrap();
        s.insert_document(&ns(), doc! {"_id": 1}).unwrap();
        s.insert_document(&ns(), doc! {"_id": 2}).unwrap();
    }

    #[test]
    fn arrays_make_multikey_entries_and_parallel_arrays_are_refused() {
        let mut c = Collection::new();
        c.create_index(
            &ns(),
            IndexSpec {
                name: "a_1_b_1".into(),
                key: doc! {"a": 1, "b": 1},
                unique: true,
                sparse: false,
                expire_after_seconds: None,
                partial_filter: None,
                background: None,
            },
        )
        .unwrap();
        c.insert_document(&ns(), doc! {"_id": 1, "a": [1, 2, 2], "b": 1})
            .unwrap();
        assert!(c.indexes[1].multikey);
        let err = c
            .insert_document(&ns(), doc! {"_id": 2, "a": 2, "b": 1})
            .unwrap_err();
        assert_eq!(err.code, 11000);
        let err = c
            .insert_document(&ns(), doc! {"_id": 3, "a": [1], "b": [2]})
            .unwrap_err();
        assert_eq!(err.code, 171);
        assert_eq!(err.errmsg, "cannot index parallel arrays [b] [a]");
    }

    #[test]
    fn replace_and_delete_maintain_indexes() {
        let mut c = Collection::new();
        c.create_index(&ns(), unique_compound()).unwrap();
        let r1 = c
            .insert_document(
                &ns(),
                doc! {"_id": 1, "aggregateId": "a", "sequenceNumber": 1},
            )
            .unwrap()
            .0;
        c.replace_document(
            &ns(),
            r1,
            doc! {"_id": 1, "aggregateId": "a", "sequenceNumber": 2},
        )
        .unwrap();
        c.insert_document(
            &ns(),
            doc! {"_id": 2, "aggregateId": "a", "sequenceNumber": 1},
        )
        .unwrap();
        assert_eq!(
            c.delete_document(r1).map(|d| d.get_i32("_id").ok()),
            Some(Some(1))
        );
        c.insert_document(
            &ns(),
            doc! {"_id": 1, "aggregateId": "a", "sequenceNumber": 2},
        )
        .unwrap();
        assert_eq!(c.find_by_id(&Bson::Int64(2)), Some(2));
    }

    #[test]
    fn a_unique_index_over_duplicates_is_not_built() {
        let mut c = Collection::new();
        c.insert_document(&ns(), doc! {"_id": 1, "a": 1}).unwrap();
        c.insert_document(&ns(), doc! {"_id": 2, "a": 1.0}).unwrap();
        let err = c
            .create_index(
                &ns(),
                IndexSpec {
                    name: "a_1".into(),
                    key: doc! {"a": 1},
                    unique: true,
                    sparse: false,
                    expire_after_seconds: None,
                    partial_filter: None,
                    background: None,
                },
            )
            .unwrap_err();
        assert_eq!(err.code, 11000);
        assert_eq!(c.indexes.len(), 1);
    }

    #[test]
    fn identical_documents_respect_order_and_types() {
        assert!(identical_documents(
            &doc! {"a": 1, "b": {"c": f64::NAN}},
            &doc! {"a": 1, "b": {"c": f64::NAN}}
        ));
        assert!(!identical_documents(
            &doc! {"a": 1, "b": 2},
            &doc! {"b": 2, "a": 1}
        ));
        assert!(!identical_documents(&doc! {"a": 1}, &doc! {"a": 1.0}));
        assert!(!identical_documents(
            &doc! {"a": {"x": 1, "y": 2}},
            &doc! {"a": {"y": 2, "x": 1}}
        ));
    }

    #[test]
    fn bson_size_matches_serialisation() {
        let d = doc! {"_id": ObjectId::new(), "a": [1, "x", {"b": 2.5}], "n": null, "t": true,
        "l": 5i64, "bin": Binary{subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1,2,3]}};
        let mut buf = Vec::new();
        d.to_writer(&mut buf).unwrap();
        assert_eq!(bson_size(&d), buf.len());
    }
}
