//! The event collection's change stream: how a worker's stream is opened (its `$match` and
//! where it starts), and the reader task that prefetches it, so that the next batch is read
//! while the current one is written.

use crate::error::StoreError;
use crate::model::partition::Worker;
use bson::{Bson, Document, RawDocumentBuf, Timestamp, doc};
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::ChangeStreamOptions;
use mongodb::{Collection, Database};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

/// Change events read ahead of the dispatcher: while the lanes write one batch, the next is
/// already being read. Bounded, so a slow server slows the reader.
pub(crate) const PREFETCH: usize = 4096;

/// Change events asked for per `getMore`: half the prefetch queue, so one reply fits while the
/// previous one is still being dispatched.
pub(crate) const STREAM_BATCH: u32 = 2048;

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StreamFrom {
    /// Only events written from now on.
    Now,
    /// After this token, which the same stream (the same `$match`) issued.
    After(ResumeToken),
    /// At this cluster time, inclusive: a position from another stream.
    At(Timestamp),
}

/// How one worker's change stream is opened.
#[derive(Clone)]
pub(crate) struct EventStream {
    events: Collection<Document>,
    pipeline: Vec<Document>,
    max_await: Duration,
}

impl EventStream {
    /// The stream of `worker`'s inserts (the projection's filter and the worker's partition on
    /// the event document), and the invalidate that ends a stream.
    pub fn new(worker: &Worker, db: &Database, max_await: Duration) -> Self {
        let projection = &worker.projection;
        let mut inserts = match &projection.filter {
            None => doc! {"operationType": "insert"},
            Some(f) => {
                let mut m = prefix_filter(f, "fullDocument.");
                m.insert("operationType", "insert");
                m
            }
        };
        let aggregate_id = format!("fullDocument.{}", projection.fields.aggregate_id);
        worker.restrict(&mut inserts, &aggregate_id);
        Self {
            events: db.collection(&projection.events),
            pipeline: vec![doc! {"$match": {"$or": [inserts, {"operationType": "invalidate"}]}}],
            max_await,
        }
    }

    /// Opens the stream; bounded batches, so a backlog is fetched a slice at a time.
    pub async fn open(&self, from: StreamFrom) -> Result<ChangeStream<RawDocumentBuf>, StoreError> {
        let (after, at) = match from {
            StreamFrom::Now => (None, None),
            StreamFrom::After(token) => (Some(token), None),
            StreamFrom::At(time) => (None, Some(time)),
        };
        let options = ChangeStreamOptions::builder()
            .resume_after(after)
            .start_at_operation_time(at)
            .max_await_time(Some(self.max_await))
            .batch_size(Some(STREAM_BATCH))
            .build();
        Ok(self
            .events
            .watch()
            .pipeline(self.pipeline.clone())
            .with_options(options)
            .await?
            .with_type::<RawDocumentBuf>())
    }
}

/// What the reader passes on.
#[derive(Debug)]
pub enum Read {
    Event(RawDocumentBuf),
    /// An empty batch: the stream is caught up; its post-batch resume token, and when the
    /// `getMore` that answered was asked for.
    Quiet {
        token: Option<ResumeToken>,
        asked_at: std::time::Instant,
    },
    Failed(StoreError),
}

/// A stream read ahead by a task of its own into a bounded queue. Dropping it stops the task.
pub struct Reader {
    reads: mpsc::Receiver<Read>,
    _task: AbortOnDropHandle<()>,
}

impl Reader {
    pub fn spawn(stream: ChangeStream<RawDocumentBuf>) -> Reader {
        let (tx, reads) = mpsc::channel(PREFETCH);
        Reader {
            reads,
            _task: AbortOnDropHandle::new(tokio::spawn(read_stream(stream, tx))),
        }
    }

    /// The next read if one is ready.
    pub(crate) fn try_read(&mut self) -> Option<Read> {
        match self.reads.try_recv() {
            Ok(read) => Some(read),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(ended()),
        }
    }

    /// The next read.
    pub async fn read(&mut self) -> Read {
        self.reads.recv().await.unwrap_or_else(ended)
    }
}

fn ended() -> Read {
    Read::Failed(StoreError::Reply("change stream reader ended".into()))
}

/// Pulls the change stream into the queue until the queue is dropped or the stream fails (the
/// failure is passed on, then the task ends).
async fn read_stream(mut stream: ChangeStream<RawDocumentBuf>, out: mpsc::Sender<Read>) {
    loop {
        let asked_at = std::time::Instant::now();
        let read = match stream.next_if_any().await {
            Ok(Some(raw)) => Read::Event(raw),
            Ok(None) if !stream.is_alive() => Read::Failed(StoreError::Reply(
                "change stream closed by the server".into(),
            )),
            Ok(None) => Read::Quiet {
                token: stream.resume_token(),
                asked_at,
            },
            Err(e) => Read::Failed(e.into()),
        };
        let last = matches!(read, Read::Failed(_));
        if out.send(read).await.is_err() || last {
            return;
        }
    }
}

/// True for the `invalidate` event that ends a stream (the collection dropped or renamed).
pub(crate) fn is_invalidate(raw: &RawDocumentBuf) -> bool {
    raw.get_str("operationType").ok() == Some("invalidate")
}

/// Prefixes every field condition of a filter (`{a: 1}` -> `{"fullDocument.a": 1}`),
/// descending into `$and`/`$or`/`$nor`.
pub(crate) fn prefix_filter(filter: &Document, prefix: &str) -> Document {
    let mut out = Document::new();
    for (k, v) in filter {
        match (k.as_str(), v) {
            ("$and" | "$or" | "$nor", Bson::Array(items)) => {
                let items: Vec<Bson> = items
                    .iter()
                    .map(|i| match i {
                        Bson::Document(d) => Bson::Document(prefix_filter(d, prefix)),
                        other => other.clone(),
                    })
                    .collect();
                out.insert(k.clone(), items);
            }
            _ => {
                out.insert(format!("{prefix}{k}"), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_prefixed_for_the_change_stream() {
        let f = doc! {"tenant": "t1", "$or": [{"kind": "a"}, {"kind": "b"}]};
        assert_eq!(
            prefix_filter(&f, "fullDocument."),
            doc! {"fullDocument.tenant": "t1", "$or": [{"fullDocument.kind": "a"}, {"fullDocument.kind": "b"}]}
        );
    }
}
