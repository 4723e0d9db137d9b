//! Query filters (`find`, `update`, `delete`, `$match`): comparison, logical, element,
//! array and `$expr` operators over dotted paths with array element matching.
//!
//! A filter is parsed and validated into a tree up front, as mongod's `MatchExpressionParser`
//! does before it looks at any document, and the tree is then evaluated per document without
//! copying it. Path traversal follows mongod's `BSONElementIterator` (manual: "Query an Array",
//! "Query on Embedded/Nested Documents", "Query for Null or Missing Fields").

// `CommandError` is the shared error type of every module; its size is not this module's to change.
#![allow(clippy::result_large_err)]

use crate::compare::{as_f64, compare, is_number, type_rank};
use crate::error::{COMMAND_NOT_SUPPORTED, CommandError, FAILED_TO_PARSE, Result, TYPE_MISMATCH};
use crate::expr::{Expr, Variables, is_truthy};
use bson::{Bson, Document};
use std::cmp::Ordering;

/// A parsed filter. Parsing rejects unknown operators (code 2 BadValue "unknown operator").
#[derive(Debug, Clone)]
pub struct Matcher {
    filter: Document,
    root: Node,
}

impl Matcher {
    /// Validates the whole filter before any document is read, as mongod does: a bad operator
    /// anywhere fails the command even when no document would reach it.
    pub fn parse(filter: &Document) -> Result<Matcher> {
        Ok(Matcher {
            filter: filter.clone(),
            root: parse_filter(filter, Level::Top)?,
        })
    }

    /// True when `doc` satisfies the filter. Errors come only from `$expr` evaluation.
    pub fn matches(&self, doc: &Document, vars: &Variables) -> Result<bool> {
        let ctx = Ctx { root: doc, vars };
        self.root.eval(Obj::Doc(doc), Some(&ctx))
    }

    /// Like [`Matcher::matches`], also reporting the array offset the positional `$` update
    /// operator stands for (mongod's `MatchDetails::elemMatchKey`): `Ok(None)` when the
    /// document does not match, `Ok(Some(None))` when it matches without going through an
    /// array element. The offset is that of the outermost array a path predicate traversed
    /// (or, without one, of the element an `$elemMatch` selected); among the conjuncts of an
    /// `$and` the last one that records an offset wins, and `$or`, `$nor` and `$not` record
    /// none, as in mongod.
    pub fn match_position(
        &self,
        doc: &Document,
        vars: &Variables,
    ) -> Result<Option<Option<usize>>> {
        let ctx = Ctx { root: doc, vars };
        let mut position = None;
        Ok(self
            .root
            .eval_recording(doc, &ctx, &mut position)?
            .then_some(position))
    }

    /// The value `path` must equal for the filter to match, when the filter pins it to one
    /// scalar (`{path: v}` or `{path: {$eq: v}}`, also inside a top-level `$and`). Storage uses
    /// it to look documents up through an index; the full filter is still applied afterwards.
    /// `None` for arrays, documents, regexes, null and anything not a plain equality.
    ///
    /// The equality has array semantics: `{a: 1}` also matches `{a: [1, 2]}`, and numbers
    /// match across widths (`1 == 1.0 == NumberLong(1)`), so a lookup must compare with
    /// `crate::compare` and consider multikey entries.
    pub fn equality_on(&self, path: &str) -> Option<&bson::Bson> {
        self.root.equality_on(path)
    }

    /// The values the filter requires `path` to equal one of (`{path: {$in: [...]}}` at the
    /// top level, without regexes or null), each usable as [`Matcher::equality_on`]'s value
    /// is: an index is probed once per value, as mongod's index bounds for `$in` are.
    pub fn in_values_on(&self, path: &str) -> Option<&[bson::Bson]> {
        self.root.in_values_on(path)
    }

    /// The filter as given.
    pub fn filter(&self) -> &Document {
        &self.filter
    }
}

/// Where in a filter a document is being parsed: `$expr` (and mongod's `$text`) may only
/// appear at the top level, not inside an `$elemMatch` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Top,
    Sub,
}

/// What evaluation of top-level operators needs besides the current (sub)document.
struct Ctx<'a> {
    root: &'a Document,
    vars: &'a Variables,
}

/// One node of the match tree, mirroring mongod's `MatchExpression` classes.
#[derive(Debug, Clone)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    Not(Box<Node>),
    AlwaysTrue,
    AlwaysFalse,
    Expr(Box<Expr>),
    Path(FieldPath, Test),
}

/// A dotted path split once at parse time; `indexes` holds each component's value as an
/// array offset when it is one (canonical decimal digits).
#[derive(Debug, Clone)]
struct FieldPath {
    dotted: String,
    parts: Vec<String>,
    indexes: Vec<Option<usize>>,
}

impl FieldPath {
    fn new(dotted: &str) -> FieldPath {
        let parts: Vec<String> = dotted.split('.').map(str::to_string).collect();
        let indexes = parts.iter().map(|p| array_index(p)).collect();
        FieldPath {
            dotted: dotted.to_string(),
            parts,
            indexes,
        }
    }
}

/// A path component as an array offset: only canonical decimal digits ("0", "12"; not "01"
/// or "+1"), because mongod compares it with the array element's field name.
fn array_index(part: &str) -> Option<usize> {
    let bytes = part.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    part.parse().ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Lt,
    Lte,
    Gt,
    Gte,
}

/// The test a path predicate applies to each value the path yields (mongod's
/// `matchesSingleElement`). `None` stands for a missing value.
#[derive(Debug, Clone)]
enum Test {
    Cmp(CmpOp, Bson),
    In(InSet),
    Regex(RegexTest),
    Exists,
    Type(TypeSet),
    Mod {
        divisor: i64,
        remainder: i64,
    },
    Size(usize),
    /// `{$elemMatch: {$gt: 1, $lt: 5}}`: one array element must satisfy every child.
    ElemMatchValue(Vec<Node>),
    /// `{$elemMatch: {b: 1, c: 2}}`: one array element (a document) must match the filter.
    ElemMatchObject(Box<Node>),
}

impl Test {
    /// `$size` and `$elemMatch` look at a leaf array as a whole; every other test also
    /// looks at each of its elements ("Query an Array").
    fn traverses_leaf_arrays(&self) -> bool {
        !matches!(
            self,
            Test::Size(_) | Test::ElemMatchValue(_) | Test::ElemMatchObject(_)
        )
    }

    /// For an `$elemMatch` test that matches `v`, the offset of the first array element that
    /// satisfied it (mongod's `ElemMatchObjectMatchExpression::matchesArray` records it).
    fn matched_element(&self, v: Option<&Bson>) -> Option<usize> {
        let Some(Bson::Array(items)) = v else {
            return None;
        };
        match self {
            Test::ElemMatchValue(children) => items
                .iter()
                .position(|item| children.iter().all(|c| c.matches_value(Some(item)))),
            Test::ElemMatchObject(sub) => items.iter().position(|item| match item {
                Bson::Document(d) => sub.eval(Obj::Doc(d), None).unwrap_or(false),
                Bson::Array(a) => sub.eval(Obj::Arr(a), None).unwrap_or(false),
                _ => false,
            }),
            _ => None,
        }
    }

    fn matches(&self, v: Option<&Bson>) -> bool {
        match self {
            Test::Cmp(op, rhs) => compare_single(*op, v, rhs),
            Test::In(set) => set.contains(v),
            Test::Regex(re) => v.is_some_and(|v| re.matches(v)),
            Test::Exists => v.is_some(),
            Test::Type(types) => v.is_some_and(|v| types.contains(v)),
            Test::Mod { divisor, remainder } => v
                .and_then(mod_dividend)
                .is_some_and(|d| d.wrapping_rem(*divisor) == *remainder),
            Test::Size(n) => matches!(v, Some(Bson::Array(a)) if a.len() == *n),
            Test::ElemMatchValue(children) => match v {
                Some(Bson::Array(items)) => items
                    .iter()
                    .any(|item| children.iter().all(|c| c.matches_value(Some(item)))),
                _ => false,
            },
            Test::ElemMatchObject(sub) => match v {
                // An element that is itself an array is matched as an object with the keys
                // "0", "1", ... (mongod's `isABSONObj`).
                Some(Bson::Array(items)) => items.iter().any(|item| match item {
                    Bson::Document(d) => sub.eval(Obj::Doc(d), None).unwrap_or(false),
                    Bson::Array(a) => sub.eval(Obj::Arr(a), None).unwrap_or(false),
                    _ => false,
                }),
                _ => false,
            },
        }
    }
}

/// mongod's canonical type of a possibly missing value: missing ranks with undefined (0).
fn canonical_rank(v: Option<&Bson>) -> i32 {
    v.map_or(0, type_rank)
}

fn is_nan(v: &Bson) -> bool {
    is_number(v) && as_f64(v).is_some_and(f64::is_nan)
}

/// One comparison as mongod's `ComparisonMatchExpressionBase::compare` does it: values of
/// different canonical types never match ("type bracketing", manual: "Comparison/Sort
/// Order"), except that null equals missing/undefined and MinKey/MaxKey bound everything.
fn compare_single(op: CmpOp, v: Option<&Bson>, rhs: &Bson) -> bool {
    let (lr, rr) = (canonical_rank(v), type_rank(rhs));
    if lr != rr {
        if lr + rr == 5 {
            // Null (5) against missing or undefined (0).
            return matches!(op, CmpOp::Eq | CmpOp::Lte | CmpOp::Gte);
        }
        return match rhs {
            Bson::MaxKey => matches!(op, CmpOp::Lt | CmpOp::Lte),
            Bson::MinKey => matches!(op, CmpOp::Gt | CmpOp::Gte),
            _ => false,
        };
    }
    let Some(v) = v else {
        return matches!(op, CmpOp::Eq | CmpOp::Lte | CmpOp::Gte);
    };
    if is_nan(v) || is_nan(rhs) {
        // NaN equals NaN and is neither below nor above any number.
        let both = is_nan(v) && is_nan(rhs);
        return match op {
            CmpOp::Lt | CmpOp::Gt => false,
            CmpOp::Eq | CmpOp::Lte | CmpOp::Gte => both,
        };
    }
    let c = compare(v, rhs);
    match op {
        CmpOp::Eq => c == Ordering::Equal,
        CmpOp::Lt => c == Ordering::Less,
        CmpOp::Lte => c != Ordering::Greater,
        CmpOp::Gt => c == Ordering::Greater,
        CmpOp::Gte => c != Ordering::Less,
    }
}

/// The integral dividend `$mod` uses: numbers truncated toward zero; NaN and infinities
/// never match.
fn mod_dividend(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(_) | Bson::Decimal128(_) => {
            let d = as_f64(v)?.trunc();
            (-TWO_POW_63..TWO_POW_63).contains(&d).then_some(d as i64)
        }
        _ => None,
    }
}

/// Values an index can be probed with for equality (scalars; arrays, documents, null and
/// the like match in ways a prefix lookup does not cover).
fn index_probe(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Double(_)
            | Bson::Int32(_)
            | Bson::Int64(_)
            | Bson::Decimal128(_)
            | Bson::String(_)
            | Bson::ObjectId(_)
            | Bson::Boolean(_)
            | Bson::DateTime(_)
            | Bson::Timestamp(_)
            | Bson::Binary(_)
    )
}

/// The values of `$in`/`$nin`, sorted by BSON order for binary search, plus its regexes.
#[derive(Debug, Clone)]
struct InSet {
    values: Vec<Bson>,
    has_null: bool,
    regexes: Vec<RegexTest>,
}

impl InSet {
    fn contains(&self, v: Option<&Bson>) -> bool {
        // With null in the list, `$in` matches missing and undefined as `{$eq: null}` does.
        if self.has_null && matches!(v, None | Some(Bson::Undefined)) {
            return true;
        }
        let Some(v) = v else {
            return false;
        };
        self.values
            .binary_search_by(|probe| compare(probe, v))
            .is_ok()
            || self.regexes.iter().any(|re| re.matches(v))
    }
}

/// A `$regex` (or BSON regex) predicate: the pattern and options as given, and the pattern
/// compiled for the `regex` crate.
#[derive(Debug, Clone)]
struct RegexTest {
    pattern: String,
    options: String,
    compiled: regex::Regex,
}

