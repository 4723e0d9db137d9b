//! Configuration: a TOML file read once at start-up, validated as a whole.
//!
//! Every problem is reported with its path (`projections[0].handlers.Deposited: ...`) and all of
//! them at once, so that an operator fixes a file in one pass. The connection string never
//! comes from the file: it is read from `MONGODB_URI` by the caller, and only ever logged
//! through [`redact_uri`].

pub mod env;

use bson::{Bson, Document};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The whole configuration of one daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub http: HttpConfig,
    pub checkpoints: CheckpointConfig,
    pub shutdown: ShutdownConfig,
    pub source: SourceConfig,
    pub audit: AuditConfig,
    pub leases: LeaseConfig,
    pub projections: Vec<ProjectionConfig>,
    /// Settings taken from `MONGO_PROJECTOR_*` variables instead of the file ([`env`]).
    pub overrides: Vec<env::Override>,
}

/// Leases that let several replicas run side by side: each worker is active in one instance
/// at a time, and checkpoint writes are fenced by the lease epoch (see [`crate::store::lease`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    /// Off: a single instance, checkpoints unfenced.
    pub enabled: bool,
    /// How long a lease (and an instance's heartbeat) lasts without renewal: the longest a
    /// dead holder keeps a worker from running elsewhere.
    pub ttl: Duration,
    /// How often leases are renewed and standby workers try to acquire; below `ttl / 2` so
    /// that one late renewal does not lose the lease.
    pub renew_every: Duration,
    /// Lease collection, in the checkpoint database.
    pub collection: String,
    /// This instance's name in lease documents; by default the host name (the pod's name),
    /// the process id and a random suffix, see [`LeaseConfig::holder_id`].
    pub holder: Option<String>,
}

/// Heartbeats of running instances, beside the leases in the checkpoint database.
pub(crate) const INSTANCES_COLLECTION: &str = "projector_instances";

impl LeaseConfig {
    /// The configured holder, or `$HOSTNAME-<pid>-<random>`: unique even when a pod's
    /// process restarts under the same name, so a restarted instance never inherits the lease
    /// (and epoch) of the process it replaces.
    pub(crate) fn holder_id(&self) -> String {
        if let Some(h) = &self.holder {
            return h.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "mongo-projector".into());
        format!(
            "{host}-{}-{:06x}",
            std::process::id(),
            rand::random::<u32>() & 0xff_ffff
        )
    }
}

/// The metrics and probes endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub enabled: bool,
    pub address: std::net::SocketAddr,
    /// `/healthz` fails when a projection's stream has not answered (not even with an empty
    /// batch) for this long.
    pub liveness_timeout: Duration,
    /// With a value, `/readyz` also fails while a projection lags more than this; `None`
    /// (absent or `"0s"`, the default): lag is left to alerts.
    pub readiness_max_lag: Option<Duration>,
    /// How often parked counts, the oplog's oldest entry and the connection are checked.
    pub poll_every: Duration,
}

/// The default crash bound, `checkpoints.every_events`: wide enough for the default lanes'
/// batches to be written at once (the window also limits the events in flight).
pub const DEFAULT_EVERY_EVENTS: u64 = 10_000;

/// Where and how often resume tokens are persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// Database of the checkpoint collection; defaults to the first projection's database.
    pub database: Option<String>,
    pub collection: String,
    /// The crash bound: at most this many events lie beyond the stored checkpoint (handled
    /// or in flight), so a kill -9 redelivers no more. The checkpoint is written every half
    /// of it...
    pub every_events: u64,
    /// ...or after this much time with unpersisted progress, whichever comes first.
    pub every: Duration,
}

/// How long a graceful stop may take before the daemon gives up draining.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    pub deadline: Duration,
}

/// Tailing behaviour shared by all projections.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// How long one `getMore` waits for new events before returning an empty batch.
    pub max_await: Duration,
    /// First ceiling and cap of the one retry pause of a worker ([`crate::backoff`]): re-opening
    /// its stream, retrying a write, a checkpoint, a lease claim.
    pub reopen_backoff_initial: Duration,
    pub reopen_backoff_max: Duration,
    /// How many errors not known to be transient a worker retries in a row before it stops
    /// ([`crate::error`]); known-transient errors (network, failover) are retried without limit.
    pub unknown_error_retries: u32,
    /// Parallel apply lanes; events are routed to a lane by a stable hash of their aggregate
    /// id, so one aggregate's events stay in order while different aggregates proceed together.
    pub lanes: usize,
    /// Most events one lane takes into one batch (each round of a batch is one `update`
    /// command with at most one statement per aggregate).
    pub batch_size: usize,
}

/// The periodic drift audit inside the daemon (`[audit]`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditConfig {
    /// How often every projection's read model is compared with its event collection;
    /// `None` (absent or `"0s"`): never.
    pub every: Option<Duration>,
}

/// Lanes when the configuration does not say: two per core, at least 4, at most 16. A lane
/// spends most of its time waiting for a round trip, so more lanes than cores keep the
/// server busy (measured in BENCHMARKS.md: 4 lanes drained twice as fast as 2 on 2 cores).
pub(crate) fn default_lanes() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .clamp(4, 16)
}

