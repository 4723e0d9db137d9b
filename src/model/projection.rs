//! From event to guarded update statement: a pure function, no I/O.
//!
//! A handler's update and `lastSequenceNumber: seq` go into one update statement whose filter
//! is the sequence guard, so the change and the position it records are one atomic write:
//! - `seq == 1`: `{_id: A, lastSequenceNumber: {$exists: false}}` with `upsert: true`. A new
//!   document is created; an existing one makes the upsert's insert fail with a duplicate key
//!   on `_id`, which is how a redelivered first event shows itself.
//! - `seq > 1`: `{_id: A, lastSequenceNumber: seq - 1}` without upsert: it matches only when
//!   the stored sequence is exactly the predecessor.
//!
//! Event values are inlined as `{$literal: ...}` (pipelines) or typed values (operators), so a
//! statement is self-contained and many can share one `update` command.

use crate::config::{Handler, placeholder};
use crate::model::event::Event;
use bson::raw::{RawArrayBuf, RawBinaryRef, RawBson, RawBsonRef, RawDocument};
use bson::{Bson, RawDocumentBuf, rawdoc};

/// The field of every read-model document that records the last applied sequence number.
pub(crate) const SEQUENCE_FIELD: &str = "lastSequenceNumber";

/// Why a handler could not be rendered for an event: the event lacks data the handler needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderError(pub String);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A handler compiled once per projection: its constant parts already encoded as BSON, its
/// references to the event resolved per event by reading the event's bytes. Rendering a
/// statement builds no document tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template {
    update: Node,
}

/// What an event does to its read-model document.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Change<'a> {
    /// Run the handler's update.
    Handler(&'a Template),
    /// Only advance the sequence (an event type this projection skips).
    AdvanceOnly,
}

/// One part of a compiled update.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// A value with no reference to the event, encoded once.
    Const(RawBson),
    /// `"${path}"` in an operator handler: the event's value at `path`, which must exist.
    Value(Vec<String>),
    /// `"$$event.path"` in a pipeline: `{$literal: value}`, or `"$$REMOVE"` when the event
    /// has no such field (what the variable would evaluate to).
    Literal(Vec<String>),
    /// `"$$event"` in a pipeline: `{$literal: <the event document>}`.
    WholeEvent,
    /// The event's sequence number (64-bit).
    Sequence,
    Document(Vec<(String, Node)>),
    Array(Vec<Node>),
}

impl Template {
    /// Compiles a handler; its `lastSequenceNumber` assignment is part of the template.
    pub fn compile(handler: &Handler) -> Template {
        let update = match handler {
            Handler::Operators(ops) => {
                let mut fields: Vec<(String, Node)> = ops
                    .iter()
                    .map(|(op, arg)| (op.clone(), Node::from_operator_arg(arg)))
                    .collect();
                let sequence = (SEQUENCE_FIELD.to_string(), Node::Sequence);
                match fields.iter_mut().find(|(op, _)| op == "$set") {
                    Some((_, Node::Document(set))) => set.push(sequence),
                    Some((_, other)) => *other = Node::Document(vec![sequence]),
                    None => fields.push(("$set".into(), Node::Document(vec![sequence]))),
                }
                Node::Document(fields)
            }
            Handler::Pipeline(stages) => {
                let mut nodes: Vec<Node> = stages
                    .iter()
                    .map(|s| Node::from_pipeline_value(&Bson::Document(s.clone())))
                    .collect();
                nodes.push(Node::Document(vec![(
                    "$set".into(),
                    Node::Document(vec![(
                        SEQUENCE_FIELD.into(),
                        Node::Document(vec![("$literal".into(), Node::Sequence)]),
                    )]),
                )]));
                Node::Array(nodes)
            }
        };
        Template {
            update: update.folded(),
        }
    }
}

impl Node {
    /// A value of an operator handler: `"${path}"` strings refer to the event.
    fn from_operator_arg(v: &Bson) -> Node {
        match v {
            Bson::String(s) => match placeholder(s) {
                Some(path) => Node::Value(path.split('.').map(str::to_string).collect()),
                None => Node::constant(v),
            },
            Bson::Document(d) => Node::Document(
                d.iter()
                    .map(|(k, v)| (k.clone(), Node::from_operator_arg(v)))
                    .collect(),
            ),
            Bson::Array(a) => Node::Array(a.iter().map(Node::from_operator_arg).collect()),
            other => Node::constant(other),
        }
    }

