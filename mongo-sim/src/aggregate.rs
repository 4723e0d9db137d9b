//! Aggregation pipelines over in-memory documents: `$match $sort $limit $skip $project
//! $addFields/$set $unset $group $count $replaceRoot/$replaceWith $unwind $sortByCount`, the
//! `find` projection and sort, and the restricted stage set used by update pipelines.
//!
//! Every stage is parsed and validated before any document is touched, as mongod does; stages
//! mongod knows but this server does not implement fail with 115 CommandNotSupported.

// `CommandError` is the crate-wide error type; its size is decided in `error.rs`.
#![allow(clippy::result_large_err)]

use crate::bsontype::type_name;
use crate::compare::compare;
use crate::error::{self, CommandError, Result};
use crate::expr::{Expr, Variables};
use crate::query::Matcher;
use bson::{Bson, Document, doc};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Stages mongod 7.0 has that need other collections, search or server state: they are
/// recognised (so the error is not "unrecognized") but rejected with 115.
const UNSUPPORTED_STAGES: &[&str] = &[
    "$lookup",
    "$graphLookup",
    "$unionWith",
    "$facet",
    "$out",
    "$merge",
    "$geoNear",
    "$search",
    "$searchMeta",
    "$vectorSearch",
    "$listSearchIndexes",
    "$bucket",
    "$bucketAuto",
    "$densify",
    "$fill",
    "$setWindowFields",
    "$sample",
    "$documents",
    "$indexStats",
    "$collStats",
    "$currentOp",
    "$listSessions",
    "$listLocalSessions",
    "$listSampledQueries",
    "$listCatalog",
    "$planCacheStats",
    "$shardedDataDistribution",
    "$changeStreamSplitLargeEvent",
    "$redact",
];

/// The stages an update pipeline may contain (manual: "Updates with Aggregation Pipeline").
const UPDATE_STAGES: &[&str] = &[
    "$addFields",
    "$set",
    "$project",
    "$unset",
    "$replaceRoot",
    "$replaceWith",
];

/// A parsed pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Parses and validates every stage (unknown stage: 40324 "Unrecognized pipeline stage name").
    pub fn parse(stages: &[Bson]) -> Result<Pipeline> {
        let stages = stages
            .iter()
            .map(|s| match s {
                Bson::Document(d) => Stage::parse(d),
                _ => Err(CommandError::type_mismatch(
                    "Each element of the 'pipeline' array must be an object",
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Pipeline { stages })
    }

    /// Names of the stages, in order (`"$match"`, ...).
    pub fn stage_names(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.name.clone()).collect()
    }

    /// Runs the stages over `input`; `vars` carries `$$NOW` and the command's `let`.
    pub fn run(&self, input: Vec<Document>, vars: &Variables) -> Result<Vec<Document>> {
        let mut docs = input;
        for stage in &self.stages {
            docs = stage.run(docs, vars)?;
        }
        Ok(docs)
    }
}

/// The stages allowed in an update pipeline (`$addFields $set $project $unset $replaceRoot
/// $replaceWith`), applied to one document.
#[derive(Debug, Clone)]
pub struct UpdatePipeline {
    stages: Vec<Stage>,
}

impl UpdatePipeline {
    /// Parses the stages; any stage outside the update set is 72 InvalidOptions. As in
    /// mongod's `PipelineExecutor`, each stage is parsed and then checked before the next.
    pub fn parse(stages: &[Bson]) -> Result<UpdatePipeline> {
        let mut parsed = Vec::with_capacity(stages.len());
        for spec in stages {
            let Bson::Document(d) = spec else {
                return Err(CommandError::type_mismatch(
                    "Each element of the 'pipeline' array must be an object",
                ));
            };
            let stage = Stage::parse(d)?;
            if !UPDATE_STAGES.contains(&stage.name.as_str()) {
                // `$count` and `$sortByCount` are `$group` underneath, and mongod names that.
                let name = match stage.kind {
                    StageKind::Count(_) | StageKind::SortByCount(_) => "$group",
                    _ => stage.name.as_str(),
                };
                return Err(CommandError::new(
                    error::INVALID_OPTIONS,
                    format!("{name} is not allowed to be used within an update"),
                ));
            }
            parsed.push(stage);
        }
        Ok(UpdatePipeline { stages: parsed })
    }

    /// The document after every stage; `vars` is the update's `let` and system variables.
    pub fn apply(&self, doc: &Document, vars: &Variables) -> Result<Document> {
        let mut current = doc.clone();
        for stage in &self.stages {
            current = stage.transform_one(&current, vars)?;
        }
        Ok(current)
    }
}

/// A `find` projection (inclusion, exclusion, `_id` rules, `$slice`/`$elemMatch`, aggregation
/// expressions as values).
#[derive(Debug, Clone)]
pub struct Projection {
    /// `None` for the empty projection, which returns documents whole.
    shape: Option<Shape>,
}

impl Projection {
    /// Parses with find's rules (manual: "Project Fields to Return from Query"). Positional
    /// `field.$` needs the query: apply it with [`Projection::apply_matched`]. `$meta` needs
    /// search scores and is 115 here.
    pub fn parse(spec: &Document) -> Result<Projection> {
        if spec.is_empty() {
            return Ok(Projection { shape: None });
        }
        Ok(Projection {
            shape: Some(Shape::parse(spec, Mode::Find)?),
        })
    }

    /// The projected document.
    pub fn apply(&self, doc: &Document, vars: &Variables) -> Result<Document> {
        match &self.shape {
            None => Ok(doc.clone()),
            Some(shape) => shape.apply(doc, vars),
        }
    }

    /// The projected document of `doc`, which `query` selected: a positional projection
    /// keeps the array element the query matched (mongod's
    /// `projection_executor::applyPositionalProjection`).
    pub fn apply_matched(
        &self,
        doc: &Document,
        vars: &Variables,
        query: &Matcher,
    ) -> Result<Document> {
        let Some(shape) = &self.shape else {
            return Ok(doc.clone());
        };
        let mut out = shape.apply(doc, vars)?;
        if let Some(path) = &shape.positional {
            let position = query.match_position(doc, vars)?.flatten();
            apply_positional(&mut out, path, position)?;
        }
        Ok(out)
    }
}

/// Replaces the first array along `path` in the projected `out` with a one-element array
/// of its element at `position`; leaves `out` as it is when the path meets no array.
fn apply_positional(out: &mut Document, path: &[String], position: Option<usize>) -> Result<()> {
    let mut cur = out;
    for part in path {
        let Some(value) = cur.get_mut(part) else {
            return Ok(());
        };
        match value {
            Bson::Array(items) => {
                let position = position.ok_or_else(|| {
                    CommandError::location(
                        51246,
                        "positional operator '.$' couldn't find a matching element in the array",
                    )
                })?;
                let element = items.get(position).cloned().ok_or_else(|| {
                    CommandError::location(51247, "positional operator '.$' element mismatch")
                })?;
                *value = Bson::Array(vec![element]);
                return Ok(());
            }
            Bson::Document(d) => cur = d,
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// A sort specification (`{a: 1, b: -1}`), comparing as mongod does (arrays by their
/// smallest element ascending, largest descending).
#[derive(Debug, Clone)]
pub struct SortSpec {
    keys: Vec<(String, bool)>,
    natural: Option<bool>,
}

impl SortSpec {
    /// Parses `{path: 1|-1, ...}`; `$natural` is recorded, not compared on.
    pub fn parse(spec: &Document) -> Result<SortSpec> {
        let mut keys = Vec::new();
        let mut natural = None;
        for (k, v) in spec {
            let asc = sort_direction(k, v)?;
            if k == "$natural" {
                natural = Some(asc);
                continue;
            }
            validate_field_path(k)?;
            keys.push((k.clone(), asc));
        }
        Ok(SortSpec { keys, natural })
    }

    /// True when the spec has a `$natural` key: storage order, which only the storage layer
    /// can provide.
    pub fn has_natural(&self) -> bool {
        self.natural.is_some()
    }

    /// The `$natural` direction (`Some(true)` for ascending), if present.
    pub fn natural_ascending(&self) -> Option<bool> {
        self.natural
    }

    /// True when there is no key to compare on (`$natural` aside).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Orders two documents by the spec's keys (manual: "Comparison/Sort Order").
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for (path, asc) in &self.keys {
            let x = sort_key(a, path, *asc);
            let y = sort_key(b, path, *asc);
            let c = compare(&x, &y);
            let c = if *asc { c } else { c.reverse() };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    }

    fn keys_of(&self, doc: &Document) -> Vec<Bson> {
        self.keys
            .iter()
            .map(|(path, asc)| sort_key(doc, path, *asc))
            .collect()
    }

    fn compare_keys(&self, a: &[Bson], b: &[Bson]) -> Ordering {
        for ((x, y), (_, asc)) in a.iter().zip(b).zip(&self.keys) {
            let c = compare(x, y);
            let c = if *asc { c } else { c.reverse() };
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    }
}

/// Validates one sort key's value the way mongod's `SortPattern` does.
fn sort_direction(key: &str, v: &Bson) -> Result<bool> {
    match v {
        Bson::Document(d) => {
            if d.contains_key("$meta") {
                Err(CommandError::not_supported(
                    "$meta sort keys are not supported",
                ))
            } else {
                Err(CommandError::location(
                    17312,
                    "$meta is the only expression supported by $sort right now",
                ))
            }
        }
        _ => {
            let Some(n) = crate::compare::as_f64(v) else {
                return Err(CommandError::location(
                    15974,
                    format!("Illegal key in $sort specification: {key}: {}", render(v)),
                ));
            };
            if n == 1.0 {
                Ok(true)
            } else if n == -1.0 {
                Ok(false)
            } else {
                Err(CommandError::location(
                    15975,
                    "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                ))
            }
        }
    }
}

/// The value a document sorts by on `path`: arrays along the path are expanded, the smallest
/// candidate is used ascending and the largest descending; missing sorts as null and an empty
/// array below null (manual: "Comparison/Sort Order", array comparisons).
fn sort_key(doc: &Document, path: &str, asc: bool) -> Bson {
    let parts: Vec<&str> = path.split('.').collect();
    let mut candidates: Vec<&Bson> = Vec::new();
    let mut empty_array = false;
    collect_sort_values(doc, &parts, &mut candidates, &mut empty_array);
    let best = candidates.into_iter().reduce(|best, v| {
        let c = compare(v, best);
        if (asc && c == Ordering::Less) || (!asc && c == Ordering::Greater) {
            v
        } else {
            best
        }
    });
    match best {
        Some(v) => v.clone(),
        // An empty array has no element to sort by; mongod orders it below null, which the
        // canonical type order gives `undefined`.
        None if empty_array => Bson::Undefined,
        None => Bson::Null,
    }
}

fn collect_sort_values<'a>(
    doc: &'a Document,
    parts: &[&str],
    out: &mut Vec<&'a Bson>,
    empty_array: &mut bool,
) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    match doc.get(*head) {
        None => out.push(&Bson::Null),
        Some(v) => collect_from_value(v, rest, out, empty_array),
    }
}

fn collect_from_value<'a>(
    v: &'a Bson,
    rest: &[&str],
    out: &mut Vec<&'a Bson>,
    empty_array: &mut bool,
) {
    if rest.is_empty() {
        match v {
            Bson::Array(a) if a.is_empty() => *empty_array = true,
            Bson::Array(a) => out.extend(a.iter()),
            other => out.push(other),
        }
        return;
    }
    match v {
        Bson::Document(d) => collect_sort_values(d, rest, out, empty_array),
        Bson::Array(a) => {
            if let Ok(index) = rest[0].parse::<usize>() {
                if let Some(elem) = a.get(index) {
                    collect_from_value(elem, &rest[1..], out, empty_array);
                }
                return;
            }
            for elem in a {
                match elem {
                    Bson::Document(d) => collect_sort_values(d, rest, out, empty_array),
                    _ => out.push(&Bson::Null),
                }
            }
        }
        _ => out.push(&Bson::Null),
    }
}

// ---------------------------------------------------------------------------------------------
// Operands: field paths are evaluated here directly; everything else goes to `crate::expr`.
// ---------------------------------------------------------------------------------------------

/// An expression as a stage holds it. Plain field paths and `$$ROOT`/`$$CURRENT`/`$$REMOVE`
/// are resolved here (they dominate `$group` and `$project`); anything else is an [`Expr`].
#[derive(Debug, Clone)]
enum Operand {
    /// `"$a.b"` or `"$$ROOT.a.b"`; an empty path is the whole document.
    Path(Vec<String>),
    /// `"$$REMOVE"`: always missing.
    Remove,
    Expr(Expr),
}

impl Operand {
    fn parse(v: &Bson) -> Result<Operand> {
        if let Bson::String(s) = v {
            if let Some(var) = s.strip_prefix("$$") {
                let (name, rest) = match var.split_once('.') {
                    Some((n, r)) => (n, Some(r)),
                    None => (var, None),
                };
                match (name, rest) {
                    ("ROOT" | "CURRENT", None) => return Ok(Operand::Path(Vec::new())),
                    ("ROOT" | "CURRENT", Some(rest)) => {
                        return Ok(Operand::Path(parse_path_components(rest)?));
                    }
                    ("REMOVE", None) => return Ok(Operand::Remove),
                    _ => return Ok(Operand::Expr(Expr::parse(v)?)),
                }
            }
            if let Some(path) = s.strip_prefix('$') {
                if path.is_empty() {
                    return Err(CommandError::location(
                        16872,
                        "'$' by itself is not a valid FieldPath",
                    ));
                }
                return Ok(Operand::Path(parse_path_components(path)?));
            }
        }
        Ok(Operand::Expr(Expr::parse(v)?))
    }

    fn eval(&self, root: &Document, vars: &Variables) -> Result<Option<Bson>> {
        match self {
            Operand::Path(parts) if parts.is_empty() => Ok(Some(Bson::Document(root.clone()))),
            Operand::Path(parts) => Ok(eval_field_path(root, parts)),
            Operand::Remove => Ok(None),
            Operand::Expr(e) => e.eval(root, vars),
        }
    }
}

fn parse_path_components(path: &str) -> Result<Vec<String>> {
    validate_field_path(path)?;
    Ok(path.split('.').map(str::to_string).collect())
}

/// mongod's `FieldPath` rules for a dotted path.
fn validate_field_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(CommandError::location(
            40352,
            "FieldPath cannot be constructed with empty string",
        ));
    }
    for part in path.split('.') {
        if part.is_empty() {
            return Err(CommandError::location(
                15998,
                "FieldPath field names may not be empty strings.",
            ));
        }
        if part.starts_with('$') {
            return Err(CommandError::location(
                16410,
                "FieldPath field names may not start with '$'. Consider using $getField or \
                 $setField.",
            ));
        }
        if part.contains('\0') {
            return Err(CommandError::location(
                16411,
                "FieldPath field names may not contain '\0'.",
            ));
        }
    }
    Ok(())
}

/// `"$a.b"` as `ExpressionFieldPath` evaluates it: arrays on the way map over their
/// sub-documents (skipping other elements and missing results).
fn eval_field_path(doc: &Document, parts: &[String]) -> Option<Bson> {
    let (head, rest) = parts.split_first()?;
    let v = doc.get(head)?;
    if rest.is_empty() {
        return Some(v.clone());
    }
    match v {
        Bson::Document(d) => eval_field_path(d, rest),
        Bson::Array(a) => Some(Bson::Array(eval_path_in_array(a, rest))),
        _ => None,
    }
}

fn eval_path_in_array(a: &[Bson], parts: &[String]) -> Vec<Bson> {
    a.iter()
        .filter_map(|e| match e {
            Bson::Document(d) => eval_field_path(d, parts),
            _ => None,
        })
        .collect()
}

/// A dotted path through sub-documents only (arrays end it), as `$unwind` reads its path.
fn get_nested<'a>(doc: &'a Document, parts: &[String]) -> Option<&'a Bson> {
    let (head, rest) = parts.split_first()?;
    let v = doc.get(head)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Bson::Document(d) => get_nested(d, rest),
        _ => None,
    }
}

