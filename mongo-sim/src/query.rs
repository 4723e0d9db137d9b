//! Query filters (`find`, `update`, `delete`, `$match`): comparison, logical, element,
//! array and `$expr` operators over dotted paths with array element matching.
//!
//! A filter is parsed and validated into a tree up front, as mongod's `MatchExpressionParser`
//! does before it looks at any document, and the tree is then evaluated per document without
//! copying it. Path traversal follows mongod's `BSONElementIterator` (manual: "Query an Array",
//! "Query on Embedded/Nested Documents", "Query for Null or Missing Fields").

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
            let d = as_f64(v)?;
            d.is_finite().then_some(d.trunc() as i64)
        }
        _ => None,
    }
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

/// mongod's limit on a pattern's length (`RegexMatchExpression::kMaxPatternSize`).
const MAX_PATTERN_SIZE: usize = 32764;

fn compile_regex(pattern: &str, options: &str) -> Result<RegexTest> {
    if pattern.len() > MAX_PATTERN_SIZE {
        return Err(CommandError::bad_value("Regular expression is too long"));
    }
    if pattern.contains('\0') {
        return Err(CommandError::bad_value(
            "Regular expression cannot contain an embedded null byte",
        ));
    }
    if options.contains('\0') {
        return Err(CommandError::bad_value(
            "Regular expression options string cannot contain an embedded null byte",
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
                return Err(CommandError::location(
                    51108,
                    format!("invalid flag in regex options: {other}"),
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
                    _ => {
                        out.push('\\');
                        out.push(next);
                    }
                }
                i += 2;
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
    let offset = path.indexes[rest];
    let last_component = rest + 1 == n;
    for (i, item) in items.iter().enumerate() {
        let at_offset = offset == Some(i);
        match item {
            Bson::Document(d) => {
                if any_value(Obj::Doc(d), path, rest, leaf_traverse, f) {
                    return true;
                }
                if at_offset {
                    let hit = if last_component {
                        f(Some(item))
                    } else {
                        any_value(Obj::Doc(d), path, rest + 1, leaf_traverse, f)
                    };
                    if hit {
                        return true;
                    }
                }
            }
            _ if at_offset => {
                let hit = if last_component {
                    f(Some(item))
                } else if let Bson::Array(inner) = item {
                    any_in_array(item, inner, path, rest + 1, leaf_traverse, f)
                } else {
                    false
                };
                if hit {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
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
            Node::Path(p, Test::Cmp(CmpOp::Eq, v)) if p.dotted == path => match v {
                Bson::Double(_)
                | Bson::Int32(_)
                | Bson::Int64(_)
                | Bson::Decimal128(_)
                | Bson::String(_)
                | Bson::ObjectId(_)
                | Bson::Boolean(_)
                | Bson::DateTime(_)
                | Bson::Timestamp(_)
                | Bson::Binary(_) => Some(v),
                _ => None,
            },
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
            let one = crate::bsontype::as_i64(value).ok_or_else(|| {
                CommandError::failed_to_parse(format!("Expected an integer: {key}: {value}"))
            })?;
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

fn parse_size(value: &Bson) -> Result<usize> {
    let size = match value {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(l) => {
            if i32::try_from(*l).is_err() {
                return Err(CommandError::bad_value(
                    "$size must be representable as a 32-bit integer",
                ));
            }
            *l
        }
        Bson::Double(d) => {
            if d.fract() != 0.0 || !d.is_finite() {
                return Err(CommandError::bad_value("$size must be a whole number"));
            }
            if *d > f64::from(i32::MAX) || *d < f64::from(i32::MIN) {
                return Err(CommandError::bad_value(
                    "$size must be representable as a 32-bit integer",
                ));
            }
            *d as i64
        }
        Bson::Decimal128(_) => {
            let d = as_f64(value).unwrap_or(f64::NAN);
            if d.fract() != 0.0 || !d.is_finite() {
                return Err(CommandError::bad_value("$size must be a whole number"));
            }
            d as i64
        }
        _ => return Err(CommandError::bad_value("$size needs a number")),
    };
    usize::try_from(size).map_err(|_| CommandError::bad_value("$size may not be negative"))
}

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
                if d >= 9.223_372_036_854_775_807e18 || d < -9.223_372_036_854_775_808e18 {
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
