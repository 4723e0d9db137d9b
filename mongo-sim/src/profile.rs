//! Which server mongo-sim plays, beyond a current mongod with access control off: an older
//! release, a server that lacks some aggregation operators, and a connection authenticated as
//! a user with a given set of privileges.
//!
//! These exist so that a client's start-up checks (mongo-projector's `doctor`) can be shown
//! the servers its users run: a release below the supported range, a MongoDB-compatible
//! service that lacks an operator, a user who was not granted an action. Each answers as
//! mongod does:
//! - the version: `buildInfo.version`/`versionArray`, `serverStatus.version` and
//!   `hello.maxWireVersion` (specifications, "Server Wire version and Feature List"), and an
//!   aggregation operator the release did not have yet is refused as mongod refuses an
//!   unknown one: `InvalidPipelineOperator` (168), "Unrecognized expression '$op'";
//! - the user: `connectionStatus` reports `authInfo.authenticatedUsers`,
//!   `authenticatedUserRoles` and, with `showPrivileges: true`, `authenticatedUserPrivileges`
//!   (manual: "connectionStatus"); a command needing an action the user lacks on its resource
//!   fails with `Unauthorized` (13) and mongod's message, `not authorized on <db> to execute
//!   command { ... }` (manual: "Privilege Actions", "Resource Document").
//!
//! Without a user, `connectionStatus` answers as a mongod without access control: no users,
//! no roles, no privileges.

use crate::error::{self, CommandError, Result};
use bson::{Bson, Document, doc};
use std::fmt;
use std::str::FromStr;

/// A MongoDB release, as `buildInfo` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// The release mongo-sim plays unless told otherwise.
pub const DEFAULT_VERSION: ServerVersion = ServerVersion {
    major: 7,
    minor: 0,
    patch: 14,
};

/// `maxWireVersion` per release series (specifications, "Server Wire version and Feature
/// List"; since 5.1 derived from the number of releases since 4.0).
const WIRE_VERSIONS: &[((u32, u32), i32)] = &[
    ((4, 0), 7),
    ((4, 2), 8),
    ((4, 4), 9),
    ((5, 0), 13),
    ((5, 1), 14),
    ((5, 2), 15),
    ((5, 3), 16),
    ((6, 0), 17),
    ((6, 1), 18),
    ((6, 2), 19),
    ((6, 3), 20),
    ((7, 0), 21),
    ((7, 1), 22),
    ((7, 2), 23),
    ((7, 3), 24),
    ((8, 0), 25),
];

impl ServerVersion {
    /// The wire version this release announces in `hello`.
    pub fn max_wire_version(&self) -> i32 {
        WIRE_VERSIONS
            .iter()
            .find(|(series, _)| *series == (self.major, self.minor))
            .map(|(_, wire)| *wire)
            .unwrap_or(0)
    }

    /// `buildInfo.versionArray`: major, minor, patch and 0 for a release build.
    pub fn version_array(&self) -> Vec<i32> {
        vec![self.major as i32, self.minor as i32, self.patch as i32, 0]
    }

