//! The logical session cache: the sessions (`lsid`) commands used, with when each was last
//! used, as mongod keeps them in memory and lists them with `$listLocalSessions` (manual:
//! "$listLocalSessions", "Server Sessions").
//!
//! Without authentication every session belongs to the same unauthenticated user, whose `uid`
//! is the SHA-256 of the empty user name, as mongod reports it.

use bson::{Binary, Bson, DateTime, Document, doc, spec::BinarySubtype};
use std::collections::HashMap;

/// SHA-256 of the empty string: the `uid` of sessions when authentication is off.
const UNAUTHENTICATED_UID: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Sessions in use, by their id's bytes.
#[derive(Default)]
pub struct SessionCache {
    sessions: HashMap<Vec<u8>, (Bson, DateTime)>,
}

impl SessionCache {
    /// Notes that a command used `lsid` now (mongod "vivifies" the session).
    pub fn touch(&mut self, lsid: &Document) {
        if let Some(id) = lsid.get("id") {
            let key = crate::retryable::session_key(lsid);
            self.sessions.insert(key, (id.clone(), DateTime::now()));
        }
    }

    /// Forgets the sessions `endSessions`/`killSessions` name.
    pub fn end(&mut self, lsid: &Document) {
        self.sessions.remove(&crate::retryable::session_key(lsid));
    }

    /// The cached sessions as `$listLocalSessions` returns them.
    pub fn list(&self) -> Vec<Document> {
        let uid = Binary {
            subtype: BinarySubtype::Generic,
            bytes: UNAUTHENTICATED_UID.to_vec(),
        };
        let mut out: Vec<(DateTime, Document)> = self
            .sessions
            .values()
            .map(|(id, last_use)| {
                (
                    *last_use,
                    doc! {"_id": {"id": id.clone(), "uid": uid.clone()}, "lastUse": *last_use},
                )
            })
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, d)| d).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_sessions_are_listed_until_ended() {
        let mut cache = SessionCache::default();
        let lsid = doc! {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1; 16] }};
        cache.touch(&lsid);
        cache.touch(&lsid);
        let listed = cache.list();
        assert_eq!(listed.len(), 1);
        let id = listed[0].get_document("_id").unwrap();
        assert_eq!(id.get("id"), lsid.get("id"));
        assert_eq!(
            id.get_binary_generic("uid").unwrap(),
            &UNAUTHENTICATED_UID.to_vec()
        );
        cache.end(&lsid);
        assert!(cache.list().is_empty());
    }
}