/// Sets a dotted path, keeping the field's position and replacing non-documents on the way.
fn set_nested(doc: &mut Document, parts: &[String], value: Option<Bson>) {
    let Some((head, rest)) = parts.split_first() else {
        return;
    };
    if rest.is_empty() {
        match value {
            Some(v) => {
                doc.insert(head.clone(), v);
            }
            None => {
                doc.remove(head);
            }
        }
        return;
    }
    if !matches!(doc.get(head), Some(Bson::Document(_))) {
        if value.is_none() {
            return;
        }
        doc.insert(head.clone(), Document::new());
    }
    if let Some(Bson::Document(sub)) = doc.get_mut(head) {
        set_nested(sub, rest, value);
    }
}

// ---------------------------------------------------------------------------------------------
// Stages
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Stage {
    name: String,
    kind: StageKind,
}

#[derive(Debug, Clone)]
enum StageKind {
    Match(Matcher),
    Sort(SortSpec),
    Limit(i64),
    Skip(i64),
    /// `$project` and `$unset` (an exclusion projection).
    Project(Shape),
    /// `$addFields` and `$set`.
    AddFields(Tree),
    Group(Group),
    Count(String),
    ReplaceRoot {
        new_root: Operand,
        what: &'static str,
    },
    Unwind(Unwind),
    SortByCount(Operand),
}

impl Stage {
    fn parse(spec: &Document) -> Result<Stage> {
        let mut fields = spec.iter();
        let (Some((name, value)), None) = (fields.next(), fields.next()) else {
            return Err(CommandError::location(
                40323,
                "A pipeline stage specification object must contain exactly one field.",
            ));
        };
        let kind = match name.as_str() {
            "$match" => match value {
                Bson::Document(d) => StageKind::Match(Matcher::parse(d)?),
                _ => {
                    return Err(CommandError::location(
                        15959,
                        "the match filter must be an expression in an object",
                    ));
                }
            },
            "$sort" => StageKind::Sort(parse_sort_stage(value)?),
            "$limit" => {
                let n = parse_count_argument("$limit", 5107201, value)?;
                if n == 0 {
                    return Err(CommandError::location(15958, "the limit must be positive"));
                }
                StageKind::Limit(n)
            }
            "$skip" => StageKind::Skip(parse_count_argument("$skip", 5107200, value)?),
            "$project" => {
                let Bson::Document(d) = value else {
                    return Err(CommandError::location(
                        15969,
                        "$project specification must be an object",
                    ));
                };
                if d.is_empty() {
                    return Err(invalid_stage(
                        name,
                        CommandError::location(
                            51272,
                            "projection specification must have at least one field",
                        ),
                    ));
                }
                StageKind::Project(
                    Shape::parse(d, Mode::Aggregate).map_err(|e| invalid_stage(name, e))?,
                )
            }
            "$addFields" | "$set" => {
                let Bson::Document(d) = value else {
                    return Err(CommandError::location(
                        40272,
                        format!(
                            "{name} specification stage must be an object, got {}",
                            type_name(value)
                        ),
                    ));
                };
                StageKind::AddFields(parse_add_fields(d).map_err(|e| invalid_stage(name, e))?)
            }
            "$unset" => StageKind::Project(parse_unset(value)?),
            "$group" => StageKind::Group(Group::parse(value)?),
            "$count" => StageKind::Count(parse_count_stage(value)?),
            "$replaceRoot" => StageKind::ReplaceRoot {
                new_root: parse_replace_root(value)?,
                what: "'newRoot' expression",
            },
            "$replaceWith" => StageKind::ReplaceRoot {
                new_root: Operand::parse(value)?,
                what: "'replacement document'",
            },
            "$unwind" => StageKind::Unwind(Unwind::parse(value)?),
            "$sortByCount" => StageKind::SortByCount(parse_sort_by_count(value)?),
            "$changeStream" => {
                return Err(CommandError::location(
                    40602,
                    "$changeStream is only valid as the first stage in a pipeline.",
                ));
            }
            other if UNSUPPORTED_STAGES.contains(&other) => {
                return Err(CommandError::not_supported(format!(
                    "{other} is not supported by this server"
                )));
            }
            other => {
                return Err(CommandError::location(
                    40324,
                    format!("Unrecognized pipeline stage name: '{other}'"),
                ));
            }
        };
        Ok(Stage {
            name: name.clone(),
            kind,
        })
    }

    fn run(&self, docs: Vec<Document>, vars: &Variables) -> Result<Vec<Document>> {
        match &self.kind {
            StageKind::Match(m) => {
                let mut out = Vec::with_capacity(docs.len());
                for d in docs {
                    if m.matches(&d, vars)? {
                        out.push(d);
                    }
                }
                Ok(out)
            }
            StageKind::Sort(spec) => {
                let mut keyed: Vec<(Vec<Bson>, Document)> =
                    docs.into_iter().map(|d| (spec.keys_of(&d), d)).collect();
                keyed.sort_by(|a, b| spec.compare_keys(&a.0, &b.0));
                Ok(keyed.into_iter().map(|(_, d)| d).collect())
            }
            StageKind::Limit(n) => Ok(docs
                .into_iter()
                .take(usize::try_from(*n).unwrap_or(usize::MAX))
                .collect()),
            StageKind::Skip(n) => Ok(docs
                .into_iter()
                .skip(usize::try_from(*n).unwrap_or(usize::MAX))
                .collect()),
            StageKind::Group(g) => g.run(docs, vars),
            StageKind::Count(field) => {
                if docs.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![doc! { field.clone(): count_value(docs.len()) }])
            }
            StageKind::Unwind(u) => {
                let mut out = Vec::with_capacity(docs.len());
                for d in &docs {
                    u.unwind(d, &mut out);
                }
                Ok(out)
            }
            StageKind::SortByCount(expr) => sort_by_count(expr, docs, vars),
            StageKind::Project(_) | StageKind::AddFields(_) | StageKind::ReplaceRoot { .. } => {
                docs.iter().map(|d| self.transform_one(d, vars)).collect()
            }
        }
    }

    /// One document through a one-in, one-out stage (the update-pipeline stages).
    fn transform_one(&self, doc: &Document, vars: &Variables) -> Result<Document> {
        match &self.kind {
            StageKind::Project(shape) => shape.apply(doc, vars),
            StageKind::AddFields(tree) => {
                let mut out = doc.clone();
                apply_computed(tree, &mut out, doc, vars, Mode::Aggregate)?;
                Ok(out)
            }
            StageKind::ReplaceRoot { new_root, what } => match new_root.eval(doc, vars)? {
                Some(Bson::Document(d)) => Ok(d),
                other => {
                    let (shown, ty) = match &other {
                        Some(v) => (render(v), type_name(v)),
                        None => ("MISSING".to_string(), "missing"),
                    };
                    Err(CommandError::location(
                        40228,
                        format!(
                            "{what} must evaluate to an object, but resulting value was: \
                             {shown}. Type of resulting value: '{ty}'. Input document: {}",
                            render_document(doc)
                        ),
                    ))
                }
            },
            _ => Err(CommandError::new(
                error::INVALID_OPTIONS,
                format!("{} is not allowed to be used within an update", self.name),
            )),
        }
    }
}

/// mongod prefixes projection-stage parse errors with the stage name.
fn invalid_stage(name: &str, mut e: CommandError) -> CommandError {
    e.errmsg = format!("Invalid {name} :: caused by :: {}", e.errmsg);
    e
}

/// `$limit`/`$skip` arguments as `parseIntegerElementToNonNegativeLong` checks them.
fn parse_count_argument(stage: &str, code: i32, v: &Bson) -> Result<i64> {
    let fail = |reason: String| {
        CommandError::location(code, format!("invalid argument to {stage} stage: {reason}"))
    };
    let n = match v {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(_) | Bson::Decimal128(_) => {
            let d = crate::compare::as_f64(v).unwrap_or(f64::NAN);
            if d.fract() != 0.0 || !d.is_finite() {
                return Err(fail(format!("Expected an integer: {stage}: {}", render(v))));
            }
            if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&d) {
                return Err(fail(format!(
                    "Cannot represent as a 64-bit integer: {stage}: {}",
                    render(v)
                )));
            }
            d as i64
        }
        _ => {
            return Err(fail(format!(
                "Expected a number in: {stage}: {}",
                render(v)
            )));
        }
    };
    if n < 0 {
        return Err(fail(format!(
            "Expected a non-negative number in: {stage}: {}",
            render(v)
        )));
    }
    Ok(n)
}

fn parse_sort_stage(v: &Bson) -> Result<SortSpec> {
    let Bson::Document(d) = v else {
        return Err(CommandError::location(
            15973,
            "the $sort key specification must be an object",
        ));
    };
    let spec = SortSpec::parse(d)?;
    if spec.has_natural() {
        return Err(CommandError::not_supported(
            "$natural is not supported in a $sort stage",
        ));
    }
    if spec.is_empty() {
        return Err(CommandError::location(
            15976,
            "$sort stage must have at least one sort key",
        ));
    }
    Ok(spec)
}

fn parse_count_stage(v: &Bson) -> Result<String> {
    let Bson::String(name) = v else {
        return Err(CommandError::location(
            40156,
            "the count field must be a non-empty string",
        ));
    };
    if name.is_empty() {
        return Err(CommandError::location(
            40157,
            "the count field must be a non-empty string",
        ));
    }
    if name.starts_with('$') {
        return Err(CommandError::location(
            40158,
            "the count field cannot be a $-prefixed path",
        ));
    }
    if name.contains('\0') {
        return Err(CommandError::location(
            40159,
            "the count field cannot contain a null byte",
        ));
    }
    if name.contains('.') {
        return Err(CommandError::location(
            40160,
            "the count field cannot contain '.'",
        ));
    }
    Ok(name.clone())
}

fn parse_replace_root(v: &Bson) -> Result<Operand> {
    let Bson::Document(d) = v else {
        return Err(CommandError::location(
            40229,
            format!(
                "expected an object as specification for $replaceRoot stage, got {}",
                type_name(v)
            ),
        ));
    };
    let mut new_root = None;
    for (k, val) in d {
        if k == "newRoot" {
            new_root = Some(Operand::parse(val)?);
        } else {
            return Err(CommandError::new(
                error::UNKNOWN_FIELD,
                format!("BSON field '$replaceRoot.{k}' is an unknown field."),
            ));
        }
    }
    new_root.ok_or_else(|| crate::fields::missing("$replaceRoot", "newRoot"))
}