    fn series(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl Default for ServerVersion {
    fn default() -> Self {
        DEFAULT_VERSION
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for ServerVersion {
    type Err = String;

    /// `"6.0.19"` (or `"6.0"`, patch 0), for a release series of the wire-version table.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let number = |i: usize| -> std::result::Result<u32, String> {
            match parts.get(i) {
                None if i == 2 => Ok(0),
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("{s:?} is not a version like 6.0.19")),
                None => Err(format!("{s:?} is not a version like 6.0.19")),
            }
        };
        if parts.len() > 3 {
            return Err(format!("{s:?} is not a version like 6.0.19"));
        }
        let version = ServerVersion {
            major: number(0)?,
            minor: number(1)?,
            patch: number(2)?,
        };
        if version.max_wire_version() == 0 {
            let known: Vec<String> = WIRE_VERSIONS
                .iter()
                .map(|((major, minor), _)| format!("{major}.{minor}"))
                .collect();
            return Err(format!(
                "no wire version known for {version} (known release series: {})",
                known.join(", ")
            ));
        }
        Ok(version)
    }
}

/// Aggregation operators mongo-sim implements that appeared after 4.0, with the first release
/// series that has them, so that an older release refuses them.
const INTRODUCED: &[(&str, (u32, u32))] = &[
    // Manual, "$replaceOne" / "$replaceAll" / "$isNumber": new in 4.4.
    ("$replaceOne", (4, 4)),
    ("$replaceAll", (4, 4)),
    ("$isNumber", (4, 4)),
    // Manual, "$getField" / "$setField" / "$unsetField", "$dateAdd" / "$dateSubtract" /
    // "$dateDiff" / "$dateTrunc": new in 5.0.
    ("$getField", (5, 0)),
    ("$setField", (5, 0)),
    ("$unsetField", (5, 0)),
    ("$dateAdd", (5, 0)),
    ("$dateSubtract", (5, 0)),
    ("$dateDiff", (5, 0)),
    ("$dateTrunc", (5, 0)),
    // Manual, "$sortArray": new in 5.2.
    ("$sortArray", (5, 2)),
    // The manual's page states no version. SERVER-49214 added the expression for resharding
    // (the 5.0 release series); the ticket lists backports to 4.4 and 4.2 patch releases,
    // which this table does not model.
    ("$toHashedIndexKey", (5, 0)),
];

/// What the server announces and which operators it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    pub version: ServerVersion,
    /// Operators refused although the version has them, as a MongoDB-compatible server or
    /// service that implements only part of the aggregation language refuses them.
    pub missing_operators: Vec<String>,
}

impl Release {
    /// Whether `op` is refused: introduced after this version, or named missing.
    pub fn lacks(&self, op: &str) -> bool {
        self.missing_operators.iter().any(|m| m == op)
            || INTRODUCED
                .iter()
                .any(|(name, since)| *name == op && self.version.series() < *since)
    }

    /// mongod's refusal of the first operator of `cmd` this server lacks, if any. Operators
    /// are looked for where expressions are parsed: everywhere in the command except inserted
    /// documents, index specifications and the documents of operator (non-pipeline) updates.
    pub fn refuse_unknown_operators(&self, name: &str, cmd: &Document) -> Result<()> {
        if self.missing_operators.is_empty() && self.version.series() >= (5, 2) {
            return Ok(());
        }
        for (key, value) in cmd {
            let skipped = matches!(
                (name, key.as_str()),
                ("insert", "documents") | ("createIndexes", "indexes")
            );
            if skipped {
                continue;
            }
            let found = match (name, key.as_str(), value) {
                ("update", "updates", Bson::Array(statements)) => {
                    statements.iter().find_map(|s| match s {
                        Bson::Document(s) => s.iter().find_map(|(k, v)| match (k.as_str(), v) {
                            ("u", Bson::Document(_)) => None,
                            _ => self.first_lacking(v),
                        }),
                        other => self.first_lacking(other),
                    })
                }
                ("findAndModify", "update", Bson::Document(_)) => None,
                _ => self.first_lacking(value),
            };
            if let Some(op) = found {
                return Err(CommandError::new(
                    error::INVALID_PIPELINE_OPERATOR,
                    format!("Unrecognized expression '{op}'"),
                ));
            }
        }
        Ok(())
    }

    fn first_lacking(&self, v: &Bson) -> Option<String> {
        match v {
            Bson::Document(d) => d.iter().find_map(|(k, v)| {
                if k.starts_with('$') && self.lacks(k) {
                    Some(k.clone())
                } else {
                    self.first_lacking(v)
                }
            }),
            Bson::Array(items) => items.iter().find_map(|v| self.first_lacking(v)),
            _ => None,
        }
    }
}

