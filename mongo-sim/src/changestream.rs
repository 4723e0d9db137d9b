//! Change streams: `aggregate` with `$changeStream` opens one over a collection, a database
//! or the cluster; `getMore` reads events from the oplog, waiting for new writes up to
//! `maxTimeMS`; resume tokens are positions in the oplog.
//!
//! Follows the manual's "Change Streams", "Change Events" and "Resume a Change Stream" pages
//! and the change-streams specification for what the drivers rely on (`postBatchResumeToken`,
//! error labels, resuming with `resumeAfter`/`startAfter`/`startAtOperationTime`).

// Every handler returns the crate-wide `CommandError`, whose size is fixed by `error.rs`.
#![allow(clippy::result_large_err)]

use crate::aggregate::Pipeline;
use crate::changeevent::{BeforeChange, EventShape, FullDocument, Scope, is_internal_db};
use crate::error::{self, CommandError, Result};
use crate::expr::Variables;
use crate::fields;
use crate::oplog::{Namespace, ts_key};
use crate::storage::Data;
use bson::{Bson, Document, Timestamp, doc};
use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The first byte of every resume token this server issues.
const TOKEN_VERSION: u8 = 1;
/// Bytes in a decoded token: version, seconds, counter, stage, position, fragment, kind.
const TOKEN_LEN: usize = 15;
/// mongod's default first batch size for `aggregate`.
const DEFAULT_BATCH_SIZE: usize = 101;
/// How long a `getMore` without `maxTimeMS` waits for events (mongod's awaitData default).
const DEFAULT_AWAIT: Duration = Duration::from_millis(1000);

const ID_MODIFIED: &str = "Encountered an event whose _id field, which contains the resume token, \
was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume \
the stream from that point. Only transformations that retain the unmodified _id field are allowed.";

const HISTORY_LOST: &str =
    "Resume of change stream was not possible, as the resume point may no longer be in the oplog.";

/// Stages that may follow `$changeStream` (manual: "Modify Change Stream Output").
const ALLOWED_STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
];

/// Where in a stream a point lies relative to the events of one cluster time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Before every event at this time (`startAtOperationTime`).
    Before = 0,
    /// At one event of the entry with this time.
    Event = 1,
    /// After every event at this time: a high-water mark.
    HighWater = 2,
}

/// A position in stream order; a stream delivers exactly the events after its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    time: u32,
    increment: u32,
    stage: Stage,
    /// Index of the event among those one oplog entry yields.
    position: u16,
    /// For one fragment of an event `$changeStreamSplitLargeEvent` split, its number (from 1);
    /// 0 for a whole event.
    fragment: u16,
}

impl Point {
    fn high_water(ts: Timestamp) -> Point {
        Point {
            time: ts.time,
            increment: ts.increment,
            stage: Stage::HighWater,
            position: 0,
            fragment: 0,
        }
    }

    fn before(ts: Timestamp) -> Point {
        Point {
            time: ts.time,
            increment: ts.increment,
            stage: Stage::Before,
            position: 0,
            fragment: 0,
        }
    }

    fn event(ts: Timestamp, position: u16) -> Point {
        Point {
            time: ts.time,
            increment: ts.increment,
            stage: Stage::Event,
            position,
            fragment: 0,
        }
    }

    fn with_fragment(self, fragment: u16) -> Point {
        Point { fragment, ..self }
    }

    /// The same event, whichever fragment of it.
    fn same_event(&self, other: &Point) -> bool {
        self.with_fragment(0) == other.with_fragment(0)
    }

    fn ts(&self) -> Timestamp {
        Timestamp {
            time: self.time,
            increment: self.increment,
        }
    }
}

/// What a resume token stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Event = 0,
    Invalidate = 1,
    HighWaterMark = 2,
}

/// A decoded resume token. Encoded as uppercase hex of fixed length, so that comparing the
/// `_data` strings compares positions in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ResumeToken {
    point: Point,
    kind: TokenKind,
}

impl ResumeToken {
    fn high_water(point: Point) -> ResumeToken {
        ResumeToken {
            point,
            kind: TokenKind::HighWaterMark,
        }
    }

    fn encode(&self) -> Document {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(&self.point.time.to_be_bytes());
        bytes.extend_from_slice(&self.point.increment.to_be_bytes());
        bytes.push(self.point.stage as u8);
        bytes.extend_from_slice(&self.point.position.to_be_bytes());
        bytes.extend_from_slice(&self.point.fragment.to_be_bytes());
        bytes.push(self.kind as u8);
        doc! {"_data": hex::encode_upper(bytes)}
    }

    fn decode(token: &Document) -> Result<ResumeToken> {
        let data = match token.get("_data") {
            Some(Bson::String(s)) => s,
            other => {
                return Err(CommandError::location(
                    40647,
                    format!(
                        "Bad resume token: _data of missing or of wrong type. Expected string, got {}",
                        other.map_or("missing", crate::bsontype::type_name)
                    ),
                ));
            }
        };
        let bytes = hex::decode(data).map_err(|_| {
            CommandError::failed_to_parse("resume token string was not a valid hex string")
        })?;
        let malformed = || CommandError::failed_to_parse(format!("Bad resume token: {data}"));
        if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_VERSION {
            return Err(malformed());
        }
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let stage = match bytes[9] {
            1 => Stage::Event,
            2 => Stage::HighWater,
            _ => return Err(malformed()),
        };
        let kind = match (bytes[14], stage) {
            (0, Stage::Event) => TokenKind::Event,
            (1, Stage::Event) => TokenKind::Invalidate,
            (2, Stage::HighWater) => TokenKind::HighWaterMark,
            _ => return Err(malformed()),
        };
        Ok(ResumeToken {
            point: Point {
                time: u32_at(1),
                increment: u32_at(5),
                stage,
                position: u16::from_be_bytes([bytes[10], bytes[11]]),
                fragment: u16::from_be_bytes([bytes[12], bytes[13]]),
            },
            kind,
        })
    }
}

/// An open change stream's position and options.
pub struct ChangeStreamCursor {
    scope: Scope,
    /// What its events look like (expanded events, pre- and post-images).
    shape: EventShape,
    /// The stages after `$changeStream`, run on each event.
    pipeline: Option<Pipeline>,
    /// `$changeStreamSplitLargeEvent` ends the pipeline: an event over 16 MiB is split into
    /// fragments rather than failing the stream.
    split_large: bool,
    /// Every event up to and including this point has been delivered (or filtered out).
    position: Point,
    /// Set once an `invalidate` event has been delivered.
    closed: bool,
    /// The event a `resumeAfter`/`startAfter` token names, until it has been seen in the oplog.
    resumed_event: Option<Point>,
}

