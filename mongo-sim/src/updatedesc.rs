//! `updateDescription` of an update change event: which fields changed, which were removed,
//! which arrays were truncated, and (for expanded streams) how to read ambiguous paths.
//!
//! mongod records an update in the oplog as a `$v: 2` diff and the change stream parses that
//! diff back into paths (`change_stream_document_diff_parser.cpp`). The diff of a pipeline
//! update is computed from the two document versions (`document_diff_calculator.cpp`): fields
//! in place are compared, sub-documents and arrays are diffed recursively, an array that got
//! shorter is truncated, and a sub-diff larger than the new value is replaced by the value
//! itself. An update by operators is logged from the paths the operators touched; here it is
//! derived from the two versions the same way without the size bound, with an array diffed
//! element by element only when it kept its length or grew at its end (`$set` of an element,
//! `$push`), and replaced whole otherwise (`$pop`, `$pull`), as mongod logs those.

use crate::storage::{bson_size, value_size};
use bson::{Bson, Document, doc};

/// One level of a diff.
enum Diff {
    Doc(DocDiff),
    Array(ArrayDiff),
}

#[derive(Default)]
struct DocDiff {
    /// Fields present before and after with another value, in document order.
    updates: Vec<(String, Bson)>,
    /// Fields only present after.
    inserts: Vec<(String, Bson)>,
    deletes: Vec<String>,
    /// Sub-documents and arrays diffed recursively.
    subs: Vec<(String, Diff)>,
}

#[derive(Default)]
struct ArrayDiff {
    /// The new length, when the array got shorter.
    resize: Option<usize>,
    /// Changed or appended elements and recursive sub-diffs, by index.
    mods: Vec<(usize, Element)>,
}

enum Element {
    Value(Bson),
    Sub(Diff),
}

/// Whether a diff may be replaced by the new value when it is larger (pipeline updates).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sized,
    Operators,
}

/// The `updateDescription` of the update from `before` to `after`; `disambiguatedPaths` is
/// included only for expanded streams (`showExpandedEvents`), as mongod does.
pub fn describe(before: &Document, after: &Document, pipeline: bool, expanded: bool) -> Document {
    let mode = if pipeline {
        Mode::Sized
    } else {
        Mode::Operators
    };
    // The top level is never replaced here: mongod would log a replacement instead.
    let diff = doc_diff(before, after, mode, false).unwrap_or_default();
    let mut out = Description::default();
    out.walk_doc(&diff);
    let mut d = doc! {
        "updatedFields": out.updated,
        "removedFields": out.removed,
        "truncatedArrays": out.truncated,
    };
    if expanded {
        d.insert("disambiguatedPaths", out.disambiguated);
    }
    d
}

/// mongod's `computeDocDiff`: `None` when the diff would be larger than `post` (and `bounded`).
fn doc_diff(pre: &Document, post: &Document, mode: Mode, bounded: bool) -> Option<DocDiff> {
    let mut diff = DocDiff::default();
    let mut deletes: Vec<String> = Vec::new();
    let mut pre_iter = pre.iter().peekable();
    let mut post_iter = post.iter().peekable();
    while let (Some((pk, pv)), Some((qk, qv))) = (pre_iter.peek(), post_iter.peek()) {
        if pk == qk {
            if !crate::storage::identical_values(pv, qv) {
                match sub_diff(pv, qv, mode) {
                    Some(sub) => diff.subs.push(((*pk).clone(), sub)),
                    None => diff.updates.push(((*pk).clone(), (*qv).clone())),
                }
            }
            pre_iter.next();
            post_iter.next();
        } else {
            // A field not at its place: removed here, inserted later if `post` has it.
            deletes.push((*pk).clone());
            pre_iter.next();
        }
    }
    for (k, _) in pre_iter {
        diff.deletes.push(k.clone());
    }
    for (k, v) in post_iter {
        deletes.retain(|d| d != k);
        diff.inserts.push((k.clone(), v.clone()));
    }
    diff.deletes.extend(deletes);
    if bounded && doc_diff_size(&diff) >= bson_size(post) {
        return None;
    }
    Some(diff)
}

