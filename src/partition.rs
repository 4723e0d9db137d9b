//! Partitions: one projection split into K workers by a stable hash of the aggregate id, so
//! that K replicas share its work.
//!
//! Worker `i` of `K` sees the events whose aggregate id `a` satisfies
//! `$toHashedIndexKey(a) mod K ∈ {i, i - K}`: the server computes the hash (the one hashed
//! indexes and hashed sharding use), so the change stream, the catch-up scan and the parked
//! sweep of a worker all select the same aggregates, and every aggregate belongs to exactly one
//! worker. MongoDB's `$mod` keeps the dividend's sign (manual: "$mod (aggregation)"), hence the
//! second, negative remainder. Each worker has its own name (`"{projection}/p{i}of{K}"`), and so
//! its own checkpoint and metrics; parked events stay under the projection's name, shared by
//! every K.

use crate::checkpoint::Checkpoint;
use crate::config::{Config, ProjectionConfig};
use bson::{Bson, Document, Timestamp, doc};
use mongodb::change_stream::event::ResumeToken;

/// Most partitions a projection may be split into: each is one more change stream on the
/// server.
pub const MAX_PARTITIONS: u32 = 64;

/// Which share of a projection a worker handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 0-based, below `count`.
    pub index: u32,
    pub count: u32,
}

impl Partition {
    /// The worker's name: `"{projection}/p{index}of{count}"`. Projection names cannot contain
    /// `/`, so the projection is everything before it.
    pub fn worker_name(&self, projection: &str) -> String {
        format!("{projection}/p{}of{}", self.index, self.count)
    }

    /// The aggregation expression that is true when the value at `field` (a dotted path) hashes
    /// into this partition.
    pub fn expr(&self, field: &str) -> Bson {
        let (i, k) = (i64::from(self.index), i64::from(self.count));
        let remainder = doc! {"$mod": [{"$toHashedIndexKey": format!("${field}")}, k]};
        Bson::Document(doc! {"$in": [remainder, [i, i - k]]})
    }

    /// A query filter selecting the documents whose `field` hashes into this partition.
    pub fn filter(&self, field: &str) -> Document {
        doc! {"$expr": self.expr(field)}
    }

    /// The partition of a value whose `$toHashedIndexKey` is `hash`, among `count`.
    pub fn of_hash(hash: i64, count: u32) -> u32 {
        hash.rem_euclid(i64::from(count)) as u32
    }
}

/// Adds the partition's condition on `field` to a query filter (a no-op for an unpartitioned
/// worker). Projection filters hold only field conditions and `$and`/`$or`/`$nor`
/// (config::validate_filter), so the top-level `$expr` is free.
pub fn restrict(filter: &mut Document, partition: Option<Partition>, field: &str) {
    if let Some(p) = partition {
        filter.insert("$expr", p.expr(field));
    }
}

/// The workers of a projection: itself when `partitions = 1`, otherwise one copy per
/// partition, named and carrying its partition.
pub fn workers(projection: &ProjectionConfig) -> Vec<ProjectionConfig> {
    let count = projection.partitions.max(1);
    if count == 1 {
        return vec![projection.clone()];
    }
    (0..count)
        .map(|index| {
            let partition = Partition { index, count };
            let mut worker = projection.clone();
            worker.name = partition.worker_name(&projection.name);
            worker.partition = Some(partition);
            worker
        })
        .collect()
}

/// The configuration of the worker called `name`, among every projection's workers.
pub fn find_worker(config: &Config, name: &str) -> Option<ProjectionConfig> {
    let projection = config.projection(projection_of(name))?;
    workers(projection).into_iter().find(|w| w.name == name)
}

/// The projection a worker name belongs to (the name itself for an unpartitioned worker).
pub fn projection_of(worker_name: &str) -> &str {
    worker_name.split('/').next().unwrap_or(worker_name)
}

/// The partition count encoded in a worker name of `projection`: 1 for the projection's own
/// name, K for `"{projection}/p{i}of{K}"`, with the index; `None` for any other name.
pub fn parse_worker_name(projection: &str, name: &str) -> Option<Partition> {
    if name == projection {
        return Some(Partition { index: 0, count: 1 });
    }
    let rest = name.strip_prefix(projection)?.strip_prefix("/p")?;
    let (index, count) = rest.split_once("of")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(count) {
        return None;
    }
    let partition = Partition {
        index: index.parse().ok()?,
        count: count.parse().ok()?,
    };
    (partition.index < partition.count && partition.count > 1).then_some(partition)
}