/// Where a projection starts when it has no checkpoint yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Only events written after the first start.
    Now,
    /// Every event already in the event collection, then the live stream.
    Beginning,
}

/// What to do with an event type that has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnhandledPolicy {
    /// Advance the read model's sequence without changing anything else.
    Skip,
    /// Park the event for an operator to look at.
    Park,
}

/// Names of the event document's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFields {
    pub(crate) aggregate_id: String,
    pub(crate) sequence_number: String,
    pub event_type: String,
    pub data: String,
    pub timestamp: String,
}

impl Default for EventFields {
    fn default() -> Self {
        Self {
            aggregate_id: "aggregateId".into(),
            sequence_number: "sequenceNumber".into(),
            event_type: "eventType".into(),
            data: "data".into(),
            timestamp: "timestamp".into(),
        }
    }
}

/// How one event type changes the read model.
#[derive(Debug, Clone, PartialEq)]
pub enum Handler {
    /// A document of update operators; string values `"${path}"` are replaced by the value
    /// at that path of the event document.
    Operators(Document),
    /// An update pipeline; the event document is available as `$$event`.
    Pipeline(Vec<Document>),
}

/// Parking and dead-lettering of events that cannot be applied yet.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkingConfig {
    /// Collection of parked events; defaults to `<projection>_parked`.
    pub collection: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// After this many attempts, or this long parked, an event is dead-lettered.
    pub max_attempts: u32,
    pub(crate) max_age: Duration,
    /// How often due parked events are retried.
    pub sweep_every: Duration,
}

/// One projection: an event collection folded into one read-model collection.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionConfig {
    pub name: String,
    pub database: String,
    /// The event collection.
    pub events: String,
    /// The read-model collection (one document per aggregate, `_id` = aggregate id).
    pub target: String,
    /// An optional `$match` on event documents (before the change stream prefixes it).
    pub filter: Option<Document>,
    pub fields: EventFields,
    pub start: StartFrom,
    /// Create the unique `{aggregateId: 1, sequenceNumber: 1}` index when missing.
    pub(crate) create_index: bool,
    pub(crate) unhandled: UnhandledPolicy,
    pub handlers: BTreeMap<String, Handler>,
    pub parking: ParkingConfig,
    /// Workers the projection is split into by a hash of the aggregate id (1 to
    /// [`MAX_PARTITIONS`]; see [`crate::model::partition`]).
    pub partitions: u32,
}

/// Every problem found in a configuration file, each with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            write!(f, "s")?;
        }
        write!(f, "):")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a configuration file, with the overrides of this process's
    /// `MONGO_PROJECTOR_*` environment variables ([`env`]).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::parse_with_env(&text, std::env::vars())
    }

    /// Parses and validates configuration text alone.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_with_env(text, std::iter::empty())
    }

    /// Parses configuration text, applies the `MONGO_PROJECTOR_*` overrides among `vars`, and
    /// validates the result as a whole: every problem, of the file or of a variable, at once.
    pub(crate) fn parse_with_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![format!("syntax: {e}")]))?;
        let mut errors = Vec::new();
        let overrides = env::apply(&mut root, vars, &mut errors);
        let mut config = read_config(&root, &mut errors);
        env::name_variables(&mut errors, &overrides);
        config.overrides = overrides;
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The projection called `name`.
    pub fn projection(&self, name: &str) -> Option<&ProjectionConfig> {
        self.projections.iter().find(|p| p.name == name)
    }

    /// The database holding checkpoints.
    pub(crate) fn checkpoint_database(&self) -> &str {
        self.checkpoints
            .database
            .as_deref()
            .or_else(|| self.projections.first().map(|p| p.database.as_str()))
            .unwrap_or("mongo_projector")
    }
}

/// A connection string with every secret replaced by `***`: the password of the userinfo
/// (`mongodb://user:***@host`), and the values of the query options that carry credentials
/// (connection string specification: `tlsCertificateKeyFilePassword`, the legacy
/// `sslPEMKeyPassword` and `sslClientCertificateKeyPassword`, `proxyPassword`, and in
/// `authMechanismProperties` the values of properties such as `AWS_SESSION_TOKEN`). Option names
/// are case-insensitive; any option or property whose name contains "password", "secret" or
/// "token" is masked too. The only form in which a connection string may be logged.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let (scheme, rest) = uri.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => match authority[..at].split_once(':') {
            Some((user, _password)) => format!("{user}:***{}", &authority[at..]),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let options: Vec<String> = query
                .split('&')
                .map(|option| match option.split_once('=') {
                    Some((name, _)) if is_secret_name(name) => format!("{name}=***"),
                    Some((name, value)) if name.eq_ignore_ascii_case("authMechanismProperties") => {
                        format!("{name}={}", redact_properties(value))
                    }
                    _ => option.to_string(),
                })
                .collect();
            format!("{path}?{}", options.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// An option or property name that names a credential.
fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
}