/// The recursive diff of two values of the same container type, or `None` when the new value
/// replaces the old one whole.
fn sub_diff(pre: &Bson, post: &Bson, mode: Mode) -> Option<Diff> {
    let bounded = mode == Mode::Sized;
    match (pre, post) {
        (Bson::Document(a), Bson::Document(b)) => doc_diff(a, b, mode, bounded).map(Diff::Doc),
        (Bson::Array(a), Bson::Array(b)) => {
            if mode == Mode::Operators {
                let appended_or_same = b.len() >= a.len()
                    && (b.len() == a.len()
                        || a.iter()
                            .zip(b)
                            .all(|(x, y)| crate::storage::identical_values(x, y)));
                if !appended_or_same {
                    return None;
                }
            }
            array_diff(a, b, mode, bounded).map(Diff::Array)
        }
        _ => None,
    }
}

/// mongod's `computeArrayDiff`.
fn array_diff(pre: &[Bson], post: &[Bson], mode: Mode, bounded: bool) -> Option<ArrayDiff> {
    let mut diff = ArrayDiff::default();
    for (i, (a, b)) in pre.iter().zip(post).enumerate() {
        if crate::storage::identical_values(a, b) {
            continue;
        }
        match sub_diff(a, b, mode) {
            Some(sub) => diff.mods.push((i, Element::Sub(sub))),
            None => diff.mods.push((i, Element::Value(b.clone()))),
        }
    }
    for (i, b) in post.iter().enumerate().skip(pre.len()) {
        diff.mods.push((i, Element::Value(b.clone())));
    }
    if pre.len() > post.len() {
        diff.resize = Some(post.len());
    }
    if bounded && array_diff_size(&diff) >= value_size(&Bson::Array(post.to_vec())) {
        return None;
    }
    Some(diff)
}

/// The size of the diff as mongod serialises it (`{u: {...}, i: {...}, d: {...}, s<f>: ...}`).
fn doc_diff_size(d: &DocDiff) -> usize {
    let section = |entries: usize| if entries == 0 { 0 } else { 1 + 2 + 5 + entries };
    let values = |v: &[(String, Bson)]| -> usize {
        v.iter().map(|(k, x)| 2 + k.len() + value_size(x)).sum()
    };
    let mut size = 5;
    size += section(values(&d.updates)) + section(values(&d.inserts));
    size += section(d.deletes.iter().map(|k| 3 + k.len()).sum());
    for (k, sub) in &d.subs {
        size += 3 + k.len() + diff_size(sub);
    }
    size
}

/// `{a: true, l: <size>?, u<i>: value, s<i>: sub-diff}`.
fn array_diff_size(d: &ArrayDiff) -> usize {
    let mut size = 5 + 4;
    if d.resize.is_some() {
        size += 7;
    }
    for (i, m) in &d.mods {
        let key = 3 + i.to_string().len();
        size += key
            + match m {
                Element::Value(v) => value_size(v),
                Element::Sub(sub) => diff_size(sub),
            };
    }
    size
}

fn diff_size(d: &Diff) -> usize {
    match d {
        Diff::Doc(d) => doc_diff_size(d),
        Diff::Array(a) => array_diff_size(a),
    }
}

/// One component of a path: a field name or an array index.
#[derive(Clone)]
enum Part {
    Field(String),
    Index(usize),
}

/// mongod's `DeltaUpdateDescriptionBuilder`: walks the diff, tracking the path and whether it
/// is ambiguous (a numeric field name after the first component, or a field name with a dot).
#[derive(Default)]
struct Description {
    path: Vec<Part>,
    /// For each component of `path`: whether the path is ambiguous up to it.
    ambiguous: Vec<bool>,
    updated: Document,
    removed: Vec<Bson>,
    truncated: Vec<Bson>,
    disambiguated: Document,
}

impl Description {
    fn push(&mut self, part: Part) {
        let already = self.ambiguous.last().copied().unwrap_or(false);
        let this = match &part {
            Part::Index(_) => false,
            Part::Field(f) => {
                let numeric = !self.path.is_empty()
                    && !f.is_empty()
                    && f.bytes().all(|b| b.is_ascii_digit())
                    && (f == "0" || !f.starts_with('0'));
                numeric || f.contains('.')
            }
        };
        self.path.push(part);
        self.ambiguous.push(already || this);
    }

    fn pop(&mut self) {
        self.path.pop();
        self.ambiguous.pop();
    }

    fn dotted(&self) -> String {
        let parts: Vec<String> = self
            .path
            .iter()
            .map(|p| match p {
                Part::Field(f) => f.clone(),
                Part::Index(i) => i.to_string(),
            })
            .collect();
        parts.join(".")
    }

