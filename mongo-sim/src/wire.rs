//! The wire protocol: OP_MSG framing (kind-0 body, kind-1 document sequences, `moreToCome`,
//! checksum), decoded into one command document.
//!
//! Follows the MongoDB Wire Protocol reference ("OP_MSG", "Legacy Opcodes"). Legacy OP_QUERY
//! is decoded only so the handshake drivers such as pymongo send first can be answered with
//! OP_REPLY. Nothing here panics on client bytes: every defect becomes a [`WireError`], after
//! which the connection is closed.

use bson::{Bson, Document, RawBsonRef, RawDocument};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Legacy reply, used only to answer OP_QUERY.
pub const OP_REPLY: i32 = 1;
/// Legacy query, accepted only for the handshake.
pub const OP_QUERY: i32 = 2004;
pub const OP_COMPRESSED: i32 = 2012;
pub const OP_MSG: i32 = 2013;

/// The largest message accepted, as announced in `hello.maxMessageSizeBytes`.
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;
pub const HEADER_LEN: usize = 16;

/// OP_MSG `flagBits`.
pub const FLAG_CHECKSUM_PRESENT: u32 = 1;
pub const FLAG_MORE_TO_COME: u32 = 1 << 1;
pub const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits 0-15 are "required": a receiver must reject a message with one it does not know.
const REQUIRED_BITS: u32 = 0xffff;
const KNOWN_REQUIRED_BITS: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME;

/// Why a message could not be read; the connection is closed after any of these.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("message length {0} is smaller than a message header")]
    TooShort(i64),
    #[error("message length {0} exceeds maxMessageSizeBytes {MAX_MESSAGE_SIZE}")]
    TooLarge(i64),
    #[error("message truncated: {0}")]
    Truncated(&'static str),
    #[error("unsupported opCode {0}")]
    UnknownOpCode(i32),
    #[error("OP_MSG has unknown required flag bits {0:#x}")]
    UnknownRequiredFlags(u32),
    #[error("OP_MSG checksum mismatch")]
    ChecksumMismatch,
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The standard message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub message_length: i32,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: i32,
}

/// A decoded OP_MSG: flags and the command with its document sequences merged in.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg {
    pub header: MsgHeader,
    pub flags: u32,
    pub body: Document,
}

impl OpMsg {
    /// The client does not want a reply (unacknowledged writes).
    pub fn more_to_come(&self) -> bool {
        self.flags & FLAG_MORE_TO_COME != 0
    }

    pub fn checksum_present(&self) -> bool {
        self.flags & FLAG_CHECKSUM_PRESENT != 0
    }
}

/// A decoded legacy OP_QUERY.
#[derive(Debug, Clone, PartialEq)]
pub struct OpQuery {
    pub header: MsgHeader,
    pub flags: i32,
    pub full_collection_name: String,
    pub number_to_skip: i32,
    pub number_to_return: i32,
    pub query: Document,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Msg(OpMsg),
    Query(OpQuery),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn cstring(&mut self, what: &'static str) -> Result<String, WireError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(WireError::Truncated(what))?;
        let s = std::str::from_utf8(&rest[..end])
            .map_err(|_| WireError::Malformed(format!("{what} is not valid UTF-8")))?
            .to_string();
        self.pos += end + 1;
        Ok(s)
    }

    fn document(&mut self, what: &'static str) -> Result<Document, WireError> {
        let len_bytes = self.take(4, what)?;
        let len = i32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        self.pos -= 4;
        if len < 5 {
            return Err(WireError::Malformed(format!(
                "{what}: invalid BSON length {len}"
            )));
        }
        let bytes = self.take(len as usize, what)?;
        let raw = check_depth(bytes, what)?;
        // Converting the validated raw document directly is several times cheaper than the
        // serde path of `Document::from_reader`, and this runs once per inserted document.
        Document::try_from(raw)
            .map_err(|e| WireError::Malformed(format!("{what}: invalid BSON: {e}")))
    }
}