impl RegexTest {
    /// Strings and symbols are searched; a stored BSON regex matches only the identical
    /// regex (mongod's `RegexMatchExpression::matchesSingleElement`).
    fn matches(&self, v: &Bson) -> bool {
        match v {
            Bson::String(s) | Bson::Symbol(s) => self.compiled.is_match(s),
            Bson::RegularExpression(r) => {
                r.pattern == self.pattern && sorted_chars(&r.options) == sorted_chars(&self.options)
            }
            _ => false,
        }
    }
}

fn sorted_chars(s: &str) -> Vec<char> {
    let mut v: Vec<char> = s.chars().collect();
    v.sort_unstable();
    v
}

/// The longest pattern mongod's PCRE wrapper compiles.
const MAX_PATTERN_SIZE: usize = 32764;

fn compile_regex(pattern: &str, options: &str) -> Result<RegexTest> {
    if pattern.len() > MAX_PATTERN_SIZE {
        return Err(CommandError::location(
            51091,
            "Regular expression is invalid: pattern string is longer than the limit set by the \
             application",
        ));
    }
    if pattern.contains('\0') {
        return Err(CommandError::bad_value(
            "Regular expression cannot contain an embedded null byte",
        ));
    }
    let mut builder_flags = (false, false, false, false);
    for flag in options.chars() {
        match flag {
            'i' => builder_flags.0 = true,
            'm' => builder_flags.1 = true,
            's' => builder_flags.2 = true,
            'x' => builder_flags.3 = true,
            // PCRE's UTF mode: always on here.
            'u' => {}
            other => {
                // mongod names no operator here, hence the leading space.
                return Err(CommandError::location(
                    51108,
                    format!(" invalid flag in regex options: {other}"),
                ));
            }
        }
    }
    let (case_insensitive, multi_line, dot_all, extended) = builder_flags;
    let translated = translate_pcre(pattern, multi_line);
    let compiled = regex::RegexBuilder::new(&translated)
        .case_insensitive(case_insensitive)
        .multi_line(multi_line)
        .dot_matches_new_line(dot_all)
        .ignore_whitespace(extended)
        .build()
        .map_err(|e| {
            CommandError::location(51091, format!("Regular expression is invalid: {e}"))
        })?;
    Ok(RegexTest {
        pattern: pattern.to_string(),
        options: options.to_string(),
        compiled,
    })
}