/// `authMechanismProperties`' `KEY:value` pairs (comma-separated, possibly percent-encoded),
/// with the values of secret keys masked.
fn redact_properties(value: &str) -> String {
    let (separator, colon) = if value.contains("%2C") || value.contains("%3A") {
        ("%2C", "%3A")
    } else {
        (",", ":")
    };
    value
        .split(separator)
        .map(|pair| match pair.split_once(colon) {
            Some((key, _)) if is_secret_name(key) => format!("{key}{colon}***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(separator)
}

/// Reads one TOML table, remembering which keys were consumed so that the rest can be
/// reported as unknown.
struct TableReader<'a> {
    table: &'a toml::Table,
    path: String,
    seen: Vec<&'static str>,
}

impl<'a> TableReader<'a> {
    fn new(table: &'a toml::Table, path: impl Into<String>) -> Self {
        Self {
            table,
            path: path.into(),
            seen: Vec::new(),
        }
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.seen.push(key);
        self.table.get(key)
    }

    fn string(&mut self, key: &'static str, errors: &mut Vec<String>) -> Option<String> {
        match self.get(key)? {
            toml::Value::String(s) if !s.is_empty() => Some(s.clone()),
            toml::Value::String(_) => {
                errors.push(format!("{}: must not be empty", self.at(key)));
                None
            }
            other => {
                errors.push(format!(
                    "{}: expected a string, found {}",
                    self.at(key),
                    other.type_str()
                ));
                None
            }
        }
    }

    fn required_string(&mut self, key: &'static str, errors: &mut Vec<String>) -> String {
        if self.table.contains_key(key) {
            self.string(key, errors).unwrap_or_default()
        } else {
            self.seen.push(key);
            errors.push(format!("{}: missing (required)", self.at(key)));
            String::new()
        }
    }

    fn boolean(&mut self, key: &'static str, default: bool, errors: &mut Vec<String>) -> bool {
        match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                errors.push(format!(
                    "{}: expected true or false, found {}",
                    self.at(key),
                    other.type_str()
                ));
                default
            }
        }
    }

    fn positive_integer(
        &mut self,
        key: &'static str,
        default: u64,
        errors: &mut Vec<String>,
    ) -> u64 {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(i)) if *i > 0 => *i as u64,
            Some(toml::Value::Integer(i)) => {
                errors.push(format!("{}: must be at least 1, found {i}", self.at(key)));
                default
            }
            Some(other) => {
                errors.push(format!(
                    "{}: expected an integer, found {}",
                    self.at(key),
                    other.type_str()
                ));
                default
            }
        }
    }

    fn duration(
        &mut self,
        key: &'static str,
        default: Duration,
        errors: &mut Vec<String>,
    ) -> Duration {
        match self.get(key) {
            None => default,
            Some(toml::Value::String(s)) => match humantime::parse_duration(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    errors.push(format!("{}: must be longer than zero", self.at(key)));
                    default
                }
                Err(e) => {
                    errors.push(format!(
                        "{}: not a duration like \"250ms\" or \"5s\": {e}",
                        self.at(key)
                    ));
                    default
                }
            },
            Some(other) => {
                errors.push(format!(
                    "{}: expected a duration string like \"5s\", found {}",
                    self.at(key),
                    other.type_str()
                ));
                default
            }
        }
    }

    /// A duration where `"0s"`, like leaving the key out, means "off" (`None`).
    fn optional_duration(
        &mut self,
        key: &'static str,
        errors: &mut Vec<String>,
    ) -> Option<Duration> {
        match self.get(key)? {
            toml::Value::String(s) => match humantime::parse_duration(s) {
                Ok(d) if d.is_zero() => None,
                Ok(d) => Some(d),
                Err(e) => {
                    errors.push(format!(
                        "{}: not a duration like \"30s\" or \"0s\" (off): {e}",
                        self.at(key)
                    ));
                    None
                }
            },
            other => {
                errors.push(format!(
                    "{}: expected a duration string like \"30s\", found {}",
                    self.at(key),
                    other.type_str()
                ));
                None
            }
        }
    }

    fn table(&mut self, key: &'static str, errors: &mut Vec<String>) -> Option<&'a toml::Table> {
        match self.get(key)? {
            toml::Value::Table(t) => Some(t),
            other => {
                errors.push(format!(
                    "{}: expected a table, found {}",
                    self.at(key),
                    other.type_str()
                ));
                None
            }
        }
    }

    /// The sub-table `key`, read by `read` with its unknown keys reported. An absent table
    /// (or one of the wrong type, reported) reads as empty, so that every setting in it takes
    /// its default and the rest of the file is still checked.
    fn section<T>(
        &mut self,
        key: &'static str,
        errors: &mut Vec<String>,
        read: impl FnOnce(&mut TableReader<'_>, &mut Vec<String>) -> T,
    ) -> T {
        let empty = toml::Table::new();
        let table = self.table(key, errors).unwrap_or(&empty);
        let mut section = TableReader::new(table, self.at(key));
        let value = read(&mut section, errors);
        section.finish(errors);
        value
    }

    /// One of a few words, each standing for a value; the first is the default.
    fn choice<T: Copy>(
        &mut self,
        key: &'static str,
        words: &[(&str, T)],
        errors: &mut Vec<String>,
    ) -> T {
        let default = words[0].1;
        let Some(word) = self.string(key, errors) else {
            return default;
        };
        if let Some((_, value)) = words.iter().find(|(w, _)| *w == word) {
            return *value;
        }
        let expected: Vec<String> = words.iter().map(|(w, _)| format!("{w:?}")).collect();
        errors.push(format!(
            "{}: expected {}, found {word:?}",
            self.at(key),
            expected.join(" or ")
        ));
        default
    }

    /// Reports every key that no reader asked for.
    fn finish(self, errors: &mut Vec<String>) {
        for key in self.table.keys() {
            if !self.seen.contains(&key.as_str()) {
                let mut known: Vec<&str> = self.seen.clone();
                known.sort_unstable();
                known.dedup();
                errors.push(format!(
                    "{}: unknown key (known keys: {})",
                    self.at(key),
                    known.join(", ")
                ));
            }
        }
    }
}

fn read_config(root: &toml::Table, errors: &mut Vec<String>) -> Config {
    let mut r = TableReader::new(root, "");
    let http = r.section("http", errors, read_http);
    let checkpoints = r.section("checkpoints", errors, read_checkpoints);
    let shutdown = r.section("shutdown", errors, |c, errors| ShutdownConfig {
        deadline: c.duration("deadline", Duration::from_secs(10), errors),
    });
    let source = r.section("source", errors, read_source);
    let audit = r.section("audit", errors, read_audit);
    let leases = r.section("leases", errors, read_leases);
    let projections = read_projections(&mut r, errors);
    r.finish(errors);
    check_unique_names(&projections, errors);
    Config {
        http,
        checkpoints,
        shutdown,
        source,
        audit,
        leases,
        projections,
        overrides: Vec::new(),
    }
}

/// `[http]`: the address is checked here because only a parsed one can be bound.
fn read_http(c: &mut TableReader<'_>, errors: &mut Vec<String>) -> HttpConfig {
    let default_address: std::net::SocketAddr = ([0, 0, 0, 0], 9464).into();
    let address = match c.string("address", errors) {
        None => default_address,
        Some(a) => a.parse().unwrap_or_else(|_| {
            errors.push(format!(
                "http.address: {a:?} is not an address like \"0.0.0.0:9464\""
            ));
            default_address
        }),
    };
    HttpConfig {
        enabled: c.boolean("enabled", true, errors),
        address,
        liveness_timeout: c.duration("liveness_timeout", Duration::from_secs(60), errors),
        readiness_max_lag: c.optional_duration("readiness_max_lag", errors),
        poll_every: c.duration("poll_every", Duration::from_secs(5), errors),
    }
}

/// `[checkpoints]`: the database is left unset so that it can follow the first projection's.
fn read_checkpoints(c: &mut TableReader<'_>, errors: &mut Vec<String>) -> CheckpointConfig {
    CheckpointConfig {
        database: c.string("database", errors),
        collection: c
            .string("collection", errors)
            .unwrap_or_else(|| "projector_checkpoints".into()),
        every_events: c.positive_integer("every_events", DEFAULT_EVERY_EVENTS, errors),
        every: c.duration("every", Duration::from_secs(1), errors),
    }
}

/// `[source]`, with upper bounds that keep one worker's lanes, retries and batches within
/// what a server and an operator's patience can take.
fn read_source(c: &mut TableReader<'_>, errors: &mut Vec<String>) -> SourceConfig {
    let cfg = SourceConfig {
        max_await: c.duration("max_await", Duration::from_millis(500), errors),
        reopen_backoff_initial: c.duration(
            "reopen_backoff_initial",
            Duration::from_millis(100),
            errors,
        ),
        reopen_backoff_max: c.duration("reopen_backoff_max", Duration::from_secs(30), errors),
        unknown_error_retries: c.positive_integer("unknown_error_retries", 10, errors) as u32,
        lanes: c.positive_integer("lanes", default_lanes() as u64, errors) as usize,
        batch_size: c.positive_integer("batch_size", 1000, errors) as usize,
    };
    if cfg.lanes > 256 {
        errors.push(format!("source.lanes: at most 256, found {}", cfg.lanes));
    }
    if cfg.unknown_error_retries > 1000 {
        errors.push(format!(
            "source.unknown_error_retries: at most 1000, found {}",
            cfg.unknown_error_retries
        ));
    }
    if cfg.batch_size > 10_000 {
        errors.push(format!(
            "source.batch_size: at most 10000, found {}",
            cfg.batch_size
        ));
    }
    cfg
}

/// `[audit]`: `every` is a duration where `"0s"` (like leaving it out) turns the audit off.
fn read_audit(c: &mut TableReader<'_>, errors: &mut Vec<String>) -> AuditConfig {
    AuditConfig {
        every: c.optional_duration("every", errors),
    }
}

/// `[leases]`: `renew_every` must leave room for one late renewal within `ttl`.
fn read_leases(c: &mut TableReader<'_>, errors: &mut Vec<String>) -> LeaseConfig {
    let cfg = LeaseConfig {
        enabled: c.boolean("enabled", true, errors),
        ttl: c.duration("ttl", Duration::from_secs(15), errors),
        renew_every: c.duration("renew_every", Duration::from_secs(5), errors),
        collection: c
            .string("collection", errors)
            .unwrap_or_else(|| "projector_leases".into()),
        holder: c.string("holder", errors),
    };
    if cfg.renew_every * 2 >= cfg.ttl {
        errors.push(format!(
            "leases.renew_every: must be less than half of leases.ttl ({}), found {}",
            humantime::format_duration(cfg.ttl),
            humantime::format_duration(cfg.renew_every)
        ));
    }
    cfg
}

/// `[[projections]]`: at least one, each read with its index in the path.
fn read_projections(r: &mut TableReader<'_>, errors: &mut Vec<String>) -> Vec<ProjectionConfig> {
    let mut projections = Vec::new();
    match r.get("projections") {
        None => {
            errors.push("projections: missing (at least one [[projections]] is required)".into())
        }
        Some(toml::Value::Array(items)) => {
            if items.is_empty() {
                errors.push("projections: at least one projection is required".into());
            }
            for (i, item) in items.iter().enumerate() {
                let path = format!("projections[{i}]");
                match item {
                    toml::Value::Table(t) => projections.push(read_projection(t, &path, errors)),
                    other => errors.push(format!(
                        "{path}: expected a table, found {}",
                        other.type_str()
                    )),
                }
            }
        }
        Some(other) => errors.push(format!(
            "projections: expected [[projections]] tables, found {}",
            other.type_str()
        )),
    }
    projections
}

/// A projection's name keys its checkpoint, leases and metrics, so no two may share one.
fn check_unique_names(projections: &[ProjectionConfig], errors: &mut Vec<String>) {
    let mut names = std::collections::HashSet::new();
    for (i, p) in projections.iter().enumerate() {
        if !p.name.is_empty() && !names.insert(p.name.clone()) {
            errors.push(format!(
                "projections[{i}].name: duplicate projection name {:?}",
                p.name
            ));
        }
    }
}

/// One `[[projections]]` table; `path` (`projections[i]`) prefixes its problems.
fn read_projection(t: &toml::Table, path: &str, errors: &mut Vec<String>) -> ProjectionConfig {
    let mut r = TableReader::new(t, path);
    let name = read_projection_name(&mut r, path, errors);
    let database = r.required_string("database", errors);
    let events = r.required_string("events", errors);
    let target = r.required_string("target", errors);
    let filter = read_filter(&mut r, path, errors);
    let fields = r.section("fields", errors, read_event_fields);
    let start = r.choice(
        "start",
        &[("now", StartFrom::Now), ("beginning", StartFrom::Beginning)],
        errors,
    );
    let create_index = r.boolean("create_index", true, errors);
    let unhandled = r.choice(
        "unhandled_events",
        &[
            ("skip", UnhandledPolicy::Skip),
            ("park", UnhandledPolicy::Park),
        ],
        errors,
    );
    let handlers = read_handlers(&mut r, path, errors);
    let parking = r.section("parking", errors, |p, errors| {
        read_parking(p, &name, errors)
    });
    let partitions = read_partitions(&mut r, path, errors);
    r.finish(errors);
    if !events.is_empty() && events == target {
        errors.push(format!(
            "{path}.target: must differ from the event collection {events:?}"
        ));
    }
    ProjectionConfig {
        name,
        database,
        events,
        target,
        filter,
        fields,
        start,
        create_index,
        unhandled,
        handlers,
        parking,
        partitions,
    }
}

/// `projections[].name`, limited to characters that are safe in collection names, metric
/// labels and lease ids.
fn read_projection_name(r: &mut TableReader<'_>, path: &str, errors: &mut Vec<String>) -> String {
    let name = r.required_string("name", errors);
    if !name.is_empty()
        && !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        errors.push(format!(
            "{path}.name: use only letters, digits, '_' and '-' (found {name:?})"
        ));
    }
    name
}

