//! The wire protocol: OP_MSG framing (kind-0 body, kind-1 document sequences, `moreToCome`,
//! checksum), decoded into one command document.