impl ChangeStreamCursor {
    /// The namespace the cursor is registered under, as the driver will name it in `getMore`.
    pub(crate) fn ns(&self) -> Namespace {
        self.scope.cursor_ns()
    }

    /// Whether the stream has delivered its `invalidate` event: it has nothing more to give.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// The post-batch resume token for the current position.
    pub(crate) fn post_batch_resume_token(&self) -> Document {
        let kind = match self.position.stage {
            Stage::HighWater => TokenKind::HighWaterMark,
            // A stream closes exactly at its invalidate event.
            _ if self.closed => TokenKind::Invalidate,
            _ => TokenKind::Event,
        };
        match self.position.stage {
            // A `startAtOperationTime` position nothing has been read from: everything before
            // its time has been "delivered".
            Stage::Before => {
                let ts = self.position.ts();
                let earlier = if ts.increment > 0 {
                    Timestamp {
                        time: ts.time,
                        increment: ts.increment - 1,
                    }
                } else {
                    Timestamp {
                        time: ts.time.saturating_sub(1),
                        increment: u32::MAX,
                    }
                };
                ResumeToken::high_water(Point::high_water(earlier)).encode()
            }
            _ => ResumeToken {
                point: self.position,
                kind,
            }
            .encode(),
        }
    }

    /// Fails when entries this stream has not read yet were dropped from the oplog.
    fn check_history(&self, data: &Data) -> Result<()> {
        let Some(lost) = data.oplog.truncated_through() else {
            return Ok(());
        };
        let lost = ts_key(lost);
        let here = (self.position.time, self.position.increment);
        if lost > here || (lost == here && self.position.stage != Stage::HighWater) {
            return Err(
                CommandError::new(error::CHANGE_STREAM_HISTORY_LOST, HISTORY_LOST)
                    .with_label("NonResumableChangeStreamError"),
            );
        }
        Ok(())
    }

    /// mongod refuses to resume from an event its stream would not have produced: the entry at
    /// the token's time must yield that event for this stream (change-streams spec, "Resume
    /// Process"; the server's "resume token was not found").
    fn check_resumed_event(&mut self, data: &Data) -> Result<()> {
        let Some(expected) = self.resumed_event else {
            return Ok(());
        };
        let oplog = &data.oplog;
        let Some(entry) = oplog.entries().get(oplog.first_at_or_after(expected.ts())) else {
            // Nothing written at or after the token yet: the check waits for the next entry.
            return Ok(());
        };
        if entry.ts == expected.ts()
            && self.events_for(entry, data)?.len() > usize::from(expected.position)
        {
            self.resumed_event = None;
            return Ok(());
        }
        let token = ResumeToken {
            point: expected,
            kind: TokenKind::Event,
        }
        .encode();
        Err(CommandError::new(
            error::CHANGE_STREAM_FATAL_ERROR,
            format!(
                "cannot resume stream; the resume token was not found. {{_data: \"{}\"}}",
                token.get_str("_data").unwrap_or_default()
            ),
        )
        .with_label("NonResumableChangeStreamError"))
    }

    /// Reads events after the position, up to `limit` of them; returns them and advances the
    /// position (to the last event when the batch is full, else to the newest cluster time).
    fn scan(&mut self, data: &Data, limit: usize) -> Result<Vec<Document>> {
        self.check_history(data)?;
        self.check_resumed_event(data)?;
        let mut batch = Vec::new();
        if limit == 0 || self.closed {
            return Ok(batch);
        }
        let oplog = &data.oplog;
        let start = oplog.first_at_or_after(self.position.ts());
        // mongod stops a batch before it would pass the 16 MiB reply limit (the first event
        // always goes in); the post-batch resume token is then the last returned event's.
        let mut bytes = 0usize;
        for entry in oplog.entries().range(start..) {
            for (index, raw) in self.events_for(entry, data)?.into_iter().enumerate() {
                let point = Point::event(entry.ts, index as u16);
                let partly_delivered =
                    point.same_event(&self.position) && self.position.fragment > 0;
                if point <= self.position && !partly_delivered {
                    continue;
                }
                let invalidates = raw.invalidates;
                let kind = if invalidates {
                    TokenKind::Invalidate
                } else {
                    TokenKind::Event
                };
                let token = ResumeToken { point, kind }.encode();
                let event = raw.into_event(&token, entry, self.shape.show_expanded);
                let Some(event) = self.transform(event, &token, entry.ts)? else {
                    self.position = point;
                    continue;
                };
                for (at, event) in self.fit(event, point)? {
                    if at <= self.position {
                        continue;
                    }
                    let size = crate::storage::bson_size(&event);
                    if !batch.is_empty() && bytes + size > MAX_BATCH_BYTES {
                        return Ok(batch);
                    }
                    bytes += size;
                    batch.push(event);
                    self.position = at;
                    if batch.len() >= limit {
                        self.closed = invalidates;
                        return Ok(batch);
                    }
                }
                if invalidates {
                    self.closed = true;
                    return Ok(batch);
                }
            }
        }
        let newest = Point::high_water(oplog.last_ts());
        if newest > self.position {
            self.position = newest;
        }
        Ok(batch)
    }

    /// The events `entry` yields for this stream, in order.
    fn events_for(
        &self,
        entry: &crate::oplog::OplogEntry,
        data: &Data,
    ) -> Result<Vec<crate::changeevent::RawEvent>> {
        crate::changeevent::events_for(&self.scope, &self.shape, entry, data)
    }

    /// An event that fits in a reply as it is, or its fragments when
    /// `$changeStreamSplitLargeEvent` ends the pipeline; an event over 16 MiB otherwise fails
    /// the stream with BSONObjectTooLarge, as mongod's does.
    fn fit(&self, event: Document, point: Point) -> Result<Vec<(Point, Document)>> {
        let size = crate::storage::bson_size(&event);
        if size <= MAX_BATCH_BYTES {
            return Ok(vec![(point, event)]);
        }
        if !self.split_large {
            return Err(CommandError::new(
                error::BSON_OBJECT_TOO_LARGE,
                format!(
                    "Executor error during getMore :: caused by :: BSONObj size: {size} \
                     (0x{size:X}) is invalid. Size must be between 0 and 16793600(16MB)"
                ),
            ));
        }
        crate::changeevent::split(event, MAX_BATCH_BYTES, |fragment| {
            let at = point.with_fragment(fragment);
            (
                at,
                ResumeToken {
                    point: at,
                    kind: TokenKind::Event,
                }
                .encode(),
            )
        })
    }

