//! Updates: replacement documents, update operators and update pipelines, plus the upsert
//! seed document built from a filter's equality conditions.
//!
//! Operator updates are parsed, as mongod does, into a tree keyed by path component
//! (manual: "Update Operators"). The tree detects conflicting paths at parse time (40
//! ConflictingUpdateOperators) and is applied with its children in field-name order, so that
//! since MongoDB 5.0 new fields are appended in lexicographic order of their names (numeric
//! names in numeric order) while existing fields keep their position.

// `CommandError` is mongod's whole error reply; it is returned by value crate-wide.
#![allow(clippy::result_large_err)]

use crate::aggregate::UpdatePipeline;
use crate::bsontype::type_name;
use crate::compare::{compare, is_number, values_equal};
use crate::error::{
    CONFLICTING_UPDATE_OPERATORS, CommandError, DOLLAR_PREFIXED_FIELD_NAME, EMPTY_FIELD_NAME,
    IMMUTABLE_FIELD, INVALID_ID_FIELD, NOT_SINGLE_VALUE_FIELD, PATH_NOT_VIABLE, Result,
};
use crate::expr::Variables;
use crate::query::Matcher;
use bson::{Bson, Document, doc, oid::ObjectId};
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};

/// What `update`/`findAndModify` asked for, parsed and validated once.
#[derive(Debug, Clone)]
pub enum UpdateSpec {
    /// A whole new document (no `$` operators): keeps `_id`, replaces the rest.
    Replacement(Document),
    /// A document of update operators.
    Operators(OperatorUpdate),
    /// An update pipeline (array of stages), evaluated with the command's `let` variables.
    Pipeline(UpdatePipeline),
}

/// Where an update is applied.
pub struct UpdateContext<'a> {
    /// True when the update runs on the seed of an upsert-insert (`$setOnInsert` applies).
    pub is_upsert_insert: bool,
    /// `$$NOW` and `$$CLUSTER_TIME` (for `$currentDate` and pipelines) and the `let` variables.
    pub vars: &'a Variables,
    /// The command's `arrayFilters`, binding the `$[<identifier>]` placeholders.
    pub array_filters: &'a [Document],
    /// The query that selected the document, which tells the positional `$` operator which
    /// array element it stands for; `None` where there is none (the `$` then fails).
    pub query: Option<&'a Matcher>,
}

/// A parsed document of update operators: the path tree plus what error messages quote.
#[derive(Debug, Clone)]
pub struct OperatorUpdate {
    root: Vec<(String, Node)>,
    /// Whether some path uses the positional `$`, so that applying needs the matched offset.
    positional: bool,
    /// `$[<id>]` identifiers in order of appearance, with the path that used them.
    identifiers: Vec<(String, String)>,
    raw: Document,
}

/// One level of the update tree.
#[derive(Debug, Clone)]
enum Node {
    /// Children by field name (or array index), sorted in application order.
    Fields(Vec<(String, Node)>),
    /// Children by array placeholder: `""` for `$[]`, the identifier for `$[<id>]`.
    Elements(Vec<(String, Node)>),
    Leaf(Box<Leaf>),
}

#[derive(Debug, Clone)]
struct Leaf {
    /// The path as written, for error messages.
    path: String,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Bson),
    Mul(Bson),
    Min(Bson),
    Max(Bson),
    CurrentDate {
        timestamp: bool,
    },
    Push(PushSpec),
    AddToSet(Vec<Bson>),
    Pop {
        first: bool,
    },
    Pull(PullCondition),
    PullAll(Vec<Bson>),
    /// Placed at the destination path; moves the value from `from`.
    Rename {
        from: Vec<String>,
        raw: String,
    },
    /// Placed at a `$rename` source path so that other updates of it conflict.
    RenameSource,
}

#[derive(Debug, Clone)]
struct PushSpec {
    each: Vec<Bson>,
    position: Option<i64>,
    slice: Option<i64>,
    sort: Option<PushSort>,
}

#[derive(Debug, Clone)]
enum PushSort {
    Whole(bool),
    Fields(Vec<(String, bool)>),
}

/// How `$pull` decides which elements go (manual: "$pull").
#[derive(Debug, Clone)]
enum PullCondition {
    /// A plain value: elements equal to it.
    Equals(Bson),
    /// A query on the fields of document elements (`{$pull: {a: {b: 1}}}`).
    Query(Matcher),
    /// A condition on the element itself (`{$gte: 6}`, a regex), wrapped as `{v: <cond>}`.
    Value(Matcher),
}

const WRAPPED_FIELD: &str = "v";