/// Where a worker without a checkpoint of its own starts when the projection was checkpointed
/// under another partition count (or unpartitioned): `family` is every checkpoint of the
/// projection, by worker name.
///
/// A complete set of checkpoints of one count K (one per partition) vouches that every event
/// before the oldest of them was handled, whichever partition it belonged to; the newest such
/// vouched position is the start. Without a complete set, the oldest checkpoint of all. Either
/// way everything after the start is redelivered to this worker, and the sequence guard
/// absorbs what it had already applied. `None` when the projection has no checkpoint at all.
pub fn inherited_start(
    projection: &str,
    family: &[(String, Checkpoint)],
) -> Option<(String, Checkpoint)> {
    use std::collections::BTreeMap;
    let order = |c: &Checkpoint| token_order(&c.token);
    let oldest = |cs: &mut dyn Iterator<Item = &(String, Checkpoint)>| {
        cs.min_by(|a, b| order(&a.1).cmp(&order(&b.1))).cloned()
    };
    let mut by_count: BTreeMap<u32, Vec<&(String, Checkpoint)>> = BTreeMap::new();
    for entry in family {
        if let Some(p) = parse_worker_name(projection, &entry.0) {
            by_count.entry(p.count).or_default().push(entry);
        }
    }
    let complete = by_count
        .iter()
        .filter(|(count, members)| {
            let mut indexes: Vec<u32> = members
                .iter()
                .filter_map(|(name, _)| parse_worker_name(projection, name).map(|p| p.index))
                .collect();
            indexes.sort_unstable();
            indexes.dedup();
            indexes.len() == **count as usize
        })
        .filter_map(|(_, members)| oldest(&mut members.iter().copied()));
    complete
        .max_by(|a, b| order(&a.1).cmp(&order(&b.1)))
        .or_else(|| oldest(&mut by_count.values().flatten().copied()))
}