/// Nesting deeper than this is refused before decoding, so that a hostile message cannot
/// exhaust the stack of the (recursive) decoder. mongod's own limit for user documents is 100
/// levels (manual: "MongoDB Limits and Thresholds", "Nested Depth for BSON Documents"); commands
/// wrap documents in a few more.
pub const MAX_BSON_DEPTH: usize = 200;

/// Walks the element tree without recursion and rejects excessive nesting; returns the
/// document for decoding.
fn check_depth<'a>(bytes: &'a [u8], what: &str) -> Result<&'a RawDocument, WireError> {
    let invalid = |e: bson::raw::Error| WireError::Malformed(format!("{what}: invalid BSON: {e}"));
    let root = RawDocument::from_bytes(bytes).map_err(invalid)?;
    let mut stack = vec![(root.iter(), 1usize)];
    loop {
        let (next, depth) = match stack.last_mut() {
            None => return Ok(root),
            Some((iter, depth)) => (iter.next(), *depth),
        };
        let value = match next {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) => return Err(invalid(e)),
            Some(Ok((_, value))) => value,
        };
        let child = match value {
            RawBsonRef::Document(d) => d,
            RawBsonRef::Array(a) => RawDocument::from_bytes(a.as_bytes()).map_err(invalid)?,
            RawBsonRef::JavaScriptCodeWithScope(c) => c.scope,
            _ => continue,
        };
        if depth + 1 > MAX_BSON_DEPTH {
            return Err(WireError::Malformed(format!(
                "{what}: BSON nested deeper than {MAX_BSON_DEPTH} levels"
            )));
        }
        stack.push((child.iter(), depth + 1));
    }
}

/// Reads the header fields of `bytes` (at least [`HEADER_LEN`] long).
pub fn parse_header(bytes: &[u8]) -> Result<MsgHeader, WireError> {
    let mut r = Reader::new(bytes);
    Ok(MsgHeader {
        message_length: r.i32("header")?,
        request_id: r.i32("header")?,
        response_to: r.i32("header")?,
        op_code: r.i32("header")?,
    })
}

/// Reads one whole message (header included) from the stream. `Ok(None)` is a clean end of
/// stream between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<Vec<u8>>, WireError> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match stream.read(&mut len_bytes[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(WireError::Truncated("message length")),
            Ok(n) => got += n,
            Err(e) => return Err(WireError::Malformed(format!("read failed: {e}"))),
        }
    }
    let len = i32::from_le_bytes(len_bytes) as i64;
    check_length(len)?;
    let mut message = vec![0u8; len as usize];
    message[..4].copy_from_slice(&len_bytes);
    stream
        .read_exact(&mut message[4..])
        .await
        .map_err(|_| WireError::Truncated("message body"))?;
    Ok(Some(message))
}

fn check_length(len: i64) -> Result<(), WireError> {
    if len < HEADER_LEN as i64 {
        Err(WireError::TooShort(len))
    } else if len > MAX_MESSAGE_SIZE as i64 {
        Err(WireError::TooLarge(len))
    } else {
        Ok(())
    }
}

/// Decodes one whole message (header included).
pub fn decode(message: &[u8]) -> Result<Request, WireError> {
    if message.len() < HEADER_LEN {
        return Err(WireError::Truncated("header"));
    }
    let header = parse_header(message)?;
    check_length(header.message_length as i64)?;
    if header.message_length as usize != message.len() {
        return Err(WireError::Malformed(format!(
            "messageLength {} does not match the {} bytes received",
            header.message_length,
            message.len()
        )));
    }
    let payload = &message[HEADER_LEN..];
    match header.op_code {
        OP_MSG => decode_op_msg(header, message, payload).map(Request::Msg),
        OP_QUERY => decode_op_query(header, payload).map(Request::Query),
        other => Err(WireError::UnknownOpCode(other)),
    }
}

