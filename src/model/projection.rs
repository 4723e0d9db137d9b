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
use bson::{Bson, Document, doc};

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

/// What an event does to its read-model document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// Run the handler's update.
    Handler(Handler),
    /// Only advance the sequence (an event type this projection skips).
    AdvanceOnly,
}

/// One statement of an `update` command (`{q, u, upsert}`) applying `event` under the guard.
pub(crate) fn guarded_statement(event: &Event, change: &Change) -> Result<Document, RenderError> {
    let seq = event.sequence;
    let filter = if seq == 1 {
        doc! {"_id": event.aggregate_id.clone(), SEQUENCE_FIELD: {"$exists": false}}
    } else {
        doc! {"_id": event.aggregate_id.clone(), SEQUENCE_FIELD: seq - 1}
    };
    let update = match change {
        Change::AdvanceOnly => Bson::Document(doc! {"$set": {SEQUENCE_FIELD: seq}}),
        Change::Handler(Handler::Operators(ops)) => {
            let mut rendered = Document::new();
            for (op, arg) in ops {
                rendered.insert(op.clone(), substitute(arg, &event.document)?);
            }
            match rendered.get_mut("$set") {
                Some(Bson::Document(set)) => {
                    set.insert(SEQUENCE_FIELD, seq);
                }
                _ => {
                    rendered.insert("$set", doc! {SEQUENCE_FIELD: seq});
                }
            }
            Bson::Document(rendered)
        }
        Change::Handler(Handler::Pipeline(stages)) => {
            let mut rendered: Vec<Bson> = stages
                .iter()
                .map(|s| inline_event(&Bson::Document(s.clone()), &event.document))
                .collect();
            rendered.push(Bson::Document(
                doc! {"$set": {SEQUENCE_FIELD: {"$literal": seq}}},
            ));
            Bson::Array(rendered)
        }
    };
    Ok(doc! {"q": filter, "u": update, "upsert": seq == 1})
}

/// Replaces every `"${path}"` string with the typed value at `path` of the event.
fn substitute(v: &Bson, event: &Document) -> Result<Bson, RenderError> {
    Ok(match v {
        Bson::String(s) => match placeholder(s) {
            Some(path) => lookup(event, path)
                .cloned()
                .ok_or_else(|| RenderError(format!("the event has no field {path}")))?,
            None => v.clone(),
        },
        Bson::Document(d) => {
            let mut out = Document::new();
            for (k, v) in d {
                out.insert(k.clone(), substitute(v, event)?);
            }
            Bson::Document(out)
        }
        Bson::Array(a) => Bson::Array(
            a.iter()
                .map(|v| substitute(v, event))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// Replaces `"$$event"` and `"$$event.path"` with the value as a `$literal` (or `$$REMOVE`
/// when the event has no such field, which is what the variable would evaluate to).
fn inline_event(v: &Bson, event: &Document) -> Bson {
    match v {
        Bson::String(s) if s == "$$event" => Bson::Document(doc! {"$literal": event.clone()}),
        Bson::String(s) if s.starts_with("$$event.") => match lookup(event, &s["$$event.".len()..])
        {
            Some(value) => Bson::Document(doc! {"$literal": value.clone()}),
            None => Bson::String("$$REMOVE".into()),
        },
        Bson::Document(d) if d.contains_key("$literal") => v.clone(),
        Bson::Document(d) => {
            let mut out = Document::new();
            for (k, v) in d {
                out.insert(k.clone(), inline_event(v, event));
            }
            Bson::Document(out)
        }
        Bson::Array(a) => Bson::Array(a.iter().map(|v| inline_event(v, event)).collect()),
        other => other.clone(),
    }
}

/// The value at a dotted path of a document (no array traversal).
pub(crate) fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for part in parts {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, event_type: &str, data: Document) -> Event {
        Event {
            aggregate_id: Bson::String("acc-1".into()),
            sequence: seq,
            event_type: event_type.into(),
            document: doc! {"aggregateId": "acc-1", "sequenceNumber": seq, "eventType": event_type, "data": data},
        }
    }

    #[test]
    fn the_first_event_upserts_only_a_document_without_a_sequence() {
        let h = Handler::Operators(doc! {"$set": {"owner": "${data.owner}", "balance": 0i64}});
        let s = guarded_statement(
            &event(1, "AccountOpened", doc! {"owner": "ann"}),
            &Change::Handler(h),
        )
        .unwrap();
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
        let s = guarded_statement(
            &event(5, "Deposited", doc! {"amount": 7i64}),
            &Change::Handler(h),
        )
        .unwrap();
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
        let s = guarded_statement(
            &event(2, "Withdrawn", doc! {"amount": "$5"}),
            &Change::Handler(h),
        )
        .unwrap();
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
        let err =
            guarded_statement(&event(2, "Deposited", doc! {}), &Change::Handler(h)).unwrap_err();
        assert_eq!(err.0, "the event has no field data.amount");
    }

    #[test]
    fn skipped_event_types_only_advance_the_sequence() {
        let s = guarded_statement(&event(3, "Audited", doc! {}), &Change::AdvanceOnly).unwrap();
        assert_eq!(
            s.get_document("u").unwrap(),
            &doc! {"$set": {"lastSequenceNumber": 3i64}}
        );
    }
}