impl UpdateSpec {
    pub fn parse(u: &Bson) -> Result<UpdateSpec> {
        match u {
            Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
                Ok(UpdateSpec::Operators(OperatorUpdate::parse(d)?))
            }
            Bson::Document(d) => {
                // mongod 5.0+ stores `$`-prefixed names, but not at the top of a replacement
                // (ObjectReplaceExecutor; manual: "Field Names").
                if let Some(field) = d.keys().find(|k| k.starts_with('$')) {
                    return Err(CommandError::new(
                        crate::error::DOLLAR_PREFIXED_FIELD_NAME,
                        format!(
                            "The dollar ($) prefixed field '{field}' in '{field}' is not allowed in \
                             the context of an update's replacement document. Consider using an \
                             aggregation pipeline with $replaceWith."
                        ),
                    ));
                }
                Ok(UpdateSpec::Replacement(d.clone()))
            }
            Bson::Array(stages) => Ok(UpdateSpec::Pipeline(UpdatePipeline::parse(stages)?)),
            _ => Err(CommandError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }

    /// True for a replacement document (its change event is `replace`, not `update`).
    pub fn is_replacement(&self) -> bool {
        matches!(self, UpdateSpec::Replacement(_))
    }

    /// Checks the command's `arrayFilters` against the update, as mongod does before looking
    /// at any document: every `$[<id>]` needs a filter and every filter must be used. Callers
    /// should run it once per update statement so that errors surface even when nothing
    /// matches; `apply` runs it too.
    pub fn validate_array_filters(&self, array_filters: &[Document]) -> Result<()> {
        self.array_filter_matchers(array_filters).map(|_| ())
    }

    fn array_filter_matchers(
        &self,
        array_filters: &[Document],
    ) -> Result<HashMap<String, Matcher>> {
        match self {
            // Replacements ignore arrayFilters.
            UpdateSpec::Replacement(_) => Ok(HashMap::new()),
            UpdateSpec::Pipeline(_) if !array_filters.is_empty() => {
                Err(CommandError::failed_to_parse(
                    "arrayFilters may not be specified for pipeline-style updates",
                ))
            }
            UpdateSpec::Pipeline(_) => Ok(HashMap::new()),
            UpdateSpec::Operators(ops) => ops.array_filter_matchers(array_filters),
        }
    }

    /// Applies the update to `doc` in place. Changing `_id` is an error (66 ImmutableField).
    /// A no-op leaves `doc` untouched, field order included.
    pub fn apply(&self, doc: &mut Document, ctx: &UpdateContext<'_>) -> Result<()> {
        let filters = self.array_filter_matchers(ctx.array_filters)?;
        match self {
            UpdateSpec::Replacement(replacement) => {
                // An upsert-insert validates field names as an insert does (manual:
                // "Dollar-Prefixed Field Names").
                if !ctx.is_upsert_insert {
                    check_top_level_dollar_fields(replacement)?;
                }
                let mut replacement = replacement.clone();
                // As on insert, a top-level Timestamp(0, 0) is replaced by the current cluster
                // time (manual: "Timestamps").
                for (_, value) in replacement.iter_mut() {
                    if let Bson::Timestamp(ts) = value
                        && ts.time == 0
                        && ts.increment == 0
                        && let Some(now @ Bson::Timestamp(_)) = ctx.vars.get("CLUSTER_TIME")
                    {
                        *value = now.clone();
                    }
                }
                replace_document(doc, replacement)
            }
            UpdateSpec::Pipeline(pipeline) => {
                let result = pipeline.apply(doc, ctx.vars)?;
                replace_document(doc, result)
            }
            UpdateSpec::Operators(ops) => {
                let original_id = doc.get("_id").cloned();
                // mongod records the offset while matching; the document given here is the
                // one the query selected, so matching it again finds the same offset. An
                // upsert's seed document matched nothing.
                let position = match ctx.query {
                    Some(query) if ops.positional && !ctx.is_upsert_insert => {
                        query.match_position(doc, ctx.vars)?.flatten()
                    }
                    _ => None,
                };
                let mut run = Run {
                    ctx,
                    filters: &filters,
                    original_id,
                    position,
                };
                let mut updated = doc.clone();
                let mut path = Vec::new();
                run.fields(&ops.root, &mut path, &mut updated)?;
                check_id_storable(&updated)?;
                if !documents_identical(doc, &updated) {
                    *doc = updated;
                }
                Ok(())
            }
        }
    }
}

/// Replacement and pipeline results keep the existing `_id` (first) when they have none, and
/// may not change it (manual: "Replace a Document").
fn replace_document(doc: &mut Document, replacement: Document) -> Result<()> {
    let result = match (doc.get("_id"), replacement.get("_id")) {
        (Some(old), Some(new)) => {
            if !values_equal(old, new) {
                return Err(CommandError::new(
                    IMMUTABLE_FIELD,
                    format!(
                        "After applying the update, the (immutable) field '_id' was found to \
                         have been altered to _id: {}",
                        shell(new)
                    ),
                ));
            }
            replacement
        }
        (Some(old), None) => {
            let mut with_id = doc! {"_id": old.clone()};
            with_id.extend(replacement);
            with_id
        }
        (None, _) => replacement,
    };
    check_id_storable(&result)?;
    if !documents_identical(doc, &result) {
        *doc = result;
    }
    Ok(())
}

/// `_id` may not be an array, a regex or undefined (manual: "Field Names", `_id` restrictions).
fn check_id_storable(doc: &Document) -> Result<()> {
    match doc.get("_id") {
        Some(v @ (Bson::Array(_) | Bson::RegularExpression(_) | Bson::Undefined)) => {
            Err(CommandError::new(
                INVALID_ID_FIELD,
                format!("The '_id' value cannot be of type {}", type_name(v)),
            ))
        }
        Some(Bson::Document(id)) => match id.keys().find(|k| is_forbidden_dollar_field(k)) {
            Some(k) => {
                let inner = dollar_prefixed_field_error(k, &format!("_id.{k}"));
                Err(CommandError::new(
                    DOLLAR_PREFIXED_FIELD_NAME,
                    format!(
                        "_id fields may not contain '$'-prefixed fields: {}",
                        inner.errmsg
                    ),
                ))
            }
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Updates other than upsert-inserts may not store `$`-prefixed top-level field names (DBRef
/// fields excepted); nested ones are allowed since MongoDB 5.0 (manual: "Dollar-Prefixed
/// Field Names").
fn check_top_level_dollar_fields(d: &Document) -> Result<()> {
    match d.keys().find(|k| is_forbidden_dollar_field(k)) {
        Some(k) => Err(dollar_prefixed_field_error(k, k)),
        None => Ok(()),
    }
}

fn is_forbidden_dollar_field(name: &str) -> bool {
    name.starts_with('$') && !matches!(name, "$ref" | "$id" | "$db")
}

fn dollar_prefixed_field_error(field: &str, path: &str) -> CommandError {
    CommandError::new(
        DOLLAR_PREFIXED_FIELD_NAME,
        format!(
            "The dollar ($) prefixed field '{field}' in '{path}' is not allowed in the context of \
             an update's replacement document. Consider using an aggregation pipeline with \
             $replaceWith."
        ),
    )
}

// ---------------------------------------------------------------------------------------
// Parsing operator updates.

impl OperatorUpdate {
    fn parse(update: &Document) -> Result<OperatorUpdate> {
        let mut parsed = OperatorUpdate {
            root: Vec::new(),
            positional: false,
            identifiers: Vec::new(),
            raw: update.clone(),
        };
        for (name, arg) in update {
            if !is_known_operator(name) {
                return Err(unknown_modifier(name));
            }
            let Bson::Document(fields) = arg else {
                return Err(CommandError::failed_to_parse(format!(
                    "Modifiers operate on fields but we found type {} instead. For example: \
                     {{$mod: {{<field>: ...}}}} not {{{name}: {}}}",
                    type_name(arg),
                    shell(arg)
                )));
            };
            if fields.is_empty() {
                return Err(CommandError::failed_to_parse(format!(
                    "'{name}' is empty. You must specify a field like so: {{{name}: \
                     {{<field_name>: ...}}}}"
                )));
            }
            for (path, value) in fields {
                parsed.parse_field(name, path, value)?;
            }
        }
        Ok(parsed)
    }

    fn parse_field(&mut self, operator: &str, path: &str, value: &Bson) -> Result<()> {
        if operator == "$rename" {
            return self.parse_rename(path, value);
        }
        let components = split_update_path(path)?;
        let op = match operator {
            "$set" => Op::Set(value.clone()),
            "$setOnInsert" => Op::SetOnInsert(value.clone()),
            "$unset" => Op::Unset,
            "$inc" | "$mul" => {
                if !is_number(value) {
                    let verb = if operator == "$inc" {
                        "increment"
                    } else {
                        "multiply"
                    };
                    return Err(CommandError::type_mismatch(format!(
                        "Cannot {verb} with non-numeric argument: {{{path}: {}}}",
                        shell(value)
                    )));
                }
                if operator == "$inc" {
                    Op::Inc(value.clone())
                } else {
                    Op::Mul(value.clone())
                }
            }
            "$min" => Op::Min(value.clone()),
            "$max" => Op::Max(value.clone()),
            "$currentDate" => parse_current_date(value)?,
            "$push" => Op::Push(parse_push(value)?),
            "$addToSet" => Op::AddToSet(parse_add_to_set(value)?),
            "$pop" => {
                // mongod parses the argument with `parseIntegerElementToLong`.
                let element = format!("{path}: {}", shell(value));
                if !is_number(value) {
                    return Err(CommandError::failed_to_parse(format!(
                        "Expected a number in: {element}"
                    )));
                }
                let n = crate::bsontype::as_i64(value).ok_or_else(|| {
                    CommandError::failed_to_parse(format!("Expected an integer: {element}"))
                })?;
                if n != 1 && n != -1 {
                    return Err(CommandError::failed_to_parse(format!(
                        "$pop expects 1 or -1, found: {n}"
                    )));
                }
                Op::Pop { first: n == -1 }
            }
            "$pull" => Op::Pull(parse_pull(value)?),
            "$pullAll" => match value {
                Bson::Array(values) => Op::PullAll(values.clone()),
                other => {
                    return Err(CommandError::bad_value(format!(
                        "$pullAll requires an array argument but was given a {}",
                        type_name(other)
                    )));
                }
            },
            _ => return Err(unknown_modifier(operator)),
        };
        self.positional |= components.iter().any(|c| c == "$");
        self.insert(&components, path, op)
    }

    fn parse_rename(&mut self, from: &str, to: &Bson) -> Result<()> {
        let element = format!("{from}: {}", shell(to));
        let Bson::String(to) = to else {
            return Err(CommandError::bad_value(format!(
                "The 'to' field for $rename must be a string: {element}"
            )));
        };
        let from_parts = split_path_components(from)?;
        let to_parts = split_path_components(to)?;
        if from_parts == to_parts {
            return Err(CommandError::bad_value(format!(
                "The source and target field for $rename must differ: {element}"
            )));
        }
        if from_parts.starts_with(&to_parts) || to_parts.starts_with(&from_parts) {
            return Err(CommandError::bad_value(format!(
                "The source and target field for $rename must not be on the same path: {element}"
            )));
        }
        if from_parts.iter().any(|c| is_dynamic_component(c)) {
            return Err(CommandError::bad_value(format!(
                "The source field for $rename may not be dynamic: {from}"
            )));
        }
        if to_parts.iter().any(|c| is_dynamic_component(c)) {
            return Err(CommandError::bad_value(format!(
                "The destination field for $rename may not be dynamic: {to}"
            )));
        }
        self.insert(&from_parts, from, Op::RenameSource)?;
        self.insert(
            &to_parts,
            to,
            Op::Rename {
                from: from_parts.clone(),
                raw: from.to_string(),
            },
        )
    }

    /// Adds one operation to the tree, detecting conflicts with the paths already there.
    fn insert(&mut self, components: &[String], path: &str, op: Op) -> Result<()> {
        for c in components {
            if let Some(id) = array_placeholder(c)
                && !id.is_empty()
                && !self.identifiers.iter().any(|(known, _)| known == id)
            {
                self.identifiers.push((id.to_string(), path.to_string()));
            }
        }
        let conflict = |upto: usize| {
            CommandError::new(
                CONFLICTING_UPDATE_OPERATORS,
                format!(
                    "Updating the path '{path}' would create a conflict at '{}'",
                    components[..=upto].join(".")
                ),
            )
        };
        let mut children = &mut self.root;
        for (i, component) in components.iter().enumerate() {
            let key = array_placeholder(component)
                .map(str::to_string)
                .unwrap_or_else(|| component.clone());
            let last = i + 1 == components.len();
            let position = children.iter().position(|(k, _)| *k == key);
            if last {
                if position.is_some() {
                    return Err(conflict(i));
                }
                let leaf = Node::Leaf(Box::new(Leaf {
                    path: path.to_string(),
                    op,
                }));
                insert_sorted(children, key, leaf);
                return Ok(());
            }
            let wants_elements = array_placeholder(&components[i + 1]).is_some();
            let index = match position {
                Some(index) => {
                    let fits = match &children[index].1 {
                        Node::Leaf(_) => false,
                        Node::Fields(_) => !wants_elements,
                        Node::Elements(_) => wants_elements,
                    };
                    if !fits {
                        return Err(conflict(i));
                    }
                    index
                }
                None => {
                    let node = if wants_elements {
                        Node::Elements(Vec::new())
                    } else {
                        Node::Fields(Vec::new())
                    };
                    insert_sorted(children, key.clone(), node)
                }
            };
            children = match &mut children[index].1 {
                Node::Fields(c) | Node::Elements(c) => c,
                Node::Leaf(_) => return Err(conflict(i)),
            };
        }
        Ok(())
    }

    fn array_filter_matchers(
        &self,
        array_filters: &[Document],
    ) -> Result<HashMap<String, Matcher>> {
        let mut matchers = HashMap::new();
        for filter in array_filters {
            let matcher = Matcher::parse(filter).map_err(|mut e| {
                e.errmsg = format!("Error parsing array filter :: caused by :: {}", e.errmsg);
                e
            })?;
            let id = array_filter_identifier(filter)?;
            if matchers.contains_key(&id) {
                return Err(CommandError::failed_to_parse(format!(
                    "Found multiple array filters with the same top-level field name {id}"
                )));
            }
            matchers.insert(id, matcher);
        }
        for (id, path) in &self.identifiers {
            if !matchers.contains_key(id) {
                return Err(CommandError::bad_value(format!(
                    "No array filter found for identifier '{id}' in path '{path}'"
                )));
            }
        }
        for filter in array_filters {
            let id = array_filter_identifier(filter)?;
            if !self.identifiers.iter().any(|(used, _)| *used == id) {
                return Err(CommandError::failed_to_parse(format!(
                    "The array filter for identifier '{id}' was not used in the update {}",
                    shell_document(&self.raw)
                )));
            }
        }
        Ok(matchers)
    }
}

fn is_known_operator(name: &str) -> bool {
    matches!(
        name,
        "$set"
            | "$setOnInsert"
            | "$unset"
            | "$inc"
            | "$mul"
            | "$min"
            | "$max"
            | "$rename"
            | "$currentDate"
            | "$push"
            | "$addToSet"
            | "$pop"
            | "$pull"
            | "$pullAll"
    )
}

fn unknown_modifier(operator: &str) -> CommandError {
    CommandError::failed_to_parse(format!(
        "Unknown modifier: {operator}. Expected a valid update modifier or pipeline-style update \
         specified as an array"
    ))
}

/// `$`, `$[]` and `$[<id>]` stand for array elements chosen at apply time.
fn is_dynamic_component(component: &str) -> bool {
    component == "$" || array_placeholder(component).is_some()
}

/// Inserts keeping `children` in application order; returns the new child's index.
fn insert_sorted(children: &mut Vec<(String, Node)>, key: String, node: Node) -> usize {
    let index = children
        .iter()
        .position(|(k, _)| field_order(&key, k) == Ordering::Less)
        .unwrap_or(children.len());
    children.insert(index, (key, node));
    index
}

/// The order in which update operators visit sibling fields since MongoDB 5.0: numeric names
/// in numeric order, others lexicographically (manual: "Update Operators", "Behavior").
fn field_order(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if numeric(a) && numeric(b) {
        let (ta, tb) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
        return ta
            .len()
            .cmp(&tb.len())
            .then_with(|| ta.cmp(tb))
            .then_with(|| a.len().cmp(&b.len()));
    }
    a.as_bytes().cmp(b.as_bytes())
}

/// `Some("")` for `$[]`, `Some(id)` for `$[id]`.
fn array_placeholder(component: &str) -> Option<&str> {
    component.strip_prefix("$[")?.strip_suffix(']')
}

fn split_path_components(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Err(CommandError::new(
            EMPTY_FIELD_NAME,
            "An empty update path is not valid.",
        ));
    }
    let parts: Vec<String> = path.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(CommandError::new(
            EMPTY_FIELD_NAME,
            format!("The update path '{path}' contains an empty field name, which is not allowed."),
        ));
    }
    Ok(parts)
}

/// Splits and validates an operator's field path.
fn split_update_path(path: &str) -> Result<Vec<String>> {
    let parts = split_path_components(path)?;
    if parts.iter().filter(|p| *p == "$").count() > 1 {
        return Err(CommandError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{path}'"
        )));
    }
    for (i, part) in parts.iter().enumerate() {
        if i == 0 && part == "$" {
            return Err(CommandError::bad_value(format!(
                "Cannot have positional (i.e. '$') element in the first position in path \
                 '{path}'"
            )));
        }
        if i == 0 && array_placeholder(part).is_some() {
            return Err(CommandError::bad_value(format!(
                "Cannot have array filter identifier (i.e. '$[<id>]') element in the first \
                 position in path '{path}'"
            )));
        }
    }
    Ok(parts)
}

/// The identifier an array filter binds: the common prefix of its top-level field names
/// (looking inside `$and`/`$or`/`$nor`), which must be a lowercase-initial alphanumeric word.
fn array_filter_identifier(filter: &Document) -> Result<String> {
    fn collect(filter: &Document, names: &mut Vec<String>) {
        for (k, v) in filter {
            if matches!(k.as_str(), "$and" | "$or" | "$nor") {
                if let Bson::Array(clauses) = v {
                    for clause in clauses {
                        if let Bson::Document(d) = clause {
                            collect(d, names);
                        }
                    }
                }
            } else if !k.starts_with('$') {
                names.push(k.split('.').next().unwrap_or(k).to_string());
            }
        }
    }
    let mut names = Vec::new();
    collect(filter, &mut names);
    let Some(first) = names.first().cloned() else {
        return Err(CommandError::failed_to_parse(
            "Cannot use an expression without a top-level field name in arrayFilters",
        ));
    };
    if let Some(other) = names.iter().find(|n| **n != first) {
        return Err(CommandError::failed_to_parse(format!(
            "Error parsing array filter :: caused by :: Expected a single top-level field \
             name, found '{first}' and '{other}'"
        )));
    }
    let mut chars = first.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric());
    if !valid {
        return Err(CommandError::bad_value(format!(
            "Error parsing array filter :: caused by :: The top-level field name must be an \
             alphanumeric string beginning with a lowercase letter, found '{first}'"
        )));
    }
    Ok(first)
}

fn parse_current_date(value: &Bson) -> Result<Op> {
    match value {
        // `{a: false}` also sets a date, as mongod does.
        Bson::Boolean(_) => Ok(Op::CurrentDate { timestamp: false }),
        Bson::Document(options) => {
            let mut timestamp = None;
            for (k, v) in options {
                if k != "$type" {
                    return Err(CommandError::bad_value(format!(
                        "Unrecognized $currentDate option: {k}"
                    )));
                }
                match v {
                    Bson::String(s) if s == "date" => timestamp = Some(false),
                    Bson::String(s) if s == "timestamp" => timestamp = Some(true),
                    _ => {}
                }
            }
            let timestamp = timestamp.ok_or_else(|| {
                CommandError::bad_value(
                    "The '$type' string field is required to be 'date' or 'timestamp': \
                     {$currentDate: {field : {$type: 'date'}}}",
                )
            })?;
            Ok(Op::CurrentDate { timestamp })
        }
        other => Err(CommandError::bad_value(format!(
            "{} is not valid type for $currentDate. Please use a boolean ('true') or a $type \
             expression ({{$type: 'timestamp/date'}}).",
            type_name(other)
        ))),
    }
}

