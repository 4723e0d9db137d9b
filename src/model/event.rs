//! Decoding change events and event documents from raw BSON.
//!
//! The daemon decodes every change event itself instead of letting the driver deserialize it:
//! the driver moves its cached resume token before deserializing, so an event that failed to
//! deserialize there would be skipped silently. Here a malformed event becomes a
//! [`Malformed`] value that is dead-lettered with its reason.

use crate::config::EventFields;
use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;

/// One event of the event collection, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The aggregate this event belongs to; also the read-model document's `_id`.
    pub(crate) aggregate_id: Bson,
    /// Position of the event in its aggregate's history, from 1.
    pub sequence: i64,
    pub event_type: String,
    /// The whole event document as stored, for handlers (`${data.amount}`, `$$event`): kept as
    /// BSON bytes, which handlers read values from without building a document tree.
    pub document: RawDocumentBuf,
}

/// Why an event document cannot be projected.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub reason: String,
    /// The event document as found (None when the change event had no document at all).
    pub document: Option<Document>,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A change event from the stream: its position, and the event it carries (or why not).
#[derive(Debug, Clone)]
pub(crate) struct ChangeEvent {
    /// The change event's `_id`: the resume token of this position.
    pub token: ResumeToken,
    pub cluster_time: Option<Timestamp>,
    pub event: Result<Event, Malformed>,
}

/// Decodes one raw change event, reading only the fields it needs from the bytes. `Err` only
/// when not even the resume token can be read (then the position itself is unknown and the
/// stream must be re-opened).
pub(crate) fn decode_change(
    raw: &RawDocumentBuf,
    fields: &EventFields,
) -> Result<ChangeEvent, String> {
    let field = |name: &str| {
        raw.get(name)
            .map_err(|e| format!("change event is not valid BSON: {e}"))
    };
    let token = match field("_id")? {
        Some(RawBsonRef::Document(id)) => bson::from_slice::<ResumeToken>(id.as_bytes())
            .map_err(|e| format!("change event has an unreadable resume token: {e}"))?,
        _ => return Err("change event has no resume token (_id)".to_string()),
    };
    let cluster_time = match field("clusterTime")? {
        Some(RawBsonRef::Timestamp(ts)) => Some(ts),
        _ => None,
    };
    let event = match field("operationType")? {
        Some(RawBsonRef::String("insert")) => match field("fullDocument")? {
            Some(RawBsonRef::Document(d)) => decode_raw_event(d, fields),
            _ => Err(Malformed {
                reason: "insert change event without fullDocument".into(),
                document: None,
            }),
        },
        Some(RawBsonRef::String(other)) => Err(Malformed {
            reason: format!("unexpected change event operationType {other:?}"),
            document: None,
        }),
        _ => Err(Malformed {
            reason: "change event without operationType".into(),
            document: None,
        }),
    };
    Ok(ChangeEvent {
        token,
        cluster_time,
        event,
    })
}

/// Decodes an event document held as a tree (read back from the event collection or the
/// parked collection, or written by a test).
pub fn decode_event(doc: &Document, fields: &EventFields) -> Result<Event, Malformed> {
    match RawDocumentBuf::from_document(doc) {
        Ok(raw) => decode_raw_event(&raw, fields),
        Err(e) => Err(Malformed {
            reason: format!("event is not valid BSON: {e}"),
            document: Some(doc.clone()),
        }),
    }
}