    /// A value of a pipeline handler: `"$$event"` and `"$$event.path"` refer to the event;
    /// a `{$literal: ...}` document is left as written.
    fn from_pipeline_value(v: &Bson) -> Node {
        match v {
            Bson::String(s) if s == "$$event" => Node::WholeEvent,
            Bson::String(s) if s.starts_with("$$event.") => Node::Literal(
                s["$$event.".len()..]
                    .split('.')
                    .map(str::to_string)
                    .collect(),
            ),
            Bson::Document(d) if d.contains_key("$literal") => Node::constant(v),
            Bson::Document(d) => Node::Document(
                d.iter()
                    .map(|(k, v)| (k.clone(), Node::from_pipeline_value(v)))
                    .collect(),
            ),
            Bson::Array(a) => Node::Array(a.iter().map(Node::from_pipeline_value).collect()),
            other => Node::constant(other),
        }
    }

    fn constant(v: &Bson) -> Node {
        // Every value of a parsed configuration is valid BSON.
        Node::Const(RawBson::try_from(v.clone()).unwrap_or(RawBson::Null))
    }

    /// Documents and arrays whose parts are all constant become one encoded constant.
    fn folded(self) -> Node {
        match self {
            Node::Document(fields) => {
                let fields: Vec<(String, Node)> =
                    fields.into_iter().map(|(k, n)| (k, n.folded())).collect();
                if fields.iter().all(|(_, n)| matches!(n, Node::Const(_))) {
                    let mut doc = RawDocumentBuf::new();
                    for (k, n) in fields {
                        if let Node::Const(v) = n {
                            doc.append(k, v);
                        }
                    }
                    Node::Const(RawBson::Document(doc))
                } else {
                    Node::Document(fields)
                }
            }
            Node::Array(items) => {
                let items: Vec<Node> = items.into_iter().map(Node::folded).collect();
                if items.iter().all(|n| matches!(n, Node::Const(_))) {
                    let mut array = RawArrayBuf::new();
                    for n in items {
                        if let Node::Const(v) = n {
                            array.push(v);
                        }
                    }
                    Node::Const(RawBson::Array(array))
                } else {
                    Node::Array(items)
                }
            }
            other => other,
        }
    }

    /// This node's value for one event.
    fn render<'e>(&'e self, event: &'e Event) -> Result<Rendered<'e>, RenderError> {
        Ok(match self {
            Node::Const(v) => Rendered::Borrowed(v.as_raw_bson_ref()),
            Node::Value(path) => {
                Rendered::Borrowed(lookup(&event.document, path).ok_or_else(|| {
                    RenderError(format!("the event has no field {}", path.join(".")))
                })?)
            }
            Node::Literal(path) => match lookup(&event.document, path) {
                Some(value) => {
                    let mut literal = RawDocumentBuf::new();
                    literal.append_ref("$literal", value);
                    Rendered::Owned(RawBson::Document(literal))
                }
                None => Rendered::Borrowed(RawBsonRef::String("$$REMOVE")),
            },
            Node::WholeEvent => {
                let mut literal = RawDocumentBuf::new();
                literal.append_ref("$literal", RawBsonRef::Document(&event.document));
                Rendered::Owned(RawBson::Document(literal))
            }
            Node::Sequence => Rendered::Borrowed(RawBsonRef::Int64(event.sequence)),
            Node::Document(fields) => {
                let mut doc = RawDocumentBuf::new();
                for (key, node) in fields {
                    node.render(event)?.append_to(&mut doc, key);
                }
                Rendered::Owned(RawBson::Document(doc))
            }
            Node::Array(items) => {
                let mut array = RawArrayBuf::new();
                for node in items {
                    match node.render(event)? {
                        Rendered::Borrowed(v) => array.push(v.to_raw_bson()),
                        Rendered::Owned(v) => array.push(v),
                    }
                }
                Rendered::Owned(RawBson::Array(array))
            }
        })
    }
}

/// A rendered value: read from the template or the event in place, or built for this event.
enum Rendered<'e> {
    Borrowed(RawBsonRef<'e>),
    Owned(RawBson),
}

impl Rendered<'_> {
    fn append_to(self, doc: &mut RawDocumentBuf, key: &str) {
        match self {
            Rendered::Borrowed(v) => doc.append_ref(key, v),
            Rendered::Owned(v) => doc.append(key, v),
        }
    }
}

/// One statement of an `update` command (`{q, u, upsert}`) applying `event` under the guard.
pub(crate) fn guarded_statement(
    event: &Event,
    change: Change<'_>,
) -> Result<RawDocumentBuf, RenderError> {
    let seq = event.sequence;
    let mut filter = RawDocumentBuf::new();
    append_id(&mut filter, &event.aggregate_id);
    if seq == 1 {
        filter.append(SEQUENCE_FIELD, rawdoc! {"$exists": false});
    } else {
        filter.append(SEQUENCE_FIELD, seq - 1);
    }
    let mut statement = RawDocumentBuf::new();
    statement.append("q", filter);
    match change {
        Change::AdvanceOnly => statement.append("u", rawdoc! {"$set": {SEQUENCE_FIELD: seq}}),
        Change::Handler(template) => template
            .update
            .render(event)?
            .append_to(&mut statement, "u"),
    }
    statement.append("upsert", seq == 1);
    Ok(statement)
}

