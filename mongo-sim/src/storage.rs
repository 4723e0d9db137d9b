//! Databases, collections, documents and indexes (unique indexes enforced), and the oplog
//! every write is recorded in.

use crate::oplog::Oplog;
use std::collections::BTreeMap;

/// All data the server holds.
pub struct Data {
    pub databases: BTreeMap<String, Database>,
    pub oplog: Oplog,
}

impl Data {
    pub fn new(oplog_capacity: usize) -> Self {
        Self {
            databases: BTreeMap::new(),
            oplog: Oplog::new(oplog_capacity),
        }
    }
}

/// One database: its collections by name.
#[derive(Default)]
pub struct Database {
    pub collections: BTreeMap<String, Collection>,
}

/// One collection.
#[derive(Default)]
pub struct Collection {}

impl Data {
    /// The current version of the document with this key (`{_id: ...}`), for
    /// `fullDocument: "updateLookup"`.
    pub fn lookup_document(
        &self,
        ns: &crate::oplog::Namespace,
        document_key: &bson::Document,
    ) -> Option<bson::Document> {
        let _ = (ns, document_key);
        None
    }

    /// The collection's UUID, when it exists.
    pub fn collection_uuid(&self, ns: &crate::oplog::Namespace) -> Option<bson::Uuid> {
        let _ = ns;
        None
    }
}
