//! What one oplog entry becomes in a change stream: the events a stream of a given scope and
//! options sees (manual: "Change Events"), with the fields mongod's
//! `change_stream_event_transform.cpp` puts in them.
//!
//! - Expanded streams (`showExpandedEvents`, 6.0+) also see the DDL events `create`,
//!   `createIndexes`, `dropIndexes` and `modify`, carry `collectionUUID`, an
//!   `operationDescription` on DDL events and `disambiguatedPaths` in `updateDescription`.
//! - `fullDocument: "whenAvailable" | "required"` gives an update event the post-image, and
//!   `fullDocumentBeforeChange` gives update, replace and delete events the pre-image, when the
//!   collection recorded images for that write (`changeStreamPreAndPostImages` enabled at the
//!   time); `required` fails with NoMatchingDocument when the image is missing (manual:
//!   "Change Streams with Document Pre- and Post-Images").

use crate::error::{CommandError, ErrorCode, Result};
use crate::oplog::{Namespace, OplogEntry, OplogOp};
use crate::storage::Data;
use bson::{Binary, Bson, Document, doc};

/// mongod's NoMatchingDocument, for a required image that was not recorded.
const NO_MATCHING_DOCUMENT: ErrorCode = ErrorCode {
    code: 47,
    name: "NoMatchingDocument",
};

/// `fullDocument` of the `$changeStream` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FullDocument {
    #[default]
    Default,
    UpdateLookup,
    WhenAvailable,
    Required,
}

/// `fullDocumentBeforeChange` of the `$changeStream` stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BeforeChange {
    #[default]
    Off,
    WhenAvailable,
    Required,
}

/// The options that decide what a stream's events look like.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventShape {
    pub show_expanded: bool,
    pub full_document: FullDocument,
    pub before_change: BeforeChange,
}

/// What a stream watches (manual: "Watch a Collection, Database, or Deployment").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Collection(Namespace),
    Database(String),
    Cluster,
}

impl Scope {
    pub(crate) fn covers(&self, ns: &Namespace) -> bool {
        match self {
            Scope::Collection(watched) => watched == ns,
            Scope::Database(db) => &ns.db == db && !ns.coll.starts_with("system."),
            Scope::Cluster => !is_internal_db(&ns.db) && !ns.coll.starts_with("system."),
        }
    }

    /// The namespace the cursor is registered under, as the driver will name it in `getMore`.
    pub(crate) fn cursor_ns(&self) -> Namespace {
        match self {
            Scope::Collection(ns) => ns.clone(),
            Scope::Database(db) => Namespace::new(db.clone(), "$cmd.aggregate"),
            Scope::Cluster => Namespace::new("admin", "$cmd.aggregate"),
        }
    }
}

/// The databases a cluster-wide stream leaves out and no narrower stream may watch.
pub(crate) fn is_internal_db(db: &str) -> bool {
    matches!(db, "admin" | "config" | "local")
}

/// One event an oplog entry yields for a stream, before it gets its token.
pub struct RawEvent {
    pub operation_type: &'static str,
    /// The collection's UUID, reported as `collectionUUID` by expanded streams.
    pub collection_uuid: Option<Binary>,
    /// The fields after `wallTime`, in mongod's order.
    pub body: Document,
    pub invalidates: bool,
}

impl RawEvent {
    fn new(operation_type: &'static str, uuid: Option<&Binary>, body: Document) -> Self {
        Self {
            operation_type,
            collection_uuid: uuid.cloned(),
            body,
            invalidates: false,
        }
    }

    fn invalidate() -> Self {
        Self {
            operation_type: "invalidate",
            collection_uuid: None,
            body: Document::new(),
            invalidates: true,
        }
    }

    /// The whole event: `_id`, `operationType`, `clusterTime`, `collectionUUID` (expanded
    /// streams), `wallTime`, then the body.
    pub fn into_event(self, token: &Document, entry: &OplogEntry, expanded: bool) -> Document {
        let mut event = doc! {
            "_id": token.clone(),
            "operationType": self.operation_type,
            "clusterTime": entry.ts,
        };
        if expanded && let Some(uuid) = self.collection_uuid {
            event.insert("collectionUUID", Bson::Binary(uuid));
        }
        event.insert("wallTime", entry.wall);
        event.extend(self.body);
        event
    }
}

fn ns_doc(ns: &Namespace) -> Document {
    doc! {"db": ns.db.clone(), "coll": ns.coll.clone()}
}

/// `documentKey` of an insert: the stored document's `_id`.
fn key_of(document: &Document) -> Document {
    document
        .get("_id")
        .map(|id| doc! {"_id": id.clone()})
        .unwrap_or_default()
}