/// `projections[].filter`: a `$match` document, checked for what a change stream accepts.
fn read_filter(r: &mut TableReader<'_>, path: &str, errors: &mut Vec<String>) -> Option<Document> {
    match toml_to_bson(r.get("filter")?) {
        Bson::Document(d) => {
            validate_filter(&d, &format!("{path}.filter"), errors);
            Some(d)
        }
        _ => {
            errors.push(format!(
                "{path}.filter: expected a table (a $match document)"
            ));
            None
        }
    }
}

/// `projections[].fields`: each name the event document uses, defaulting to the example's.
fn read_event_fields(f: &mut TableReader<'_>, errors: &mut Vec<String>) -> EventFields {
    let d = EventFields::default();
    EventFields {
        aggregate_id: f.string("aggregate_id", errors).unwrap_or(d.aggregate_id),
        sequence_number: f
            .string("sequence_number", errors)
            .unwrap_or(d.sequence_number),
        event_type: f.string("event_type", errors).unwrap_or(d.event_type),
        data: f.string("data", errors).unwrap_or(d.data),
        timestamp: f.string("timestamp", errors).unwrap_or(d.timestamp),
    }
}

/// `projections[].handlers`: a projection without one would only ever skip or park.
fn read_handlers(
    r: &mut TableReader<'_>,
    path: &str,
    errors: &mut Vec<String>,
) -> BTreeMap<String, Handler> {
    let mut handlers = BTreeMap::new();
    match r.table("handlers", errors) {
        None => errors.push(format!(
            "{path}.handlers: missing (at least one event type needs a handler)"
        )),
        Some(ht) => {
            if ht.is_empty() {
                errors.push(format!(
                    "{path}.handlers: at least one event type needs a handler"
                ));
            }
            for (event_type, value) in ht {
                let hpath = format!("{path}.handlers.{event_type}");
                if let Some(h) = read_handler(value, &hpath, errors) {
                    handlers.insert(event_type.clone(), h);
                }
            }
        }
    }
    handlers
}