fn decode_op_msg(header: MsgHeader, message: &[u8], payload: &[u8]) -> Result<OpMsg, WireError> {
    let mut r = Reader::new(payload);
    let flags = r.i32("flagBits")? as u32;
    let unknown = flags & REQUIRED_BITS & !KNOWN_REQUIRED_BITS;
    if unknown != 0 {
        return Err(WireError::UnknownRequiredFlags(unknown));
    }
    let mut sections = payload;
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        if payload.len() < 4 + 4 {
            return Err(WireError::Truncated("checksum"));
        }
        let split = message.len() - 4;
        let expected = u32::from_le_bytes([
            message[split],
            message[split + 1],
            message[split + 2],
            message[split + 3],
        ]);
        if crc32c::crc32c(&message[..split]) != expected {
            return Err(WireError::ChecksumMismatch);
        }
        sections = &payload[..payload.len() - 4];
    }
    let mut r = Reader::new(&sections[4..]);
    let mut body: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while r.remaining() > 0 {
        match r.u8("section kind")? {
            0 => {
                if body.is_some() {
                    return Err(WireError::Malformed(
                        "OP_MSG has more than one body section".into(),
                    ));
                }
                body = Some(r.document("body section")?);
            }
            1 => {
                let size = r.i32("document sequence size")?;
                if size < 4 {
                    return Err(WireError::Malformed(format!(
                        "document sequence size {size} is invalid"
                    )));
                }
                let bytes = r.take(size as usize - 4, "document sequence")?;
                let mut seq = Reader::new(bytes);
                let identifier = seq.cstring("document sequence identifier")?;
                let mut docs = Vec::new();
                while seq.remaining() > 0 {
                    docs.push(Bson::Document(seq.document("document sequence")?));
                }
                if sequences.iter().any(|(id, _)| *id == identifier) {
                    return Err(WireError::Malformed(format!(
                        "duplicate document sequence '{identifier}'"
                    )));
                }
                sequences.push((identifier, docs));
            }
            kind => {
                return Err(WireError::Malformed(format!(
                    "unknown OP_MSG section kind {kind}"
                )));
            }
        }
    }
    let mut body = body.ok_or_else(|| WireError::Malformed("OP_MSG has no body section".into()))?;
    for (identifier, docs) in sequences {
        if body.contains_key(&identifier) {
            return Err(WireError::Malformed(format!(
                "duplicate field '{identifier}' in body and document sequence"
            )));
        }
        body.insert(identifier, Bson::Array(docs));
    }
    Ok(OpMsg {
        header,
        flags,
        body,
    })
}

fn decode_op_query(header: MsgHeader, payload: &[u8]) -> Result<OpQuery, WireError> {
    let mut r = Reader::new(payload);
    let flags = r.i32("OP_QUERY flags")?;
    let full_collection_name = r.cstring("fullCollectionName")?;
    let number_to_skip = r.i32("numberToSkip")?;
    let number_to_return = r.i32("numberToReturn")?;
    let query = r.document("query")?;
    // An optional returnFieldsSelector may follow; commands ignore it.
    if r.remaining() > 0 {
        r.document("returnFieldsSelector")?;
    }
    if r.remaining() > 0 {
        return Err(WireError::Malformed("trailing bytes after OP_QUERY".into()));
    }
    Ok(OpQuery {
        header,
        flags,
        full_collection_name,
        number_to_skip,
        number_to_return,
        query,
    })
}

fn write_header(out: &mut Vec<u8>, request_id: i32, response_to: i32, op_code: i32) {
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
}

fn finish_length(out: &mut [u8]) {
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_le_bytes());
}

fn append_document(out: &mut Vec<u8>, doc: &Document) {
    // Writing into a Vec cannot fail for a well-formed Document.
    if doc.to_writer(&mut *out).is_err() {
        tracing::error!("failed to serialise a reply document");
    }
}