/// Appends an aggregate id (one of the types an event's id may have) as `_id`.
fn append_id(doc: &mut RawDocumentBuf, id: &Bson) {
    match id {
        Bson::String(s) => doc.append_ref("_id", s.as_str()),
        Bson::Int32(n) => doc.append("_id", *n),
        Bson::Int64(n) => doc.append("_id", *n),
        Bson::ObjectId(o) => doc.append("_id", *o),
        Bson::Binary(b) => doc.append_ref(
            "_id",
            RawBinaryRef {
                subtype: b.subtype,
                bytes: &b.bytes,
            },
        ),
        other => doc.append(
            "_id",
            RawBson::try_from(other.clone()).unwrap_or(RawBson::Null),
        ),
    }
}

/// The value at a dotted path of a document (no array traversal; array elements by index).
fn lookup<'a>(doc: &'a RawDocument, path: &[String]) -> Option<RawBsonRef<'a>> {
    let (first, rest) = path.split_first()?;
    let mut cur = doc.get(first).ok()??;
    for part in rest {
        cur = match cur {
            RawBsonRef::Document(d) => d.get(part).ok()??,
            RawBsonRef::Array(a) => a.get(part.parse::<usize>().ok()?).ok()??,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    use bson::{Document, doc};

    fn event(seq: i64, event_type: &str, data: Document) -> Event {
        crate::model::event::decode_event(
            &doc! {"aggregateId": "acc-1", "sequenceNumber": seq, "eventType": event_type, "data": data},
            &Default::default(),
        )
        .unwrap()
    }

    /// The statement for `event` under `handler`, as a document.
    fn statement(event: &Event, handler: Handler) -> Result<Document, RenderError> {
        let template = Template::compile(&handler);
        guarded_statement(event, Change::Handler(&template)).map(|s| s.to_document().unwrap())
    }

    #[test]
    fn the_first_event_upserts_only_a_document_without_a_sequence() {
        let h = Handler::Operators(doc! {"$set": {"owner": "${data.owner}", "balance": 0i64}});
        let s = statement(&event(1, "AccountOpened", doc! {"owner": "ann"}), h).unwrap();
        assert_eq!(
            s,
            doc! {
                "q": {"_id": "acc-1", "lastSequenceNumber": {"$exists": false}},
                "u": {"$set": {"owner": "ann", "balance": 0i64, "lastSequenceNumber": 1i64}},
                "upsert": true,
            }
        );
    }

    #[test]
    fn later_events_require_their_predecessor_and_never_upsert() {
        let h = Handler::Operators(doc! {"$inc": {"balance": "${data.amount}"}});
        let s = statement(&event(5, "Deposited", doc! {"amount": 7i64}), h).unwrap();
        assert_eq!(
            s,
            doc! {
                "q": {"_id": "acc-1", "lastSequenceNumber": 4i64},
                "u": {"$inc": {"balance": 7i64}, "$set": {"lastSequenceNumber": 5i64}},
                "upsert": false,
            }
        );
    }

    #[test]
    fn pipelines_see_the_event_as_literals() {
        let h = Handler::Pipeline(vec![
            doc! {"$set": {"balance": {"$subtract": ["$balance", "$$event.data.amount"]}, "note": "$$event.data.missing"}},
        ]);
        let s = statement(&event(2, "Withdrawn", doc! {"amount": "$5"}), h).unwrap();
        let u = s.get_array("u").unwrap();
        assert_eq!(
            u[0],
            Bson::Document(
                doc! {"$set": {"balance": {"$subtract": ["$balance", {"$literal": "$5"}]}, "note": "$$REMOVE"}}
            )
        );
        assert_eq!(
            u[1],
            Bson::Document(doc! {"$set": {"lastSequenceNumber": {"$literal": 2i64}}})
        );
    }

    #[test]
    fn a_missing_placeholder_field_is_an_error_not_a_null() {
        let h = Handler::Operators(doc! {"$inc": {"balance": "${data.amount}"}});
        let err = statement(&event(2, "Deposited", doc! {}), h).unwrap_err();
        assert_eq!(err.0, "the event has no field data.amount");
    }

    #[test]
    fn skipped_event_types_only_advance_the_sequence() {
        let s = guarded_statement(&event(3, "Audited", doc! {}), Change::AdvanceOnly)
            .unwrap()
            .to_document()
            .unwrap();
        assert_eq!(
            s.get_document("u").unwrap(),
            &doc! {"$set": {"lastSequenceNumber": 3i64}}
        );
    }
}