    /// Runs the user's stages on one event; `None` when they filter it out.
    fn transform(
        &self,
        event: Document,
        token: &Document,
        ts: Timestamp,
    ) -> Result<Option<Document>> {
        let Some(pipeline) = &self.pipeline else {
            return Ok(Some(event));
        };
        let vars = Variables::new(bson::DateTime::now(), ts);
        let mut out = pipeline.run(vec![event], &vars)?;
        let Some(event) = out.pop() else {
            return Ok(None);
        };
        match event.get("_id") {
            Some(Bson::Document(id)) if id == token => Ok(Some(event)),
            _ => Err(
                CommandError::new(error::CHANGE_STREAM_FATAL_ERROR, ID_MODIFIED)
                    .with_label("NonResumableChangeStreamError"),
            ),
        }
    }
}

/// Where a new stream starts.
enum StartAt {
    Now,
    OperationTime(Timestamp),
    ResumeAfter(ResumeToken),
    StartAfter(ResumeToken),
}

/// The parsed `$changeStream` stage.
struct Options {
    start: StartAt,
    shape: EventShape,
    all_changes_for_cluster: bool,
}

const STAGE: &str = "$changeStream";

fn string_option<'a>(field: &str, value: &'a Bson) -> Result<&'a str> {
    match value {
        Bson::String(s) => Ok(s),
        _ => Err(fields::wrong_type(STAGE, field, value, "string")),
    }
}

/// `fullDocument` (manual: "Change Streams", "Lookup Full Document for Update Operations").
fn full_document(field: &str, value: &Bson) -> Result<FullDocument> {
    Ok(match string_option(field, value)? {
        "default" => FullDocument::Default,
        "updateLookup" => FullDocument::UpdateLookup,
        "whenAvailable" => FullDocument::WhenAvailable,
        "required" => FullDocument::Required,
        other => return Err(bad_enum(field, other)),
    })
}

/// `fullDocumentBeforeChange` (manual: "Change Streams with Document Pre- and Post-Images").
fn before_change(field: &str, value: &Bson) -> Result<BeforeChange> {
    Ok(match string_option(field, value)? {
        "off" => BeforeChange::Off,
        "whenAvailable" => BeforeChange::WhenAvailable,
        "required" => BeforeChange::Required,
        other => return Err(bad_enum(field, other)),
    })
}

fn start_option(field: &str, value: &Bson) -> Result<StartAt> {
    if field == "startAtOperationTime" {
        let Bson::Timestamp(ts) = value else {
            return Err(fields::wrong_type(STAGE, field, value, "timestamp"));
        };
        return Ok(StartAt::OperationTime(*ts));
    }
    let Bson::Document(token) = value else {
        return Err(fields::wrong_type(STAGE, field, value, "object"));
    };
    let token = ResumeToken::decode(token)?;
    Ok(if field == "resumeAfter" {
        StartAt::ResumeAfter(token)
    } else {
        StartAt::StartAfter(token)
    })
}

fn parse_options(spec: &Document) -> Result<Options> {
    let mut shape = EventShape::default();
    let mut all_changes_for_cluster = false;
    let mut starts = Vec::new();
    for (field, value) in spec {
        match field.as_str() {
            "fullDocument" => shape.full_document = full_document(field, value)?,
            "fullDocumentBeforeChange" => shape.before_change = before_change(field, value)?,
            "resumeAfter" | "startAfter" | "startAtOperationTime" => {
                starts.push(start_option(field, value)?);
            }
            "allChangesForCluster" => {
                all_changes_for_cluster = bool_option(field, value)?;
            }
            "showExpandedEvents" => shape.show_expanded = bool_option(field, value)?,
            "showMigrationEvents"
            | "showSystemEvents"
            | "showRawUpdateDescription"
            | "allowToRunOnConfigDB"
            | "allowToRunOnSystemNS" => {
                if bool_option(field, value)? {
                    return Err(CommandError::not_supported(format!(
                        "$changeStream option '{field}: true' is not supported"
                    )));
                }
            }
            _ => {
                return Err(CommandError::new(
                    error::UNKNOWN_FIELD,
                    format!("BSON field '$changeStream.{field}' is an unknown field."),
                ));
            }
        }
    }
    if starts.len() > 1 {
        return Err(CommandError::location(
            40674,
            "Only one type of resume option is allowed, but multiple were found.",
        ));
    }
    Ok(Options {
        start: starts.pop().unwrap_or(StartAt::Now),
        shape,
        all_changes_for_cluster,
    })
}

fn bool_option(field: &str, value: &Bson) -> Result<bool> {
    crate::bsontype::as_bool(value).ok_or_else(|| fields::wrong_type(STAGE, field, value, "bool"))
}

fn bad_enum(field: &str, value: &str) -> CommandError {
    CommandError::bad_value(format!(
        "Enumeration value '{value}' for field '$changeStream.{field}' is not a valid value."
    ))
}

fn invalid_namespace(errmsg: String) -> CommandError {
    CommandError::new(error::INVALID_NAMESPACE, errmsg)
}

/// The stream's scope from the command's target (manual: "Change Streams", availability).
fn resolve_scope(db: &str, cmd: &Document, cluster: bool) -> Result<Scope> {
    let scope = match cmd.get("aggregate") {
        Some(Bson::String(coll)) => {
            if cluster {
                return Err(invalid_namespace(format!(
                    "A $changeStream with 'allChangesForCluster:true' may only be opened on the \
                     'admin' database, and with no collection name; found {db}.{coll}"
                )));
            }
            if is_internal_db(db) {
                return Err(invalid_namespace(format!(
                    "$changeStream may not be opened on the internal {db} database"
                )));
            }
            if coll.starts_with("system.") {
                return Err(invalid_namespace(format!(
                    "$changeStream may not be opened on the internal {db}.{coll} collection"
                )));
            }
            Scope::Collection(Namespace::new(db, coll.clone()))
        }
        Some(v) if crate::bsontype::as_i64(v) == Some(1) => {
            if cluster {
                if db != "admin" {
                    return Err(invalid_namespace(format!(
                        "A $changeStream with 'allChangesForCluster:true' may only be opened on \
                         the 'admin' database, and with no collection name; found {db}.$cmd.aggregate"
                    )));
                }
                Scope::Cluster
            } else if is_internal_db(db) {
                return Err(invalid_namespace(format!(
                    "$changeStream may not be opened on the internal {db} database"
                )));
            } else {
                Scope::Database(db.to_string())
            }
        }
        _ => {
            return Err(CommandError::failed_to_parse(
                "Invalid command format: the 'aggregate' field must specify a collection name or 1",
            ));
        }
    };
    Ok(scope)
}