/// `$slice`/`$position`: integral numbers only (whole doubles included).
fn integral_clause(value: &Bson, clause: &str) -> Result<i64> {
    crate::bsontype::as_i64(value).ok_or_else(|| {
        let message = if clause == "$slice" {
            "The value for $slice must be an integer value but was given type: "
        } else {
            "The value for $position must be an integer value, not of type: "
        };
        CommandError::bad_value(format!("{message}{}", type_name(value)))
    })
}

/// `$push` with a value or with `$each` and its `$position`, `$sort`, `$slice` modifiers.
fn parse_push(value: &Bson) -> Result<PushSpec> {
    let modifiers = match value {
        Bson::Document(d) if d.contains_key("$each") => d,
        other => {
            return Ok(PushSpec {
                each: vec![other.clone()],
                position: None,
                slice: None,
                sort: None,
            });
        }
    };
    let mut spec = PushSpec {
        each: Vec::new(),
        position: None,
        slice: None,
        sort: None,
    };
    for (k, v) in modifiers {
        match k.as_str() {
            "$each" => match v {
                Bson::Array(values) => spec.each = values.clone(),
                other => {
                    return Err(CommandError::bad_value(format!(
                        "The argument to $each in $push must be an array but it was of type: {}",
                        type_name(other)
                    )));
                }
            },
            "$slice" => spec.slice = Some(integral_clause(v, "$slice")?),
            "$position" => spec.position = Some(integral_clause(v, "$position")?),
            "$sort" => spec.sort = Some(parse_push_sort(v)?),
            other => {
                return Err(CommandError::bad_value(format!(
                    "Unrecognized clause in $push: {other}"
                )));
            }
        }
    }
    Ok(spec)
}

fn parse_push_sort(value: &Bson) -> Result<PushSort> {
    let direction = |v: &Bson| match crate::compare::as_f64(v) {
        Some(1.0) => Ok(true),
        Some(-1.0) => Ok(false),
        _ => Err(CommandError::bad_value(
            "The $sort element value must be either 1 or -1",
        )),
    };
    match value {
        v if is_number(v) => Ok(PushSort::Whole(direction(v)?)),
        Bson::Document(pattern) => {
            if pattern.is_empty() {
                return Err(CommandError::bad_value(
                    "The $sort pattern is empty when it should be a set of fields.",
                ));
            }
            let mut fields = Vec::new();
            for (k, v) in pattern {
                if k.is_empty() || k.split('.').any(str::is_empty) {
                    return Err(CommandError::bad_value(format!(
                        "The $sort field is a dotted field but has an empty part: {k}"
                    )));
                }
                fields.push((k.clone(), direction(v)?));
            }
            Ok(PushSort::Fields(fields))
        }
        _ => Err(CommandError::bad_value(
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort \
             embedded fields",
        )),
    }
}

fn parse_add_to_set(value: &Bson) -> Result<Vec<Bson>> {
    if let Bson::Document(d) = value
        && let Some((first, each)) = d.iter().next()
        && first == "$each"
    {
        let Bson::Array(values) = each else {
            return Err(CommandError::type_mismatch(format!(
                "The argument to $each in $addToSet must be an array but it was of type {}",
                type_name(each)
            )));
        };
        if d.len() > 1 {
            return Err(CommandError::bad_value(format!(
                "Found unexpected fields after $each in $addToSet: {}",
                shell_document(d)
            )));
        }
        return Ok(values.clone());
    }
    Ok(vec![value.clone()])
}

/// The query operators that apply to a field's value (mongod's path-accepting keywords): a
/// `$pull` condition starting with one of these is a condition on the element itself, any other
/// document is a query on document elements.
fn is_path_accepting_keyword(name: &str) -> bool {
    matches!(
        name,
        "$eq"
            | "$ne"
            | "$gt"
            | "$gte"
            | "$lt"
            | "$lte"
            | "$in"
            | "$nin"
            | "$exists"
            | "$type"
            | "$mod"
            | "$regex"
            | "$options"
            | "$all"
            | "$size"
            | "$elemMatch"
            | "$not"
            | "$within"
            | "$geoWithin"
            | "$geoIntersects"
            | "$near"
            | "$nearSphere"
            | "$geoNear"
            | "$bitsAllSet"
            | "$bitsAllClear"
            | "$bitsAnySet"
            | "$bitsAnyClear"
    )
}

fn parse_pull(value: &Bson) -> Result<PullCondition> {
    match value {
        Bson::Document(d)
            if d.keys()
                .next()
                .is_some_and(|k| is_path_accepting_keyword(k)) =>
        {
            Ok(PullCondition::Value(Matcher::parse(
                &doc! {WRAPPED_FIELD: value.clone()},
            )?))
        }
        Bson::Document(d) => Ok(PullCondition::Query(Matcher::parse(d)?)),
        Bson::RegularExpression(_) => Ok(PullCondition::Value(Matcher::parse(
            &doc! {WRAPPED_FIELD: value.clone()},
        )?)),
        other => Ok(PullCondition::Equals(other.clone())),
    }
}

// ---------------------------------------------------------------------------------------
// Applying operator updates.

/// One application of an operator update to one document.
struct Run<'a, 'c> {
    ctx: &'a UpdateContext<'c>,
    filters: &'a HashMap<String, Matcher>,
    original_id: Option<Bson>,
    /// The array offset the positional `$` stands for, when the query recorded one.
    position: Option<usize>,
}

/// A concrete path: field names, and array indexes as decimal strings.
type Path = Vec<String>;

impl Run<'_, '_> {
    fn fields(
        &mut self,
        children: &[(String, Node)],
        path: &mut Path,
        doc: &mut Document,
    ) -> Result<()> {
        let Some(positional) = children
            .iter()
            .find(|(name, _)| name == "$")
            .map(|(_, c)| c)
        else {
            for (name, child) in children {
                self.child(name, child, path, doc)?;
            }
            return Ok(());
        };
        // mongod's `UpdateObjectNode::apply`: the `$` child is applied under the matched
        // offset, in that name's turn, merged with a child naming the same offset.
        let index = self.position.ok_or_else(|| {
            CommandError::bad_value(
                "The positional operator did not find the match needed from the query.",
            )
        })?;
        let matched = index.to_string();
        let mut pending = Some(positional);
        for (name, child) in children.iter().filter(|(name, _)| name != "$") {
            if let Some(p) = pending {
                if *name == matched {
                    path.push(matched.clone());
                    let at = path.join(".");
                    path.pop();
                    let merged = merge_nodes(p, child, &at)?;
                    self.child(name, &merged, path, doc)?;
                    pending = None;
                    continue;
                }
                if field_order(&matched, name) == Ordering::Less {
                    self.child(&matched, p, path, doc)?;
                    pending = None;
                }
            }
            self.child(name, child, path, doc)?;
        }
        if let Some(p) = pending {
            self.child(&matched, p, path, doc)?;
        }
        Ok(())
    }

    fn child(
        &mut self,
        name: &str,
        child: &Node,
        path: &mut Path,
        doc: &mut Document,
    ) -> Result<()> {
        path.push(name.to_string());
        let outcome = self.node(child, path, doc);
        path.pop();
        outcome
    }