/// Encodes an OP_MSG with a body and optional kind-1 document sequences; a checksum is
/// appended when `flags` has `checksumPresent`.
pub fn encode_op_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
    sequences: &[(&str, &[Document])],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_header(&mut out, request_id, response_to, OP_MSG);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    append_document(&mut out, body);
    for (identifier, docs) in sequences {
        out.push(1);
        let start = out.len();
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(identifier.as_bytes());
        out.push(0);
        for doc in *docs {
            append_document(&mut out, doc);
        }
        let size = (out.len() - start) as i32;
        out[start..start + 4].copy_from_slice(&size.to_le_bytes());
    }
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        let len = out.len() as i32 + 4;
        out[..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
    } else {
        finish_length(&mut out);
    }
    out
}

/// Encodes an OP_REPLY carrying one document, the answer to an OP_QUERY command.
pub fn encode_op_reply(request_id: i32, response_to: i32, doc: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_header(&mut out, request_id, response_to, OP_REPLY);
    // responseFlags: AwaitCapable (bit 3), as mongod sets on command replies.
    out.extend_from_slice(&8i32.to_le_bytes());
    out.extend_from_slice(&0i64.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&1i32.to_le_bytes());
    append_document(&mut out, doc);
    finish_length(&mut out);
    out
}

/// Encodes a legacy OP_QUERY (used by tests to play the part of an old driver).
pub fn encode_op_query(request_id: i32, full_collection_name: &str, query: &Document) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_header(&mut out, request_id, 0, OP_QUERY);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(full_collection_name.as_bytes());
    out.push(0);
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&(-1i32).to_le_bytes());
    append_document(&mut out, query);
    finish_length(&mut out);
    out
}