fn parse_sort_by_count(v: &Bson) -> Result<Operand> {
    const NEEDS_PATH_OR_EXPRESSION: &str = "the sortByCount field must be defined as a $-prefixed path or an expression inside an \
         object";
    match v {
        Bson::String(s) if s.starts_with('$') => Operand::parse(v),
        Bson::String(_) => Err(CommandError::location(40148, NEEDS_PATH_OR_EXPRESSION)),
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            Operand::parse(v)
        }
        Bson::Document(_) => Err(CommandError::location(40147, NEEDS_PATH_OR_EXPRESSION)),
        _ => Err(CommandError::location(
            40149,
            "the sortByCount field must be specified as a string or as an object",
        )),
    }
}

/// `{$sortByCount: e}` is `{$group: {_id: e, count: {$sum: 1}}}, {$sort: {count: -1}}`.
fn sort_by_count(expr: &Operand, docs: Vec<Document>, vars: &Variables) -> Result<Vec<Document>> {
    let mut groups = GroupTable::default();
    for d in &docs {
        let key = expr.eval(d, vars)?.unwrap_or(Bson::Null);
        let slot = groups.slot(key, || 0usize);
        *slot += 1;
    }
    let mut out: Vec<(usize, Bson)> = groups.into_entries().map(|(key, n)| (n, key)).collect();
    out.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    Ok(out
        .into_iter()
        .map(|(n, key)| doc! { "_id": key, "count": count_value(n) })
        .collect())
}

/// A count as mongod's `$sum: 1` produces it: int while it fits, then long.
fn count_value(n: usize) -> Bson {
    match i32::try_from(n) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(i64::try_from(n).unwrap_or(i64::MAX)),
    }
}

// ---------------------------------------------------------------------------------------------
// $unwind
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Unwind {
    path: Vec<String>,
    include_array_index: Option<Vec<String>>,
    preserve: bool,
}

impl Unwind {
    fn parse(v: &Bson) -> Result<Unwind> {
        let (path, index, preserve) = match v {
            Bson::String(s) => (s.clone(), None, false),
            Bson::Document(d) => {
                let mut path = None;
                let mut index = None;
                let mut preserve = false;
                for (k, val) in d {
                    match k.as_str() {
                        "path" => match val {
                            Bson::String(s) => path = Some(s.clone()),
                            other => {
                                return Err(CommandError::location(
                                    28808,
                                    format!(
                                        "expected a string as the path for $unwind stage, got {}",
                                        type_name(other)
                                    ),
                                ));
                            }
                        },
                        "includeArrayIndex" => match val {
                            Bson::String(s) if !s.is_empty() => {
                                if s.starts_with('$') {
                                    return Err(CommandError::location(
                                        28822,
                                        format!(
                                            "includeArrayIndex option to $unwind stage should \
                                             not be prefixed with a '$': {s}"
                                        ),
                                    ));
                                }
                                index = Some(s.clone());
                            }
                            other => {
                                return Err(CommandError::location(
                                    28810,
                                    format!(
                                        "expected a non-empty string for the includeArrayIndex \
                                         option to $unwind stage, got {}",
                                        type_name(other)
                                    ),
                                ));
                            }
                        },
                        "preserveNullAndEmptyArrays" => match val {
                            Bson::Boolean(b) => preserve = *b,
                            other => {
                                return Err(CommandError::location(
                                    28809,
                                    format!(
                                        "expected a boolean for the preserveNullAndEmptyArrays \
                                         option to $unwind stage, got {}",
                                        type_name(other)
                                    ),
                                ));
                            }
                        },
                        other => {
                            return Err(CommandError::location(
                                28811,
                                format!("unrecognized option to $unwind stage: {other}"),
                            ));
                        }
                    }
                }
                let Some(path) = path else {
                    return Err(CommandError::location(
                        28812,
                        "no path specified to $unwind stage",
                    ));
                };
                (path, index, preserve)
            }
            other => {
                return Err(CommandError::location(
                    15981,
                    format!(
                        "expected either a string or an object as specification for $unwind \
                         stage, got {}",
                        type_name(other)
                    ),
                ));
            }
        };
        if path.is_empty() {
            return Err(CommandError::location(
                28812,
                "no path specified to $unwind stage",
            ));
        }
        let Some(stripped) = path.strip_prefix('$') else {
            return Err(CommandError::location(
                28818,
                format!("path option to $unwind stage should be prefixed with a '$': {path}"),
            ));
        };
        let include_array_index = match index {
            Some(i) => Some(parse_path_components(&i)?),
            None => None,
        };
        Ok(Unwind {
            path: parse_path_components(stripped)?,
            include_array_index,
            preserve,
        })
    }

    /// Manual "$unwind": one document per element; a non-array value is a one-element array;
    /// null, missing and `[]` produce nothing unless `preserveNullAndEmptyArrays` (then `[]`
    /// is removed from the output and the index is null).
    fn unwind(&self, doc: &Document, out: &mut Vec<Document>) {
        let value = get_nested(doc, &self.path);
        match value {
            Some(Bson::Array(items)) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let mut d = doc.clone();
                    set_nested(&mut d, &self.path, Some(item.clone()));
                    if let Some(index) = &self.include_array_index {
                        set_nested(
                            &mut d,
                            index,
                            Some(Bson::Int64(i64::try_from(i).unwrap_or(i64::MAX))),
                        );
                    }
                    out.push(d);
                }
            }
            Some(Bson::Array(_)) | Some(Bson::Null) | Some(Bson::Undefined) | None => {
                if self.preserve {
                    let mut d = doc.clone();
                    if matches!(value, Some(Bson::Array(_))) {
                        set_nested(&mut d, &self.path, None);
                    }
                    if let Some(index) = &self.include_array_index {
                        set_nested(&mut d, index, Some(Bson::Null));
                    }
                    out.push(d);
                }
            }
            Some(_) => {
                let mut d = doc.clone();
                if let Some(index) = &self.include_array_index {
                    set_nested(&mut d, index, Some(Bson::Null));
                }
                out.push(d);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// $group
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum AccOp {
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Push,
    AddToSet,
    Count,
    MergeObjects,
}

/// Accumulators mongod 7.0 has that this server does not implement.
const UNSUPPORTED_ACCUMULATORS: &[&str] = &[
    "$accumulator",
    "$bottom",
    "$bottomN",
    "$firstN",
    "$lastN",
    "$maxN",
    "$minN",
    "$median",
    "$percentile",
    "$stdDevPop",
    "$stdDevSamp",
    "$top",
    "$topN",
];

#[derive(Debug, Clone)]
struct Accumulator {
    field: String,
    op: AccOp,
    arg: Operand,
}

#[derive(Debug, Clone)]
struct Group {
    id: Operand,
    accumulators: Vec<Accumulator>,
}

/// A group key ordered by BSON comparison, so that `1`, `1.0` and `NumberLong(1)` share a
/// group as they do in mongod.
#[derive(Debug, Clone)]
struct GroupKey(Bson);

impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        compare(&self.0, &other.0) == Ordering::Equal
    }
}
impl Eq for GroupKey {}
impl PartialOrd for GroupKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for GroupKey {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

/// Groups in first-seen order.
struct GroupTable<T> {
    index: BTreeMap<GroupKey, usize>,
    entries: Vec<(Bson, T)>,
}

impl<T> Default for GroupTable<T> {
    fn default() -> Self {
        Self {
            index: BTreeMap::new(),
            entries: Vec::new(),
        }
    }
}

impl<T> GroupTable<T> {
    fn slot(&mut self, key: Bson, init: impl FnOnce() -> T) -> &mut T {
        let k = GroupKey(key);
        let i = match self.index.get(&k) {
            Some(i) => *i,
            None => {
                let i = self.entries.len();
                self.entries.push((k.0.clone(), init()));
                self.index.insert(k, i);
                i
            }
        };
        &mut self.entries[i].1
    }

    fn into_entries(self) -> impl Iterator<Item = (Bson, T)> {
        self.entries.into_iter()
    }
}

impl Group {
    fn parse(v: &Bson) -> Result<Group> {
        let Bson::Document(spec) = v else {
            return Err(CommandError::location(
                15947,
                "a group's fields must be specified in an object",
            ));
        };
        let mut id = None;
        let mut accumulators = Vec::new();
        for (field, value) in spec {
            if field == "_id" {
                id = Some(Operand::parse(value)?);
                continue;
            }
            accumulators.push(parse_accumulator(field, value)?);
        }
        let Some(id) = id else {
            return Err(CommandError::location(
                15955,
                "a group specification must include an _id",
            ));
        };
        Ok(Group { id, accumulators })
    }

    fn run(&self, docs: Vec<Document>, vars: &Variables) -> Result<Vec<Document>> {
        let mut groups: GroupTable<Vec<AccState>> = GroupTable::default();
        for d in &docs {
            let key = self.id.eval(d, vars)?.unwrap_or(Bson::Null);
            let states = groups.slot(key, || {
                self.accumulators
                    .iter()
                    .map(|a| AccState::new(a.op))
                    .collect()
            });
            for (acc, state) in self.accumulators.iter().zip(states.iter_mut()) {
                let value = if acc.op == AccOp::Count {
                    Some(Bson::Int32(1))
                } else {
                    acc.arg.eval(d, vars)?
                };
                state.add(value)?;
            }
        }
        let mut out = Vec::new();
        for (key, states) in groups.into_entries() {
            let mut d = doc! { "_id": key };
            for (acc, state) in self.accumulators.iter().zip(states) {
                d.insert(acc.field.clone(), state.finish());
            }
            out.push(d);
        }
        Ok(out)
    }
}

/// One `field: {$op: arg}` of `$group`, checked as `AccumulationStatement` does.
fn parse_accumulator(field: &str, value: &Bson) -> Result<Accumulator> {
    let spec = match value {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => d,
        _ => {
            return Err(CommandError::location(
                40234,
                format!("The field '{field}' must be an accumulator object"),
            ));
        }
    };
    if field.contains('.') {
        return Err(CommandError::location(
            40235,
            format!("The field name '{field}' cannot contain '.'"),
        ));
    }
    if field.starts_with('$') {
        return Err(CommandError::location(
            40236,
            format!("The field name '{field}' cannot be an operator name"),
        ));
    }
    if spec.len() != 1 {
        return Err(CommandError::location(
            40238,
            format!("The field '{field}' must specify one accumulator"),
        ));
    }
    let Some((name, arg)) = spec.iter().next() else {
        return Err(CommandError::location(
            40234,
            format!("The field '{field}' must be an accumulator object"),
        ));
    };
    if matches!(arg, Bson::Array(_)) {
        return Err(CommandError::location(
            40237,
            format!("The {name} accumulator is a unary operator"),
        ));
    }
    let op = match name.as_str() {
        "$sum" => AccOp::Sum,
        "$avg" => AccOp::Avg,
        "$min" => AccOp::Min,
        "$max" => AccOp::Max,
        "$first" => AccOp::First,
        "$last" => AccOp::Last,
        "$push" => AccOp::Push,
        "$addToSet" => AccOp::AddToSet,
        "$mergeObjects" => AccOp::MergeObjects,
        "$count" => {
            if !matches!(arg, Bson::Document(d) if d.is_empty()) {
                return Err(CommandError::type_mismatch(
                    "$count takes no arguments, i.e. $count:{}",
                ));
            }
            AccOp::Count
        }
        other if UNSUPPORTED_ACCUMULATORS.contains(&other) => {
            return Err(CommandError::not_supported(format!(
                "the {other} accumulator is not supported by this server"
            )));
        }
        other => {
            return Err(CommandError::location(
                15952,
                format!("unknown group operator '{other}'"),
            ));
        }
    };
    let arg = if op == AccOp::Count {
        Operand::Remove
    } else {
        Operand::parse(arg)?
    };
    Ok(Accumulator {
        field: field.to_string(),
        op,
        arg,
    })
}

/// A running numeric sum that widens as mongod's does: int, then long, then double.
#[derive(Debug, Clone, Default)]
struct NumericSum {
    int: i64,
    double: f64,
    /// 0: every input fitted in an int so far, 1: a long was seen, 2: a double (or overflow).
    width: u8,
    all_int32: bool,
}

impl NumericSum {
    fn new() -> Self {
        Self {
            all_int32: true,
            ..Self::default()
        }
    }

