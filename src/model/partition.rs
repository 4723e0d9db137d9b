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

use crate::config::{Config, ProjectionConfig};
use bson::{Bson, Document, doc};
use std::sync::Arc;

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
    pub(crate) fn worker_name(&self, projection: &str) -> String {
        format!("{projection}/p{}of{}", self.index, self.count)
    }

    /// The aggregation expression that is true when the value at `field` (a dotted path) hashes
    /// into this partition.
    pub(crate) fn expr(&self, field: &str) -> Bson {
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

/// One worker of a projection: the whole projection, or one partition of it. Its name keys
/// its checkpoint, its lease and its metrics; the projection's settings are shared by every
/// worker of the projection.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    /// `"accounts"`, or `"accounts/p0of3"` for one partition of it.
    pub name: String,
    pub projection: Arc<ProjectionConfig>,
    /// `None` for the whole projection.
    pub partition: Option<Partition>,
}

impl Worker {
    /// The worker that runs the whole of `projection`.
    pub fn whole(projection: Arc<ProjectionConfig>) -> Worker {
        Worker {
            name: projection.name.clone(),
            projection,
            partition: None,
        }
    }

    /// Adds the worker's share to a query filter on `field` (a no-op for the whole
    /// projection). Projection filters hold only field conditions and `$and`/`$or`/`$nor`
    /// (`config::validate_filter`), so the top-level `$expr` is free.
    pub(crate) fn restrict(&self, filter: &mut Document, field: &str) {
        if let Some(p) = self.partition {
            filter.insert("$expr", p.expr(field));
        }
    }
}

/// The workers of a projection: itself when `partitions = 1`, otherwise one per partition,
/// named after it.
pub fn workers(projection: &Arc<ProjectionConfig>) -> Vec<Worker> {
    let count = projection.partitions.max(1);
    if count == 1 {
        return vec![Worker::whole(projection.clone())];
    }
    (0..count)
        .map(|index| {
            let partition = Partition { index, count };
            Worker {
                name: partition.worker_name(&projection.name),
                projection: projection.clone(),
                partition: Some(partition),
            }
        })
        .collect()
}

/// Every worker of every projection of `config`.
pub(crate) fn all_workers(config: &Config) -> Vec<Worker> {
    config
        .projections
        .iter()
        .flat_map(|p| workers(&Arc::new(p.clone())))
        .collect()
}

/// The worker called `name`, among every projection's workers.
pub(crate) fn find_worker(config: &Config, name: &str) -> Option<Worker> {
    let projection = Arc::new(config.projection(projection_of(name))?.clone());
    workers(&projection).into_iter().find(|w| w.name == name)
}

/// The projection a worker name belongs to (the name itself for an unpartitioned worker).
pub(crate) fn projection_of(worker_name: &str) -> &str {
    worker_name.split('/').next().unwrap_or(worker_name)
}

/// The partition count encoded in a worker name of `projection`: 1 for the projection's own
/// name, K for `"{projection}/p{i}of{K}"`, with the index; `None` for any other name.
pub(crate) fn parse_worker_name(projection: &str, name: &str) -> Option<Partition> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn projection(partitions: u32) -> Arc<ProjectionConfig> {
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
        Arc::new(Config::parse(&text).unwrap().projections.remove(0))
    }

    #[test]
    fn one_partition_is_exactly_the_projection() {
        let p = projection(1);
        let ws = workers(&p);
        assert_eq!(ws, vec![Worker::whole(p.clone())]);
        assert_eq!(ws[0].name, "accounts");
        assert_eq!(ws[0].partition, None);
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
            assert_eq!(projection_of(&w.name), "accounts");
            // Parked events and the read model stay the projection's.
            assert!(Arc::ptr_eq(&w.projection, &p));
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
        let projection = projection(3);
        let worker = &workers(&projection)[1];
        let mut f = doc! {"tenant": "t1"};
        worker.restrict(&mut f, "aggregateId");
        assert_eq!(f.get_str("tenant").unwrap(), "t1");
        assert_eq!(f.get("$expr"), Some(&p.expr("aggregateId")));
        let mut unpartitioned = doc! {"tenant": "t1"};
        Worker::whole(projection).restrict(&mut unpartitioned, "aggregateId");
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
}