/// Stream order of resume tokens: mongod's `_data` is a hex-encoded KeyString that begins with
/// the event's cluster time (manual: "Change Events", resume tokens), and mongo-sim's is
/// fixed-length hex led by the same, so comparing the strings compares stream positions.
fn token_order(token: &ResumeToken) -> String {
    match bson::to_bson(token) {
        Ok(Bson::Document(d)) => d.get_str("_data").unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

/// The cluster time a resume token stands for. mongod's `_data` is a hex KeyString whose first
/// value is that time (type byte 130, then the timestamp's 8 bytes big-endian: seconds, then
/// increment); mongo-sim's is a version byte 1 followed by the same 8 bytes. `None` for any
/// other form.
pub fn token_cluster_time(token: &ResumeToken) -> Option<Timestamp> {
    let data = token_order(token);
    let byte = |i: usize| u8::from_str_radix(data.get(2 * i..2 * i + 2)?, 16).ok();
    if !matches!(byte(0)?, 0x82 | 0x01) {
        return None;
    }
    let word = |from: usize| -> Option<u32> {
        (from..from + 4).try_fold(0u32, |acc, i| Some((acc << 8) | u32::from(byte(i)?)))
    };
    Some(Timestamp {
        time: word(1)?,
        increment: word(5)?,
    })
}

impl ProjectionConfig {
    /// The projection this worker belongs to: its own name unless it is one partition of it.
    pub fn projection_name(&self) -> &str {
        projection_of(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn projection(partitions: u32) -> ProjectionConfig {
        let text = format!(
            r#"
            [[projections]]
            name = "accounts"
            database = "bank"
            events = "events"
            target = "accounts"
            partitions = {partitions}
            handlers = {{ Opened = {{ "$set" = {{ open = true }} }} }}
            "#
        );
        Config::parse(&text).unwrap().projections.remove(0)
    }

    #[test]
    fn one_partition_is_exactly_the_projection() {
        let p = projection(1);
        assert_eq!(workers(&p), vec![p.clone()]);
        assert_eq!(p.partition, None);
        assert_eq!(p.projection_name(), "accounts");
    }

    #[test]
    fn k_partitions_are_k_named_workers_sharing_the_projection() {
        let p = projection(3);
        let ws = workers(&p);
        let names: Vec<&str> = ws.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            ["accounts/p0of3", "accounts/p1of3", "accounts/p2of3"]
        );
        for (i, w) in ws.iter().enumerate() {
            assert_eq!(
                w.partition,
                Some(Partition {
                    index: i as u32,
                    count: 3
                })
            );
            assert_eq!(w.projection_name(), "accounts");
            // Parked events and the read model stay the projection's.
            assert_eq!(w.parking.collection, "accounts_parked");
            assert_eq!(w.target, p.target);
            assert_eq!(parse_worker_name("accounts", &w.name), w.partition);
        }
    }

    #[test]
    fn worker_names_parse_back_and_nothing_else_does() {
        assert_eq!(
            parse_worker_name("accounts", "accounts"),
            Some(Partition { index: 0, count: 1 })
        );
        for other in [
            "accounts2/p0of3",
            "accounts/p3of3",
            "accounts/p0of1",
            "accounts/p-1of3",
            "accounts/pxof3",
            "accounts/p0of",
            "other",
        ] {
            assert_eq!(parse_worker_name("accounts", other), None, "{other}");
        }
    }

    #[test]
    fn the_filter_accepts_both_signs_of_the_remainder() {
        let p = Partition { index: 1, count: 3 };
        assert_eq!(
            p.filter("fullDocument.aggregateId"),
            doc! {"$expr": {"$in": [
                {"$mod": [{"$toHashedIndexKey": "$fullDocument.aggregateId"}, 3i64]},
                [1i64, -2i64],
            ]}}
        );
        let mut f = doc! {"tenant": "t1"};
        restrict(&mut f, Some(p), "aggregateId");
        assert_eq!(f.get_str("tenant").unwrap(), "t1");
        assert!(f.contains_key("$expr"));
        let mut unpartitioned = doc! {"tenant": "t1"};
        restrict(&mut unpartitioned, None, "aggregateId");
        assert_eq!(unpartitioned, doc! {"tenant": "t1"});
    }

    #[test]
    fn a_hash_belongs_to_the_partition_of_its_euclidean_remainder() {
        // -944302157085130861 is mongod's hash of 42: $mod gives -1 there, partition 2 of 3.
        assert_eq!(-944_302_157_085_130_861i64 % 3, -1);
        assert_eq!(Partition::of_hash(-944_302_157_085_130_861, 3), 2);
        assert_eq!(Partition::of_hash(763_543_691_661_428_748, 3), 0);
        assert_eq!(Partition::of_hash(i64::MIN, 64), 0);
    }

    fn checkpoint(data: &str) -> Checkpoint {
        Checkpoint {
            token: bson::from_bson(Bson::Document(doc! {"_data": data})).unwrap(),
            cluster_time: None,
            events_handled: 0,
            updated_at: bson::DateTime::now(),
        }
    }

    fn start(family: &[(&str, &str)]) -> Option<String> {
        let family: Vec<(String, Checkpoint)> = family
            .iter()
            .map(|(name, data)| (name.to_string(), checkpoint(data)))
            .collect();
        inherited_start("accounts", &family).map(|(name, _)| name)
    }

    #[test]
    fn a_new_partition_count_starts_from_the_oldest_checkpoint_of_the_last_complete_set() {
        // 1 -> 3: the unpartitioned checkpoint.
        assert_eq!(start(&[("accounts", "0A")]).as_deref(), Some("accounts"));
        // 3 -> 2: the oldest of the three, wherever it sorts among them.
        assert_eq!(
            start(&[
                ("accounts/p0of3", "0C"),
                ("accounts/p1of3", "0B"),
                ("accounts/p2of3", "0D"),
            ])
            .as_deref(),
            Some("accounts/p1of3")
        );
        // 1 -> 3 -> 2: the 3-set ran after the old unpartitioned one; its oldest is newer.
        assert_eq!(
            start(&[
                ("accounts", "01"),
                ("accounts/p0of3", "0C"),
                ("accounts/p1of3", "0B"),
                ("accounts/p2of3", "0D"),
            ])
            .as_deref(),
            Some("accounts/p1of3")
        );
        // An incomplete set vouches for nothing on its own: the complete one wins.
        assert_eq!(
            start(&[("accounts", "01"), ("accounts/p0of2", "0F")]).as_deref(),
            Some("accounts")
        );
        // Nothing complete: the oldest of all.
        assert_eq!(
            start(&[("accounts/p0of2", "0F"), ("accounts/p1of4", "0E")]).as_deref(),
            Some("accounts/p1of4")
        );
        // Other projections' checkpoints are not the family.
        assert_eq!(start(&[("accounts2", "01")]), None);
        assert_eq!(start(&[]), None);
    }

    #[test]
    fn resume_tokens_name_their_cluster_time() {
        let token = |data: &str| -> ResumeToken {
            bson::from_bson(Bson::Document(doc! {"_data": data})).unwrap()
        };
        // A token in mongod's form: 82, then the time.
        assert_eq!(
            token_cluster_time(&token("82635019A0000000012B022C0100296E5A1004")),
            Some(Timestamp {
                time: 0x6350_19A0,
                increment: 1
            })
        );
        // mongo-sim's: version 1, then the time.
        assert_eq!(
            token_cluster_time(&token("0100000064000000070000000000")),
            Some(Timestamp {
                time: 100,
                increment: 7
            })
        );
        assert_eq!(token_cluster_time(&token("7F00")), None);
        assert_eq!(token_cluster_time(&token("82ZZ")), None);
    }
}