/// What a privilege applies to (manual: "Resource Document").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// `{db, collection}`: an empty `db` means every database, an empty `collection` every
    /// non-system collection (and, with a named `db`, the database itself).
    Namespace { db: String, collection: String },
    /// `{cluster: true}`.
    Cluster,
    /// `{anyResource: true}`.
    AnyResource,
}

impl Resource {
    fn to_document(&self) -> Document {
        match self {
            Resource::Namespace { db, collection } => doc! {"db": db, "collection": collection},
            Resource::Cluster => doc! {"cluster": true},
            Resource::AnyResource => doc! {"anyResource": true},
        }
    }

    /// Whether a privilege on `self` covers `wanted` (a specific namespace, a database as
    /// `{db, ""}`, or the cluster).
    fn covers(&self, wanted: &Resource) -> bool {
        match (self, wanted) {
            (Resource::AnyResource, _) => true,
            (Resource::Cluster, Resource::Cluster) => true,
            (
                Resource::Namespace { db, collection },
                Resource::Namespace {
                    db: want_db,
                    collection: want_coll,
                },
            ) => {
                let db_ok = db.is_empty() || db == want_db;
                // A database resource covers the database and its non-system collections;
                // `{db: "", collection: C}` covers collections, never a database.
                let coll_ok = if collection.is_empty() {
                    !want_coll.starts_with("system.")
                } else {
                    collection == want_coll
                };
                db_ok && coll_ok
            }
            _ => false,
        }
    }
}

/// Actions on a resource (manual: "Privilege Actions").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privilege {
    pub resource: Resource,
    pub actions: Vec<String>,
}

impl Privilege {
    pub fn new(resource: Resource, actions: &[&str]) -> Self {
        Privilege {
            resource,
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl FromStr for Privilege {
    type Err = String;

    /// `RESOURCE=ACTION,ACTION`, where RESOURCE is `db.collection` (`*` for an empty part:
    /// `bank.*`, `*.events`, `*.*`), `cluster` or `anyResource`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let Some((resource, actions)) = s.split_once('=') else {
            return Err(format!(
                "{s:?}: expected RESOURCE=ACTION[,ACTION...], e.g. bank.*=find,insert"
            ));
        };
        let resource = match resource {
            "cluster" => Resource::Cluster,
            "anyResource" => Resource::AnyResource,
            ns => {
                let Some((db, collection)) = ns.split_once('.') else {
                    return Err(format!(
                        "{s:?}: the resource is db.collection (\"*\" for any), cluster or anyResource"
                    ));
                };
                let part = |p: &str| {
                    if p == "*" {
                        String::new()
                    } else {
                        p.to_string()
                    }
                };
                Resource::Namespace {
                    db: part(db),
                    collection: part(collection),
                }
            }
        };
        let actions: Vec<String> = actions
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if actions.is_empty() {
            return Err(format!("{s:?}: no action named"));
        }
        Ok(Privilege { resource, actions })
    }
}

/// The actions the built-in `readWrite` role grants on a database's non-system collections
/// (manual: "Built-In Roles", readWrite, which includes read).
pub const READ_WRITE_ACTIONS: &[&str] = &[
    "changeStream",
    "collStats",
    "convertToCapped",
    "createCollection",
    "createIndex",
    "dbHash",
    "dbStats",
    "dropCollection",
    "dropIndex",
    "find",
    "insert",
    "killCursors",
    "listCollections",
    "listIndexes",
    "remove",
    "renameCollectionSameDB",
    "update",
];

/// The user every connection is authenticated as, with the privileges its roles grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedUser {
    pub user: String,
    /// The authentication database.
    pub db: String,
    /// `(role, db)`, only reported.
    pub roles: Vec<(String, String)>,
    pub privileges: Vec<Privilege>,
}

impl SimulatedUser {
    /// A user without any privilege yet.
    pub fn new(user: &str, db: &str) -> Self {
        SimulatedUser {
            user: user.to_string(),
            db: db.to_string(),
            roles: Vec::new(),
            privileges: Vec::new(),
        }
    }

