//! Where a worker's change stream starts: from its own checkpoint, from a position other
//! checkpoints of its projection vouch for, or as configured (see ARCHITECTURE.md, "Where a
//! worker starts"). Pure: the checkpoints are read by the caller.

use crate::config::StartFrom;
use crate::model::partition::{parse_worker_name, projection_of};
use crate::store::checkpoint::Checkpoint;
use bson::{Bson, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use std::collections::BTreeMap;

/// Where a worker's change stream starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// After the worker's own stored token.
    Resume(Checkpoint),
    /// At a position that other checkpoints vouch for (see [`choose_start`]).
    Inherited(Inherited),
    /// Nothing vouches for any part of the worker's share: start as configured (`beginning`:
    /// a scan of its share; `now`: from now).
    Configured,
}

/// A start position taken from somewhere other than the worker's own stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Inherited {
    /// The checkpoint the position comes from.
    pub from: String,
    pub reason: Vouched,
    pub at: StreamStart,
}

/// Why an inherited position is safe for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouched {
    /// The oldest member of a complete set of checkpoints of another partition count (one per
    /// partition; count 1 is the unpartitioned projection): every event of every share before
    /// it is handled.
    CompleteSet { count: u32 },
    /// The worker's own checkpoint, whose token another stream issued (a rebuild's handover).
    ForeignToken,
    /// `start = "now"`: the earliest origin of a sibling of the same count, the moment the
    /// projection under this partitioning first started from "now".
    SiblingOrigin,
}

/// How a stream is opened at an inherited position.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamStart {
    /// `startAtOperationTime`: inclusive, so the event at that time is delivered again.
    At(Timestamp),
    /// `resumeAfter`: only when no cluster time can be read from the token or the checkpoint.
    AfterToken(ResumeToken),
}

impl Inherited {
    fn of(from: &str, reason: Vouched, c: &Checkpoint) -> Inherited {
        let at = match token_cluster_time(&c.token).or(c.cluster_time) {
            Some(t) => StreamStart::At(t),
            None => StreamStart::AfterToken(c.token.clone()),
        };
        Inherited {
            from: from.to_string(),
            reason,
            at,
        }
    }
}