    fn add(&mut self, v: &Bson) -> Result<bool> {
        match v {
            Bson::Int32(i) => self.add_int(i64::from(*i)),
            Bson::Int64(i) => {
                self.all_int32 = false;
                self.add_int(*i);
            }
            Bson::Double(d) => {
                self.width = 2;
                self.double += d;
            }
            Bson::Decimal128(_) => {
                return Err(CommandError::not_supported(
                    "decimal arithmetic in accumulators is not supported by this server",
                ));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn add_int(&mut self, i: i64) {
        if self.width == 2 {
            self.double += i as f64;
            return;
        }
        match self.int.checked_add(i) {
            Some(s) => self.int = s,
            None => {
                self.width = 2;
                self.double = self.int as f64 + i as f64;
                self.int = 0;
            }
        }
    }

    fn total(&self) -> Bson {
        if self.width == 2 {
            return Bson::Double(self.double + self.int as f64);
        }
        if self.all_int32
            && let Ok(i) = i32::try_from(self.int)
        {
            return Bson::Int32(i);
        }
        Bson::Int64(self.int)
    }

    fn as_f64(&self) -> f64 {
        self.double + self.int as f64
    }
}

#[derive(Debug, Clone)]
enum AccState {
    Sum(NumericSum),
    Avg(NumericSum, u64),
    Min(Option<Bson>),
    Max(Option<Bson>),
    First(Option<Bson>, bool),
    Last(Option<Bson>),
    Push(Vec<Bson>),
    AddToSet(Vec<Bson>, BTreeMap<GroupKey, ()>),
    MergeObjects(Document),
}

/// `$min`/`$max`: null, undefined and missing never win.
fn keep_extreme(best: &mut Option<Bson>, value: Option<Bson>, wanted: Ordering) {
    let Some(v) = value else {
        return;
    };
    if matches!(v, Bson::Null | Bson::Undefined) {
        return;
    }
    if best.as_ref().is_none_or(|b| compare(&v, b) == wanted) {
        *best = Some(v);
    }
}

impl AccState {
    fn new(op: AccOp) -> AccState {
        match op {
            AccOp::Sum | AccOp::Count => AccState::Sum(NumericSum::new()),
            AccOp::Avg => AccState::Avg(NumericSum::new(), 0),
            AccOp::Min => AccState::Min(None),
            AccOp::Max => AccState::Max(None),
            AccOp::First => AccState::First(None, false),
            AccOp::Last => AccState::Last(None),
            AccOp::Push => AccState::Push(Vec::new()),
            AccOp::AddToSet => AccState::AddToSet(Vec::new(), BTreeMap::new()),
            AccOp::MergeObjects => AccState::MergeObjects(Document::new()),
        }
    }

    /// Manual "$group" accumulators: `$sum`/`$avg` ignore non-numbers; `$min`/`$max` ignore
    /// null and missing; `$push`/`$addToSet` skip missing; `$first`/`$last` take null for
    /// missing.
    fn add(&mut self, value: Option<Bson>) -> Result<()> {
        match self {
            AccState::Sum(s) => {
                if let Some(v) = &value {
                    s.add(v)?;
                }
            }
            AccState::Avg(s, n) => {
                if let Some(v) = &value
                    && s.add(v)?
                {
                    *n += 1;
                }
            }
            AccState::Min(best) => keep_extreme(best, value, Ordering::Less),
            AccState::Max(best) => keep_extreme(best, value, Ordering::Greater),
            AccState::First(first, seen) => {
                if !*seen {
                    *seen = true;
                    *first = value;
                }
            }
            AccState::Last(last) => *last = value,
            AccState::Push(items) => {
                if let Some(v) = value {
                    items.push(v);
                }
            }
            AccState::AddToSet(items, seen) => {
                if let Some(v) = value
                    && let std::collections::btree_map::Entry::Vacant(slot) =
                        seen.entry(GroupKey(v))
                {
                    items.push(slot.key().0.clone());
                    slot.insert(());
                }
            }
            AccState::MergeObjects(merged) => match value {
                None | Some(Bson::Null) | Some(Bson::Undefined) => {}
                Some(Bson::Document(d)) => {
                    for (k, v) in d {
                        merged.insert(k, v);
                    }
                }
                Some(other) => {
                    return Err(CommandError::location(
                        40400,
                        format!(
                            "$mergeObjects requires object inputs, but input {} is of type {}",
                            render(&other),
                            type_name(&other)
                        ),
                    ));
                }
            },
        }
        Ok(())
    }

    fn finish(self) -> Bson {
        match self {
            AccState::Sum(s) => s.total(),
            AccState::Avg(s, n) => {
                if n == 0 {
                    Bson::Null
                } else {
                    Bson::Double(s.as_f64() / n as f64)
                }
            }
            AccState::Min(v) | AccState::Max(v) => v.unwrap_or(Bson::Null),
            AccState::First(v, _) | AccState::Last(v) => v.unwrap_or(Bson::Null),
            AccState::Push(items) | AccState::AddToSet(items, _) => Bson::Array(items),
            AccState::MergeObjects(d) => Bson::Document(d),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Projections ($project, $unset, $addFields, find projection)
// ---------------------------------------------------------------------------------------------

/// Which projection rules apply: find allows `$slice`/`$elemMatch` and does not descend into
/// nested arrays; aggregation does (mongod's `ProjectionPolicies`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Aggregate,
    Find,
}

#[derive(Debug, Clone)]
enum Node {
    Include,
    Exclude,
    Computed(Operand),
    /// Find's `{$slice: n}` or `{$slice: [skip, n]}`.
    Slice {
        skip: Option<i64>,
        limit: i64,
    },
    /// Find's `{$elemMatch: ...}` on a top-level array field, as the filter
    /// `{field: {$elemMatch: ...}}`.
    ElemMatch(Matcher),
    Nested(Tree),
}

/// One level of a projection: its fields in specification order.
#[derive(Debug, Clone, Default)]
struct Tree {
    children: Vec<(String, Node)>,
    /// True when this level or one below computes values (expressions, `$elemMatch`).
    computed: bool,
}

impl Tree {
    fn get(&self, field: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, n)| n)
    }

    fn get_mut(&mut self, field: &str) -> Option<&mut Node> {
        self.children
            .iter_mut()
            .find(|(k, _)| k == field)
            .map(|(_, n)| n)
    }

    /// Adds `node` at the dotted `path`, rejecting collisions as projection_ast does.
    fn add(&mut self, path: &str, node: Node) -> Result<()> {
        let parts: Vec<&str> = path.split('.').collect();
        self.add_parts(&parts, path, node)
    }

    fn add_parts(&mut self, parts: &[&str], full: &str, node: Node) -> Result<()> {
        let Some((head, rest)) = parts.split_first() else {
            return Ok(());
        };
        if rest.is_empty() {
            if self.get(head).is_some() {
                return Err(CommandError::location(
                    31250,
                    format!("Path collision at {full}"),
                ));
            }
            self.children.push((head.to_string(), node));
            return Ok(());
        }
        if self.get(head).is_none() {
            self.children
                .push((head.to_string(), Node::Nested(Tree::default())));
        }
        match self.get_mut(head) {
            Some(Node::Nested(sub)) => sub.add_parts(rest, full, node),
            _ => Err(CommandError::location(
                31249,
                format!(
                    "Path collision at {full} remaining portion {}",
                    rest.join(".")
                ),
            )),
        }
    }

    /// The nested level at `path`, created when absent (for sub-object specifications).
    fn nested_at(&mut self, path: &str) -> Result<&mut Tree> {
        let mut cur = self;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if cur.get(part).is_none() {
                cur.children
                    .push((part.to_string(), Node::Nested(Tree::default())));
            }
            cur = match cur.get_mut(part) {
                Some(Node::Nested(sub)) => sub,
                _ => {
                    let at = parts[..=i].join(".");
                    return Err(CommandError::location(
                        31250,
                        format!("Path collision at {at}"),
                    ));
                }
            };
        }
        Ok(cur)
    }

    fn remove(&mut self, field: &str) {
        self.children.retain(|(k, _)| k != field);
    }

    fn mark_computed(&mut self) -> bool {
        let mut computed = false;
        for (_, node) in &mut self.children {
            computed |= match node {
                Node::Computed(_) | Node::ElemMatch(_) => true,
                Node::Nested(sub) => sub.mark_computed(),
                _ => false,
            };
        }
        self.computed = computed;
        computed
    }
}

/// A parsed inclusion or exclusion projection.
#[derive(Debug, Clone)]
struct Shape {
    tree: Tree,
    inclusion: bool,
    mode: Mode,
    /// The path of a positional projection (`a.b.$`), without the `$`.
    positional: Option<Vec<String>>,
}

#[derive(Default)]
struct ParseContext {
    /// `Some(true)` inclusion, `Some(false)` exclusion, once a field decides it.
    inclusion: Option<bool>,
    id_specified: bool,
    id_included: bool,
    id_excluded: bool,
    has_slice: bool,
    has_elem_match: bool,
    /// The path of a positional projection (`a.b.$`), without the `$`.
    positional: Option<Vec<String>>,
}

impl Shape {
    /// projection_ast's parser (mongod `projection_parser.cpp`), for both modes.
    fn parse(spec: &Document, mode: Mode) -> Result<Shape> {
        let mut ctx = ParseContext::default();
        let mut tree = Tree::default();
        for (k, v) in spec {
            ctx.id_specified |= k == "_id" || k.starts_with("_id.");
            parse_projection_element(&mut ctx, k, v, &mut tree, true, mode)?;
        }
        let inclusion = match ctx.inclusion {
            Some(i) => i,
            None if ctx.has_slice => ctx.id_included,
            None if ctx.has_elem_match => true,
            None => ctx.id_included,
        };
        let _ = ctx.id_excluded;
        if inclusion && !ctx.id_specified {
            tree.add("_id", Node::Include)?;
        }
        if !inclusion && ctx.id_included {
            tree.remove("_id");
        }
        tree.mark_computed();
        Ok(Shape {
            tree,
            inclusion,
            mode,
            positional: ctx.positional,
        })
    }

    fn apply(&self, doc: &Document, vars: &Variables) -> Result<Document> {
        if self.inclusion {
            let mut out = include_document(&self.tree, doc, self.mode);
            if self.tree.computed {
                apply_computed(&self.tree, &mut out, doc, vars, self.mode)?;
            }
            Ok(out)
        } else {
            exclude_document(&self.tree, doc, doc, vars, self.mode)
        }
    }
}

fn is_positional(key: &str) -> bool {
    key == "$" || key.ends_with(".$") || key.contains(".$.")
}

/// `a.b.$: 1` in a find projection (manual: "$ (projection)"): includes `a.b` and, when
/// applied, keeps only the element of the first array on that path that the query matched.
fn parse_positional(
    ctx: &mut ParseContext,
    key: &str,
    value: &Bson,
    parent: &mut Tree,
    at_root: bool,
    mode: Mode,
) -> Result<()> {
    if mode == Mode::Aggregate {
        return Err(CommandError::location(
            31324,
            "Cannot use positional projection in aggregation projection",
        ));
    }
    if key.contains(".$.") {
        return Err(CommandError::location(
            31394,
            "As of 4.4, it's illegal to specify positional operator in the middle of a path.\
             Positional projection may only be used at the end, for example: a.b.$. If the \
             query previously used a form like a.b.$.d, remove the parts following the '$' \
             and the results will be equivalent.",
        ));
    }
    let include = match value {
        Bson::Document(_) => {
            return Err(CommandError::location(
                31271,
                "positional projection cannot be used with an expression or sub object",
            ));
        }
        Bson::Boolean(b) => *b,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            crate::compare::as_f64(value).is_none_or(|d| d != 0.0)
        }
        _ => {
            return Err(CommandError::location(
                31308,
                "positional projection cannot be used with a literal",
            ));
        }
    };
    if !include {
        return Err(CommandError::location(
            31395,
            "positional projection cannot be used with exclusion",
        ));
    }
    if ctx.positional.is_some() {
        return Err(CommandError::location(
            31276,
            "Cannot specify more than one positional projection per query.",
        ));
    }
    if ctx.has_elem_match {
        return Err(CommandError::location(
            31256,
            "Cannot specify positional operator and $elemMatch.",
        ));
    }
    if !at_root {
        // The path would have to be resolved from the enclosing sub-projection.
        return Err(CommandError::not_supported(
            "positional projection inside a sub-projection is not supported by this server",
        ));
    }
    let Some(path) = key.strip_suffix(".$") else {
        // A bare `$`: not a positional projection but an invalid field name.
        validate_field_path(key)?;
        return Err(CommandError::location(
            16410,
            "FieldPath field names may not start with '$'.",
        ));
    };
    if path.is_empty() {
        return Err(CommandError::location(
            5392900,
            format!("Projection on field {key} is invalid"),
        ));
    }
    validate_field_path(path)?;
    if ctx.inclusion == Some(false) {
        return Err(CommandError::location(
            31253,
            format!("Cannot do inclusion on field {key} in exclusion projection"),
        ));
    }
    parent.add(path, Node::Include)?;
    ctx.inclusion = Some(true);
    if path == "_id" {
        ctx.id_included = true;
    }
    ctx.positional = Some(path.split('.').map(str::to_string).collect());
    Ok(())
}

fn parse_projection_element(
    ctx: &mut ParseContext,
    key: &str,
    value: &Bson,
    parent: &mut Tree,
    at_root: bool,
    mode: Mode,
) -> Result<()> {
    if is_positional(key) {
        return parse_positional(ctx, key, value, parent, at_root, mode);
    }
    validate_field_path(key)?;
    let top_level_id = at_root && key == "_id";
    match value {
        Bson::Document(sub) => {
            if sub.is_empty() {
                return Err(CommandError::location(
                    51270,
                    format!(
                        "An empty sub-projection is not a valid value. Found empty object at \
                         path {key}"
                    ),
                ));
            }
            if sub.len() == 1
                && let Some((op, arg)) = sub.iter().next()
                && op.starts_with('$')
            {
                return parse_projection_expression(ctx, key, op, arg, sub, parent, at_root, mode);
            }
            let nested = parent.nested_at(key)?;
            for (k, v) in sub {
                parse_projection_element(ctx, k, v, nested, false, mode)?;
            }
            Ok(())
        }
        Bson::Boolean(_)
        | Bson::Int32(_)
        | Bson::Int64(_)
        | Bson::Double(_)
        | Bson::Decimal128(_) => {
            let include = match value {
                Bson::Boolean(b) => *b,
                Bson::Int32(i) => *i != 0,
                Bson::Int64(i) => *i != 0,
                Bson::Double(d) => *d != 0.0,
                _ => crate::compare::as_f64(value).is_none_or(|d| d != 0.0),
            };
            if include {
                parent.add(key, Node::Include)?;
                if top_level_id {
                    ctx.id_included = true;
                } else {
                    if ctx.inclusion == Some(false) {
                        return Err(CommandError::location(
                            31253,
                            format!("Cannot do inclusion on field {key} in exclusion projection"),
                        ));
                    }
                    ctx.inclusion = Some(true);
                }
            } else {
                parent.add(key, Node::Exclude)?;
                if top_level_id {
                    ctx.id_excluded = true;
                } else {
                    if ctx.inclusion == Some(true) {
                        return Err(CommandError::location(
                            31254,
                            format!("Cannot do exclusion on field {key} in inclusion projection"),
                        ));
                    }
                    ctx.inclusion = Some(false);
                }
            }
            Ok(())
        }
        _ => {
            let operand = Operand::parse(value)?;
            parent.add(key, Node::Computed(operand))?;
            if ctx.inclusion == Some(false) {
                return Err(CommandError::location(
                    31310,
                    format!(
                        "Cannot use an expression {key}: {} in an exclusion projection",
                        render(value)
                    ),
                ));
            }
            ctx.inclusion = Some(true);
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn parse_projection_expression(
    ctx: &mut ParseContext,
    key: &str,
    op: &str,
    arg: &Bson,
    sub: &Document,
    parent: &mut Tree,
    at_root: bool,
    mode: Mode,
) -> Result<()> {
    if op == "$meta" {
        return Err(CommandError::not_supported(
            "$meta projections are not supported by this server",
        ));
    }
    if mode == Mode::Find
        && op == "$slice"
        && let Some(node) = parse_find_slice(arg)?
    {
        parent.add(key, node)?;
        ctx.has_slice = true;
        return Ok(());
    }
    if op == "$elemMatch" {
        if mode == Mode::Aggregate {
            return Err(CommandError::new(
                error::INVALID_PIPELINE_OPERATOR,
                "Cannot use $elemMatch in this context",
            ));
        }
        let Bson::Document(_) = arg else {
            return Err(CommandError::location(
                31274,
                format!(
                    "elemMatch: Invalid argument, object required, but got {}",
                    type_name(arg)
                ),
            ));
        };
        if !at_root || key.contains('.') {
            return Err(CommandError::location(
                31275,
                "Cannot use $elemMatch projection on a nested field.",
            ));
        }
        if ctx.positional.is_some() {
            return Err(CommandError::location(
                31255,
                "Cannot specify positional operator and $elemMatch.",
            ));
        }
        let matcher = Matcher::parse(&doc! { key: { "$elemMatch": arg.clone() } })?;
        parent.add(key, Node::ElemMatch(matcher))?;
        ctx.has_elem_match = true;
        return Ok(());
    }
    let operand = match Operand::parse(&Bson::Document(sub.clone())) {
        Ok(o) => o,
        Err(e) if e.code == error::INVALID_PIPELINE_OPERATOR.code && e.errmsg.contains(op) => {
            return Err(CommandError::location(
                31325,
                format!("Unknown expression {op}"),
            ));
        }
        Err(e) => return Err(e),
    };
    if ctx.inclusion == Some(false) {
        return Err(CommandError::location(
            31252,
            "Cannot use expression other than $meta in exclusion projection",
        ));
    }
    ctx.inclusion = Some(true);
    parent.add(key, Node::Computed(operand))
}

/// Find's own `$slice` forms; `None` when the argument is not one of them (then it is the
/// `$slice` expression).
fn parse_find_slice(arg: &Bson) -> Result<Option<Node>> {
    if let Some(n) = crate::compare::as_f64(arg) {
        return Ok(Some(Node::Slice {
            skip: None,
            limit: n as i32 as i64,
        }));
    }
    let Bson::Array(a) = arg else {
        return Err(CommandError::location(
            31273,
            "$slice only supports numbers and [skip, limit] arrays",
        ));
    };
    if a.len() != 2 {
        // Three-argument forms are the `$slice` expression.
        if a.len() == 3 {
            return Ok(None);
        }
        return Err(CommandError::location(
            31272,
            "$slice array argument should be of form [skip, limit]",
        ));
    }
    let (Some(skip), Some(limit)) = (crate::compare::as_f64(&a[0]), crate::compare::as_f64(&a[1]))
    else {
        // `[array expression, n]` is the `$slice` expression.
        return Ok(None);
    };
    let limit = limit as i32;
    if limit <= 0 {
        return Err(CommandError::location(
            31259,
            format!("$slice limit must be positive, got {limit}"),
        ));
    }
    Ok(Some(Node::Slice {
        skip: Some(skip as i32 as i64),
        limit: i64::from(limit),
    }))
}

/// `$slice` of find: arrays are cut, anything else is returned as it is.
fn slice_value(v: &Bson, skip: Option<i64>, limit: i64) -> Bson {
    let Bson::Array(a) = v else {
        return v.clone();
    };
    let len = a.len() as i64;
    let (start, count) = match skip {
        None if limit >= 0 => (0, limit),
        None => ((len + limit).max(0), len),
        Some(s) if s < 0 => ((len + s).max(0), limit),
        Some(s) => (s.min(len), limit),
    };
    let start = usize::try_from(start).unwrap_or(0);
    let count = usize::try_from(count).unwrap_or(0);
    Bson::Array(a.iter().skip(start).take(count).cloned().collect())
}

fn elem_match_value(
    field: &str,
    m: &Matcher,
    root: &Document,
    vars: &Variables,
) -> Result<Option<Bson>> {
    let Some(Bson::Array(items)) = root.get(field) else {
        return Ok(None);
    };
    for item in items {
        let probe = doc! { field: [item.clone()] };
        if m.matches(&probe, vars)? {
            return Ok(Some(Bson::Array(vec![item.clone()])));
        }
    }
    Ok(None)
}

/// The included fields of `input`, in the input's order (mongod `InclusionNode`).
fn include_document(tree: &Tree, input: &Document, mode: Mode) -> Document {
    let mut out = Document::new();
    for (k, v) in input {
        match tree.get(k) {
            Some(Node::Include) => {
                out.insert(k.clone(), v.clone());
            }
            Some(Node::Nested(sub)) => {
                if let Some(projected) = include_value(sub, v, mode) {
                    out.insert(k.clone(), projected);
                }
            }
            Some(Node::Slice { skip, limit }) => {
                out.insert(k.clone(), slice_value(v, *skip, *limit));
            }
            _ => {}
        }
    }
    out
}

fn include_value(tree: &Tree, v: &Bson, mode: Mode) -> Option<Bson> {
    match v {
        Bson::Document(d) => Some(Bson::Document(include_document(tree, d, mode))),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|item| match item {
                    Bson::Array(_) if mode == Mode::Find => None,
                    other => include_value(tree, other, mode),
                })
                .collect(),
        )),
        _ => None,
    }
}

/// `input` without the excluded fields (mongod `ExclusionNode`); find's `$slice` and
/// `$elemMatch` apply in place.
fn exclude_document(
    tree: &Tree,
    input: &Document,
    root: &Document,
    vars: &Variables,
    mode: Mode,
) -> Result<Document> {
    let mut out = Document::new();
    for (k, v) in input {
        match tree.get(k) {
            Some(Node::Exclude) => {}
            Some(Node::Nested(sub)) => {
                out.insert(k.clone(), exclude_value(sub, v, root, vars, mode)?);
            }
            Some(Node::Slice { skip, limit }) => {
                out.insert(k.clone(), slice_value(v, *skip, *limit));
            }
            Some(Node::ElemMatch(m)) => {
                if let Some(found) = elem_match_value(k, m, root, vars)? {
                    out.insert(k.clone(), found);
                }
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

fn exclude_value(
    tree: &Tree,
    v: &Bson,
    root: &Document,
    vars: &Variables,
    mode: Mode,
) -> Result<Bson> {
    match v {
        Bson::Document(d) => Ok(Bson::Document(exclude_document(tree, d, root, vars, mode)?)),
        Bson::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(match item {
                    Bson::Array(_) if mode == Mode::Find => item.clone(),
                    other => exclude_value(tree, other, root, vars, mode)?,
                });
            }
            Ok(Bson::Array(out))
        }
        other => Ok(other.clone()),
    }
}

/// Sets the computed fields of `tree` into `out`, in specification order (mongod
/// `ProjectionNode::applyExpressions`): an existing field keeps its place, a new one is
/// appended, a missing result removes the field. Expressions see the whole input document.
fn apply_computed(
    tree: &Tree,
    out: &mut Document,
    root: &Document,
    vars: &Variables,
    mode: Mode,
) -> Result<()> {
    for (k, node) in &tree.children {
        let value = match node {
            Node::Computed(op) => op.eval(root, vars)?,
            Node::ElemMatch(m) => elem_match_value(k, m, root, vars)?,
            Node::Nested(sub) if sub.computed => {
                computed_value(sub, out.get(k).cloned(), root, vars, mode)?
            }
            _ => continue,
        };
        match value {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                out.remove(k);
            }
        }
    }
    Ok(())
}

/// A nested level's computed fields applied to the current value: into a document, into each
/// element of an array, and in place of anything else ("Adding Fields to an Embedded
/// Document" in the `$addFields` manual page).
fn computed_value(
    tree: &Tree,
    current: Option<Bson>,
    root: &Document,
    vars: &Variables,
    mode: Mode,
) -> Result<Option<Bson>> {
    match current {
        Some(Bson::Document(mut d)) => {
            apply_computed(tree, &mut d, root, vars, mode)?;
            Ok(Some(Bson::Document(d)))
        }
        Some(Bson::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let projected = match item {
                    Bson::Array(_) if mode == Mode::Find => None,
                    other => computed_value(tree, Some(other), root, vars, mode)?,
                };
                out.extend(projected);
            }
            Ok(Some(Bson::Array(out)))
        }
        _ => {
            let mut d = Document::new();
            apply_computed(tree, &mut d, root, vars, mode)?;
            Ok(Some(Bson::Document(d)))
        }
    }
}

/// `$addFields`/`$set` (mongod `AddFieldsProjectionExecutor` and its spec validator).
fn parse_add_fields(spec: &Document) -> Result<Tree> {
    if spec.is_empty() {
        return Err(CommandError::location(
            40177,
            "specification must have at least one field",
        ));
    }
    let mut parser = AddFieldsParser {
        raw: spec,
        seen: Vec::new(),
        tree: Tree::default(),
    };
    for (k, v) in spec {
        validate_field_path(k)?;
        parser.add(k, v)?;
    }
    let mut tree = parser.tree;
    tree.mark_computed();
    Ok(tree)
}

struct AddFieldsParser<'a> {
    raw: &'a Document,
    seen: Vec<String>,
    tree: Tree,
}

impl AddFieldsParser<'_> {
    fn add(&mut self, path: &str, v: &Bson) -> Result<()> {
        let Bson::Document(sub) = v else {
            self.claim(path)?;
            return self.tree.add(path, Node::Computed(Operand::parse(v)?));
        };
        if sub.is_empty() {
            return Err(CommandError::location(
                40180,
                format!("an empty object is not a valid value. Found empty object at path {path}"),
            ));
        }
        if sub.keys().any(|k| k.starts_with('$')) {
            if sub.len() != 1 {
                return Err(CommandError::location(
                    40181,
                    format!(
                        "an expression specification must contain exactly one field, the name \
                         of the expression. Found {} fields in {}, while parsing object {}",
                        sub.len(),
                        render_document(sub),
                        render_document(self.raw)
                    ),
                ));
            }
            self.claim(path)?;
            return self.tree.add(path, Node::Computed(Operand::parse(v)?));
        }
        for (k, inner) in sub {
            if k.contains('.') {
                return Err(CommandError::location(
                    40183,
                    format!(
                        "cannot use dotted field name '{k}' in a sub object: {}",
                        render_document(self.raw)
                    ),
                ));
            }
            validate_field_path(k)?;
            self.add(&format!("{path}.{k}"), inner)?;
        }
        Ok(())
    }