/// Decodes an OP_REPLY's first document (for tests of the legacy handshake).
pub fn decode_op_reply(message: &[u8]) -> Result<(MsgHeader, Document), WireError> {
    let header = parse_header(message)?;
    if header.op_code != OP_REPLY {
        return Err(WireError::UnknownOpCode(header.op_code));
    }
    let mut r = Reader::new(&message[HEADER_LEN.min(message.len())..]);
    r.take(4 + 8 + 4 + 4, "OP_REPLY fields")?;
    Ok((header, r.document("OP_REPLY document")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;
    use proptest::prelude::*;

    fn msg(flags: u32, body: &Document, sequences: &[(&str, &[Document])]) -> Vec<u8> {
        encode_op_msg(7, 0, flags, body, sequences)
    }

    #[test]
    fn round_trip_merges_document_sequences_into_the_body() {
        let docs = [doc! {"_id": 1}, doc! {"_id": 2, "x": "y"}];
        let bytes = msg(
            0,
            &doc! {"insert": "c", "$db": "d"},
            &[("documents", &docs)],
        );
        let Request::Msg(m) = decode(&bytes).unwrap() else {
            panic!("not an OP_MSG")
        };
        assert_eq!(m.header.request_id, 7);
        assert_eq!(
            m.body,
            doc! {"insert": "c", "$db": "d", "documents": [{"_id": 1}, {"_id": 2, "x": "y"}]}
        );
        assert!(!m.more_to_come());
    }

    #[test]
    fn checksum_is_verified() {
        let mut bytes = msg(FLAG_CHECKSUM_PRESENT, &doc! {"ping": 1, "$db": "a"}, &[]);
        let Request::Msg(m) = decode(&bytes).unwrap() else {
            panic!("not an OP_MSG")
        };
        assert!(m.checksum_present());
        assert_eq!(m.body, doc! {"ping": 1, "$db": "a"});
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        assert_eq!(decode(&bytes), Err(WireError::ChecksumMismatch));
    }

    #[test]
    fn unknown_required_flag_bits_are_rejected_but_optional_bits_are_not() {
        let bytes = msg(1 << 5, &doc! {"ping": 1}, &[]);
        assert_eq!(decode(&bytes), Err(WireError::UnknownRequiredFlags(1 << 5)));
        let bytes = msg(FLAG_EXHAUST_ALLOWED | (1 << 20), &doc! {"ping": 1}, &[]);
        assert!(decode(&bytes).is_ok());
    }

    #[test]
    fn duplicate_sequence_field_is_an_error() {
        let docs = [doc! {"_id": 1}];
        let bytes = msg(
            0,
            &doc! {"insert": "c", "documents": []},
            &[("documents", &docs)],
        );
        assert!(matches!(decode(&bytes), Err(WireError::Malformed(_))));
        let bytes = msg(
            0,
            &doc! {"insert": "c"},
            &[("documents", &docs), ("documents", &docs)],
        );
        assert!(matches!(decode(&bytes), Err(WireError::Malformed(_))));
    }

    #[test]
    fn lengths_and_opcodes_are_checked() {
        let mut bytes = msg(0, &doc! {"ping": 1}, &[]);
        bytes[12..16].copy_from_slice(&2012i32.to_le_bytes());
        assert_eq!(decode(&bytes), Err(WireError::UnknownOpCode(OP_COMPRESSED)));
        let bytes = msg(0, &doc! {"ping": 1}, &[]);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            check_length(48_000_001),
            Err(WireError::TooLarge(48_000_001))
        );
        assert_eq!(check_length(3), Err(WireError::TooShort(3)));
    }

    #[test]
    fn op_query_handshake_round_trip() {
        let bytes = encode_op_query(3, "admin.$cmd", &doc! {"isMaster": 1});
        let Request::Query(q) = decode(&bytes).unwrap() else {
            panic!("not an OP_QUERY")
        };
        assert_eq!(q.full_collection_name, "admin.$cmd");
        assert_eq!(q.query, doc! {"isMaster": 1});
        let reply = encode_op_reply(4, 3, &doc! {"ok": 1.0});
        let (h, d) = decode_op_reply(&reply).unwrap();
        assert_eq!((h.response_to, h.op_code), (3, OP_REPLY));
        assert_eq!(d, doc! {"ok": 1.0});
    }

    #[tokio::test]
    async fn read_message_frames_and_rejects_oversized_lengths() {
        let bytes = msg(0, &doc! {"ping": 1}, &[]);
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let mut cursor = std::io::Cursor::new(two);
        assert_eq!(
            read_message(&mut cursor).await.unwrap(),
            Some(bytes.clone())
        );
        assert_eq!(read_message(&mut cursor).await.unwrap(), Some(bytes));
        assert_eq!(read_message(&mut cursor).await.unwrap(), None);
        let mut big = std::io::Cursor::new(100_000_000i32.to_le_bytes().to_vec());
        assert_eq!(
            read_message(&mut big).await,
            Err(WireError::TooLarge(100_000_000))
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        // {a: {a: {a: ... {} }}} nested 5,000 levels, built from the inside out.
        let mut inner: Vec<u8> = vec![5, 0, 0, 0, 0];
        for _ in 0..5_000 {
            let mut outer = Vec::with_capacity(inner.len() + 8);
            let len = (inner.len() + 4 + 3 + 1) as i32;
            outer.extend_from_slice(&len.to_le_bytes());
            outer.extend_from_slice(&[0x03, b'a', 0]);
            outer.extend_from_slice(&inner);
            outer.push(0);
            inner = outer;
        }
        let mut message = Vec::new();
        write_header(&mut message, 1, 0, OP_MSG);
        message.extend_from_slice(&0u32.to_le_bytes());
        message.push(0);
        message.extend_from_slice(&inner);
        finish_length(&mut message);
        assert!(matches!(decode(&message), Err(WireError::Malformed(m)) if m.contains("nested")));
        let ok = encode_op_msg(1, 0, 0, &doc! {"a": {"b": [[{"c": 1}]]}}, &[]);
        assert!(decode(&ok).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn corrupted_messages_never_panic(
            flip in proptest::collection::vec((0usize..200, any::<u8>()), 1..8),
            kind1 in any::<bool>(),
        ) {
            let docs = [doc! {"a": 1}, doc! {"b": "x"}];
            let seqs: Vec<(&str, &[Document])> =
                if kind1 { vec![("documents", &docs[..])] } else { vec![] };
            let mut bytes = msg(0, &doc! {"insert": "c", "$db": "d"}, &seqs);
            for (i, b) in flip {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            let _ = decode(&bytes);
        }
    }
}