/// Decodes an event document from its BSON bytes (from a change event or the fold's scan).
pub(crate) fn decode_raw_event(
    doc: &RawDocument,
    fields: &EventFields,
) -> Result<Event, Malformed> {
    let malformed = |reason: String| Malformed {
        reason,
        document: Document::try_from(doc).ok(),
    };
    let get = |name: &str| {
        doc.get(name)
            .map_err(|e| malformed(format!("event is not valid BSON: {e}")))
    };
    let aggregate_id = match get(&fields.aggregate_id)? {
        None => return Err(malformed(format!("missing {}", fields.aggregate_id))),
        Some(RawBsonRef::String("")) => {
            return Err(malformed(format!(
                "{} is an empty string",
                fields.aggregate_id
            )));
        }
        Some(
            v @ (RawBsonRef::String(_)
            | RawBsonRef::ObjectId(_)
            | RawBsonRef::Int32(_)
            | RawBsonRef::Int64(_)
            | RawBsonRef::Binary(_)),
        ) => Bson::try_from(v.to_raw_bson())
            .map_err(|e| malformed(format!("{} is not valid BSON: {e}", fields.aggregate_id)))?,
        Some(other) => {
            return Err(malformed(format!(
                "{} has type {:?}; expected a string, ObjectId, integer or binary id",
                fields.aggregate_id,
                other.element_type()
            )));
        }
    };
    let sequence = match get(&fields.sequence_number)? {
        None => return Err(malformed(format!("missing {}", fields.sequence_number))),
        Some(RawBsonRef::Int32(n)) => n as i64,
        Some(RawBsonRef::Int64(n)) => n,
        Some(other) => {
            return Err(malformed(format!(
                "{} has type {:?}; expected an integer",
                fields.sequence_number,
                other.element_type()
            )));
        }
    };
    if sequence < 1 {
        return Err(malformed(format!(
            "{} is {sequence}; sequences start at 1",
            fields.sequence_number
        )));
    }
    let event_type = match get(&fields.event_type)? {
        None => return Err(malformed(format!("missing {}", fields.event_type))),
        Some(RawBsonRef::String("")) => {
            return Err(malformed(format!(
                "{} is an empty string",
                fields.event_type
            )));
        }
        Some(RawBsonRef::String(s)) => s.to_string(),
        Some(other) => {
            return Err(malformed(format!(
                "{} has type {:?}; expected a string",
                fields.event_type,
                other.element_type()
            )));
        }
    };
    Ok(Event {
        aggregate_id,
        sequence,
        event_type,
        document: doc.to_raw_document_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn fields() -> EventFields {
        EventFields::default()
    }

    #[test]
    fn a_well_formed_event_decodes() {
        let d = doc! {"aggregateId": "acc-1", "sequenceNumber": 3i64, "eventType": "Deposited", "data": {"amount": 5}};
        let e = decode_event(&d, &fields()).unwrap();
        assert_eq!(e.aggregate_id, Bson::String("acc-1".into()));
        assert_eq!(e.sequence, 3);
        assert_eq!(e.event_type, "Deposited");
    }

    #[test]
    fn malformed_events_say_why() {
        let cases = [
            (
                doc! {"sequenceNumber": 1, "eventType": "A"},
                "missing aggregateId",
            ),
            (
                doc! {"aggregateId": null, "sequenceNumber": 1, "eventType": "A"},
                "aggregateId has type Null",
            ),
            (
                doc! {"aggregateId": "a", "sequenceNumber": "1", "eventType": "A"},
                "sequenceNumber has type String",
            ),
            (
                doc! {"aggregateId": "a", "sequenceNumber": 0, "eventType": "A"},
                "sequenceNumber is 0",
            ),
            (
                doc! {"aggregateId": "a", "sequenceNumber": 1},
                "missing eventType",
            ),
            (
                doc! {"aggregateId": "a", "sequenceNumber": 1, "eventType": 7},
                "eventType has type Int32",
            ),
        ];
        for (d, want) in cases {
            let err = decode_event(&d, &fields()).unwrap_err();
            assert!(err.reason.starts_with(want), "{:?} -> {}", d, err.reason);
            assert_eq!(err.document.as_ref(), Some(&d));
        }
    }

    #[test]
    fn change_events_keep_their_token_even_when_the_event_is_malformed() {
        let raw = RawDocumentBuf::from_document(&doc! {
            "_id": {"_data": "8200"},
            "operationType": "insert",
            "clusterTime": Timestamp { time: 5, increment: 1 },
            "fullDocument": {"aggregateId": "a", "sequenceNumber": "x", "eventType": "A"},
        })
        .unwrap();
        let change = decode_change(&raw, &fields()).unwrap();
        assert_eq!(
            bson::to_bson(&change.token).unwrap(),
            Bson::Document(doc! {"_data": "8200"})
        );
        assert_eq!(
            change.cluster_time,
            Some(Timestamp {
                time: 5,
                increment: 1
            })
        );
        assert!(change.event.is_err());
        let raw = RawDocumentBuf::from_document(&doc! {"operationType": "insert"}).unwrap();
        assert!(decode_change(&raw, &fields()).is_err());
    }
}