/// Where `worker` (a worker name of its projection) starts, given every checkpoint of the
/// projection (`family`, by worker name, its own included) and its `start` setting.
///
/// The rule is the invariant the daemon keeps: **a worker starts from a position P only if
/// every event of its share before P is applied, skipped or parked.** Candidates:
/// - its own checkpoint: it says exactly that of the worker's own share;
/// - the oldest member of a complete set of another partition count (every partition of that
///   count checkpointed; count 1 is the unpartitioned projection's own checkpoint): each member
///   vouches for its share before its position, and the shares of one count cover every
///   aggregate, so their oldest position vouches for every share, this worker's included.
///
/// The newest candidate wins: everything after it is delivered again and absorbed by the
/// sequence guard. Siblings of the worker's own count are never a candidate: their positions
/// say nothing about this worker's aggregates. With no candidate the worker starts as
/// configured; for `now` that is the earliest origin of its siblings (when they started from
/// "now"), so that "now" is one moment for the whole projection.
pub fn choose_start(worker: &str, family: &[(String, Checkpoint)], start: StartFrom) -> Start {
    let projection = projection_of(worker);
    let Some(me) = parse_worker_name(projection, worker) else {
        return Start::Configured;
    };
    let own = family.iter().find(|(name, _)| name == worker);
    let mut members: BTreeMap<u32, BTreeMap<u32, &(String, Checkpoint)>> = BTreeMap::new();
    for entry in family {
        if let Some(p) = parse_worker_name(projection, &entry.0)
            && p.count != me.count
        {
            members.entry(p.count).or_default().insert(p.index, entry);
        }
    }
    let vouched = members
        .iter()
        .filter(|(count, set)| set.len() == **count as usize)
        .filter_map(|(count, set)| {
            let oldest = set.values().min_by_key(|(_, c)| token_order(&c.token))?;
            Some((*count, *oldest))
        })
        .max_by_key(|(_, (_, c))| token_order(&c.token));
    match (own, vouched) {
        (Some((_, mine)), Some((count, (name, theirs))))
            if token_order(&theirs.token) > token_order(&mine.token) =>
        {
            Start::Inherited(Inherited::of(name, Vouched::CompleteSet { count }, theirs))
        }
        (Some((name, mine)), _) if !mine.token_is_from(worker) => {
            Start::Inherited(Inherited::of(name, Vouched::ForeignToken, mine))
        }
        (Some((_, mine)), _) => Start::Resume(mine.clone()),
        (None, Some((count, (name, theirs)))) => {
            Start::Inherited(Inherited::of(name, Vouched::CompleteSet { count }, theirs))
        }
        (None, None) if start == StartFrom::Now => family
            .iter()
            .filter(|(name, _)| {
                name != worker
                    && parse_worker_name(projection, name).is_some_and(|p| p.count == me.count)
            })
            .filter_map(|(name, c)| Some((name, c.origin?)))
            .min_by_key(|(_, origin)| *origin)
            .map_or(Start::Configured, |(name, origin)| {
                Start::Inherited(Inherited {
                    from: name.clone(),
                    reason: Vouched::SiblingOrigin,
                    at: StreamStart::At(origin),
                })
            }),
        (None, None) => Start::Configured,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::partition::Partition;
    use bson::doc;

    /// A position at stream time `t`, as mongo-sim writes its tokens (version 1, then the
    /// cluster time), so that token order and cluster time agree.
    fn token_at(t: u32) -> ResumeToken {
        let data = format!("01{t:08X}00000000");
        bson::from_bson(Bson::Document(doc! {"_data": data})).unwrap()
    }

    fn time(t: u32) -> Timestamp {
        Timestamp {
            time: t,
            increment: 0,
        }
    }

    fn checkpoint(t: u32) -> Checkpoint {
        Checkpoint::new(token_at(t), 0)
    }

    fn family(entries: &[(&str, u32)]) -> Vec<(String, Checkpoint)> {
        entries
            .iter()
            .map(|(name, t)| (name.to_string(), checkpoint(*t)))
            .collect()
    }

    /// The name and time an inherited start takes, or "configured" / "own".
    fn start(worker: &str, entries: &[(&str, u32)], how: StartFrom) -> (String, Option<u32>) {
        describe(&choose_start(worker, &family(entries), how))
    }

    fn describe(start: &Start) -> (String, Option<u32>) {
        match start {
            Start::Configured => ("configured".into(), None),
            Start::Resume(c) => ("own".into(), token_cluster_time(&c.token).map(|t| t.time)),
            Start::Inherited(i) => match &i.at {
                StreamStart::At(t) => (i.from.clone(), Some(t.time)),
                StreamStart::AfterToken(_) => (i.from.clone(), None),
            },
        }
    }

    fn named(name: &str, t: u32) -> (String, Option<u32>) {
        (name.to_string(), Some(t))
    }

    #[test]
    fn a_new_partition_count_starts_from_the_oldest_checkpoint_of_the_newest_complete_set() {
        use StartFrom::Beginning;
        // 1 -> 3: the unpartitioned checkpoint.
        assert_eq!(
            start("accounts/p0of3", &[("accounts", 10)], Beginning),
            named("accounts", 10)
        );
        // 3 -> 2: the oldest of the three, wherever it sorts among them.
        let three = [
            ("accounts/p0of3", 12),
            ("accounts/p1of3", 11),
            ("accounts/p2of3", 13),
        ];
        assert_eq!(
            start("accounts/p1of2", &three, Beginning),
            named("accounts/p1of3", 11)
        );
        // 3 -> 1: the same.
        assert_eq!(
            start("accounts", &three, Beginning),
            named("accounts/p1of3", 11)
        );
        // 1 -> 3 -> 2: the 3-set ran after the old unpartitioned one; its oldest is newer.
        let mut both = three.to_vec();
        both.push(("accounts", 1));
        assert_eq!(
            start("accounts/p0of2", &both, Beginning),
            named("accounts/p1of3", 11)
        );
        // An incomplete set vouches for nothing: the complete one is the start.
        assert_eq!(
            start(
                "accounts/p1of3",
                &[("accounts", 1), ("accounts/p0of2", 15)],
                Beginning
            ),
            named("accounts", 1)
        );
        // Nothing complete: start as configured.
        assert_eq!(
            start(
                "accounts/p0of3",
                &[("accounts/p0of2", 15), ("accounts/p1of4", 14)],
                Beginning
            )
            .0,
            "configured"
        );
        // Other projections' checkpoints are not the family.
        assert_eq!(
            start("accounts/p0of3", &[("accounts2", 1)], Beginning).0,
            "configured"
        );
        assert_eq!(start("accounts", &[], Beginning).0, "configured");
    }

    #[test]
    fn siblings_of_the_same_count_vouch_for_nothing() {
        // The reported loss: two of three workers checkpointed, the third starting late took
        // the oldest sibling's position and skipped its own share before it.
        let siblings = [("accounts/p0of3", 20), ("accounts/p1of3", 30)];
        for how in [StartFrom::Beginning, StartFrom::Now] {
            assert_eq!(start("accounts/p2of3", &siblings, how).0, "configured");
        }
        // Alongside a complete set of another count, that set is the start, not the siblings.
        let mut with_old = siblings.to_vec();
        with_old.push(("accounts", 5));
        assert_eq!(
            start("accounts/p2of3", &with_old, StartFrom::Beginning),
            named("accounts", 5)
        );
    }

    #[test]
    fn now_is_one_moment_for_every_sibling() {
        let mut family = family(&[("accounts/p0of3", 20), ("accounts/p1of3", 30)]);
        family[0].1.origin = Some(time(7));
        family[1].1.origin = Some(time(4));
        assert_eq!(
            describe(&choose_start("accounts/p2of3", &family, StartFrom::Now)),
            named("accounts/p1of3", 4)
        );
        // From the beginning, origins say nothing: the worker scans its share.
        assert_eq!(
            describe(&choose_start(
                "accounts/p2of3",
                &family,
                StartFrom::Beginning
            ))
            .0,
            "configured"
        );
    }

    #[test]
    fn an_own_checkpoint_is_resumed_unless_a_complete_set_is_newer_or_its_token_is_foreign() {
        use StartFrom::Beginning;
        assert_eq!(
            start(
                "accounts/p0of3",
                &[("accounts/p0of3", 15), ("accounts", 10)],
                Beginning
            ),
            ("own".to_string(), Some(15))
        );
        // 3 -> 1 -> 3: the old own checkpoint is valid but older than the 1-set's.
        assert_eq!(
            start(
                "accounts/p0of3",
                &[("accounts/p0of3", 5), ("accounts", 10)],
                Beginning
            ),
            named("accounts", 10)
        );
        // A rebuild's token: started from at its cluster time, not resumed after.
        let mut handed_over = family(&[("accounts/p0of3", 40)]);
        handed_over[0].1.token_from = Some("accounts rebuild".into());
        let chosen = choose_start("accounts/p0of3", &handed_over, Beginning);
        assert!(
            matches!(&chosen, Start::Inherited(i) if i.reason == Vouched::ForeignToken),
            "{chosen:?}"
        );
        assert_eq!(describe(&chosen), named("accounts/p0of3", 40));
        handed_over[0].1.token_from = Some("accounts/p0of3".into());
        assert!(matches!(
            choose_start("accounts/p0of3", &handed_over, Beginning),
            Start::Resume(_)
        ));
    }

    /// One generated checkpoint: partition count, index, stream time, whether another stream
    /// issued its token, and its origin.
    type Generated = (u32, u32, u32, bool, Option<u32>);

    fn generated_family(entries: &[Generated]) -> Vec<(String, Checkpoint)> {
        let mut by_name: BTreeMap<String, Checkpoint> = BTreeMap::new();
        for &(count, index, t, foreign, origin) in entries {
            let name = if count == 1 {
                "accounts".to_string()
            } else {
                Partition {
                    index: index % count,
                    count,
                }
                .worker_name("accounts")
            };
            let mut c = checkpoint(t);
            c.token_from = foreign.then(|| "accounts rebuild".to_string());
            c.origin = origin.map(time);
            by_name.insert(name, c);
        }
        by_name.into_iter().collect()
    }

    /// Every residue of every count up to 5 occurs among these hashes.
    const HASHES: u32 = 60;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Over any family of checkpoints (any counts, complete or not, tokens in any order,
        /// some issued by another stream), a worker starts from P only if every event of its
        /// share before P is vouched for by some checkpoint; and it starts from the newest such
        /// P that a single checkpoint or complete set gives.
        #[test]
        fn a_worker_starts_only_where_its_whole_share_is_handled(
            entries in proptest::collection::vec(
                (1u32..=5, 0u32..5, 1u32..100, proptest::bool::weighted(0.2),
                 proptest::option::of(1u32..100)),
                0..12,
            ),
            count in 1u32..=5,
            index in 0u32..5,
            now in proptest::bool::ANY,
        ) {
            let family = generated_family(&entries);
            let me = Partition { index: index % count, count };
            let worker = if count == 1 { "accounts".to_string() } else { me.worker_name("accounts") };
            let how = if now { StartFrom::Now } else { StartFrom::Beginning };
            let parsed: Vec<(Partition, u32, &Checkpoint)> = family
                .iter()
                .map(|(name, c)| {
                    let p = parse_worker_name("accounts", name).unwrap();
                    (p, token_cluster_time(&c.token).unwrap().time, c)
                })
                .collect();
            // Event at time t of an aggregate hashing to h is handled when a checkpoint of its
            // share stands at t or later.
            let handled = |h: u32, t: u32| {
                parsed.iter().any(|(p, at, _)| h % p.count == p.index && t <= *at)
            };
            let mine = |h: &u32| h % count == me.index;
            let share_handled_before = |limit: u32| {
                (0..HASHES).filter(mine).all(|h| (1..limit).all(|t| handled(h, t)))
            };
            // What a position may be vouched by: the own checkpoint, or the oldest member of a
            // complete set of another count.
            let own = parsed.iter().find(|(p, _, _)| *p == me);
            let mut best = own.map(|(_, t, _)| *t);
            for k in (1..=5).filter(|k| *k != count) {
                let set: Vec<u32> = parsed.iter().filter(|(p, _, _)| p.count == k).map(|(_, t, _)| *t).collect();
                if set.len() == k as usize {
                    best = best.max(set.iter().min().copied());
                }
            }
            let chosen = choose_start(&worker, &family, how);
            match &chosen {
                Start::Resume(c) => {
                    let t = token_cluster_time(&c.token).unwrap().time;
                    proptest::prop_assert!(c.token_is_from(&worker));
                    proptest::prop_assert_eq!(Some(t), own.map(|(_, t, _)| *t));
                    // Resuming after t: every event up to t is handled.
                    proptest::prop_assert!(share_handled_before(t + 1), "{chosen:?}");
                    proptest::prop_assert_eq!(Some(t), best, "not the newest vouched position");
                }
                Start::Inherited(i) if i.reason == Vouched::SiblingOrigin => {
                    proptest::prop_assert!(now && best.is_none());
                    let earliest = parsed
                        .iter()
                        .filter(|(p, _, _)| p.count == count && *p != me)
                        .filter_map(|(_, _, c)| c.origin)
                        .min();
                    proptest::prop_assert_eq!(Some(i.at.clone()), earliest.map(StreamStart::At));
                }
                Start::Inherited(i) => {
                    let StreamStart::At(at) = &i.at else {
                        return Err(proptest::test_runner::TestCaseError::fail("no cluster time"));
                    };
                    // Starting at t (inclusive): every event before t is handled.
                    proptest::prop_assert!(share_handled_before(at.time), "{chosen:?}");
                    proptest::prop_assert_eq!(Some(at.time), best, "not the newest vouched position");
                }
                Start::Configured => {
                    proptest::prop_assert_eq!(best, None, "a vouched position was ignored");
                    if now {
                        proptest::prop_assert!(parsed
                            .iter()
                            .all(|(p, _, c)| p.count != count || c.origin.is_none()));
                    }
                }
            }
        }
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