    fn note_if_ambiguous(&mut self) {
        if self.ambiguous.last().copied().unwrap_or(false) {
            let parts: Vec<Bson> = self
                .path
                .iter()
                .map(|p| match p {
                    Part::Field(f) => Bson::String(f.clone()),
                    Part::Index(i) => Bson::Int32(*i as i32),
                })
                .collect();
            self.disambiguated.insert(self.dotted(), parts);
        }
    }

    fn updated_at(&mut self, part: Part, value: &Bson) {
        self.push(part);
        self.updated.insert(self.dotted(), value.clone());
        self.note_if_ambiguous();
        self.pop();
    }

    fn walk_doc(&mut self, d: &DocDiff) {
        for (k, v) in d.updates.iter().chain(&d.inserts) {
            self.updated_at(Part::Field(k.clone()), v);
        }
        for k in &d.deletes {
            self.push(Part::Field(k.clone()));
            self.removed.push(Bson::String(self.dotted()));
            self.note_if_ambiguous();
            self.pop();
        }
        for (k, sub) in &d.subs {
            self.push(Part::Field(k.clone()));
            self.walk(sub);
            self.pop();
        }
    }

    fn walk(&mut self, d: &Diff) {
        match d {
            Diff::Doc(d) => self.walk_doc(d),
            Diff::Array(a) => {
                if let Some(size) = a.resize {
                    self.truncated.push(Bson::Document(
                        doc! {"field": self.dotted(), "newSize": size as i32},
                    ));
                    self.note_if_ambiguous();
                }
                for (i, m) in &a.mods {
                    match m {
                        Element::Value(v) => self.updated_at(Part::Index(*i), v),
                        Element::Sub(sub) => {
                            self.push(Part::Index(*i));
                            self.walk(sub);
                            self.pop();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_updates_report_paths_into_sub_documents_and_appends() {
        let before = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "arr": [1, 2], "gone": 1};
        let after = doc! {"_id": 1, "a": {"b": 5, "c": 2}, "arr": [1, 2, 3], "new": true};
        let d = describe(&before, &after, false, false);
        assert_eq!(
            d,
            doc! {
                "updatedFields": {"new": true, "a.b": 5, "arr.2": 3},
                "removedFields": ["gone"],
                "truncatedArrays": [],
            }
        );
        // A shrunk array ($pop, $pull) is reported whole.
        let d = describe(&doc! {"a": [1, 2, 3]}, &doc! {"a": [1, 2]}, false, false);
        assert_eq!(
            d.get_document("updatedFields").unwrap(),
            &doc! {"a": [1, 2]}
        );
    }

    #[test]
    fn pipeline_updates_truncate_arrays() {
        let before = doc! {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}, 1, 2, 3]};
        let after = doc! {"_id": 1, "a": 1, "array": ["foo", {"a": "bar"}]};
        let d = describe(&before, &after, true, true);
        assert_eq!(
            d,
            doc! {
                "updatedFields": {},
                "removedFields": [],
                "truncatedArrays": [{"field": "array", "newSize": 2}],
                "disambiguatedPaths": {},
            }
        );
    }

    #[test]
    fn numeric_field_names_are_disambiguated_with_integer_indexes() {
        let d = describe(
            &doc! {"_id": 1, "a": {"1": 1}},
            &doc! {"_id": 1, "a": {"1": 2}},
            false,
            true,
        );
        assert_eq!(
            d.get_document("disambiguatedPaths").unwrap(),
            &doc! {"a.1": ["a", "1"]}
        );
        let d = describe(
            &doc! {"_id": 1, "a": [{"1": 1}]},
            &doc! {"_id": 1, "a": [{"1": 2}]},
            false,
            true,
        );
        assert_eq!(
            d.get_document("disambiguatedPaths").unwrap(),
            &doc! {"a.0.1": ["a", 0, "1"]}
        );
        // An array index alone is not ambiguous.
        let d = describe(&doc! {"a": [1]}, &doc! {"a": [2]}, false, true);
        assert_eq!(d.get_document("updatedFields").unwrap(), &doc! {"a.0": 2});
        assert!(d.get_document("disambiguatedPaths").unwrap().is_empty());
    }

    #[test]
    fn a_sub_diff_larger_than_the_new_value_is_replaced_by_it() {
        let d = describe(&doc! {"a": [1, 2, 3]}, &doc! {"a": [4, 5, 6]}, true, false);
        assert_eq!(
            d.get_document("updatedFields").unwrap(),
            &doc! {"a": [4, 5, 6]}
        );
    }
}