/// `projections[].parking`: the collection is named after the projection unless set.
fn read_parking(p: &mut TableReader<'_>, name: &str, errors: &mut Vec<String>) -> ParkingConfig {
    ParkingConfig {
        collection: p
            .string("collection", errors)
            .unwrap_or_else(|| format!("{name}_parked")),
        retry_initial: p.duration("retry_initial", Duration::from_millis(500), errors),
        retry_max: p.duration("retry_max", Duration::from_secs(60), errors),
        max_attempts: p
            .positive_integer("max_attempts", 20, errors)
            .min(u32::MAX as u64) as u32,
        max_age: p.duration("max_age", Duration::from_secs(3600), errors),
        sweep_every: p.duration("sweep_every", Duration::from_millis(250), errors),
    }
}

/// Most partitions a projection may be split into: each is one more change stream on the
/// server.
pub(crate) const MAX_PARTITIONS: u32 = 64;

/// `projections[].partitions`: 1 to [`MAX_PARTITIONS`], default 1.
fn read_partitions(r: &mut TableReader<'_>, path: &str, errors: &mut Vec<String>) -> u32 {
    let max = MAX_PARTITIONS;
    let k = r.positive_integer("partitions", 1, errors);
    if k > u64::from(max) {
        errors.push(format!("{path}.partitions: at most {max}, found {k}"));
        return 1;
    }
    k as u32
}