    /// Like the built-in `readWriteAnyDatabase` role, less the actions in `except`: the
    /// `readWrite` actions on every database's non-system collections, and `listDatabases`.
    pub fn read_write_any_database_except(user: &str, except: &[&str]) -> Self {
        let actions: Vec<&str> = READ_WRITE_ACTIONS
            .iter()
            .copied()
            .filter(|a| !except.contains(a))
            .collect();
        let mut u = SimulatedUser::new(user, "admin");
        u.roles
            .push(("readWriteAnyDatabase".to_string(), "admin".to_string()));
        u.privileges.push(Privilege::new(
            Resource::Namespace {
                db: String::new(),
                collection: String::new(),
            },
            &actions,
        ));
        u.privileges
            .push(Privilege::new(Resource::Cluster, &["listDatabases"]));
        u
    }

    fn may(&self, action: &str, on: &Resource) -> bool {
        self.privileges
            .iter()
            .any(|p| p.resource.covers(on) && p.actions.iter().any(|a| a == action))
    }
}

/// `connectionStatus` (manual: "connectionStatus"): the authenticated user, its roles and,
/// with `showPrivileges: true`, its privileges; empty lists without access control.
pub fn connection_status(user: Option<&SimulatedUser>, cmd: &Document) -> Document {
    let show = cmd
        .get("showPrivileges")
        .and_then(crate::bsontype::as_bool)
        .unwrap_or(false);
    let (users, roles, privileges) = match user {
        None => (Vec::new(), Vec::new(), Vec::new()),
        Some(u) => (
            vec![Bson::Document(doc! {"user": &u.user, "db": &u.db})],
            u.roles
                .iter()
                .map(|(role, db)| Bson::Document(doc! {"role": role, "db": db}))
                .collect(),
            u.privileges
                .iter()
                .map(|p| {
                    Bson::Document(doc! {
                        "resource": p.resource.to_document(),
                        "actions": p.actions.clone(),
                    })
                })
                .collect(),
        ),
    };
    let mut auth_info = doc! {
        "authenticatedUsers": users,
        "authenticatedUserRoles": roles,
    };
    if show {
        auth_info.insert("authenticatedUserPrivileges", privileges);
    }
    doc! {"authInfo": auth_info}
}

/// Commands anyone may run, authenticated or not, and the test server's own controls (fail
/// points, step-down), which stay open so that a test can drive a server that plays a
/// restricted user.
const OPEN_COMMANDS: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "buildInfo",
    "buildinfo",
    "connectionStatus",
    "whatsmyuri",
    "endSessions",
    "killSessions",
    "getMore",
    "killCursors",
    "listDatabases",
    "configureFailPoint",
    "replSetStepDown",
];