/// `$changeStreamSplitLargeEvent`: only as the last stage, with no arguments (mongod's
/// `DocumentSourceChangeStreamSplitLargeEvent`, 7.0 and 6.0.9+).
const SPLIT_STAGE: &str = "$changeStreamSplitLargeEvent";

/// The stages after `$changeStream`; only those that transform one event at a time are
/// allowed, and `$changeStreamSplitLargeEvent` last. Returns them and whether the split stage
/// ends the pipeline.
fn parse_following_stages(stages: &[Bson]) -> Result<(Option<Pipeline>, bool)> {
    let mut stages = stages;
    let mut split = false;
    for (i, stage) in stages.iter().enumerate() {
        let Bson::Document(d) = stage else { continue };
        if d.contains_key(STAGE) {
            return Err(CommandError::location(
                40602,
                "$changeStream is only valid as the first stage in a pipeline",
            ));
        }
        if let Some(arg) = d.get(SPLIT_STAGE) {
            if !matches!(arg, Bson::Document(a) if a.is_empty()) {
                return Err(CommandError::location(
                    7182800,
                    "$changeStreamSplitLargeEvent spec should be an empty object",
                ));
            }
            if i + 1 != stages.len() {
                return Err(CommandError::location(
                    7182802,
                    "$changeStreamSplitLargeEvent must be the last stage in the pipeline",
                ));
            }
            split = true;
        }
    }
    if split {
        stages = &stages[..stages.len() - 1];
    }
    if stages.is_empty() {
        return Ok((None, split));
    }
    let pipeline = Pipeline::parse(stages)?;
    for name in pipeline.stage_names() {
        if !ALLOWED_STAGES.contains(&name.as_str()) {
            return Err(CommandError::new(
                error::ILLEGAL_OPERATION,
                format!("{name} is not permitted in a $changeStream pipeline"),
            ));
        }
    }
    Ok((Some(pipeline), split))
}

/// The most a reply's batch may hold (mongod's `BSONObjMaxUserSize`).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

fn first_batch_size(cmd: &Document) -> Result<usize> {
    let Some(cursor) = fields::opt_document(cmd, "aggregate", "cursor")? else {
        return Ok(DEFAULT_BATCH_SIZE);
    };
    match fields::opt_count(cursor, "aggregate.cursor", "batchSize")? {
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        None => Ok(DEFAULT_BATCH_SIZE),
    }
}

/// Parses the command, positions the stream and reads its first batch.
fn open_cursor(
    data: &Mutex<Data>,
    db: &str,
    cmd: &Document,
    pipeline: &[Bson],
) -> Result<(ChangeStreamCursor, Vec<Document>)> {
    let spec = match pipeline.first() {
        Some(Bson::Document(stage)) => stage.get(STAGE),
        _ => None,
    };
    let Some(Bson::Document(spec)) = spec else {
        return Err(CommandError::location(
            50808,
            "$changeStream stage expects a document as argument",
        ));
    };
    let options = parse_options(spec)?;
    let scope = resolve_scope(db, cmd, options.all_changes_for_cluster)?;
    let (following, split_large) = parse_following_stages(&pipeline[1..])?;
    let batch_size = first_batch_size(cmd)?;
    let data = data.lock();
    let position = match options.start {
        StartAt::Now => Point::high_water(data.oplog.last_ts()),
        StartAt::OperationTime(ts) => Point::before(ts),
        StartAt::ResumeAfter(token) => {
            if token.kind == TokenKind::Invalidate {
                return Err(CommandError::new(
                    error::INVALID_RESUME_TOKEN,
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed \
                     from an invalidate notification.",
                ));
            }
            token.point
        }
        StartAt::StartAfter(token) => token.point,
    };
    let mut cursor = ChangeStreamCursor {
        scope,
        shape: options.shape,
        pipeline: following,
        split_large,
        position,
        closed: false,
        resumed_event: (position.stage == Stage::Event).then_some(position),
    };
    let batch = cursor.scan(&data, batch_size)?;
    Ok((cursor, batch))
}

/// Change streams read majority-committed data only: an explicit read concern level other
/// than `majority` is refused with InvalidOptions, while no level at all is upgraded
/// (mongod's `LiteParsed` `$changeStream`, `onlySingleReadConcernSupported`).
fn check_read_concern(cmd: &Document) -> Result<()> {
    let level = match cmd.get("readConcern") {
        Some(Bson::Document(rc)) => rc.get_str("level").ok(),
        _ => None,
    };
    match level {
        None | Some("majority") => Ok(()),
        Some(other) => Err(CommandError::new(
            error::INVALID_OPTIONS,
            format!(
                "Aggregation stage $changeStream cannot run with a readConcern other than \
                 'majority'. Current readConcern: {other}"
            ),
        )),
    }
}

/// Opens a change stream for `aggregate` on `db` whose first stage is `$changeStream`: the
/// stream, positioned after its first batch, and that batch.
pub(crate) fn open(
    data: &Mutex<Data>,
    db: &str,
    cmd: &Document,
    pipeline: &[Bson],
) -> Result<(ChangeStreamCursor, Vec<Document>)> {
    check_read_concern(cmd)?;
    open_cursor(data, db, cmd, pipeline)
}