    fn node(&mut self, node: &Node, path: &mut Path, doc: &mut Document) -> Result<()> {
        match node {
            Node::Fields(children) => self.fields(children, path, doc),
            Node::Elements(children) => self.elements(children, path, doc),
            Node::Leaf(leaf) => {
                let guarded_top_field = path
                    .first()
                    .filter(|f| is_forbidden_dollar_field(f) && !self.ctx.is_upsert_insert)
                    .map(|f| (f.clone(), doc.get(f).cloned()));
                self.leaf(leaf, path, doc)?;
                if let Some((field, before)) = guarded_top_field {
                    let changed = match (&before, doc.get(&field)) {
                        (_, None) => false,
                        (Some(b), Some(a)) => !values_identical(b, a),
                        (None, Some(_)) => true,
                    };
                    if changed {
                        return Err(dollar_prefixed_field_error(&field, &field));
                    }
                }
                if path.first().is_some_and(|f| f == "_id") {
                    self.check_id_unchanged(doc, &leaf.path)?;
                }
                if let Op::Rename { from, raw } = &leaf.op
                    && from.first().is_some_and(|f| f == "_id")
                    && self.id_changed(doc)
                {
                    return Err(CommandError::new(
                        IMMUTABLE_FIELD,
                        format!(
                            "Unsetting the path '{raw}' using $rename would modify the immutable \
                             field '_id'"
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// Whether `_id` differs from the document's original one (compared as values, as
    /// mongod's immutable-path check does).
    fn id_changed(&self, doc: &Document) -> bool {
        match (&self.original_id, doc.get("_id")) {
            (None, _) => false,
            (Some(original), Some(now)) => !values_equal(original, now),
            (Some(_), None) => true,
        }
    }

    fn check_id_unchanged(&self, doc: &Document, path: &str) -> Result<()> {
        if !self.id_changed(doc) {
            return Ok(());
        }
        Err(CommandError::new(
            IMMUTABLE_FIELD,
            format!(
                "Performing an update on the path '{path}' would modify the immutable field '_id'"
            ),
        ))
    }

    /// `$[]` and `$[<id>]`: the array at `path` must exist; each element gets the children
    /// whose filter it satisfies (manual: "$[<identifier>]").
    fn elements(
        &mut self,
        children: &[(String, Node)],
        path: &mut Path,
        doc: &mut Document,
    ) -> Result<()> {
        let (existing, deepest) = resolve(doc, path);
        if existing < path.len() {
            return Err(CommandError::bad_value(format!(
                "The path '{}' must exist in the document in order to apply array updates.",
                path.join(".")
            )));
        }
        let len = match deepest {
            Some(Bson::Array(a)) => a.len(),
            other => {
                let shown = other.map(shell).unwrap_or_else(|| shell_document(doc));
                return Err(CommandError::bad_value(format!(
                    "Cannot apply array updates to non-array element {}: {shown}",
                    path.last().map(String::as_str).unwrap_or("")
                )));
            }
        };
        for index in 0..len {
            let mut applicable = Vec::new();
            for (id, child) in children {
                if id.is_empty() {
                    applicable.push(child);
                    continue;
                }
                let Some(Bson::Array(a)) = resolve(doc, path).1 else {
                    break;
                };
                let Some(element) = a.get(index) else { break };
                let matcher = self.filters.get(id).ok_or_else(|| {
                    CommandError::bad_value(format!(
                        "No array filter found for identifier '{id}' in path '{}'",
                        path.join(".")
                    ))
                })?;
                if matcher.matches(&doc! {id.clone(): element.clone()}, self.ctx.vars)? {
                    applicable.push(child);
                }
            }
            let Some((first, rest)) = applicable.split_first() else {
                continue;
            };
            path.push(index.to_string());
            let outcome = if rest.is_empty() {
                self.node(first, path, doc)
            } else {
                let at = path.join(".");
                rest.iter()
                    .try_fold((*first).clone(), |merged, next| {
                        merge_nodes(&merged, next, &at)
                    })
                    .and_then(|merged| self.node(&merged, path, doc))
            };
            path.pop();
            outcome?;
        }
        Ok(())
    }

    fn leaf(&mut self, leaf: &Leaf, path: &Path, doc: &mut Document) -> Result<()> {
        match &leaf.op {
            Op::RenameSource => Ok(()),
            Op::SetOnInsert(_) if !self.ctx.is_upsert_insert => Ok(()),
            Op::Rename { from, .. } => self.rename(from, path, doc),
            op => {
                let (existing, _) = resolve(doc, path);
                if existing == path.len() {
                    let id = self.original_id.clone();
                    self.update_existing(op, path, doc, id.as_ref())
                } else {
                    match self.value_for_missing(op)? {
                        Some(value) => create(doc, path, existing, value),
                        // Only $unset ignores a path it could not even create (mongod's
                        // `allowNonViablePath`); $pop, $pull and $pullAll check it.
                        None if matches!(op, Op::Unset) => Ok(()),
                        None => check_viable(doc, path, existing),
                    }
                }
            }
        }
    }

    fn now(&self, timestamp: bool) -> Bson {
        let name = if timestamp { "CLUSTER_TIME" } else { "NOW" };
        match self.ctx.vars.get(name) {
            Some(v) => v.clone(),
            None if timestamp => Bson::Timestamp(bson::Timestamp {
                time: (bson::DateTime::now().timestamp_millis() / 1000) as u32,
                increment: 1,
            }),
            None => Bson::DateTime(bson::DateTime::now()),
        }
    }

    /// What an operator writes where its path does not exist; `None` when it does nothing.
    fn value_for_missing(&self, op: &Op) -> Result<Option<Bson>> {
        Ok(match op {
            Op::Set(v) | Op::SetOnInsert(v) | Op::Inc(v) | Op::Min(v) | Op::Max(v) => {
                Some(v.clone())
            }
            // `$mul` on a missing field writes zero of the multiplier's type.
            Op::Mul(v) => Some(match v {
                Bson::Int64(_) => Bson::Int64(0),
                Bson::Double(d) => Bson::Double(d * 0.0),
                Bson::Decimal128(_) => return Err(decimal_not_supported("$mul")),
                _ => Bson::Int32(0),
            }),
            Op::CurrentDate { timestamp } => Some(self.now(*timestamp)),
            Op::Push(spec) => {
                let mut array = Vec::new();
                push(&mut array, spec);
                Some(Bson::Array(array))
            }
            Op::AddToSet(values) => {
                let mut array = Vec::new();
                add_to_set(&mut array, values);
                Some(Bson::Array(array))
            }
            Op::Unset
            | Op::Pop { .. }
            | Op::Pull(_)
            | Op::PullAll(_)
            | Op::Rename { .. }
            | Op::RenameSource => None,
        })
    }

    fn update_existing(
        &self,
        op: &Op,
        path: &Path,
        doc: &mut Document,
        id: Option<&Bson>,
    ) -> Result<()> {
        let field = path.last().map(String::as_str).unwrap_or("");
        let id_text = || match id {
            Some(v) => format!("_id: {}", shell(v)),
            None => "no id".to_string(),
        };
        if let Op::Unset = op {
            match container_mut(doc, &path[..path.len() - 1]) {
                Some(Container::Doc(d)) => {
                    d.remove(field);
                }
                Some(Container::Array(a)) => {
                    if let Some(slot) = index_of(field).and_then(|i| a.get_mut(i)) {
                        *slot = Bson::Null;
                    }
                }
                None => {}
            }
            return Ok(());
        }
        let Some(current) = value_mut(doc, path) else {
            return Ok(());
        };
        let replacement = match op {
            Op::Set(v) | Op::SetOnInsert(v) => Some(v.clone()),
            Op::Inc(v) | Op::Mul(v) => {
                let (name, kind) = match op {
                    Op::Inc(_) => ("$inc", Arith::Add),
                    _ => ("$mul", Arith::Mul),
                };
                if !is_number(current) {
                    return Err(CommandError::type_mismatch(format!(
                        "Cannot apply {name} to a value of non-numeric type. {{{}}} has the field \
                         '{field}' of non-numeric type {}",
                        id_text(),
                        type_name(current)
                    )));
                }
                let result = arithmetic(current, v, kind, name)?;
                if result
                    .as_ref()
                    .is_some_and(|r| values_identical(r, current))
                {
                    return Ok(());
                }
                let Some(result) = result else {
                    let shown = match current {
                        Bson::Int64(n) => format!("(NumberLong){n}"),
                        Bson::Int32(n) => format!("(NumberInt){n}"),
                        other => shell(other),
                    };
                    return Err(CommandError::bad_value(format!(
                        "Failed to apply {name} operations to current value ({shown}) for \
                         document {{{}}}",
                        id_text()
                    )));
                };
                Some(result)
            }
            Op::Min(v) => (compare(v, current) == Ordering::Less).then(|| v.clone()),
            Op::Max(v) => (compare(v, current) == Ordering::Greater).then(|| v.clone()),
            Op::CurrentDate { timestamp } => Some(self.now(*timestamp)),
            Op::Push(spec) => {
                let Bson::Array(array) = current else {
                    return Err(CommandError::bad_value(format!(
                        "The field '{}' must be an array but is of type {} in document {{{}}}",
                        path.join("."),
                        type_name(current),
                        id_text()
                    )));
                };
                push(array, spec);
                None
            }
            Op::AddToSet(values) => {
                let Bson::Array(array) = current else {
                    return Err(CommandError::bad_value(format!(
                        "Cannot apply $addToSet to non-array field. Field named '{field}' has \
                         non-array type {}",
                        type_name(current)
                    )));
                };
                add_to_set(array, values);
                None
            }
            Op::Pop { first } => {
                let Bson::Array(array) = current else {
                    return Err(CommandError::type_mismatch(format!(
                        "Path '{}' contains an element of non-array type '{}'",
                        path.join("."),
                        type_name(current)
                    )));
                };
                if !array.is_empty() {
                    if *first {
                        array.remove(0);
                    } else {
                        array.pop();
                    }
                }
                None
            }
            Op::Pull(condition) => {
                let Bson::Array(array) = current else {
                    return Err(CommandError::bad_value(
                        "Cannot apply $pull to a non-array value",
                    ));
                };
                let mut kept = Vec::with_capacity(array.len());
                for element in array.drain(..) {
                    if !pull_matches(condition, &element, self.ctx.vars)? {
                        kept.push(element);
                    }
                }
                *array = kept;
                None
            }
            Op::PullAll(values) => {
                let Bson::Array(array) = current else {
                    return Err(CommandError::bad_value(
                        "Cannot apply $pull to a non-array value",
                    ));
                };
                array.retain(|e| !values.iter().any(|v| values_equal(e, v)));
                None
            }
            Op::Unset | Op::Rename { .. } | Op::RenameSource => None,
        };
        if let Some(new) = replacement
            && !values_identical(current, &new)
        {
            *current = new;
        }
        Ok(())
    }

    /// `$rename`: neither path may pass through an array; a missing source is a no-op
    /// (manual: "$rename").
    fn rename(&mut self, from: &[String], to: &Path, doc: &mut Document) -> Result<()> {
        let id_text = match &self.original_id {
            Some(v) => format!("_id: {}", shell(v)),
            None => "no id".to_string(),
        };
        // The source is looked up as mongod's `findLongestPrefix` does: a scalar (or an array
        // addressed by a name) on the way is PathNotViable, a missing field a no-op.
        let mut current: Option<&Bson> = None;
        let mut array_field = None;
        for (i, component) in from.iter().enumerate() {
            let next = match current {
                None => doc.get(component),
                Some(Bson::Document(d)) => d.get(component),
                Some(Bson::Array(a)) if index_of(component).is_some() => {
                    index_of(component).and_then(|ix| a.get(ix))
                }
                Some(other) => {
                    let parent = &from[i - 1];
                    return Err(CommandError::new(
                        PATH_NOT_VIABLE,
                        format!(
                            "cannot use the part ({parent} of {}) to traverse the element \
                             ({{{parent}: {}}})",
                            from.join("."),
                            shell(other)
                        ),
                    ));
                }
            };
            let Some(next) = next else {
                return Ok(());
            };
            if i + 1 < from.len() && matches!(next, Bson::Array(_)) {
                array_field = Some(component.clone());
            }
            current = Some(next);
        }
        if let Some(array_field) = array_field {
            return Err(CommandError::bad_value(format!(
                "The source field cannot be an array element, '{}' in doc with {id_text} has an \
                 array field called '{array_field}'",
                from.join(".")
            )));
        }
        let Some(value) = current.cloned() else {
            return Ok(());
        };
        let through_array = |path: &[String]| {
            let mut current: Option<&Bson> = None;
            for (i, component) in path.iter().enumerate() {
                let next = match current {
                    None => doc.get(component),
                    Some(Bson::Document(d)) => d.get(component),
                    Some(_) => None,
                };
                match next {
                    Some(Bson::Array(_)) if i + 1 < path.len() => return Some(component.clone()),
                    Some(v) => current = Some(v),
                    None => return None,
                }
            }
            None
        };
        if let Some(array_field) = through_array(to) {
            return Err(CommandError::bad_value(format!(
                "The destination field cannot be an array element, '{}' in doc with {id_text} \
                 has an array field called '{array_field}'",
                to.join(".")
            )));
        }
        let (existing_to, _) = resolve(doc, to);
        if existing_to == to.len() {
            if let Some(slot) = value_mut(doc, to) {
                *slot = value;
            }
        } else {
            create(doc, to, existing_to, value)?;
        }
        if let Some(Container::Doc(parent)) = container_mut(doc, &from[..from.len() - 1]) {
            parent.remove(&from[from.len() - 1]);
        }
        Ok(())
    }
}

/// Combines the updates of several `$[<id>]` placeholders that select the same element; two
/// operations on one path conflict (mongod's `createUpdateNodeByMerging`).
fn merge_nodes(a: &Node, b: &Node, at: &str) -> Result<Node> {
    let merge_children =
        |x: &[(String, Node)], y: &[(String, Node)]| -> Result<Vec<(String, Node)>> {
            let mut merged = x.to_vec();
            for (key, node) in y {
                match merged.iter().position(|(k, _)| k == key) {
                    Some(i) => {
                        let combined = merge_nodes(&merged[i].1, node, &format!("{at}.{key}"))?;
                        merged[i].1 = combined;
                    }
                    None => {
                        insert_sorted(&mut merged, key.clone(), node.clone());
                    }
                }
            }
            Ok(merged)
        };
    match (a, b) {
        (Node::Fields(x), Node::Fields(y)) => Ok(Node::Fields(merge_children(x, y)?)),
        (Node::Elements(x), Node::Elements(y)) => Ok(Node::Elements(merge_children(x, y)?)),
        _ => Err(CommandError::new(
            CONFLICTING_UPDATE_OPERATORS,
            format!("Update created a conflict at '{at}'"),
        )),
    }
}

/// A missing `path` (of which `existing` components exist) must at least be creatable:
/// through a document, or into an array by index (mongod's `UpdateLeafNode::checkViability`).
fn check_viable(doc: &Document, path: &[String], existing: usize) -> Result<()> {
    if existing == 0 {
        return Ok(());
    }
    let viable = match resolve(doc, &path[..existing]).1 {
        Some(Bson::Array(_)) => index_of(&path[existing]).is_some(),
        Some(Bson::Document(_)) | None => true,
        Some(_) => false,
    };
    if viable {
        return Ok(());
    }
    let shown = resolve(doc, &path[..existing])
        .1
        .map(shell)
        .unwrap_or_default();
    Err(CommandError::new(
        PATH_NOT_VIABLE,
        format!(
            "Cannot use the part ({}) of ({}.{}) to traverse the element ({{{}: {shown}}})",
            path[existing],
            path[..existing].join("."),
            path[existing..].join("."),
            path[existing - 1]
        ),
    ))
}

fn pull_matches(condition: &PullCondition, element: &Bson, vars: &Variables) -> Result<bool> {
    match condition {
        PullCondition::Equals(v) => Ok(values_equal(v, element)),
        PullCondition::Query(matcher) => match element {
            Bson::Document(d) => matcher.matches(d, vars),
            _ => Ok(false),
        },
        PullCondition::Value(matcher) => {
            matcher.matches(&doc! {WRAPPED_FIELD: element.clone()}, vars)
        }
    }
}

/// `$push`: insert at `$position` (negative counts from the end), then `$sort`, then `$slice`.
fn push(array: &mut Vec<Bson>, spec: &PushSpec) {
    let len = array.len() as i64;
    let at = match spec.position {
        None => len,
        Some(p) if p >= 0 => p.min(len),
        Some(p) => (len + p).max(0),
    } as usize;
    array.splice(at..at, spec.each.iter().cloned());
    match &spec.sort {
        Some(PushSort::Whole(ascending)) => array.sort_by(|a, b| {
            let o = compare(a, b);
            if *ascending { o } else { o.reverse() }
        }),
        Some(PushSort::Fields(fields)) => array.sort_by(|a, b| {
            for (field, ascending) in fields {
                let o = compare(&sort_key(a, field), &sort_key(b, field));
                let o = if *ascending { o } else { o.reverse() };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        }),
        None => {}
    }
    match spec.slice {
        Some(n) if n >= 0 => array.truncate(n as usize),
        Some(n) => {
            let keep = n.unsigned_abs() as usize;
            if array.len() > keep {
                array.drain(..array.len() - keep);
            }
        }
        None => {}
    }
}

/// The value a `$sort: {field: 1}` pattern sorts an element by: null for non-documents and
/// for documents without the field.
fn sort_key(element: &Bson, field: &str) -> Bson {
    match element {
        Bson::Document(d) => crate::path::get_path(d, field)
            .cloned()
            .unwrap_or(Bson::Null),
        _ => Bson::Null,
    }
}

/// `$addToSet`: appends each value not already present (nor earlier in `$each`).
fn add_to_set(array: &mut Vec<Bson>, values: &[Bson]) {
    for v in values {
        if !array.iter().any(|e| values_equal(e, v)) {
            array.push(v.clone());
        }
    }
}

#[derive(Clone, Copy)]
enum Arith {
    Add,
    Mul,
}

fn decimal_not_supported(operator: &str) -> CommandError {
    CommandError::not_supported(format!(
        "mongo-sim does not support Decimal128 arithmetic in {operator}"
    ))
}

/// `$inc`/`$mul` arithmetic with mongod's `SafeNum` promotion: int32 overflow widens to int64,
/// any double makes the result a double. `None` when an int64 result overflows, which mongod
/// refuses rather than rounding.
fn arithmetic(a: &Bson, b: &Bson, kind: Arith, operator: &str) -> Result<Option<Bson>> {
    let int = |v: &Bson| match v {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    let float = |v: &Bson| match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    };
    if matches!(a, Bson::Decimal128(_)) || matches!(b, Bson::Decimal128(_)) {
        return Err(decimal_not_supported(operator));
    }
    let as_double = |x: f64, y: f64| match kind {
        Arith::Add => Bson::Double(x + y),
        Arith::Mul => Bson::Double(x * y),
    };
    match (a, b) {
        (Bson::Int32(x), Bson::Int32(y)) => {
            let r = match kind {
                Arith::Add => x.checked_add(*y),
                Arith::Mul => x.checked_mul(*y),
            };
            Ok(Some(match r {
                Some(r) => Bson::Int32(r),
                None => {
                    let (x, y) = (*x as i64, *y as i64);
                    Bson::Int64(match kind {
                        Arith::Add => x + y,
                        Arith::Mul => x * y,
                    })
                }
            }))
        }
        _ => match (int(a), int(b)) {
            (Some(x), Some(y)) => {
                let r = match kind {
                    Arith::Add => x.checked_add(y),
                    Arith::Mul => x.checked_mul(y),
                };
                Ok(r.map(Bson::Int64))
            }
            _ => match (float(a), float(b)) {
                (Some(x), Some(y)) => Ok(Some(as_double(x, y))),
                _ => Err(CommandError::type_mismatch(format!(
                    "Cannot apply {operator} to a value of non-numeric type"
                ))),
            },
        },
    }
}

// ---------------------------------------------------------------------------------------
// Navigating concrete paths.

fn index_of(component: &str) -> Option<usize> {
    if component.is_empty() || !component.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    component.parse().ok()
}

/// How many leading components of `path` exist in `doc`, and the value at the deepest one
/// (`None` when not even the first exists).
fn resolve<'d>(doc: &'d Document, path: &[String]) -> (usize, Option<&'d Bson>) {
    let mut current: Option<&Bson> = None;
    for (i, component) in path.iter().enumerate() {
        let next = match current {
            None => doc.get(component),
            Some(Bson::Document(d)) => d.get(component),
            Some(Bson::Array(a)) => index_of(component).and_then(|i| a.get(i)),
            Some(_) => None,
        };
        match next {
            Some(v) => current = Some(v),
            None => return (i, current),
        }
    }
    (path.len(), current)
}

fn value_mut<'d>(doc: &'d mut Document, path: &[String]) -> Option<&'d mut Bson> {
    let (first, rest) = path.split_first()?;
    let mut current = doc.get_mut(first)?;
    for component in rest {
        current = match current {
            Bson::Document(d) => d.get_mut(component)?,
            Bson::Array(a) => a.get_mut(index_of(component)?)?,
            _ => return None,
        };
    }
    Some(current)
}

enum Container<'d> {
    Doc(&'d mut Document),
    Array(&'d mut Vec<Bson>),
}

/// The document or array at `path` (the root for an empty path).
fn container_mut<'d>(doc: &'d mut Document, path: &[String]) -> Option<Container<'d>> {
    if path.is_empty() {
        return Some(Container::Doc(doc));
    }
    match value_mut(doc, path)? {
        Bson::Document(d) => Some(Container::Doc(d)),
        Bson::Array(a) => Some(Container::Array(a)),
        _ => None,
    }
}

/// mongod refuses to pad an array by more than this many nulls.
const MAX_ARRAY_PADDING: usize = 1_500_000;

/// Writes `value` at `path`, whose first `existing` components exist: intermediate fields are
/// created as documents; an array is indexed (and padded with nulls) by a numeric component.
/// Anything else on the way is 28 PathNotViable.
fn create(doc: &mut Document, path: &[String], existing: usize, value: Bson) -> Result<()> {
    let first_missing = &path[existing];
    let mut nested = value;
    for component in path[existing + 1..].iter().rev() {
        nested = Bson::Document(doc! {component.clone(): nested});
    }
    let not_viable = |shown: String| {
        Err(CommandError::new(
            PATH_NOT_VIABLE,
            format!("Cannot create field '{first_missing}' in element {{{shown}}}"),
        ))
    };
    let parent_name = if existing == 0 {
        String::new()
    } else {
        path[existing - 1].clone()
    };
    if existing > 0 {
        match value_mut(doc, &path[..existing]) {
            Some(Bson::Document(_)) | Some(Bson::Array(_)) => {}
            Some(other) => return not_viable(format!("{parent_name}: {}", shell(other))),
            None => return Ok(()),
        }
    }
    match container_mut(doc, &path[..existing]) {
        Some(Container::Doc(d)) => {
            d.insert(first_missing.clone(), nested);
            Ok(())
        }
        Some(Container::Array(a)) => {
            let Some(index) = index_of(first_missing) else {
                let shown = format!("{parent_name}: {}", shell(&Bson::Array(a.clone())));
                return not_viable(shown);
            };
            if index > a.len() + MAX_ARRAY_PADDING {
                return Err(CommandError::bad_value(format!(
                    "can't backfill array to larger than {MAX_ARRAY_PADDING} elements"
                )));
            }
            while a.len() < index {
                a.push(Bson::Null);
            }
            a.push(nested);
            Ok(())
        }
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Byte-level equality and mongod-style printing.

/// Same type and same bytes, field order included (BSON's `binaryEqual`): a `$set` of `1.0`
/// over `1` is a change, a `$set` of `{a, b}` over `{b, a}` too.
fn values_identical(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::Document(x), Bson::Document(y)) => documents_identical(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_identical(p, q))
        }
        _ => a == b,
    }
}

fn documents_identical(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && values_identical(va, vb))
}

/// A value as mongod prints it in error messages (`BSONElement::toString`).
fn shell(v: &Bson) -> String {
    match v {
        Bson::Double(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e15 => {
            format!("{d:.1}")
        }
        Bson::Double(d) => format!("{d}"),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Decimal128(d) => format!("NumberDecimal(\"{d}\")"),
        Bson::String(s) | Bson::Symbol(s) => format!("\"{s}\""),
        Bson::Document(d) => shell_document(d),
        Bson::Array(a) if a.is_empty() => "[]".to_string(),
        Bson::Array(a) => format!("[ {} ]", a.iter().map(shell).collect::<Vec<_>>().join(", ")),
        Bson::ObjectId(o) => format!("ObjectId('{o}')"),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::DateTime(d) => format!("new Date({})", d.timestamp_millis()),
        Bson::Timestamp(t) => format!("Timestamp({}, {})", t.time, t.increment),
        Bson::RegularExpression(r) => format!("/{}/{}", r.pattern, r.options),
        Bson::MinKey => "MinKey".to_string(),
        Bson::MaxKey => "MaxKey".to_string(),
        other => format!("{other}"),
    }
}

fn shell_document(d: &Document) -> String {
    if d.is_empty() {
        return "{}".to_string();
    }
    format!(
        "{{ {} }}",
        d.iter()
            .map(|(k, v)| format!("{k}: {}", shell(v)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

// ---------------------------------------------------------------------------------------
// Upserts.

/// The document an upsert starts from: the filter's equality conditions (`{a: 1}`,
/// `{a: {$eq: 1}}`, inside `$and`), with dotted paths expanded.
///
/// As mongod's query optimiser does, a single-clause `$or` counts as its clause, a one-element
/// `$in` as an equality and `$all` as one equality per value (manual: "Upsert with Operator
/// Expressions"). Fields come out in path order, `_id` first; a path pinned twice, or both a
/// path and its prefix, is 54 NotSingleValueField.
pub fn upsert_seed(filter: &Document) -> Result<Document> {
    seed_from(filter, |_| true)
}

fn seed_from(filter: &Document, keep: impl Fn(&str) -> bool) -> Result<Document> {
    let mut equalities = Vec::new();
    collect_equalities(filter, &mut equalities);
    equalities.retain(|(path, _)| keep(path));
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (path, _) in &equalities {
        if !seen.insert(path.as_str()) {
            return Err(CommandError::new(
                NOT_SINGLE_VALUE_FIELD,
                format!("cannot infer query fields to set, path '{path}' is matched twice"),
            ));
        }
    }
    for (path, _) in &equalities {
        if let Some(prefix) = seen
            .iter()
            .find(|other| path.starts_with(&format!("{other}.")))
        {
            return Err(CommandError::new(
                NOT_SINGLE_VALUE_FIELD,
                format!(
                    "cannot infer query fields to set, both paths '{path}' and '{prefix}' are \
                     matched"
                ),
            ));
        }
    }
    equalities.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut seed = Document::new();
    for (path, value) in equalities {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        let (existing, _) = resolve(&seed, &parts);
        create(&mut seed, &parts, existing, value)?;
    }
    Ok(id_first(seed))
}

fn collect_equalities(filter: &Document, out: &mut Vec<(String, Bson)>) {
    for (key, value) in filter {
        match key.as_str() {
            "$and" => {
                if let Bson::Array(clauses) = value {
                    for clause in clauses {
                        if let Bson::Document(d) = clause {
                            collect_equalities(d, out);
                        }
                    }
                }
            }
            "$or" => {
                if let Bson::Array(clauses) = value
                    && let [Bson::Document(only)] = clauses.as_slice()
                {
                    collect_equalities(only, out);
                }
            }
            k if k.starts_with('$') => {}
            _ => match value {
                Bson::Document(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
                    for (op, operand) in ops {
                        match (op.as_str(), operand) {
                            ("$eq", v) => out.push((key.clone(), v.clone())),
                            // $all is an AND of equalities (regexes and $elemMatch aside).
                            ("$all", Bson::Array(values)) => {
                                for v in values {
                                    let elem_match = matches!(v, Bson::Document(d)
                                        if d.keys().next().is_some_and(|k| k == "$elemMatch"));
                                    if !elem_match && !matches!(v, Bson::RegularExpression(_)) {
                                        out.push((key.clone(), v.clone()));
                                    }
                                }
                            }
                            ("$in", Bson::Array(values)) => {
                                if let [only] = values.as_slice()
                                    && !matches!(only, Bson::RegularExpression(_))
                                {
                                    out.push((key.clone(), only.clone()));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Bson::RegularExpression(_) => {}
                v => out.push((key.clone(), v.clone())),
            },
        }
    }
}

fn id_first(doc: Document) -> Document {
    if doc.keys().next().is_none_or(|k| k == "_id") || !doc.contains_key("_id") {
        return doc;
    }
    let mut ordered = Document::new();
    if let Some(id) = doc.get("_id") {
        ordered.insert("_id", id.clone());
    }
    for (k, v) in doc {
        if k != "_id" {
            ordered.insert(k, v);
        }
    }
    ordered
}

/// The document an upsert inserts when nothing matched: the seed from the filter's equalities
/// (only `_id` for a replacement), the update applied with `$setOnInsert` in force, and an
/// ObjectId `_id` first when neither provided one.
pub fn build_upsert(
    filter: &Document,
    spec: &UpdateSpec,
    ctx: &UpdateContext<'_>,
) -> Result<Document> {
    let mut doc = match spec {
        UpdateSpec::Replacement(_) => {
            seed_from(filter, |path| path == "_id" || path.starts_with("_id."))?
        }
        _ => upsert_seed(filter)?,
    };
    let insert_ctx = UpdateContext {
        is_upsert_insert: true,
        vars: ctx.vars,
        array_filters: ctx.array_filters,
        query: None,
    };
    spec.apply(&mut doc, &insert_ctx)?;
    if !doc.contains_key("_id") {
        let mut with_id = doc! {"_id": ObjectId::new()};
        with_id.extend(doc);
        return Ok(with_id);
    }
    Ok(id_first(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{DateTime, Timestamp};

    fn vars() -> Variables {
        Variables::new(
            DateTime::from_millis(1_700_000_000_000),
            Timestamp {
                time: 1_700_000_000,
                increment: 7,
            },
        )
    }

    fn apply_with(
        mut doc: Document,
        update: Bson,
        filters: &[Document],
        upsert: bool,
    ) -> Result<Document> {
        let vars = vars();
        let spec = UpdateSpec::parse(&update)?;
        let ctx = UpdateContext {
            is_upsert_insert: upsert,
            vars: &vars,
            array_filters: filters,
            query: None,
        };
        spec.apply(&mut doc, &ctx)?;
        Ok(doc)
    }

    fn apply(doc: Document, update: Document) -> Result<Document> {
        apply_with(doc, Bson::Document(update), &[], false)
    }

    fn updated(doc: Document, update: Document) -> Document {
        apply(doc, update).expect("update applies")
    }

    fn error(doc: Document, update: Document) -> CommandError {
        apply(doc, update).expect_err("update fails")
    }

    fn parse_error(update: Document) -> CommandError {
        UpdateSpec::parse(&Bson::Document(update)).expect_err("update is rejected")
    }

    fn same(a: &Document, b: &Document) {
        assert!(documents_identical(a, b), "{a:?} != {b:?}");
    }

    #[test]
    fn set_replaces_in_place_and_appends_new_fields() {
        let d = updated(
            doc! {"_id": 1, "a": 1, "z": 2},
            doc! {"$set": {"a": 5, "b": 6}},
        );
        same(&d, &doc! {"_id": 1, "a": 5, "z": 2, "b": 6});
    }

    #[test]
    fn new_fields_are_appended_in_lexicographic_order() {
        let d = updated(
            doc! {"_id": 1},
            doc! {"$set": {"c": 1, "b": 1}, "$inc": {"a.y": 1, "a.x": 1}},
        );
        same(&d, &doc! {"_id": 1, "a": {"x": 1, "y": 1}, "b": 1, "c": 1});
    }

    #[test]
    fn numeric_field_names_are_applied_in_numeric_order() {
        let d = updated(doc! {"_id": 1}, doc! {"$set": {"a.10": 1, "a.9": 2}});
        same(&d, &doc! {"_id": 1, "a": {"9": 2, "10": 1}});
    }

    #[test]
    fn set_creates_intermediate_documents_and_indexes_arrays() {
        let d = updated(
            doc! {"_id": 1, "arr": [1, {"x": 1}]},
            doc! {"$set": {"p.q.r": 1, "arr.1.x": 2, "arr.3": 9}},
        );
        same(
            &d,
            &doc! {"_id": 1, "arr": [1, {"x": 2}, Bson::Null, 9], "p": {"q": {"r": 1}}},
        );
    }

    #[test]
    fn set_through_a_scalar_is_path_not_viable() {
        let e = error(doc! {"_id": 1, "a": 1}, doc! {"$set": {"a.b": 1}});
        assert_eq!(e.code, 28);
        assert_eq!(e.errmsg, "Cannot create field 'b' in element {a: 1}");
        let e = error(doc! {"_id": 1, "a": [1, 2]}, doc! {"$set": {"a.b": 1}});
        assert_eq!(e.code, 28);
        assert_eq!(e.errmsg, "Cannot create field 'b' in element {a: [ 1, 2 ]}");
    }

    #[test]
    fn set_of_an_identical_value_is_a_no_op_but_a_type_change_is_not() {
        let before = doc! {"_id": 1, "b": 1, "a": {"x": 1, "y": 2}};
        let d = updated(
            before.clone(),
            doc! {"$set": {"a": {"x": 1, "y": 2}, "b": 1}},
        );
        same(&d, &before);
        let d = updated(before.clone(), doc! {"$set": {"b": 1.0}});
        assert_eq!(d.get("b"), Some(&Bson::Double(1.0)));
        let d = updated(before, doc! {"$set": {"a": {"y": 2, "x": 1}}});
        same(&d, &doc! {"_id": 1, "b": 1, "a": {"y": 2, "x": 1}});
    }

    #[test]
    fn unset_removes_fields_nulls_array_elements_and_ignores_missing_paths() {
        let d = updated(
            doc! {"_id": 1, "a": 1, "b": [1, 2], "c": 3, "s": 5},
            doc! {"$unset": {"a": "", "b.0": 1, "missing.x": 1, "s.t": 1}},
        );
        same(&d, &doc! {"_id": 1, "b": [Bson::Null, 2], "c": 3, "s": 5});
    }

    #[test]
    fn inc_adds_creates_and_promotes_on_overflow() {
        let d = updated(
            doc! {"_id": 1, "i": 1, "big": i32::MAX, "long": i64::MAX, "f": 1.5},
            doc! {"$inc": {"i": 2, "big": 1, "long": 0_i64, "f": 1, "new": 5_i64}},
        );
        assert_eq!(d.get("i"), Some(&Bson::Int32(3)));
        assert_eq!(d.get("big"), Some(&Bson::Int64(i32::MAX as i64 + 1)));
        assert_eq!(d.get("long"), Some(&Bson::Int64(i64::MAX)));
        assert_eq!(d.get("f"), Some(&Bson::Double(2.5)));
        assert_eq!(d.get("new"), Some(&Bson::Int64(5)));
        let d = updated(doc! {"_id": 1, "i": 1}, doc! {"$inc": {"i": 1_i64}});
        assert_eq!(d.get("i"), Some(&Bson::Int64(2)));
    }

    #[test]
    fn int64_overflow_is_refused_as_mongod_does() {
        let e = error(doc! {"_id": 1, "n": i64::MAX}, doc! {"$inc": {"n": 1}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "Failed to apply $inc operations to current value ((NumberLong)9223372036854775807) \
             for document {_id: 1}"
        );
        let e = error(doc! {"_id": 1, "n": i64::MAX}, doc! {"$mul": {"n": 2}});
        assert_eq!(e.code, 2);
        let d = updated(doc! {"_id": 1, "n": i64::MAX}, doc! {"$inc": {"n": 1.0}});
        assert_eq!(d.get("n"), Some(&Bson::Double(i64::MAX as f64 + 1.0)));
    }

    #[test]
    fn inc_by_zero_is_a_no_op() {
        let before = doc! {"_id": 1, "i": 4};
        same(&updated(before.clone(), doc! {"$inc": {"i": 0}}), &before);
    }

    #[test]
    fn inc_with_a_non_numeric_argument_is_a_type_mismatch() {
        let e = parse_error(doc! {"$inc": {"a": "x"}});
        assert_eq!(e.code, 14);
        assert_eq!(
            e.errmsg,
            "Cannot increment with non-numeric argument: {a: \"x\"}"
        );
        let e = parse_error(doc! {"$mul": {"a": "x"}});
        assert_eq!(
            e.errmsg,
            "Cannot multiply with non-numeric argument: {a: \"x\"}"
        );
    }

    #[test]
    fn inc_on_a_non_numeric_field_is_a_type_mismatch() {
        let e = error(doc! {"_id": 1, "a": "s"}, doc! {"$inc": {"a": 1}});
        assert_eq!(e.code, 14);
        assert_eq!(
            e.errmsg,
            "Cannot apply $inc to a value of non-numeric type. {_id: 1} has the field 'a' of \
             non-numeric type string"
        );
    }

    #[test]
    fn mul_multiplies_and_sets_a_typed_zero_on_missing_fields() {
        let d = updated(
            doc! {"_id": 1, "a": 3, "b": i32::MAX},
            doc! {"$mul": {"a": 2, "b": 2, "c": 5_i64, "d": 2.5, "e": 7}},
        );
        assert_eq!(d.get("a"), Some(&Bson::Int32(6)));
        assert_eq!(d.get("b"), Some(&Bson::Int64(i32::MAX as i64 * 2)));
        assert_eq!(d.get("c"), Some(&Bson::Int64(0)));
        assert_eq!(d.get("d"), Some(&Bson::Double(0.0)));
        assert_eq!(d.get("e"), Some(&Bson::Int32(0)));
    }

    #[test]
    fn min_and_max_replace_only_when_beyond() {
        let d = updated(
            doc! {"_id": 1, "lo": 5, "hi": 5, "keep": 5},
            doc! {"$min": {"lo": 3, "keep": 9, "m": 1}, "$max": {"hi": 7.5}},
        );
        same(&d, &doc! {"_id": 1, "lo": 3, "hi": 7.5, "keep": 5, "m": 1});
    }

    #[test]
    fn rename_moves_values_and_ignores_missing_sources() {
        let d = updated(
            doc! {"_id": 1, "a": 1, "b": 2, "n": {"x": 3}},
            doc! {"$rename": {"a": "z", "n.x": "n.y", "missing": "q"}},
        );
        same(&d, &doc! {"_id": 1, "b": 2, "n": {"y": 3}, "z": 1});
        let d = updated(
            doc! {"_id": 1, "a": 1, "b": 2},
            doc! {"$rename": {"b": "a"}},
        );
        same(&d, &doc! {"_id": 1, "a": 2});
        let e = error(doc! {"_id": 1, "a": 1}, doc! {"$rename": {"a.b": "c"}});
        assert_eq!(e.code, 28);
        assert_eq!(
            e.errmsg,
            "cannot use the part (a of a.b) to traverse the element ({a: 1})"
        );
        let e = error(doc! {"_id": 1}, doc! {"$rename": {"_id": "x"}});
        assert_eq!(
            e.errmsg,
            "Unsetting the path '_id' using $rename would modify the immutable field '_id'"
        );
    }

    #[test]
    fn rename_rejects_same_paths_and_arrays() {
        let e = parse_error(doc! {"$rename": {"a": "a"}});
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                2,
                "The source and target field for $rename must differ: a: \"a\""
            )
        );
        let e = parse_error(doc! {"$rename": {"a": "a.b"}});
        assert_eq!(e.code, 2);
        assert!(
            e.errmsg.contains("must not be on the same path"),
            "{}",
            e.errmsg
        );
        let e = parse_error(doc! {"$rename": {"a": 1}});
        assert_eq!(e.code, 2);
        let e = parse_error(doc! {"$rename": {"a.$[]": "b"}});
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (2, "The source field for $rename may not be dynamic: a.$[]")
        );
        let e = error(
            doc! {"_id": 1, "a": [{"b": 1}]},
            doc! {"$rename": {"a.0.b": "c"}},
        );
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "The source field cannot be an array element, 'a.0.b' in doc with _id: 1 has an \
             array field called 'a'"
        );
        let e = error(
            doc! {"_id": 1, "a": 1, "c": [{}]},
            doc! {"$rename": {"a": "c.0.x"}},
        );
        assert_eq!(e.code, 2);
        assert!(
            e.errmsg
                .starts_with("The destination field cannot be an array element")
        );
    }

    #[test]
    fn set_on_insert_applies_only_to_upsert_inserts() {
        let update = Bson::Document(doc! {"$setOnInsert": {"created": 1}, "$set": {"a": 1}});
        let d = apply_with(doc! {"_id": 1}, update.clone(), &[], false).unwrap();
        same(&d, &doc! {"_id": 1, "a": 1});
        let d = apply_with(doc! {"_id": 1}, update, &[], true).unwrap();
        same(&d, &doc! {"_id": 1, "a": 1, "created": 1});
    }

    #[test]
    fn current_date_uses_now_or_cluster_time() {
        let d = updated(
            doc! {"_id": 1},
            doc! {"$currentDate": {"d": true, "f": false, "t": {"$type": "timestamp"}, "x": {"$type": "date"}}},
        );
        let now = Bson::DateTime(DateTime::from_millis(1_700_000_000_000));
        assert_eq!(d.get("d"), Some(&now));
        assert_eq!(d.get("f"), Some(&now));
        assert_eq!(d.get("x"), Some(&now));
        assert_eq!(
            d.get("t"),
            Some(&Bson::Timestamp(Timestamp {
                time: 1_700_000_000,
                increment: 7
            }))
        );
        let e = parse_error(doc! {"$currentDate": {"d": "yes"}});
        assert_eq!(e.code, 2);
        let e = parse_error(doc! {"$currentDate": {"d": {"$type": "string"}}});
        assert_eq!(e.code, 2);
        let e = parse_error(doc! {"$currentDate": {"d": {"$tpe": "date"}}});
        assert_eq!(e.errmsg, "Unrecognized $currentDate option: $tpe");
    }

    #[test]
    fn push_appends_and_creates_arrays() {
        let d = updated(
            doc! {"_id": 1, "a": [1]},
            doc! {"$push": {"a": 2, "b": {"x": 1}, "c": [1, 2]}},
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [1, 2], "b": [{"x": 1}], "c": [[1, 2]]},
        );
    }

    #[test]
    fn push_modifiers_position_then_sort_then_slice() {
        let d = updated(
            doc! {"_id": 1, "a": [1, 2, 3]},
            doc! {"$push": {"a": {"$each": [9, 8], "$position": 1}}},
        );
        same(&d, &doc! {"_id": 1, "a": [1, 9, 8, 2, 3]});
        let d = updated(
            doc! {"_id": 1, "a": [1, 2, 3]},
            doc! {"$push": {"a": {"$each": [9], "$position": -1}}},
        );
        same(&d, &doc! {"_id": 1, "a": [1, 2, 9, 3]});
        let d = updated(
            doc! {"_id": 1, "a": [5, 1, 4]},
            doc! {"$push": {"a": {"$each": [3], "$sort": -1, "$slice": 3}}},
        );
        same(&d, &doc! {"_id": 1, "a": [5, 4, 3]});
        let d = updated(
            doc! {"_id": 1, "a": [{"s": 2}, {"s": 1}]},
            doc! {"$push": {"a": {"$each": [{"s": 3}], "$sort": {"s": 1}, "$slice": -2}}},
        );
        same(&d, &doc! {"_id": 1, "a": [{"s": 2}, {"s": 3}]});
    }

    #[test]
    fn push_with_an_empty_each_is_a_no_op() {
        let before = doc! {"_id": 1, "a": [1, 2]};
        same(
            &updated(before.clone(), doc! {"$push": {"a": {"$each": []}}}),
            &before,
        );
    }

    #[test]
    fn push_errors() {
        let e = error(doc! {"_id": 1, "a": 1}, doc! {"$push": {"a": 2}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "The field 'a' must be an array but is of type int in document {_id: 1}"
        );
        let e = parse_error(doc! {"$push": {"a": {"$each": [1], "$bogus": 1}}});
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (2, "Unrecognized clause in $push: $bogus")
        );
        let e = parse_error(doc! {"$push": {"a": {"$each": 1}}});
        assert_eq!(e.code, 2);
        let e = parse_error(doc! {"$push": {"a": {"$each": [1], "$sort": 2}}});
        assert_eq!(e.code, 2);
        let e = parse_error(doc! {"$push": {"a": {"$each": [1], "$slice": 1.5}}});
        assert_eq!(e.code, 2);
    }

    #[test]
    fn add_to_set_appends_only_missing_values() {
        let d = updated(
            doc! {"_id": 1, "a": [1, 2]},
            doc! {"$addToSet": {"a": {"$each": [2, 3, 3, 1.0, 4]}, "b": 1}},
        );
        same(&d, &doc! {"_id": 1, "a": [1, 2, 3, 4], "b": [1]});
        let before = doc! {"_id": 1, "a": [1, 2]};
        same(
            &updated(before.clone(), doc! {"$addToSet": {"a": 2}}),
            &before,
        );
        let e = error(doc! {"_id": 1, "a": "x"}, doc! {"$addToSet": {"a": 1}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "Cannot apply $addToSet to non-array field. Field named 'a' has non-array type string"
        );
        let e = parse_error(doc! {"$addToSet": {"a": {"$each": 1}}});
        assert_eq!(e.code, 14);
    }

    #[test]
    fn pop_removes_first_or_last() {
        let d = updated(
            doc! {"_id": 1, "a": [1, 2, 3], "b": [1, 2, 3], "e": []},
            doc! {"$pop": {"a": -1, "b": 1, "e": 1, "missing": 1}},
        );
        same(&d, &doc! {"_id": 1, "a": [2, 3], "b": [1, 2], "e": []});
        let e = error(doc! {"_id": 1, "a": {"b": 1}}, doc! {"$pop": {"a.b": 1}});
        assert_eq!(e.code, 14);
        assert_eq!(
            e.errmsg,
            "Path 'a.b' contains an element of non-array type 'int'"
        );
        let e = parse_error(doc! {"$pop": {"a": 2}});
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (9, "$pop expects 1 or -1, found: 2")
        );
        let e = parse_error(doc! {"$pop": {"a": "x"}});
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (9, "Expected a number in: a: \"x\"")
        );
        let e = error(doc! {"_id": 1, "s": 1}, doc! {"$pop": {"s.t": 1}});
        assert_eq!(e.code, 28);
        assert_eq!(
            e.errmsg,
            "Cannot use the part (t) of (s.t) to traverse the element ({s: 1})"
        );
    }

    #[test]
    fn pull_and_pull_all_remove_equal_values() {
        let d = updated(
            doc! {"_id": 1, "a": [1, 2, 1.0, 3], "b": [1, 2, 3, 4]},
            doc! {"$pull": {"a": 1}, "$pullAll": {"b": [2, 4]}},
        );
        same(&d, &doc! {"_id": 1, "a": [2, 3], "b": [1, 3]});
        let e = error(doc! {"_id": 1, "a": 1}, doc! {"$pull": {"a": 1}});
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (2, "Cannot apply $pull to a non-array value")
        );
        assert_eq!(parse_error(doc! {"$pullAll": {"a": 1}}).code, 2);
    }

    #[test]
    fn pull_with_conditions() {
        let d = updated(
            doc! {"_id": 1, "a": [5, 6, 7, 1], "b": [{"x": 1, "y": 1}, {"x": 2}, 3]},
            doc! {"$pull": {"a": {"$gte": 6}, "b": {"x": 1}}},
        );
        same(&d, &doc! {"_id": 1, "a": [5, 1], "b": [{"x": 2}, 3]});
    }

    #[test]
    fn all_positional_updates_every_element() {
        let d = updated(
            doc! {"_id": 1, "a": [1, 2], "b": [{"c": 1}, {"c": 2}, {}]},
            doc! {"$inc": {"a.$[]": 10, "b.$[].c": 1}},
        );
        same(
            &d,
            &doc! {"_id": 1, "a": [11, 12], "b": [{"c": 2}, {"c": 3}, {"c": 1}]},
        );
    }

    #[test]
    fn array_updates_need_an_existing_array() {
        let e = error(doc! {"_id": 1}, doc! {"$set": {"a.$[]": 1}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "The path 'a' must exist in the document in order to apply array updates."
        );
        let e = error(doc! {"_id": 1, "a": 5}, doc! {"$set": {"a.$[]": 1}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "Cannot apply array updates to non-array element a: 5"
        );
    }

    #[test]
    fn array_filter_identifiers_must_match_the_filters() {
        let update = Bson::Document(doc! {"$set": {"a.$[x]": 1}});
        let e = apply_with(doc! {"_id": 1, "a": [1]}, update, &[], false).unwrap_err();
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "No array filter found for identifier 'x' in path 'a.$[x]'"
        );
        let update = Bson::Document(doc! {"$set": {"a": 1}});
        let e = apply_with(doc! {"_id": 1}, update, &[doc! {"x": 1}], false).unwrap_err();
        assert_eq!(e.code, 9);
        assert!(
            e.errmsg
                .starts_with("The array filter for identifier 'x' was not used in the update"),
            "{}",
            e.errmsg
        );
        let spec = UpdateSpec::parse(&Bson::Document(doc! {"$set": {"a.$[x]": 1}})).unwrap();
        let e = spec
            .validate_array_filters(&[doc! {"x": 1}, doc! {"x": 2}])
            .unwrap_err();
        assert_eq!(e.code, 9);
        let e = spec.validate_array_filters(&[doc! {"X": 1}]).unwrap_err();
        assert_eq!(e.code, 2);
        let e = spec
            .validate_array_filters(&[doc! {"x": 1, "y": 1}])
            .unwrap_err();
        assert_eq!(e.code, 9);
        let e = spec.validate_array_filters(&[doc! {}]).unwrap_err();
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                9,
                "Cannot use an expression without a top-level field name in arrayFilters"
            )
        );
    }

    #[test]
    fn filtered_positional_updates_matching_elements() {
        let update = Bson::Document(doc! {"$set": {"a.$[big].f": true}});
        let d = apply_with(
            doc! {"_id": 1, "a": [{"v": 1}, {"v": 5}]},
            update,
            &[doc! {"big.v": {"$gt": 2}}],
            false,
        )
        .unwrap();
        same(&d, &doc! {"_id": 1, "a": [{"v": 1}, {"v": 5, "f": true}]});
    }

    /// Applies `update` to `doc` as selected by `query`.
    fn positional(doc: Document, query: Document, update: Document) -> Result<Document> {
        let vars = vars();
        let matcher = Matcher::parse(&query)?;
        let spec = UpdateSpec::parse(&Bson::Document(update))?;
        let ctx = UpdateContext {
            is_upsert_insert: false,
            vars: &vars,
            array_filters: &[],
            query: Some(&matcher),
        };
        let mut doc = doc;
        spec.apply(&mut doc, &ctx)?;
        Ok(doc)
    }

    #[test]
    fn positional_operator_updates_the_matched_element() {
        let d = positional(
            doc! {"_id": 1, "a": [{"k": "x", "q": 1}, {"k": "y", "q": 2}]},
            doc! {"a.k": "y"},
            doc! {"$set": {"a.$.q": 9}, "$inc": {"a.$.n": 1}},
        )
        .unwrap();
        same(
            &d,
            &doc! {"_id": 1, "a": [{"k": "x", "q": 1}, {"k": "y", "q": 9, "n": 1}]},
        );
        let d = positional(
            doc! {"a": [1, 5, 7]},
            doc! {"a": {"$gt": 4}},
            doc! {"$set": {"a.$": 0}},
        )
        .unwrap();
        same(&d, &doc! {"a": [1, 0, 7]});
        let d = positional(
            doc! {"a": [{"b": 1, "c": 1}, {"b": 2, "c": 2}]},
            doc! {"a": {"$elemMatch": {"b": 2, "c": 2}}},
            doc! {"$unset": {"a.$.c": 1}},
        )
        .unwrap();
        same(&d, &doc! {"a": [{"b": 1, "c": 1}, {"b": 2}]});
        // Nested arrays: the outermost array's offset.
        let d = positional(
            doc! {"a": [{"b": [1, 2]}, {"b": [3, 4]}]},
            doc! {"a.b": 4},
            doc! {"$push": {"a.$.b": 5}},
        )
        .unwrap();
        same(&d, &doc! {"a": [{"b": [1, 2]}, {"b": [3, 4, 5]}]});
    }

    #[test]
    fn positional_operator_needs_an_array_match_in_the_query() {
        let e = positional(
            doc! {"_id": 1, "a": [1, 2]},
            doc! {"_id": 1},
            doc! {"$set": {"a.$": 0}},
        )
        .unwrap_err();
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "The positional operator did not find the match needed from the query."
        );
        // An upsert's insert has no match either.
        let e = apply_with(
            doc! {"a": 1},
            Bson::Document(doc! {"$set": {"a.$": 0}}),
            &[],
            true,
        )
        .unwrap_err();
        assert_eq!(e.code, 2);
    }

    #[test]
    fn positional_operator_merges_with_the_same_offset_named() {
        let d = positional(
            doc! {"a": [{"x": 1}, {"x": 2}]},
            doc! {"a.x": 2},
            doc! {"$set": {"a.$.y": 1, "a.1.z": 1, "a.0.w": 1}},
        )
        .unwrap();
        same(
            &d,
            &doc! {"a": [{"x": 1, "w": 1}, {"x": 2, "y": 1, "z": 1}]},
        );
        let e = positional(
            doc! {"a": [{"x": 1}, {"x": 2}]},
            doc! {"a.x": 2},
            doc! {"$set": {"a.$": 1, "a.1": 2}},
        )
        .unwrap_err();
        assert_eq!(e.code, 40);
        assert_eq!(e.errmsg, "Update created a conflict at 'a.1'");
    }

    #[test]
    fn positional_operator_path_rules() {
        let e = parse_error(doc! {"$set": {"a.$.b.$": 1}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "Too many positional (i.e. '$') elements found in path 'a.$.b.$'"
        );
        let e = parse_error(doc! {"$set": {"$.a": 1}});
        assert_eq!(e.code, 2);
        assert_eq!(
            e.errmsg,
            "Cannot have positional (i.e. '$') element in the first position in path '$.a'"
        );
        let e = parse_error(doc! {"$set": {"a.$": 1}, "$inc": {"a.$": 1}});
        assert_eq!(e.code, 40);
    }

    #[test]
    fn malformed_operator_documents_fail_to_parse() {
        let e = parse_error(doc! {"$foo": {"a": 1}});
        assert_eq!((e.code, e.code_name.as_str()), (9, "FailedToParse"));
        assert_eq!(
            e.errmsg,
            "Unknown modifier: $foo. Expected a valid update modifier or pipeline-style update \
             specified as an array"
        );
        let e = parse_error(doc! {"$set": {"a": 1}, "b": 1});
        assert_eq!(e.code, 9);
        let e = parse_error(doc! {"$set": {}});
        assert_eq!(
            e.errmsg,
            "'$set' is empty. You must specify a field like so: {$set: {<field_name>: ...}}"
        );
        assert_eq!(e.code, 9);
        assert_eq!(parse_error(doc! {"$set": 1}).code, 9);
        assert_eq!(parse_error(doc! {"$set": {"": 1}}).code, 56);
        assert_eq!(parse_error(doc! {"$set": {"a..b": 1}}).code, 56);
    }

    #[test]
    fn conflicting_paths_are_rejected() {
        let e = parse_error(doc! {"$set": {"a": 1}, "$inc": {"a.b": 1}});
        assert_eq!(
            (e.code, e.code_name.as_str()),
            (40, "ConflictingUpdateOperators")
        );
        assert_eq!(
            e.errmsg,
            "Updating the path 'a.b' would create a conflict at 'a'"
        );
        let e = parse_error(doc! {"$set": {"a.b": 1}, "$inc": {"a": 1}});
        assert_eq!(
            e.errmsg,
            "Updating the path 'a' would create a conflict at 'a'"
        );
        let e = parse_error(doc! {"$set": {"x": 1}, "$rename": {"x": "y"}});
        assert_eq!(e.code, 40);
        let e = parse_error(doc! {"$set": {"a.$[]": 1, "a.0": 1}});
        assert_eq!(e.code, 40);
        UpdateSpec::parse(&Bson::Document(doc! {"$set": {"a.b": 1, "a.c": 1}})).unwrap();
    }

    #[test]
    fn modifying_id_is_immutable_field() {
        for update in [
            doc! {"$set": {"_id": 2}},
            doc! {"$unset": {"_id": 1}},
            doc! {"$rename": {"_id": "x"}},
            doc! {"$inc": {"_id": 1}},
        ] {
            let e = error(doc! {"_id": 1, "x": 0}, update);
            assert_eq!((e.code, e.code_name.as_str()), (66, "ImmutableField"));
        }
        let e = error(doc! {"_id": 1}, doc! {"$set": {"_id": 2}});
        assert_eq!(
            e.errmsg,
            "Performing an update on the path '_id' would modify the immutable field '_id'"
        );
        let before = doc! {"_id": 1, "a": 1};
        same(&updated(before.clone(), doc! {"$set": {"_id": 1}}), &before);
    }

    #[test]
    fn replacement_keeps_id_first_and_replaces_the_rest() {
        let d = apply(doc! {"_id": 1, "a": 1, "b": 2}, doc! {"c": 3}).unwrap();
        same(&d, &doc! {"_id": 1, "c": 3});
        let d = apply(doc! {"_id": 1, "a": 1}, doc! {"a": 2, "_id": 1}).unwrap();
        same(&d, &doc! {"a": 2, "_id": 1});
        let before = doc! {"_id": 1, "a": 1};
        same(&apply(before.clone(), doc! {"a": 1}).unwrap(), &before);
        assert!(
            UpdateSpec::parse(&Bson::Document(doc! {"a": 1}))
                .unwrap()
                .is_replacement()
        );
    }

    #[test]
    fn replacement_fills_empty_timestamps_with_the_cluster_time() {
        let empty = Bson::Timestamp(Timestamp {
            time: 0,
            increment: 0,
        });
        let d = apply(
            doc! {"_id": 1},
            doc! {"ts": empty.clone(), "nested": {"ts": empty.clone()}},
        )
        .unwrap();
        assert_eq!(
            d.get("ts"),
            Some(&Bson::Timestamp(Timestamp {
                time: 1_700_000_000,
                increment: 7
            }))
        );
        assert_eq!(d.get_document("nested").unwrap().get("ts"), Some(&empty));
    }

    #[test]
    fn replacement_may_not_change_id_or_hold_dollar_fields() {
        let e = apply(doc! {"_id": 1, "a": 1}, doc! {"_id": 2}).unwrap_err();
        assert_eq!(e.code, 66);
        assert_eq!(
            e.errmsg,
            "After applying the update, the (immutable) field '_id' was found to have been \
             altered to _id: 2"
        );
        let e = apply(doc! {"_id": 1}, doc! {"a": 1, "$set": {"b": 1}}).unwrap_err();
        assert_eq!(
            (e.code, e.code_name.as_str()),
            (52, "DollarPrefixedFieldName")
        );
        assert_eq!(
            e.errmsg,
            "The dollar ($) prefixed field '$set' in '$set' is not allowed in the context of an \
             update's replacement document. Consider using an aggregation pipeline with \
             $replaceWith."
        );
        let d = apply(doc! {"_id": 1}, doc! {"a": {"$x": 1}}).unwrap();
        same(&d, &doc! {"_id": 1, "a": {"$x": 1}});
        let e = apply(doc! {"a": 1}, doc! {"_id": [1]}).unwrap_err();
        assert_eq!(e.code, 53);
    }

    #[test]
    fn top_level_dollar_fields_are_refused_except_on_upsert_inserts() {
        let update = doc! {"$set": {"$hotel": 1, "a.$nested": 2}};
        let e = error(doc! {"_id": 1}, update.clone());
        assert_eq!(e.code, 52);
        assert!(
            e.errmsg
                .starts_with("The dollar ($) prefixed field '$hotel' in '$hotel'")
        );
        let d = apply_with(doc! {"_id": 1}, Bson::Document(update), &[], true).unwrap();
        same(&d, &doc! {"_id": 1, "$hotel": 1, "a": {"$nested": 2}});
        let d = updated(doc! {"_id": 1, "a": 1}, doc! {"$set": {"b.$x": 1}});
        same(&d, &doc! {"_id": 1, "a": 1, "b": {"$x": 1}});
        let d = updated(doc! {"_id": 1, "$old": 1}, doc! {"$unset": {"$old": 1}});
        same(&d, &doc! {"_id": 1});
    }

    #[test]
    fn array_update_paths_name_the_whole_missing_path() {
        let e = error(doc! {"_id": 1, "x": 1}, doc! {"$set": {"x.a.$[]": 1}});
        assert_eq!(
            e.errmsg,
            "The path 'x.a' must exist in the document in order to apply array updates."
        );
    }

    #[test]
    fn pipelines_reject_array_filters() {
        let spec =
            UpdateSpec::parse(&Bson::Array(vec![Bson::Document(doc! {"$set": {"a": 1}})])).unwrap();
        assert!(!spec.is_replacement());
        let e = spec.validate_array_filters(&[doc! {"x": 1}]).unwrap_err();
        assert_eq!(e.code, 9);
        assert!(spec.validate_array_filters(&[]).is_ok());
    }

    #[test]
    fn pipelines_apply_and_keep_id() {
        let pipeline = Bson::Array(vec![Bson::Document(doc! {"$set": {"b": 2}})]);
        let d = apply_with(doc! {"_id": 1, "a": 1}, pipeline, &[], false).unwrap();
        same(&d, &doc! {"_id": 1, "a": 1, "b": 2});
        let pipeline = Bson::Array(vec![Bson::Document(doc! {"$set": {"_id": 2}})]);
        let e = apply_with(doc! {"_id": 1}, pipeline, &[], false).unwrap_err();
        assert_eq!(e.code, 66);
    }

    #[test]
    fn upsert_seed_takes_equalities() {
        let seed = upsert_seed(&doc! {
            "z": 1,
            "b.c": {"$eq": "x"},
            "g": {"$gt": 1},
            "in": {"$in": [1, 2]},
            "one": {"$in": [4]},
            "$and": [{"a": 2}, {"r": {"$exists": true}}],
            "$or": [{"o": 3}],
            "_id": 7,
        })
        .unwrap();
        same(
            &seed,
            &doc! {"_id": 7, "a": 2, "b": {"c": "x"}, "o": 3, "one": 4, "z": 1},
        );
        same(
            &upsert_seed(&doc! {"$or": [{"a": 1}, {"b": 2}], "r": {"$regex": "x"}}).unwrap(),
            &doc! {},
        );
    }

    #[test]
    fn upsert_seed_rejects_a_path_pinned_twice() {
        let e = upsert_seed(&doc! {"a": 1, "$and": [{"a": 2}]}).unwrap_err();
        assert_eq!((e.code, e.code_name.as_str()), (54, "NotSingleValueField"));
        assert_eq!(
            e.errmsg,
            "cannot infer query fields to set, path 'a' is matched twice"
        );
        let e = upsert_seed(&doc! {"a": 1, "a.b": 2}).unwrap_err();
        assert_eq!(e.code, 54);
        let e = upsert_seed(&doc! {"a": {"$all": [1, 2]}}).unwrap_err();
        assert_eq!(e.code, 54);
        same(
            &upsert_seed(&doc! {"a": {"$all": [1]}}).unwrap(),
            &doc! {"a": 1},
        );
    }

    #[test]
    fn build_upsert_seeds_and_applies_the_update() {
        let vars = vars();
        let ctx = UpdateContext {
            is_upsert_insert: false,
            vars: &vars,
            array_filters: &[],
            query: None,
        };
        let spec = UpdateSpec::parse(&Bson::Document(
            doc! {"$set": {"b": 1}, "$setOnInsert": {"c": 1}},
        ))
        .unwrap();
        let d = build_upsert(&doc! {"a": 5, "_id": 3}, &spec, &ctx).unwrap();
        same(&d, &doc! {"_id": 3, "a": 5, "b": 1, "c": 1});

        let d = build_upsert(&doc! {"a": 5}, &spec, &ctx).unwrap();
        assert!(matches!(d.iter().next(), Some((k, Bson::ObjectId(_))) if k == "_id"));
        assert_eq!(d.get("a"), Some(&Bson::Int32(5)));

        let replacement = UpdateSpec::parse(&Bson::Document(doc! {"x": 1})).unwrap();
        let d = build_upsert(&doc! {"_id": 3, "a": 5}, &replacement, &ctx).unwrap();
        same(&d, &doc! {"_id": 3, "x": 1});

        let id_change = UpdateSpec::parse(&Bson::Document(doc! {"$set": {"_id": 4}})).unwrap();
        let e = build_upsert(&doc! {"_id": 3}, &id_change, &ctx).unwrap_err();
        assert_eq!(e.code, 66);
        let d = build_upsert(&doc! {"a": 1}, &id_change, &ctx).unwrap();
        same(&d, &doc! {"_id": 4, "a": 1});
    }
}