/// The `(action, resource)` pairs `name` needs (manual: "Privilege Actions"); the namespace is
/// `db` and the command's collection.
fn required(name: &str, db: &str, cmd: &Document) -> Vec<(&'static str, Resource)> {
    let ns = |coll: &str| Resource::Namespace {
        db: db.to_string(),
        collection: coll.to_string(),
    };
    let coll = cmd.get_str(name).unwrap_or_default().to_string();
    let on_coll = |action: &'static str| (action, ns(&coll));
    match name {
        "find" | "count" | "distinct" => vec![on_coll("find")],
        "aggregate" => {
            let pipeline = cmd.get_array("pipeline").cloned().unwrap_or_default();
            let change_stream = matches!(
                pipeline.first(),
                Some(Bson::Document(stage)) if stage.contains_key("$changeStream")
            );
            let mut needed = vec![on_coll("find")];
            if change_stream {
                needed.push(on_coll("changeStream"));
            }
            for stage in &pipeline {
                let Bson::Document(stage) = stage else {
                    continue;
                };
                if let Ok(lookup) = stage.get_document("$lookup")
                    && let Ok(from) = lookup.get_str("from")
                {
                    needed.push(("find", ns(from)));
                }
                match stage.get("$unionWith") {
                    Some(Bson::String(from)) => needed.push(("find", ns(from))),
                    Some(Bson::Document(u)) => {
                        if let Ok(from) = u.get_str("coll") {
                            needed.push(("find", ns(from)));
                        }
                    }
                    _ => {}
                }
                if let Ok(out) = stage.get_str("$out") {
                    needed.push(("insert", ns(out)));
                    needed.push(("remove", ns(out)));
                }
            }
            needed
        }
        "insert" => vec![on_coll("insert")],
        "update" => {
            let upsert = cmd.get_array("updates").is_ok_and(|updates| {
                updates.iter().any(|u| {
                    matches!(u, Bson::Document(u) if u.get("upsert").and_then(crate::bsontype::as_bool) == Some(true))
                })
            });
            let mut needed = vec![on_coll("update")];
            if upsert {
                needed.push(on_coll("insert"));
            }
            needed
        }
        "delete" => vec![on_coll("remove")],
        "findAndModify" => {
            let flag = |f: &str| cmd.get(f).and_then(crate::bsontype::as_bool) == Some(true);
            let mut needed = vec![on_coll("find")];
            if flag("remove") {
                needed.push(on_coll("remove"));
            } else {
                needed.push(on_coll("update"));
                if flag("upsert") {
                    needed.push(on_coll("insert"));
                }
            }
            needed
        }
        "create" => vec![on_coll("createCollection")],
        "drop" => vec![on_coll("dropCollection")],
        "createIndexes" => vec![on_coll("createIndex")],
        "dropIndexes" => vec![on_coll("dropIndex")],
        "listIndexes" => vec![on_coll("listIndexes")],
        "dropDatabase" => vec![("dropDatabase", ns(""))],
        "listCollections" => {
            // With authorizedCollections and nameOnly a user lists what it may see without
            // the action (manual: "listCollections").
            let flag = |f: &str| cmd.get(f).and_then(crate::bsontype::as_bool) == Some(true);
            if flag("authorizedCollections") && flag("nameOnly") {
                Vec::new()
            } else {
                vec![("listCollections", ns(""))]
            }
        }
        "renameCollection" => {
            // Manual: "renameCollection" and "Privilege Actions": within one database,
            // renameCollectionSameDB on the database, and dropCollection on the target when
            // dropTarget replaces it; across databases, find and dropCollection on the
            // source, insert and createIndex on the target.
            let split = |v: Option<&Bson>| -> Option<(String, String)> {
                let s = v?.as_str()?;
                let (d, c) = s.split_once('.')?;
                Some((d.to_string(), c.to_string()))
            };
            let (Some((from_db, from)), Some((to_db, to))) =
                (split(cmd.get("renameCollection")), split(cmd.get("to")))
            else {
                return Vec::new();
            };
            let at = |d: &str, c: &str| Resource::Namespace {
                db: d.to_string(),
                collection: c.to_string(),
            };
            let drop_target =
                cmd.get("dropTarget").and_then(crate::bsontype::as_bool) == Some(true);
            let mut needed = if from_db == to_db {
                vec![("renameCollectionSameDB", at(&from_db, ""))]
            } else {
                vec![
                    ("find", at(&from_db, &from)),
                    ("dropCollection", at(&from_db, &from)),
                    ("insert", at(&to_db, &to)),
                    ("createIndex", at(&to_db, &to)),
                ]
            };
            if drop_target {
                needed.push(("dropCollection", at(&to_db, &to)));
            }
            needed
        }
        "collMod" => vec![on_coll("collMod")],
        "serverStatus" => vec![("serverStatus", Resource::Cluster)],
        "getCmdLineOpts" => vec![("getCmdLineOpts", Resource::Cluster)],
        "hostInfo" => vec![("hostInfo", Resource::Cluster)],
        "getParameter" => vec![("getParameter", Resource::Cluster)],
        "replSetGetStatus" => vec![("replSetGetStatus", Resource::Cluster)],
        // Anything else this server knows needs a privilege it cannot name: only a user
        // with anyResource may run it.
        _ => vec![("anyAction", Resource::AnyResource)],
    }
}