/// The events `entry` yields for a stream over `scope` shaped by `shape`, in order.
pub(crate) fn events_for(
    scope: &Scope,
    shape: &EventShape,
    entry: &OplogEntry,
    data: &Data,
) -> Result<Vec<RawEvent>> {
    let uuid = entry.ui.as_ref();
    let event = |t: &'static str, body: Document| RawEvent::new(t, uuid, body);
    let events = match &entry.op {
        OplogOp::Insert { ns, document } if scope.covers(ns) => vec![event(
            "insert",
            doc! {"fullDocument": Document::clone(document), "ns": ns_doc(ns), "documentKey": key_of(document)},
        )],
        OplogOp::Update {
            ns,
            document_key,
            before,
            after,
            pipeline,
            images,
        } if scope.covers(ns) => {
            let mut body = Document::new();
            match shape.full_document {
                FullDocument::Default => {}
                // `updateLookup` reads the document as it is now, not as the update left it.
                FullDocument::UpdateLookup => {
                    let current = data.lookup_document(ns, document_key);
                    body.insert("fullDocument", current.map_or(Bson::Null, Bson::Document));
                }
                FullDocument::WhenAvailable | FullDocument::Required => {
                    let post = images.then(|| after.clone());
                    if post.is_none() && shape.full_document == FullDocument::Required {
                        return Err(missing_image("post", ns, entry));
                    }
                    body.insert("fullDocument", post.map_or(Bson::Null, Bson::Document));
                }
            }
            body.insert("ns", ns_doc(ns));
            body.insert("documentKey", document_key.clone());
            body.insert(
                "updateDescription",
                crate::updatedesc::describe(before, after, *pipeline, shape.show_expanded),
            );
            let pre = images.then(|| before.clone());
            add_pre_image(&mut body, shape, pre, ns, entry)?;
            vec![event("update", body)]
        }
        OplogOp::Replace {
            ns,
            document_key,
            document,
            pre_image,
        } if scope.covers(ns) => {
            let mut body = doc! {
                "fullDocument": document.clone(),
                "ns": ns_doc(ns),
                "documentKey": document_key.clone(),
            };
            let pre = pre_image.as_deref().cloned();
            add_pre_image(&mut body, shape, pre, ns, entry)?;
            vec![event("replace", body)]
        }
        OplogOp::Delete {
            ns,
            document_key,
            pre_image,
        } if scope.covers(ns) => {
            let mut body = doc! {"ns": ns_doc(ns), "documentKey": document_key.clone()};
            let pre = pre_image.as_deref().cloned();
            add_pre_image(&mut body, shape, pre, ns, entry)?;
            vec![event("delete", body)]
        }
        OplogOp::Drop { ns } if scope.covers(ns) => {
            let mut events = vec![event("drop", doc! {"ns": ns_doc(ns)})];
            if matches!(scope, Scope::Collection(_)) {
                events.push(RawEvent::invalidate());
            }
            events
        }
        // A rename concerns a stream when it moves a watched collection away or overwrites
        // one; a collection stream is invalidated by either, when the rename ran in its
        // database (mongod's change_stream_filter_helpers.cpp).
        OplogOp::Rename {
            from,
            to,
            drop_target,
        } if scope.covers(from) || scope.covers(to) => {
            let mut body = doc! {"ns": ns_doc(from), "to": ns_doc(to)};
            if shape.show_expanded {
                let mut description = doc! {"to": ns_doc(to)};
                if let Some(target) = drop_target {
                    description.insert("dropTarget", Bson::Binary(target.clone()));
                }
                body.insert("operationDescription", description);
            }
            let mut events = vec![event("rename", body)];
            if let Scope::Collection(watched) = scope
                && watched.db == from.db
            {
                events.push(RawEvent::invalidate());
            }
            events
        }
        OplogOp::DropDatabase { db } => match scope {
            Scope::Database(watched) if watched == db => vec![
                RawEvent::new("dropDatabase", None, doc! {"ns": {"db": db.clone()}}),
                RawEvent::invalidate(),
            ],
            Scope::Cluster if !is_internal_db(db) => {
                vec![RawEvent::new(
                    "dropDatabase",
                    None,
                    doc! {"ns": {"db": db.clone()}},
                )]
            }
            // A collection stream was already invalidated by its collection's `drop`,
            // which mongod writes before `dropDatabase`.
            _ => Vec::new(),
        },
        op => match op.ddl_namespace() {
            Some(ns) if shape.show_expanded && scope.covers(ns) => vec![ddl_event(op, ns, uuid)],
            _ => Vec::new(),
        },
    };
    Ok(events)
}