    /// Rejects a path equal to, or a prefix of, one already specified (40176).
    fn claim(&mut self, path: &str) -> Result<()> {
        let prefix_of = |a: &str, b: &str| {
            b.len() > a.len() && b.starts_with(a) && b.as_bytes()[a.len()] == b'.'
        };
        if let Some(other) = self
            .seen
            .iter()
            .find(|p| p.as_str() == path || prefix_of(p, path) || prefix_of(path, p))
        {
            return Err(CommandError::location(
                40176,
                format!(
                    "specification contains two conflicting paths. Cannot specify both '{path}' \
                     and '{other}': {}",
                    render_document(self.raw)
                ),
            ));
        }
        self.seen.push(path.to_string());
        Ok(())
    }
}

/// `$unset` is an exclusion `$project` of the named paths (manual: "$unset (aggregation)").
fn parse_unset(v: &Bson) -> Result<Shape> {
    let paths: Vec<&str> = match v {
        Bson::String(s) => vec![s.as_str()],
        Bson::Array(items) => {
            if items.is_empty() {
                return Err(CommandError::location(
                    31119,
                    "$unset specification must be a string or an array with at least one field",
                ));
            }
            items
                .iter()
                .map(|i| match i {
                    Bson::String(s) => Ok(s.as_str()),
                    _ => Err(CommandError::location(
                        31120,
                        "$unset specification must be a string or an array containing only \
                         string values",
                    )),
                })
                .collect::<Result<_>>()?
        }
        _ => {
            return Err(CommandError::location(
                31002,
                "$unset specification must be a string or an array",
            ));
        }
    };
    let mut spec = Document::new();
    for p in paths {
        spec.insert(p, 0);
    }
    Shape::parse(&spec, Mode::Aggregate).map_err(|e| invalid_stage("$unset", e))
}