/// Rewrites the PCRE constructs whose meaning differs in the `regex` crate; constructs the
/// crate lacks (backreferences, lookaround, possessive quantifiers) are left for it to
/// reject, which becomes error 51091 as an invalid pattern.
///
/// - `\d \w \s` and negations are ASCII in PCRE without UCP: rewritten to ASCII classes.
/// - `$` without `m` also matches before a final newline in PCRE, and `\Z` likewise.
/// - `\Q...\E` quotes literally.
/// - `{` that does not start a quantifier and a stray `}` are literals in PCRE.
/// - Inside a class `[`, `&` and `~` are literals in PCRE but set syntax in the crate.
/// - `\<` and `\>` are literal characters in PCRE but word boundaries in the crate.
/// - `(?#...)` comments are dropped.
fn translate_pcre(pattern: &str, multi_line: bool) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                let Some(&next) = chars.get(i + 1) else {
                    out.push('\\');
                    i += 1;
                    continue;
                };
                match next {
                    'Q' => {
                        let mut j = i + 2;
                        while j < chars.len()
                            && !(chars[j] == '\\' && chars.get(j + 1) == Some(&'E'))
                        {
                            push_literal(&mut out, chars[j]);
                            j += 1;
                        }
                        i = if j < chars.len() { j + 2 } else { j };
                        continue;
                    }
                    'E' => {}
                    'd' | 'D' | 'w' | 'W' | 's' | 'S' => {
                        let class = match next {
                            'd' => "[:digit:]",
                            'D' => "[:^digit:]",
                            'w' => "[:word:]",
                            'W' => "[:^word:]",
                            's' => "[:space:]",
                            _ => "[:^space:]",
                        };
                        if in_class {
                            out.push_str(class);
                        } else {
                            out.push('[');
                            out.push_str(class);
                            out.push(']');
                        }
                    }
                    'Z' if !in_class => out.push_str(r"(?:\n?\z)"),
                    '<' | '>' => out.push(next),
                    // `\x{263a}`, `\p{L}`: the braces belong to the escape.
                    'x' | 'p' | 'P' if chars.get(i + 2) == Some(&'{') => {
                        let close = (i + 3..chars.len()).find(|&j| chars[j] == '}');
                        let end = close.unwrap_or(chars.len() - 1);
                        out.extend(&chars[i..=end]);
                        i = end + 1;
                        continue;
                    }
                    _ => {
                        out.push('\\');
                        out.push(next);
                    }
                }
                i += 2;
            }
            // A PCRE comment group `(?#...)`.
            '(' if !in_class
                && chars.get(i + 1) == Some(&'?')
                && chars.get(i + 2) == Some(&'#') =>
            {
                let close = (i + 3..chars.len()).find(|&j| chars[j] == ')');
                i = close.map_or(chars.len(), |j| j + 1);
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` right after the opening bracket is a literal.
                if chars.get(i) == Some(&']') {
                    out.push_str(r"\]");
                    i += 1;
                }
            }
            '[' => {
                // POSIX class `[:alpha:]` inside a class is shared syntax; any other `[` is a
                // literal in PCRE.
                let posix_end = (chars.get(i + 1) == Some(&':'))
                    .then(|| {
                        (i + 2..chars.len().saturating_sub(1))
                            .find(|&j| chars[j] == ':' && chars[j + 1] == ']')
                    })
                    .flatten();
                if let Some(end) = posix_end {
                    out.extend(&chars[i..end + 2]);
                    i = end + 2;
                } else {
                    out.push_str(r"\[");
                    i += 1;
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
                i += 1;
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
                i += 1;
            }
            '$' if !in_class && !multi_line => {
                out.push_str(r"(?:\n?\z)");
                i += 1;
            }
            '{' if !in_class => match quantifier_end(&chars, i) {
                Some(end) => {
                    out.extend(&chars[i..=end]);
                    i = end + 1;
                }
                None => {
                    out.push_str(r"\{");
                    i += 1;
                }
            },
            '}' if !in_class => {
                out.push_str(r"\}");
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The index of the `}` closing a `{n}`, `{n,}` or `{n,m}` quantifier starting at `start`.
fn quantifier_end(chars: &[char], start: usize) -> Option<usize> {
    let mut j = start + 1;
    let digits_from = j;
    while chars.get(j).is_some_and(char::is_ascii_digit) {
        j += 1;
    }
    if j == digits_from {
        return None;
    }
    if chars.get(j) == Some(&',') {
        j += 1;
        while chars.get(j).is_some_and(char::is_ascii_digit) {
            j += 1;
        }
    }
    (chars.get(j) == Some(&'}')).then_some(j)
}

fn push_literal(out: &mut String, c: char) {
    if regex_syntax_meta(c) {
        out.push('\\');
    }
    out.push(c);
}

fn regex_syntax_meta(c: char) -> bool {
    matches!(
        c,
        '\\' | '.'
            | '+'
            | '*'
            | '?'
            | '('
            | ')'
            | '|'
            | '['
            | ']'
            | '{'
            | '}'
            | '^'
            | '$'
            | '#'
            | '&'
            | '-'
            | '~'
            | ' '
    )
}

/// A `$type` operand: BSON type numbers, or every numeric type for `"number"`.
#[derive(Debug, Clone, Default)]
struct TypeSet {
    codes: Vec<i32>,
    all_numbers: bool,
}

impl TypeSet {
    fn contains(&self, v: &Bson) -> bool {
        (self.all_numbers && is_number(v)) || self.codes.contains(&crate::bsontype::type_number(v))
    }
}

/// mongod's `$type` aliases (`kTypeAliasMap`).
fn type_alias(name: &str) -> Option<i32> {
    Some(match name {
        "double" => 1,
        "string" => 2,
        "object" => 3,
        "array" => 4,
        "binData" => 5,
        "undefined" => 6,
        "objectId" => 7,
        "bool" => 8,
        "date" => 9,
        "null" => 10,
        "regex" => 11,
        "dbPointer" => 12,
        "javascript" => 13,
        "symbol" => 14,
        "javascriptWithScope" => 15,
        "int" => 16,
        "timestamp" => 17,
        "long" => 18,
        "decimal" => 19,
        "minKey" => -1,
        "maxKey" => 127,
        _ => return None,
    })
}

fn parse_type_set(path: &str, v: &Bson) -> Result<TypeSet> {
    let mut set = TypeSet::default();
    match v {
        Bson::Array(items) => {
            for item in items {
                add_type(&mut set, item)?;
            }
        }
        other => add_type(&mut set, other)?,
    }
    if set.codes.is_empty() && !set.all_numbers {
        return Err(CommandError::new(
            FAILED_TO_PARSE,
            format!("{path} must match at least one type"),
        ));
    }
    Ok(set)
}

fn add_type(set: &mut TypeSet, v: &Bson) -> Result<()> {
    if let Bson::String(alias) = v {
        if alias == "number" {
            set.all_numbers = true;
            return Ok(());
        }
        if alias == "missing" {
            return Err(CommandError::bad_value(
                "'missing' is not a legal type name. To query for non-existence of a field, use \
                 {$exists:false}.",
            ));
        }
        let code = type_alias(alias)
            .ok_or_else(|| CommandError::bad_value(format!("Unknown type name alias: {alias}")))?;
        set.codes.push(code);
        return Ok(());
    }
    if !is_number(v) {
        return Err(CommandError::new(
            TYPE_MISMATCH,
            "type must be represented as a number or a string",
        ));
    }
    let invalid = || {
        CommandError::bad_value(format!(
            "Invalid numerical type code: {}",
            number_display(v)
        ))
    };
    let code = crate::bsontype::as_i64(v)
        .or_else(|| match v {
            Bson::Decimal128(_) => as_f64(v).filter(|d| d.fract() == 0.0).map(|d| d as i64),
            _ => None,
        })
        .ok_or_else(invalid)?;
    if code == 0 {
        return Err(CommandError::bad_value(format!(
            "Invalid numerical type code: {}. Instead use {{$exists:false}}.",
            number_display(v)
        )));
    }
    if !(code == -1 || code == 127 || (1..=19).contains(&code)) {
        return Err(invalid());
    }
    set.codes.push(code as i32);
    Ok(())
}

fn number_display(v: &Bson) -> String {
    match v {
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) => d.to_string(),
        Bson::Decimal128(d) => d.to_string(),
        other => format!("{other}"),
    }
}

/// A document or an array seen as an object with keys "0", "1", ... (an array element
/// examined by an `$elemMatch` object predicate).
#[derive(Clone, Copy)]
enum Obj<'a> {
    Doc(&'a Document),
    Arr(&'a [Bson]),
}

impl<'a> Obj<'a> {
    fn get(self, key: &str, index: Option<usize>) -> Option<&'a Bson> {
        match self {
            Obj::Doc(d) => d.get(key),
            Obj::Arr(a) => index.and_then(|i| a.get(i)),
        }
    }
}

/// mongod's `getFieldDottedOrArray`: follows `path` from component `start` through
/// sub-documents until it ends, is missing, or reaches an array. Returns the value found
/// and the index of the component where the walk stopped.
fn field_dotted_or_array<'a>(
    obj: Obj<'a>,
    path: &FieldPath,
    start: usize,
) -> (Option<&'a Bson>, usize) {
    let n = path.parts.len();
    let mut cur = obj;
    let mut i = start;
    loop {
        let value = cur.get(&path.parts[i], path.indexes[i]);
        match value {
            None | Some(Bson::Array(_)) => return (value, i),
            Some(Bson::Document(d)) => {
                i += 1;
                if i >= n {
                    return (value, i);
                }
                cur = Obj::Doc(d);
            }
            Some(_) => return (if i + 1 < n { None } else { value }, i),
        }
    }
}

/// Feeds `f` every value `path` yields from `obj`, as mongod's `BSONElementIterator`
/// does, stopping at the first value `f` accepts. Missing values are yielded as `None`.
fn any_value<'a, F>(
    obj: Obj<'a>,
    path: &FieldPath,
    start: usize,
    leaf_traverse: bool,
    f: &mut F,
) -> bool
where
    F: FnMut(Option<&'a Bson>) -> bool,
{
    let (found, stopped_at) = field_dotted_or_array(obj, path, start);
    match found {
        Some(array @ Bson::Array(items)) => {
            any_in_array(array, items, path, stopped_at + 1, leaf_traverse, f)
        }
        other => f(other),
    }
}

/// The array case of [`any_value`]: `rest` is the first path component after the array.
/// At the end of the path every element is yielded and then the array itself (unless the
/// test looks at leaf arrays whole). With path left, each sub-document is searched for the
/// rest of the path (one level of implicit traversal), and a numeric component also selects
/// the element at that offset.
fn any_in_array<'a, F>(
    array: &'a Bson,
    items: &'a [Bson],
    path: &FieldPath,
    rest: usize,
    leaf_traverse: bool,
    f: &mut F,
) -> bool
where
    F: FnMut(Option<&'a Bson>) -> bool,
{
    let n = path.parts.len();
    if rest >= n {
        if leaf_traverse && items.iter().any(|item| f(Some(item))) {
            return true;
        }
        return f(Some(array));
    }
    items
        .iter()
        .enumerate()
        .any(|(i, item)| any_in_element(item, i, path, rest, leaf_traverse, f))
}

/// One element (at offset `i`) of an array met before the end of the path: a sub-document
/// is searched for the rest of the path, and a numeric component equal to `i` selects it.
fn any_in_element<'a, F>(
    item: &'a Bson,
    i: usize,
    path: &FieldPath,
    rest: usize,
    leaf_traverse: bool,
    f: &mut F,
) -> bool
where
    F: FnMut(Option<&'a Bson>) -> bool,
{
    let at_offset = path.indexes[rest] == Some(i);
    let last_component = rest + 1 == path.parts.len();
    match item {
        Bson::Document(d) => {
            any_value(Obj::Doc(d), path, rest, leaf_traverse, f)
                || (at_offset
                    && if last_component {
                        f(Some(item))
                    } else {
                        any_value(Obj::Doc(d), path, rest + 1, leaf_traverse, f)
                    })
        }
        _ if at_offset => {
            if last_component {
                f(Some(item))
            } else if let Bson::Array(inner) = item {
                any_in_array(item, inner, path, rest + 1, leaf_traverse, f)
            } else {
                false
            }
        }
        _ => false,
    }
}

/// Whether the path predicate `path`/`test` matches `doc`, as [`any_value`] from the top,
/// and through which array offset: that of the outermost array element the matching value
/// came from (mongod's `ElementIterator::Context::arrayOffset`), else the element an
/// `$elemMatch` test selected. `None` when there is no match.
fn first_match_offset(doc: &Document, path: &FieldPath, test: &Test) -> Option<Option<usize>> {
    let leaf_traverse = test.traverses_leaf_arrays();
    let (found, stopped_at) = field_dotted_or_array(Obj::Doc(doc), path, 0);
    let (array, items) = match found {
        Some(array @ Bson::Array(items)) => (array, items),
        other => return test.matches(other).then(|| test.matched_element(other)),
    };
    let rest = stopped_at + 1;
    if rest >= path.parts.len() {
        if leaf_traverse && let Some(i) = items.iter().position(|item| test.matches(Some(item))) {
            return Some(Some(i));
        }
        return test
            .matches(Some(array))
            .then(|| test.matched_element(Some(array)));
    }
    items
        .iter()
        .enumerate()
        .position(|(i, item)| {
            any_in_element(item, i, path, rest, leaf_traverse, &mut |v| test.matches(v))
        })
        .map(Some)
}

impl Node {
    /// Evaluates against a (sub)document. `ctx` is absent inside `$elemMatch`, where the
    /// parser does not allow `$expr`.
    fn eval(&self, obj: Obj<'_>, ctx: Option<&Ctx<'_>>) -> Result<bool> {
        Ok(match self {
            Node::And(children) => {
                for c in children {
                    if !c.eval(obj, ctx)? {
                        return Ok(false);
                    }
                }
                true
            }
            Node::Or(children) => {
                for c in children {
                    if c.eval(obj, ctx)? {
                        return Ok(true);
                    }
                }
                false
            }
            Node::Nor(children) => {
                for c in children {
                    if c.eval(obj, ctx)? {
                        return Ok(false);
                    }
                }
                true
            }
            Node::Not(child) => !child.eval(obj, ctx)?,
            Node::AlwaysTrue => true,
            Node::AlwaysFalse => false,
            Node::Expr(expr) => {
                let Some(ctx) = ctx else {
                    return Err(CommandError::bad_value(
                        "$expr can only be applied to the top-level document",
                    ));
                };
                is_truthy(expr.eval(ctx.root, ctx.vars)?.as_ref())
            }
            Node::Path(path, test) => {
                any_value(obj, path, 0, test.traverses_leaf_arrays(), &mut |v| {
                    test.matches(v)
                })
            }
        })
    }

    /// [`Node::eval`] on the top-level document, storing in `position` the array offset
    /// through which a path predicate matched (see [`Matcher::match_position`]).
    fn eval_recording(
        &self,
        doc: &Document,
        ctx: &Ctx<'_>,
        position: &mut Option<usize>,
    ) -> Result<bool> {
        match self {
            Node::And(children) => {
                for c in children {
                    if !c.eval_recording(doc, ctx, position)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Path(path, test) => {
                let Some(offset) = first_match_offset(doc, path, test) else {
                    return Ok(false);
                };
                if offset.is_some() {
                    *position = offset;
                }
                Ok(true)
            }
            other => other.eval(Obj::Doc(doc), Some(ctx)),
        }
    }

    /// Applies the node to one value rather than a document (mongod's
    /// `matchesSingleElement`), as `$elemMatch` does with each array element.
    fn matches_value(&self, v: Option<&Bson>) -> bool {
        match self {
            Node::And(children) => children.iter().all(|c| c.matches_value(v)),
            Node::Or(children) => children.iter().any(|c| c.matches_value(v)),
            Node::Nor(children) => !children.iter().any(|c| c.matches_value(v)),
            Node::Not(child) => !child.matches_value(v),
            Node::AlwaysTrue => true,
            Node::AlwaysFalse | Node::Expr(_) => false,
            Node::Path(_, test) => test.matches(v),
        }
    }

    fn equality_on(&self, path: &str) -> Option<&Bson> {
        match self {
            Node::And(children) => children.iter().find_map(|c| c.equality_on(path)),
            Node::Path(p, Test::Cmp(CmpOp::Eq, v)) if p.dotted == path && index_probe(v) => Some(v),
            _ => None,
        }
    }

    fn in_values_on(&self, path: &str) -> Option<&[Bson]> {
        match self {
            Node::And(children) => children.iter().find_map(|c| c.in_values_on(path)),
            Node::Path(p, Test::In(set))
                if p.dotted == path
                    && !set.has_null
                    && set.regexes.is_empty()
                    && set.values.iter().all(index_probe) =>
            {
                Some(&set.values)
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing (mongod's expression_parser.cpp).

fn unsupported(op: &str) -> CommandError {
    CommandError::new(
        COMMAND_NOT_SUPPORTED,
        format!("query operator {op} is not supported by this server"),
    )
}

/// mongod's `parse`: every top-level field of a filter (or of an `$elemMatch` object, or of
/// an `$and`/`$or`/`$nor` entry) becomes a conjunct.
fn parse_filter(filter: &Document, level: Level) -> Result<Node> {
    let mut children = Vec::with_capacity(filter.len());
    for (key, value) in filter {
        if key.starts_with('$') {
            if let Some(node) = parse_top_level_operator(key, value, level)? {
                children.push(node);
            }
            continue;
        }
        if let Some(sub) = expression_document(value, false) {
            parse_operators(key, sub, &mut children)?;
            continue;
        }
        if let Bson::RegularExpression(re) = value {
            children.push(Node::Path(
                FieldPath::new(key),
                Test::Regex(compile_regex(&re.pattern, &re.options)?),
            ));
            continue;
        }
        children.push(comparison(key, CmpOp::Eq, value)?);
    }
    Ok(if children.len() == 1 {
        children.pop().unwrap_or(Node::AlwaysTrue)
    } else {
        Node::And(children)
    })
}

/// mongod's `isExpressionDocument`: a non-empty object whose first field is `$`-prefixed
/// and which is not a DBRef (`{$ref, $id}`; any of `$ref/$id/$db` when `allow_incomplete`).
fn expression_document(v: &Bson, allow_incomplete_dbref: bool) -> Option<&Document> {
    let Bson::Document(d) = v else {
        return None;
    };
    let (first, _) = d.iter().next()?;
    if !first.starts_with('$') {
        return None;
    }
    let has = |k: &str| d.contains_key(k);
    let dbref = if allow_incomplete_dbref {
        has("$ref") || has("$id") || has("$db")
    } else {
        has("$ref") && has("$id")
    };
    (!dbref).then_some(d)
}

/// Operators that apply to the document rather than to a path (mongod's pathless parsers).
fn is_pathless(op: &str) -> bool {
    matches!(
        op,
        "$and"
            | "$or"
            | "$nor"
            | "$expr"
            | "$where"
            | "$text"
            | "$comment"
            | "$jsonSchema"
            | "$alwaysTrue"
            | "$alwaysFalse"
            | "$ref"
            | "$id"
            | "$db"
            | "$sampleRate"
    ) || op.starts_with("$_internal")
}

fn parse_top_level_operator(key: &str, value: &Bson, level: Level) -> Result<Option<Node>> {
    let node = match key {
        "$and" | "$or" | "$nor" => {
            let children = parse_tree(key, value, level)?;
            match key {
                "$and" => Node::And(children),
                "$or" => Node::Or(children),
                _ => Node::Nor(children),
            }
        }
        "$comment" => return Ok(None),
        "$expr" => {
            if level == Level::Sub {
                return Err(CommandError::bad_value(
                    "$expr can only be applied to the top-level document",
                ));
            }
            Node::Expr(Box::new(Expr::parse(value)?))
        }
        "$alwaysTrue" | "$alwaysFalse" => {
            let one = integer_element(key, value).map_err(CommandError::failed_to_parse)?;
            if one != 1 {
                return Err(CommandError::failed_to_parse(format!(
                    "{key} must be an integer value of 1"
                )));
            }
            if key == "$alwaysTrue" {
                Node::AlwaysTrue
            } else {
                Node::AlwaysFalse
            }
        }
        // Parts of a DBRef inside an `$elemMatch` object: plain equality on the field.
        "$ref" | "$id" | "$db" => comparison(key, CmpOp::Eq, value)?,
        _ if is_pathless(key) => return Err(unsupported(key)),
        "$not" => {
            return Err(CommandError::bad_value(
                "unknown top level operator: $not. If you are trying to negate an entire \
                 expression, use $nor.",
            ));
        }
        _ => {
            return Err(CommandError::bad_value(format!(
                "unknown top level operator: {key}. If you have a field name that starts with \
                 a '$' symbol, consider using $getField or $setField."
            )));
        }
    };
    Ok(Some(node))
}

fn parse_tree(name: &str, value: &Bson, level: Level) -> Result<Vec<Node>> {
    let Bson::Array(items) = value else {
        return Err(CommandError::bad_value(format!("{name} must be an array")));
    };
    if items.is_empty() {
        return Err(CommandError::bad_value(
            "$and/$or/$nor must be a nonempty array",
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Bson::Document(d) => parse_filter(d, level),
            _ => Err(CommandError::bad_value(
                "$or/$and/$nor entries need to be full objects",
            )),
        })
        .collect()
}

/// A comparison predicate (`$eq`, `$lt`, ...; implicit equality). Undefined is not a
/// comparable value.
fn comparison(path: &str, op: CmpOp, value: &Bson) -> Result<Node> {
    if matches!(value, Bson::Undefined) {
        return Err(CommandError::bad_value("cannot compare to undefined"));
    }
    Ok(Node::Path(
        FieldPath::new(path),
        Test::Cmp(op, value.clone()),
    ))
}

/// mongod's `parseSub`: the operators of `{path: {$op: v, ...}}`, each a conjunct.
fn parse_operators(path: &str, ops: &Document, out: &mut Vec<Node>) -> Result<()> {
    for (op, value) in ops {
        if let Some(node) = parse_operator(path, ops, op, value)? {
            out.push(node);
        }
    }
    Ok(())
}

fn leaf(path: &str, test: Test) -> Node {
    Node::Path(FieldPath::new(path), test)
}

/// mongod's `parseSubField`: one `$op: value` applied to `path`; `context` is the whole
/// operator document (`$regex` and `$options` read each other from it).
fn parse_operator(path: &str, context: &Document, op: &str, value: &Bson) -> Result<Option<Node>> {
    let no_regex = |name: &str| -> Result<()> {
        if matches!(value, Bson::RegularExpression(_)) {
            return Err(CommandError::bad_value(format!(
                "Can't have RegEx as arg to predicate over field '{name}'."
            )));
        }
        Ok(())
    };
    let node = match op {
        "$eq" => comparison(path, CmpOp::Eq, value)?,
        "$lt" | "$lte" | "$gt" | "$gte" => {
            no_regex(path)?;
            let cmp = match op {
                "$lt" => CmpOp::Lt,
                "$lte" => CmpOp::Lte,
                "$gt" => CmpOp::Gt,
                _ => CmpOp::Gte,
            };
            comparison(path, cmp, value)?
        }
        "$ne" => {
            // SERVER-1705: `$ne` of a regex is refused rather than read as "not matching".
            if matches!(value, Bson::RegularExpression(_)) {
                return Err(CommandError::bad_value("Can't have regex as arg to $ne."));
            }
            Node::Not(Box::new(comparison(path, CmpOp::Eq, value)?))
        }
        "$in" | "$nin" => {
            let Bson::Array(items) = value else {
                return Err(CommandError::bad_value(format!("{op} needs an array")));
            };
            let set = leaf(path, Test::In(parse_in(items)?));
            if op == "$in" {
                set
            } else {
                Node::Not(Box::new(set))
            }
        }
        "$not" => parse_not(path, value)?,
        "$exists" => {
            let exists = leaf(path, Test::Exists);
            if true_value(value) {
                exists
            } else {
                Node::Not(Box::new(exists))
            }
        }
        "$type" => leaf(path, Test::Type(parse_type_set(path, value)?)),
        "$size" => leaf(path, Test::Size(parse_size(value)?)),
        "$mod" => {
            let (divisor, remainder) = parse_mod(value)?;
            leaf(path, Test::Mod { divisor, remainder })
        }
        "$regex" => leaf(path, Test::Regex(parse_regex_document(context)?)),
        "$options" => {
            if context.contains_key("$regex") {
                return Ok(None);
            }
            return Err(CommandError::bad_value("$options needs a $regex"));
        }
        "$elemMatch" => parse_elem_match(path, value)?,
        "$all" => parse_all(path, value)?,
        "$where" => {
            return Err(CommandError::bad_value(
                "$where cannot be applied to a field",
            ));
        }
        "$near" | "$nearSphere" | "$geoNear" | "$geoWithin" | "$within" | "$geoIntersects"
        | "$bitsAllSet" | "$bitsAnySet" | "$bitsAllClear" | "$bitsAnyClear" => {
            return Err(unsupported(op));
        }
        _ if op.starts_with("$_internal") => return Err(unsupported(op)),
        _ => return Err(CommandError::bad_value(format!("unknown operator: {op}"))),
    };
    Ok(Some(node))
}

/// BSON truthiness as mongod's `BSONElement::trueValue` (`$exists: 0` is false).
fn true_value(v: &Bson) -> bool {
    match v {
        Bson::Null | Bson::Undefined => false,
        Bson::Boolean(b) => *b,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        Bson::Decimal128(_) => as_f64(v).is_some_and(|d| d != 0.0),
        _ => true,
    }
}

fn parse_in(items: &[Bson]) -> Result<InSet> {
    let mut set = InSet {
        values: Vec::with_capacity(items.len()),
        has_null: false,
        regexes: Vec::new(),
    };
    for item in items {
        if expression_document(item, false).is_some() {
            return Err(CommandError::bad_value("cannot nest $ under $in"));
        }
        match item {
            Bson::RegularExpression(re) => {
                set.regexes.push(compile_regex(&re.pattern, &re.options)?);
            }
            Bson::Undefined => {
                return Err(CommandError::bad_value(
                    "InMatchExpression equality cannot be undefined",
                ));
            }
            other => {
                set.has_null |= matches!(other, Bson::Null);
                set.values.push(other.clone());
            }
        }
    }
    set.values.sort_by(compare);
    set.values.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
    Ok(set)
}

fn parse_not(path: &str, value: &Bson) -> Result<Node> {
    if let Bson::RegularExpression(re) = value {
        let regex = leaf(path, Test::Regex(compile_regex(&re.pattern, &re.options)?));
        return Ok(Node::Not(Box::new(regex)));
    }
    let Bson::Document(ops) = value else {
        return Err(CommandError::bad_value("$not needs a regex or a document"));
    };
    if ops.is_empty() {
        return Err(CommandError::bad_value("$not cannot be empty"));
    }
    let mut children = Vec::with_capacity(ops.len());
    parse_operators(path, ops, &mut children)?;
    let inner = if children.len() == 1 {
        children.pop().unwrap_or(Node::AlwaysTrue)
    } else {
        Node::And(children)
    };
    Ok(Node::Not(Box::new(inner)))
}

/// `$size` takes a non-negative 32-bit integer (whole doubles allowed), as mongod's
/// `parseIntegerElementToNonNegativeInt`.
fn parse_size(value: &Bson) -> Result<usize> {
    let reason = match integer_element("$size", value) {
        Ok(n) if n < 0 => format!(
            "Expected a positive number in: {}",
            element_display("$size", value)
        ),
        Ok(n) => match i32::try_from(n) {
            Ok(n) => return Ok(n as usize),
            Err(_) => format!(
                "Cannot represent {} in an int",
                element_display("$size", value)
            ),
        },
        Err(reason) => reason,
    };
    Err(CommandError::bad_value(format!(
        "Failed to parse $size. {reason}"
    )))
}

/// mongod's `BSONElement::parseIntegerElementToLong`: any number holding an integral value
/// that fits an i64; the error is the reason text mongod reports.
fn integer_element(name: &str, v: &Bson) -> std::result::Result<i64, String> {
    match v {
        Bson::Int32(i) => Ok(i64::from(*i)),
        Bson::Int64(l) => Ok(*l),
        Bson::Double(_) | Bson::Decimal128(_) => {
            let d = as_f64(v).unwrap_or(f64::NAN);
            if d.is_nan() {
                return Err(format!(
                    "Expected an integer, but found NaN in: {}",
                    element_display(name, v)
                ));
            }
            if !(-TWO_POW_63..TWO_POW_63).contains(&d) {
                return Err(format!(
                    "Cannot represent as a 64-bit integer: {}",
                    element_display(name, v)
                ));
            }
            if d.fract() != 0.0 {
                return Err(format!("Expected an integer: {}", element_display(name, v)));
            }
            Ok(d as i64)
        }
        _ => Err(format!(
            "Expected a number in: {}",
            element_display(name, v)
        )),
    }
}

/// An element as mongod prints one in error messages (`name: value`).
fn element_display(name: &str, v: &Bson) -> String {
    let value = match v {
        Bson::Double(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e15 => format!("{d:.1}"),
        Bson::String(s) => format!("\"{s}\""),
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => number_display(v),
        other => other.to_string(),
    };
    format!("{name}: {value}")
}

/// 2^63 exactly: doubles at or beyond it do not fit an i64.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

fn parse_mod(value: &Bson) -> Result<(i64, i64)> {
    let Bson::Array(items) = value else {
        return Err(CommandError::bad_value(
            "malformed mod, needs to be an array",
        ));
    };
    let (divisor, remainder) = match items.as_slice() {
        [] | [_] => {
            return Err(CommandError::bad_value(
                "malformed mod, not enough elements",
            ));
        }
        [d, r] => (d, r),
        _ => return Err(CommandError::bad_value("malformed mod, too many elements")),
    };
    if !is_number(divisor) {
        return Err(CommandError::bad_value(
            "malformed mod, divisor not a number",
        ));
    }
    if !is_number(remainder) {
        return Err(CommandError::bad_value(
            "malformed mod, remainder not a number",
        ));
    }
    let integral = |v: &Bson, what: &str| -> Result<i64> {
        match v {
            Bson::Int32(i) => Ok(i64::from(*i)),
            Bson::Int64(l) => Ok(*l),
            _ => {
                let d = as_f64(v).unwrap_or(f64::NAN);
                if !d.is_finite() {
                    return Err(CommandError::bad_value(format!(
                        "malformed mod, {what} value is invalid :: caused by :: Unable to \
                         coerce NaN/Inf to integral type"
                    )));
                }
                if !(-TWO_POW_63..TWO_POW_63).contains(&d) {
                    return Err(CommandError::bad_value(format!(
                        "malformed mod, {what} value is invalid :: caused by :: Out of bounds \
                         coercing to integral value"
                    )));
                }
                Ok(d.trunc() as i64)
            }
        }
    };
    let divisor = integral(divisor, "divisor")?;
    let remainder = integral(remainder, "remainder")?;
    if divisor == 0 {
        return Err(CommandError::bad_value("divisor cannot be 0"));
    }
    Ok((divisor, remainder))
}

/// mongod's `parseRegexDocument`: `$regex` (string or BSON regex) with `$options`, which
/// may come before or after it but not twice.
fn parse_regex_document(context: &Document) -> Result<RegexTest> {
    let mut pattern = String::new();
    let mut options: Option<String> = None;
    for (key, value) in context {
        match key.as_str() {
            "$regex" => match value {
                Bson::String(s) => pattern = s.clone(),
                Bson::RegularExpression(re) => {
                    pattern = re.pattern.clone();
                    if !re.options.is_empty() {
                        if options.as_deref().is_some_and(|o| !o.is_empty()) {
                            return Err(CommandError::location(
                                51074,
                                "options set in both $regex and $options",
                            ));
                        }
                        options = Some(re.options.clone());
                    }
                }
                _ => return Err(CommandError::bad_value("$regex has to be a string")),
            },
            "$options" => {
                let Bson::String(o) = value else {
                    return Err(CommandError::bad_value("$options has to be a string"));
                };
                if options.as_deref().is_some_and(|o| !o.is_empty()) {
                    return Err(CommandError::location(
                        51075,
                        "options set in both $regex and $options",
                    ));
                }
                options = Some(o.clone());
            }
            _ => {}
        }
    }
    compile_regex(&pattern, options.as_deref().unwrap_or(""))
}

/// `$elemMatch`: the value form when the operand's first field is a path operator
/// (`{$gt: 1}`), otherwise the object form (`{b: 1}`, `{$or: [...]}`).
fn parse_elem_match(path: &str, value: &Bson) -> Result<Node> {
    let Bson::Document(spec) = value else {
        return Err(CommandError::bad_value("$elemMatch needs an Object"));
    };
    let value_form = expression_document(value, true)
        .and_then(|d| d.keys().next())
        .is_some_and(|first| !is_pathless(first));
    if value_form {
        let mut children = Vec::with_capacity(spec.len());
        parse_operators("", spec, &mut children)?;
        return Ok(leaf(path, Test::ElemMatchValue(children)));
    }
    if spec.contains_key("$where") {
        return Err(CommandError::bad_value(
            "$elemMatch cannot contain $where expression",
        ));
    }
    let sub = parse_filter(spec, Level::Sub)?;
    Ok(leaf(path, Test::ElemMatchObject(Box::new(sub))))
}

/// `$all`: a conjunction of equalities (regexes allowed), or of `$elemMatch`es when the
/// first entry is one; an empty `$all` matches nothing.
fn parse_all(path: &str, value: &Bson) -> Result<Node> {
    let Bson::Array(items) = value else {
        return Err(CommandError::bad_value("$all needs an array"));
    };
    let first_key = |v: &Bson| match v {
        Bson::Document(d) => d.keys().next().cloned(),
        _ => None,
    };
    let mut children = Vec::with_capacity(items.len());
    if items
        .first()
        .and_then(first_key)
        .is_some_and(|k| k == "$elemMatch")
    {
        for item in items {
            let Bson::Document(d) = item else {
                return Err(CommandError::bad_value(
                    "$all/$elemMatch has to be consistent",
                ));
            };
            match d.iter().next() {
                Some((k, spec)) if k == "$elemMatch" => {
                    children.push(parse_elem_match(path, spec)?);
                }
                _ => {
                    return Err(CommandError::bad_value(
                        "$all/$elemMatch has to be consistent",
                    ));
                }
            }
        }
    } else {
        for item in items {
            match item {
                Bson::RegularExpression(re) => children.push(leaf(
                    path,
                    Test::Regex(compile_regex(&re.pattern, &re.options)?),
                )),
                Bson::Document(_) if first_key(item).is_some_and(|k| is_path_operator(&k)) => {
                    return Err(CommandError::bad_value("no $ expressions in $all"));
                }
                other => children.push(comparison(path, CmpOp::Eq, other)?),
            }
        }
    }
    Ok(if children.is_empty() {
        Node::AlwaysFalse
    } else {
        Node::And(children)
    })
}

/// The operators mongod accepts after a path (`parsePathAcceptingKeyword`).
fn is_path_operator(op: &str) -> bool {
    matches!(
        op,
        "$all"
            | "$bitsAllClear"
            | "$bitsAllSet"
            | "$bitsAnyClear"
            | "$bitsAnySet"
            | "$elemMatch"
            | "$eq"
            | "$exists"
            | "$geoIntersects"
            | "$geoNear"
            | "$geoWithin"
            | "$gt"
            | "$gte"
            | "$in"
            | "$lt"
            | "$lte"
            | "$mod"
            | "$ne"
            | "$near"
            | "$nearSphere"
            | "$nin"
            | "$options"
            | "$regex"
            | "$size"
            | "$type"
            | "$within"
    ) || op.starts_with("$_internal")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, Regex, doc};

    fn vars() -> Variables {
        Variables::default()
    }

    fn matches(filter: Document, doc: Document) -> bool {
        Matcher::parse(&filter)
            .unwrap_or_else(|e| panic!("{filter} failed to parse: {e}"))
            .matches(&doc, &vars())
            .unwrap()
    }

    fn parse_err(filter: Document) -> CommandError {
        match Matcher::parse(&filter) {
            Ok(_) => panic!("{filter} should not parse"),
            Err(e) => e,
        }
    }

    fn assert_parse_err(filter: Document, code: i32, msg: &str) {
        let e = parse_err(filter.clone());
        assert_eq!(e.code, code, "{filter}: {e}");
        assert!(e.errmsg.contains(msg), "{filter}: {} lacks {msg}", e.errmsg);
    }

    fn re(pattern: &str, options: &str) -> Bson {
        Bson::RegularExpression(Regex {
            pattern: pattern.to_string(),
            options: options.to_string(),
        })
    }

    fn position(filter: Document, doc: Document) -> Option<Option<usize>> {
        Matcher::parse(&filter)
            .unwrap()
            .match_position(&doc, &vars())
            .unwrap()
    }

    #[test]
    fn match_position_reports_the_outermost_matched_offset() {
        assert_eq!(
            position(doc! {"a": 2}, doc! {"a": [1, 2, 3]}),
            Some(Some(1))
        );
        assert_eq!(position(doc! {"a": 9}, doc! {"a": [1, 2, 3]}), None);
        assert_eq!(position(doc! {"a": 2}, doc! {"a": 2}), Some(None));
        // The whole array matching is no element.
        assert_eq!(position(doc! {"a": [1, 2]}, doc! {"a": [1, 2]}), Some(None));
        assert_eq!(
            position(doc! {"a.b": 3}, doc! {"a": [{"b": 1}, {"b": [2, 3]}]}),
            Some(Some(1))
        );
        assert_eq!(
            position(doc! {"a.1.b": 2}, doc! {"a": [{"b": 1}, {"b": 2}]}),
            Some(Some(1))
        );
        // Nested arrays: the outer offset.
        assert_eq!(
            position(doc! {"a": 4}, doc! {"a": [[1, 2], [3, 4]]}),
            None,
            "one level of implicit traversal only"
        );
        assert_eq!(
            position(
                doc! {"a.b.c": 4},
                doc! {"a": [{"b": [{"c": 1}]}, {"b": [{"c": 3}, {"c": 4}]}]}
            ),
            Some(Some(1))
        );
    }

    #[test]
    fn match_position_of_elem_match_and_conjunctions() {
        assert_eq!(
            position(
                doc! {"a": {"$elemMatch": {"b": 2}}},
                doc! {"a": [{"b": 1}, {"b": 2}]}
            ),
            Some(Some(1))
        );
        assert_eq!(
            position(
                doc! {"a": {"$elemMatch": {"$gt": 1, "$lt": 5}}},
                doc! {"a": [0, 7, 3]}
            ),
            Some(Some(2))
        );
        assert_eq!(
            position(
                doc! {"x.a": {"$elemMatch": {"$gt": 1}}},
                doc! {"x": [{"a": [0]}, {"a": [0, 2]}]}
            ),
            Some(Some(1))
        );
        // The last conjunct that records an offset wins; $or records none.
        assert_eq!(
            position(doc! {"a": 1, "b": 5}, doc! {"a": [0, 1], "b": [4, 5, 6]}),
            Some(Some(1))
        );
        assert_eq!(
            position(doc! {"b": 6, "c": 1}, doc! {"b": [4, 5, 6], "c": 1}),
            Some(Some(2))
        );
        assert_eq!(
            position(doc! {"$or": [{"a": 1}, {"z": 1}]}, doc! {"a": [0, 1]}),
            Some(None)
        );
        assert_eq!(
            position(
                doc! {"_id": 1, "$and": [{"a": 1}]},
                doc! {"_id": 1, "a": [0, 1]}
            ),
            Some(Some(1))
        );
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(matches(doc! {}, doc! {}));
        assert!(matches(doc! {}, doc! {"a": 1}));
    }

    #[test]
    fn implicit_equality_matches_scalars_and_array_elements() {
        assert!(matches(doc! {"a": 1}, doc! {"a": 1}));
        assert!(matches(doc! {"a": 1}, doc! {"a": [1, 2]}));
        assert!(matches(doc! {"a": 2}, doc! {"a": [1, 2]}));
        assert!(!matches(doc! {"a": 1}, doc! {"a": 2}));
        assert!(!matches(doc! {"a": 1}, doc! {"a": [2, 3]}));
        assert!(!matches(doc! {"a": 1}, doc! {"b": 1}));
        assert!(!matches(doc! {"a": 1}, doc! {"a": "1"}));
    }

    #[test]
    fn numbers_match_by_value_across_widths() {
        assert!(matches(doc! {"a": 1}, doc! {"a": 1.0}));
        assert!(matches(doc! {"a": 1}, doc! {"a": 1_i64}));
        assert!(matches(doc! {"a": 1.0}, doc! {"a": [1_i64]}));
        let dec: bson::Decimal128 = "1.0".parse().unwrap();
        assert!(matches(doc! {"a": 1}, doc! {"a": dec}));
        assert!(matches(doc! {"a": {"$gt": 1_i64}}, doc! {"a": 1.5}));
    }

    #[test]
    fn array_equality_matches_whole_array_or_nested_element() {
        assert!(matches(doc! {"a": [1, 2]}, doc! {"a": [1, 2]}));
        assert!(matches(doc! {"a": [1, 2]}, doc! {"a": [[1, 2], 3]}));
        assert!(!matches(doc! {"a": [1, 2]}, doc! {"a": [2, 1]}));
        assert!(!matches(doc! {"a": [1, 2]}, doc! {"a": [1, 2, 3]}));
        assert!(!matches(doc! {"a": [1, 2]}, doc! {"a": 1}));
        assert!(matches(doc! {"a": []}, doc! {"a": []}));
        assert!(matches(doc! {"a": []}, doc! {"a": [[], 1]}));
        assert!(!matches(doc! {"a": []}, doc! {"a": [1]}));
    }

    #[test]
    fn document_equality_is_whole_and_field_order_sensitive() {
        assert!(matches(
            doc! {"a": {"x": 1, "y": 2}},
            doc! {"a": {"x": 1, "y": 2}}
        ));
        assert!(!matches(
            doc! {"a": {"x": 1, "y": 2}},
            doc! {"a": {"y": 2, "x": 1}}
        ));
        assert!(!matches(doc! {"a": {"x": 1}}, doc! {"a": {"x": 1, "y": 2}}));
        assert!(matches(
            doc! {"a": {"x": 1}},
            doc! {"a": [{"x": 1}, {"x": 2}]}
        ));
        assert!(matches(doc! {"a": {}}, doc! {"a": {}}));
    }

    #[test]
    fn dotted_paths_reach_into_documents_and_arrays_of_documents() {
        assert!(matches(doc! {"a.b": 1}, doc! {"a": {"b": 1}}));
        assert!(matches(doc! {"a.b.c": 1}, doc! {"a": {"b": {"c": 1}}}));
        assert!(matches(doc! {"a.b": 1}, doc! {"a": [{"b": 0}, {"b": 1}]}));
        assert!(matches(doc! {"a.b": 1}, doc! {"a": [{"b": [0, 1]}]}));
        assert!(matches(doc! {"a.b.c": 1}, doc! {"a": [{"b": [{"c": 1}]}]}));
        assert!(!matches(doc! {"a.b": 1}, doc! {"a": [{"c": 1}]}));
        assert!(!matches(doc! {"a.b": 1}, doc! {"a": 1}));
        assert!(!matches(doc! {"a.b": 1}, doc! {"a": [1]}));
    }

    #[test]
    fn numeric_component_is_array_index_and_field_name() {
        assert!(matches(doc! {"a.0": 5}, doc! {"a": [5, 6]}));
        assert!(!matches(doc! {"a.1": 5}, doc! {"a": [5, 6]}));
        assert!(matches(doc! {"a.0": 5}, doc! {"a": {"0": 5}}));
        assert!(matches(doc! {"a.1.b": 2}, doc! {"a": [{"b": 1}, {"b": 2}]}));
        assert!(!matches(
            doc! {"a.0.b": 2},
            doc! {"a": [{"b": 1}, {"b": 2}]}
        ));
        // Field "0" of a sub-document inside the array, as well as the element at offset 0.
        assert!(matches(doc! {"a.0": 7}, doc! {"a": [{"0": 7}]}));
        assert!(matches(doc! {"a.0": {"0": 7}}, doc! {"a": [{"0": 7}]}));
        // An offset selects a nested array, and the rest of the path continues inside it.
        assert!(matches(doc! {"a.0.b": 1}, doc! {"a": [[{"b": 1}]]}));
        assert!(matches(doc! {"a.0.1": 3}, doc! {"a": [[2, 3]]}));
        // The element at an offset is yielded as one value: an array there matches only
        // whole (no implicit traversal after an explicit offset).
        assert!(!matches(doc! {"a.0": 2}, doc! {"a": [[1, 2]]}));
        assert!(matches(doc! {"a.0": [1, 2]}, doc! {"a": [[1, 2]]}));
        // Not canonical offsets: "01" is only a field name.
        assert!(!matches(doc! {"a.01": 5}, doc! {"a": [5]}));
        assert!(matches(doc! {"a.01": 5}, doc! {"a": {"01": 5}}));
    }

    #[test]
    fn nested_arrays_are_traversed_one_level_per_component() {
        assert!(!matches(doc! {"a": 1}, doc! {"a": [[1]]}));
        assert!(matches(doc! {"a": [1]}, doc! {"a": [[1]]}));
        assert!(!matches(doc! {"a.b": 1}, doc! {"a": [[{"b": 1}]]}));
        assert!(!matches(doc! {"a": {"$gt": 0}}, doc! {"a": [[1]]}));
    }

    #[test]
    fn null_matches_missing_null_and_arrays_holding_null() {
        let f = doc! {"a": null};
        assert!(matches(f.clone(), doc! {}));
        assert!(matches(f.clone(), doc! {"a": null}));
        assert!(matches(f.clone(), doc! {"a": Bson::Undefined}));
        assert!(matches(f.clone(), doc! {"a": [1, null]}));
        assert!(!matches(f.clone(), doc! {"a": 0}));
        assert!(!matches(f.clone(), doc! {"a": []}));
        assert!(!matches(f, doc! {"a": [1]}));
        assert!(matches(doc! {"a": {"$eq": null}}, doc! {"b": 1}));
    }

    #[test]
    fn null_on_dotted_paths_follows_traversal() {
        let f = doc! {"a.b": null};
        assert!(matches(f.clone(), doc! {}));
        assert!(matches(f.clone(), doc! {"a": {}}));
        assert!(matches(f.clone(), doc! {"a": 1}));
        assert!(matches(f.clone(), doc! {"a": [{"b": 1}, {"c": 1}]}));
        assert!(matches(f.clone(), doc! {"a": [{"b": null}]}));
        assert!(!matches(f.clone(), doc! {"a": [{"b": 1}]}));
        // No sub-documents, nothing yielded: not even missing.
        assert!(!matches(f.clone(), doc! {"a": [1, 2]}));
        assert!(!matches(f, doc! {"a": []}));
    }

    #[test]
    fn ne_null_is_the_negation_of_null() {
        let f = doc! {"a": {"$ne": null}};
        assert!(matches(f.clone(), doc! {"a": 1}));
        assert!(matches(f.clone(), doc! {"a": []}));
        assert!(!matches(f.clone(), doc! {}));
        assert!(!matches(f.clone(), doc! {"a": null}));
        assert!(!matches(f, doc! {"a": [1, null]}));
        assert!(!matches(
            doc! {"a.b": {"$ne": null}},
            doc! {"a": [{"b": 1}, {}]}
        ));
        assert!(matches(doc! {"a.b": {"$ne": null}}, doc! {"a": [{"b": 1}]}));
    }

    #[test]
    fn ne_and_nin_match_missing_fields_and_check_every_element() {
        assert!(matches(doc! {"a": {"$ne": 1}}, doc! {}));
        assert!(matches(doc! {"a": {"$ne": 1}}, doc! {"a": [2, 3]}));
        assert!(!matches(doc! {"a": {"$ne": 1}}, doc! {"a": [1, 2]}));
        assert!(matches(doc! {"a": {"$nin": [1, 2]}}, doc! {}));
        assert!(matches(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": 3}));
        assert!(!matches(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": [3, 2]}));
    }

    #[test]
    fn exists() {
        assert!(matches(doc! {"a": {"$exists": true}}, doc! {"a": null}));
        assert!(matches(doc! {"a": {"$exists": 1}}, doc! {"a": []}));
        assert!(!matches(doc! {"a": {"$exists": true}}, doc! {"b": 1}));
        assert!(matches(doc! {"a": {"$exists": false}}, doc! {"b": 1}));
        assert!(matches(doc! {"a": {"$exists": 0}}, doc! {"b": 1}));
        assert!(!matches(doc! {"a": {"$exists": false}}, doc! {"a": null}));
        assert!(matches(
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [{"c": 1}, {"b": 1}]}
        ));
        assert!(!matches(
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [{"c": 1}]}
        ));
        assert!(!matches(doc! {"a.b": {"$exists": true}}, doc! {"a": []}));
        assert!(matches(doc! {"a.b": {"$exists": false}}, doc! {"a": [1]}));
        assert!(matches(doc! {"a.1": {"$exists": true}}, doc! {"a": [1, 2]}));
        assert!(!matches(
            doc! {"a.2": {"$exists": true}},
            doc! {"a": [1, 2]}
        ));
    }

    #[test]
    fn comparisons_bracket_by_type() {
        let gt5 = doc! {"a": {"$gt": 5}};
        assert!(matches(gt5.clone(), doc! {"a": 6}));
        assert!(matches(gt5.clone(), doc! {"a": 5.5}));
        assert!(matches(gt5.clone(), doc! {"a": 7_i64}));
        assert!(matches(gt5.clone(), doc! {"a": [1, 10]}));
        assert!(!matches(gt5.clone(), doc! {"a": 5}));
        assert!(!matches(gt5.clone(), doc! {"a": "6"}));
        assert!(!matches(gt5.clone(), doc! {"a": true}));
        assert!(!matches(gt5.clone(), doc! {"a": null}));
        assert!(!matches(gt5.clone(), doc! {}));
        assert!(!matches(gt5, doc! {"a": {"b": 6}}));
        assert!(matches(doc! {"a": {"$gte": 5}}, doc! {"a": 5}));
        assert!(matches(doc! {"a": {"$lt": 5}}, doc! {"a": -1}));
        assert!(!matches(doc! {"a": {"$lt": 5}}, doc! {"a": "1"}));
        assert!(matches(doc! {"a": {"$lte": 5}}, doc! {"a": 5.0}));
        assert!(matches(doc! {"a": {"$lt": "b"}}, doc! {"a": "abc"}));
        assert!(!matches(doc! {"a": {"$lt": "b"}}, doc! {"a": 1}));
        let d = |ms| Bson::DateTime(bson::DateTime::from_millis(ms));
        assert!(matches(doc! {"a": {"$gt": d(5)}}, doc! {"a": d(6)}));
        assert!(!matches(doc! {"a": {"$gt": d(5)}}, doc! {"a": 6}));
        // Range over the elements of one array: each bound may be met by a different element.
        assert!(matches(
            doc! {"a": {"$gt": 1, "$lt": 5}},
            doc! {"a": [0, 6]}
        ));
        assert!(!matches(doc! {"a": {"$gt": 1, "$lt": 5}}, doc! {"a": 6}));
    }

    #[test]
    fn comparisons_against_arrays_and_documents() {
        assert!(matches(doc! {"a": {"$gt": [1]}}, doc! {"a": [2]}));
        assert!(matches(doc! {"a": {"$gt": [1]}}, doc! {"a": [[2]]}));
        assert!(matches(
            doc! {"a": {"$gte": {"x": 1}}},
            doc! {"a": {"x": 2}}
        ));
        assert!(!matches(doc! {"a": {"$gte": {"x": 1}}}, doc! {"a": 2}));
    }

    #[test]
    fn min_and_max_key_bound_every_type() {
        assert!(matches(doc! {"a": {"$gt": Bson::MinKey}}, doc! {"a": "x"}));
        assert!(matches(doc! {"a": {"$gt": Bson::MinKey}}, doc! {"a": null}));
        // A missing field ranks with undefined, above MinKey and below MaxKey.
        assert!(matches(doc! {"a": {"$gt": Bson::MinKey}}, doc! {}));
        assert!(matches(doc! {"a": {"$lt": Bson::MaxKey}}, doc! {}));
        assert!(matches(
            doc! {"a": {"$lt": Bson::MaxKey}},
            doc! {"a": {"b": 1}}
        ));
        assert!(matches(
            doc! {"a": {"$lte": Bson::MaxKey}},
            doc! {"a": Bson::MaxKey}
        ));
        assert!(!matches(doc! {"a": {"$lt": Bson::MinKey}}, doc! {"a": 1}));
        assert!(!matches(doc! {"a": {"$gt": Bson::MaxKey}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": Bson::MinKey}, doc! {"a": Bson::MinKey}));
        assert!(!matches(doc! {"a": Bson::MinKey}, doc! {"a": null}));
    }

    #[test]
    fn null_bounds_match_missing() {
        assert!(matches(doc! {"a": {"$gte": null}}, doc! {}));
        assert!(matches(doc! {"a": {"$lte": null}}, doc! {"a": null}));
        assert!(!matches(doc! {"a": {"$lt": null}}, doc! {}));
        assert!(!matches(doc! {"a": {"$gt": null}}, doc! {"a": 1}));
    }

    #[test]
    fn nan_equals_nan_only() {
        assert!(matches(doc! {"a": f64::NAN}, doc! {"a": f64::NAN}));
        assert!(matches(
            doc! {"a": {"$gte": f64::NAN}},
            doc! {"a": f64::NAN}
        ));
        assert!(!matches(doc! {"a": {"$gt": f64::NAN}}, doc! {"a": 1}));
        assert!(!matches(doc! {"a": {"$lt": 5}}, doc! {"a": f64::NAN}));
        assert!(!matches(
            doc! {"a": {"$lt": f64::NAN}},
            doc! {"a": f64::NEG_INFINITY}
        ));
    }

    #[test]
    fn in_matches_values_regexes_and_null() {
        let f = doc! {"a": {"$in": [1, "x", re("^ab", "")]}};
        assert!(matches(f.clone(), doc! {"a": 1.0}));
        assert!(matches(f.clone(), doc! {"a": "x"}));
        assert!(matches(f.clone(), doc! {"a": "abc"}));
        assert!(matches(f.clone(), doc! {"a": [5, "abz"]}));
        assert!(!matches(f.clone(), doc! {"a": "b"}));
        assert!(!matches(f.clone(), doc! {}));
        assert!(matches(doc! {"a": {"$in": [null]}}, doc! {}));
        assert!(matches(
            doc! {"a": {"$in": [null, 2]}},
            doc! {"a": [1, null]}
        ));
        assert!(!matches(doc! {"a": {"$in": []}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": {"$in": [[1, 2]]}}, doc! {"a": [1, 2]}));
        assert!(matches(
            doc! {"a": {"$in": [{"b": 1}]}},
            doc! {"a": {"b": 1}}
        ));
        let many: Vec<Bson> = (0..100).rev().map(Bson::Int32).collect();
        assert!(matches(
            doc! {"a": {"$in": many.clone()}},
            doc! {"a": 42_i64}
        ));
        assert!(!matches(doc! {"a": {"$in": many}}, doc! {"a": 100}));
    }

    #[test]
    fn in_and_nin_need_arrays() {
        assert_parse_err(doc! {"a": {"$in": 1}}, 2, "$in needs an array");
        assert_parse_err(doc! {"a": {"$nin": {"b": 1}}}, 2, "$nin needs an array");
        assert_parse_err(
            doc! {"a": {"$in": [{"$gt": 1}]}},
            2,
            "cannot nest $ under $in",
        );
        assert_parse_err(
            doc! {"a": {"$in": [Bson::Undefined]}},
            2,
            "equality cannot be undefined",
        );
    }

    #[test]
    fn type_matches_codes_aliases_and_elements() {
        assert!(matches(doc! {"a": {"$type": "string"}}, doc! {"a": "x"}));
        assert!(matches(doc! {"a": {"$type": 2}}, doc! {"a": "x"}));
        assert!(matches(doc! {"a": {"$type": 2.0}}, doc! {"a": "x"}));
        assert!(!matches(doc! {"a": {"$type": "string"}}, doc! {"a": 1}));
        assert!(matches(
            doc! {"a": {"$type": "string"}},
            doc! {"a": [1, "x"]}
        ));
        assert!(matches(doc! {"a": {"$type": "number"}}, doc! {"a": 1_i64}));
        assert!(matches(doc! {"a": {"$type": "number"}}, doc! {"a": 1.5}));
        assert!(!matches(doc! {"a": {"$type": "number"}}, doc! {"a": "1"}));
        assert!(matches(
            doc! {"a": {"$type": ["bool", "int"]}},
            doc! {"a": 1}
        ));
        assert!(matches(doc! {"a": {"$type": "int"}}, doc! {"a": 1}));
        assert!(!matches(doc! {"a": {"$type": "long"}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": {"$type": "array"}}, doc! {"a": [1]}));
        assert!(matches(doc! {"a": {"$type": "array"}}, doc! {"a": []}));
        assert!(!matches(doc! {"a": {"$type": "array"}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": {"$type": "object"}}, doc! {"a": [{}]}));
        assert!(matches(doc! {"a": {"$type": "null"}}, doc! {"a": null}));
        assert!(!matches(doc! {"a": {"$type": "null"}}, doc! {}));
        assert!(matches(
            doc! {"a": {"$type": "minKey"}},
            doc! {"a": Bson::MinKey}
        ));
        assert!(matches(doc! {"a": {"$type": -1}}, doc! {"a": Bson::MinKey}));
        assert!(matches(
            doc! {"a": {"$type": 127}},
            doc! {"a": Bson::MaxKey}
        ));
        assert!(matches(
            doc! {"a.b": {"$type": "int"}},
            doc! {"a": [{"b": 1}]}
        ));
    }

    #[test]
    fn type_rejects_bad_operands() {
        assert_parse_err(
            doc! {"a": {"$type": "foo"}},
            2,
            "Unknown type name alias: foo",
        );
        assert_parse_err(
            doc! {"a": {"$type": 100}},
            2,
            "Invalid numerical type code: 100",
        );
        assert_parse_err(
            doc! {"a": {"$type": 0}},
            2,
            "Invalid numerical type code: 0. Instead use {$exists:false}.",
        );
        assert_parse_err(
            doc! {"a": {"$type": "missing"}},
            2,
            "'missing' is not a legal type name",
        );
        assert_parse_err(doc! {"a": {"$type": 2.5}}, 2, "Invalid numerical type code");
        assert_parse_err(doc! {"a": {"$type": []}}, 9, "must match at least one type");
        assert_parse_err(doc! {"a": {"$type": true}}, 14, "number or a string");
    }

    #[test]
    fn and_or_nor() {
        let and = doc! {"$and": [{"a": 1}, {"b": 2}]};
        assert!(matches(and.clone(), doc! {"a": 1, "b": 2}));
        assert!(!matches(and, doc! {"a": 1}));
        let or = doc! {"$or": [{"a": 1}, {"b": 2}]};
        assert!(matches(or.clone(), doc! {"b": 2}));
        assert!(!matches(or, doc! {"a": 2, "b": 1}));
        let nor = doc! {"$nor": [{"a": 1}, {"b": 2}]};
        assert!(matches(nor.clone(), doc! {}));
        assert!(!matches(nor, doc! {"b": 2}));
        // Same path twice through $and: both predicates apply.
        assert!(!matches(
            doc! {"$and": [{"a": {"$gt": 1}}, {"a": {"$lt": 3}}], "a": 5},
            doc! {"a": 5}
        ));
        assert!(matches(
            doc! {"$or": [{"$and": [{"a": 1}]}]},
            doc! {"a": [1]}
        ));
    }

    #[test]
    fn logical_operators_need_nonempty_arrays_of_objects() {
        assert_parse_err(
            doc! {"$and": []},
            2,
            "$and/$or/$nor must be a nonempty array",
        );
        assert_parse_err(doc! {"$or": []}, 2, "must be a nonempty array");
        assert_parse_err(doc! {"$nor": {"a": 1}}, 2, "$nor must be an array");
        assert_parse_err(doc! {"$or": 1}, 2, "$or must be an array");
        assert_parse_err(
            doc! {"$and": [1]},
            2,
            "$or/$and/$nor entries need to be full objects",
        );
        assert_parse_err(doc! {"$or": [{"a": 1}, "b"]}, 2, "need to be full objects");
    }

    #[test]
    fn not_negates_the_whole_path_predicate() {
        let f = doc! {"a": {"$not": {"$gt": 5}}};
        assert!(matches(f.clone(), doc! {"a": 3}));
        assert!(matches(f.clone(), doc! {}));
        assert!(matches(f.clone(), doc! {"a": "x"}));
        assert!(matches(f.clone(), doc! {"a": [1, 2]}));
        assert!(!matches(f.clone(), doc! {"a": [1, 10]}));
        assert!(!matches(f, doc! {"a": 6}));
        let range = doc! {"a": {"$not": {"$gt": 1, "$lt": 5}}};
        assert!(matches(range.clone(), doc! {"a": 7}));
        assert!(!matches(range, doc! {"a": 3}));
        assert!(matches(
            doc! {"a": {"$not": re("^x", "")}},
            doc! {"a": "yx"}
        ));
        assert!(!matches(
            doc! {"a": {"$not": re("^x", "i")}},
            doc! {"a": "Xy"}
        ));
        assert!(!matches(
            doc! {"a": {"$not": {"$regex": "^x", "$options": "i"}}},
            doc! {"a": "Xy"}
        ));
        assert!(matches(
            doc! {"a": {"$not": {"$regex": "^x"}}},
            doc! {"a": 1}
        ));
        assert!(!matches(
            doc! {"a": {"$not": {"$size": 1}}},
            doc! {"a": [1]}
        ));
    }

    #[test]
    fn not_needs_a_regex_or_a_document_of_operators() {
        assert_parse_err(
            doc! {"a": {"$not": 5}},
            2,
            "$not needs a regex or a document",
        );
        assert_parse_err(
            doc! {"a": {"$not": "x"}},
            2,
            "$not needs a regex or a document",
        );
        assert_parse_err(doc! {"a": {"$not": {}}}, 2, "$not cannot be empty");
        assert_parse_err(doc! {"a": {"$not": {"b": 1}}}, 2, "unknown operator: b");
        assert_parse_err(
            doc! {"a": {"$not": {"$foo": 1}}},
            2,
            "unknown operator: $foo",
        );
        assert_parse_err(
            doc! {"$not": {"a": 1}},
            2,
            "unknown top level operator: $not. If you are trying to negate an entire expression, \
             use $nor.",
        );
    }

    #[test]
    fn elem_match_value_form_needs_one_element_satisfying_all() {
        let f = doc! {"a": {"$elemMatch": {"$gt": 1, "$lt": 5}}};
        assert!(matches(f.clone(), doc! {"a": [0, 3]}));
        assert!(!matches(f.clone(), doc! {"a": [0, 6]}));
        assert!(!matches(f.clone(), doc! {"a": 3}));
        assert!(!matches(f.clone(), doc! {}));
        // Elements are matched as values: a nested array is not looked into.
        assert!(!matches(f, doc! {"a": [[3]]}));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"$not": {"$gt": 5}}}},
            doc! {"a": [9, 1]}
        ));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"$in": [1, 2]}}},
            doc! {"a": [9, 2]}
        ));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"$elemMatch": {"$eq": 1}}}},
            doc! {"a": [[0, 1]]}
        ));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"$regex": "^b"}}},
            doc! {"a": ["ab", "bc"]}
        ));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"$exists": true}}},
            doc! {"a": [1]}
        ));
        assert!(!matches(
            doc! {"a": {"$elemMatch": {"$exists": true}}},
            doc! {"a": []}
        ));
    }

    #[test]
    fn elem_match_object_form_needs_one_document_matching_all() {
        let f = doc! {"a": {"$elemMatch": {"b": 1, "c": 2}}};
        assert!(matches(f.clone(), doc! {"a": [{"b": 1, "c": 2}, {"b": 0}]}));
        assert!(!matches(f.clone(), doc! {"a": [{"b": 1}, {"c": 2}]}));
        assert!(!matches(f.clone(), doc! {"a": {"b": 1, "c": 2}}));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"b": {"$gt": 1}, "$or": [{"c": 1}, {"d": 1}]}}},
            doc! {"a": [{"b": 2, "d": 1}]}
        ));
        assert!(matches(
            doc! {"a.x": {"$elemMatch": {"b": 1}}},
            doc! {"a": [{"x": [{"b": 1}]}]}
        ));
        // An empty $elemMatch matches arrays holding at least one document or array.
        assert!(matches(doc! {"a": {"$elemMatch": {}}}, doc! {"a": [1, {}]}));
        assert!(!matches(doc! {"a": {"$elemMatch": {}}}, doc! {"a": [1, 2]}));
        // An array element is seen as an object with keys "0", "1", ...
        assert!(matches(
            doc! {"a": {"$elemMatch": {"0": 5}}},
            doc! {"a": [[5, 6]]}
        ));
        assert_parse_err(
            doc! {"a": {"$elemMatch": 1}},
            2,
            "$elemMatch needs an Object",
        );
        assert_parse_err(
            doc! {"a": {"$elemMatch": {"$expr": true}}},
            2,
            "$expr can only be applied to the top-level document",
        );
        assert_parse_err(
            doc! {"a": {"$elemMatch": {"$gt": 1, "b": 1}}},
            2,
            "unknown operator: b",
        );
    }

    #[test]
    fn size_counts_the_array_itself() {
        assert!(matches(doc! {"a": {"$size": 2}}, doc! {"a": [1, 2]}));
        assert!(matches(
            doc! {"a": {"$size": 2.0}},
            doc! {"a": [1, [2, 3, 4]]}
        ));
        assert!(matches(doc! {"a": {"$size": 0}}, doc! {"a": []}));
        assert!(!matches(doc! {"a": {"$size": 2}}, doc! {"a": [[1, 2]]}));
        assert!(!matches(doc! {"a": {"$size": 1}}, doc! {"a": 1}));
        assert!(!matches(doc! {"a": {"$size": 0}}, doc! {}));
        assert!(matches(
            doc! {"a.b": {"$size": 1}},
            doc! {"a": [{"b": [1]}, {"b": 2}]}
        ));
        assert_parse_err(
            doc! {"a": {"$size": -1}},
            2,
            "Failed to parse $size. Expected a positive number in: $size: -1",
        );
        assert_parse_err(
            doc! {"a": {"$size": 1.5}},
            2,
            "Failed to parse $size. Expected an integer: $size: 1.5",
        );
        assert_parse_err(
            doc! {"a": {"$size": "1"}},
            2,
            "Failed to parse $size. Expected a number in: $size: \"1\"",
        );
        assert_parse_err(doc! {"a": {"$size": i64::MAX}}, 2, "in an int");
    }

    #[test]
    fn all_requires_every_value() {
        let f = doc! {"a": {"$all": [1, 2]}};
        assert!(matches(f.clone(), doc! {"a": [2, 3, 1]}));
        assert!(!matches(f.clone(), doc! {"a": [1]}));
        assert!(!matches(f, doc! {}));
        assert!(matches(doc! {"a": {"$all": [1]}}, doc! {"a": 1}));
        assert!(matches(doc! {"a": {"$all": [[1, 2]]}}, doc! {"a": [1, 2]}));
        assert!(matches(
            doc! {"a": {"$all": [[1, 2]]}},
            doc! {"a": [[1, 2], 3]}
        ));
        assert!(matches(
            doc! {"a": {"$all": [re("^a", ""), "bb"]}},
            doc! {"a": ["ax", "bb"]}
        ));
        // An empty $all matches nothing, not even an empty array.
        assert!(!matches(doc! {"a": {"$all": []}}, doc! {"a": []}));
        assert!(!matches(doc! {"a": {"$all": []}}, doc! {"a": [1]}));
        assert_parse_err(doc! {"a": {"$all": 1}}, 2, "$all needs an array");
        assert_parse_err(
            doc! {"a": {"$all": [{"$gt": 1}]}},
            2,
            "no $ expressions in $all",
        );
    }

    #[test]
    fn all_with_elem_match() {
        let f = doc! {"a": {"$all": [
            {"$elemMatch": {"b": 1}},
            {"$elemMatch": {"c": {"$gt": 5}}},
        ]}};
        assert!(matches(f.clone(), doc! {"a": [{"b": 1}, {"c": 6}]}));
        assert!(!matches(f, doc! {"a": [{"b": 1}, {"c": 5}]}));
        assert_parse_err(
            doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, 5]}},
            2,
            "$all/$elemMatch has to be consistent",
        );
        assert_parse_err(
            doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, {"b": 1}]}},
            2,
            "$all/$elemMatch has to be consistent",
        );
    }

    #[test]
    fn regex_values_and_operator() {
        assert!(matches(doc! {"a": re("^ab", "")}, doc! {"a": "abc"}));
        assert!(!matches(doc! {"a": re("^ab", "")}, doc! {"a": "ABC"}));
        assert!(matches(doc! {"a": re("^ab", "i")}, doc! {"a": "ABC"}));
        assert!(matches(
            doc! {"a": {"$regex": "^ab", "$options": "i"}},
            doc! {"a": "ABC"}
        ));
        assert!(matches(
            doc! {"a": {"$options": "i", "$regex": "^ab"}},
            doc! {"a": "ABC"}
        ));
        assert!(matches(
            doc! {"a": {"$regex": re("^ab", "i")}},
            doc! {"a": "ABC"}
        ));
        assert!(matches(
            doc! {"a": {"$regex": "b"}},
            doc! {"a": ["x", "abc"]}
        ));
        assert!(!matches(doc! {"a": {"$regex": "1"}}, doc! {"a": 1}));
        assert!(!matches(doc! {"a": {"$regex": "b"}}, doc! {}));
        assert!(matches(
            doc! {"a": {"$regex": "x"}},
            doc! {"a": Bson::Symbol("x".into())}
        ));
        // A stored regex matches only the identical regex.
        assert!(matches(doc! {"a": re("x", "i")}, doc! {"a": re("x", "i")}));
        assert!(!matches(doc! {"a": re("x", "i")}, doc! {"a": re("x", "")}));
        assert!(matches(
            doc! {"a": {"$eq": re("x", "")}},
            doc! {"a": re("x", "")}
        ));
        assert!(!matches(doc! {"a": {"$eq": re("x", "")}}, doc! {"a": "x"}));
    }

    #[test]
    fn regex_options_m_s_x() {
        assert!(!matches(doc! {"a": re("^b", "")}, doc! {"a": "a\nb"}));
        assert!(matches(doc! {"a": re("^b", "m")}, doc! {"a": "a\nb"}));
        assert!(!matches(doc! {"a": re("a.b", "")}, doc! {"a": "a\nb"}));
        assert!(matches(doc! {"a": re("a.b", "s")}, doc! {"a": "a\nb"}));
        assert!(matches(
            doc! {"a": re("a b # comment", "x")},
            doc! {"a": "ab"}
        ));
        assert!(!matches(doc! {"a": re("a b", "")}, doc! {"a": "ab"}));
    }

    #[test]
    fn regex_follows_pcre_where_the_regex_crate_differs() {
        // `$` also matches before a final newline.
        assert!(matches(doc! {"a": re("abc$", "")}, doc! {"a": "abc\n"}));
        assert!(!matches(doc! {"a": re("abc$", "")}, doc! {"a": "abc\nd"}));
        assert!(matches(doc! {"a": re(r"abc\Z", "")}, doc! {"a": "abc\n"}));
        // `\d` and `\w` are ASCII.
        assert!(matches(doc! {"a": re(r"^\d+$", "")}, doc! {"a": "123"}));
        assert!(!matches(
            doc! {"a": re(r"^\d$", "")},
            doc! {"a": "\u{0663}"}
        ));
        assert!(!matches(doc! {"a": re(r"^\w$", "")}, doc! {"a": "é"}));
        assert!(matches(doc! {"a": re(r"^[\d.]+$", "")}, doc! {"a": "1.5"}));
        assert!(matches(
            doc! {"a": re(r"^\S+\s\S+$", "")},
            doc! {"a": "a b"}
        ));
        // Literal quoting and literal braces.
        assert!(matches(
            doc! {"a": re(r"\Qa.b*\E$", "")},
            doc! {"a": "xa.b*"}
        ));
        assert!(!matches(doc! {"a": re(r"\Qa.b\E", "")}, doc! {"a": "axb"}));
        assert!(matches(doc! {"a": re("a{", "")}, doc! {"a": "a{"}));
        assert!(matches(doc! {"a": re("{x}", "")}, doc! {"a": "{x}"}));
        assert!(matches(doc! {"a": re("^a{2}$", "")}, doc! {"a": "aa"}));
        assert!(matches(doc! {"a": re("^a{1,2}b", "")}, doc! {"a": "aab"}));
        // Class contents that are set syntax in the regex crate.
        assert!(matches(doc! {"a": re("^[[]$", "")}, doc! {"a": "["}));
        assert!(matches(doc! {"a": re("^[]a]+$", "")}, doc! {"a": "]a"}));
        assert!(matches(doc! {"a": re("^[a&&b]+$", "")}, doc! {"a": "&a"}));
        assert!(matches(
            doc! {"a": re("^[[:alpha:]]+$", "")},
            doc! {"a": "ab"}
        ));
        assert!(matches(doc! {"a": re(r"\/x\<", "")}, doc! {"a": "/x<"}));
        assert!(matches(
            doc! {"a": re(r"^\x{263a}\x41$", "")},
            doc! {"a": "\u{263a}A"}
        ));
        assert!(matches(doc! {"a": re(r"^\p{Lu}+$", "")}, doc! {"a": "ÀB"}));
        assert!(matches(
            doc! {"a": re(r"^a(?#note)b$", "")},
            doc! {"a": "ab"}
        ));
    }

    #[test]
    fn regex_errors() {
        assert_parse_err(
            doc! {"a": re("(", "")},
            51091,
            "Regular expression is invalid",
        );
        assert_parse_err(
            doc! {"a": {"$regex": "a(?=b)"}},
            51091,
            "Regular expression is invalid",
        );
        assert_parse_err(
            doc! {"a": {"$regex": "a", "$options": "q"}},
            51108,
            "invalid flag in regex options: q",
        );
        assert_parse_err(doc! {"a": {"$options": "i"}}, 2, "$options needs a $regex");
        assert_parse_err(doc! {"a": {"$regex": 1}}, 2, "$regex has to be a string");
        assert_parse_err(
            doc! {"a": {"$regex": "a", "$options": 1}},
            2,
            "$options has to be a string",
        );
        assert_parse_err(
            doc! {"a": {"$regex": re("a", "i"), "$options": "m"}},
            51075,
            "options set in both $regex and $options",
        );
        assert_parse_err(
            doc! {"a": {"$options": "m", "$regex": re("a", "i")}},
            51074,
            "options set in both $regex and $options",
        );
        assert_parse_err(doc! {"a": {"$in": [re("(", "")]}}, 51091, "invalid");
        assert_parse_err(
            doc! {"a": {"$gt": re("a", "")}},
            2,
            "Can't have RegEx as arg to predicate over field 'a'",
        );
        assert_parse_err(
            doc! {"a": {"$ne": re("a", "")}},
            2,
            "Can't have regex as arg to $ne.",
        );
    }

    #[test]
    fn mod_truncates_numbers() {
        let f = doc! {"a": {"$mod": [4, 1]}};
        assert!(matches(f.clone(), doc! {"a": 5}));
        assert!(matches(f.clone(), doc! {"a": 9_i64}));
        assert!(matches(f.clone(), doc! {"a": 5.9}));
        assert!(matches(f.clone(), doc! {"a": [2, 13]}));
        assert!(!matches(f.clone(), doc! {"a": 6}));
        assert!(!matches(f.clone(), doc! {"a": "5"}));
        assert!(!matches(f.clone(), doc! {"a": f64::NAN}));
        assert!(!matches(f, doc! {}));
        assert!(matches(doc! {"a": {"$mod": [4, -1]}}, doc! {"a": -5}));
        assert!(matches(doc! {"a": {"$mod": [4.5, 1]}}, doc! {"a": 5}));
        assert!(matches(doc! {"a": {"$mod": [-1, 0]}}, doc! {"a": i64::MIN}));
        // A double beyond the i64 range has no integral dividend.
        assert!(!matches(doc! {"a": {"$mod": [2, 0]}}, doc! {"a": 1e30}));
    }

    #[test]
    fn mod_rejects_bad_operands() {
        assert_parse_err(doc! {"a": {"$mod": [0, 1]}}, 2, "divisor cannot be 0");
        assert_parse_err(doc! {"a": {"$mod": [0.5, 1]}}, 2, "divisor cannot be 0");
        assert_parse_err(
            doc! {"a": {"$mod": 4}},
            2,
            "malformed mod, needs to be an array",
        );
        assert_parse_err(
            doc! {"a": {"$mod": [4]}},
            2,
            "malformed mod, not enough elements",
        );
        assert_parse_err(
            doc! {"a": {"$mod": [4, 1, 2]}},
            2,
            "malformed mod, too many elements",
        );
        assert_parse_err(
            doc! {"a": {"$mod": ["4", 1]}},
            2,
            "malformed mod, divisor not a number",
        );
        assert_parse_err(
            doc! {"a": {"$mod": [4, "1"]}},
            2,
            "malformed mod, remainder not a number",
        );
        assert_parse_err(
            doc! {"a": {"$mod": [f64::NAN, 1]}},
            2,
            "divisor value is invalid",
        );
    }

    #[test]
    fn comment_is_ignored() {
        assert!(matches(doc! {"$comment": "why", "a": 1}, doc! {"a": 1}));
        assert!(!matches(doc! {"$comment": "why", "a": 1}, doc! {"a": 2}));
        assert!(matches(doc! {"$comment": {"any": "thing"}}, doc! {}));
    }

    #[test]
    fn always_true_and_false() {
        assert!(matches(doc! {"$alwaysTrue": 1}, doc! {}));
        assert!(!matches(doc! {"$alwaysFalse": 1}, doc! {}));
        assert_parse_err(
            doc! {"$alwaysTrue": 0},
            9,
            "$alwaysTrue must be an integer value of 1",
        );
        assert_parse_err(
            doc! {"$alwaysFalse": "1"},
            9,
            "Expected a number in: $alwaysFalse",
        );
    }

    #[test]
    fn expr_is_parsed_and_evaluated_for_truthiness() {
        assert!(matches(doc! {"$expr": true}, doc! {"a": 1}));
        assert!(!matches(doc! {"$expr": false}, doc! {"a": 1}));
        assert!(!matches(doc! {"$expr": 0}, doc! {"a": 1}));
        assert!(!matches(doc! {"$expr": true, "a": 2}, doc! {"a": 1}));
        assert!(matches(doc! {"$or": [{"$expr": 1}]}, doc! {}));
    }

    #[test]
    fn unknown_operators_are_rejected() {
        assert_parse_err(doc! {"a": {"$foo": 1}}, 2, "unknown operator: $foo");
        assert_parse_err(doc! {"a": {"$gt": 1, "b": 2}}, 2, "unknown operator: b");
        assert_parse_err(doc! {"$foo": 1}, 2, "unknown top level operator: $foo");
        assert_parse_err(
            doc! {"a": {"$where": "x"}},
            2,
            "$where cannot be applied to a field",
        );
        assert_parse_err(
            doc! {"a": {"$comment": "x"}},
            2,
            "unknown operator: $comment",
        );
        // Errors anywhere in the tree surface at parse time.
        assert_parse_err(
            doc! {"$or": [{"a": 1}, {"b": {"$foo": 1}}]},
            2,
            "unknown operator: $foo",
        );
        assert_parse_err(
            doc! {"a": {"$eq": Bson::Undefined}},
            2,
            "cannot compare to undefined",
        );
    }

    #[test]
    fn unimplemented_operators_fail_as_not_supported() {
        for (filter, op) in [
            (doc! {"$where": "this.a == 1"}, "$where"),
            (doc! {"$text": {"$search": "x"}}, "$text"),
            (doc! {"$jsonSchema": {}}, "$jsonSchema"),
            (doc! {"$sampleRate": 0.5}, "$sampleRate"),
            (doc! {"a": {"$near": [0, 0]}}, "$near"),
            (doc! {"a": {"$nearSphere": [0, 0]}}, "$nearSphere"),
            (doc! {"a": {"$geoWithin": {}}}, "$geoWithin"),
            (doc! {"a": {"$geoIntersects": {}}}, "$geoIntersects"),
            (doc! {"a": {"$bitsAllSet": 1}}, "$bitsAllSet"),
            (doc! {"a": {"$bitsAnySet": 1}}, "$bitsAnySet"),
            (doc! {"a": {"$bitsAllClear": 1}}, "$bitsAllClear"),
            (doc! {"a": {"$bitsAnyClear": 1}}, "$bitsAnyClear"),
            (
                doc! {"a": {"$elemMatch": {"$bitsAllSet": 1}}},
                "$bitsAllSet",
            ),
        ] {
            assert_parse_err(filter, 115, op);
        }
    }

    #[test]
    fn dbref_documents_are_values_not_operators() {
        let f = doc! {"a": {"$ref": "c", "$id": 1}};
        assert!(matches(f.clone(), doc! {"a": {"$ref": "c", "$id": 1}}));
        assert!(!matches(f, doc! {"a": {"$ref": "c", "$id": 2}}));
        assert!(matches(
            doc! {"a": {"$elemMatch": {"$id": 1}}},
            doc! {"a": [{"$ref": "c", "$id": 1}]}
        ));
    }

    #[test]
    fn equality_on_reports_scalar_pins_only() {
        let pin = |filter: Document, path: &str| {
            Matcher::parse(&filter).unwrap().equality_on(path).cloned()
        };
        assert_eq!(pin(doc! {"a": 5}, "a"), Some(Bson::Int32(5)));
        assert_eq!(
            pin(doc! {"a": {"$eq": "x"}}, "a"),
            Some(Bson::String("x".into()))
        );
        assert_eq!(
            pin(doc! {"a": {"$gt": 1, "$eq": 5}}, "a"),
            Some(Bson::Int32(5))
        );
        assert_eq!(pin(doc! {"b": 1, "a.c": 5}, "a.c"), Some(Bson::Int32(5)));
        assert_eq!(
            pin(doc! {"$and": [{"b": 1}, {"a": 5}]}, "a"),
            Some(Bson::Int32(5))
        );
        assert_eq!(pin(doc! {"a": 5}, "b"), None);
        assert_eq!(pin(doc! {"a": [5]}, "a"), None);
        assert_eq!(pin(doc! {"a": {"b": 5}}, "a"), None);
        assert_eq!(pin(doc! {"a": null}, "a"), None);
        assert_eq!(pin(doc! {"a": re("x", "")}, "a"), None);
        assert_eq!(pin(doc! {"a": {"$gt": 5}}, "a"), None);
        assert_eq!(pin(doc! {"a": {"$ne": 5}}, "a"), None);
        assert_eq!(pin(doc! {"a": {"$in": [5]}}, "a"), None);
        assert_eq!(pin(doc! {"$or": [{"a": 5}]}, "a"), None);
        assert_eq!(pin(doc! {"a": Bson::MinKey}, "a"), None);
    }

    #[test]
    fn filter_is_kept_as_given() {
        let f = doc! {"a": {"$gt": 1}, "$comment": "c"};
        assert_eq!(Matcher::parse(&f).unwrap().filter(), &f);
    }
}