/// The event of a DDL entry only expanded streams see.
fn ddl_event(op: &OplogOp, ns: &Namespace, uuid: Option<&Binary>) -> RawEvent {
    let body = |description: Document| doc! {"ns": ns_doc(ns), "operationDescription": description};
    match op {
        OplogOp::Create { description, .. } => {
            RawEvent::new("create", uuid, body(description.clone()))
        }
        OplogOp::CreateIndexes { indexes, .. } => RawEvent::new(
            "createIndexes",
            uuid,
            body(doc! {"indexes": indexes.clone()}),
        ),
        OplogOp::DropIndexes { index, .. } => {
            RawEvent::new("dropIndexes", uuid, body(doc! {"indexes": [index.clone()]}))
        }
        OplogOp::Modify {
            description,
            state_before,
            ..
        } => {
            let mut b = body(description.clone());
            b.insert("stateBeforeChange", state_before.clone());
            RawEvent::new("modify", uuid, b)
        }
        _ => RawEvent::new("noop", uuid, Document::new()),
    }
}

/// Appends `fullDocumentBeforeChange` as the requested mode asks (mongod's
/// `DocumentSourceChangeStreamAddPreImage`, which runs after the event is built).
fn add_pre_image(
    body: &mut Document,
    shape: &EventShape,
    pre: Option<Document>,
    ns: &Namespace,
    entry: &OplogEntry,
) -> Result<()> {
    match (shape.before_change, pre) {
        (BeforeChange::Off, _) => {}
        (BeforeChange::Required, None) => return Err(missing_image("pre", ns, entry)),
        (_, pre) => {
            body.insert(
                "fullDocumentBeforeChange",
                pre.map_or(Bson::Null, Bson::Document),
            );
        }
    }
    Ok(())
}

fn missing_image(which: &str, ns: &Namespace, entry: &OplogEntry) -> CommandError {
    let events = if which == "pre" {
        "update, delete and replace events"
    } else {
        "update events"
    };
    CommandError::new(
        NO_MATCHING_DOCUMENT,
        format!(
            "Change stream was configured to require a {which}-image for all {events}, but the \
             {which}-image was not found for event: {{ns: \"{ns}\", clusterTime: {}}}",
            entry.ts
        ),
    )
}

/// Splits an event over `max` bytes into fragments (mongod's `splitChangeEvent`): the fields
/// other than `_id`, smallest first (by size, then name), fill fragments greedily; each fragment
/// carries its own resume token (from `token`, given its number from 1) and
/// `splitEvent: {fragment, of}`. A single field too large for a fragment fails with
/// BSONObjectTooLarge.
pub fn split<P>(
    event: Document,
    max: usize,
    token: impl Fn(u16) -> (P, Document),
) -> Result<Vec<(P, Document)>> {
    let mut fields: Vec<(usize, String, Bson)> = event
        .into_iter()
        .filter(|(k, _)| k != "_id")
        .map(|(k, v)| (2 + k.len() + crate::storage::value_size(&v), k, v))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut fragments: Vec<(P, Document)> = Vec::new();
    let mut fields = fields.into_iter().peekable();
    while fields.peek().is_some() {
        let number = fragments.len() as u16 + 1;
        let (at, id) = token(number);
        let mut fragment = doc! {"_id": id, "splitEvent": {"fragment": i32::from(number), "of": 0}};
        let mut size = crate::storage::bson_size(&fragment);
        while let Some((field_size, _, _)) = fields.peek() {
            let first = fragment.len() == 2;
            if !first && size + field_size > max {
                break;
            }
            let (field_size, k, v) = fields.next().expect("peeked");
            size += field_size;
            fragment.insert(k, v);
        }
        if size > max {
            return Err(CommandError::new(
                crate::error::BSON_OBJECT_TOO_LARGE,
                format!(
                    "Splitting change event failed: fragment size {size} is greater than maximum \
                     allowed fragment size {max}"
                ),
            ));
        }
        fragments.push((at, fragment));
    }
    let total = fragments.len() as i32;
    for (_, fragment) in &mut fragments {
        if let Ok(split) = fragment.get_document_mut("splitEvent") {
            split.insert("of", total);
        }
    }
    Ok(fragments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_event_is_split_smallest_fields_first() {
        let big = "x".repeat(600);
        let event = doc! {
            "_id": {"_data": "00"},
            "operationType": "update",
            "fullDocumentBeforeChange": {"v": big.clone()},
            "fullDocument": {"v": big},
        };
        let fragments = split(event, 1000, |n| (n, doc! {"_data": format!("0{n}")})).unwrap();
        assert_eq!(fragments.len(), 2);
        let (n, first) = &fragments[0];
        assert_eq!(*n, 1);
        assert_eq!(
            first.get_document("splitEvent").unwrap(),
            &doc! {"fragment": 1, "of": 2}
        );
        let keys: Vec<&str> = first.keys().map(String::as_str).collect();
        assert_eq!(keys, ["_id", "splitEvent", "operationType", "fullDocument"]);
        let second = &fragments[1].1;
        assert_eq!(second.get_document("_id").unwrap(), &doc! {"_data": "02"});
        assert!(second.contains_key("fullDocumentBeforeChange"));
        assert!(split(doc! {"a": "y".repeat(2000)}, 1000, |n| (n, doc! {})).is_err());
    }
}