/// Update operators a handler may use (manual: "Update Operators").
const UPDATE_OPERATORS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$setOnInsert",
    "$currentDate",
    "$push",
    "$addToSet",
    "$pull",
    "$pullAll",
    "$pop",
];

/// Stages allowed in an update pipeline (manual: "Updates with Aggregation Pipeline").
const PIPELINE_STAGES: &[&str] = &[
    "$set",
    "$addFields",
    "$unset",
    "$project",
    "$replaceWith",
    "$replaceRoot",
];

/// Fields the daemon owns in every read-model document.
const RESERVED_FIELDS: &[&str] = &["_id", "lastSequenceNumber"];

fn read_handler(value: &toml::Value, path: &str, errors: &mut Vec<String>) -> Option<Handler> {
    match toml_to_bson(value) {
        Bson::Document(ops) => {
            let before = errors.len();
            if ops.is_empty() {
                errors.push(format!(
                    "{path}: an update document needs at least one operator"
                ));
            }
            for (op, arg) in &ops {
                if !UPDATE_OPERATORS.contains(&op.as_str()) {
                    errors.push(format!(
                        "{path}: {op:?} is not an update operator (expected one of {})",
                        UPDATE_OPERATORS.join(" ")
                    ));
                    continue;
                }
                let Bson::Document(fields) = arg else {
                    errors.push(format!("{path}.{op}: expected a table of fields"));
                    continue;
                };
                for (field, v) in fields {
                    let root = field.split('.').next().unwrap_or(field);
                    if RESERVED_FIELDS.contains(&root) {
                        errors.push(format!(
                            "{path}.{op}.{field}: {root} is maintained by mongo-projector"
                        ));
                    }
                    check_placeholders(v, &format!("{path}.{op}.{field}"), errors);
                }
            }
            (errors.len() == before).then_some(Handler::Operators(ops))
        }
        Bson::Array(stages) => {
            let before = errors.len();
            let mut out = Vec::new();
            if stages.is_empty() {
                errors.push(format!(
                    "{path}: an update pipeline needs at least one stage"
                ));
            }
            for (i, stage) in stages.into_iter().enumerate() {
                match stage {
                    Bson::Document(d) if d.len() == 1 => {
                        let name = d.keys().next().cloned().unwrap_or_default();
                        if !PIPELINE_STAGES.contains(&name.as_str()) {
                            errors.push(format!(
                                "{path}[{i}]: {name:?} is not allowed in an update pipeline (expected one of {})",
                                PIPELINE_STAGES.join(" ")
                            ));
                        }
                        out.push(d);
                    }
                    _ => errors.push(format!(
                        "{path}[{i}]: each stage must be a table with exactly one stage name"
                    )),
                }
            }
            (errors.len() == before).then_some(Handler::Pipeline(out))
        }
        _ => {
            errors.push(format!(
                "{path}: expected a table of update operators or an array of pipeline stages"
            ));
            None
        }
    }
}