// ---------------------------------------------------------------------------------------------
// Rendering values in error messages the way mongod prints BSON
// ---------------------------------------------------------------------------------------------

fn render(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("\"{s}\""),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e15 => {
            format!("{d:.1}")
        }
        Bson::Double(d) => d.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::Document(d) => render_document(d),
        Bson::Array(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(", ")
        ),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        other => other.to_string(),
    }
}

fn render_document(d: &Document) -> String {
    if d.is_empty() {
        return "{}".to_string();
    }
    format!(
        "{{{}}}",
        d.iter()
            .map(|(k, v)| format!("{k}: {}", render(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, bson, doc};

    fn vars() -> Variables {
        Variables::default()
    }

    fn run(pipeline: Bson, input: Vec<Document>) -> Result<Vec<Document>> {
        let Bson::Array(stages) = pipeline else {
            panic!("pipeline literal must be an array");
        };
        Pipeline::parse(&stages)?.run(input, &vars())
    }

    fn parse_err(pipeline: Bson) -> CommandError {
        let Bson::Array(stages) = pipeline else {
            panic!("pipeline literal must be an array");
        };
        Pipeline::parse(&stages).unwrap_err()
    }

    fn project(spec: Document, d: Document) -> Document {
        Projection::parse(&spec)
            .unwrap()
            .apply(&d, &vars())
            .unwrap()
    }

    fn project_err(spec: Document) -> CommandError {
        Projection::parse(&spec).unwrap_err()
    }

    fn project_matched(spec: Document, query: Document, d: Document) -> Result<Document> {
        let matcher = Matcher::parse(&query).unwrap();
        Projection::parse(&spec)
            .unwrap()
            .apply_matched(&d, &vars(), &matcher)
    }

    #[test]
    fn positional_projection_keeps_the_matched_element() {
        let d = doc! {"_id": 1, "x": 5, "a": [{"k": 1, "v": 1}, {"k": 2, "v": 2}]};
        assert_eq!(
            project_matched(doc! {"a.$": 1}, doc! {"a.k": 2}, d.clone()).unwrap(),
            doc! {"_id": 1, "a": [{"k": 2, "v": 2}]}
        );
        // The first array on the path is the one cut down, to the included fields.
        assert_eq!(
            project_matched(doc! {"a.v.$": 1, "_id": 0}, doc! {"a.k": 2}, d.clone()).unwrap(),
            doc! {"a": [{"v": 2}]}
        );
        // No array on the path: the projection is a plain inclusion.
        assert_eq!(
            project_matched(doc! {"x.$": 1}, doc! {"x": 5}, d.clone()).unwrap(),
            doc! {"_id": 1, "x": 5}
        );
        let e = project_matched(doc! {"a.$": 1}, doc! {"_id": 1}, d).unwrap_err();
        assert_eq!(e.code, 51246);
    }

    #[test]
    fn positional_projection_rules() {
        let e = project_err(doc! {"a.$": 1, "b.$": 1});
        assert_eq!(e.code, 31276);
        let e = project_err(doc! {"a.$.b": 1});
        assert_eq!(e.code, 31394);
        let e = project_err(doc! {"a.$": 0});
        assert_eq!(e.code, 31395);
        let e = project_err(doc! {"a.$": {"$size": "$a"}});
        assert_eq!(e.code, 31271);
        let e = project_err(doc! {"a.$": "x"});
        assert_eq!(e.code, 31308);
        let e = project_err(doc! {"b": {"$elemMatch": {"c": 1}}, "a.$": 1});
        assert_eq!(e.code, 31256);
        let e = project_err(doc! {"a.$": 1, "b": {"$elemMatch": {"c": 1}}});
        assert_eq!(e.code, 31255);
        let e = project_err(doc! {"b": 0, "a.$": 1});
        assert_eq!(e.code, 31253);
    }

    // --- pipeline validation ---

    #[test]
    fn stage_must_have_exactly_one_field() {
        let e = parse_err(bson!([{"$match": {}, "$limit": 1}]));
        assert_eq!(e.code, 40323);
        assert_eq!(
            e.errmsg,
            "A pipeline stage specification object must contain exactly one field."
        );
        assert_eq!(parse_err(bson!([{}])).code, 40323);
    }

    #[test]
    fn non_object_stage_is_type_mismatch() {
        assert_eq!(parse_err(bson!([1])).code, 14);
    }

    #[test]
    fn unknown_stage_is_40324() {
        let e = parse_err(bson!([{"$foo": 1}]));
        assert_eq!(e.code, 40324);
        assert_eq!(e.errmsg, "Unrecognized pipeline stage name: '$foo'");
    }

    #[test]
    fn stages_needing_other_collections_are_not_supported() {
        for stage in ["$lookup", "$facet", "$out", "$merge", "$sample", "$redact"] {
            let e = parse_err(bson!([{stage: {}}]));
            assert_eq!(e.code, 115, "{stage}");
            assert!(e.errmsg.contains(stage), "{}", e.errmsg);
        }
    }

    #[test]
    fn change_stream_is_only_valid_first() {
        let e = parse_err(bson!([{"$match": {}}, {"$changeStream": {}}]));
        assert_eq!(e.code, 40602);
        assert_eq!(
            e.errmsg,
            "$changeStream is only valid as the first stage in a pipeline."
        );
    }

    #[test]
    fn every_stage_is_validated_before_running() {
        // The bad $limit comes after a valid stage and no document is processed.
        let e = parse_err(bson!([{"$skip": 0}, {"$limit": 0}]));
        assert_eq!(e.code, 15958);
    }

    #[test]
    fn stage_names_in_order() {
        let p = Pipeline::parse(&[bson!({"$match": {}}), bson!({"$limit": 2})]).unwrap();
        assert_eq!(p.stage_names(), vec!["$match", "$limit"]);
    }

    #[test]
    fn empty_pipeline_returns_input() {
        let input = vec![doc! {"_id": 1}];
        assert_eq!(run(bson!([]), input.clone()).unwrap(), input);
    }

    // --- $match ---

    #[test]
    fn match_requires_an_object() {
        assert_eq!(parse_err(bson!([{"$match": 1}])).code, 15959);
    }

    #[test]
    fn empty_match_keeps_everything() {
        let input = vec![doc! {"_id": 1}, doc! {"_id": 2}];
        assert_eq!(run(bson!([{"$match": {}}]), input.clone()).unwrap(), input);
    }

    // --- $limit / $skip ---

    #[test]
    fn limit_and_skip() {
        let input: Vec<Document> = (0..5).map(|i| doc! {"_id": i}).collect();
        let out = run(bson!([{"$skip": 1}, {"$limit": 2}]), input).unwrap();
        assert_eq!(out, vec![doc! {"_id": 1}, doc! {"_id": 2}]);
    }

    #[test]
    fn limit_must_be_positive() {
        let e = parse_err(bson!([{"$limit": 0}]));
        assert_eq!(e.code, 15958);
        assert_eq!(e.errmsg, "the limit must be positive");
        let e = parse_err(bson!([{"$limit": -1}]));
        assert_eq!(e.code, 5107201);
        assert_eq!(
            e.errmsg,
            "invalid argument to $limit stage: Expected a non-negative number in: $limit: -1"
        );
    }

    #[test]
    fn skip_must_be_a_non_negative_integer() {
        let e = parse_err(bson!([{"$skip": -1}]));
        assert_eq!(e.code, 5107200);
        assert_eq!(
            e.errmsg,
            "invalid argument to $skip stage: Expected a non-negative number in: $skip: -1"
        );
        let e = parse_err(bson!([{"$skip": "x"}]));
        assert_eq!(
            e.errmsg,
            "invalid argument to $skip stage: Expected a number in: $skip: \"x\""
        );
        let e = parse_err(bson!([{"$skip": 1.5}]));
        assert_eq!(
            e.errmsg,
            "invalid argument to $skip stage: Expected an integer: $skip: 1.5"
        );
        assert!(Pipeline::parse(&[bson!({"$skip": 2.0})]).is_ok());
    }

    // --- $sort / SortSpec ---

    #[test]
    fn sort_is_stable_and_multi_key() {
        let input = vec![
            doc! {"_id": 1, "a": 2, "b": 1},
            doc! {"_id": 2, "a": 1, "b": 1},
            doc! {"_id": 3, "a": 2, "b": 0},
            doc! {"_id": 4, "a": 1, "b": 1},
        ];
        let out = run(bson!([{"$sort": {"b": -1}}]), input.clone()).unwrap();
        let ids: Vec<_> = out.iter().map(|d| d.get_i32("_id").unwrap()).collect();
        assert_eq!(ids, vec![1, 2, 4, 3]);
        let out = run(bson!([{"$sort": {"a": 1, "b": 1}}]), input).unwrap();
        let ids: Vec<_> = out.iter().map(|d| d.get_i32("_id").unwrap()).collect();
        assert_eq!(ids, vec![2, 4, 3, 1]);
    }

    #[test]
    fn sort_errors() {
        let e = parse_err(bson!([{"$sort": {}}]));
        assert_eq!(e.code, 15976);
        assert_eq!(e.errmsg, "$sort stage must have at least one sort key");
        let e = parse_err(bson!([{"$sort": {"a": 2}}]));
        assert_eq!(e.code, 15975);
        assert_eq!(
            e.errmsg,
            "$sort key ordering must be 1 (for ascending) or -1 (for descending)"
        );
        assert_eq!(parse_err(bson!([{"$sort": {"a": "x"}}])).code, 15974);
        assert_eq!(parse_err(bson!([{"$sort": 1}])).code, 15973);
        assert_eq!(
            parse_err(bson!([{"$sort": {"s": {"$meta": "textScore"}}}])).code,
            115
        );
        assert_eq!(parse_err(bson!([{"$sort": {"s": {"x": 1}}}])).code, 17312);
    }

    #[test]
    fn missing_sorts_as_null_and_types_follow_bson_order() {
        let spec = SortSpec::parse(&doc! {"a": 1}).unwrap();
        let missing = doc! {};
        let null = doc! {"a": Bson::Null};
        let num = doc! {"a": 1};
        let s = doc! {"a": "x"};
        assert_eq!(spec.compare(&missing, &null), Ordering::Equal);
        assert_eq!(spec.compare(&null, &num), Ordering::Less);
        assert_eq!(spec.compare(&num, &s), Ordering::Less);
    }

    #[test]
    fn arrays_sort_by_smallest_ascending_and_largest_descending() {
        let a = doc! {"_id": "a", "x": [1, 10]};
        let b = doc! {"_id": "b", "x": 5};
        let asc = SortSpec::parse(&doc! {"x": 1}).unwrap();
        let desc = SortSpec::parse(&doc! {"x": -1}).unwrap();
        assert_eq!(asc.compare(&a, &b), Ordering::Less);
        assert_eq!(desc.compare(&a, &b), Ordering::Less);
        // An empty array sorts below null.
        let empty = doc! {"x": []};
        let null = doc! {"x": Bson::Null};
        assert_eq!(asc.compare(&empty, &null), Ordering::Less);
    }

    #[test]
    fn sort_follows_dotted_paths_through_arrays() {
        let spec = SortSpec::parse(&doc! {"a.b": 1}).unwrap();
        let x = doc! {"a": [{"b": 7}, {"b": 2}]};
        let y = doc! {"a": {"b": 3}};
        assert_eq!(spec.compare(&x, &y), Ordering::Less);
    }

    #[test]
    fn natural_is_exposed_not_compared() {
        let spec = SortSpec::parse(&doc! {"$natural": -1}).unwrap();
        assert!(spec.has_natural());
        assert_eq!(spec.natural_ascending(), Some(false));
        assert_eq!(
            spec.compare(&doc! {"a": 1}, &doc! {"a": 2}),
            Ordering::Equal
        );
        assert!(!SortSpec::parse(&doc! {"a": 1}).unwrap().has_natural());
        assert_eq!(SortSpec::parse(&doc! {"a": 0}).unwrap_err().code, 15975);
    }

    // --- $project ---

    #[test]
    fn project_inclusion_keeps_id_and_input_order() {
        let out = run(
            bson!([{"$project": {"b": 1, "a": 1}}]),
            vec![doc! {"_id": 1, "a": 1, "b": 2, "c": 3}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": 1, "a": 1, "b": 2}]);
        let out = run(
            bson!([{"$project": {"_id": 0, "a": true}}]),
            vec![doc! {"_id": 1, "a": 1, "b": 2}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"a": 1}]);
    }

    #[test]
    fn project_exclusion() {
        let out = run(
            bson!([{"$project": {"b": 0, "c.d": 0}}]),
            vec![doc! {"_id": 1, "a": 1, "b": 2, "c": {"d": 1, "e": 2}}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": 1, "a": 1, "c": {"e": 2}}]);
        let out = run(
            bson!([{"$project": {"_id": 0}}]),
            vec![doc! {"_id": 1, "a": 1}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"a": 1}]);
    }

    #[test]
    fn project_nested_and_dotted_inclusion_through_arrays() {
        let input = doc! {"_id": 1, "a": [1, {"b": 2, "c": 3}, [{"b": 4}]], "d": {"b": 5, "c": 6}};
        let out = run(
            bson!([{"$project": {"a.b": 1, "d": {"c": 1}}}]),
            vec![input],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": 1, "a": [{"b": 2}, [{"b": 4}]], "d": {"c": 6}}]
        );
    }

    #[test]
    fn project_computed_fields_come_after_included_ones() {
        let out = run(
            bson!([{"$project": {"x": "$a.b", "a": 1, "lit": "hello", "r": "$$ROOT.k", "gone": "$$REMOVE"}}]),
            vec![doc! {"_id": 1, "k": 9, "a": {"b": 5}}],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": 1, "a": {"b": 5}, "x": 5, "lit": "hello", "r": 9}]
        );
    }

    #[test]
    fn project_field_path_maps_over_arrays_and_drops_missing() {
        let out = run(
            bson!([{"$project": {"_id": 0, "v": "$a.b", "m": "$nope"}}]),
            vec![doc! {"a": [{"b": 1}, {"c": 2}, 3, {"b": 4}]}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"v": [1, 4]}]);
    }

    #[test]
    fn project_mixing_errors() {
        let e = parse_err(bson!([{"$project": {"a": 1, "b": 0}}]));
        assert_eq!(e.code, 31254);
        assert_eq!(
            e.errmsg,
            "Invalid $project :: caused by :: Cannot do exclusion on field b in inclusion projection"
        );
        let e = parse_err(bson!([{"$project": {"a": 0, "b": 1}}]));
        assert_eq!(e.code, 31253);
        assert!(
            e.errmsg
                .ends_with("Cannot do inclusion on field b in exclusion projection")
        );
        let e = parse_err(bson!([{"$project": {"a": 0, "b": "$x"}}]));
        assert_eq!(e.code, 31310);
        // _id may be excluded in an inclusion projection and included in an exclusion one.
        assert!(Pipeline::parse(&[bson!({"$project": {"_id": 0, "a": 1}})]).is_ok());
        assert!(Pipeline::parse(&[bson!({"$project": {"_id": 1, "a": 0}})]).is_ok());
    }

    #[test]
    fn project_spec_errors() {
        let e = parse_err(bson!([{"$project": {}}]));
        assert_eq!(e.code, 51272);
        assert!(
            e.errmsg
                .ends_with("projection specification must have at least one field")
        );
        assert_eq!(parse_err(bson!([{"$project": 1}])).code, 15969);
        assert_eq!(
            parse_err(bson!([{"$project": {"a": 1, "a.b": 1}}])).code,
            31249
        );
        assert_eq!(
            parse_err(bson!([{"$project": {"a.b": 1, "a": 1}}])).code,
            31250
        );
        assert_eq!(parse_err(bson!([{"$project": {"$a": 1}}])).code, 16410);
        assert_eq!(parse_err(bson!([{"$project": {"a.$": 1}}])).code, 31324);
        assert_eq!(parse_err(bson!([{"$project": {"a": {}}}])).code, 51270);
        assert_eq!(parse_err(bson!([{"$project": {"a": "$"}}])).code, 16872);
        assert_eq!(
            parse_err(bson!([{"$project": {"a": {"$elemMatch": {}}}}])).code,
            168
        );
    }

    #[test]
    fn project_nested_computed_into_scalars_and_arrays() {
        let out = run(
            bson!([{"$project": {"a.x": "lit"}}]),
            vec![
                doc! {"_id": 1, "a": 5},
                doc! {"_id": 2, "a": [{"y": 1}, 2]},
                doc! {"_id": 3},
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                doc! {"_id": 1, "a": {"x": "lit"}},
                // The inclusion pass drops the scalar element before the value is computed.
                doc! {"_id": 2, "a": [{"x": "lit"}]},
                doc! {"_id": 3, "a": {"x": "lit"}},
            ]
        );
    }

    // --- $addFields / $set ---

    #[test]
    fn add_fields_overwrites_in_place_and_appends_new() {
        let out = run(
            bson!([{"$addFields": {"a": 10, "z": "$b"}}]),
            vec![doc! {"_id": 1, "a": 1, "b": 2}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": 1, "a": 10, "b": 2, "z": 2}]);
    }

    #[test]
    fn add_fields_merges_into_embedded_documents() {
        // Manual "$addFields": Adding Fields to an Embedded Document.
        let input = vec![doc! {"_id": 1, "specs": {"doors": 4, "wheels": 4}}];
        let dotted = run(
            bson!([{"$addFields": {"specs.fuel_type": "unleaded"}}]),
            input.clone(),
        )
        .unwrap();
        let nested = run(
            bson!([{"$set": {"specs": {"fuel_type": "unleaded"}}}]),
            input,
        )
        .unwrap();
        let expected =
            vec![doc! {"_id": 1, "specs": {"doors": 4, "wheels": 4, "fuel_type": "unleaded"}}];
        assert_eq!(dotted, expected);
        assert_eq!(nested, expected);
    }

    #[test]
    fn add_fields_remove_and_root() {
        let out = run(
            bson!([{"$set": {"a": "$$REMOVE", "copy": "$$ROOT"}}]),
            vec![doc! {"_id": 1, "a": 1}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": 1, "copy": {"_id": 1, "a": 1}}]);
    }

    #[test]
    fn add_fields_into_array_elements() {
        let out = run(
            bson!([{"$addFields": {"a.b": 1}}]),
            vec![doc! {"_id": 1, "a": [{"c": 1}, 2]}],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": 1, "a": [{"c": 1, "b": 1}, {"b": 1}]}]
        );
    }

    #[test]
    fn add_fields_errors() {
        assert_eq!(parse_err(bson!([{"$addFields": 1}])).code, 40272);
        let e = parse_err(bson!([{"$set": {"a": {"b.c": 1}}}]));
        assert_eq!(e.code, 40183);
        assert!(e.errmsg.starts_with("Invalid $set :: caused by :: "));
        assert_eq!(parse_err(bson!([{"$set": {"a": {}}}])).code, 40180);
        assert_eq!(
            parse_err(bson!([{"$set": {"a": {"$add": [], "b": 1}}}])).code,
            40181
        );
        let e = parse_err(bson!([{"$addFields": {}}]));
        assert_eq!(e.code, 40177);
        assert_eq!(
            e.errmsg,
            "Invalid $addFields :: caused by :: specification must have at least one field"
        );
        let e = parse_err(bson!([{"$set": {"a": 1, "a.b": 1}}]));
        assert_eq!(e.code, 40176);
        assert!(
            e.errmsg.contains("Cannot specify both 'a.b' and 'a'"),
            "{}",
            e.errmsg
        );
        assert_eq!(
            parse_err(bson!([{"$set": {"a": {"b": 1}, "a.b": 2}}])).code,
            40176
        );
    }

    // --- $unset ---

    #[test]
    fn unset_string_or_array() {
        let input = vec![doc! {"_id": 1, "a": 1, "b": {"c": 1, "d": 2}}];
        let out = run(bson!([{"$unset": "a"}]), input.clone()).unwrap();
        assert_eq!(out, vec![doc! {"_id": 1, "b": {"c": 1, "d": 2}}]);
        let out = run(bson!([{"$unset": ["_id", "b.c"]}]), input).unwrap();
        assert_eq!(out, vec![doc! {"a": 1, "b": {"d": 2}}]);
    }

    #[test]
    fn unset_errors() {
        assert_eq!(parse_err(bson!([{"$unset": 1}])).code, 31002);
        assert_eq!(parse_err(bson!([{"$unset": []}])).code, 31119);
        assert_eq!(parse_err(bson!([{"$unset": ["a", 1]}])).code, 31120);
    }

    // --- $group ---

    fn sales() -> Vec<Document> {
        vec![
            doc! {"_id": 1, "item": "a", "qty": 2, "price": 10.0, "tags": {"x": 1}},
            doc! {"_id": 2, "item": "b", "qty": 1, "price": 20.0},
            doc! {"_id": 3, "item": "a", "qty": 3, "tags": {"y": 2}},
            doc! {"_id": 4, "item": "a", "qty": "n/a"},
        ]
    }

    #[test]
    fn group_accumulators() {
        let out = run(
            bson!([{"$group": {
                "_id": "$item",
                "total": {"$sum": "$qty"},
                "n": {"$sum": 1},
                "avg": {"$avg": "$qty"},
                "min": {"$min": "$price"},
                "max": {"$max": "$qty"},
                "first": {"$first": "$price"},
                "last": {"$last": "$price"},
                "ids": {"$push": "$_id"},
                "prices": {"$addToSet": "$price"},
                "count": {"$count": {}},
                "tags": {"$mergeObjects": "$tags"},
            }}]),
            sales(),
        )
        .unwrap();
        assert_eq!(
            out[0],
            doc! {
                "_id": "a", "total": 5, "n": 3, "avg": 2.5, "min": 10.0, "max": "n/a",
                "first": 10.0, "last": Bson::Null, "ids": [1, 3, 4], "prices": [10.0],
                "count": 3, "tags": {"x": 1, "y": 2},
            }
        );
        assert_eq!(out[1].get("_id"), Some(&Bson::String("b".into())));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn group_by_null_and_numeric_equality() {
        let out = run(
            bson!([{"$group": {"_id": Bson::Null, "c": {"$sum": 1}}}]),
            sales(),
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": Bson::Null, "c": 4}]);
        let out = run(
            bson!([{"$group": {"_id": "$k", "c": {"$sum": 1}}}]),
            vec![
                doc! {"k": 1},
                doc! {"k": 1.0},
                doc! {"k": 1i64},
                doc! {},
                doc! {"k": Bson::Null},
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": 1, "c": 3}, doc! {"_id": Bson::Null, "c": 2}]
        );
    }

    #[test]
    fn group_sum_widens_and_avg_of_nothing_is_null() {
        let out = run(
            bson!([{"$group": {"_id": 0, "s": {"$sum": "$v"}, "a": {"$avg": "$none"}, "m": {"$min": "$none"}}}]),
            vec![doc! {"v": i32::MAX}, doc! {"v": 1}],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": 0, "s": i64::from(i32::MAX) + 1, "a": Bson::Null, "m": Bson::Null}]
        );
        let out = run(
            bson!([{"$group": {"_id": 0, "s": {"$sum": "$v"}}}]),
            vec![doc! {"v": 1}, doc! {"v": 0.5}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": 0, "s": 1.5}]);
    }

    #[test]
    fn group_on_empty_input_emits_nothing() {
        let out = run(
            bson!([{"$group": {"_id": Bson::Null, "c": {"$sum": 1}}}]),
            vec![],
        )
        .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn group_errors() {
        let e = parse_err(bson!([{"$group": {"c": {"$sum": 1}}}]));
        assert_eq!(e.code, 15955);
        assert_eq!(e.errmsg, "a group specification must include an _id");
        let e = parse_err(bson!([{"$group": {"_id": Bson::Null, "c": {"$foo": 1}}}]));
        assert_eq!(e.code, 15952);
        assert_eq!(e.errmsg, "unknown group operator '$foo'");
        let e = parse_err(bson!([{"$group": {"_id": Bson::Null, "a.b": {"$sum": 1}}}]));
        assert_eq!(e.code, 40235);
        assert_eq!(e.errmsg, "The field name 'a.b' cannot contain '.'");
        assert_eq!(
            parse_err(bson!([{"$group": {"_id": Bson::Null, "c": 1}}])).code,
            40234
        );
        assert_eq!(
            parse_err(bson!([{"$group": {"_id": Bson::Null, "c": {"$sum": 1, "$avg": 1}}}])).code,
            40238
        );
        assert_eq!(
            parse_err(bson!([{"$group": {"_id": Bson::Null, "c": {"$sum": [1]}}}])).code,
            40237
        );
        assert_eq!(
            parse_err(bson!([{"$group": {"_id": Bson::Null, "c": {"$count": 1}}}])).code,
            14
        );
        assert_eq!(
            parse_err(bson!([{"$group": {"_id": Bson::Null, "c": {"$topN": {}}}}])).code,
            115
        );
        assert_eq!(parse_err(bson!([{"$group": 1}])).code, 15947);
    }

    #[test]
    fn merge_objects_rejects_non_documents() {
        let e = run(
            bson!([{"$group": {"_id": Bson::Null, "m": {"$mergeObjects": "$a"}}}]),
            vec![doc! {"a": 1}],
        )
        .unwrap_err();
        assert_eq!(e.code, 40400);
    }

    // --- $count ---

    #[test]
    fn count_stage() {
        let out = run(bson!([{"$count": "n"}]), sales()).unwrap();
        assert_eq!(out, vec![doc! {"n": 4}]);
        assert!(run(bson!([{"$count": "n"}]), vec![]).unwrap().is_empty());
    }

    #[test]
    fn count_name_errors() {
        assert_eq!(parse_err(bson!([{"$count": ""}])).code, 40157);
        assert_eq!(parse_err(bson!([{"$count": 1}])).code, 40156);
        assert_eq!(parse_err(bson!([{"$count": "$n"}])).code, 40158);
        assert_eq!(parse_err(bson!([{"$count": "a.b"}])).code, 40160);
    }

    // --- $replaceRoot / $replaceWith ---

    #[test]
    fn replace_root_and_with() {
        let input = vec![doc! {"_id": 1, "inner": {"x": 1}}];
        let out = run(
            bson!([{"$replaceRoot": {"newRoot": "$inner"}}]),
            input.clone(),
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"x": 1}]);
        let out = run(bson!([{"$replaceWith": "$inner"}]), input).unwrap();
        assert_eq!(out, vec![doc! {"x": 1}]);
    }

    #[test]
    fn replace_root_requires_a_document() {
        let e = run(
            bson!([{"$replaceRoot": {"newRoot": "$a"}}]),
            vec![doc! {"_id": 1, "a": 10}],
        )
        .unwrap_err();
        assert_eq!(e.code, 40228);
        assert!(
            e.errmsg.starts_with(
                "'newRoot' expression must evaluate to an object, but resulting value was: 10."
            ),
            "{}",
            e.errmsg
        );
        assert!(e.errmsg.contains("Type of resulting value: 'int'"));
        assert!(e.errmsg.ends_with("Input document: {_id: 1, a: 10}"));
        let e = run(bson!([{"$replaceWith": "$nope"}]), vec![doc! {"_id": 1}]).unwrap_err();
        assert_eq!(e.code, 40228);
        assert!(
            e.errmsg.starts_with(
                "'replacement document' must evaluate to an object, but resulting value was: \
                 MISSING. Type of resulting value: 'missing'."
            ),
            "{}",
            e.errmsg
        );
        let e = parse_err(bson!([{"$replaceRoot": {}}]));
        assert_eq!(e.code, 40414);
        assert_eq!(
            e.errmsg,
            "BSON field '$replaceRoot.newRoot' is missing but a required field"
        );
        let e = parse_err(bson!([{"$replaceRoot": {"newRoot": "$a", "x": 1}}]));
        assert_eq!(e.code, 40415);
        assert_eq!(e.errmsg, "BSON field '$replaceRoot.x' is an unknown field.");
        assert_eq!(parse_err(bson!([{"$replaceRoot": 1}])).code, 40229);
    }

    // --- $unwind ---

    #[test]
    fn unwind_string_path() {
        let out = run(
            bson!([{"$unwind": "$sizes"}]),
            vec![
                doc! {"_id": 1, "sizes": ["S", "M"], "z": 1},
                doc! {"_id": 2, "sizes": []},
                doc! {"_id": 3, "sizes": Bson::Null},
                doc! {"_id": 4},
                doc! {"_id": 5, "sizes": "L"},
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                doc! {"_id": 1, "sizes": "S", "z": 1},
                doc! {"_id": 1, "sizes": "M", "z": 1},
                doc! {"_id": 5, "sizes": "L"},
            ]
        );
    }

    #[test]
    fn unwind_with_index_and_preserve() {
        let out = run(
            bson!([{"$unwind": {"path": "$a.b", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true}}]),
            vec![
                doc! {"_id": 1, "a": {"b": [7, 8]}},
                doc! {"_id": 2, "a": {"b": []}},
                doc! {"_id": 3, "a": {"b": Bson::Null}},
                doc! {"_id": 4},
            ],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![
                doc! {"_id": 1, "a": {"b": 7}, "i": 0i64},
                doc! {"_id": 1, "a": {"b": 8}, "i": 1i64},
                doc! {"_id": 2, "a": {}, "i": Bson::Null},
                doc! {"_id": 3, "a": {"b": Bson::Null}, "i": Bson::Null},
                doc! {"_id": 4, "i": Bson::Null},
            ]
        );
    }

    #[test]
    fn unwind_errors() {
        assert_eq!(parse_err(bson!([{"$unwind": "a"}])).code, 28818);
        assert_eq!(parse_err(bson!([{"$unwind": 1}])).code, 15981);
        assert_eq!(parse_err(bson!([{"$unwind": {}}])).code, 28812);
        assert_eq!(parse_err(bson!([{"$unwind": ""}])).code, 28812);
        assert_eq!(parse_err(bson!([{"$unwind": {"path": ""}}])).code, 28812);
        assert_eq!(parse_err(bson!([{"$unwind": {"path": 1}}])).code, 28808);
        assert_eq!(
            parse_err(bson!([{"$unwind": {"path": "$a", "x": 1}}])).code,
            28811
        );
        assert_eq!(
            parse_err(bson!([{"$unwind": {"path": "$a", "includeArrayIndex": "$i"}}])).code,
            28822
        );
        assert_eq!(
            parse_err(bson!([{"$unwind": {"path": "$a", "includeArrayIndex": ""}}])).code,
            28810
        );
        assert_eq!(
            parse_err(bson!([{"$unwind": {"path": "$a", "preserveNullAndEmptyArrays": 1}}])).code,
            28809
        );
    }

    // --- $sortByCount ---

    #[test]
    fn sort_by_count() {
        let out = run(bson!([{"$sortByCount": "$item"}]), sales()).unwrap();
        assert_eq!(
            out,
            vec![doc! {"_id": "a", "count": 3}, doc! {"_id": "b", "count": 1}]
        );
        assert_eq!(parse_err(bson!([{"$sortByCount": "item"}])).code, 40148);
        assert_eq!(parse_err(bson!([{"$sortByCount": {"a": 1}}])).code, 40147);
        assert_eq!(parse_err(bson!([{"$sortByCount": 1}])).code, 40149);
    }

    // --- find projection ---

    #[test]
    fn find_projection_inclusion_exclusion_and_id() {
        let d = doc! {"_id": 1, "a": 1, "b": {"c": 2, "d": 3}, "e": 4};
        assert_eq!(project(doc! {}, d.clone()), d);
        assert_eq!(
            project(doc! {"a": 1, "b.c": 1}, d.clone()),
            doc! {"_id": 1, "a": 1, "b": {"c": 2}}
        );
        assert_eq!(project(doc! {"_id": 0, "e": 1}, d.clone()), doc! {"e": 4});
        assert_eq!(
            project(doc! {"b": 0, "e": 0}, d.clone()),
            doc! {"_id": 1, "a": 1}
        );
        assert_eq!(project(doc! {"_id": 1}, d.clone()), doc! {"_id": 1});
        assert_eq!(
            project(doc! {"_id": 0}, d),
            doc! {"a": 1, "b": {"c": 2, "d": 3}, "e": 4}
        );
    }

    #[test]
    fn find_projection_through_arrays_of_subdocuments() {
        let d = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, 5, [{"b": 3}]]};
        // find does not descend into nested arrays and drops scalars in an inclusion.
        assert_eq!(
            project(doc! {"a.b": 1}, d.clone()),
            doc! {"_id": 1, "a": [{"b": 1}]}
        );
        assert_eq!(
            project(doc! {"a.b": 0}, d),
            doc! {"_id": 1, "a": [{"c": 2}, 5, [{"b": 3}]]}
        );
    }

    #[test]
    fn find_projection_slice() {
        let d = doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "b": 1};
        // $slice alone is an exclusion: other fields stay.
        assert_eq!(
            project(doc! {"a": {"$slice": 2}}, d.clone()),
            doc! {"_id": 1, "a": [1, 2], "b": 1}
        );
        assert_eq!(
            project(doc! {"a": {"$slice": -2}}, d.clone()),
            doc! {"_id": 1, "a": [4, 5], "b": 1}
        );
        assert_eq!(
            project(doc! {"a": {"$slice": [1, 2]}, "_id": 0, "b": 1}, d.clone()),
            doc! {"a": [2, 3], "b": 1}
        );
        assert_eq!(
            project(doc! {"a": {"$slice": [-2, 5]}, "b": 0}, d.clone()),
            doc! {"_id": 1, "a": [4, 5]}
        );
        assert_eq!(
            project(doc! {"b": {"$slice": 1}}, d),
            doc! {"_id": 1, "a": [1, 2, 3, 4, 5], "b": 1}
        );
        assert_eq!(project_err(doc! {"a": {"$slice": [1, 0]}}).code, 31259);
        assert_eq!(project_err(doc! {"a": {"$slice": "x"}}).code, 31273);
        assert_eq!(project_err(doc! {"a": {"$slice": [1]}}).code, 31272);
    }

    #[test]
    fn find_projection_slice_on_nested_path() {
        let d = doc! {"_id": 1, "a": [{"b": [1, 2, 3], "c": 1}, {"b": [4, 5]}], "z": 0};
        assert_eq!(
            project(doc! {"a.b": {"$slice": 1}}, d.clone()),
            doc! {"_id": 1, "a": [{"b": [1], "c": 1}, {"b": [4]}], "z": 0}
        );
        assert_eq!(
            project(doc! {"a.b": {"$slice": 1}, "z": 1}, d),
            doc! {"_id": 1, "a": [{"b": [1]}, {"b": [4]}], "z": 0}
        );
    }

    #[test]
    fn find_projection_literal_and_computed_values() {
        let d = doc! {"_id": 1, "a": 1, "b": 2};
        assert_eq!(
            project(doc! {"x": "lit", "b": 1}, d.clone()),
            doc! {"_id": 1, "b": 2, "x": "lit"}
        );
        assert_eq!(project(doc! {"x": "$a", "_id": 0}, d), doc! {"x": 1});
    }

    #[test]
    fn find_projection_errors() {
        assert_eq!(project_err(doc! {"a.$.b": 1}).code, 31394);
        assert_eq!(project_err(doc! {"a": {"$meta": "textScore"}}).code, 115);
        assert_eq!(project_err(doc! {"a": 1, "b": 0}).code, 31254);
        assert_eq!(
            project_err(doc! {"a": 1, "b": 0}).errmsg,
            "Cannot do exclusion on field b in inclusion projection"
        );
        assert_eq!(project_err(doc! {"a": 0, "b": 1}).code, 31253);
        assert_eq!(project_err(doc! {"a": {"$elemMatch": 1}}).code, 31274);
        assert_eq!(project_err(doc! {"a.b": {"$elemMatch": {}}}).code, 31275);
        assert_eq!(
            project_err(doc! {"a": 0, "b": {"$add": [1, 2]}}).code,
            31252
        );
    }

    // --- update pipelines ---

    #[test]
    fn update_pipeline_applies_stages_in_order() {
        let p = UpdatePipeline::parse(&[
            bson!({"$set": {"b": "$a", "c": 1}}),
            bson!({"$unset": "a"}),
            bson!({"$project": {"b": 1, "c": 1}}),
        ])
        .unwrap();
        let out = p.apply(&doc! {"_id": 1, "a": 5, "z": 0}, &vars()).unwrap();
        assert_eq!(out, doc! {"_id": 1, "b": 5, "c": 1});
        let p = UpdatePipeline::parse(&[bson!({"$replaceWith": {"$literal": 1}})]);
        assert!(p.is_ok());
    }

    #[test]
    fn update_pipeline_rejects_other_stages() {
        let e = UpdatePipeline::parse(&[bson!({"$group": {"_id": Bson::Null}})]).unwrap_err();
        assert_eq!(e.code, 72);
        assert_eq!(e.code_name, "InvalidOptions");
        assert_eq!(
            e.errmsg,
            "$group is not allowed to be used within an update"
        );
        let e = UpdatePipeline::parse(&[bson!({"$match": {}})]).unwrap_err();
        assert_eq!(e.code, 72);
        let e = UpdatePipeline::parse(&[bson!({"$bogus": {}})]).unwrap_err();
        assert_eq!(e.code, 40324);
        // Checked stage by stage: the disallowed stage is reported before a later bad one.
        let e = UpdatePipeline::parse(&[bson!({"$limit": 1}), bson!({"$bogus": {}})]).unwrap_err();
        assert_eq!(e.code, 72);
        let e = UpdatePipeline::parse(&[bson!({"$count": "n"})]).unwrap_err();
        assert_eq!(
            e.errmsg,
            "$group is not allowed to be used within an update"
        );
    }

    #[test]
    fn aggregation_exclusion_descends_into_nested_arrays() {
        let out = run(
            bson!([{"$project": {"a.b": 0}}]),
            vec![doc! {"_id": 1, "a": [{"b": 1, "c": 1}, [{"b": 2, "c": 2}], 3]}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"_id": 1, "a": [{"c": 1}, [{"c": 2}], 3]}]);
    }

    #[test]
    fn group_push_of_root_and_first_of_missing() {
        let out = run(
            bson!([{"$group": {"_id": "$g", "docs": {"$push": "$$ROOT"}, "f": {"$first": "$x"}}}]),
            vec![doc! {"_id": 1, "g": 1}, doc! {"_id": 2, "g": 1, "x": 5}],
        )
        .unwrap();
        assert_eq!(
            out,
            vec![doc! {
                "_id": 1,
                "docs": [{"_id": 1, "g": 1}, {"_id": 2, "g": 1, "x": 5}],
                "f": Bson::Null,
            }]
        );
    }

    #[test]
    fn stages_compose_in_order() {
        let out = run(
            bson!([
                {"$group": {"_id": "$item", "q": {"$sum": "$qty"}}},
                {"$sort": {"q": -1}},
                {"$skip": 0},
                {"$limit": 1},
                {"$replaceWith": "$$ROOT"},
                {"$set": {"item": "$_id"}},
                {"$unset": "_id"}
            ]),
            sales(),
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"q": 5, "item": "a"}]);
    }

    #[test]
    fn field_paths_through_root_variable() {
        let out = run(
            bson!([{"$project": {"_id": 0, "x": "$$ROOT.a.b", "y": "$$CURRENT.a"}}]),
            vec![doc! {"a": {"b": 1}}],
        )
        .unwrap();
        assert_eq!(out, vec![doc! {"x": 1, "y": {"b": 1}}]);
    }

    #[test]
    fn render_matches_mongod_shell_style() {
        assert_eq!(
            render(&bson!({"a": [1, "x", 1.5, 2.0, null, true], "b": {}})),
            "{a: [1, \"x\", 1.5, 2.0, null, true], b: {}}"
        );
    }
}