/// Refuses a command the user lacks a privilege for, as mongod with access control does.
pub fn authorize(user: Option<&SimulatedUser>, name: &str, db: &str, cmd: &Document) -> Result<()> {
    let Some(user) = user else {
        return Ok(());
    };
    if OPEN_COMMANDS.contains(&name) {
        return Ok(());
    }
    let allowed = |(action, resource): &(&str, Resource)| match resource {
        Resource::AnyResource => user
            .privileges
            .iter()
            .any(|p| p.resource == Resource::AnyResource),
        _ => user.may(action, resource),
    };
    if required(name, db, cmd).iter().all(allowed) {
        return Ok(());
    }
    Err(CommandError::new(
        error::UNAUTHORIZED,
        format!(
            "not authorized on {db} to execute command {}",
            crate::storage::shell_document(cmd)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_their_wire_version() {
        let v: ServerVersion = "6.0.19".parse().unwrap();
        assert_eq!(v.max_wire_version(), 17);
        assert_eq!(v.version_array(), vec![6, 0, 19, 0]);
        assert_eq!(v.to_string(), "6.0.19");
        assert_eq!(
            "8.0".parse::<ServerVersion>().unwrap().max_wire_version(),
            25
        );
        assert_eq!(DEFAULT_VERSION.max_wire_version(), 21);
        assert_eq!(DEFAULT_VERSION.to_string(), crate::handshake::VERSION);
        assert_eq!(
            DEFAULT_VERSION.max_wire_version(),
            crate::handshake::MAX_WIRE_VERSION
        );
        assert!("9.9.1".parse::<ServerVersion>().is_err());
        assert!("seven".parse::<ServerVersion>().is_err());
        assert!("7.0.1.2".parse::<ServerVersion>().is_err());
    }

    #[test]
    fn older_releases_and_missing_operators_refuse_expressions() {
        let old = Release {
            version: "4.4.29".parse().unwrap(),
            missing_operators: Vec::new(),
        };
        let hashed = doc! {"find": "e", "filter": {"$expr": {"$eq": [{"$mod": [{"$toHashedIndexKey": "$a"}, 3]}, 0]}}};
        let e = old.refuse_unknown_operators("find", &hashed).unwrap_err();
        assert_eq!(
            (e.code, e.code_name.as_str()),
            (168, "InvalidPipelineOperator")
        );
        assert_eq!(e.errmsg, "Unrecognized expression '$toHashedIndexKey'");
        assert!(
            Release::default()
                .refuse_unknown_operators("find", &hashed)
                .is_ok()
        );
        let lacking = Release {
            version: "7.0.2".parse().unwrap(),
            missing_operators: vec!["$toHashedIndexKey".to_string()],
        };
        assert!(lacking.refuse_unknown_operators("find", &hashed).is_err());
        // Documents that are data, not expressions, are never looked into.
        let insert = doc! {"insert": "e", "documents": [{"x": {"$toHashedIndexKey": 1}}]};
        assert!(lacking.refuse_unknown_operators("insert", &insert).is_ok());
        let pipeline_update = doc! {"update": "t", "updates": [{"q": {}, "u": [{"$set": {"h": {"$toHashedIndexKey": "$a"}}}]}]};
        assert!(
            lacking
                .refuse_unknown_operators("update", &pipeline_update)
                .is_err()
        );
    }

    fn at(db: &str, collection: &str) -> Resource {
        Resource::Namespace {
            db: db.into(),
            collection: collection.into(),
        }
    }

    #[test]
    fn resources_cover_as_the_manual_says() {
        assert!(at("bank", "events").covers(&at("bank", "events")));
        assert!(!at("bank", "events").covers(&at("bank", "accounts")));
        assert!(at("bank", "").covers(&at("bank", "events")));
        assert!(at("bank", "").covers(&at("bank", "")));
        assert!(!at("bank", "").covers(&at("bank", "system.users")));
        assert!(!at("bank", "").covers(&at("shop", "events")));
        assert!(at("", "events").covers(&at("shop", "events")));
        assert!(!at("", "events").covers(&at("shop", "")));
        assert!(at("", "").covers(&at("shop", "orders")));
        assert!(at("", "").covers(&at("shop", "")));
        assert!(!at("", "").covers(&Resource::Cluster));
        assert!(Resource::Cluster.covers(&Resource::Cluster));
        assert!(Resource::AnyResource.covers(&at("shop", "orders")));
    }

    #[test]
    fn privileges_parse_from_flags() {
        let p: Privilege = "bank.*=find,insert".parse().unwrap();
        assert_eq!(p.resource, at("bank", ""));
        assert_eq!(p.actions, vec!["find", "insert"]);
        assert_eq!(
            "cluster=serverStatus"
                .parse::<Privilege>()
                .unwrap()
                .resource,
            Resource::Cluster
        );
        assert!("bank=find".parse::<Privilege>().is_err());
        assert!("bank.*=".parse::<Privilege>().is_err());
        assert!("bank.*".parse::<Privilege>().is_err());
    }

    #[test]
    fn commands_need_their_actions() {
        let user = SimulatedUser::read_write_any_database_except("u", &["changeStream"]);
        let find = doc! {"find": "events", "filter": {}, "$db": "bank"};
        assert!(authorize(Some(&user), "find", "bank", &find).is_ok());
        let watch =
            doc! {"aggregate": "events", "pipeline": [{"$changeStream": {}}], "$db": "bank"};
        let e = authorize(Some(&user), "aggregate", "bank", &watch).unwrap_err();
        assert_eq!((e.code, e.code_name.as_str()), (13, "Unauthorized"));
        assert!(
            e.errmsg
                .starts_with("not authorized on bank to execute command { aggregate: \"events\""),
            "{}",
            e.errmsg
        );
        assert!(authorize(None, "aggregate", "bank", &watch).is_ok());
        let status = doc! {"serverStatus": 1};
        assert!(authorize(Some(&user), "serverStatus", "admin", &status).is_err());
        assert!(authorize(Some(&user), "ping", "admin", &doc! {"ping": 1}).is_ok());
        let rename = doc! {"renameCollection": "bank.a", "to": "bank.b", "dropTarget": true};
        assert!(authorize(Some(&user), "renameCollection", "admin", &rename).is_ok());
        let narrow = SimulatedUser {
            privileges: vec![Privilege::new(at("bank", "a"), READ_WRITE_ACTIONS)],
            ..SimulatedUser::new("n", "bank")
        };
        // renameCollectionSameDB is granted on a database, never on a collection.
        assert!(authorize(Some(&narrow), "renameCollection", "admin", &rename).is_err());
    }

    #[test]
    fn connection_status_shows_privileges_only_when_asked() {
        let r = connection_status(None, &doc! {"connectionStatus": 1, "showPrivileges": true});
        assert_eq!(
            r,
            doc! {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": [], "authenticatedUserPrivileges": []}}
        );
        let user = SimulatedUser::read_write_any_database_except("u", &[]);
        let r = connection_status(Some(&user), &doc! {"connectionStatus": 1});
        let info = r.get_document("authInfo").unwrap();
        assert_eq!(
            info.get_array("authenticatedUsers").unwrap(),
            &vec![Bson::Document(doc! {"user": "u", "db": "admin"})]
        );
        assert!(!info.contains_key("authenticatedUserPrivileges"));
        let r = connection_status(
            Some(&user),
            &doc! {"connectionStatus": 1, "showPrivileges": true},
        );
        let privileges = r
            .get_document("authInfo")
            .unwrap()
            .get_array("authenticatedUserPrivileges")
            .unwrap();
        assert_eq!(
            privileges[1],
            Bson::Document(doc! {"resource": {"cluster": true}, "actions": ["listDatabases"]})
        );
    }
}