/// A placeholder must be a whole string value `"${path}"`; anything else with `${` is a typo.
fn check_placeholders(v: &Bson, path: &str, errors: &mut Vec<String>) {
    match v {
        Bson::String(s) if s.contains("${") && placeholder(s).is_none() => {
            errors.push(format!(
                "{path}: {s:?}: a placeholder must be the whole value, like \"${{data.amount}}\""
            ));
        }
        Bson::Document(d) => {
            for (k, v) in d {
                check_placeholders(v, &format!("{path}.{k}"), errors);
            }
        }
        Bson::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                check_placeholders(v, &format!("{path}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// The path inside `"${path}"`, when `s` is exactly one placeholder.
pub(crate) fn placeholder(s: &str) -> Option<&str> {
    let inner = s.strip_prefix("${")?.strip_suffix('}')?;
    let valid = !inner.is_empty()
        && inner
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'));
    valid.then_some(inner)
}

fn validate_filter(d: &Document, path: &str, errors: &mut Vec<String>) {
    for (k, v) in d {
        match k.as_str() {
            "$and" | "$or" | "$nor" => match v {
                Bson::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item {
                            Bson::Document(sub) => validate_filter(sub, &format!("{path}.{k}[{i}]"), errors),
                            _ => errors.push(format!("{path}.{k}[{i}]: expected a table")),
                        }
                    }
                }
                _ => errors.push(format!("{path}.{k}: expected an array of tables")),
            },
            other if other.starts_with('$') => errors.push(format!(
                "{path}.{other}: only field conditions, $and, $or and $nor are supported in a projection filter"
            )),
            _ => {}
        }
    }
}

/// TOML values as BSON: integers become Int64, datetimes become BSON dates where they are
/// complete, tables keep their key order.
pub(crate) fn toml_to_bson(v: &toml::Value) -> Bson {
    match v {
        toml::Value::String(s) => Bson::String(s.clone()),
        toml::Value::Integer(i) => Bson::Int64(*i),
        toml::Value::Float(f) => Bson::Double(*f),
        toml::Value::Boolean(b) => Bson::Boolean(*b),
        toml::Value::Datetime(d) => match bson::DateTime::parse_rfc3339_str(d.to_string()) {
            Ok(dt) => Bson::DateTime(dt),
            Err(_) => Bson::String(d.to_string()),
        },
        toml::Value::Array(a) => Bson::Array(a.iter().map(toml_to_bson).collect()),
        toml::Value::Table(t) => {
            let mut d = Document::new();
            for (k, v) in t {
                d.insert(k.clone(), toml_to_bson(v));
            }
            Bson::Document(d)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// The smallest valid file: one projection with one handler.
    pub(crate) const MINIMAL: &str = r#"
        [[projections]]
        name = "p"
        database = "d"
        events = "e"
        target = "t"
        handlers = { A = { "$set" = { a = 1 } } }
    "#;

    use super::*;

    const EXAMPLE: &str = include_str!("../../config/example.toml");

    #[test]
    fn the_example_configuration_is_valid() {
        let config = Config::parse(EXAMPLE).unwrap();
        let p = config.projection("accounts").unwrap();
        assert_eq!(p.database, "bank");
        assert_eq!(p.events, "events");
        assert_eq!(p.target, "accounts");
        assert!(matches!(p.handlers["Withdrawn"], Handler::Pipeline(_)));
        assert!(matches!(p.handlers["Deposited"], Handler::Operators(_)));
        assert_eq!(p.parking.collection, "accounts_parked");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            bogus = 1
            [checkpoints]
            every = "soon"
            [[projections]]
            name = "a"
            database = "db"
            events = "events"
            target = "events"
            colour = "blue"
            start = "yesterday"
            [projections.handlers]
            Opened = { "$frobnicate" = { a = 1 } }
            Moved = { "$set" = { lastSequenceNumber = 3, "x" = "${data.}" } }
            Closed = [ { "$group" = { _id = 1 } } ]
        "#;
        let errors = Config::parse(text).unwrap_err().0;
        let expect = [
            "bogus: unknown key",
            "checkpoints.every: not a duration",
            "projections[0].colour: unknown key",
            "projections[0].start: expected \"now\" or \"beginning\"",
            "projections[0].target: must differ",
            "projections[0].handlers.Opened: \"$frobnicate\" is not an update operator",
            "projections[0].handlers.Moved.$set.lastSequenceNumber: lastSequenceNumber is maintained",
            "projections[0].handlers.Moved.$set.x: \"${data.}\": a placeholder must be the whole value",
            "projections[0].handlers.Closed[0]: \"$group\" is not allowed",
        ];
        for e in expect {
            assert!(
                errors.iter().any(|got| got.starts_with(e)),
                "missing {e:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
    }

    #[test]
    fn wrong_types_are_named() {
        let text = r#"
            [checkpoints]
            every_events = "many"
            [[projections]]
            name = 5
            database = "db"
            events = "e"
            target = "t"
            handlers = { A = { "$set" = { a = 1 } } }
        "#;
        let errors = Config::parse(text).unwrap_err().0;
        assert!(
            errors.contains(
                &"checkpoints.every_events: expected an integer, found string".to_string()
            ),
            "{errors:?}"
        );
        assert!(
            errors.contains(&"projections[0].name: expected a string, found integer".to_string()),
            "{errors:?}"
        );
    }

    #[test]
    fn partitions_are_checked_with_their_path() {
        let projection = |k: &str| {
            format!(
                "[[projections]]\nname = \"a\"\ndatabase = \"db\"\nevents = \"e\"\ntarget = \"t\"\n{k}\nhandlers = {{ A = {{ \"$set\" = {{ a = 1 }} }} }}\n"
            )
        };
        let ok = |k: &str| Config::parse(&projection(k)).unwrap().projections[0].partitions;
        assert_eq!(ok(""), 1);
        assert_eq!(ok("partitions = 3"), 3);
        assert_eq!(ok("partitions = 64"), 64);
        let bad = |k: &str| Config::parse(&projection(k)).unwrap_err().0;
        assert_eq!(
            bad("partitions = 65"),
            ["projections[0].partitions: at most 64, found 65"]
        );
        assert_eq!(
            bad("partitions = 0"),
            ["projections[0].partitions: must be at least 1, found 0"]
        );
        assert_eq!(
            bad("partitions = \"3\""),
            ["projections[0].partitions: expected an integer, found string"]
        );
    }

    #[test]
    fn the_audit_runs_only_when_asked_to() {
        let minimal = MINIMAL;
        let every =
            |audit: &str| Config::parse(&format!("{audit}\n{minimal}")).map(|c| c.audit.every);
        assert_eq!(every(""), Ok(None));
        assert_eq!(every("[audit]\nevery = \"0s\""), Ok(None));
        assert_eq!(
            every("[audit]\nevery = \"1h\""),
            Ok(Some(Duration::from_secs(3600)))
        );
        let errors = every("[audit]\nevery = \"often\"\nrepair = true")
            .unwrap_err()
            .0;
        assert!(
            errors[0].starts_with("audit.every: not a duration"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("audit.repair: unknown key"),
            "{errors:?}"
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn leases_default_on_and_renew_well_within_the_ttl() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert!(config.leases.enabled);
        assert_eq!(config.leases.ttl, Duration::from_secs(15));
        assert_eq!(config.leases.renew_every, Duration::from_secs(5));
        assert_eq!(config.leases.collection, "projector_leases");
        let a = config.leases.holder_id();
        assert_ne!(
            a,
            config.leases.holder_id(),
            "each instance gets its own id"
        );

        let minimal = MINIMAL;
        let text =
            format!("[leases]\nttl = \"4s\"\nrenew_every = \"2s\"\nowner = \"x\"\n{minimal}");
        let errors = Config::parse(&text).unwrap_err().0;
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("leases.renew_every: must be less than half of leases.ttl")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("leases.owner: unknown key")),
            "{errors:?}"
        );
        let text = format!("[leases]\nenabled = false\nholder = \"pod-a\"\n{minimal}");
        let config = Config::parse(&text).unwrap();
        assert!(!config.leases.enabled);
        assert_eq!(config.leases.holder_id(), "pod-a");
    }

    #[test]
    fn every_secret_of_a_connection_string_is_redacted() {
        let table = [
            ("mongodb://u:pw@h:1/db?x=1", "mongodb://u:***@h:1/db?x=1"),
            (
                "mongodb+srv://u:p@w@cluster/",
                "mongodb+srv://u:***@cluster/",
            ),
            (
                "mongodb://h:1/?replicaSet=rs0",
                "mongodb://h:1/?replicaSet=rs0",
            ),
            // X.509 and other password-less users: nothing to hide.
            (
                "mongodb://CN=client@h/?authMechanism=MONGODB-X509",
                "mongodb://CN=client@h/?authMechanism=MONGODB-X509",
            ),
            (
                "mongodb://h/?tls=true&tlsCertificateKeyFile=/c.pem&tlsCertificateKeyFilePassword=hunter2",
                "mongodb://h/?tls=true&tlsCertificateKeyFile=/c.pem&tlsCertificateKeyFilePassword=***",
            ),
            (
                "mongodb://h/?ssl=true&sslPEMKeyPassword=hunter2&sslClientCertificateKeyPassword=x",
                "mongodb://h/?ssl=true&sslPEMKeyPassword=***&sslClientCertificateKeyPassword=***",
            ),
            (
                "mongodb://AKIA:sec@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok123",
                "mongodb://AKIA:***@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:***",
            ),
            (
                "mongodb://h/?authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:tok&appName=x",
                "mongodb://h/?authMechanismProperties=SERVICE_NAME:mongodb,AWS_SESSION_TOKEN:***&appName=x",
            ),
            (
                "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN%3Atok%2CSERVICE_NAME%3Am",
                "mongodb://h/?authMechanismProperties=AWS_SESSION_TOKEN%3A***%2CSERVICE_NAME%3Am",
            ),
            (
                "mongodb://h/?proxyHost=p&proxyUsername=pu&PROXYPASSWORD=pp",
                "mongodb://h/?proxyHost=p&proxyUsername=pu&PROXYPASSWORD=***",
            ),
            ("not a uri", "not a uri"),
        ];
        for (uri, expected) in table {
            assert_eq!(redact_uri(uri), expected, "{uri}");
            for secret in ["pw", "p@w", "hunter2", "tok123", "tok", "pp", "sec"] {
                if uri.contains(&format!(":{secret}@")) || uri.contains(&format!("={secret}")) {
                    assert!(!redact_uri(uri).contains(secret), "{uri}");
                }
            }
        }
    }

    #[test]
    fn placeholders_must_be_whole_values() {
        assert_eq!(placeholder("${data.amount}"), Some("data.amount"));
        assert_eq!(placeholder("${timestamp}"), Some("timestamp"));
        assert_eq!(placeholder("x${a}"), None);
        assert_eq!(placeholder("${a..b}"), None);
    }
}