/// One `getMore` on a change stream: the batch, the post-batch resume token, and whether the
/// cursor is now closed (after `invalidate`).
///
/// With nothing to return it waits for the oplog to grow, up to `max_time` (awaitData), and
/// returns as soon as an event is available. `head` sees every change of the oplog's head from
/// before the first read on, so a write landing after a read still wakes the wait.
pub(crate) async fn get_more(
    data: &Mutex<Data>,
    mut head: watch::Receiver<u64>,
    cursor: &mut ChangeStreamCursor,
    batch_size: Option<usize>,
    max_time: Option<Duration>,
) -> Result<(Vec<Document>, Document, bool)> {
    let limit = match batch_size {
        None | Some(0) => usize::MAX,
        Some(n) => n,
    };
    let deadline = Instant::now() + max_time.unwrap_or(DEFAULT_AWAIT);
    loop {
        head.borrow_and_update();
        let batch = {
            let data = data.lock();
            cursor.scan(&data, limit)?
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !batch.is_empty() || cursor.closed || remaining.is_zero() {
            return Ok((batch, cursor.post_batch_resume_token(), cursor.closed));
        }
        match tokio::time::timeout(remaining, head.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok((batch, cursor.post_batch_resume_token(), false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oplog::OplogOp;
    use std::sync::Arc;

    /// What streams read: the data, and the oplog head a waiting getMore watches.
    struct Server {
        data: Mutex<Data>,
        head: watch::Sender<u64>,
    }

    fn shared(capacity: usize) -> Arc<Server> {
        Arc::new(Server {
            data: Mutex::new(Data::new(capacity)),
            head: watch::channel(0).0,
        })
    }

    fn write(server: &Server, op: OplogOp) -> Timestamp {
        let mut data = server.data.lock();
        let ts = data.oplog.record(op, None);
        server.head.send_replace(data.oplog.head_seq());
        ts
    }

    fn insert(db: &str, coll: &str, id: i32) -> OplogOp {
        OplogOp::Insert {
            ns: Namespace::new(db, coll),
            document: std::sync::Arc::new(doc! {"_id": id, "x": id}),
        }
    }

    fn open_on(
        shared: &Server,
        db: &str,
        target: Bson,
        spec: Document,
        batch_size: Option<i32>,
    ) -> Result<(ChangeStreamCursor, Vec<Document>)> {
        let mut cmd = doc! {"aggregate": target};
        cmd.insert(
            "cursor",
            batch_size.map_or_else(Document::new, |n| doc! {"batchSize": n}),
        );
        open_cursor(
            &shared.data,
            db,
            &cmd,
            &[Bson::Document(doc! {STAGE: spec})],
        )
    }

    fn watch_coll(shared: &Server, spec: Document) -> (ChangeStreamCursor, Vec<Document>) {
        open_on(shared, "db", "c".into(), spec, None).unwrap()
    }

    fn op_types(events: &[Document]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e.get_str("operationType").unwrap())
            .collect()
    }

    fn data_of(d: &Document) -> String {
        d.get_str("_data").unwrap().to_string()
    }

    fn id_of(event: &Document) -> Document {
        event.get_document("_id").unwrap().clone()
    }

    async fn next(
        shared: &Server,
        cursor: &mut ChangeStreamCursor,
        batch_size: Option<usize>,
    ) -> Result<(Vec<Document>, Document, bool)> {
        let head = shared.head.subscribe();
        get_more(&shared.data, head, cursor, batch_size, Some(Duration::ZERO)).await
    }

    fn ts(time: u32, increment: u32) -> Timestamp {
        Timestamp { time, increment }
    }

    #[test]
    fn tokens_round_trip_and_sort_as_strings_in_stream_order() {
        let in_order = [
            ResumeToken {
                point: Point::event(ts(5, 1), 0),
                kind: TokenKind::Event,
            },
            ResumeToken {
                point: Point::event(ts(5, 1), 1),
                kind: TokenKind::Invalidate,
            },
            ResumeToken::high_water(Point::high_water(ts(5, 1))),
            ResumeToken {
                point: Point::event(ts(5, 2), 0),
                kind: TokenKind::Event,
            },
            ResumeToken::high_water(Point::high_water(ts(6, 0))),
            ResumeToken {
                point: Point::event(ts(300, 1), 0),
                kind: TokenKind::Event,
            },
        ];
        let encoded: Vec<String> = in_order.iter().map(|t| data_of(&t.encode())).collect();
        for pair in encoded.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for (token, data) in in_order.iter().zip(&encoded) {
            assert_eq!(data, &data.to_uppercase());
            assert_eq!(ResumeToken::decode(&doc! {"_data": data}).unwrap(), *token);
        }
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let missing = ResumeToken::decode(&doc! {"x": 1}).unwrap_err();
        assert_eq!(missing.code, 40647);
        let not_hex = ResumeToken::decode(&doc! {"_data": "ZZ"}).unwrap_err();
        assert_eq!(not_hex.code, error::FAILED_TO_PARSE.code);
        let short = ResumeToken::decode(&doc! {"_data": "0100"}).unwrap_err();
        assert_eq!(short.code, error::FAILED_TO_PARSE.code);
        let s = shared(10);
        let err = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"resumeAfter": {"_data": "ZZ"}},
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code, error::FAILED_TO_PARSE.code);
    }

    #[tokio::test]
    async fn a_new_stream_starts_after_the_newest_write() {
        let s = shared(100);
        write(&s, insert("db", "c", 1));
        let (mut cursor, first) = watch_coll(&s, doc! {});
        assert!(first.is_empty());
        write(&s, insert("db", "c", 2));
        let (batch, _, closed) = next(&s, &mut cursor, None).await.unwrap();
        assert!(!closed);
        assert_eq!(batch.len(), 1);
        let event = &batch[0];
        let keys: Vec<&str> = event.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "_id",
                "operationType",
                "clusterTime",
                "wallTime",
                "fullDocument",
                "ns",
                "documentKey"
            ]
        );
        assert_eq!(
            event.get_document("fullDocument").unwrap(),
            &doc! {"_id": 2, "x": 2}
        );
        assert_eq!(
            event.get_document("ns").unwrap(),
            &doc! {"db": "db", "coll": "c"}
        );
        assert_eq!(event.get_document("documentKey").unwrap(), &doc! {"_id": 2});
    }

    #[tokio::test]
    async fn resuming_returns_exactly_the_events_after_the_token() {
        let s = shared(100);
        let (_, _) = watch_coll(&s, doc! {});
        let start = s.data.lock().oplog.last_ts();
        for i in 1..=3 {
            write(&s, insert("db", "c", i));
        }
        let (_, all) = watch_coll(&s, doc! {"startAtOperationTime": start});
        assert_eq!(all.len(), 3);
        let (_, after_first) = watch_coll(&s, doc! {"resumeAfter": id_of(&all[0])});
        assert_eq!(after_first, all[1..].to_vec());
        let (_, start_after) = watch_coll(&s, doc! {"startAfter": id_of(&all[1])});
        assert_eq!(start_after, all[2..].to_vec());
        let second_ts = all[1].get_timestamp("clusterTime").unwrap();
        let (_, at) = watch_coll(&s, doc! {"startAtOperationTime": second_ts});
        assert_eq!(at, all[1..].to_vec());
    }

    #[tokio::test]
    async fn a_high_water_mark_resumes_after_everything_it_covers() {
        let s = shared(100);
        let (mut cursor, _) = watch_coll(&s, doc! {});
        write(&s, insert("db", "c", 1));
        write(&s, insert("db", "other", 1));
        let (batch, pbrt, _) = next(&s, &mut cursor, None).await.unwrap();
        assert_eq!(batch.len(), 1);
        // The batch was not cut: the token is a high-water mark past the event.
        assert!(data_of(&pbrt) > data_of(&id_of(&batch[0])));
        let newest = s.data.lock().oplog.last_ts();
        assert_eq!(
            ResumeToken::decode(&pbrt).unwrap(),
            ResumeToken::high_water(Point::high_water(newest))
        );
        write(&s, insert("db", "c", 2));
        let (_, resumed) = watch_coll(&s, doc! {"resumeAfter": pbrt});
        assert_eq!(resumed.len(), 1);
        assert_eq!(
            resumed[0].get_document("documentKey").unwrap(),
            &doc! {"_id": 2}
        );
    }

    #[tokio::test]
    async fn batches_are_cut_by_batch_size_and_the_token_never_goes_back() {
        let s = shared(100);
        let start = s.data.lock().oplog.tick();
        for i in 1..=5 {
            write(&s, insert("db", "c", i));
        }
        let (mut cursor, first) = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"startAtOperationTime": start},
            Some(2),
        )
        .unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(cursor.post_batch_resume_token(), id_of(&first[1]));
        let (second, pbrt2, _) = next(&s, &mut cursor, Some(2)).await.unwrap();
        assert_eq!(second.len(), 2);
        assert_eq!(pbrt2, id_of(&second[1]));
        let (third, pbrt3, _) = next(&s, &mut cursor, None).await.unwrap();
        assert_eq!(third.len(), 1);
        assert!(data_of(&pbrt3) > data_of(&id_of(&third[0])));
        let (empty, pbrt4, _) = next(&s, &mut cursor, None).await.unwrap();
        assert!(empty.is_empty());
        assert_eq!(pbrt4, pbrt3);
        write(&s, insert("db", "elsewhere", 1));
        let (empty, pbrt5, _) = next(&s, &mut cursor, None).await.unwrap();
        assert!(empty.is_empty());
        assert!(
            data_of(&pbrt5) > data_of(&pbrt4),
            "an idle stream's token advances"
        );
    }

    #[tokio::test]
    async fn a_batch_stops_before_the_16_mib_reply_limit() {
        let s = shared(100);
        let start = s.data.lock().oplog.tick();
        let big = "x".repeat(3 * 1024 * 1024);
        for i in 1..=8 {
            write(
                &s,
                OplogOp::Insert {
                    ns: Namespace::new("db", "c"),
                    document: std::sync::Arc::new(doc! {"_id": i, "blob": big.clone()}),
                },
            );
        }
        let (mut cursor, first) = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"startAtOperationTime": start},
            Some(0),
        )
        .unwrap();
        assert!(first.is_empty());
        let (batch, pbrt, _) = next(&s, &mut cursor, None).await.unwrap();
        assert_eq!(
            batch.len(),
            5,
            "five 3 MiB events fit under 16 MiB, a sixth does not"
        );
        assert_eq!(pbrt, id_of(&batch[4]));
        let (rest, _, _) = next(&s, &mut cursor, None).await.unwrap();
        assert_eq!(
            rest.len(),
            3,
            "the rest follows in the next batch, nothing skipped"
        );
        assert_eq!(
            rest[0].get_document("documentKey").unwrap(),
            &doc! {"_id": 6}
        );
    }

    #[test]
    fn batch_size_zero_returns_no_events_and_keeps_the_start_position() {
        let s = shared(100);
        let start = s.data.lock().oplog.tick();
        write(&s, insert("db", "c", 1));
        let (cursor, first) = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"startAtOperationTime": start},
            Some(0),
        )
        .unwrap();
        assert!(first.is_empty());
        let (_, resumed) = watch_coll(&s, doc! {"resumeAfter": cursor.post_batch_resume_token()});
        assert_eq!(resumed.len(), 1);
    }

    #[test]
    fn opening_before_truncated_history_is_history_lost() {
        let s = shared(2);
        let first = write(&s, insert("db", "c", 1));
        write(&s, insert("db", "c", 2));
        let (_, kept) = watch_coll(&s, doc! {"startAtOperationTime": first});
        assert_eq!(kept.len(), 2, "nothing dropped yet");
        write(&s, insert("db", "c", 3));
        let err = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"startAtOperationTime": first},
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code, 286);
        assert_eq!(err.code_name, "ChangeStreamHistoryLost");
        assert_eq!(err.errmsg, HISTORY_LOST);
        assert_eq!(err.labels, ["NonResumableChangeStreamError"]);
        let err = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"resumeAfter": id_of(&kept[0])},
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code, 286, "the resumed event's own entry is gone");
        let (_, rest) = watch_coll(&s, doc! {"resumeAfter": id_of(&kept[1])});
        assert_eq!(rest.len(), 1, "resuming after a retained event still works");
    }

    #[tokio::test]
    async fn a_get_more_overtaken_by_truncation_is_history_lost() {
        let s = shared(3);
        let (mut cursor, _) = watch_coll(&s, doc! {});
        for i in 0..3 {
            write(&s, insert("db", "other", i));
        }
        let (none, _, _) = next(&s, &mut cursor, None).await.unwrap();
        assert!(none.is_empty(), "an idle stream keeps up with the oplog");
        for i in 0..4 {
            write(&s, insert("db", "c", i));
        }
        let err = next(&s, &mut cursor, None).await.unwrap_err();
        assert_eq!(err.code, 286);
        assert_eq!(err.labels, ["NonResumableChangeStreamError"]);
    }

    #[test]
    fn resuming_from_an_event_this_stream_never_had_is_fatal() {
        let s = shared(100);
        let (_, _) = watch_coll(&s, doc! {});
        let start = s.data.lock().oplog.tick();
        write(&s, insert("db", "other", 1));
        let (_, theirs) = open_on(
            &s,
            "db",
            "other".into(),
            doc! {"startAtOperationTime": start},
            None,
        )
        .unwrap();
        write(&s, insert("db", "c", 1));
        let err = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"resumeAfter": id_of(&theirs[0])},
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code, 280);
        assert!(
            err.errmsg
                .starts_with("cannot resume stream; the resume token was not found.")
        );
        assert_eq!(err.labels, ["NonResumableChangeStreamError"]);
        let (_, db_events) = open_on(
            &s,
            "db",
            1.into(),
            doc! {"resumeAfter": id_of(&theirs[0])},
            None,
        )
        .unwrap();
        assert_eq!(
            op_types(&db_events),
            ["insert"],
            "the database stream did see that event"
        );
    }

    #[tokio::test]
    async fn dropping_the_collection_invalidates_a_collection_stream() {
        let s = shared(100);
        let (mut cursor, _) = watch_coll(&s, doc! {});
        write(&s, insert("db", "c", 1));
        write(
            &s,
            OplogOp::Drop {
                ns: Namespace::new("db", "c"),
            },
        );
        let (batch, pbrt, closed) = next(&s, &mut cursor, None).await.unwrap();
        assert_eq!(op_types(&batch), ["insert", "drop", "invalidate"]);
        assert!(closed);
        assert_eq!(pbrt, id_of(&batch[2]));
        assert_eq!(batch[2].keys().count(), 4);
        let drop_id = id_of(&batch[1]);
        let invalidate_id = id_of(&batch[2]);
        let (_, again) = watch_coll(&s, doc! {"resumeAfter": drop_id});
        assert_eq!(op_types(&again), ["invalidate"]);
        let err = open_on(
            &s,
            "db",
            "c".into(),
            doc! {"resumeAfter": invalidate_id.clone()},
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code, 260);
        write(&s, insert("db", "c", 2));
        let (_, after) = watch_coll(&s, doc! {"startAfter": invalidate_id});
        assert_eq!(op_types(&after), ["insert"]);
    }

    #[tokio::test]
    async fn renaming_away_invalidates_a_collection_stream_only() {
        let s = shared(100);
        let (mut coll, _) = watch_coll(&s, doc! {});
        let (mut db, _) = open_on(&s, "db", 1.into(), doc! {}, None).unwrap();
        write(
            &s,
            OplogOp::Rename {
                from: Namespace::new("db", "c"),
                to: Namespace::new("db", "d"),
                drop_target: None,
            },
        );
        let (batch, _, closed) = next(&s, &mut coll, None).await.unwrap();
        assert_eq!(op_types(&batch), ["rename", "invalidate"]);
        assert!(closed);
        assert_eq!(
            batch[0].get_document("to").unwrap(),
            &doc! {"db": "db", "coll": "d"}
        );
        let (batch, _, closed) = next(&s, &mut db, None).await.unwrap();
        assert_eq!(op_types(&batch), ["rename"]);
        assert!(!closed);
    }

    #[tokio::test]
    async fn renaming_over_the_watched_collection_invalidates_it() {
        let s = shared(100);
        let (mut coll, _) = watch_coll(&s, doc! {});
        let (mut other_db, _) = open_on(&s, "elsewhere", 1.into(), doc! {}, None).unwrap();
        write(
            &s,
            OplogOp::Rename {
                from: Namespace::new("db", "tmp"),
                to: Namespace::new("db", "c"),
                drop_target: None,
            },
        );
        let (batch, _, closed) = next(&s, &mut coll, None).await.unwrap();
        assert_eq!(op_types(&batch), ["rename", "invalidate"]);
        assert_eq!(
            batch[0].get_document("ns").unwrap(),
            &doc! {"db": "db", "coll": "tmp"}
        );
        assert!(closed);
        let (batch, _, _) = next(&s, &mut other_db, None).await.unwrap();
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn drop_database_invalidates_collection_and_database_streams_but_not_the_cluster() {
        let s = shared(100);
        write(&s, insert("db", "c", 1));
        write(&s, insert("db", "d", 1));
        let (mut coll, _) = watch_coll(&s, doc! {});
        let (mut db, _) = open_on(&s, "db", 1.into(), doc! {}, None).unwrap();
        let (mut cluster, _) = open_on(
            &s,
            "admin",
            1.into(),
            doc! {"allChangesForCluster": true},
            None,
        )
        .unwrap();
        write(&s, OplogOp::DropDatabase { db: "db".into() });
        let (batch, _, closed) = next(&s, &mut coll, None).await.unwrap();
        assert_eq!(op_types(&batch), ["drop", "invalidate"]);
        assert!(closed);
        let (batch, _, closed) = next(&s, &mut db, None).await.unwrap();
        assert_eq!(
            op_types(&batch),
            ["drop", "drop", "dropDatabase", "invalidate"]
        );
        assert_eq!(batch[2].get_document("ns").unwrap(), &doc! {"db": "db"});
        assert!(closed);
        let (batch, _, closed) = next(&s, &mut cluster, None).await.unwrap();
        assert_eq!(op_types(&batch), ["drop", "drop", "dropDatabase"]);
        assert!(!closed);
        write(&s, insert("db", "c", 2));
        let (batch, _, _) = next(&s, &mut cluster, None).await.unwrap();
        assert_eq!(op_types(&batch), ["insert"]);
    }

    #[tokio::test]
    async fn scopes_see_only_their_namespaces() {
        let s = shared(100);
        let (mut db, _) = open_on(&s, "db", 1.into(), doc! {}, None).unwrap();
        let (mut cluster, _) = open_on(
            &s,
            "admin",
            1.into(),
            doc! {"allChangesForCluster": true},
            None,
        )
        .unwrap();
        write(&s, insert("db", "a", 1));
        write(&s, insert("db", "system.views", 1));
        write(&s, insert("other", "b", 1));
        write(&s, insert("admin", "x", 1));
        write(&s, insert("config", "x", 1));
        write(&s, insert("local", "x", 1));
        write(
            &s,
            OplogOp::Create {
                ns: Namespace::new("db", "new"),
                description: Document::new(),
            },
        );
        let colls = |events: &[Document]| -> Vec<String> {
            events
                .iter()
                .map(|e| e.get_document("ns").unwrap().to_string())
                .collect()
        };
        let (batch, _, _) = next(&s, &mut db, None).await.unwrap();
        assert_eq!(colls(&batch), [doc! {"db": "db", "coll": "a"}.to_string()]);
        let (batch, _, _) = next(&s, &mut cluster, None).await.unwrap();
        assert_eq!(
            colls(&batch),
            [
                doc! {"db": "db", "coll": "a"}.to_string(),
                doc! {"db": "other", "coll": "b"}.to_string()
            ]
        );
    }

    #[test]
    fn scope_errors_match_mongod() {
        let s = shared(10);
        let err = open_on(&s, "admin", 1.into(), doc! {}, None).err().unwrap();
        assert_eq!(err.code, error::INVALID_NAMESPACE.code);
        let err = open_on(
            &s,
            "db",
            1.into(),
            doc! {"allChangesForCluster": true},
            None,
        )
        .err()
        .unwrap();
        assert_eq!(err.code, error::INVALID_NAMESPACE.code);
        let err = open_on(&s, "db", "system.x".into(), doc! {}, None)
            .err()
            .unwrap();
        assert_eq!(err.code, error::INVALID_NAMESPACE.code);
    }

    #[test]
    fn options_are_validated_as_mongod_does() {
        let s = shared(10);
        let code = |spec: Document| open_on(&s, "db", "c".into(), spec, None).err().unwrap();
        let t = doc! {"_data": ResumeToken::high_water(Point::high_water(ts(1, 1))).encode().get_str("_data").unwrap()};
        let err = code(doc! {"resumeAfter": t.clone(), "startAtOperationTime": ts(1, 1)});
        assert_eq!(err.code, 40674);
        assert_eq!(
            err.errmsg,
            "Only one type of resume option is allowed, but multiple were found."
        );
        assert_eq!(
            code(doc! {"resumeAfter": t.clone(), "startAfter": t}).code,
            40674
        );
        let err = code(doc! {"bogus": 1});
        assert_eq!(err.code, 40415);
        assert_eq!(
            err.errmsg,
            "BSON field '$changeStream.bogus' is an unknown field."
        );
        assert_eq!(code(doc! {"fullDocument": "nope"}).code, 2);
        assert_eq!(code(doc! {"fullDocumentBeforeChange": "always"}).code, 2);
        assert_eq!(code(doc! {"showRawUpdateDescription": true}).code, 115);
        assert_eq!(code(doc! {"showExpandedEvents": "yes"}).code, 14);
        assert_eq!(code(doc! {"resumeAfter": 1}).code, 14);
        assert!(
            open_on(
                &s,
                "db",
                "c".into(),
                doc! {"fullDocumentBeforeChange": "off", "showExpandedEvents": false},
                None
            )
            .is_ok()
        );
        let stage_err = |stage: Document| {
            open_cursor(
                &s.data,
                "db",
                &doc! {"aggregate": "c", "cursor": {}},
                &[Bson::Document(doc! {STAGE: {}}), Bson::Document(stage)],
            )
            .err()
            .unwrap()
        };
        let err = stage_err(doc! {"$group": {"_id": null}});
        assert_eq!(err.code, 20);
        assert_eq!(
            err.errmsg,
            "$group is not permitted in a $changeStream pipeline"
        );
        assert_eq!(stage_err(doc! {STAGE: {}}).code, 40602);
        let err = open_cursor(
            &s.data,
            "db",
            &doc! {"aggregate": "c"},
            &[Bson::Document(doc! {STAGE: 1})],
        )
        .err()
        .unwrap();
        assert_eq!(err.code, 50808);
    }

    #[tokio::test]
    async fn updates_describe_their_changes_and_look_up_on_request() {
        let s = shared(100);
        let (mut plain, _) = watch_coll(&s, doc! {});
        let (mut lookup, _) = watch_coll(&s, doc! {"fullDocument": "updateLookup"});
        write(
            &s,
            OplogOp::Update {
                ns: Namespace::new("db", "c"),
                document_key: doc! {"_id": 1},
                before: doc! {"_id": 1, "a": 1, "n": {"x": 1, "y": {"z": 1}, "gone": 1}, "arr": [1], "s": "same", "old": 1},
                after: doc! {"_id": 1, "a": 2, "n": {"x": 1, "y": {"z": 2}}, "arr": [1, 2], "s": "same", "added": {"k": 1}},
                pipeline: false,
                images: false,
            },
        );
        let (batch, _, _) = next(&s, &mut plain, None).await.unwrap();
        let event = &batch[0];
        assert_eq!(event.get_str("operationType").unwrap(), "update");
        assert!(!event.contains_key("fullDocument"));
        assert_eq!(
            event.get_document("updateDescription").unwrap(),
            &doc! {
                "updatedFields": {"a": 2, "added": {"k": 1}, "n.y.z": 2, "arr.1": 2},
                "removedFields": ["old", "n.gone"],
                "truncatedArrays": [],
            }
        );
        let (batch, _, _) = next(&s, &mut lookup, None).await.unwrap();
        let keys: Vec<&str> = batch[0].keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "_id",
                "operationType",
                "clusterTime",
                "wallTime",
                "fullDocument",
                "ns",
                "documentKey",
                "updateDescription"
            ]
        );
        // The document is not in storage here, so the lookup finds nothing.
        assert_eq!(batch[0].get("fullDocument"), Some(&Bson::Null));
    }

    #[tokio::test]
    async fn replace_and_delete_events_have_mongod_shape() {
        let s = shared(100);
        let (mut cursor, _) = watch_coll(&s, doc! {});
        write(
            &s,
            OplogOp::Replace {
                ns: Namespace::new("db", "c"),
                document_key: doc! {"_id": 1},
                document: doc! {"_id": 1, "v": 2},
                pre_image: None,
            },
        );
        write(
            &s,
            OplogOp::Delete {
                ns: Namespace::new("db", "c"),
                document_key: doc! {"_id": 1},
                pre_image: None,
            },
        );
        let (batch, _, _) = next(&s, &mut cursor, None).await.unwrap();
        assert_eq!(op_types(&batch), ["replace", "delete"]);
        assert_eq!(
            batch[0].get_document("fullDocument").unwrap(),
            &doc! {"_id": 1, "v": 2}
        );
        assert!(!batch[1].contains_key("fullDocument"));
        assert_eq!(
            batch[1].get_document("documentKey").unwrap(),
            &doc! {"_id": 1}
        );
    }

    #[tokio::test]
    async fn a_waiting_get_more_returns_as_soon_as_a_write_arrives() {
        let s = shared(100);
        let (mut cursor, _) = watch_coll(&s, doc! {});
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move {
                let head = s.head.subscribe();
                let wait = Some(Duration::from_secs(60));
                let result = get_more(&s.data, head, &mut cursor, None, wait).await;
                (result, cursor)
            })
        };
        write(&s, insert("db", "c", 1));
        let (result, _) = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .expect("getMore returned before its maxTimeMS")
            .unwrap();
        let (batch, _, closed) = result.unwrap();
        assert_eq!(op_types(&batch), ["insert"]);
        assert!(!closed);
    }

    #[tokio::test]
    async fn an_idle_get_more_returns_an_empty_batch_after_max_time() {
        let s = shared(100);
        let (mut cursor, _) = watch_coll(&s, doc! {});
        let head = s.head.subscribe();
        let wait = Some(Duration::from_millis(20));
        let (batch, pbrt, closed) = get_more(&s.data, head, &mut cursor, None, wait)
            .await
            .unwrap();
        assert!(batch.is_empty());
        assert!(!closed);
        assert_eq!(
            ResumeToken::decode(&pbrt).unwrap().kind,
            TokenKind::HighWaterMark
        );
    }
}
