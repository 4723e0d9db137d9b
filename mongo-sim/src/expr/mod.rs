//! Aggregation expressions (`$add`, `$cond`, `$$ROOT`, ...) for `$expr`, `$project`,
//! `$group` and update pipelines, with mongod's null/missing and type-error behaviour.
//!
//! An expression is parsed once into an [`Expr`] tree, validating operator names, argument
//! counts and field paths the way mongod does before it reads any document (manual:
//! "Aggregation Operators", "Expressions"). Evaluation returns `None` for a missing value,
//! which differs from null: object expressions drop missing fields and `$$REMOVE` is missing.
//! Constant sub-expressions are folded at parse time, as mongod's `optimize()` does.
//!
//! Not implemented, and rejected at parse time with 168 InvalidPipelineOperator like any unknown
//! operator: `$dateFromString`, `$meta`, `$function`/`$accumulator` and the n-ary array
//! operators (`$firstN`, `$maxN`, ...). Decimal128 values fail with 115 CommandNotSupported wherever they would be
//! computed on, and time zones other than UTC and fixed offsets fail with 40485 when a date
//! has to be placed in them.

// CommandError is the crate-wide error type; its size is decided in `error`, not here.
#![allow(clippy::result_large_err)]

use crate::bsontype::type_name;
use crate::compare::compare;
use crate::error::{
    BAD_VALUE, COMMAND_NOT_SUPPORTED, CONVERSION_FAILURE, CommandError, INVALID_PIPELINE_OPERATOR,
    OVERFLOW, Result,
};
use bson::{Bson, Document, oid::ObjectId};
use std::cmp::Ordering;
use std::collections::HashMap;

/// Variables visible to an expression: `$$NOW`, `$$CLUSTER_TIME`, the user's `let`
/// variables and those bound by `$map`/`$filter`. `$$ROOT`/`$$CURRENT` come from the
/// document being evaluated.
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: HashMap<String, Bson>,
    /// Variables bound to a missing value (`$let: {vars: {x: "$nofield"}}`): defined, but
    /// reading them yields missing rather than "undefined variable".
    missing: Vec<String>,
}

impl Variables {
    /// System variables only.
    pub fn new(now: bson::DateTime, cluster_time: bson::Timestamp) -> Self {
        let mut values = HashMap::new();
        values.insert("NOW".to_string(), Bson::DateTime(now));
        values.insert("CLUSTER_TIME".to_string(), Bson::Timestamp(cluster_time));
        Self {
            values,
            missing: Vec::new(),
        }
    }

    /// Adds the command's `let` document: each value is a constant expression evaluated once.
    /// Names follow the rules for user variables (lowercase or non-ASCII first character).
    pub fn with_let(mut self, let_doc: &Document) -> Result<Self> {
        for (name, value) in let_doc {
            validate_user_var_name(name)?;
            if reads_document(value) {
                return Err(loc(
                    31474,
                    format!(
                        "Command let Expression does not evaluate to constant {name}: {}",
                        show(value)
                    ),
                ));
            }
            let expr = Expr::parse(value)?;
            let v = expr.eval(&Document::new(), &self)?;
            self.bind(name, v);
        }
        Ok(self)
    }

    /// A variable's value (without the `$$`), for callers that resolve `$$NOW` and the like
    /// outside expressions. `None` for undefined variables and those bound to missing.
    pub fn get(&self, name: &str) -> Option<&Bson> {
        self.values.get(name)
    }

    /// Binds `name` (without the `$$`), as `$lookup`'s `let` or a caller-provided scope does.
    pub fn set(&mut self, name: impl Into<String>, value: Bson) {
        let name = name.into();
        self.missing.retain(|m| *m != name);
        self.values.insert(name, value);
    }

    fn bind(&mut self, name: &str, value: Option<Bson>) {
        match value {
            Some(v) => self.set(name, v),
            None => {
                self.values.remove(name);
                if !self.missing.iter().any(|m| m == name) {
                    self.missing.push(name.to_string());
                }
            }
        }
    }

    /// `None`: not defined; `Some(None)`: defined as missing.
    fn lookup(&self, name: &str) -> Option<Option<&Bson>> {
        match self.values.get(name) {
            Some(v) => Some(Some(v)),
            None if self.missing.iter().any(|m| m == name) => Some(None),
            None => None,
        }
    }
}

/// Whether an expression reads the document (a field path, `$$ROOT` or `$$CURRENT`), which a
/// command's `let` value may not: mongod requires it to fold to a constant.
fn reads_document(v: &Bson) -> bool {
    match v {
        Bson::String(s) => {
            (s.starts_with('$') && !s.starts_with("$$"))
                || ["$$ROOT", "$$CURRENT"].iter().any(|r| {
                    s.strip_prefix(r)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
                })
        }
        Bson::Array(items) => items.iter().any(reads_document),
        Bson::Document(d) => d
            .iter()
            .any(|(k, v)| k != "$literal" && k != "$const" && reads_document(v)),
        _ => false,
    }
}

/// A parsed expression. Parsing rejects unknown operators up front (code 168
/// InvalidPipelineOperator), as mongod does before touching any document.
#[derive(Debug, Clone)]
pub struct Expr {
    node: Node,
}

#[derive(Debug, Clone)]
enum Node {
    Const(Bson),
    /// `"$a.b"`: a path from `$$CURRENT`.
    Path(Vec<String>),
    /// `"$$name.a.b"`.
    Var {
        name: String,
        path: Vec<String>,
    },
    Object(Vec<(String, Expr)>),
    Array(Vec<Expr>),
    Op {
        op: &'static str,
        args: Vec<Expr>,
    },
    Switch {
        branches: Vec<(Expr, Expr)>,
        default: Option<Box<Expr>>,
    },
    Filter {
        input: Box<Expr>,
        var: String,
        cond: Box<Expr>,
        limit: Option<Box<Expr>>,
    },
    Map {
        input: Box<Expr>,
        var: String,
        body: Box<Expr>,
    },
    Reduce {
        input: Box<Expr>,
        initial: Box<Expr>,
        body: Box<Expr>,
    },
    Let {
        vars: Vec<(String, Expr)>,
        body: Box<Expr>,
    },
    Convert {
        input: Box<Expr>,
        to: Box<Expr>,
        on_error: Option<Box<Expr>>,
        on_null: Option<Box<Expr>>,
    },
    DateToString {
        date: Box<Expr>,
        format: Option<Box<Expr>>,
        timezone: Option<Box<Expr>>,
        on_null: Option<Box<Expr>>,
    },
    GetField {
        field: String,
        input: Box<Expr>,
    },
    SetField {
        field: String,
        input: Box<Expr>,
        value: Box<Expr>,
    },
    SortArray {
        input: Box<Expr>,
        sort_by: SortBy,
    },
    /// `$trim`/`$ltrim`/`$rtrim`.
    Trim {
        op: &'static str,
        input: Box<Expr>,
        chars: Option<Box<Expr>>,
    },
    /// `$replaceOne`/`$replaceAll`.
    Replace {
        op: &'static str,
        input: Box<Expr>,
        find: Box<Expr>,
        replacement: Box<Expr>,
    },
    Zip {
        inputs: Vec<Expr>,
        defaults: Vec<Expr>,
        longest: bool,
    },
    /// `$dateAdd`/`$dateSubtract`.
    DateArith {
        op: &'static str,
        start: Box<Expr>,
        unit: Box<Expr>,
        amount: Box<Expr>,
        timezone: Option<Box<Expr>>,
    },
    /// `$dateFromParts`: the named parts in the order mongod evaluates them.
    DateFromParts {
        parts: Vec<(&'static str, Expr)>,
        iso: bool,
        timezone: Option<Box<Expr>>,
    },
    DateToParts {
        date: Box<Expr>,
        timezone: Option<Box<Expr>>,
        iso8601: Option<Box<Expr>>,
    },
    /// `$rand`: never folded, a new value per evaluation.
    Rand,
    /// `$regexMatch`, `$regexFind`, `$regexFindAll`.
    Regex {
        op: &'static str,
        input: Box<Expr>,
        regex: Box<Expr>,
        options: Option<Box<Expr>>,
    },
    DateTrunc {
        date: Box<Expr>,
        unit: Box<Expr>,
        bin_size: Option<Box<Expr>>,
        timezone: Option<Box<Expr>>,
        start_of_week: Option<Box<Expr>>,
    },
    DateDiff {
        start: Box<Expr>,
        end: Box<Expr>,
        unit: Box<Expr>,
        timezone: Option<Box<Expr>>,
        start_of_week: Option<Box<Expr>>,
    },
    /// `$year`, `$month`, ... with an optional timezone.
    DatePart {
        op: &'static str,
        date: Box<Expr>,
        timezone: Option<Box<Expr>>,
    },
}

const DATE_PART_OPS: &[&str] = &[
    "$year",
    "$month",
    "$dayOfMonth",
    "$hour",
    "$minute",
    "$second",
    "$millisecond",
    "$dayOfWeek",
    "$dayOfYear",
    "$week",
    "$isoWeek",
    "$isoWeekYear",
    "$isoDayOfWeek",
];

#[derive(Debug, Clone)]
enum SortBy {
    Value(bool),
    Fields(Vec<(String, bool)>),
}

/// How many arguments an operator takes, as mongod's `ExpressionFixedArity` /
/// `ExpressionRangedArity` / `ExpressionVariadic` declare it.
enum Arity {
    Exactly(usize),
    Range(usize, usize),
    Variadic,
}

fn arity_of(op: &str) -> Option<(&'static str, Arity)> {
    use Arity::*;
    const ONE: &[&str] = &[
        "$abs",
        "$ceil",
        "$floor",
        "$toString",
        "$toInt",
        "$toLong",
        "$toDouble",
        "$toDate",
        "$toBool",
        "$toObjectId",
        "$not",
        "$size",
        "$first",
        "$last",
        "$type",
        "$isArray",
        "$isNumber",
        "$strLenBytes",
        "$toLower",
        "$toUpper",
        "$objectToArray",
        "$arrayToObject",
        "$reverseArray",
        "$toHashedIndexKey",
    ];
    const TWO: &[&str] = &[
        "$subtract",
        "$divide",
        "$mod",
        "$eq",
        "$ne",
        "$gt",
        "$gte",
        "$lt",
        "$lte",
        "$cmp",
        "$in",
        "$arrayElemAt",
        "$split",
    ];
    const VARIADIC: &[&str] = &[
        "$add",
        "$multiply",
        "$concat",
        "$and",
        "$or",
        "$concatArrays",
        "$mergeObjects",
        "$max",
        "$min",
        "$sum",
        "$avg",
        "$ifNull",
        "$setUnion",
        "$setIntersection",
        "$setEquals",
    ];
    let find = |list: &[&'static str]| list.iter().copied().find(|n| *n == op);
    if let Some(n) = find(ONE) {
        return Some((n, Exactly(1)));
    }
    if let Some(n) = find(TWO) {
        return Some((n, Exactly(2)));
    }
    if let Some(n) = find(VARIADIC) {
        return Some((n, Variadic));
    }
    match op {
        "$cond" => Some(("$cond", Exactly(3))),
        // `$substr` is mongod's deprecated alias, parsed as `$substrBytes`.
        "$substrBytes" | "$substr" => Some(("$substrBytes", Exactly(3))),
        "$slice" => Some(("$slice", Range(2, 3))),
        "$setDifference" => Some(("$setDifference", Exactly(2))),
        "$setIsSubset" => Some(("$setIsSubset", Exactly(2))),
        "$allElementsTrue" => Some(("$allElementsTrue", Exactly(1))),
        "$anyElementTrue" => Some(("$anyElementTrue", Exactly(1))),
        "$strcasecmp" => Some(("$strcasecmp", Exactly(2))),
        "$strLenCP" => Some(("$strLenCP", Exactly(1))),
        "$substrCP" => Some(("$substrCP", Exactly(3))),
        "$tsSecond" => Some(("$tsSecond", Exactly(1))),
        "$tsIncrement" => Some(("$tsIncrement", Exactly(1))),
        "$binarySize" => Some(("$binarySize", Exactly(1))),
        "$bsonSize" => Some(("$bsonSize", Exactly(1))),
        "$sqrt" => Some(("$sqrt", Exactly(1))),
        "$exp" => Some(("$exp", Exactly(1))),
        "$ln" => Some(("$ln", Exactly(1))),
        "$log10" => Some(("$log10", Exactly(1))),
        "$log" => Some(("$log", Exactly(2))),
        "$round" => Some(("$round", Range(1, 2))),
        "$trunc" => Some(("$trunc", Range(1, 2))),
        "$range" => Some(("$range", Range(2, 3))),
        "$indexOfArray" => Some(("$indexOfArray", Range(2, 4))),
        "$indexOfBytes" => Some(("$indexOfBytes", Range(2, 4))),
        "$indexOfCP" => Some(("$indexOfCP", Range(2, 4))),
        "$pow" => Some(("$pow", Exactly(2))),
        _ => None,
    }
}

/// Not (yet) among the shared constants in `error`.
const EXCEEDED_MEMORY_LIMIT: crate::error::ErrorCode = crate::error::ErrorCode {
    code: 146,
    name: "ExceededMemoryLimit",
};

fn loc(code: i32, msg: impl Into<String>) -> CommandError {
    CommandError::location(code, msg)
}

fn type_of(v: Option<&Bson>) -> &'static str {
    v.map(type_name).unwrap_or("missing")
}

fn is_nullish(v: Option<&Bson>) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

/// A value as mongod's `Value::toString` prints it in messages: `"str"`, `{a: 1}`, `[1, 2]`.
fn show(v: &Bson) -> String {
    match v {
        Bson::String(s) => format!("\"{s}\""),
        Bson::Double(d) => format_double(*d),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::Null => "null".to_string(),
        Bson::Undefined => "undefined".to_string(),
        Bson::Document(d) => {
            let fields: Vec<String> = d.iter().map(|(k, v)| format!("{k}: {}", show(v))).collect();
            format!("{{{}}}", fields.join(", "))
        }
        Bson::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A document as `BSONObj::toString` prints it: `{ $add: [ 1 ], b: "x" }`.
fn show_obj(d: &Document) -> String {
    fn element(v: &Bson) -> String {
        match v {
            Bson::Document(d) => show_obj(d),
            Bson::Array(items) if items.is_empty() => "[]".to_string(),
            Bson::Array(items) => {
                let items: Vec<String> = items.iter().map(element).collect();
                format!("[ {} ]", items.join(", "))
            }
            Bson::Double(d) if d.is_finite() && d.fract() == 0.0 && d.abs() < 1e16 => {
                format!("{d:.1}")
            }
            Bson::Double(d) => d.to_string(),
            other => show(other),
        }
    }
    if d.is_empty() {
        return "{}".to_string();
    }
    let fields: Vec<String> = d
        .iter()
        .map(|(k, v)| format!("{k}: {}", element(v)))
        .collect();
    format!("{{ {} }}", fields.join(", "))
}

fn decimal_unsupported() -> CommandError {
    CommandError::new(
        COMMAND_NOT_SUPPORTED,
        "Decimal128 values are not supported in aggregation expressions by this server",
    )
}

/// mongod's `FieldPath::uassertValidFieldName`.
fn validate_field_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(loc(
            15998,
            "FieldPath field names may not be empty strings.",
        ));
    }
    if name.starts_with('$') {
        return Err(loc(
            16410,
            "FieldPath field names may not start with '$'. Consider using $getField or $setField.",
        ));
    }
    if name.contains('\0') {
        return Err(loc(
            16411,
            "FieldPath field names may not contain '\0'. Consider using $getField or $setField.",
        ));
    }
    if name.contains('.') {
        return Err(loc(
            16412,
            "FieldPath field names may not contain '.'. Consider using $getField or $setField.",
        ));
    }
    Ok(())
}

fn parse_field_path(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Err(loc(
            40352,
            "FieldPath cannot be constructed with empty string",
        ));
    }
    path.split('.')
        .map(|p| validate_field_name(p).map(|_| p.to_string()))
        .collect()
}

/// `Variables::validateNameForUserWrite`: names a `$let`, `$map`, `$filter` or command `let`
/// may bind.
fn validate_user_var_name(name: &str) -> Result<()> {
    // CURRENT is the one system variable users may rebind.
    if name == "CURRENT" {
        return Ok(());
    }
    let Some(first) = name.chars().next() else {
        return Err(loc(16866, "empty variable names are not allowed"));
    };
    if !first.is_ascii_lowercase() && first.is_ascii() {
        return Err(loc(
            16867,
            format!("'{name}' starts with an invalid character for a user variable name"),
        ));
    }
    check_var_name_chars(name, 16868)
}

fn check_var_name_chars(name: &str, code: i32) -> Result<()> {
    match name
        .chars()
        .skip(1)
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || !c.is_ascii()))
    {
        Some(bad) => Err(loc(
            code,
            format!("'{name}' contains an invalid character for a variable name: '{bad}'"),
        )),
        None => Ok(()),
    }
}

const SYSTEM_VARS: &[&str] = &[
    "ROOT",
    "CURRENT",
    "REMOVE",
    "NOW",
    "CLUSTER_TIME",
    "JS_SCOPE",
    "IS_MR",
];

/// `Variables::uassertValidNameForUserRead` plus the builtin lookup: an uppercase name must be
/// a system variable (user variables cannot start with one).
fn validate_var_read(name: &str) -> Result<()> {
    let Some(first) = name.chars().next() else {
        return Err(loc(16869, "empty variable names are not allowed"));
    };
    if !first.is_ascii_alphabetic() && first.is_ascii() {
        return Err(loc(
            16870,
            format!("'{name}' starts with an invalid character for a variable name"),
        ));
    }
    check_var_name_chars(name, 16871)?;
    if first.is_ascii_uppercase() && !SYSTEM_VARS.contains(&name) {
        return Err(loc(17276, format!("Use of undefined variable: {name}")));
    }
    Ok(())
}

fn parse_string_ref(s: &str) -> Result<Node> {
    if let Some(var) = s.strip_prefix("$$") {
        let (name, rest) = match var.split_once('.') {
            Some((n, r)) => (n, Some(r)),
            None => (var, None),
        };
        validate_var_read(name)?;
        let path = match rest {
            Some(r) => parse_field_path(r)?,
            None => Vec::new(),
        };
        return Ok(Node::Var {
            name: name.to_string(),
            path,
        });
    }
    let path = &s[1..];
    if path.is_empty() {
        return Err(loc(16872, "'$' by itself is not a valid FieldPath"));
    }
    Ok(Node::Path(parse_field_path(path)?))
}

fn boxed(e: Expr) -> Box<Expr> {
    Box::new(e)
}

fn object_arg<'a>(v: &'a Bson, code: i32, msg: &str) -> Result<&'a Document> {
    match v {
        Bson::Document(d) => Ok(d),
        _ => Err(loc(code, msg.to_string())),
    }
}

impl Expr {
    /// Parses and validates `value` as mongod's `Expression::parseOperand` does, then folds
    /// constant sub-expressions as its `optimize()` does (so `{$divide: [1, 0]}` fails here).
    pub fn parse(value: &Bson) -> Result<Expr> {
        let node = match value {
            Bson::String(s) if s.starts_with('$') => parse_string_ref(s)?,
            Bson::Array(items) => {
                Node::Array(items.iter().map(Expr::parse).collect::<Result<_>>()?)
            }
            Bson::Document(d) => return parse_object(d),
            other => Node::Const(other.clone()),
        };
        fold(Expr { node })
    }

    /// Evaluates against `root` (`$$ROOT` and `$$CURRENT`). `Ok(None)` means "missing",
    /// which differs from null (for example `$project` drops a missing field).
    pub fn eval(&self, root: &Document, vars: &Variables) -> Result<Option<Bson>> {
        let cx = Cx { root, vars };
        cx.eval(self)
    }

    /// The dotted path when this expression is a plain `"$a.b"` field reference, which
    /// `$group` and `$sort`-like callers treat specially.
    pub fn as_field_path(&self) -> Option<String> {
        match &self.node {
            Node::Path(p) => Some(p.join(".")),
            _ => None,
        }
    }

    /// The value when this expression is a constant (no field or variable references at the
    /// top level).
    pub fn as_constant(&self) -> Option<&Bson> {
        match &self.node {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }
}

fn parse_object(d: &Document) -> Result<Expr> {
    let Some((first, _)) = d.iter().next() else {
        return Ok(Expr {
            node: Node::Object(Vec::new()),
        });
    };
    if first.starts_with('$') {
        if d.len() > 1 {
            return Err(loc(
                15983,
                format!(
                    "An object representing an expression must have exactly one field: {}",
                    show_obj(d)
                ),
            ));
        }
        let (op, arg) = d.iter().next().expect("one field");
        return parse_operator(op, arg);
    }
    let mut fields = Vec::with_capacity(d.len());
    for (k, v) in d {
        validate_field_name(k)?;
        fields.push((k.clone(), Expr::parse(v)?));
    }
    fold(Expr {
        node: Node::Object(fields),
    })
}

fn parse_args(arg: &Bson) -> Result<Vec<Expr>> {
    match arg {
        Bson::Array(items) => items.iter().map(Expr::parse).collect(),
        other => Ok(vec![Expr::parse(other)?]),
    }
}

fn parse_operator(op: &str, arg: &Bson) -> Result<Expr> {
    let node = match op {
        "$literal" | "$const" => Node::Const(arg.clone()),
        "$cond" if matches!(arg, Bson::Document(_)) => parse_cond_object(arg)?,
        "$switch" => parse_switch(arg)?,
        "$filter" => parse_filter(arg)?,
        "$map" => parse_map(arg)?,
        "$reduce" => parse_reduce(arg)?,
        "$let" => parse_let(arg)?,
        "$convert" => parse_convert(arg)?,
        "$dateToString" => parse_date_to_string(arg)?,
        "$getField" => parse_get_field(arg)?,
        "$setField" | "$unsetField" => parse_set_field(op, arg)?,
        "$sortArray" => parse_sort_array(arg)?,
        "$trim" | "$ltrim" | "$rtrim" => parse_trim(op, arg)?,
        "$replaceOne" | "$replaceAll" => parse_replace(op, arg)?,
        "$zip" => parse_zip(arg)?,
        _ if DATE_PART_OPS.contains(&op) => parse_date_part(op, arg)?,
        "$dateAdd" | "$dateSubtract" => parse_date_arith(op, arg)?,
        "$dateDiff" => parse_date_diff(arg)?,
        "$dateTrunc" => parse_date_trunc(arg)?,
        "$regexMatch" | "$regexFind" | "$regexFindAll" => parse_regex(op, arg)?,
        "$rand" => match arg {
            Bson::Document(d) if d.is_empty() => Node::Rand,
            Bson::Document(_) => {
                return Err(loc(3040501, "$rand does not currently accept arguments"));
            }
            _ => {
                return Err(loc(10065, "invalid parameter: expected an object ($rand)"));
            }
        },
        "$dateToParts" => parse_date_to_parts(arg)?,
        "$dateFromParts" => parse_date_from_parts(arg)?,
        "$toDecimal" => return Err(decimal_unsupported()),
        _ => {
            let Some((name, arity)) = arity_of(op) else {
                return Err(CommandError::new(
                    INVALID_PIPELINE_OPERATOR,
                    format!("Unrecognized expression '{op}'"),
                ));
            };
            let args = parse_args(arg)?;
            let n = args.len();
            let conversion_alias = matches!(
                name,
                "$toString"
                    | "$toInt"
                    | "$toLong"
                    | "$toDouble"
                    | "$toDate"
                    | "$toBool"
                    | "$toObjectId"
            );
            match arity {
                Arity::Exactly(1) if n != 1 && conversion_alias => {
                    return Err(loc(
                        50723,
                        format!("{name} requires a single argument, got {n}"),
                    ));
                }
                Arity::Exactly(k) if n != k => {
                    return Err(loc(
                        16020,
                        format!(
                            "Expression {name} takes exactly {k} arguments. {n} were passed in."
                        ),
                    ));
                }
                Arity::Range(lo, hi) if n < lo || n > hi => {
                    return Err(loc(
                        28667,
                        format!(
                            "Expression {name} takes at least {lo} arguments, and at most {hi}, but {n} were passed in."
                        ),
                    ));
                }
                _ => {}
            }
            if name == "$setEquals" && n < 2 {
                return Err(loc(
                    17045,
                    format!("$setEquals needs at least two arguments had: {n}"),
                ));
            }
            if name == "$ifNull" && n < 2 {
                return Err(loc(
                    1257300,
                    format!("$ifNull needs at least two arguments, had: {n}"),
                ));
            }
            Node::Op { op: name, args }
        }
    };
    fold(Expr { node })
}

fn is_const(e: &Expr) -> bool {
    matches!(e.node, Node::Const(_))
}

fn opt_const(e: &Option<Box<Expr>>) -> bool {
    e.as_deref().is_none_or(is_const)
}

/// Constant folding as mongod's `optimize()` does it right after parsing: an expression whose
/// operands are all constants is evaluated once, so its errors (`{$divide: [1, 0]}`) surface
/// before any document is read, even in a branch that would never be taken. A `$cond` with a
/// constant condition becomes the chosen branch; `$switch` drops constant cases.
fn fold(e: Expr) -> Result<Expr> {
    let node = match e.node {
        Node::Op {
            op: "$cond",
            mut args,
        } if is_const(&args[0]) => {
            let branch = if is_truthy(args[0].as_constant()) {
                1
            } else {
                2
            };
            return Ok(args.swap_remove(branch));
        }
        Node::Switch { branches, default } => return fold_switch(branches, default),
        other => other,
    };
    let foldable = match &node {
        Node::Op { args, .. } => args.iter().all(is_const),
        Node::Array(items) => items.iter().all(is_const),
        Node::Object(fields) => fields.iter().all(|(_, e)| is_const(e)),
        Node::Convert {
            input,
            to,
            on_error,
            on_null,
        } => is_const(input) && is_const(to) && opt_const(on_error) && opt_const(on_null),
        Node::DateToString {
            date,
            format,
            timezone,
            on_null,
        } => is_const(date) && opt_const(format) && opt_const(timezone) && opt_const(on_null),
        Node::DatePart { date, timezone, .. } => is_const(date) && opt_const(timezone),
        Node::DateArith {
            start,
            unit,
            amount,
            timezone,
            ..
        } => is_const(start) && is_const(unit) && is_const(amount) && opt_const(timezone),
        Node::DateToParts {
            date,
            timezone,
            iso8601,
        } => is_const(date) && opt_const(timezone) && opt_const(iso8601),
        Node::DateFromParts {
            parts, timezone, ..
        } => parts.iter().all(|(_, e)| is_const(e)) && opt_const(timezone),
        Node::DateTrunc {
            date,
            unit,
            bin_size,
            timezone,
            start_of_week,
        } => {
            is_const(date)
                && is_const(unit)
                && opt_const(bin_size)
                && opt_const(timezone)
                && opt_const(start_of_week)
        }
        Node::DateDiff {
            start,
            end,
            unit,
            timezone,
            start_of_week,
        } => {
            is_const(start)
                && is_const(end)
                && is_const(unit)
                && opt_const(timezone)
                && opt_const(start_of_week)
        }
        _ => false,
    };
    let e = Expr { node };
    if !foldable {
        return Ok(e);
    }
    match e.eval(&Document::new(), &Variables::default())? {
        Some(v) => Ok(Expr {
            node: Node::Const(v),
        }),
        // A constant missing value has no literal form; keep the expression.
        None => Ok(e),
    }
}

/// ExpressionSwitch::optimize: constant-false cases are dropped, a constant-true case becomes
/// the default and ends the branch list.
fn fold_switch(branches: Vec<(Expr, Expr)>, default: Option<Box<Expr>>) -> Result<Expr> {
    let mut kept = Vec::with_capacity(branches.len());
    let mut default = default;
    for (case, then) in branches {
        match case.as_constant() {
            Some(c) if is_truthy(Some(c)) => {
                default = Some(boxed(then));
                break;
            }
            Some(_) => {}
            None => kept.push((case, then)),
        }
    }
    if kept.is_empty() {
        return match default {
            Some(d) => Ok(*d),
            None => Err(loc(
                40069,
                "One cannot execute a switch statement where all the cases evaluate to false without a default.",
            )),
        };
    }
    Ok(Expr {
        node: Node::Switch {
            branches: kept,
            default,
        },
    })
}

fn parse_cond_object(arg: &Bson) -> Result<Node> {
    let d = object_arg(arg, 17083, "$cond requires an object")?;
    let (mut i, mut t, mut e) = (None, None, None);
    for (k, v) in d {
        let slot = match k.as_str() {
            "if" => &mut i,
            "then" => &mut t,
            "else" => &mut e,
            _ => return Err(loc(17083, format!("Unrecognized parameter to $cond: {k}"))),
        };
        *slot = Some(Expr::parse(v)?);
    }
    let i = i.ok_or_else(|| loc(17080, "Missing 'if' parameter to $cond"))?;
    let t = t.ok_or_else(|| loc(17081, "Missing 'then' parameter to $cond"))?;
    let e = e.ok_or_else(|| loc(17082, "Missing 'else' parameter to $cond"))?;
    Ok(Node::Op {
        op: "$cond",
        args: vec![i, t, e],
    })
}

fn parse_switch(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40060,
            format!(
                "$switch requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let mut branches = Vec::new();
    let mut default = None;
    for (k, v) in d {
        match k.as_str() {
            "branches" => {
                let Bson::Array(items) = v else {
                    return Err(loc(
                        40061,
                        format!(
                            "$switch expected an array for 'branches', found: {}",
                            type_name(v)
                        ),
                    ));
                };
                for b in items {
                    let Bson::Document(bd) = b else {
                        return Err(loc(
                            40062,
                            format!(
                                "$switch expected each branch to be an object, found: {}",
                                type_name(b)
                            ),
                        ));
                    };
                    let (mut case, mut then) = (None, None);
                    for (bk, bv) in bd {
                        match bk.as_str() {
                            "case" => case = Some(Expr::parse(bv)?),
                            "then" => then = Some(Expr::parse(bv)?),
                            _ => {
                                return Err(loc(
                                    40063,
                                    format!("$switch found an unknown argument to a branch: {bk}"),
                                ));
                            }
                        }
                    }
                    let case = case.ok_or_else(|| {
                        loc(
                            40064,
                            "$switch requires each branch have a 'case' expression",
                        )
                    })?;
                    let then = then.ok_or_else(|| {
                        loc(
                            40065,
                            "$switch requires each branch have a 'then' expression.",
                        )
                    })?;
                    branches.push((case, then));
                }
            }
            "default" => default = Some(boxed(Expr::parse(v)?)),
            _ => {
                return Err(loc(
                    40067,
                    format!("$switch found an unknown argument: {k}"),
                ));
            }
        }
    }
    if branches.is_empty() {
        return Err(loc(40068, "$switch requires at least one branch."));
    }
    Ok(Node::Switch { branches, default })
}

/// `as` of `$map`/`$filter`; mongod reads a non-string as the empty name.
fn parse_as(v: &Bson) -> Result<String> {
    let name = match v {
        Bson::String(s) => s.as_str(),
        _ => "",
    };
    validate_user_var_name(name)?;
    Ok(name.to_string())
}

fn parse_filter(arg: &Bson) -> Result<Node> {
    let d = object_arg(
        arg,
        28646,
        "$filter only supports an object as its argument",
    )?;
    let (mut input, mut var, mut cond, mut limit) = (None, None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "as" => var = Some(parse_as(v)?),
            "cond" => cond = Some(Expr::parse(v)?),
            "limit" => limit = Some(boxed(Expr::parse(v)?)),
            _ => {
                return Err(loc(
                    28647,
                    format!("Unrecognized parameter to $filter: {k}"),
                ));
            }
        }
    }
    let input = input.ok_or_else(|| loc(28648, "Missing 'input' parameter to $filter"))?;
    let cond = cond.ok_or_else(|| loc(28650, "Missing 'cond' parameter to $filter"))?;
    Ok(Node::Filter {
        input: boxed(input),
        var: var.unwrap_or_else(|| "this".to_string()),
        cond: boxed(cond),
        limit,
    })
}

fn parse_map(arg: &Bson) -> Result<Node> {
    let d = object_arg(arg, 16878, "$map only supports an object as its argument")?;
    let (mut input, mut var, mut body) = (None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "as" => var = Some(parse_as(v)?),
            "in" => body = Some(Expr::parse(v)?),
            _ => return Err(loc(16879, format!("Unrecognized parameter to $map: {k}"))),
        }
    }
    let input = input.ok_or_else(|| loc(16880, "Missing 'input' parameter to $map"))?;
    let body = body.ok_or_else(|| loc(16882, "Missing 'in' parameter to $map"))?;
    Ok(Node::Map {
        input: boxed(input),
        var: var.unwrap_or_else(|| "this".to_string()),
        body: boxed(body),
    })
}

fn parse_reduce(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40075,
            format!(
                "$reduce requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut initial, mut body) = (None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "initialValue" => initial = Some(Expr::parse(v)?),
            "in" => body = Some(Expr::parse(v)?),
            _ => {
                return Err(loc(
                    40076,
                    format!("$reduce found an unknown argument: {k}"),
                ));
            }
        }
    }
    let input = input.ok_or_else(|| loc(40077, "$reduce requires 'input' to be specified"))?;
    let initial =
        initial.ok_or_else(|| loc(40078, "$reduce requires 'initialValue' to be specified"))?;
    let body = body.ok_or_else(|| loc(40079, "$reduce requires 'in' to be specified"))?;
    Ok(Node::Reduce {
        input: boxed(input),
        initial: boxed(initial),
        body: boxed(body),
    })
}

fn parse_let(arg: &Bson) -> Result<Node> {
    let d = object_arg(arg, 16874, "$let only supports an object as its argument")?;
    let (mut vars, mut body) = (None, None);
    for (k, v) in d {
        match k.as_str() {
            "vars" => {
                let Bson::Document(vd) = v else {
                    return Err(loc(
                        10065,
                        format!(
                            "invalid parameter: expected an object (vars), found: {}",
                            type_name(v)
                        ),
                    ));
                };
                let mut bound = Vec::new();
                for (name, e) in vd {
                    validate_user_var_name(name)?;
                    bound.push((name.clone(), Expr::parse(e)?));
                }
                vars = Some(bound);
            }
            "in" => body = Some(Expr::parse(v)?),
            _ => return Err(loc(16875, format!("Unrecognized parameter to $let: {k}"))),
        }
    }
    let vars = vars.ok_or_else(|| loc(16876, "Missing 'vars' parameter to $let"))?;
    let body = body.ok_or_else(|| loc(16877, "Missing 'in' parameter to $let"))?;
    Ok(Node::Let {
        vars,
        body: boxed(body),
    })
}

fn parse_convert(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(CommandError::failed_to_parse(format!(
            "$convert expects an object of named arguments but found: {}",
            type_name(arg)
        )));
    };
    let (mut input, mut to, mut on_error, mut on_null) = (None, None, None, None);
    for (k, v) in d {
        let e = Expr::parse(v)?;
        match k.as_str() {
            "input" => input = Some(boxed(e)),
            "to" => to = Some(boxed(e)),
            "onError" => on_error = Some(boxed(e)),
            "onNull" => on_null = Some(boxed(e)),
            _ => {
                return Err(CommandError::failed_to_parse(format!(
                    "$convert found an unknown argument: {k}"
                )));
            }
        }
    }
    let input = input
        .ok_or_else(|| CommandError::failed_to_parse("Missing 'input' parameter to $convert"))?;
    let to =
        to.ok_or_else(|| CommandError::failed_to_parse("Missing 'to' parameter to $convert"))?;
    if let Some(c) = to.as_constant()
        && !is_nullish(Some(c))
        && matches!(target_type(c)?, Target::Decimal)
    {
        return Err(decimal_unsupported());
    }
    Ok(Node::Convert {
        input,
        to,
        on_error,
        on_null,
    })
}

fn parse_date_to_string(arg: &Bson) -> Result<Node> {
    let d = object_arg(
        arg,
        18629,
        "$dateToString only supports an object as its argument",
    )?;
    let (mut date, mut format, mut timezone, mut on_null) = (None, None, None, None);
    for (k, v) in d {
        let e = boxed(Expr::parse(v)?);
        match k.as_str() {
            "date" => date = Some(e),
            "format" => format = Some(e),
            "timezone" => timezone = Some(e),
            "onNull" => on_null = Some(e),
            _ => {
                return Err(loc(
                    18534,
                    format!("Unrecognized argument to $dateToString: {k}"),
                ));
            }
        }
    }
    let date = date.ok_or_else(|| loc(18628, "Missing 'date' parameter to $dateToString"))?;
    Ok(Node::DateToString {
        date,
        format,
        timezone,
        on_null,
    })
}

fn current() -> Expr {
    Expr {
        node: Node::Var {
            name: "CURRENT".to_string(),
            path: Vec::new(),
        },
    }
}

/// ExpressionGetField::parse: a bare value (or an object whose first key is an operator) is
/// the field name with `$$CURRENT` as input; otherwise `{field, input}`, both required.
fn parse_get_field(arg: &Bson) -> Result<Node> {
    let (field, input) = match arg {
        Bson::Document(d) if d.keys().next().is_some_and(|k| !k.starts_with('$')) => {
            let (mut field, mut input) = (None, None);
            for (k, v) in d {
                match k.as_str() {
                    "field" => field = Some(v),
                    "input" => input = Some(Expr::parse(v)?),
                    _ => {
                        return Err(loc(
                            3041701,
                            format!("$getField found an unknown argument: {k}"),
                        ));
                    }
                }
            }
            let field =
                field.ok_or_else(|| loc(3041702, "$getField requires 'field' to be specified"))?;
            let input =
                input.ok_or_else(|| loc(3041703, "$getField requires 'input' to be specified"))?;
            (field, input)
        }
        other => (other, current()),
    };
    let field = constant_field_name(field, "$getField", [5654600, 5654601, 5654602])?;
    Ok(Node::GetField {
        field,
        input: boxed(input),
    })
}

/// The `field` of `$getField`/`$setField`: it must be a constant string at parse time, that
/// is a plain string or `$literal`/`$const` (checked before any constant folding, as mongod
/// checks the freshly parsed expression). `codes`: field path, non-constant, non-string.
fn constant_field_name(v: &Bson, op: &str, codes: [i32; 3]) -> Result<String> {
    let value = match v {
        Bson::String(s) if s.starts_with('$') => {
            let e = Expr::parse(v)?;
            let fp = match &e.node {
                Node::Path(p) => format!("${}", p.join(".")),
                _ => s.clone(),
            };
            if matches!(e.node, Node::Path(_)) || s.starts_with("$$") {
                return Err(loc(
                    codes[0],
                    format!(
                        "'{fp}' is a field path reference which is not allowed in this context. Did you mean {{$literal: '{fp}'}}?"
                    ),
                ));
            }
            v
        }
        Bson::Document(d)
            if d.len() == 1 && (d.contains_key("$literal") || d.contains_key("$const")) =>
        {
            d.values().next().unwrap_or(&Bson::Null)
        }
        Bson::Document(_) | Bson::Array(_) => {
            Expr::parse(v)?;
            return Err(loc(
                codes[1],
                format!(
                    "{op} requires 'field' to evaluate to a constant, but got a non-constant argument"
                ),
            ));
        }
        other => other,
    };
    match value {
        Bson::String(s) => Ok(s.clone()),
        other => Err(loc(
            codes[2],
            format!(
                "{op} requires 'field' to evaluate to type String, but got {}",
                type_name(other)
            ),
        )),
    }
}

/// ExpressionSetField::parse, also for `$unsetField` (whose value is `$$REMOVE`).
fn parse_set_field(op: &str, arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            4161100,
            format!("{op} only supports an object as its argument"),
        ));
    };
    let unset = op == "$unsetField";
    let (mut field, mut input, mut value) = (None, None, None);
    for (k, v) in d {
        match k.as_str() {
            "field" => field = Some(v),
            "input" => input = Some(Expr::parse(v)?),
            "value" if !unset => value = Some(Expr::parse(v)?),
            _ => return Err(loc(4161101, format!("{op} found an unknown argument: {k}"))),
        }
    }
    if unset {
        value = Some(Expr {
            node: Node::Var {
                name: "REMOVE".to_string(),
                path: Vec::new(),
            },
        });
    }
    let field =
        field.ok_or_else(|| loc(4161102, format!("{op} requires 'field' to be specified")))?;
    let value =
        value.ok_or_else(|| loc(4161103, format!("{op} requires 'value' to be specified")))?;
    let input =
        input.ok_or_else(|| loc(4161109, format!("{op} requires 'input' to be specified")))?;
    let field = constant_field_name(field, op, [4161108, 4161106, 4161107])?;
    Ok(Node::SetField {
        field,
        input: boxed(input),
        value: boxed(value),
    })
}

/// A `sortBy` direction: 1 or -1 (as a number of any type). `in_pattern` selects the
/// error mongod gives for a bad value inside a `{field: dir}` pattern.
fn sort_direction(v: &Bson, in_pattern: bool) -> Result<bool> {
    match Num::of(v)?.map(Num::f64) {
        Some(1.0) => Ok(true),
        Some(-1.0) => Ok(false),
        _ if in_pattern => Err(loc(
            2942505,
            "BadValue: The $sort element value must be either 1 or -1",
        )),
        Some(_) => Err(loc(
            2942506,
            "The $sort element value must be either 1 or -1",
        )),
        None => Err(loc(
            2942507,
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        )),
    }
}

fn parse_sort_array(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            2942500,
            format!(
                "$sortArray requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut sort_by) = (None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(Expr::parse(v)?),
            "sortBy" => {
                sort_by = Some(match v {
                    Bson::Document(spec) => {
                        if spec.is_empty() {
                            return Err(loc(
                                2942505,
                                "BadValue: $sort stage must have at least one sort key",
                            ));
                        }
                        let mut fields = Vec::new();
                        for (f, dir) in spec {
                            for part in f.split('.') {
                                validate_field_name(part)?;
                            }
                            fields.push((f.clone(), sort_direction(dir, true)?));
                        }
                        SortBy::Fields(fields)
                    }
                    other => SortBy::Value(sort_direction(other, false)?),
                })
            }
            _ => {
                return Err(loc(
                    2942501,
                    format!("$sortArray found an unknown argument: {k}"),
                ));
            }
        }
    }
    let input = input.ok_or_else(|| loc(2942502, "$sortArray requires 'input' to be specified"))?;
    let sort_by =
        sort_by.ok_or_else(|| loc(2942503, "$sortArray requires 'sortBy' to be specified"))?;
    Ok(Node::SortArray {
        input: boxed(input),
        sort_by,
    })
}

/// DateExpressionAcceptingTimeZone::parse: `<date>`, `[<date>]`, an operator object, or
/// `{date, timezone}`.
fn parse_date_part(op: &str, arg: &Bson) -> Result<Node> {
    let op = DATE_PART_OPS
        .iter()
        .copied()
        .find(|o| *o == op)
        .unwrap_or("$year");
    let (date, timezone) = match arg {
        Bson::Document(d) if d.keys().next().is_some_and(|k| !k.starts_with('$')) => {
            let (mut date, mut timezone) = (None, None);
            for (k, v) in d {
                match k.as_str() {
                    "date" => date = Some(Expr::parse(v)?),
                    "timezone" => timezone = Some(boxed(Expr::parse(v)?)),
                    _ => {
                        return Err(loc(40535, format!("unrecognized option to {op}: \"{k}\"")));
                    }
                }
            }
            let date = date.ok_or_else(|| {
                loc(
                    40539,
                    format!(
                        "missing 'date' argument to {op}, provided: {op}: {}",
                        show_obj(d)
                    ),
                )
            })?;
            (date, timezone)
        }
        Bson::Array(items) => {
            if items.len() != 1 {
                return Err(loc(
                    40536,
                    format!(
                        "{op} accepts exactly one argument if given an array, but was given {}",
                        items.len()
                    ),
                ));
            }
            (Expr::parse(&items[0])?, None)
        }
        other => (Expr::parse(other)?, None),
    };
    Ok(Node::DatePart {
        op,
        date: boxed(date),
        timezone,
    })
}

const DATE_FROM_PARTS_FIELDS: &[&str] = &[
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
    "isoWeekYear",
    "isoWeek",
    "isoDayOfWeek",
];

fn parse_date_from_parts(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40519,
            "$dateFromParts only supports an object as its argument",
        ));
    };
    let mut given: Vec<(&'static str, Expr)> = Vec::new();
    let mut timezone = None;
    for (k, v) in d {
        if k == "timezone" {
            timezone = Some(boxed(Expr::parse(v)?));
            continue;
        }
        let Some(name) = DATE_FROM_PARTS_FIELDS.iter().copied().find(|f| f == k) else {
            return Err(loc(
                40518,
                format!("Unrecognized argument to $dateFromParts: {k}"),
            ));
        };
        given.retain(|(n, _)| *n != name);
        given.push((name, Expr::parse(v)?));
    }
    let has = |n: &str| given.iter().any(|(g, _)| *g == n);
    if !has("year") && !has("isoWeekYear") {
        return Err(loc(
            40516,
            "$dateFromParts requires either 'year' or 'isoWeekYear' to be present",
        ));
    }
    if has("year") && (has("isoWeekYear") || has("isoWeek") || has("isoDayOfWeek")) {
        return Err(loc(
            40489,
            "$dateFromParts does not allow mixing natural dates with ISO dates",
        ));
    }
    if has("isoWeekYear") && (has("year") || has("month") || has("day")) {
        return Err(loc(
            40525,
            "$dateFromParts does not allow mixing ISO dates with natural dates",
        ));
    }
    let iso = has("isoWeekYear");
    // Evaluation order: time parts first, then the date parts.
    let order: &[&str] = if iso {
        &[
            "hour",
            "minute",
            "second",
            "millisecond",
            "isoWeekYear",
            "isoWeek",
            "isoDayOfWeek",
        ]
    } else {
        &[
            "hour",
            "minute",
            "second",
            "millisecond",
            "year",
            "month",
            "day",
        ]
    };
    let mut parts = Vec::new();
    for name in order {
        if let Some(pos) = given.iter().position(|(n, _)| n == name) {
            parts.push(given.remove(pos));
        }
    }
    Ok(Node::DateFromParts {
        parts,
        iso,
        timezone,
    })
}

fn parse_date_to_parts(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            40524,
            "$dateToParts only supports an object as its argument",
        ));
    };
    let (mut date, mut timezone, mut iso8601) = (None, None, None);
    for (k, v) in d {
        let e = Some(boxed(Expr::parse(v)?));
        match k.as_str() {
            "date" => date = e,
            "timezone" => timezone = e,
            "iso8601" => iso8601 = e,
            _ => {
                return Err(loc(
                    40520,
                    format!("Unrecognized argument to $dateToParts: {k}"),
                ));
            }
        }
    }
    let date = date.ok_or_else(|| loc(40522, "Missing 'date' parameter to $dateToParts"))?;
    Ok(Node::DateToParts {
        date,
        timezone,
        iso8601,
    })
}

/// CommonRegexParse.
fn parse_regex(op: &str, arg: &Bson) -> Result<Node> {
    let op = match op {
        "$regexFind" => "$regexFind",
        "$regexFindAll" => "$regexFindAll",
        _ => "$regexMatch",
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            51103,
            format!(
                "{op} expects an object of named arguments but found: {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut regex, mut options) = (None, None, None);
    for (k, v) in d {
        let e = Some(boxed(Expr::parse(v)?));
        match k.as_str() {
            "input" => input = e,
            "regex" => regex = e,
            "options" => options = e,
            _ => return Err(loc(31024, format!("{op} found an unknown argument: {k}"))),
        }
    }
    let input = input.ok_or_else(|| loc(31022, format!("{op} requires 'input' parameter")))?;
    let regex = regex.ok_or_else(|| loc(31023, format!("{op} requires 'regex' parameter")))?;
    // A constant pattern is compiled (and rejected) up front, as ExpressionRegex::optimize does.
    let constant_options = match &options {
        None => Some(&Bson::Null),
        Some(o) => o.as_constant(),
    };
    if let (Some(p), Some(o)) = (regex.as_constant(), constant_options) {
        compile_regex(op, p, o)?;
    }
    Ok(Node::Regex {
        op,
        input,
        regex,
        options,
    })
}

/// extractRegexAndOptions + compile: `None` when the pattern is nullish. Patterns the regex
/// engine here cannot express (look-around, back-references) fail with 115 rather than being
/// matched differently.
fn compile_regex(op: &str, pattern: &Bson, options: &Bson) -> Result<Option<regex::Regex>> {
    let nullish = |v: &Bson| matches!(v, Bson::Null | Bson::Undefined);
    if !(nullish(pattern) || matches!(pattern, Bson::String(_) | Bson::RegularExpression(_))) {
        return Err(loc(
            51105,
            format!("{op} needs 'regex' to be of type string or regex"),
        ));
    }
    if !(nullish(options) || matches!(options, Bson::String(_))) {
        return Err(loc(
            51106,
            format!("{op} needs 'options' to be of type string"),
        ));
    }
    let (text, mut flags) = match pattern {
        Bson::RegularExpression(r) => {
            if !nullish(options) && !r.options.is_empty() {
                return Err(loc(
                    51107,
                    format!(
                        "{op}: found regex option(s) specified in both 'regex' and 'option' fields"
                    ),
                ));
            }
            (Some(r.pattern.clone()), r.options.clone())
        }
        Bson::String(p) => (Some(p.clone()), String::new()),
        _ => (None, String::new()),
    };
    if let Bson::String(o) = options {
        flags = o.clone();
    }
    if text.as_ref().is_some_and(|t| t.contains('\0')) {
        return Err(loc(
            51109,
            format!("{op}: regular expression cannot contain an embedded null byte"),
        ));
    }
    if flags.contains('\0') {
        return Err(loc(
            51110,
            format!("{op}: regular expression options cannot contain an embedded null byte"),
        ));
    }
    let Some(text) = text else {
        return Ok(None);
    };
    let mut builder = regex::RegexBuilder::new(&text);
    for flag in flags.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.multi_line(true),
            's' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            'u' => &mut builder,
            other => {
                return Err(loc(
                    51108,
                    format!("{op} invalid flag in regex options: {other}"),
                ));
            }
        };
    }
    match builder.build() {
        Ok(re) => Ok(Some(re)),
        Err(e) if e.to_string().contains("not supported") => Err(CommandError::not_supported(
            format!("{op}: this server cannot evaluate the regular expression: {e}"),
        )),
        Err(e) => Err(loc(51111, format!("Invalid Regex in {op}: {e}"))),
    }
}

/// One `$regexFind` result: the match, its code-point index and the captures (null when a
/// group did not participate).
fn regex_match_doc(input: &str, caps: &regex::Captures) -> Bson {
    let whole = caps.get(0).map_or("", |m| m.as_str());
    let start = caps.get(0).map_or(0, |m| m.start());
    let idx = input[..start].chars().count() as i32;
    let captures: Vec<Bson> = caps
        .iter()
        .skip(1)
        .map(|c| c.map_or(Bson::Null, |m| Bson::String(m.as_str().to_string())))
        .collect();
    Bson::Document(bson::doc! {"match": whole, "idx": idx, "captures": captures})
}

fn parse_date_trunc(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            5439007,
            "$dateTrunc only supports an object as its argument",
        ));
    };
    let (mut date, mut unit, mut bin_size, mut timezone, mut start_of_week) =
        (None, None, None, None, None);
    for (k, v) in d {
        let e = Some(boxed(Expr::parse(v)?));
        match k.as_str() {
            "date" => date = e,
            "unit" => unit = e,
            "binSize" => bin_size = e,
            "timezone" => timezone = e,
            "startOfWeek" => start_of_week = e,
            _ => {
                return Err(loc(
                    5439008,
                    format!(
                        "Unrecognized argument to $dateTrunc: {k}. Expected arguments are date, unit, and optionally, binSize, timezone, startOfWeek"
                    ),
                ));
            }
        }
    }
    let date = date.ok_or_else(|| loc(5439009, "Missing 'date' parameter to $dateTrunc"))?;
    let unit = unit.ok_or_else(|| loc(5439010, "Missing 'unit' parameter to $dateTrunc"))?;
    Ok(Node::DateTrunc {
        date,
        unit,
        bin_size,
        timezone,
        start_of_week,
    })
}

/// addContextToAssertionException for the timezone argument of `$dateDiff`/`$dateTrunc`.
fn zone_context(op: &str, mut e: CommandError) -> CommandError {
    e.errmsg = format!(
        "{op} parameter 'timezone' value parsing failed :: caused by :: {}",
        e.errmsg
    );
    e
}

fn parse_date_diff(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            5166301,
            "$dateDiff only supports an object as its argument",
        ));
    };
    let (mut start, mut end, mut unit, mut timezone, mut start_of_week) =
        (None, None, None, None, None);
    for (k, v) in d {
        let e = Some(boxed(Expr::parse(v)?));
        match k.as_str() {
            "startDate" => start = e,
            "endDate" => end = e,
            "unit" => unit = e,
            "timezone" => timezone = e,
            "startOfWeek" => start_of_week = e,
            _ => {
                return Err(loc(
                    5166302,
                    format!("Unrecognized argument to $dateDiff: {k}"),
                ));
            }
        }
    }
    let start = start.ok_or_else(|| loc(5166303, "Missing 'startDate' parameter to $dateDiff"))?;
    let end = end.ok_or_else(|| loc(5166304, "Missing 'endDate' parameter to $dateDiff"))?;
    let unit = unit.ok_or_else(|| loc(5166305, "Missing 'unit' parameter to $dateDiff"))?;
    Ok(Node::DateDiff {
        start,
        end,
        unit,
        timezone,
        start_of_week,
    })
}

/// commonDateArithmeticsParse.
fn parse_date_arith(op: &str, arg: &Bson) -> Result<Node> {
    let op = if op == "$dateAdd" {
        "$dateAdd"
    } else {
        "$dateSubtract"
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            5166400,
            format!("{op} expects an object as its argument"),
        ));
    };
    let (mut start, mut unit, mut amount, mut timezone) = (None, None, None, None);
    for (k, v) in d {
        let e = Some(boxed(Expr::parse(v)?));
        match k.as_str() {
            "startDate" => start = e,
            "unit" => unit = e,
            "amount" => amount = e,
            "timezone" => timezone = e,
            _ => {
                return Err(loc(
                    5166401,
                    format!(
                        "Unrecognized argument to {op}: {k}. Expected arguments are startDate, unit, amount, and optionally timezone."
                    ),
                ));
            }
        }
    }
    let (Some(start), Some(unit), Some(amount)) = (start, unit, amount) else {
        return Err(loc(
            5166402,
            format!("{op} requires startDate, unit, and amount to be present"),
        ));
    };
    Ok(Node::DateArith {
        op,
        start,
        unit,
        amount,
        timezone,
    })
}

fn parse_trim(op: &str, arg: &Bson) -> Result<Node> {
    let op = match op {
        "$ltrim" => "$ltrim",
        "$rtrim" => "$rtrim",
        _ => "$trim",
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            50696,
            format!(
                "{op} only supports an object as an argument, found {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut chars) = (None, None);
    for (k, v) in d {
        match k.as_str() {
            "input" => input = Some(boxed(Expr::parse(v)?)),
            "chars" => chars = Some(boxed(Expr::parse(v)?)),
            _ => return Err(loc(50694, format!("{op} found an unknown argument: {k}"))),
        }
    }
    let input = input.ok_or_else(|| loc(50695, format!("{op} requires an 'input' field")))?;
    Ok(Node::Trim { op, input, chars })
}

fn parse_replace(op: &str, arg: &Bson) -> Result<Node> {
    let op = if op == "$replaceAll" {
        "$replaceAll"
    } else {
        "$replaceOne"
    };
    let Bson::Document(d) = arg else {
        return Err(loc(
            51751,
            format!(
                "{op} requires an object as an argument, found: {}",
                type_name(arg)
            ),
        ));
    };
    let (mut input, mut find, mut replacement) = (None, None, None);
    for (k, v) in d {
        let e = Some(boxed(Expr::parse(v)?));
        match k.as_str() {
            "input" => input = e,
            "find" => find = e,
            "replacement" => replacement = e,
            _ => return Err(loc(51750, format!("{op} found an unknown argument: {k}"))),
        }
    }
    let input =
        input.ok_or_else(|| loc(51749, format!("{op} requires 'input' to be specified")))?;
    let find = find.ok_or_else(|| loc(51748, format!("{op} requires 'find' to be specified")))?;
    let replacement = replacement.ok_or_else(|| {
        loc(
            51747,
            format!("{op} requires 'replacement' to be specified"),
        )
    })?;
    Ok(Node::Replace {
        op,
        input,
        find,
        replacement,
    })
}

fn parse_zip(arg: &Bson) -> Result<Node> {
    let Bson::Document(d) = arg else {
        return Err(loc(
            34460,
            format!(
                "$zip only supports an object as an argument, found {}",
                type_name(arg)
            ),
        ));
    };
    let (mut inputs, mut defaults, mut longest) = (Vec::new(), Vec::new(), false);
    for (k, v) in d {
        match k.as_str() {
            "inputs" => {
                let Bson::Array(items) = v else {
                    return Err(loc(
                        34461,
                        format!(
                            "inputs must be an array of expressions, found {}",
                            type_name(v)
                        ),
                    ));
                };
                inputs = items.iter().map(Expr::parse).collect::<Result<_>>()?;
            }
            "defaults" => {
                let Bson::Array(items) = v else {
                    return Err(loc(
                        34462,
                        format!(
                            "defaults must be an array of expressions, found {}",
                            type_name(v)
                        ),
                    ));
                };
                defaults = items.iter().map(Expr::parse).collect::<Result<_>>()?;
            }
            "useLongestLength" => {
                // mongod names the type of the whole argument here, which is always object.
                let Bson::Boolean(b) = v else {
                    return Err(loc(34463, "useLongestLength must be a bool, found object"));
                };
                longest = *b;
            }
            _ => return Err(loc(34464, format!("$zip found an unknown argument: {k}"))),
        }
    }
    if inputs.is_empty() {
        return Err(loc(34465, "$zip requires at least one input array"));
    }
    if !longest && !defaults.is_empty() {
        return Err(loc(
            34466,
            "cannot specify defaults unless useLongestLength is true",
        ));
    }
    if !defaults.is_empty() && defaults.len() != inputs.len() {
        return Err(loc(34467, "defaults and inputs must have the same length"));
    }
    Ok(Node::Zip {
        inputs,
        defaults,
        longest,
    })
}

/// The whitespace `$trim` removes by default (ExpressionTrim's kDefaultTrimWhitespaceChars).
const TRIM_WHITESPACE: &[char] = &[
    '\0', ' ', '\t', '\n', '\u{0B}', '\u{0C}', '\r', '\u{A0}', '\u{1680}', '\u{2000}', '\u{2001}',
    '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}',
    '\u{200A}',
];

/// Evaluation context: `$$ROOT` plus the variables in scope (`CURRENT` may be rebound).
struct Cx<'a> {
    root: &'a Document,
    vars: &'a Variables,
}

/// mongod's `ExpressionFieldPath::evaluatePath`: a path through an array of documents yields
/// the array of the values found (non-documents and missing values are skipped).
fn walk_path(v: &Bson, path: &[String]) -> Option<Bson> {
    let Some((head, rest)) = path.split_first() else {
        return Some(v.clone());
    };
    match v {
        Bson::Document(d) => walk_path(d.get(head)?, rest),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter(|i| matches!(i, Bson::Document(_)))
                .filter_map(|i| walk_path(i, path))
                .collect(),
        )),
        _ => None,
    }
}

fn walk_doc(d: &Document, path: &[String]) -> Option<Bson> {
    let (head, rest) = path.split_first()?;
    walk_path(d.get(head)?, rest)
}

impl Cx<'_> {
    fn with_vars<'b>(&self, vars: &'b Variables) -> Cx<'b>
    where
        Self: 'b,
    {
        Cx {
            root: self.root,
            vars,
        }
    }

    fn eval(&self, e: &Expr) -> Result<Option<Bson>> {
        match &e.node {
            Node::Const(v) => Ok(Some(v.clone())),
            Node::Path(path) => Ok(match self.vars.lookup("CURRENT") {
                Some(Some(current)) => walk_path(current, path),
                Some(None) => None,
                None => walk_doc(self.root, path),
            }),
            Node::Var { name, path } => {
                let value = match name.as_str() {
                    "ROOT" if !path.is_empty() => return Ok(walk_doc(self.root, path)),
                    "ROOT" => return Ok(Some(Bson::Document(self.root.clone()))),
                    "REMOVE" => return Ok(None),
                    "JS_SCOPE" => {
                        return Err(loc(4631100, "Use of undefined variable '$$JS_SCOPE'."));
                    }
                    "IS_MR" => return Err(loc(4631101, "Use of undefined variable '$$IS_MR'.")),
                    _ => match self.vars.lookup(name) {
                        Some(Some(v)) => v,
                        Some(None) => return Ok(None),
                        None if name == "NOW" || name == "CLUSTER_TIME" => {
                            return Err(loc(
                                51144,
                                format!("Builtin variable '$${name}' is not available"),
                            ));
                        }
                        None if name == "CURRENT" => {
                            return Ok(if path.is_empty() {
                                Some(Bson::Document(self.root.clone()))
                            } else {
                                walk_doc(self.root, path)
                            });
                        }
                        None => {
                            return Err(loc(17276, format!("Use of undefined variable: {name}")));
                        }
                    },
                };
                Ok(walk_path(value, path))
            }
            Node::Object(fields) => {
                let mut out = Document::new();
                for (k, fe) in fields {
                    if let Some(v) = self.eval(fe)? {
                        out.insert(k.clone(), v);
                    }
                }
                Ok(Some(Bson::Document(out)))
            }
            Node::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    out.push(self.eval(i)?.unwrap_or(Bson::Null));
                }
                Ok(Some(Bson::Array(out)))
            }
            Node::Op { op, args } => self.eval_op(op, args),
            Node::Switch { branches, default } => {
                for (case, then) in branches {
                    if is_truthy(self.eval(case)?.as_ref()) {
                        return self.eval(then);
                    }
                }
                match default {
                    Some(d) => self.eval(d),
                    None => Err(loc(
                        40066,
                        "$switch could not find a matching branch for an input, and no default was specified.",
                    )),
                }
            }
            Node::Filter {
                input,
                var,
                cond,
                limit,
            } => {
                let items = match self.eval(input)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {
                        return Ok(Some(Bson::Null));
                    }
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return Err(loc(
                            28651,
                            format!(
                                "input to $filter must be an array not {}",
                                type_name(&other)
                            ),
                        ));
                    }
                };
                if items.is_empty() {
                    return Ok(Some(Bson::Array(items)));
                }
                // The limit is only evaluated for a non-empty input, as in mongod.
                let limit = match limit {
                    Some(l) => self.filter_limit(l)?,
                    None => None,
                };
                let mut scope = self.vars.clone();
                let mut out = Vec::new();
                for item in items {
                    if limit.is_some_and(|l| out.len() >= l) {
                        break;
                    }
                    scope.set(var.clone(), item.clone());
                    if is_truthy(self.with_vars(&scope).eval(cond)?.as_ref()) {
                        out.push(item);
                    }
                }
                Ok(Some(Bson::Array(out)))
            }
            Node::Map { input, var, body } => {
                let items = match self.eval(input)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {
                        return Ok(Some(Bson::Null));
                    }
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return Err(loc(
                            16883,
                            format!("input to $map must be an array not {}", type_name(&other)),
                        ));
                    }
                };
                let mut scope = self.vars.clone();
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    scope.set(var.clone(), item);
                    out.push(self.with_vars(&scope).eval(body)?.unwrap_or(Bson::Null));
                }
                Ok(Some(Bson::Array(out)))
            }
            Node::Reduce {
                input,
                initial,
                body,
            } => {
                let items = match self.eval(input)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {
                        return Ok(Some(Bson::Null));
                    }
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return Err(loc(
                            40080,
                            format!(
                                "$reduce requires that 'input' be an array, found: {}",
                                show(&other)
                            ),
                        ));
                    }
                };
                let mut acc = self.eval(initial)?;
                let mut scope = self.vars.clone();
                for item in items {
                    scope.set("this", item);
                    scope.bind("value", acc);
                    acc = self.with_vars(&scope).eval(body)?;
                }
                Ok(acc)
            }
            Node::Let { vars, body } => {
                let mut scope = self.vars.clone();
                for (name, ve) in vars {
                    // Every binding sees the outer scope only, as in mongod.
                    let v = self.eval(ve)?;
                    scope.bind(name, v);
                }
                self.with_vars(&scope).eval(body)
            }
            Node::Convert {
                input,
                to,
                on_error,
                on_null,
            } => {
                // ExpressionConvert::evaluate: a bad 'to' fails even for a null input, and a
                // null input wins over a null 'to'.
                let to = self.eval(to)?;
                let value = self.eval(input)?;
                let target = match &to {
                    Some(t) if !is_nullish(Some(t)) => Some(target_type(t)?),
                    _ => None,
                };
                if is_nullish(value.as_ref()) {
                    return match on_null {
                        Some(e) => self.eval(e),
                        None => Ok(Some(Bson::Null)),
                    };
                }
                let Some(target) = target else {
                    return Ok(Some(Bson::Null));
                };
                let value = value.unwrap_or(Bson::Null);
                match convert(&value, target) {
                    Ok(v) => Ok(Some(v)),
                    Err(ConvertError::Failure(msg)) => match on_error {
                        Some(e) => self.eval(e),
                        None => Err(CommandError::new(
                            CONVERSION_FAILURE,
                            conversion_message(&msg),
                        )),
                    },
                    Err(ConvertError::Other(e)) => Err(e),
                }
            }
            Node::DateToString {
                date,
                format,
                timezone,
                on_null,
            } => {
                // Order of checks as in mongod's ExpressionDateToString::evaluate: a bad
                // format or timezone fails even for a null date; a null date wins over a null
                // format or timezone.
                let date = self.eval(date)?;
                let format = match format {
                    Some(f) => match self.eval(f)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => Some(None),
                        Some(Bson::String(s)) => {
                            validate_date_format(&s)?;
                            Some(Some(s))
                        }
                        Some(other) => {
                            return Err(loc(
                                18533,
                                format!(
                                    "$dateToString requires that 'format' be a string, found: {} with value {}",
                                    type_name(&other),
                                    show(&other)
                                ),
                            ));
                        }
                    },
                    None => None,
                };
                let offset = match timezone {
                    Some(t) => match self.eval(t)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => None,
                        Some(Bson::String(s)) => Some((resolve_timezone(&s)?, s)),
                        Some(other) => {
                            return Err(loc(
                                40517,
                                format!(
                                    "timezone must evaluate to a string, found {}",
                                    type_name(&other)
                                ),
                            ));
                        }
                    },
                    None => Some((Some(0), String::new())),
                };
                if is_nullish(date.as_ref()) {
                    return match on_null {
                        Some(e) => self.eval(e),
                        None => Ok(Some(Bson::Null)),
                    };
                }
                let Some((offset, zone_name)) = offset else {
                    return Ok(Some(Bson::Null));
                };
                let format = match format {
                    Some(None) => return Ok(Some(Bson::Null)),
                    Some(Some(f)) => f,
                    None => DEFAULT_DATE_FORMAT.to_string(),
                };
                let ms = coerce_to_date(date.as_ref().unwrap_or(&Bson::Null))?;
                let offset = offset.ok_or_else(|| unrecognized_zone(&zone_name))?;
                Ok(Some(Bson::String(format_date(ms, &format, offset)?)))
            }
            // ExpressionGetField::evaluate: missing input gives missing, null gives null,
            // any other non-document gives missing.
            Node::GetField { field, input } => match self.eval(input)? {
                None => Ok(None),
                Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
                Some(Bson::Document(d)) => Ok(d.get(field).cloned()),
                Some(_) => Ok(None),
            },
            Node::SetField {
                field,
                input,
                value,
            } => match self.eval(input)? {
                None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
                Some(Bson::Document(mut d)) => {
                    match self.eval(value)? {
                        Some(v) => {
                            d.insert(field.clone(), v);
                        }
                        None => {
                            d.remove(field);
                        }
                    }
                    Ok(Some(Bson::Document(d)))
                }
                Some(_) => Err(loc(
                    4161105,
                    "$setField requires 'input' to evaluate to type Object",
                )),
            },
            Node::Trim { op, input, chars } => {
                let input = match self.eval(input)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
                    Some(Bson::String(s)) => s,
                    Some(other) => {
                        return Err(loc(
                            50699,
                            format!(
                                "{op} requires its input to be a string, got {} (of type {}) instead.",
                                show(&other),
                                type_name(&other)
                            ),
                        ));
                    }
                };
                let set: Vec<char> = match chars {
                    None => TRIM_WHITESPACE.to_vec(),
                    Some(c) => match self.eval(c)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => {
                            return Ok(Some(Bson::Null));
                        }
                        Some(Bson::String(s)) => s.chars().collect(),
                        Some(other) => {
                            return Err(loc(
                                50700,
                                format!(
                                    "{op} requires 'chars' to be a string, got {} (of type {}) instead.",
                                    show(&other),
                                    type_name(&other)
                                ),
                            ));
                        }
                    },
                };
                let trimmed = match *op {
                    "$ltrim" => input.trim_start_matches(set.as_slice()),
                    "$rtrim" => input.trim_end_matches(set.as_slice()),
                    _ => input.trim_matches(set.as_slice()),
                };
                Ok(Some(Bson::String(trimmed.to_string())))
            }
            Node::Replace {
                op,
                input,
                find,
                replacement,
            } => {
                let values = [
                    ("input", 51746, self.eval(input)?),
                    ("find", 51745, self.eval(find)?),
                    ("replacement", 51744, self.eval(replacement)?),
                ];
                for (what, code, v) in &values {
                    if !is_nullish(v.as_ref()) && !matches!(v, Some(Bson::String(_))) {
                        return Err(loc(
                            *code,
                            format!(
                                "{op} requires that '{what}' be a string, found: {}",
                                show(v.as_ref().unwrap_or(&Bson::Null))
                            ),
                        ));
                    }
                }
                let [
                    (_, _, Some(Bson::String(input))),
                    (_, _, Some(Bson::String(find))),
                    (_, _, Some(Bson::String(replacement))),
                ] = values
                else {
                    return Ok(Some(Bson::Null));
                };
                let out = if *op == "$replaceAll" {
                    if find.is_empty() {
                        // An empty 'find' matches before every byte and at the end.
                        let mut out = String::new();
                        for c in input.chars() {
                            out.push_str(&replacement);
                            out.push(c);
                        }
                        out.push_str(&replacement);
                        out
                    } else {
                        input.replace(find.as_str(), &replacement)
                    }
                } else {
                    input.replacen(find.as_str(), &replacement, 1)
                };
                Ok(Some(Bson::String(out)))
            }
            Node::Zip {
                inputs,
                defaults,
                longest,
            } => {
                let mut arrays = Vec::with_capacity(inputs.len());
                for e in inputs {
                    match self.eval(e)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => {
                            return Ok(Some(Bson::Null));
                        }
                        Some(Bson::Array(items)) => arrays.push(items),
                        Some(other) => {
                            return Err(loc(
                                34468,
                                format!(
                                    "$zip found a non-array expression in input: {}",
                                    show(&other)
                                ),
                            ));
                        }
                    }
                }
                let min = arrays.iter().map(Vec::len).min().unwrap_or(0);
                let max = arrays.iter().map(Vec::len).max().unwrap_or(0);
                let mut fill = vec![Bson::Null; arrays.len()];
                if min != max {
                    for (slot, d) in fill.iter_mut().zip(defaults) {
                        *slot = self.eval(d)?.unwrap_or(Bson::Null);
                    }
                }
                let len = if *longest { max } else { min };
                let rows = (0..len)
                    .map(|row| {
                        Bson::Array(
                            arrays
                                .iter()
                                .zip(&fill)
                                .map(|(a, f)| a.get(row).cloned().unwrap_or_else(|| f.clone()))
                                .collect(),
                        )
                    })
                    .collect();
                Ok(Some(Bson::Array(rows)))
            }
            Node::DateArith {
                op,
                start,
                unit,
                amount,
                timezone,
            } => {
                let null = Ok(Some(Bson::Null));
                let Some(start) = self.eval(start)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let Some(unit) = self.eval(unit)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let Some(amount) = self.eval(amount)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                // An unresolvable zone-database name fails only once the date is computed.
                let offset = match timezone {
                    None => Ok(0),
                    Some(t) => match self.eval(t)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => return null,
                        Some(Bson::String(s)) => resolve_timezone(&s)?.ok_or(s),
                        Some(other) => {
                            return Err(loc(
                                40517,
                                format!(
                                    "timezone must evaluate to a string, found {}",
                                    type_name(&other)
                                ),
                            ));
                        }
                    },
                };
                let start = coerce_to_date(&start).map_err(|_| {
                    loc(
                        5166403,
                        format!("{op} requires startDate to be convertible to a date"),
                    )
                })?;
                let Bson::String(unit) = unit else {
                    return Err(loc(
                        5166404,
                        format!("{op} expects string defining the time unit"),
                    ));
                };
                let unit = TimeUnit::parse(&unit)?;
                let amount = match Num::of(&amount)? {
                    Some(Num::Int(i)) => i as i64,
                    Some(Num::Long(i)) => i,
                    Some(Num::Double(d))
                        if d.fract() == 0.0 && d >= i64::MIN as f64 && d < 9.223372036854776e18 =>
                    {
                        d as i64
                    }
                    _ => {
                        return Err(loc(
                            5166405,
                            format!("{op} expects integer amount of time units"),
                        ));
                    }
                };
                let amount = if *op == "$dateSubtract" {
                    amount.checked_neg().ok_or_else(|| {
                        loc(
                            6045000,
                            format!("invalid $dateSubtract 'amount' parameter value: {amount}"),
                        )
                    })?
                } else {
                    amount
                };
                let offset = offset.map_err(|name| unrecognized_zone(&name))?;
                let ms = date_add(start, unit, amount, offset)?;
                Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms))))
            }
            Node::DateFromParts {
                parts,
                iso,
                timezone,
            } => self.eval_date_from_parts(parts, *iso, timezone.as_deref()),
            // ExpressionDateToParts::evaluate: timezone and iso8601 are checked before the date.
            Node::DateToParts {
                date,
                timezone,
                iso8601,
            } => {
                let date = self.eval(date)?;
                let offset = match timezone {
                    None => Ok(0),
                    Some(t) => match self.eval(t)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => {
                            return Ok(Some(Bson::Null));
                        }
                        Some(Bson::String(s)) => resolve_timezone(&s)?.ok_or(s),
                        Some(other) => {
                            return Err(loc(
                                40517,
                                format!(
                                    "timezone must evaluate to a string, found {}",
                                    type_name(&other)
                                ),
                            ));
                        }
                    },
                };
                let iso = match iso8601 {
                    None => false,
                    Some(e) => match self.eval(e)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => {
                            return Ok(Some(Bson::Null));
                        }
                        Some(Bson::Boolean(b)) => b,
                        Some(other) => {
                            return Err(loc(
                                40521,
                                format!(
                                    "iso8601 must evaluate to a bool, found {}",
                                    type_name(&other)
                                ),
                            ));
                        }
                    },
                };
                let Some(date) = date.filter(|v| !is_nullish(Some(v))) else {
                    return Ok(Some(Bson::Null));
                };
                let ms = coerce_to_date(&date)?;
                let offset = offset.map_err(|name| unrecognized_zone(&name))?;
                let p = DateParts::new(ms, offset);
                let int = |v: i64| Bson::Int32(v as i32);
                let parts = if iso {
                    bson::doc! {
                        "isoWeekYear": int(p.iso_year),
                        "isoWeek": int(p.iso_week),
                        "isoDayOfWeek": int(p.iso_wday),
                        "hour": int(p.hour),
                        "minute": int(p.minute),
                        "second": int(p.second),
                        "millisecond": int(p.milli),
                    }
                } else {
                    bson::doc! {
                        "year": int(p.year),
                        "month": int(p.month),
                        "day": int(p.day),
                        "hour": int(p.hour),
                        "minute": int(p.minute),
                        "second": int(p.second),
                        "millisecond": int(p.milli),
                    }
                };
                Ok(Some(Bson::Document(parts)))
            }
            Node::Rand => Ok(Some(Bson::Double(rand::random::<f64>()))),
            Node::Regex {
                op,
                input,
                regex,
                options,
            } => {
                let input = self.eval(input)?.unwrap_or(Bson::Null);
                let pattern = self.eval(regex)?.unwrap_or(Bson::Null);
                let options = match options {
                    Some(o) => self.eval(o)?.unwrap_or(Bson::Null),
                    None => Bson::Null,
                };
                let re = compile_regex(op, &pattern, &options)?;
                let text = match input {
                    Bson::String(s) => Some(s),
                    Bson::Null | Bson::Undefined => None,
                    _ => {
                        return Err(loc(
                            51104,
                            format!("{op} needs 'input' to be of type string"),
                        ));
                    }
                };
                let (Some(re), Some(text)) = (re, text) else {
                    return Ok(Some(match *op {
                        "$regexMatch" => Bson::Boolean(false),
                        "$regexFind" => Bson::Null,
                        _ => Bson::Array(Vec::new()),
                    }));
                };
                Ok(Some(match *op {
                    "$regexMatch" => Bson::Boolean(re.is_match(&text)),
                    "$regexFind" => match re.captures(&text) {
                        Some(c) => regex_match_doc(&text, &c),
                        None => Bson::Null,
                    },
                    _ => Bson::Array(
                        re.captures_iter(&text)
                            .map(|c| regex_match_doc(&text, &c))
                            .collect(),
                    ),
                }))
            }
            Node::DateTrunc {
                date,
                unit,
                bin_size,
                timezone,
                start_of_week,
            } => {
                let null = Ok(Some(Bson::Null));
                let Some(date) = self.eval(date)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let Some(unit) = self.eval(unit)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let bin_size = match bin_size {
                    Some(b) => match self.eval(b)?.filter(|v| !is_nullish(Some(v))) {
                        Some(v) => Some(v),
                        None => return null,
                    },
                    None => None,
                };
                let is_week = matches!(&unit, Bson::String(u) if u == "week");
                let week_start = match start_of_week {
                    Some(e) if is_week => match self.eval(e)?.filter(|v| !is_nullish(Some(v))) {
                        Some(v) => Some(v),
                        None => return null,
                    },
                    _ => None,
                };
                let offset = match self
                    .eval_zone(timezone.as_deref())
                    .map_err(|e| zone_context("$dateTrunc", e))?
                {
                    Some(z) => z,
                    None => return null,
                };
                let ms = coerce_to_date(&date).map_err(|_| {
                    loc(
                        5439012,
                        format!(
                            "$dateTrunc requires 'date' to be a date, but got {}",
                            type_name(&date)
                        ),
                    )
                })?;
                let Bson::String(unit) = unit else {
                    return Err(loc(
                        5439013,
                        format!(
                            "$dateTrunc requires 'unit' to be a string, but got {}",
                            type_name(&unit)
                        ),
                    ));
                };
                let unit = TimeUnit::parse(&unit).map_err(|_| {
                    loc(
                        5439014,
                        format!(
                            "$dateTrunc parameter 'unit' value cannot be recognized as a time unit: {unit}"
                        ),
                    )
                })?;
                let bin = match bin_size {
                    None => 1,
                    Some(v) => {
                        let n = match Num::of(&v)? {
                            Some(Num::Int(i)) => Some(i as i64),
                            Some(Num::Long(i)) => Some(i),
                            Some(Num::Double(d))
                                if d.fract() == 0.0
                                    && d >= i64::MIN as f64
                                    && d < 9.223372036854776e18 =>
                            {
                                Some(d as i64)
                            }
                            _ => None,
                        };
                        let Some(n) = n else {
                            return Err(loc(
                                5439017,
                                format!(
                                    "$dateTrunc requires 'binSize' to be a 64-bit integer, but got value '{}' of type {}",
                                    show(&v),
                                    type_name(&v)
                                ),
                            ));
                        };
                        if n <= 0 {
                            return Err(loc(
                                5439018,
                                format!(
                                    "$dateTrunc requires 'binSize' to be greater than 0, but got value {n}"
                                ),
                            ));
                        }
                        n
                    }
                };
                let week_start = match week_start {
                    None => 0,
                    Some(v) => day_of_week_index("$dateTrunc", &v)?,
                };
                let offset = offset.map_err(|name| unrecognized_zone(&name))?;
                let out = truncate_date(ms, unit, bin, offset, week_start)?;
                Ok(Some(Bson::DateTime(bson::DateTime::from_millis(out))))
            }
            Node::DateDiff {
                start,
                end,
                unit,
                timezone,
                start_of_week,
            } => {
                let null = Ok(Some(Bson::Null));
                let Some(start) = self.eval(start)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let Some(end) = self.eval(end)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let Some(unit) = self.eval(unit)?.filter(|v| !is_nullish(Some(v))) else {
                    return null;
                };
                let is_week = matches!(&unit, Bson::String(u) if u == "week");
                let week_start = match start_of_week {
                    Some(e) if is_week => match self.eval(e)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => return null,
                        Some(v) => Some(v),
                    },
                    _ => None,
                };
                let offset = match self
                    .eval_zone(timezone.as_deref())
                    .map_err(|e| zone_context("$dateDiff", e))?
                {
                    Some(z) => z,
                    None => return null,
                };
                let as_date = |v: &Bson, what: &str| {
                    coerce_to_date(v).map_err(|_| {
                        loc(
                            5166307,
                            format!(
                                "$dateDiff requires '{what}' to be a date, but got {}",
                                type_name(v)
                            ),
                        )
                    })
                };
                let (start, end) = (as_date(&start, "startDate")?, as_date(&end, "endDate")?);
                let Bson::String(unit) = unit else {
                    return Err(loc(
                        5439013,
                        format!(
                            "$dateDiff requires 'unit' to be a string, but got {}",
                            type_name(&unit)
                        ),
                    ));
                };
                let unit = TimeUnit::parse(&unit).map_err(|_| {
                    loc(
                        5439014,
                        format!(
                            "$dateDiff parameter 'unit' value cannot be recognized as a time unit: {unit}"
                        ),
                    )
                })?;
                let week_start = match week_start {
                    None => 0,
                    Some(v) => day_of_week_index("$dateDiff", &v)?,
                };
                let offset = offset.map_err(|name| unrecognized_zone(&name))?;
                Ok(Some(Bson::Int64(date_diff(
                    start, end, unit, offset, week_start,
                )?)))
            }
            Node::DatePart { op, date, timezone } => {
                let date = match self.eval(date)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
                    Some(v) => coerce_to_date(&v)?,
                };
                let offset = match timezone {
                    None => 0,
                    Some(t) => match self.eval(t)? {
                        None | Some(Bson::Null) | Some(Bson::Undefined) => {
                            return Ok(Some(Bson::Null));
                        }
                        Some(Bson::String(s)) => {
                            resolve_timezone(&s)?.ok_or_else(|| unrecognized_zone(&s))?
                        }
                        Some(other) => {
                            return Err(loc(
                                40533,
                                format!(
                                    "{op} requires a string for the timezone argument, but was given a {} ({})",
                                    type_name(&other),
                                    show(&other)
                                ),
                            ));
                        }
                    },
                };
                let p = DateParts::new(date, offset);
                let v = match *op {
                    "$year" => p.year,
                    "$month" => p.month,
                    "$dayOfMonth" => p.day,
                    "$hour" => p.hour,
                    "$minute" => p.minute,
                    "$second" => p.second,
                    "$millisecond" => p.milli,
                    "$dayOfWeek" => p.weekday_sun0 + 1,
                    "$dayOfYear" => p.yday0 + 1,
                    "$week" => p.week(),
                    "$isoWeek" => p.iso_week,
                    "$isoDayOfWeek" => p.iso_wday,
                    // TimeZone::isoYear returns a long long.
                    _ => return Ok(Some(Bson::Int64(p.iso_year))),
                };
                Ok(Some(Bson::Int32(v as i32)))
            }
            Node::SortArray { input, sort_by } => {
                let mut items = match self.eval(input)? {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {
                        return Ok(Some(Bson::Null));
                    }
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return Err(loc(
                            2942504,
                            format!(
                                "The input argument to $sortArray must be an array, but was of type: {}",
                                type_name(&other)
                            ),
                        ));
                    }
                };
                match sort_by {
                    SortBy::Value(asc) => items.sort_by(|a, b| {
                        let c = compare(a, b);
                        if *asc { c } else { c.reverse() }
                    }),
                    SortBy::Fields(fields) => items.sort_by(|a, b| {
                        for (path, asc) in fields {
                            let c = compare(&sort_key(a, path, *asc), &sort_key(b, path, *asc));
                            let c = if *asc { c } else { c.reverse() };
                            if c != Ordering::Equal {
                                return c;
                            }
                        }
                        Ordering::Equal
                    }),
                }
                Ok(Some(Bson::Array(items)))
            }
        }
    }

    /// ExpressionDateFromParts::evaluate: out-of-range parts roll over (month 13 is January of
    /// the next year) as timelib does.
    fn eval_date_from_parts(
        &self,
        parts: &[(&'static str, Expr)],
        iso: bool,
        timezone: Option<&Expr>,
    ) -> Result<Option<Bson>> {
        let mut values: HashMap<&str, i64> = HashMap::new();
        let mut timezone_done = false;
        let mut offset = Ok(0);
        for (name, e) in parts {
            // The time zone is evaluated between the time parts and the date parts.
            if !timezone_done && matches!(*name, "year" | "isoWeekYear") {
                timezone_done = true;
                match self.eval_zone(timezone)? {
                    Some(z) => offset = z,
                    None => return Ok(Some(Bson::Null)),
                }
            }
            let v = self.eval(e)?;
            if is_nullish(v.as_ref()) {
                return Ok(Some(Bson::Null));
            }
            let v = v.unwrap_or(Bson::Null);
            let n = match Num::of(&v)? {
                Some(Num::Int(i)) => Some(i as i64),
                Some(Num::Long(i)) => Some(i),
                Some(Num::Double(d))
                    if d.fract() == 0.0 && d >= i64::MIN as f64 && d < 9.223372036854776e18 =>
                {
                    Some(d as i64)
                }
                _ => None,
            };
            let Some(n) = n else {
                return Err(loc(
                    40515,
                    format!(
                        "'{name}' must evaluate to an integer, found {} with value {}",
                        type_name(&v),
                        show(&v)
                    ),
                ));
            };
            let bounded = matches!(
                *name,
                "month" | "day" | "hour" | "minute" | "isoWeek" | "isoDayOfWeek"
            );
            if bounded && !(-32768..=32767).contains(&n) {
                return Err(loc(
                    31034,
                    format!(
                        "'{name}' must evaluate to a value in the range [-32768, 32767]; value {n} is not in range"
                    ),
                ));
            }
            values.insert(name, n);
        }
        if !timezone_done {
            match self.eval_zone(timezone)? {
                Some(z) => offset = z,
                None => return Ok(Some(Bson::Null)),
            }
        }
        let get = |n: &str, default: i64| values.get(n).copied().unwrap_or(default);
        let days = if iso {
            let year = get("isoWeekYear", 1970);
            if !(1..=9999).contains(&year) {
                return Err(loc(
                    31095,
                    format!(
                        "'isoWeekYear' must evaluate to an integer in the range 1 to 9999, found {year}"
                    ),
                ));
            }
            // Monday of ISO week 1 is the Monday on or before January 4th.
            let jan4 = days_from_civil(year, 1, 4);
            let jan4_iso_wday = (jan4 + 3).rem_euclid(7) + 1;
            jan4 - (jan4_iso_wday - 1) + (get("isoWeek", 1) - 1) * 7 + (get("isoDayOfWeek", 1) - 1)
        } else {
            let year = get("year", 1970);
            if !(1..=9999).contains(&year) {
                return Err(loc(
                    40523,
                    format!(
                        "'year' must evaluate to an integer in the range 1 to 9999, found {year}"
                    ),
                ));
            }
            let months = year * 12 + get("month", 1) - 1;
            let (y, m) = (months.div_euclid(12), months.rem_euclid(12) + 1);
            days_from_civil(y, m, 1) + get("day", 1) - 1
        };
        let offset = offset.map_err(|name| unrecognized_zone(&name))?;
        let ms = days
            .checked_mul(MS_PER_DAY)
            .and_then(|v| v.checked_add(get("hour", 0).checked_mul(3_600_000)?))
            .and_then(|v| v.checked_add(get("minute", 0).checked_mul(60_000)?))
            .and_then(|v| v.checked_add(get("second", 0).checked_mul(1000)?))
            .and_then(|v| v.checked_add(get("millisecond", 0)))
            .and_then(|v| v.checked_sub(offset as i64 * 60_000))
            .ok_or_else(|| CommandError::new(OVERFLOW, "date overflow in $dateFromParts"))?;
        Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms))))
    }

    /// makeTimeZone: `None` when the timezone is nullish (the result is then null);
    /// `Some(Err(name))` for a zone-database name this server cannot resolve.
    fn eval_zone(
        &self,
        timezone: Option<&Expr>,
    ) -> Result<Option<std::result::Result<i32, String>>> {
        let Some(t) = timezone else {
            return Ok(Some(Ok(0)));
        };
        match self.eval(t)? {
            None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
            Some(Bson::String(s)) => Ok(Some(resolve_timezone(&s)?.ok_or(s))),
            Some(other) => Err(loc(
                40517,
                format!(
                    "timezone must evaluate to a string, found {}",
                    type_name(&other)
                ),
            )),
        }
    }

    fn filter_limit(&self, l: &Expr) -> Result<Option<usize>> {
        let v = self.eval(l)?;
        if is_nullish(v.as_ref()) {
            return Ok(None);
        }
        let v = v.unwrap_or(Bson::Null);
        let Some(n) = as_int32(&v)? else {
            return Err(loc(
                327391,
                format!(
                    "$filter: limit must be represented as a 32-bit integral value: {}",
                    show(&v)
                ),
            ));
        };
        if n < 1 {
            return Err(loc(
                327392,
                format!("$filter: limit must be greater than 0: {}", show(&v)),
            ));
        }
        Ok(Some(n as usize))
    }

    fn eval_all(&self, args: &[Expr]) -> Result<Vec<Option<Bson>>> {
        args.iter().map(|a| self.eval(a)).collect()
    }

    fn eval_op(&self, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
        // Operators that do not evaluate every argument.
        match op {
            "$cond" => {
                let branch = if is_truthy(self.eval(&args[0])?.as_ref()) {
                    &args[1]
                } else {
                    &args[2]
                };
                return self.eval(branch);
            }
            "$and" => {
                for a in args {
                    if !is_truthy(self.eval(a)?.as_ref()) {
                        return Ok(Some(Bson::Boolean(false)));
                    }
                }
                return Ok(Some(Bson::Boolean(true)));
            }
            "$or" => {
                for a in args {
                    if is_truthy(self.eval(a)?.as_ref()) {
                        return Ok(Some(Bson::Boolean(true)));
                    }
                }
                return Ok(Some(Bson::Boolean(false)));
            }
            "$ifNull" => {
                for (i, a) in args.iter().enumerate() {
                    let v = self.eval(a)?;
                    if !is_nullish(v.as_ref()) || i == args.len() - 1 {
                        return Ok(v);
                    }
                }
                return Ok(Some(Bson::Null));
            }
            _ => {}
        }
        let vals = self.eval_all(args)?;
        eval_values(op, vals)
    }
}

fn sort_key(v: &Bson, path: &str, asc: bool) -> Bson {
    let found = match v {
        Bson::Document(d) => crate::path::get_path(d, path).cloned(),
        _ => None,
    };
    match found {
        // An array sorts by its smallest element ascending and its largest descending, as
        // in a `$sort` stage.
        Some(Bson::Array(items)) if !items.is_empty() => {
            let pick = items.iter().reduce(|a, b| {
                let c = compare(a, b);
                if (asc && c == Ordering::Greater) || (!asc && c == Ordering::Less) {
                    b
                } else {
                    a
                }
            });
            pick.cloned().unwrap_or(Bson::Null)
        }
        Some(Bson::Array(_)) => Bson::Undefined,
        Some(v) => v,
        None => Bson::Null,
    }
}

/// Truthiness as `$cond`, `$and`, `$filter` see it: false, null, missing, undefined and
/// numeric zero are false; everything else (including empty arrays) is true.
pub fn is_truthy(v: Option<&Bson>) -> bool {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) | Some(Bson::Boolean(false)) => false,
        Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => false,
        Some(Bson::Double(d)) => *d != 0.0,
        Some(d @ Bson::Decimal128(_)) => crate::compare::as_f64(d) != Some(0.0),
        _ => true,
    }
}

// ---------------------------------------------------------------------------------------
// Numbers

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i32),
    Long(i64),
    Double(f64),
}

impl Num {
    fn of(v: &Bson) -> Result<Option<Num>> {
        Ok(match v {
            Bson::Int32(i) => Some(Num::Int(*i)),
            Bson::Int64(i) => Some(Num::Long(*i)),
            Bson::Double(d) => Some(Num::Double(*d)),
            Bson::Decimal128(_) => return Err(decimal_unsupported()),
            _ => None,
        })
    }

    fn f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Long(i) => i as f64,
            Num::Double(d) => d,
        }
    }

    fn int(self) -> Option<i64> {
        match self {
            Num::Int(i) => Some(i as i64),
            Num::Long(i) => Some(i),
            Num::Double(_) => None,
        }
    }

    fn is_long(self) -> bool {
        matches!(self, Num::Long(_))
    }
}

/// mongod's `Value::integral()`: a number representable as a 32-bit integer.
fn as_int32(v: &Bson) -> Result<Option<i64>> {
    Ok(match Num::of(v)? {
        Some(Num::Int(i)) => Some(i as i64),
        Some(Num::Long(i)) => i32::try_from(i).ok().map(i64::from),
        Some(Num::Double(d))
            if d.fract() == 0.0 && d >= i32::MIN as f64 && d <= i32::MAX as f64 =>
        {
            Some(d as i64)
        }
        _ => None,
    })
}

/// An integer result: int when every input was int and it fits, long otherwise.
fn narrow(v: i64, any_long: bool) -> Bson {
    match i32::try_from(v) {
        Ok(i) if !any_long => Bson::Int32(i),
        _ => Bson::Int64(v),
    }
}

/// Running sum with mongod's promotion: int overflows into long, long into double.
#[derive(Default)]
struct Sum {
    long_total: i64,
    double_total: f64,
    any_long: bool,
    any_double: bool,
    overflowed: bool,
}

impl Sum {
    fn add(&mut self, n: Num) {
        match n.int() {
            Some(i) if !self.overflowed => {
                self.any_long |= n.is_long();
                match self.long_total.checked_add(i) {
                    Some(t) => self.long_total = t,
                    None => {
                        self.overflowed = true;
                        self.double_total += self.long_total as f64 + i as f64;
                        self.long_total = 0;
                    }
                }
            }
            Some(i) => self.double_total += i as f64,
            None => {
                self.any_double = true;
                self.double_total += n.f64();
            }
        }
    }

    fn is_double(&self) -> bool {
        self.any_double || self.overflowed
    }

    fn total_f64(&self) -> f64 {
        self.long_total as f64 + self.double_total
    }

    fn result(&self) -> Bson {
        if self.is_double() {
            Bson::Double(self.total_f64())
        } else {
            narrow(self.long_total, self.any_long)
        }
    }
}

fn eval_add(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut sum = Sum::default();
    let mut date: Option<i64> = None;
    for v in vals {
        let Some(v) = v else {
            return Ok(Some(Bson::Null));
        };
        match &v {
            Bson::Null | Bson::Undefined => return Ok(Some(Bson::Null)),
            Bson::DateTime(d) => {
                if date.is_some() {
                    return Err(loc(16612, "only one date allowed in an $add expression"));
                }
                date = Some(d.timestamp_millis());
            }
            other => match Num::of(other)? {
                Some(n) => sum.add(n),
                None => {
                    return Err(CommandError::type_mismatch(format!(
                        "$add only supports numeric or date types, not {}",
                        type_name(other)
                    )));
                }
            },
        }
    }
    if let Some(ms) = date {
        let offset = if sum.is_double() {
            let t = sum.total_f64().round();
            if !t.is_finite() || t.abs() >= 9.2e18 {
                return Err(CommandError::new(OVERFLOW, "date overflow in $add"));
            }
            t as i64
        } else {
            sum.long_total
        };
        let total = ms
            .checked_add(offset)
            .ok_or_else(|| CommandError::new(OVERFLOW, "date overflow in $add"))?;
        return Ok(Some(Bson::DateTime(bson::DateTime::from_millis(total))));
    }
    Ok(Some(sum.result()))
}

fn eval_multiply(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut long_product: i64 = 1;
    let mut double_product = 1.0f64;
    let (mut any_long, mut any_double, mut overflowed) = (false, false, false);
    for v in vals {
        let Some(v) = v else {
            return Ok(Some(Bson::Null));
        };
        if matches!(v, Bson::Null | Bson::Undefined) {
            return Ok(Some(Bson::Null));
        }
        let Some(n) = Num::of(&v)? else {
            return Err(CommandError::type_mismatch(format!(
                "$multiply only supports numeric types, not {}",
                type_name(&v)
            )));
        };
        match n.int() {
            Some(i) if !overflowed => {
                any_long |= n.is_long();
                match long_product.checked_mul(i) {
                    Some(p) => long_product = p,
                    None => {
                        overflowed = true;
                        double_product *= long_product as f64 * i as f64;
                        long_product = 1;
                    }
                }
            }
            Some(i) => double_product *= i as f64,
            None => {
                any_double = true;
                double_product *= n.f64();
            }
        }
    }
    Ok(Some(if any_double || overflowed {
        Bson::Double(long_product as f64 * double_product)
    } else {
        narrow(long_product, any_long)
    }))
}

fn eval_subtract(a: Option<Bson>, b: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(a.as_ref()) || is_nullish(b.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (a, b) = (a.unwrap_or(Bson::Null), b.unwrap_or(Bson::Null));
    // ExpressionSubtract::apply capitalises "Date" when the minuend is a date.
    let mismatch = || {
        let from = match a {
            Bson::DateTime(_) => "Date",
            _ => type_name(&a),
        };
        CommandError::type_mismatch(format!("can't $subtract {} from {from}", type_name(&b)))
    };
    match (&a, &b) {
        (Bson::DateTime(x), Bson::DateTime(y)) => Ok(Some(Bson::Int64(
            x.timestamp_millis().wrapping_sub(y.timestamp_millis()),
        ))),
        (Bson::DateTime(x), other) => {
            let Some(n) = Num::of(other)? else {
                return Err(mismatch());
            };
            // The subtrahend is truncated to whole milliseconds (coerceToLong).
            let offset = match n.int() {
                Some(i) => i,
                None => n.f64() as i64,
            };
            let ms = x.timestamp_millis().wrapping_sub(offset);
            Ok(Some(Bson::DateTime(bson::DateTime::from_millis(ms))))
        }
        _ => {
            let (Some(x), Some(y)) = (Num::of(&a)?, Num::of(&b)?) else {
                return Err(mismatch());
            };
            Ok(Some(match (x.int(), y.int()) {
                (Some(i), Some(j)) => match i.checked_sub(j) {
                    Some(r) => narrow(r, x.is_long() || y.is_long()),
                    None => Bson::Double(i as f64 - j as f64),
                },
                _ => Bson::Double(x.f64() - y.f64()),
            }))
        }
    }
}

fn two_numbers(op: &str, a: &Bson, b: &Bson) -> Result<(Num, Num)> {
    match (Num::of(a)?, Num::of(b)?) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(CommandError::type_mismatch(format!(
            "{op} only supports numeric types, not {} and {}",
            type_name(a),
            type_name(b)
        ))),
    }
}

fn eval_divide(a: Option<Bson>, b: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(a.as_ref()) || is_nullish(b.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (a, b) = (a.unwrap_or(Bson::Null), b.unwrap_or(Bson::Null));
    let (x, y) = two_numbers("$divide", &a, &b)?;
    if y.f64() == 0.0 {
        return Err(CommandError::new(BAD_VALUE, "can't $divide by zero"));
    }
    Ok(Some(Bson::Double(x.f64() / y.f64())))
}

fn eval_mod(a: Option<Bson>, b: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(a.as_ref()) || is_nullish(b.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (a, b) = (a.unwrap_or(Bson::Null), b.unwrap_or(Bson::Null));
    let (Some(x), Some(y)) = (Num::of(&a)?, Num::of(&b)?) else {
        return Err(loc(
            16611,
            format!(
                "$mod only supports numeric types, not {} and {}",
                type_name(&a),
                type_name(&b)
            ),
        ));
    };
    if y.f64() == 0.0 {
        return Err(loc(16610, "can't $mod by zero"));
    }
    // As ExpressionMod::apply: fmod when the dividend is a double or the divisor a
    // non-integral double; otherwise long if either side is long, else int.
    let divisor_integral = as_int32(&b)?.is_some();
    Ok(Some(match (x, y) {
        (Num::Double(_), _) => Bson::Double(x.f64() % y.f64()),
        (_, Num::Double(_)) if !divisor_integral => Bson::Double(x.f64() % y.f64()),
        (Num::Long(_), _) | (_, Num::Long(_)) => {
            Bson::Int64(x.int().unwrap_or(0).wrapping_rem(y.f64() as i64))
        }
        _ => Bson::Int32((x.int().unwrap_or(0) as i32).wrapping_rem(y.f64() as i32)),
    }))
}

fn numeric_arg(op: &str, v: &Bson) -> Result<Num> {
    Num::of(v)?.ok_or_else(|| {
        loc(
            28765,
            format!("{op} only supports numeric types, not {}", type_name(v)),
        )
    })
}

fn eval_abs(v: &Bson) -> Result<Bson> {
    Ok(match numeric_arg("$abs", v)? {
        Num::Int(i) => match i.checked_abs() {
            Some(a) => Bson::Int32(a),
            None => Bson::Int64((i as i64).abs()),
        },
        Num::Long(i) => Bson::Int64(
            i.checked_abs()
                .ok_or_else(|| loc(28680, "can't take $abs of long long min"))?,
        ),
        Num::Double(d) => Bson::Double(d.abs()),
    })
}

/// The precision of `$round`/`$trunc` (evaluateRoundOrTrunc); `None` when it is nullish.
fn place_arg(op: &str, v: Option<&Bson>) -> Result<Option<i64>> {
    if is_nullish(v) {
        return Ok(None);
    }
    let v = v.unwrap_or(&Bson::Null);
    let Some(place) = as_int32(v)? else {
        return Err(loc(
            51082,
            format!("precision argument to  {op} must be a integral value"),
        ));
    };
    if !(-20..=100).contains(&place) {
        return Err(loc(
            51083,
            format!("cannot apply {op} with precision value {place} value must be in [-20, 100]"),
        ));
    }
    Ok(Some(place))
}

/// `$round` (half to even) and `$trunc` at `place` decimal digits. Doubles are rounded on
/// their 34-significant-digit decimal form, as mongod does through Decimal128.
fn round_number(op: &str, v: &Bson, place: i64) -> Result<Bson> {
    let half_even = op == "$round";
    let n = Num::of(v)?.ok_or_else(|| {
        loc(
            51081,
            format!("{op} only supports numeric types, not {}", type_name(v)),
        )
    })?;
    match n {
        Num::Double(d) => {
            if !d.is_finite() || d == 0.0 {
                return Ok(Bson::Double(d));
            }
            Ok(Bson::Double(round_decimal_string(d, place, half_even)))
        }
        Num::Int(_) | Num::Long(_) => {
            let i = n.int().unwrap_or(0);
            if place >= 0 {
                return Ok(v.clone());
            }
            let p = 10i128.pow((-place) as u32);
            let x = i as i128;
            let q = x / p;
            let r = x % p;
            let mut q = q;
            if half_even {
                let twice = 2 * r.abs();
                if twice > p || (twice == p && q % 2 != 0) {
                    q += x.signum();
                }
            }
            let out = q * p;
            Ok(match (n, i32::try_from(out), i64::try_from(out)) {
                (Num::Int(_), Ok(o), _) => Bson::Int32(o),
                (_, _, Ok(o)) => Bson::Int64(o),
                _ => Bson::Double(out as f64),
            })
        }
    }
}

fn round_decimal_string(d: f64, place: i64, half_even: bool) -> f64 {
    let s = format!("{:.33e}", d.abs());
    let Some((mantissa, exp)) = s.split_once('e') else {
        return d;
    };
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: Vec<u8> = mantissa
        .bytes()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    // Number of digits kept: those before the decimal point (exp + 1) plus `place`.
    let keep = exp + 1 + place;
    if keep >= digits.len() as i64 {
        return d;
    }
    let mut kept: Vec<u8> = if keep > 0 {
        digits[..keep as usize].to_vec()
    } else {
        Vec::new()
    };
    let dropped: &[u8] = if keep >= 0 {
        &digits[keep as usize..]
    } else {
        &[]
    };
    let round_up = if !half_even || keep < 0 {
        false
    } else {
        let first = dropped.first().copied().unwrap_or(0);
        let rest_nonzero = dropped.iter().skip(1).any(|&x| x != 0);
        let last_odd = kept.last().is_some_and(|x| x % 2 == 1);
        first > 5 || (first == 5 && (rest_nonzero || last_odd))
    };
    let mut carry = round_up;
    for digit in kept.iter_mut().rev() {
        if !carry {
            break;
        }
        if *digit == 9 {
            *digit = 0;
        } else {
            *digit += 1;
            carry = false;
        }
    }
    let mut scale_exp = exp + 1 - kept.len() as i64;
    if carry {
        kept.insert(0, 1);
        scale_exp = exp + 2 - kept.len() as i64;
    }
    if kept.is_empty() {
        return 0.0f64.copysign(d);
    }
    let text: String = kept.iter().map(|x| (x + b'0') as char).collect();
    let value: f64 = format!("{text}e{scale_exp}").parse().unwrap_or(d.abs());
    value.copysign(d)
}

/// `$sum`/`$avg`/`$max`/`$min` used as expressions: one array argument is operated over
/// element-wise, several arguments are operated over as given (manual: "$sum (aggregation)").
fn eval_accumulator(op: &str, vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let items: Vec<Bson> = match vals.as_slice() {
        [Some(Bson::Array(items))] => items.clone(),
        _ => vals.into_iter().flatten().collect(),
    };
    match op {
        "$sum" | "$avg" => {
            let mut sum = Sum::default();
            let mut count = 0u64;
            for v in &items {
                if let Some(n) = Num::of(v)? {
                    sum.add(n);
                    count += 1;
                }
            }
            if op == "$sum" {
                return Ok(Some(sum.result()));
            }
            if count == 0 {
                return Ok(Some(Bson::Null));
            }
            Ok(Some(Bson::Double(sum.total_f64() / count as f64)))
        }
        _ => {
            let want = if op == "$max" {
                Ordering::Greater
            } else {
                Ordering::Less
            };
            let mut best: Option<Bson> = None;
            for v in items {
                if matches!(v, Bson::Null | Bson::Undefined) {
                    continue;
                }
                if best.as_ref().is_none_or(|b| compare(&v, b) == want) {
                    best = Some(v);
                }
            }
            Ok(Some(best.unwrap_or(Bson::Null)))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Operators over evaluated arguments

fn cmp_values(a: &Option<Bson>, b: &Option<Bson>) -> Ordering {
    // Missing compares as undefined: below null (canonical type order, EOO == Undefined).
    let a = a.clone().unwrap_or(Bson::Undefined);
    let b = b.clone().unwrap_or(Bson::Undefined);
    compare(&a, &b)
}

fn coerce_to_string(v: Option<&Bson>) -> Result<String> {
    Ok(match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) => String::new(),
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => s.clone(),
        Some(Bson::Int32(i)) => i.to_string(),
        Some(Bson::Int64(i)) => i.to_string(),
        Some(Bson::Double(d)) => format_double(*d),
        Some(Bson::DateTime(d)) => format_date(d.timestamp_millis(), DEFAULT_DATE_FORMAT, 0)?,
        // Timestamp::toStringPretty: the seconds as a UTC date-time, then ":" and the increment.
        Some(Bson::Timestamp(t)) => format!(
            "{}:{}",
            format_date(t.time as i64 * 1000, "%Y-%m-%dT%H:%M:%S", 0)?,
            t.increment
        ),
        Some(Bson::JavaScriptCode(code)) => code.clone(),
        Some(Bson::Decimal128(_)) => return Err(decimal_unsupported()),
        Some(other) => {
            return Err(loc(
                16007,
                format!(
                    "can't convert from BSON type {} to String",
                    type_name(other)
                ),
            ));
        }
    })
}

fn expect_int_index(op: &str, v: &Bson, code_type: i32, code_int: i32) -> Result<i64> {
    let n = Num::of(v)?.ok_or_else(|| {
        loc(
            code_type,
            format!(
                "{op}'s second argument must be a numeric value, but is {}",
                type_name(v)
            ),
        )
    })?;
    let i = match n {
        Num::Int(i) => i as i64,
        Num::Long(i) => i,
        Num::Double(d) if d.fract() == 0.0 => d as i64,
        Num::Double(_) => i64::MAX,
    };
    if i32::try_from(i).is_err() {
        return Err(loc(
            code_int,
            format!(
                "{op}'s second argument must be representable as a 32-bit integer: {}",
                format_double(n.f64())
            ),
        ));
    }
    Ok(i)
}

fn array_elem_at(op: &str, arr: Option<Bson>, idx: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(arr.as_ref()) || is_nullish(idx.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let items = match arr {
        Some(Bson::Array(items)) => items,
        other => {
            let what = if op == "$arrayElemAt" {
                "$arrayElemAt's first argument"
            } else {
                &format!("{op}'s argument")
            };
            return Err(loc(
                28689,
                format!(
                    "{what} must be an array, but is {}",
                    type_of(other.as_ref())
                ),
            ));
        }
    };
    let i = expect_int_index(
        "$arrayElemAt",
        idx.as_ref().unwrap_or(&Bson::Null),
        28690,
        28691,
    )?;
    let len = items.len() as i64;
    let pos = if i < 0 { len + i } else { i };
    if pos < 0 || pos >= len {
        return Ok(None);
    }
    Ok(items.into_iter().nth(pos as usize))
}

/// One `$range` bound; `what` and `article` build mongod's exact messages.
fn range_arg(v: Option<&Bson>, which: usize) -> Result<i64> {
    let (what, a, sep, code_num) = match which {
        0 => ("starting value", "a", " ", 34443),
        1 => ("ending value", "an", " ", 34445),
        _ => ("step value", "a", "", 34447),
    };
    let numeric = match v {
        Some(b) => Num::of(b)?.is_some(),
        None => false,
    };
    if !numeric {
        return Err(loc(
            code_num,
            format!(
                "$range requires a numeric {what}, found value of type:{sep}{}",
                type_of(v)
            ),
        ));
    }
    let v = v.unwrap_or(&Bson::Null);
    as_int32(v)?.ok_or_else(|| {
        loc(
            code_num + 1,
            format!(
                "$range requires {a} {what} that can be represented as a 32-bit integer, found value: {}",
                show(v)
            ),
        )
    })
}

/// uassertIfNotIntegralAndNonNegative, shared by the `$indexOf*` operators.
fn index_arg(op: &str, v: &Bson, what: &str) -> Result<usize> {
    let Some(i) = as_int32(v)? else {
        // mongod's message lacks the space after the operator name.
        return Err(loc(
            40096,
            format!(
                "{op}requires an integral {what}, found a value of type: {}, with value: {}",
                type_name(v),
                show(v)
            ),
        ));
    };
    if i < 0 {
        return Err(loc(
            40097,
            format!("{op} requires a nonnegative {what}, found: {}", show(v)),
        ));
    }
    Ok(i as usize)
}

/// `$indexOfBytes`/`$indexOfCP`: the first index of the token within [start, end), or -1.
fn eval_index_of_string(op: &str, vals: &[Option<Bson>]) -> Result<Option<Bson>> {
    let bytes = op == "$indexOfBytes";
    let (code1, code2) = if bytes {
        (40091, 40092)
    } else {
        (40093, 40094)
    };
    let input = match &vals[0] {
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Some(Bson::Null)),
        Some(Bson::String(s)) => s,
        Some(other) => {
            return Err(loc(
                code1,
                format!(
                    "{op} requires a string as the first argument, found: {}",
                    type_name(other)
                ),
            ));
        }
    };
    let Some(Bson::String(token)) = &vals[1] else {
        return Err(loc(
            code2,
            format!(
                "{op} requires a string as the second argument, found: {}",
                type_of(vals[1].as_ref())
            ),
        ));
    };
    let units: Vec<usize> = if bytes {
        (0..=input.len()).collect()
    } else {
        input
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(input.len()))
            .collect()
    };
    let len = units.len() - 1;
    let start = match vals.get(2) {
        Some(v) => index_arg(op, v.as_ref().unwrap_or(&Bson::Undefined), "starting index")?,
        None => 0,
    };
    let end = match vals.get(3) {
        Some(v) => index_arg(op, v.as_ref().unwrap_or(&Bson::Undefined), "ending index")?,
        None => len,
    }
    .min(len);
    if start > len || end < start {
        return Ok(Some(Bson::Int32(-1)));
    }
    // As `input.substr(0, end).find(token, start)`: the match must end by the end index.
    let limit = units[end];
    let found = (start..=end).find(|&i| {
        let at = units[i];
        at + token.len() <= limit && input.as_bytes()[at..].starts_with(token.as_bytes())
    });
    Ok(Some(Bson::Int32(found.map_or(-1, |i| i as i32))))
}

/// ExpressionPow: integer powers stay integers while they fit in a long.
fn eval_pow(base: Option<Bson>, exp: Option<Bson>) -> Result<Option<Bson>> {
    if is_nullish(base.as_ref()) || is_nullish(exp.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let (base, exp) = (base.unwrap_or(Bson::Null), exp.unwrap_or(Bson::Null));
    let Some(b) = Num::of(&base)? else {
        return Err(loc(
            28762,
            format!("$pow's base must be numeric, not {}", type_name(&base)),
        ));
    };
    let Some(e) = Num::of(&exp)? else {
        return Err(loc(
            28763,
            format!("$pow's exponent must be numeric, not {}", type_name(&exp)),
        ));
    };
    if b.f64() == 0.0 && e.f64() < 0.0 {
        return Err(loc(
            28764,
            "$pow cannot take a base of 0 and a negative exponent",
        ));
    }
    let (Some(bi), Some(ei)) = (b.int(), e.int()) else {
        return Ok(Some(Bson::Double(b.f64().powf(e.f64()))));
    };
    let any_long = b.is_long() || e.is_long();
    let exact = match bi {
        0 => Some(if ei == 0 { 1 } else { 0 }),
        1 => Some(1),
        -1 => Some(if ei % 2 == 0 { 1 } else { -1 }),
        _ if !(0..=63).contains(&ei) => None,
        _ => bi.checked_pow(ei as u32),
    };
    Ok(Some(match exact {
        Some(v) => narrow(v, any_long),
        None => Bson::Double((bi as f64).powf(ei as f64)),
    }))
}

fn eval_values(op: &str, mut vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let mut take = |i: usize| vals.get_mut(i).and_then(Option::take);
    let null = || Ok(Some(Bson::Null));
    match op {
        "$add" => eval_add(vals),
        "$multiply" => eval_multiply(vals),
        "$subtract" => eval_subtract(take(0), take(1)),
        "$divide" => eval_divide(take(0), take(1)),
        "$mod" => eval_mod(take(0), take(1)),
        "$abs" | "$floor" | "$ceil" => {
            let v = take(0);
            if is_nullish(v.as_ref()) {
                return null();
            }
            let v = v.unwrap_or(Bson::Null);
            if op == "$abs" {
                return Ok(Some(eval_abs(&v)?));
            }
            Ok(Some(match numeric_arg(op, &v)? {
                Num::Double(d) if op == "$floor" => Bson::Double(d.floor()),
                Num::Double(d) => Bson::Double(d.ceil()),
                _ => v,
            }))
        }
        // ExpressionSingleNumericArg subclasses: always a double result here.
        "$sqrt" | "$exp" | "$ln" | "$log10" => {
            let v = take(0);
            if is_nullish(v.as_ref()) {
                return null();
            }
            let x = numeric_arg(op, &v.unwrap_or(Bson::Null))?.f64();
            let out = match op {
                "$sqrt" => {
                    if x < 0.0 {
                        return Err(loc(
                            28714,
                            "$sqrt's argument must be greater than or equal to 0",
                        ));
                    }
                    x.sqrt()
                }
                "$exp" => x.exp(),
                _ => {
                    if x <= 0.0 {
                        return Err(loc(
                            if op == "$ln" { 28766 } else { 28761 },
                            format!(
                                "{op}'s argument must be a positive number, but is {}",
                                format_double(x)
                            ),
                        ));
                    }
                    if op == "$ln" { x.ln() } else { x.log10() }
                }
            };
            Ok(Some(Bson::Double(out)))
        }
        "$log" => {
            let (arg, base) = (take(0), take(1));
            if is_nullish(arg.as_ref()) || is_nullish(base.as_ref()) {
                return null();
            }
            let (arg, base) = (arg.unwrap_or(Bson::Null), base.unwrap_or(Bson::Null));
            let Some(x) = Num::of(&arg)? else {
                return Err(loc(
                    28756,
                    format!("$log's argument must be numeric, not {}", type_name(&arg)),
                ));
            };
            let Some(b) = Num::of(&base)? else {
                return Err(loc(
                    28757,
                    format!("$log's base must be numeric, not {}", type_name(&base)),
                ));
            };
            let (x, b) = (x.f64(), b.f64());
            if x <= 0.0 {
                return Err(loc(
                    28758,
                    format!(
                        "$log's argument must be a positive number, but is {}",
                        format_double(x)
                    ),
                ));
            }
            if b <= 0.0 || b == 1.0 {
                return Err(loc(
                    28759,
                    format!(
                        "$log's base must be a positive number not equal to 1, but is {}",
                        format_double(b)
                    ),
                ));
            }
            Ok(Some(Bson::Double(x.ln() / b.ln())))
        }
        "$round" | "$trunc" => {
            let has_place = vals.len() > 1;
            let mut it = vals.into_iter();
            let (v, place) = (it.next().flatten(), it.next().flatten());
            if is_nullish(v.as_ref()) {
                return null();
            }
            let v = v.unwrap_or(Bson::Null);
            if Num::of(&v)?.is_none() {
                return Err(loc(
                    51081,
                    format!("{op} only supports numeric types, not {}", type_name(&v)),
                ));
            }
            let place = if has_place {
                match place_arg(op, place.as_ref())? {
                    Some(p) => p,
                    None => return null(),
                }
            } else {
                0
            };
            Ok(Some(round_number(op, &v, place)?))
        }
        "$concat" => {
            let mut out = String::new();
            for v in vals {
                match v {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => return null(),
                    Some(Bson::String(s)) => out.push_str(&s),
                    Some(other) => {
                        return Err(loc(
                            16702,
                            format!("$concat only supports strings, not {}", type_name(&other)),
                        ));
                    }
                }
            }
            Ok(Some(Bson::String(out)))
        }
        "$toString" | "$toInt" | "$toLong" | "$toDouble" | "$toDate" | "$toBool"
        | "$toObjectId" => {
            let v = take(0);
            if is_nullish(v.as_ref()) {
                return null();
            }
            let target = match op {
                "$toString" => Target::String,
                "$toInt" => Target::Int,
                "$toLong" => Target::Long,
                "$toDouble" => Target::Double,
                "$toDate" => Target::Date,
                "$toBool" => Target::Bool,
                _ => Target::ObjectId,
            };
            match convert(&v.unwrap_or(Bson::Null), target) {
                Ok(v) => Ok(Some(v)),
                Err(ConvertError::Failure(msg)) => Err(CommandError::new(
                    CONVERSION_FAILURE,
                    conversion_message(&msg),
                )),
                Err(ConvertError::Other(e)) => Err(e),
            }
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            let c = cmp_values(&vals[0], &vals[1]);
            Ok(Some(match op {
                "$eq" => Bson::Boolean(c == Ordering::Equal),
                "$ne" => Bson::Boolean(c != Ordering::Equal),
                "$gt" => Bson::Boolean(c == Ordering::Greater),
                "$gte" => Bson::Boolean(c != Ordering::Less),
                "$lt" => Bson::Boolean(c == Ordering::Less),
                "$lte" => Bson::Boolean(c != Ordering::Greater),
                _ => Bson::Int32(c as i32),
            }))
        }
        "$not" => Ok(Some(Bson::Boolean(!is_truthy(vals[0].as_ref())))),
        "$in" => match &vals[1] {
            Some(Bson::Array(items)) => {
                let needle = vals[0].clone();
                Ok(Some(Bson::Boolean(items.iter().any(|i| {
                    cmp_values(&needle, &Some(i.clone())) == Ordering::Equal
                }))))
            }
            other => Err(loc(
                40081,
                format!(
                    "$in requires an array as a second argument, found: {}",
                    type_of(other.as_ref())
                ),
            )),
        },
        "$size" => match take(0) {
            Some(Bson::Array(items)) => Ok(Some(narrow(items.len() as i64, false))),
            other => Err(loc(
                17124,
                format!(
                    "The argument to $size must be an array, but was of type: {}",
                    type_of(other.as_ref())
                ),
            )),
        },
        "$arrayElemAt" => array_elem_at(op, take(0), take(1)),
        "$first" => array_elem_at(op, take(0), Some(Bson::Int32(0))),
        "$last" => array_elem_at(op, take(0), Some(Bson::Int32(-1))),
        "$concatArrays" => {
            let mut out = Vec::new();
            for v in vals {
                match v {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => return null(),
                    Some(Bson::Array(items)) => out.extend(items),
                    Some(other) => {
                        return Err(loc(
                            28664,
                            format!(
                                "$concatArrays only supports arrays, not {}",
                                type_name(&other)
                            ),
                        ));
                    }
                }
            }
            Ok(Some(Bson::Array(out)))
        }
        "$mergeObjects" => {
            let mut out = Document::new();
            for v in vals {
                match v {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {}
                    Some(Bson::Document(d)) => {
                        for (k, v) in d {
                            out.insert(k, v);
                        }
                    }
                    Some(other) => {
                        return Err(loc(
                            40400,
                            format!(
                                "$mergeObjects requires object inputs, but input {} is of type {}",
                                show(&other),
                                type_name(&other)
                            ),
                        ));
                    }
                }
            }
            Ok(Some(Bson::Document(out)))
        }
        "$max" | "$min" | "$sum" | "$avg" => eval_accumulator(op, vals),
        "$type" => Ok(Some(Bson::String(type_of(vals[0].as_ref()).to_string()))),
        // mongod's ExpressionToHashedIndexKey: a missing value hashes as null, as in a hashed
        // index (manual: "$toHashedIndexKey", documented from 7.0 and added to earlier release
        // series' patch releases by SERVER-49214; an expression like any other, so allowed in
        // `$expr` of `find` and of a change stream's `$match`).
        "$toHashedIndexKey" => Ok(Some(Bson::Int64(crate::hasher::hash64(
            vals[0].as_ref().unwrap_or(&Bson::Null),
        )?))),
        "$isArray" => Ok(Some(Bson::Boolean(matches!(vals[0], Some(Bson::Array(_)))))),
        "$isNumber" => Ok(Some(Bson::Boolean(
            vals[0].as_ref().is_some_and(crate::compare::is_number),
        ))),
        "$strLenBytes" => match &vals[0] {
            Some(Bson::String(s)) => Ok(Some(narrow(s.len() as i64, false))),
            other => Err(loc(
                34473,
                format!(
                    "$strLenBytes requires a string argument, found: {}",
                    type_of(other.as_ref())
                ),
            )),
        },
        "$toLower" => Ok(Some(Bson::String(
            coerce_to_string(vals[0].as_ref())?.to_ascii_lowercase(),
        ))),
        "$toUpper" => Ok(Some(Bson::String(
            coerce_to_string(vals[0].as_ref())?.to_ascii_uppercase(),
        ))),
        "$split" => {
            let (s, sep) = (take(0), take(1));
            if is_nullish(s.as_ref()) || is_nullish(sep.as_ref()) {
                return null();
            }
            let Some(Bson::String(s)) = s else {
                return Err(loc(
                    40085,
                    format!(
                        "$split requires an expression that evaluates to a string as a first argument, found: {}",
                        type_of(s.as_ref())
                    ),
                ));
            };
            let Some(Bson::String(sep)) = sep else {
                return Err(loc(
                    40086,
                    format!(
                        "$split requires an expression that evaluates to a string as a second argument, found: {}",
                        type_of(sep.as_ref())
                    ),
                ));
            };
            if sep.is_empty() {
                return Err(loc(40087, "$split requires a non-empty separator"));
            }
            Ok(Some(Bson::Array(
                s.split(sep.as_str())
                    .map(|p| Bson::String(p.to_string()))
                    .collect(),
            )))
        }
        "$substrBytes" => {
            let s = coerce_to_string(vals[0].as_ref())?;
            let start = match vals[1].as_ref().map(Num::of).transpose()?.flatten() {
                Some(n) => n,
                None => {
                    return Err(loc(
                        16034,
                        format!(
                            "$substrBytes:  starting index must be a numeric type (is BSON type {})",
                            type_of(vals[1].as_ref())
                        ),
                    ));
                }
            };
            let len = match vals[2].as_ref().map(Num::of).transpose()?.flatten() {
                Some(n) => n,
                None => {
                    return Err(loc(
                        16035,
                        format!(
                            "$substrBytes:  length must be a numeric type (is BSON type {})",
                            type_of(vals[2].as_ref())
                        ),
                    ));
                }
            };
            let start_f = start.f64().trunc();
            if start_f < 0.0 {
                return Err(loc(
                    50752,
                    format!(
                        "$substrBytes:  starting index must be non-negative (got: {})",
                        start_f as i64
                    ),
                ));
            }
            let bytes = s.as_bytes();
            let start = (start_f as usize).min(bytes.len());
            let len_f = len.f64().trunc();
            let end = if len_f < 0.0 {
                bytes.len()
            } else {
                start.saturating_add(len_f as usize).min(bytes.len())
            };
            let is_continuation = |i: usize| i < bytes.len() && (bytes[i] & 0xC0) == 0x80;
            if is_continuation(start) {
                return Err(loc(
                    28656,
                    "$substrBytes:  Invalid range, starting index is a UTF-8 continuation byte.",
                ));
            }
            if is_continuation(end) {
                return Err(loc(
                    28657,
                    "$substrBytes:  Invalid range, ending index is in the middle of a UTF-8 character.",
                ));
            }
            Ok(Some(Bson::String(s[start..end].to_string())))
        }
        "$objectToArray" => match take(0) {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
            Some(Bson::Document(d)) => Ok(Some(Bson::Array(
                d.into_iter()
                    .map(|(k, v)| Bson::Document(bson::doc! {"k": k, "v": v}))
                    .collect(),
            ))),
            Some(other) => Err(loc(
                40390,
                format!(
                    "$objectToArray requires a document input, found: {}",
                    type_name(&other)
                ),
            )),
        },
        "$arrayToObject" => match take(0) {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
            Some(Bson::Array(items)) => array_to_object(items).map(Some),
            Some(other) => Err(loc(
                40386,
                format!(
                    "$arrayToObject requires an array input, found: {}",
                    type_name(&other)
                ),
            )),
        },
        "$range" => {
            let start = range_arg(vals[0].as_ref(), 0)?;
            let end = range_arg(vals[1].as_ref(), 1)?;
            let step = match vals.get(2) {
                Some(v) => range_arg(v.as_ref(), 2)?,
                None => 1,
            };
            if step == 0 {
                return Err(loc(34449, "$range requires a non-zero step value"));
            }
            // internalQueryMaxRangeBytes (64MiB) bounds the output, as in ExpressionRange.
            const MAX_RANGE_BYTES: i64 = 64 * 1024 * 1024;
            let steps = (end - start) / step;
            let length = if steps >= 0 { 1 + steps } else { 0 };
            let needed = 24 + length * 16;
            if needed >= MAX_RANGE_BYTES {
                return Err(CommandError::new(
                    EXCEEDED_MEMORY_LIMIT,
                    format!(
                        "$range would use too much memory ({needed} bytes) and cannot spill to disk. Memory limit: {MAX_RANGE_BYTES} bytes"
                    ),
                ));
            }
            let mut out = Vec::new();
            let mut i = start;
            while (step > 0 && i < end) || (step < 0 && i > end) {
                out.push(Bson::Int32(i as i32));
                i += step;
            }
            Ok(Some(Bson::Array(out)))
        }
        "$slice" => eval_slice(vals),
        "$setUnion" | "$setIntersection" | "$setDifference" | "$setEquals" | "$setIsSubset" => {
            eval_set_op(op, vals)
        }
        "$allElementsTrue" | "$anyElementTrue" => {
            let Some(Bson::Array(items)) = &vals[0] else {
                return Err(loc(
                    if op == "$allElementsTrue" {
                        17040
                    } else {
                        17041
                    },
                    format!(
                        "{op}'s argument must be an array, but is {}",
                        type_of(vals[0].as_ref())
                    ),
                ));
            };
            let all = op == "$allElementsTrue";
            let hit = if all {
                items.iter().all(|i| is_truthy(Some(i)))
            } else {
                items.iter().any(|i| is_truthy(Some(i)))
            };
            Ok(Some(Bson::Boolean(hit)))
        }
        "$strcasecmp" => {
            let a = coerce_to_string(vals[0].as_ref())?.to_ascii_uppercase();
            let b = coerce_to_string(vals[1].as_ref())?.to_ascii_uppercase();
            Ok(Some(Bson::Int32(a.as_bytes().cmp(b.as_bytes()) as i32)))
        }
        "$strLenCP" => match &vals[0] {
            Some(Bson::String(s)) => Ok(Some(narrow(s.chars().count() as i64, false))),
            other => Err(loc(
                34471,
                format!(
                    "$strLenCP requires a string argument, found: {}",
                    type_of(other.as_ref())
                ),
            )),
        },
        "$substrCP" => eval_substr_cp(vals),
        "$tsSecond" | "$tsIncrement" => match &vals[0] {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
            Some(Bson::Timestamp(t)) => Ok(Some(Bson::Int64(if op == "$tsSecond" {
                t.time as i64
            } else {
                t.increment as i64
            }))),
            Some(other) => Err(loc(
                if op == "$tsSecond" { 5687301 } else { 5687302 },
                format!(
                    " Argument to {op} must be a timestamp, but is {}",
                    type_name(other)
                ),
            )),
        },
        "$binarySize" => match &vals[0] {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
            Some(Bson::String(s)) => Ok(Some(Bson::Int32(s.len() as i32))),
            Some(Bson::Binary(b)) => Ok(Some(Bson::Int32(b.bytes.len() as i32))),
            Some(other) => Err(loc(
                51276,
                format!(
                    "$binarySize requires a string or BinData argument, found: {}",
                    type_name(other)
                ),
            )),
        },
        "$bsonSize" => match &vals[0] {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
            Some(Bson::Document(d)) => {
                let bytes = bson::to_vec(d)
                    .map_err(|e| CommandError::new(crate::error::INTERNAL_ERROR, e.to_string()))?;
                Ok(Some(Bson::Int32(bytes.len() as i32)))
            }
            Some(other) => Err(loc(
                31393,
                format!(
                    "$bsonSize requires a document input, found: {}",
                    type_name(other)
                ),
            )),
        },
        "$reverseArray" => match take(0) {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null(),
            Some(Bson::Array(mut items)) => {
                items.reverse();
                Ok(Some(Bson::Array(items)))
            }
            Some(other) => Err(loc(
                34435,
                format!(
                    "The argument to $reverseArray must be an array, but was of type: {}",
                    type_name(&other)
                ),
            )),
        },
        "$indexOfBytes" | "$indexOfCP" => eval_index_of_string(op, &vals),
        "$pow" => eval_pow(take(0), take(1)),
        "$indexOfArray" => {
            let items = match &vals[0] {
                None | Some(Bson::Null) | Some(Bson::Undefined) => return null(),
                Some(Bson::Array(items)) => items.clone(),
                Some(other) => {
                    return Err(loc(
                        40090,
                        format!(
                            "$indexOfArray requires an array as a first argument, found: {}",
                            type_name(other)
                        ),
                    ));
                }
            };
            let start = match vals.get(2) {
                Some(v) => index_arg(
                    "$indexOfArray",
                    v.as_ref().unwrap_or(&Bson::Undefined),
                    "starting index",
                )?,
                None => 0,
            };
            let end = match vals.get(3) {
                Some(v) => index_arg(
                    "$indexOfArray",
                    v.as_ref().unwrap_or(&Bson::Undefined),
                    "ending index",
                )?,
                None => items.len(),
            }
            .min(items.len());
            let needle = &vals[1];
            for (i, item) in items.iter().enumerate().take(end).skip(start) {
                if cmp_values(needle, &Some(item.clone())) == Ordering::Equal {
                    return Ok(Some(narrow(i as i64, false)));
                }
            }
            Ok(Some(Bson::Int32(-1)))
        }
        _ => Err(CommandError::new(
            INVALID_PIPELINE_OPERATOR,
            format!("Unrecognized expression '{op}'"),
        )),
    }
}

/// `$arrayToObject`: the first element decides between `[k, v]` pairs and `{k, v}`
/// documents; the messages (including mongod's missing space in "mustall") are mongod's.
/// Sorted, deduplicated values, as mongod's ordered ValueSet yields them.
fn value_set(items: impl IntoIterator<Item = Bson>) -> Vec<Bson> {
    let mut out: Vec<Bson> = items.into_iter().collect();
    out.sort_by(compare);
    out.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
    out
}

fn set_contains(set: &[Bson], v: &Bson) -> bool {
    set.binary_search_by(|x| compare(x, v)).is_ok()
}

/// The set operators (ExpressionSetUnion, ...): union and intersection come out sorted,
/// difference keeps the first array's order.
fn eval_set_op(op: &str, vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    match op {
        "$setUnion" | "$setIntersection" => {
            let union = op == "$setUnion";
            let mut acc: Option<Vec<Bson>> = None;
            for v in vals {
                let items = match v {
                    None | Some(Bson::Null) | Some(Bson::Undefined) => {
                        return Ok(Some(Bson::Null));
                    }
                    Some(Bson::Array(items)) => items,
                    Some(other) => {
                        return Err(loc(
                            if union { 17043 } else { 17047 },
                            format!(
                                "All operands of {op} must be arrays. One argument is of type: {}",
                                type_name(&other)
                            ),
                        ));
                    }
                };
                let next = value_set(items);
                acc = Some(match acc {
                    None => next,
                    Some(prev) if union => value_set(prev.into_iter().chain(next)),
                    Some(prev) => prev
                        .into_iter()
                        .filter(|x| set_contains(&next, x))
                        .collect(),
                });
            }
            Ok(Some(Bson::Array(acc.unwrap_or_default())))
        }
        "$setDifference" => {
            let mut it = vals.into_iter();
            let (lhs, rhs) = (it.next().flatten(), it.next().flatten());
            if is_nullish(lhs.as_ref()) || is_nullish(rhs.as_ref()) {
                return Ok(Some(Bson::Null));
            }
            let Some(Bson::Array(lhs)) = lhs else {
                return Err(loc(
                    17048,
                    format!(
                        "both operands of $setDifference must be arrays. First argument is of type: {}",
                        type_of(lhs.as_ref())
                    ),
                ));
            };
            let Some(Bson::Array(rhs)) = rhs else {
                return Err(loc(
                    17049,
                    format!(
                        "both operands of $setDifference must be arrays. Second argument is of type: {}",
                        type_of(rhs.as_ref())
                    ),
                ));
            };
            let mut seen = value_set(rhs);
            let mut out = Vec::new();
            for item in lhs {
                if !set_contains(&seen, &item) {
                    let at = seen
                        .binary_search_by(|x| compare(x, &item))
                        .unwrap_or_else(|i| i);
                    seen.insert(at, item.clone());
                    out.push(item);
                }
            }
            Ok(Some(Bson::Array(out)))
        }
        "$setEquals" => {
            let mut sets = Vec::with_capacity(vals.len());
            for (i, v) in vals.into_iter().enumerate() {
                let Some(Bson::Array(items)) = v else {
                    return Err(loc(
                        17044,
                        format!(
                            "All operands of $setEquals must be arrays. {}-th argument is of type: {}",
                            i + 1,
                            type_of(v.as_ref())
                        ),
                    ));
                };
                sets.push(value_set(items));
            }
            let first = &sets[0];
            let equal = sets.iter().all(|s| {
                s.len() == first.len()
                    && s.iter()
                        .zip(first)
                        .all(|(a, b)| compare(a, b) == Ordering::Equal)
            });
            Ok(Some(Bson::Boolean(equal)))
        }
        _ => {
            let mut it = vals.into_iter();
            let (lhs, rhs) = (it.next().flatten(), it.next().flatten());
            let Some(Bson::Array(lhs)) = lhs else {
                return Err(loc(
                    17046,
                    format!(
                        "both operands of $setIsSubset must be arrays. First argument is of type: {}",
                        type_of(lhs.as_ref())
                    ),
                ));
            };
            let Some(Bson::Array(rhs)) = rhs else {
                return Err(loc(
                    17042,
                    format!(
                        "both operands of $setIsSubset must be arrays. Second argument is of type: {}",
                        type_of(rhs.as_ref())
                    ),
                ));
            };
            let rhs = value_set(rhs);
            Ok(Some(Bson::Boolean(
                lhs.iter().all(|x| set_contains(&rhs, x)),
            )))
        }
    }
}

/// `$substrCP` (ExpressionSubstrCP): start and length count code points.
fn eval_substr_cp(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let s = coerce_to_string(vals[0].as_ref())?;
    let int_arg = |v: &Option<Bson>, what: &str, code_num: i32, code_int: i32| -> Result<i64> {
        let b = v.as_ref();
        if b.map(Num::of).transpose()?.flatten().is_none() {
            return Err(loc(
                code_num,
                format!(
                    "$substrCP: {what} must be a numeric type (is BSON type {})",
                    type_of(b)
                ),
            ));
        }
        let b = b.unwrap_or(&Bson::Null);
        as_int32(b)?.ok_or_else(|| {
            loc(
                code_int,
                format!(
                    "$substrCP: {what} cannot be represented as a 32-bit integral value: {}",
                    show(b)
                ),
            )
        })
    };
    let start = int_arg(&vals[1], "starting index", 34450, 34451)?;
    let len = int_arg(&vals[2], "length", 34452, 34453)?;
    if len < 0 {
        return Err(loc(
            34454,
            "$substrCP: length must be a nonnegative integer.",
        ));
    }
    if start < 0 {
        return Err(loc(
            34455,
            "$substrCP: the starting index must be nonnegative integer.",
        ));
    }
    let out: String = s.chars().skip(start as usize).take(len as usize).collect();
    Ok(Some(Bson::String(out)))
}

/// `$slice` as an expression (ExpressionSlice): `[array, n]` or `[array, position, n]`.
fn eval_slice(vals: Vec<Option<Bson>>) -> Result<Option<Bson>> {
    let has_position = vals.len() == 3;
    let mut it = vals.into_iter();
    let (array, arg2, count) = (
        it.next().flatten(),
        it.next().flatten(),
        it.next().flatten(),
    );
    if is_nullish(array.as_ref()) || is_nullish(arg2.as_ref()) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = array else {
        return Err(loc(
            28724,
            format!(
                "First argument to $slice must be an array, but is of type: {}",
                type_of(array.as_ref())
            ),
        ));
    };
    let arg2 = arg2.unwrap_or(Bson::Null);
    let Some(n2) = Num::of(&arg2)? else {
        return Err(loc(
            28725,
            format!(
                "Second argument to $slice must be a numeric value, but is of type: {}",
                type_name(&arg2)
            ),
        ));
    };
    let Some(n2) = as_int32(&arg2)? else {
        return Err(loc(
            28726,
            format!(
                "Second argument to $slice can't be represented as a 32-bit integer: {}",
                format_double(n2.f64())
            ),
        ));
    };
    let len = items.len() as i64;
    let (start, end) = if !has_position {
        if n2 >= 0 {
            (0, n2.min(len))
        } else {
            ((len + n2).max(0), len)
        }
    } else {
        let start = if n2 < 0 {
            (len + n2).max(0)
        } else {
            n2.min(len)
        };
        if is_nullish(count.as_ref()) {
            return Ok(Some(Bson::Null));
        }
        let count = count.unwrap_or(Bson::Null);
        let Some(c) = Num::of(&count)? else {
            return Err(loc(
                28727,
                format!(
                    "Third argument to $slice must be numeric, but is of type: {}",
                    type_name(&count)
                ),
            ));
        };
        let Some(c) = as_int32(&count)? else {
            return Err(loc(
                28728,
                format!(
                    "Third argument to $slice can't be represented as a 32-bit integer: {}",
                    format_double(c.f64())
                ),
            ));
        };
        if c <= 0 {
            return Err(loc(
                28729,
                format!("Third argument to $slice must be positive: {c}"),
            ));
        }
        (start, (start + c).min(len))
    };
    Ok(Some(Bson::Array(
        items[start as usize..end as usize].to_vec(),
    )))
}

fn array_to_object(items: Vec<Bson>) -> Result<Bson> {
    let mut out = Document::new();
    let array_format = match items.first() {
        None => return Ok(Bson::Document(out)),
        Some(Bson::Array(_)) => true,
        Some(Bson::Document(_)) => false,
        Some(other) => {
            return Err(loc(
                40398,
                format!(
                    "Unrecognised input type format for $arrayToObject: {}",
                    type_name(other)
                ),
            ));
        }
    };
    for item in items {
        let (k, v) = if array_format {
            let Bson::Array(pair) = item else {
                return Err(loc(
                    40396,
                    format!(
                        "$arrayToObject requires a consistent input format. Elements mustall be arrays or all be objects. Array was detected, now found: {}",
                        type_name(&item)
                    ),
                ));
            };
            if pair.len() != 2 {
                return Err(loc(
                    40397,
                    format!(
                        "$arrayToObject requires an array of size 2 arrays,found array of size: {}",
                        pair.len()
                    ),
                ));
            }
            let mut it = pair.into_iter();
            let (k, v) = (
                it.next().unwrap_or(Bson::Null),
                it.next().unwrap_or(Bson::Null),
            );
            let Bson::String(k) = k else {
                return Err(loc(
                    40395,
                    format!(
                        "$arrayToObject requires an array of key-value pairs, where the key must be of type string. Found key type: {}",
                        type_name(&k)
                    ),
                ));
            };
            if k.contains('\0') {
                return Err(loc(
                    4940400,
                    "Key field cannot contain an embedded null byte",
                ));
            }
            (k, v)
        } else {
            let Bson::Document(d) = item else {
                return Err(loc(
                    40391,
                    format!(
                        "$arrayToObject requires a consistent input format. Elements mustall be arrays or all be objects. Object was detected, now found: {}",
                        type_name(&item)
                    ),
                ));
            };
            if d.len() != 2 {
                return Err(loc(
                    40392,
                    format!(
                        "$arrayToObject requires an object keys of 'k' and 'v'. Found incorrect number of keys:{}",
                        d.len()
                    ),
                ));
            }
            let (Some(k), Some(v)) = (d.get("k"), d.get("v")) else {
                return Err(loc(
                    40393,
                    format!(
                        "$arrayToObject requires an object with keys 'k' and 'v'. Missing either or both keys from: {}",
                        show(&Bson::Document(d.clone()))
                    ),
                ));
            };
            let Bson::String(k) = k else {
                return Err(loc(
                    40394,
                    format!(
                        "$arrayToObject requires an object with keys 'k' and 'v', where the value of 'k' must be of type string. Found type: {}",
                        type_name(k)
                    ),
                ));
            };
            if k.contains('\0') {
                return Err(loc(
                    4940401,
                    "Key field cannot contain an embedded null byte",
                ));
            }
            (k.clone(), v.clone())
        };
        out.insert(k, v);
    }
    Ok(Bson::Document(out))
}

// ---------------------------------------------------------------------------------------
// $convert (manual: "$convert (aggregation)", conversion table)

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Double,
    String,
    ObjectId,
    Bool,
    Date,
    Int,
    Long,
    Decimal,
    /// A BSON type no conversion produces (`object`, `regex`, ...), by its alias.
    Other(&'static str),
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Double => "double",
            Target::String => "string",
            Target::ObjectId => "objectId",
            Target::Bool => "bool",
            Target::Date => "date",
            Target::Int => "int",
            Target::Long => "long",
            Target::Decimal => "decimal",
            Target::Other(n) => n,
        }
    }
}

const TYPE_ALIASES: &[(&str, i32)] = &[
    ("double", 1),
    ("string", 2),
    ("object", 3),
    ("array", 4),
    ("binData", 5),
    ("undefined", 6),
    ("objectId", 7),
    ("bool", 8),
    ("date", 9),
    ("null", 10),
    ("regex", 11),
    ("dbPointer", 12),
    ("javascript", 13),
    ("symbol", 14),
    ("javascriptWithScope", 15),
    ("int", 16),
    ("timestamp", 17),
    ("long", 18),
    ("decimal", 19),
    ("minKey", -1),
    ("maxKey", 127),
];

fn target_from_alias(name: &'static str) -> Target {
    match name {
        "double" => Target::Double,
        "string" => Target::String,
        "objectId" => Target::ObjectId,
        "bool" => Target::Bool,
        "date" => Target::Date,
        "int" => Target::Int,
        "long" => Target::Long,
        "decimal" => Target::Decimal,
        other => Target::Other(other),
    }
}

fn target_type(to: &Bson) -> Result<Target> {
    match to {
        // "missing" is what `$type` returns for a missing value, so mongod accepts it here.
        Bson::String(s) if s == "missing" => Ok(Target::Other("missing")),
        Bson::String(s) => TYPE_ALIASES
            .iter()
            .find(|(n, _)| n == s)
            .map(|(n, _)| target_from_alias(n))
            .ok_or_else(|| CommandError::bad_value(format!("Unknown type name: {s}"))),
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
            let n = Num::of(to)?.map(Num::f64).unwrap_or(f64::NAN);
            if n.fract() != 0.0 {
                return Err(CommandError::failed_to_parse(
                    "In $convert, numeric 'to' argument is not an integer",
                ));
            }
            TYPE_ALIASES
                .iter()
                .find(|(_, code)| *code as f64 == n)
                .map(|(name, _)| target_from_alias(name))
                .ok_or_else(|| {
                    CommandError::failed_to_parse(format!(
                        "In $convert, numeric value for 'to' does not correspond to a BSON type: {n}"
                    ))
                })
        }
        other => Err(CommandError::failed_to_parse(format!(
            "$convert's 'to' argument must be a string or number, but is {}",
            type_name(other)
        ))),
    }
}

enum ConvertError {
    /// A ConversionFailure that `onError` may replace; the text before mongod's
    /// " in $convert with no onError value" suffix.
    Failure(String),
    Other(CommandError),
}

impl From<CommandError> for ConvertError {
    fn from(e: CommandError) -> Self {
        ConvertError::Other(e)
    }
}

fn conversion_message(msg: &str) -> String {
    match msg.split_once(": ") {
        Some((head, tail))
            if head.starts_with("Failed to parse")
                || head.starts_with("Illegal hexadecimal")
                || head.starts_with("Error parsing")
                || head.starts_with("Conversion would")
                || head.starts_with("Attempt to") =>
        {
            format!("{head} in $convert with no onError value: {tail}")
        }
        _ => format!("{msg} in $convert with no onError value"),
    }
}

fn unsupported(from: &Bson, to: Target) -> ConvertError {
    ConvertError::Failure(format!(
        "Unsupported conversion from {} to {}",
        type_name(from),
        to.name()
    ))
}

/// performCastDoubleToInt/Long: the range check is on the value before truncation.
fn double_to_integer(d: f64, to_int: bool) -> std::result::Result<i64, ConvertError> {
    if d.is_nan() {
        return Err(ConvertError::Failure(
            "Attempt to convert NaN value to integer type".to_string(),
        ));
    }
    if d.is_infinite() {
        return Err(ConvertError::Failure(
            "Attempt to convert infinity value to integer type".to_string(),
        ));
    }
    let in_range = if to_int {
        d >= i32::MIN as f64 && d <= i32::MAX as f64
    } else {
        d >= i64::MIN as f64 && d < 9_223_372_036_854_775_808.0
    };
    if !in_range {
        return Err(ConvertError::Failure(format!(
            "Conversion would overflow target type: {}",
            format_double(d)
        )));
    }
    Ok(d.trunc() as i64)
}

/// parseStringToNumber rejects hexadecimal input before parsing.
fn reject_hex(s: &str) -> std::result::Result<(), ConvertError> {
    if s.starts_with("0x") {
        return Err(ConvertError::Failure(format!(
            "Illegal hexadecimal input: {s}"
        )));
    }
    Ok(())
}

fn parse_integer(s: &str) -> std::result::Result<i64, ConvertError> {
    reject_hex(s)?;
    let fail = |why: &str| ConvertError::Failure(format!("Failed to parse number '{s}': {why}"));
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("Did not consume whole string."));
    }
    s.parse::<i64>().map_err(|_| fail("Overflow"))
}

fn convert(v: &Bson, to: Target) -> std::result::Result<Bson, ConvertError> {
    if let Bson::Decimal128(_) = v {
        return Err(decimal_unsupported().into());
    }
    Ok(match to {
        Target::Decimal => return Err(decimal_unsupported().into()),
        Target::Other(_) => return Err(unsupported(v, to)),
        Target::Bool => Bson::Boolean(match v {
            Bson::Boolean(b) => *b,
            Bson::Int32(i) => *i != 0,
            Bson::Int64(i) => *i != 0,
            Bson::Double(d) => *d != 0.0,
            _ => true,
        }),
        Target::Double => Bson::Double(match v {
            Bson::Double(d) => *d,
            Bson::Int32(i) => *i as f64,
            Bson::Int64(i) => *i as f64,
            Bson::Boolean(b) => f64::from(u8::from(*b)),
            Bson::DateTime(d) => d.timestamp_millis() as f64,
            Bson::String(s) => {
                reject_hex(s)?;
                let ok = !s.is_empty() && !s.starts_with(char::is_whitespace);
                match s.parse::<f64>() {
                    Ok(d) if ok => d,
                    _ => {
                        return Err(ConvertError::Failure(format!(
                            "Failed to parse number '{s}': Did not consume whole string."
                        )));
                    }
                }
            }
            _ => return Err(unsupported(v, to)),
        }),
        Target::Int | Target::Long => {
            let i = match v {
                Bson::Int32(i) => *i as i64,
                Bson::Int64(i) => *i,
                Bson::Double(d) => double_to_integer(*d, to == Target::Int)?,
                Bson::Boolean(b) => i64::from(*b),
                Bson::DateTime(d) if to == Target::Long => d.timestamp_millis(),
                Bson::String(s) => {
                    let i = parse_integer(s)?;
                    if to == Target::Int && i32::try_from(i).is_err() {
                        return Err(ConvertError::Failure(format!(
                            "Failed to parse number '{s}': Overflow"
                        )));
                    }
                    i
                }
                _ => return Err(unsupported(v, to)),
            };
            if to == Target::Int {
                match i32::try_from(i) {
                    Ok(i) => Bson::Int32(i),
                    // performCastLongToInt reports no value after the colon.
                    Err(_) => {
                        return Err(ConvertError::Failure(
                            "Conversion would overflow target type: ".to_string(),
                        ));
                    }
                }
            } else {
                Bson::Int64(i)
            }
        }
        Target::String => Bson::String(match v {
            Bson::String(s) => s.clone(),
            Bson::Double(d) => format_double(*d),
            Bson::Int32(i) => i.to_string(),
            Bson::Int64(i) => i.to_string(),
            Bson::Boolean(b) => b.to_string(),
            Bson::ObjectId(o) => o.to_hex(),
            Bson::DateTime(d) => format_date(d.timestamp_millis(), DEFAULT_DATE_FORMAT, 0)?,
            _ => return Err(unsupported(v, to)),
        }),
        Target::ObjectId => match v {
            Bson::ObjectId(o) => Bson::ObjectId(*o),
            Bson::String(s) => {
                if s.len() != 24 {
                    return Err(ConvertError::Failure(format!(
                        "Failed to parse objectId '{s}': Invalid string length for parsing to OID, expected 24 but found {}",
                        s.len()
                    )));
                }
                match ObjectId::parse_str(s) {
                    Ok(o) => Bson::ObjectId(o),
                    Err(_) => {
                        return Err(ConvertError::Failure(format!(
                            "Failed to parse objectId '{s}': Invalid character found in hex string"
                        )));
                    }
                }
            }
            _ => return Err(unsupported(v, to)),
        },
        Target::Date => {
            let ms = match v {
                Bson::DateTime(d) => d.timestamp_millis(),
                Bson::Int64(i) => *i,
                Bson::Double(d) => double_to_integer(*d, false)?,
                Bson::ObjectId(o) => o.timestamp().timestamp_millis(),
                Bson::Timestamp(t) => t.time as i64 * 1000,
                Bson::String(s) => parse_date_string(s).ok_or_else(|| {
                    ConvertError::Failure(format!(
                        "Error parsing date string '{s}': the string does not match a supported date format"
                    ))
                })?,
                _ => return Err(unsupported(v, to)),
            };
            Bson::DateTime(bson::DateTime::from_millis(ms))
        }
    })
}

/// A double as mongod 7.0 prints it in `$toString` and messages (`str::stream() << double`,
/// which is printf `%g`): six significant digits, `1e+06` style outside [1e-4, 1e6).
fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_string();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{d:.5e}");
    let Some((mantissa, exp)) = sci.split_once('e') else {
        return d.to_string();
    };
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if (-4..6).contains(&exp) {
        trim(&format!("{d:.*}", (5 - exp) as usize))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    }
}

// ---------------------------------------------------------------------------------------
// Dates (manual: "$dateToString (aggregation)", format specifiers)

const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S.%LZ";
const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn iso_weeks_in_year(y: i64) -> i64 {
    let p = |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if p(y) == 4 || p(y - 1) == 3 { 53 } else { 52 }
}

fn validate_date_format(format: &str) -> Result<()> {
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        match chars.next() {
            None => return Err(loc(18535, "Unmatched '%' at end of format string")),
            Some(
                'd' | 'G' | 'H' | 'j' | 'L' | 'm' | 'M' | 'S' | 'w' | 'u' | 'U' | 'V' | 'Y' | 'z'
                | 'Z' | '%',
            ) => {}
            Some(other) => {
                return Err(loc(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
        }
    }
    Ok(())
}

/// A `timezone` argument as an offset in minutes. Only UTC and fixed offsets are known; an
/// Olson name is reported as unrecognized rather than silently treated as UTC.
fn unrecognized_zone(tz: &str) -> CommandError {
    loc(
        40485,
        format!("unrecognized time zone identifier: \"{tz}\""),
    )
}

/// Like [`parse_timezone`], but a name shaped like a zone-database entry
/// (`America/New_York`) is `Ok(None)`: mongod would accept it, and a null date still gives
/// null, but this server cannot place an instant in it, so formatting a real date with it
/// fails with 40485.
fn resolve_timezone(tz: &str) -> Result<Option<i32>> {
    match parse_timezone(tz) {
        Ok(offset) => Ok(Some(offset)),
        Err(_) if looks_like_zone_name(tz) => Ok(None),
        Err(e) => Err(e),
    }
}

fn looks_like_zone_name(tz: &str) -> bool {
    tz.contains('/')
        && tz.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        })
}

fn parse_timezone(tz: &str) -> Result<i32> {
    // The zone database names whose offset is fixed; every other Olson name is rejected.
    const UTC_NAMES: &[&str] = &[
        "UTC",
        "GMT",
        "UCT",
        "GMT0",
        "GMT+0",
        "GMT-0",
        "Greenwich",
        "Universal",
        "Zulu",
        "Etc/UTC",
        "Etc/GMT",
        "Etc/UCT",
        "Etc/GMT0",
        "Etc/GMT+0",
        "Etc/GMT-0",
        "Etc/Greenwich",
        "Etc/Universal",
        "Etc/Zulu",
    ];
    if UTC_NAMES.contains(&tz) {
        return Ok(0);
    }
    let bad = || {
        loc(
            40485,
            format!("unrecognized time zone identifier: \"{tz}\""),
        )
    };
    // Etc/GMT+5 is five hours *behind* UTC (POSIX sign convention).
    if let Some(rest) = tz.strip_prefix("Etc/GMT") {
        let hours: i32 = rest.parse().map_err(|_| bad())?;
        let valid = rest.starts_with(['+', '-'])
            && ((rest.starts_with('+') && hours <= 12) || (rest.starts_with('-') && hours >= -14));
        return if valid { Ok(-hours * 60) } else { Err(bad()) };
    }
    offset_minutes(tz).ok_or_else(bad)
}

/// TimeZoneDatabase::parseUtcOffset: `±HH`, `±HHMM` or `±HH:MM` (minutes are not range
/// checked there either).
fn offset_minutes(spec: &str) -> Option<i32> {
    let b = spec.as_bytes();
    let sign = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = |r: std::ops::Range<usize>| -> Option<i32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (h, m) = match b.len() {
        3 => (digits(1..3)?, 0),
        5 => (digits(1..3)?, digits(3..5)?),
        6 if b[3] == b':' => (digits(1..3)?, digits(4..6)?),
        _ => return None,
    };
    Some(sign * (h * 60 + m))
}

fn coerce_to_date(v: &Bson) -> Result<i64> {
    match v {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        Bson::Timestamp(t) => Ok(t.time as i64 * 1000),
        Bson::ObjectId(o) => Ok(o.timestamp().timestamp_millis()),
        other => Err(loc(
            16006,
            format!("can't convert from BSON type {} to Date", type_name(other)),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TimeUnit {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl TimeUnit {
    fn parse(name: &str) -> Result<TimeUnit> {
        Ok(match name {
            "year" => TimeUnit::Year,
            "quarter" => TimeUnit::Quarter,
            "month" => TimeUnit::Month,
            "week" => TimeUnit::Week,
            "day" => TimeUnit::Day,
            "hour" => TimeUnit::Hour,
            "minute" => TimeUnit::Minute,
            "second" => TimeUnit::Second,
            "millisecond" => TimeUnit::Millisecond,
            _ => {
                return Err(CommandError::failed_to_parse(format!(
                    "unknown time unit value: {name}"
                )));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            TimeUnit::Year => "year",
            TimeUnit::Quarter => "quarter",
            TimeUnit::Month => "month",
            TimeUnit::Week => "week",
            TimeUnit::Day => "day",
            TimeUnit::Hour => "hour",
            TimeUnit::Minute => "minute",
            TimeUnit::Second => "second",
            TimeUnit::Millisecond => "millisecond",
        }
    }
}

/// mongod's `dateAdd` in a fixed-offset zone: calendar units move the local date and clamp the
/// day to the end of the month; smaller units add their length.
fn date_add(ms: i64, unit: TimeUnit, amount: i64, offset_minutes: i32) -> Result<i64> {
    let overflow = || loc(5166406, "dateAdd overflowed");
    if unit == TimeUnit::Millisecond {
        return ms.checked_add(amount).ok_or_else(overflow);
    }
    // isDateAddAmountValid: the amount must roughly fit the range of a date.
    let max_days: i64 = (u64::MAX / MS_PER_DAY as u64 + 1) as i64;
    let max_years = max_days / 365 + 1;
    let limit = match unit {
        TimeUnit::Year => max_years,
        TimeUnit::Quarter => max_years * 4,
        TimeUnit::Month => max_years * 12,
        TimeUnit::Week => max_days / 7,
        TimeUnit::Day => max_days,
        TimeUnit::Hour => max_days * 24,
        TimeUnit::Minute => max_days * 24 * 60,
        _ => max_days * 24 * 60 * 60,
    };
    if !(-limit < amount && amount < limit) {
        return Err(loc(
            5976500,
            format!(
                "invalid dateAdd 'amount' parameter value: {amount} {}",
                unit.name()
            ),
        ));
    }
    let step_ms: Option<i64> = match unit {
        TimeUnit::Week => Some(7 * MS_PER_DAY),
        TimeUnit::Day => Some(MS_PER_DAY),
        TimeUnit::Hour => Some(3_600_000),
        TimeUnit::Minute => Some(60_000),
        TimeUnit::Second => Some(1000),
        _ => None,
    };
    if let Some(step) = step_ms {
        return amount
            .checked_mul(step)
            .and_then(|d| ms.checked_add(d))
            .ok_or_else(overflow);
    }
    let months = match unit {
        TimeUnit::Year => amount.checked_mul(12),
        TimeUnit::Quarter => amount.checked_mul(3),
        _ => Some(amount),
    }
    .ok_or_else(overflow)?;
    let local = ms
        .checked_add(offset_minutes as i64 * 60_000)
        .ok_or_else(overflow)?;
    let days = local.div_euclid(MS_PER_DAY);
    let in_day = local.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let total = (y * 12 + (m - 1))
        .checked_add(months)
        .ok_or_else(overflow)?;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let nd = d.min(days_in_month(ny, nm));
    days_from_civil(ny, nm, nd)
        .checked_mul(MS_PER_DAY)
        .and_then(|v| v.checked_add(in_day))
        .and_then(|v| v.checked_sub(offset_minutes as i64 * 60_000))
        .ok_or_else(overflow)
}

/// parseDayOfWeek: full or three-letter English names, any case; 0 = Sunday.
fn day_of_week_index(op: &str, v: &Bson) -> Result<i64> {
    let Bson::String(s) = v else {
        return Err(loc(
            5439015,
            format!(
                "{op} requires 'startOfWeek' to be a string, but got {}",
                type_name(v)
            ),
        ));
    };
    const DAYS: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == lower || d[..3] == lower)
        .map(|i| i as i64)
        .ok_or_else(|| {
            loc(
                5439016,
                format!(
                    "{op} parameter 'startOfWeek' value cannot be recognized as a day of a week: {s}"
                ),
            )
        })
}

/// mongod's `truncateDate` in a fixed-offset zone: bins of `bin` units aligned to
/// 2000-01-01T00:00 local time (for weeks, to the first `week_start` day on or after it).
fn truncate_date(
    ms: i64,
    unit: TimeUnit,
    bin: i64,
    offset_minutes: i32,
    week_start: i64,
) -> Result<i64> {
    let overflow = || CommandError::new(OVERFLOW, "date overflow in $dateTrunc");
    let shift = offset_minutes as i64 * 60_000;
    let local = ms.checked_add(shift).ok_or_else(overflow)?;
    let reference_day = days_from_civil(2000, 1, 1);
    let local_out = match unit {
        TimeUnit::Year | TimeUnit::Quarter | TimeUnit::Month => {
            let per = match unit {
                TimeUnit::Year => 12,
                TimeUnit::Quarter => 3,
                _ => 1,
            };
            let span = bin.checked_mul(per).ok_or_else(overflow)?;
            let (y, m, _) = civil_from_days(local.div_euclid(MS_PER_DAY));
            let months = (y - 2000) * 12 + (m - 1);
            let start = months.div_euclid(span) * span;
            let (ny, nm) = (2000 + start.div_euclid(12), start.rem_euclid(12) + 1);
            days_from_civil(ny, nm, 1)
                .checked_mul(MS_PER_DAY)
                .ok_or_else(overflow)?
        }
        _ => {
            let unit_ms = match unit {
                TimeUnit::Week => 7 * MS_PER_DAY,
                TimeUnit::Day => MS_PER_DAY,
                TimeUnit::Hour => 3_600_000,
                TimeUnit::Minute => 60_000,
                TimeUnit::Second => 1000,
                _ => 1,
            };
            let mut reference = reference_day;
            if unit == TimeUnit::Week {
                // 2000-01-01 was a Saturday (weekday 6 counting from Sunday).
                reference += (week_start - 6).rem_euclid(7);
            }
            let reference = reference * MS_PER_DAY;
            let span = bin.checked_mul(unit_ms).ok_or_else(overflow)?;
            let delta = (local as i128 - reference as i128).div_euclid(span as i128) * span as i128;
            i64::try_from(reference as i128 + delta).map_err(|_| overflow())?
        }
    };
    local_out.checked_sub(shift).ok_or_else(overflow)
}

/// mongod's `dateDiff` in a fixed-offset zone: the number of `unit` boundaries crossed between
/// the two instants' local times (weeks begin on `week_start`, 0 = Sunday).
fn date_diff(
    start: i64,
    end: i64,
    unit: TimeUnit,
    offset_minutes: i32,
    week_start: i64,
) -> Result<i64> {
    if unit == TimeUnit::Millisecond {
        return end
            .checked_sub(start)
            .ok_or_else(|| loc(5166308, "dateDiff overflowed"));
    }
    let shift = offset_minutes as i64 * 60_000;
    let (ls, le) = (start.saturating_add(shift), end.saturating_add(shift));
    let floor_diff = |unit_ms: i64| le.div_euclid(unit_ms) - ls.div_euclid(unit_ms);
    let (a, b) = (
        DateParts::new(start, offset_minutes),
        DateParts::new(end, offset_minutes),
    );
    Ok(match unit {
        TimeUnit::Year => b.year - a.year,
        TimeUnit::Quarter => (b.month - 1) / 3 - (a.month - 1) / 3 + (b.year - a.year) * 4,
        TimeUnit::Month => b.month - a.month + (b.year - a.year) * 12,
        TimeUnit::Week => {
            // Days since the epoch shifted so that weeks start on `week_start`; the epoch
            // (1970-01-01) was a Thursday.
            let week_of =
                |local: i64| (local.div_euclid(MS_PER_DAY) + 4 - week_start).div_euclid(7);
            week_of(le) - week_of(ls)
        }
        TimeUnit::Day => floor_diff(MS_PER_DAY),
        TimeUnit::Hour => floor_diff(3_600_000),
        TimeUnit::Minute => floor_diff(60_000),
        _ => floor_diff(1000),
    })
}

/// The calendar fields of an instant in a fixed-offset zone.
struct DateParts {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    milli: i64,
    /// 0 = Sunday.
    weekday_sun0: i64,
    /// 0-based day of the year.
    yday0: i64,
    /// 1 = Monday ... 7 = Sunday.
    iso_wday: i64,
    iso_year: i64,
    iso_week: i64,
}

impl DateParts {
    fn new(ms: i64, offset_minutes: i32) -> Self {
        let local = ms.saturating_add(offset_minutes as i64 * 60_000);
        let days = local.div_euclid(MS_PER_DAY);
        let in_day = local.rem_euclid(MS_PER_DAY);
        let (year, month, day) = civil_from_days(days);
        let weekday_sun0 = (days + 4).rem_euclid(7);
        let yday0 = days - days_from_civil(year, 1, 1);
        let iso_wday = (weekday_sun0 + 6) % 7 + 1;
        let mut iso_year = year;
        let mut iso_week = (yday0 + 1 - iso_wday + 10) / 7;
        if iso_week < 1 {
            iso_year = year - 1;
            iso_week = iso_weeks_in_year(iso_year);
        } else if iso_week > iso_weeks_in_year(year) {
            iso_year = year + 1;
            iso_week = 1;
        }
        DateParts {
            year,
            month,
            day,
            hour: in_day / 3_600_000,
            minute: in_day / 60_000 % 60,
            second: in_day / 1000 % 60,
            milli: in_day % 1000,
            weekday_sun0,
            yday0,
            iso_wday,
            iso_year,
            iso_week,
        }
    }

    /// TimeZone::week: weeks start on Sunday; days before the first Sunday are week 0.
    fn week(&self) -> i64 {
        (self.yday0 + 7 - self.weekday_sun0) / 7
    }
}

fn format_date(ms: i64, format: &str, offset_minutes: i32) -> Result<String> {
    let p = DateParts::new(ms, offset_minutes);
    let DateParts {
        year: y,
        month: m,
        day: d,
        hour,
        minute,
        second,
        milli,
        weekday_sun0,
        yday0,
        iso_wday,
        iso_year,
        iso_week,
    } = p;
    let out_of_range = |year: i64| {
        loc(
            18537,
            format!(
                "Could not convert date to string: date component was outside the supported range of 0-9999: {year}"
            ),
        )
    };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(loc(18535, "Unmatched '%' at end of format string"));
        };
        match spec {
            'Y' => {
                if !(0..=9999).contains(&y) {
                    return Err(out_of_range(y));
                }
                out.push_str(&format!("{y:04}"));
            }
            'G' => {
                if !(0..=9999).contains(&iso_year) {
                    return Err(out_of_range(iso_year));
                }
                out.push_str(&format!("{iso_year:04}"));
            }
            'm' => out.push_str(&format!("{m:02}")),
            'd' => out.push_str(&format!("{d:02}")),
            'H' => out.push_str(&format!("{hour:02}")),
            'M' => out.push_str(&format!("{minute:02}")),
            'S' => out.push_str(&format!("{second:02}")),
            'L' => out.push_str(&format!("{milli:03}")),
            'j' => out.push_str(&format!("{:03}", yday0 + 1)),
            'w' => out.push_str(&(weekday_sun0 + 1).to_string()),
            'u' => out.push_str(&iso_wday.to_string()),
            'U' => out.push_str(&format!("{:02}", p.week())),
            'V' => out.push_str(&format!("{iso_week:02}")),
            'z' => {
                let sign = if offset_minutes < 0 { '-' } else { '+' };
                let a = offset_minutes.abs();
                out.push_str(&format!("{sign}{:02}{:02}", a / 60, a % 60));
            }
            'Z' => out.push_str(&offset_minutes.to_string()),
            '%' => out.push('%'),
            other => {
                return Err(loc(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
        }
    }
    Ok(out)
}

/// ISO-8601 style date strings as `$toDate` accepts them: `YYYY-MM-DD`, optionally followed
/// by `THH:MM[:SS[.fff]]` (or a space) and `Z` or a `±HH[:]MM` offset.
fn parse_date_string(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let y = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let (mo, d) = (num(5, 2)?, num(8, 2)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * MS_PER_DAY;
    let mut i = 10;
    if i == b.len() {
        return Some(ms);
    }
    if !matches!(b[i], b'T' | b' ') {
        return None;
    }
    i += 1;
    let h = num(i, 2)?;
    if b.get(i + 2) != Some(&b':') {
        return None;
    }
    let mi = num(i + 3, 2)?;
    i += 5;
    let mut sec = 0;
    let mut milli = 0;
    if b.get(i) == Some(&b':') {
        sec = num(i + 1, 2)?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            let frac = &s[start..end.min(start + 3)];
            milli = format!("{frac:0<3}").parse::<i64>().ok()?;
            i = end;
        }
    }
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    ms += h * 3_600_000 + mi * 60_000 + sec * 1000 + milli;
    match b.get(i) {
        None => Some(ms),
        Some(b'Z') if i + 1 == b.len() => Some(ms),
        Some(b'+' | b'-') => {
            let offset = offset_minutes(&s[i..])?;
            Some(ms - offset as i64 * 60_000)
        }
        _ => None,
    }
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Timestamp, bson, doc};

    fn vars() -> Variables {
        Variables::new(
            bson::DateTime::from_millis(1_700_000_000_000),
            Timestamp {
                time: 1_700_000_000,
                increment: 1,
            },
        )
    }

    fn eval_in(expr: Bson, root: &Document) -> Result<Option<Bson>> {
        Expr::parse(&expr)?.eval(root, &vars())
    }

    fn eval(expr: Bson) -> Option<Bson> {
        eval_in(expr.clone(), &doc! {}).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    fn value(expr: Bson) -> Bson {
        eval(expr.clone()).unwrap_or_else(|| panic!("{expr} was missing"))
    }

    fn error(expr: Bson) -> CommandError {
        match eval_in(expr.clone(), &doc! {}) {
            Err(e) => e,
            Ok(v) => panic!("{expr} succeeded with {v:?}"),
        }
    }

    fn parse_error(expr: Bson) -> CommandError {
        match Expr::parse(&expr) {
            Err(e) => e,
            Ok(_) => panic!("{expr} parsed"),
        }
    }

    #[test]
    fn to_hashed_index_key_is_mongods_hash() {
        // The manual's example ("$toHashedIndexKey").
        assert_eq!(
            value(bson!({"$toHashedIndexKey": "string to hash"})),
            Bson::Int64(763_543_691_661_428_748)
        );
        let root = doc! {"a": 42, "b": 42i64, "c": 42.0, "d": null};
        let hash = |path: &str| {
            eval_in(bson!({"$toHashedIndexKey": path}), &root)
                .unwrap()
                .unwrap()
        };
        // Numbers that compare equal hash the same, whatever their type.
        assert_eq!(hash("$a"), Bson::Int64(-944_302_157_085_130_861));
        assert_eq!(hash("$b"), hash("$a"));
        assert_eq!(hash("$c"), hash("$a"));
        // A missing value hashes as null, as a hashed index stores it.
        assert_eq!(hash("$missing"), hash("$d"));
        assert_eq!(
            parse_error(bson!({"$toHashedIndexKey": [1, 2]})).code,
            16020
        );
        // The partition test of a hashed value: $mod keeps the dividend's sign.
        let m = eval_in(bson!({"$mod": [{"$toHashedIndexKey": "$a"}, 3]}), &root)
            .unwrap()
            .unwrap();
        assert_eq!(m, Bson::Int64(-944_302_157_085_130_861i64 % 3));
    }

    fn date(ms: i64) -> Bson {
        Bson::DateTime(bson::DateTime::from_millis(ms))
    }

    #[test]
    fn literals_and_literal_operator() {
        assert_eq!(value(bson!(5)), bson!(5));
        assert_eq!(value(bson!("abc")), bson!("abc"));
        assert_eq!(value(bson!({"$literal": "$a"})), bson!("$a"));
        assert_eq!(value(bson!({"$literal": [1, 2]})), bson!([1, 2]));
    }

    #[test]
    fn field_paths_traverse_arrays_of_documents() {
        let root = doc! {"a": {"b": 1}, "arr": [{"x": 1}, {"y": 2}, {"x": 3}, 7, [{"x": 9}]]};
        assert_eq!(eval_in(bson!("$a.b"), &root).unwrap(), Some(bson!(1)));
        assert_eq!(eval_in(bson!("$a.c"), &root).unwrap(), None);
        assert_eq!(eval_in(bson!("$a.b.c"), &root).unwrap(), None);
        // Non-documents (including nested arrays) are skipped; numeric parts are field names.
        assert_eq!(
            eval_in(bson!("$arr.x"), &root).unwrap(),
            Some(bson!([1, 3]))
        );
        assert_eq!(eval_in(bson!("$arr.0"), &root).unwrap(), Some(bson!([])));
        let nested = doc! {"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": {"c": 3}}]};
        assert_eq!(
            eval_in(bson!("$a.b.c"), &nested).unwrap(),
            Some(bson!([[1, 2], 3]))
        );
    }

    #[test]
    fn variables() {
        let root = doc! {"a": 1, "d": {"e": 2}};
        assert_eq!(
            eval_in(bson!("$$ROOT"), &root).unwrap(),
            Some(Bson::Document(root.clone()))
        );
        assert_eq!(
            eval_in(bson!("$$CURRENT.a"), &root).unwrap(),
            Some(bson!(1))
        );
        assert_eq!(eval_in(bson!("$$ROOT.d.e"), &root).unwrap(), Some(bson!(2)));
        assert_eq!(eval(bson!("$$REMOVE")), None);
        assert_eq!(value(bson!("$$NOW")), date(1_700_000_000_000));
        assert_eq!(
            value(bson!("$$CLUSTER_TIME")),
            Bson::Timestamp(Timestamp {
                time: 1_700_000_000,
                increment: 1
            })
        );
        let e = error(bson!("$$x"));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (17276, "Use of undefined variable: x")
        );
        assert_eq!(parse_error(bson!("$$FOO")).code, 17276);
        assert_eq!(parse_error(bson!("$$")).code, 16869);
        assert_eq!(parse_error(bson!("$$1a")).code, 16870);
        let v = vars()
            .with_let(&doc! {"x": {"a": [{"b": 5}]}, "y": {"$add": [1, 2]}})
            .unwrap();
        let e = Expr::parse(&bson!(["$$x.a.b", "$$y"])).unwrap();
        assert_eq!(e.eval(&doc! {}, &v).unwrap(), Some(bson!([[5], 3])));
        assert_eq!(vars().with_let(&doc! {"Bad": 1}).unwrap_err().code, 16867);
    }

    #[test]
    fn object_and_array_expressions_handle_missing() {
        let root = doc! {"a": 1};
        assert_eq!(
            eval_in(
                bson!({"x": "$a", "y": "$nope", "z": {"w": "$$REMOVE"}}),
                &root
            )
            .unwrap(),
            Some(bson!({"x": 1, "z": {}}))
        );
        assert_eq!(
            eval_in(bson!(["$a", "$nope"]), &root).unwrap(),
            Some(bson!([1, null]))
        );
    }

    #[test]
    fn parse_errors_match_mongod() {
        let e = parse_error(bson!({"$foo": 1}));
        assert_eq!(
            (e.code, e.code_name.as_str()),
            (168, "InvalidPipelineOperator")
        );
        assert_eq!(e.errmsg, "Unrecognized expression '$foo'");
        let e = parse_error(bson!({"$subtract": [1]}));
        assert_eq!(e.code, 16020);
        assert_eq!(
            e.errmsg,
            "Expression $subtract takes exactly 2 arguments. 1 were passed in."
        );
        assert_eq!(parse_error(bson!({"$add": [1], "b": 1})).code, 15983);
        let e = parse_error(bson!({"a": 1, "$b": 1}));
        assert_eq!(e.code, 16410);
        assert!(
            e.errmsg
                .starts_with("FieldPath field names may not start with '$'")
        );
        assert_eq!(parse_error(bson!("$")).code, 16872);
        assert_eq!(parse_error(bson!("$a..b")).code, 15998);
        assert_eq!(parse_error(bson!("$a.$b")).code, 16410);
        assert_eq!(parse_error(bson!({"$round": [1, 2, 3]})).code, 28667);
        assert_eq!(parse_error(bson!({"$ifNull": ["$a"]})).code, 1257300);
        assert_eq!(parse_error(bson!({"$isArray": [1, 2]})).code, 16020);
        // Unimplemented operators fail at parse time, even nested and never evaluated.
        assert_eq!(
            parse_error(bson!({"$cond": [true, 1, {"$dateFromString": {}}]})).code,
            168
        );
        assert_eq!(parse_error(bson!({"$toDecimal": 1})).code, 115);
    }

    #[test]
    fn add_promotes_and_handles_dates() {
        assert_eq!(value(bson!({"$add": [1, 2]})), bson!(3));
        assert_eq!(
            value(bson!({"$add": [i32::MAX, 1]})),
            Bson::Int64(2_147_483_648)
        );
        assert_eq!(value(bson!({"$add": [1, 2_i64]})), Bson::Int64(3));
        assert_eq!(
            value(bson!({"$add": [i64::MAX, 1_i64]})),
            Bson::Double(i64::MAX as f64 + 1.0)
        );
        assert_eq!(value(bson!({"$add": [1, 0.5]})), bson!(1.5));
        assert_eq!(value(bson!({"$add": [1, null]})), Bson::Null);
        assert_eq!(value(bson!({"$add": [1, "$missing"]})), Bson::Null);
        assert_eq!(value(bson!({"$add": []})), bson!(0));
        assert_eq!(value(bson!({"$add": [date(1000), 500]})), date(1500));
        assert_eq!(value(bson!({"$add": [date(1000), 1.6]})), date(1002));
        let e = error(bson!({"$add": [date(1), date(2)]}));
        assert_eq!(e.code, 16612);
        assert_eq!(e.errmsg, "only one date allowed in an $add expression");
        let e = error(bson!({"$add": [1, "a"]}));
        assert_eq!((e.code, e.code_name.as_str()), (14, "TypeMismatch"));
        assert_eq!(
            e.errmsg,
            "$add only supports numeric or date types, not string"
        );
    }

    #[test]
    fn subtract_multiply_divide_mod() {
        assert_eq!(value(bson!({"$subtract": [5, 3]})), bson!(2));
        assert_eq!(
            value(bson!({"$subtract": [i32::MIN, 1]})),
            Bson::Int64(i32::MIN as i64 - 1)
        );
        assert_eq!(value(bson!({"$subtract": [5, 0.5]})), bson!(4.5));
        assert_eq!(
            value(bson!({"$subtract": [date(5000), date(1000)]})),
            Bson::Int64(4000)
        );
        assert_eq!(value(bson!({"$subtract": [date(5000), 1000]})), date(4000));
        assert_eq!(value(bson!({"$subtract": [null, 1]})), Bson::Null);
        let e = error(bson!({"$subtract": [1, date(0)]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (14, "can't $subtract date from int")
        );
        assert_eq!(error(bson!({"$subtract": ["a", 1]})).code, 14);

        assert_eq!(value(bson!({"$multiply": [2, 3]})), bson!(6));
        assert_eq!(
            value(bson!({"$multiply": [i32::MAX, 2]})),
            Bson::Int64(i32::MAX as i64 * 2)
        );
        assert_eq!(
            value(bson!({"$multiply": [i64::MAX, 2_i64]})),
            Bson::Double(i64::MAX as f64 * 2.0)
        );
        assert_eq!(value(bson!({"$multiply": [2, 1.5]})), bson!(3.0));
        assert_eq!(value(bson!({"$multiply": [2, "$missing"]})), Bson::Null);
        assert_eq!(error(bson!({"$multiply": [2, "x"]})).code, 14);

        assert_eq!(value(bson!({"$divide": [6, 3]})), bson!(2.0));
        assert_eq!(value(bson!({"$divide": [null, 3]})), Bson::Null);
        let e = error(bson!({"$divide": [1, 0]}));
        assert_eq!((e.code, e.errmsg.as_str()), (2, "can't $divide by zero"));
        assert_eq!(error(bson!({"$divide": ["a", 1]})).code, 14);

        assert_eq!(value(bson!({"$mod": [7, 3]})), bson!(1));
        assert_eq!(value(bson!({"$mod": [-7, 3]})), bson!(-1));
        assert_eq!(value(bson!({"$mod": [7_i64, 3]})), Bson::Int64(1));
        assert_eq!(value(bson!({"$mod": [7.5, 2]})), bson!(1.5));
        let e = error(bson!({"$mod": [1, 0]}));
        assert_eq!((e.code, e.errmsg.as_str()), (16610, "can't $mod by zero"));
        assert_eq!(value(bson!({"$mod": [7, 2.0]})), bson!(1));
        assert_eq!(value(bson!({"$mod": [7, 2.5]})), bson!(2.0));
        let e = error(bson!({"$mod": [1, "a"]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                16611,
                "$mod only supports numeric types, not int and string"
            )
        );
    }

    #[test]
    fn abs_floor_ceil_round_trunc() {
        assert_eq!(value(bson!({"$abs": -3})), bson!(3));
        assert_eq!(value(bson!({"$abs": i32::MIN})), Bson::Int64(2_147_483_648));
        assert_eq!(value(bson!({"$abs": null})), Bson::Null);
        assert_eq!(error(bson!({"$abs": i64::MIN})).code, 28680);
        assert_eq!(error(bson!({"$abs": "x"})).code, 28765);
        assert_eq!(value(bson!({"$floor": -1.5})), bson!(-2.0));
        assert_eq!(value(bson!({"$ceil": 1.2})), bson!(2.0));
        assert_eq!(value(bson!({"$floor": 3})), bson!(3));
        assert_eq!(value(bson!({"$round": 2.5})), bson!(2.0));
        assert_eq!(value(bson!({"$round": 3.5})), bson!(4.0));
        assert_eq!(value(bson!({"$round": [1.45, 1]})), bson!(1.4));
        assert_eq!(value(bson!({"$round": [1.55, 1]})), bson!(1.6));
        assert_eq!(value(bson!({"$round": [1234, -2]})), bson!(1200));
        assert_eq!(value(bson!({"$round": [1250, -2]})), bson!(1200));
        assert_eq!(value(bson!({"$round": [9.99, 1]})), bson!(10.0));
        assert_eq!(value(bson!({"$trunc": [-1.99, 1]})), bson!(-1.9));
        assert_eq!(value(bson!({"$trunc": 7.9})), bson!(7.0));
        assert_eq!(value(bson!({"$round": [null, 1]})), Bson::Null);
        assert_eq!(error(bson!({"$round": [1.5, 101]})).code, 51083);
        assert_eq!(error(bson!({"$round": [1.5, 1.5]})).code, 51082);
        assert_eq!(error(bson!({"$trunc": ["a"]})).code, 51081);
        assert_eq!(value(bson!({"$round": [1.5, "$missing"]})), Bson::Null);
        assert_eq!(value(bson!({"$round": [2_i64, -1]})), Bson::Int64(0));
        assert_eq!(value(bson!({"$round": [15, -1]})), bson!(20));
        assert_eq!(value(bson!({"$round": [0.125, 2]})), bson!(0.12));
        assert_eq!(value(bson!({"$round": [-2.5]})), bson!(-2.0));
    }

    #[test]
    fn strings() {
        assert_eq!(value(bson!({"$concat": ["a", "b"]})), bson!("ab"));
        assert_eq!(value(bson!({"$concat": ["a", null]})), Bson::Null);
        assert_eq!(value(bson!({"$concat": ["a", "$missing"]})), Bson::Null);
        let e = error(bson!({"$concat": ["a", 1]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (16702, "$concat only supports strings, not int")
        );
        assert_eq!(value(bson!({"$toLower": "AbC"})), bson!("abc"));
        assert_eq!(value(bson!({"$toUpper": 1})), bson!("1"));
        assert_eq!(value(bson!({"$toUpper": null})), bson!(""));
        assert_eq!(error(bson!({"$toLower": [[1]]})).code, 16007);
        assert_eq!(value(bson!({"$strLenBytes": "héllo"})), bson!(6));
        assert_eq!(error(bson!({"$strLenBytes": 1})).code, 34473);
        assert_eq!(
            value(bson!({"$split": ["a,b,,c", ","]})),
            bson!(["a", "b", "", "c"])
        );
        assert_eq!(value(bson!({"$split": [null, ","]})), Bson::Null);
        assert_eq!(error(bson!({"$split": [1, ","]})).code, 40085);
        assert_eq!(error(bson!({"$split": ["a", 1]})).code, 40086);
        assert_eq!(error(bson!({"$split": ["a", ""]})).code, 40087);
        assert_eq!(
            value(bson!({"$substrBytes": ["hello", 1, 3]})),
            bson!("ell")
        );
        assert_eq!(
            value(bson!({"$substrBytes": ["hello", 2, -1]})),
            bson!("llo")
        );
        assert_eq!(value(bson!({"$substrBytes": [null, 0, 1]})), bson!(""));
        assert_eq!(error(bson!({"$substrBytes": ["é", 1, 1]})).code, 28656);
        assert_eq!(error(bson!({"$substrBytes": ["é", 0, 1]})).code, 28657);
        assert_eq!(error(bson!({"$substrBytes": ["a", "x", 1]})).code, 16034);
    }

    #[test]
    fn conversions() {
        assert_eq!(value(bson!({"$toString": 1.5})), bson!("1.5"));
        assert_eq!(value(bson!({"$toString": 2.0})), bson!("2"));
        assert_eq!(value(bson!({"$toString": 1e20})), bson!("1e+20"));
        assert_eq!(value(bson!({"$toString": 0.0001})), bson!("0.0001"));
        assert_eq!(value(bson!({"$toString": 0.00001})), bson!("1e-05"));
        assert_eq!(value(bson!({"$toString": true})), bson!("true"));
        assert_eq!(
            value(bson!({"$toString": date(0)})),
            bson!("1970-01-01T00:00:00.000Z")
        );
        let oid = ObjectId::parse_str("5f1d7a3e9d1b2c3d4e5f6a7b").unwrap();
        assert_eq!(
            value(bson!({"$toString": oid})),
            bson!("5f1d7a3e9d1b2c3d4e5f6a7b")
        );
        assert_eq!(
            value(bson!({"$toObjectId": "5f1d7a3e9d1b2c3d4e5f6a7b"})),
            Bson::ObjectId(oid)
        );
        assert_eq!(error(bson!({"$toObjectId": "abc"})).code, 241);
        assert_eq!(value(bson!({"$toString": null})), Bson::Null);
        assert_eq!(value(bson!({"$toInt": "42"})), bson!(42));
        assert_eq!(value(bson!({"$toInt": 4.9})), bson!(4));
        assert_eq!(value(bson!({"$toInt": true})), bson!(1));
        assert_eq!(value(bson!({"$toLong": "-42"})), Bson::Int64(-42));
        assert_eq!(value(bson!({"$toLong": date(7)})), Bson::Int64(7));
        assert_eq!(value(bson!({"$toDouble": "1.5e3"})), bson!(1500.0));
        assert_eq!(value(bson!({"$toDouble": "$missing"})), Bson::Null);
        assert_eq!(value(bson!({"$toBool": 0})), bson!(false));
        assert_eq!(value(bson!({"$toBool": ""})), bson!(true));
        assert_eq!(value(bson!({"$toDate": 86_400_000_i64})), date(86_400_000));
        assert_eq!(
            value(bson!({"$toDate": "2024-02-29T12:30:00.5Z"})),
            date(1_709_209_800_500)
        );
        assert_eq!(
            value(bson!({"$toDate": "2024-02-29T12:30:00+01:00"})),
            date(1_709_206_200_000)
        );
        assert_eq!(
            value(bson!({"$toDate": "2024-02-29"})),
            date(1_709_164_800_000)
        );
        assert_eq!(error(bson!({"$toDate": "2023-02-29"})).code, 241);
        assert_eq!(error(bson!({"$toDate": 5})).code, 241);

        let e = error(bson!({"$toInt": "abc"}));
        assert_eq!((e.code, e.code_name.as_str()), (241, "ConversionFailure"));
        assert!(
            e.errmsg
                .starts_with("Failed to parse number 'abc' in $convert with no onError value: "),
            "{}",
            e.errmsg
        );
        assert_eq!(error(bson!({"$toInt": 1e10})).code, 241);
        assert_eq!(error(bson!({"$toInt": f64::NAN})).code, 241);
        assert_eq!(error(bson!({"$toInt": 3_000_000_000_i64})).code, 241);
        assert_eq!(error(bson!({"$toInt": "99999999999"})).code, 241);
        assert_eq!(error(bson!({"$toInt": date(0)})).code, 241);
        let e = error(bson!({"$toString": {"a": 1}}));
        assert_eq!(
            e.errmsg,
            "Unsupported conversion from object to string in $convert with no onError value"
        );
    }

    #[test]
    fn convert_with_on_error_and_on_null() {
        assert_eq!(
            value(bson!({"$convert": {"input": "12", "to": "int"}})),
            bson!(12)
        );
        assert_eq!(
            value(bson!({"$convert": {"input": "12", "to": 18}})),
            Bson::Int64(12)
        );
        assert_eq!(
            value(bson!({"$convert": {"input": "x", "to": "int", "onError": "bad"}})),
            bson!("bad")
        );
        assert_eq!(
            value(bson!({"$convert": {"input": null, "to": "int", "onNull": -1}})),
            bson!(-1)
        );
        assert_eq!(
            value(bson!({"$convert": {"input": "$missing", "to": "int"}})),
            Bson::Null
        );
        assert_eq!(
            eval(bson!({"$convert": {"input": null, "to": "int", "onNull": "$$REMOVE"}})),
            None
        );
        assert_eq!(
            error(bson!({"$convert": {"input": 1, "to": "int", "x": 1}})).code,
            9
        );
        assert_eq!(error(bson!({"$convert": {"input": 1}})).code, 9);
        // onError does not cover a bad 'to'.
        let e = error(bson!({"$convert": {"input": 1, "to": "nope", "onError": 0}}));
        assert_eq!((e.code, e.errmsg.as_str()), (2, "Unknown type name: nope"));
        assert_eq!(
            parse_error(bson!({"$convert": {"input": 1, "to": "decimal"}})).code,
            115
        );
        assert_eq!(
            error(bson!({"$convert": {"input": 1, "to": "object"}})).code,
            241
        );
    }

    #[test]
    fn conditionals() {
        assert_eq!(value(bson!({"$ifNull": ["$missing", null, 3]})), bson!(3));
        assert_eq!(value(bson!({"$ifNull": [0, 3]})), bson!(0));
        assert_eq!(eval(bson!({"$ifNull": [null, "$missing"]})), None);
        // Only the chosen branch is evaluated...
        let root = doc! {"z": 0};
        let lazy = bson!({"$cond": [true, 1, {"$divide": [1, "$z"]}]});
        assert_eq!(eval_in(lazy, &root).unwrap(), Some(bson!(1)));
        // ...but constant operands are folded at parse time, as mongod's optimize() does.
        let e = parse_error(bson!({"$cond": [true, 1, {"$divide": [1, 0]}]}));
        assert_eq!(e.code, 2);
        assert_eq!(parse_error(bson!({"$add": [1, "a"]})).code, 14);
        assert_eq!(
            value(bson!({"$cond": {"if": 0, "then": 1, "else": 2}})),
            bson!(2)
        );
        assert_eq!(
            value(bson!({"$cond": {"if": [], "then": 1, "else": 2}})),
            bson!(1)
        );
        assert_eq!(
            parse_error(bson!({"$cond": {"if": 0, "then": 1}})).code,
            17082
        );
        assert_eq!(
            parse_error(bson!({"$cond": {"if": 0, "then": 1, "else": 2, "x": 1}})).code,
            17083
        );
        let sw = bson!({"$switch": {"branches": [
            {"case": {"$gt": ["$a", 5]}, "then": "big"},
            {"case": {"$gt": ["$a", 1]}, "then": "mid"}
        ], "default": "small"}});
        assert_eq!(
            eval_in(sw.clone(), &doc! {"a": 3}).unwrap(),
            Some(bson!("mid"))
        );
        assert_eq!(eval_in(sw, &doc! {"a": 0}).unwrap(), Some(bson!("small")));
        let nodefault = bson!({"$switch": {"branches": [{"case": "$nope", "then": 1}]}});
        assert_eq!(error(nodefault).code, 40066);
        let all_false = bson!({"$switch": {"branches": [{"case": false, "then": 1}]}});
        assert_eq!(parse_error(all_false).code, 40069);
        let const_true = bson!({"$switch": {"branches": [
            {"case": "$nope", "then": 1}, {"case": true, "then": 2}, {"case": "$x", "then": 3}
        ]}});
        assert_eq!(value(const_true), bson!(2));
        assert_eq!(
            parse_error(bson!({"$switch": {"branches": []}})).code,
            40068
        );
        assert_eq!(
            parse_error(bson!({"$switch": {"branches": [{"case": 1}]}})).code,
            40065
        );
    }

    #[test]
    fn comparisons_distinguish_missing_from_null() {
        assert_eq!(value(bson!({"$eq": [1, 1.0]})), bson!(true));
        assert_eq!(value(bson!({"$eq": ["$missing", null]})), bson!(false));
        assert_eq!(value(bson!({"$lt": ["$missing", null]})), bson!(true));
        assert_eq!(value(bson!({"$eq": [[1, 2], [1, 2]]})), bson!(true));
        // No array expansion: [1, 2] is an array, greater than any number.
        assert_eq!(value(bson!({"$gt": [[1, 2], 5]})), bson!(true));
        assert_eq!(value(bson!({"$gte": ["b", "a"]})), bson!(true));
        assert_eq!(value(bson!({"$lte": [null, 0]})), bson!(true));
        assert_eq!(value(bson!({"$ne": [1, "1"]})), bson!(true));
        assert_eq!(value(bson!({"$cmp": [2, 1]})), bson!(1));
        assert_eq!(value(bson!({"$cmp": ["a", "b"]})), bson!(-1));
    }

    #[test]
    fn booleans_and_in() {
        assert_eq!(value(bson!({"$and": [1, true]})), bson!(true));
        assert_eq!(value(bson!({"$and": [1, "$missing"]})), bson!(false));
        assert_eq!(value(bson!({"$and": []})), bson!(true));
        assert_eq!(value(bson!({"$or": [0, null]})), bson!(false));
        assert_eq!(value(bson!({"$or": [0, [] ]})), bson!(true));
        assert_eq!(value(bson!({"$not": [0]})), bson!(true));
        assert_eq!(value(bson!({"$in": [2, [1, 2.0]]})), bson!(true));
        assert_eq!(value(bson!({"$in": [[1], [1, [1]]]})), bson!(true));
        assert_eq!(value(bson!({"$in": [3, [1, 2]]})), bson!(false));
        let e = error(bson!({"$in": [1, "$missing"]}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                40081,
                "$in requires an array as a second argument, found: missing"
            )
        );
    }

    #[test]
    fn array_operators() {
        assert_eq!(value(bson!({"$size": [[1, 2, 3]]})), bson!(3));
        let e = error(bson!({"$size": "$missing"}));
        assert_eq!(e.code, 17124);
        assert_eq!(
            e.errmsg,
            "The argument to $size must be an array, but was of type: missing"
        );
        assert_eq!(value(bson!({"$arrayElemAt": [[1, 2, 3], -1]})), bson!(3));
        assert_eq!(eval(bson!({"$arrayElemAt": [[1, 2, 3], 5]})), None);
        assert_eq!(value(bson!({"$arrayElemAt": [null, 0]})), Bson::Null);
        assert_eq!(error(bson!({"$arrayElemAt": ["a", 0]})).code, 28689);
        assert_eq!(error(bson!({"$arrayElemAt": [[1], "a"]})).code, 28690);
        assert_eq!(error(bson!({"$arrayElemAt": [[1], 1.5]})).code, 28691);
        assert_eq!(value(bson!({"$first": [[4, 5]]})), bson!(4));
        assert_eq!(value(bson!({"$last": [[4, 5]]})), bson!(5));
        assert_eq!(eval(bson!({"$first": [[]]})), None);
        assert_eq!(value(bson!({"$first": "$missing"})), Bson::Null);
        assert_eq!(error(bson!({"$last": 1})).code, 28689);
        assert_eq!(
            value(bson!({"$concatArrays": [[1], [2, 3]]})),
            bson!([1, 2, 3])
        );
        assert_eq!(value(bson!({"$concatArrays": [[1], null]})), Bson::Null);
        assert_eq!(error(bson!({"$concatArrays": [[1], 1]})).code, 28664);
        assert_eq!(value(bson!({"$range": [0, 10, 3]})), bson!([0, 3, 6, 9]));
        assert_eq!(value(bson!({"$range": [5, 0, -2]})), bson!([5, 3, 1]));
        assert_eq!(error(bson!({"$range": [0, 5, 0]})).code, 34449);
        assert_eq!(error(bson!({"$range": ["a", 5]})).code, 34443);
        assert_eq!(error(bson!({"$range": [0.5, 5]})).code, 34444);
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], 2]})), bson!([1, 2]));
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], -2]})), bson!([2, 3]));
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], 1, 5]})), bson!([2, 3]));
        assert_eq!(value(bson!({"$slice": [[1, 2, 3], -5, 1]})), bson!([1]));
        assert_eq!(value(bson!({"$slice": [null, 1]})), Bson::Null);
        assert_eq!(error(bson!({"$slice": [[1], 1, 0]})).code, 28729);
        assert_eq!(error(bson!({"$slice": [1, 1]})).code, 28724);
        assert_eq!(value(bson!({"$reverseArray": [[1, 2]]})), bson!([2, 1]));
        assert_eq!(value(bson!({"$reverseArray": null})), Bson::Null);
        assert_eq!(error(bson!({"$reverseArray": 1})).code, 34435);
        assert_eq!(value(bson!({"$indexOfArray": [[1, 2, 3, 2], 2]})), bson!(1));
        assert_eq!(
            value(bson!({"$indexOfArray": [[1, 2, 3, 2], 2, 2]})),
            bson!(3)
        );
        assert_eq!(
            value(bson!({"$indexOfArray": [[1, 2, 3, 2], 2, 0, 1]})),
            bson!(-1)
        );
        assert_eq!(value(bson!({"$indexOfArray": [null, 2]})), Bson::Null);
        assert_eq!(error(bson!({"$indexOfArray": [1, 2]})).code, 40090);
        assert_eq!(error(bson!({"$indexOfArray": [[1], 1, -1]})).code, 40097);
        assert_eq!(value(bson!({"$isArray": [[1]]})), bson!(true));
        assert_eq!(value(bson!({"$isArray": "$missing"})), bson!(false));
        assert_eq!(
            value(bson!({"$sortArray": {"input": [3, 1, 2], "sortBy": -1}})),
            bson!([3, 2, 1])
        );
        assert_eq!(
            value(bson!({"$sortArray": {"input": [{"a": 2}, {"a": 1}], "sortBy": {"a": 1}}})),
            bson!([{"a": 1}, {"a": 2}])
        );
        assert_eq!(
            parse_error(bson!({"$sortArray": {"input": [], "sortBy": 2}})).code,
            2942506
        );
    }

    #[test]
    fn filter_map_reduce_let() {
        let root = doc! {"xs": [1, 2, 3, 4]};
        let f = bson!({"$filter": {"input": "$xs", "as": "x", "cond": {"$gt": ["$$x", 2]}}});
        assert_eq!(eval_in(f, &root).unwrap(), Some(bson!([3, 4])));
        let f = bson!({"$filter": {"input": "$xs", "cond": {"$gt": ["$$this", 1]}, "limit": 2}});
        assert_eq!(eval_in(f, &root).unwrap(), Some(bson!([2, 3])));
        assert_eq!(
            value(bson!({"$filter": {"input": "$missing", "cond": true}})),
            Bson::Null
        );
        assert_eq!(
            error(bson!({"$filter": {"input": 1, "cond": true}})).code,
            28651
        );
        assert_eq!(parse_error(bson!({"$filter": {"input": []}})).code, 28650);
        assert_eq!(
            parse_error(bson!({"$filter": {"input": [], "cond": 1, "x": 1}})).code,
            28647
        );

        let m = bson!({"$map": {"input": "$xs", "as": "x", "in": {"$multiply": ["$$x", 10]}}});
        assert_eq!(eval_in(m, &root).unwrap(), Some(bson!([10, 20, 30, 40])));
        let m = bson!({"$map": {"input": [1], "in": "$$REMOVE"}});
        assert_eq!(value(m), bson!([null]));
        assert_eq!(value(bson!({"$map": {"input": null, "in": 1}})), Bson::Null);
        assert_eq!(error(bson!({"$map": {"input": "a", "in": 1}})).code, 16883);
        assert_eq!(parse_error(bson!({"$map": {"input": []}})).code, 16882);
        assert_eq!(
            parse_error(bson!({"$map": {"input": [], "as": "X", "in": 1}})).code,
            16867
        );

        let r = bson!({"$reduce": {"input": "$xs", "initialValue": 0,
            "in": {"$add": ["$$value", "$$this"]}}});
        assert_eq!(eval_in(r, &root).unwrap(), Some(bson!(10)));
        assert_eq!(
            value(bson!({"$reduce": {"input": null, "initialValue": 0, "in": 1}})),
            Bson::Null
        );
        assert_eq!(
            error(bson!({"$reduce": {"input": 1, "initialValue": 0, "in": 1}})).code,
            40080
        );
        assert_eq!(
            parse_error(bson!({"$reduce": {"input": [], "in": 1}})).code,
            40078
        );

        let l = bson!({"$let": {"vars": {"a": 2, "b": {"$add": [1, 1]}},
            "in": {"$multiply": ["$$a", "$$b"]}}});
        assert_eq!(value(l), bson!(4));
        assert_eq!(parse_error(bson!({"$let": {"vars": {}}})).code, 16877);
        // A variable bound to a missing value is defined and reads as missing.
        let l =
            bson!({"$let": {"vars": {"m": "$nope"}, "in": {"x": "$$m", "y": {"$type": "$$m"}}}});
        assert_eq!(value(l), bson!({"y": "missing"}));
        // The limit is not evaluated for an empty input.
        let f = bson!({"$filter": {"input": [], "cond": true, "limit": "bad"}});
        assert_eq!(value(f), bson!([]));
        let f = bson!({"$filter": {"input": [1], "cond": true, "limit": 0}});
        assert_eq!(error(f).code, 327392);
        let f = bson!({"$filter": {"input": [1], "cond": true, "limit": 1.5}});
        assert_eq!(error(f).code, 327391);
        // CURRENT may be rebound, which moves where "$field" paths start.
        let l = bson!({"$let": {"vars": {"CURRENT": {"a": 7}}, "in": ["$a", "$$ROOT.a"]}});
        assert_eq!(eval_in(l, &doc! {"a": 1}).unwrap(), Some(bson!([7, 1])));
        // A binding does not leak outside its $let.
        let e = error(bson!([{"$let": {"vars": {"a": 1}, "in": "$$a"}}, "$$a"]));
        assert_eq!(e.code, 17276);
    }

    #[test]
    fn objects() {
        assert_eq!(
            value(bson!({"$mergeObjects": [{"a": 1, "b": 1}, null, "$missing", {"b": 2, "c": 3}]})),
            bson!({"a": 1, "b": 2, "c": 3})
        );
        assert_eq!(value(bson!({"$mergeObjects": []})), bson!({}));
        assert_eq!(error(bson!({"$mergeObjects": [{"a": 1}, 5]})).code, 40400);
        assert_eq!(
            value(bson!({"$objectToArray": {"$literal": {"a": 1, "b": 2}}})),
            bson!([{"k": "a", "v": 1}, {"k": "b", "v": 2}])
        );
        assert_eq!(value(bson!({"$objectToArray": null})), Bson::Null);
        assert_eq!(error(bson!({"$objectToArray": 1})).code, 40390);
        assert_eq!(
            value(bson!({"$arrayToObject": [[["a", 1], ["b", 2], ["a", 3]]]})),
            bson!({"a": 3, "b": 2})
        );
        assert_eq!(
            value(bson!({"$arrayToObject": [[{"k": "a", "v": 1}]]})),
            bson!({"a": 1})
        );
        assert_eq!(error(bson!({"$arrayToObject": 1})).code, 40386);
        assert_eq!(error(bson!({"$arrayToObject": [[["a"]]]})).code, 40397);
        assert_eq!(
            error(bson!({"$arrayToObject": [[["a", 1], {"k": "b", "v": 2}]]})).code,
            40396
        );
        let root = doc! {"a.b": 1, "c": {"d": 2}};
        assert_eq!(
            eval_in(bson!({"$getField": "a.b"}), &root).unwrap(),
            Some(bson!(1))
        );
        assert_eq!(
            eval_in(bson!({"$getField": {"field": "d", "input": "$c"}}), &root).unwrap(),
            Some(bson!(2))
        );
        assert_eq!(eval_in(bson!({"$getField": "zz"}), &root).unwrap(), None);
        assert_eq!(
            value(bson!({"$getField": {"field": "d", "input": null}})),
            Bson::Null
        );
        assert_eq!(
            parse_error(bson!({"$getField": {"field": "x"}})).code,
            3041703
        );
        let e = parse_error(bson!({"$getField": {"field": "$x", "input": {}}}));
        assert_eq!(e.code, 5654600);
        assert_eq!(
            e.errmsg,
            "'$x' is a field path reference which is not allowed in this context. Did you mean {$literal: '$x'}?"
        );
        let e = parse_error(bson!({"$getField": {"$concat": ["a", "b"]}}));
        assert_eq!(e.code, 5654601);
        assert_eq!(parse_error(bson!({"$getField": 5})).code, 5654602);
        // A non-document input reads as missing; a missing input too.
        assert_eq!(
            eval_in(bson!({"$getField": {"field": "d", "input": 5}}), &root).unwrap(),
            None
        );
        assert_eq!(
            eval_in(
                bson!({"$getField": {"field": "d", "input": "$nope"}}),
                &root
            )
            .unwrap(),
            None
        );
        assert_eq!(
            parse_error(bson!({"$setField": {"field": "$x", "input": "$$ROOT", "value": 5}})).code,
            4161108
        );
        assert_eq!(
            parse_error(bson!({"$setField": {"field": "x", "input": "$$ROOT"}})).code,
            4161103
        );
        assert_eq!(
            eval_in(bson!({"$unsetField": {"field": "d", "input": "$c"}}), &root).unwrap(),
            Some(bson!({}))
        );
        assert_eq!(
            error(bson!({"$setField": {"field": "x", "input": 1, "value": 1}})).code,
            4161105
        );
        assert_eq!(
            eval_in(
                bson!({"$setField": {"field": {"$literal": "$x"}, "input": "$c", "value": 5}}),
                &root
            )
            .unwrap(),
            Some(bson!({"d": 2, "$x": 5}))
        );
        assert_eq!(
            eval_in(
                bson!({"$setField": {"field": "d", "input": "$c", "value": "$$REMOVE"}}),
                &root
            )
            .unwrap(),
            Some(bson!({}))
        );
    }

    #[test]
    fn accumulator_expressions() {
        assert_eq!(value(bson!({"$sum": [[1, 2, "x", null]]})), bson!(3));
        assert_eq!(value(bson!({"$sum": [1, 2_i64]})), Bson::Int64(3));
        assert_eq!(
            value(bson!({"$sum": [i32::MAX, 1]})),
            Bson::Int64(2_147_483_648)
        );
        assert_eq!(value(bson!({"$sum": [1, 0.5]})), bson!(1.5));
        assert_eq!(value(bson!({"$sum": "$missing"})), bson!(0));
        // Several arguments: arrays are not traversed.
        assert_eq!(value(bson!({"$sum": [[1, 2], 3]})), bson!(3));
        assert_eq!(value(bson!({"$avg": [[1, 2, 3, 4]]})), bson!(2.5));
        assert_eq!(value(bson!({"$avg": [[]]})), Bson::Null);
        assert_eq!(value(bson!({"$max": [1, "a", null]})), bson!("a"));
        assert_eq!(value(bson!({"$min": [[3, 1, 2]]})), bson!(1));
        assert_eq!(value(bson!({"$min": [null, "$missing"]})), Bson::Null);
    }

    #[test]
    fn types() {
        assert_eq!(value(bson!({"$type": "$missing"})), bson!("missing"));
        assert_eq!(value(bson!({"$type": 1_i64})), bson!("long"));
        assert_eq!(value(bson!({"$type": [[]]})), bson!("array"));
        assert_eq!(value(bson!({"$isNumber": 1.5})), bson!(true));
        assert_eq!(value(bson!({"$isNumber": "1"})), bson!(false));
        let dec = Bson::Decimal128(bson::Decimal128::from_bytes([0; 16]));
        assert_eq!(error(bson!({"$add": [dec, 1]})).code, 115);
    }

    #[test]
    fn date_to_string() {
        // 2024-03-05T07:08:09.123Z, a Tuesday.
        let d = date(1_709_622_489_123);
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone()}})),
            bson!("2024-03-05T07:08:09.123Z")
        );
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone(),
                "format": "%Y/%m/%d %H:%M:%S %j %w %u %U %V %G %z %Z %%"}})),
            bson!("2024/03/05 07:08:09 065 3 2 09 10 2024 +0000 0 %")
        );
        assert_eq!(
            value(
                bson!({"$dateToString": {"date": d.clone(), "format": "%H:%M %z", "timezone": "+05:30"}})
            ),
            bson!("12:38 +0530")
        );
        assert_eq!(
            value(
                bson!({"$dateToString": {"date": d.clone(), "format": "%d %H %Z", "timezone": "-0800"}})
            ),
            bson!("04 23 -480")
        );
        assert_eq!(
            value(bson!({"$dateToString": {"date": "$missing", "onNull": "none"}})),
            bson!("none")
        );
        assert_eq!(value(bson!({"$dateToString": {"date": null}})), Bson::Null);
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone(), "timezone": null}})),
            Bson::Null
        );
        // 2021-01-01 is a Friday in ISO week 53 of 2020.
        assert_eq!(
            value(
                bson!({"$dateToString": {"date": date(1_609_459_200_000), "format": "%G-W%V-%u"}})
            ),
            bson!("2020-W53-5")
        );
        let e =
            parse_error(bson!({"$dateToString": {"date": d.clone(), "timezone": "Europe/Paris"}}));
        assert_eq!(e.code, 40485);
        assert!(e.errmsg.starts_with("unrecognized time zone identifier"));
        assert_eq!(
            value(bson!({"$dateToString": {"date": d.clone(), "timezone": "$$REMOVE"}})),
            Bson::Null
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"date": d.clone(), "format": "%Q"}})).code,
            18536
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"date": d.clone(), "format": "%"}})).code,
            18535
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"format": "%Y"}})).code,
            18628
        );
        assert_eq!(
            parse_error(bson!({"$dateToString": {"date": 1, "x": 1}})).code,
            18534
        );
        assert_eq!(error(bson!({"$dateToString": {"date": "x"}})).code, 16006);
        assert_eq!(
            error(bson!({"$dateToString": {"date": d, "format": 5}})).code,
            18533
        );
    }

    #[test]
    fn substr_alias_and_subtract_details() {
        assert_eq!(value(bson!({"$substr": ["hello", 1.9, 2]})), bson!("el"));
        assert_eq!(value(bson!({"$substrBytes": ["hello", 9, 2]})), bson!(""));
        assert_eq!(value(bson!({"$substrBytes": [5, 0, -1]})), bson!("5"));
        assert_eq!(value(bson!({"$subtract": [date(1000), 1.9]})), date(999));
        let e = error(bson!({"$subtract": [date(0), "a"]}));
        assert_eq!(e.errmsg, "can't $subtract string from Date");
        assert_eq!(value(bson!({"$split": [5, null]})), Bson::Null);
        assert_eq!(value(bson!({"$size": [[]]})), bson!(0));
    }

    #[test]
    fn conversion_details() {
        // mongod 7.0 prints doubles with printf's %g.
        assert_eq!(value(bson!({"$toString": 1.23456789})), bson!("1.23457"));
        assert_eq!(value(bson!({"$toString": 1234567.0})), bson!("1.23457e+06"));
        assert_eq!(value(bson!({"$toString": 123456.0})), bson!("123456"));
        assert_eq!(value(bson!({"$toString": -0.5})), bson!("-0.5"));
        assert_eq!(
            value(bson!({"$toString": f64::INFINITY})),
            bson!("Infinity")
        );
        let e = error(bson!({"$toInt": "0x1F"}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                241,
                "Illegal hexadecimal input in $convert with no onError value: 0x1F"
            )
        );
        let e = error(bson!({"$toInt": 2147483647.5}));
        assert_eq!(
            e.errmsg,
            "Conversion would overflow target type in $convert with no onError value: 2.14748e+09"
        );
        let e = error(bson!({"$toInt": f64::NAN}));
        assert_eq!(
            e.errmsg,
            "Attempt to convert NaN value to integer type in $convert with no onError value"
        );
        assert_eq!(parse_error(bson!({"$toInt": [1, 2]})).code, 50723);
        let root = doc! {"t": "int"};
        let c = bson!({"$convert": {"input": null, "to": null, "onNull": 7}});
        assert_eq!(value(c), bson!(7));
        let c = bson!({"$convert": {"input": 5, "to": "$nope"}});
        assert_eq!(value(c), Bson::Null);
        let c = bson!({"$convert": {"input": "$nope", "to": "bogus", "onNull": 1}});
        assert_eq!(error(c).code, 2);
        let c = bson!({"$convert": {"input": "7", "to": "$t"}});
        assert_eq!(eval_in(c, &root).unwrap(), Some(bson!(7)));
        let c = bson!({"$convert": {"input": 1, "to": "missing", "onError": "x"}});
        assert_eq!(value(c), bson!("x"));
        assert_eq!(error(bson!({"$convert": {"input": 1, "to": 1.5}})).code, 9);
        assert_eq!(error(bson!({"$convert": {"input": 1, "to": 99}})).code, 9);
        assert_eq!(value(bson!({"$toBool": {"$literal": {}}})), bson!(true));
        assert_eq!(
            value(bson!({"$toDate": Bson::Timestamp(Timestamp { time: 5, increment: 1 })})),
            date(5000)
        );
    }

    #[test]
    fn variable_rules() {
        let e = parse_error(bson!({"$let": {"vars": {"a-b": 1}, "in": 1}}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (
                16868,
                "'a-b' contains an invalid character for a variable name: '-'"
            )
        );
        assert_eq!(
            parse_error(bson!({"$let": {"vars": {"": 1}, "in": 1}})).code,
            16866
        );
        assert_eq!(parse_error(bson!("$$a-b")).code, 16871);
        assert_eq!(error(bson!("$$JS_SCOPE")).code, 4631100);
        let no_system = Variables::default();
        let e = Expr::parse(&bson!("$$NOW"))
            .unwrap()
            .eval(&doc! {}, &no_system)
            .unwrap_err();
        assert_eq!(e.code, 51144);
        let e = vars().with_let(&doc! {"x": "$a"}).unwrap_err();
        assert_eq!(e.code, 31474);
        assert_eq!(
            vars()
                .with_let(&doc! {"x": {"$literal": "$a"}})
                .unwrap()
                .get("x"),
            Some(&bson!("$a"))
        );
        let v = vars()
            .with_let(&doc! {"t": {"$add": ["$$NOW", 1]}})
            .unwrap();
        assert_eq!(v.get("t"), Some(&date(1_700_000_000_001)));
    }

    #[test]
    fn time_zones() {
        assert_eq!(parse_timezone("Etc/GMT+5").unwrap(), -300);
        assert_eq!(parse_timezone("Etc/GMT-14").unwrap(), 840);
        assert_eq!(parse_timezone("GMT").unwrap(), 0);
        assert_eq!(parse_timezone("+05").unwrap(), 300);
        assert_eq!(parse_timezone("-05:30").unwrap(), -330);
        assert_eq!(parse_timezone("Z").unwrap_err().code, 40485);
        assert_eq!(parse_timezone("+5").unwrap_err().code, 40485);
        let e = parse_timezone("America/New_York").unwrap_err();
        assert_eq!(
            e.errmsg,
            "unrecognized time zone identifier: \"America/New_York\""
        );
        let d = bson!({"$dateToString": {"date": date(0), "format": "%H %Z", "timezone": "+0130"}});
        assert_eq!(value(d), bson!("01 90"));
    }

    #[test]
    fn messages_show_values_as_mongod() {
        let e = parse_error(bson!({"$add": [1, 2.0], "b": "x"}));
        assert_eq!(
            e.errmsg,
            "An object representing an expression must have exactly one field: { $add: [ 1, 2.0 ], b: \"x\" }"
        );
        let e = error(bson!({"$mergeObjects": [[1, "a"]]}));
        assert_eq!(
            e.errmsg,
            "$mergeObjects requires object inputs, but input [1, \"a\"] is of type array"
        );
        let e = error(bson!({"$arrayElemAt": [[1], 1.5]}));
        assert_eq!(
            e.errmsg,
            "$arrayElemAt's second argument must be representable as a 32-bit integer: 1.5"
        );
    }

    #[test]
    fn set_string_and_misc_operators() {
        assert_eq!(
            value(bson!({"$setUnion": [[3, 1, 1], [2, 1.0]]})),
            bson!([1, 2, 3])
        );
        assert_eq!(value(bson!({"$setUnion": [[1], null]})), Bson::Null);
        assert_eq!(
            value(bson!({"$setIntersection": [[3, 1, 2], [2, 3, 4]]})),
            bson!([2, 3])
        );
        assert_eq!(error(bson!({"$setUnion": [[1], 1]})).code, 17043);
        assert_eq!(
            value(bson!({"$setDifference": [[3, 1, 3, 2], [2]]})),
            bson!([3, 1])
        );
        assert_eq!(error(bson!({"$setDifference": [1, [2]]})).code, 17048);
        assert_eq!(
            value(bson!({"$setEquals": [[1, 2, 2], [2, 1]]})),
            bson!(true)
        );
        assert_eq!(parse_error(bson!({"$setEquals": [[1]]})).code, 17045);
        assert_eq!(error(bson!({"$setEquals": [[1], "$nope"]})).code, 17044);
        assert_eq!(value(bson!({"$setIsSubset": [[1], [1, 2]]})), bson!(true));
        assert_eq!(error(bson!({"$setIsSubset": [[1], null]})).code, 17042);
        assert_eq!(value(bson!({"$allElementsTrue": [[1, true]]})), bson!(true));
        assert_eq!(value(bson!({"$anyElementTrue": [[0, null]]})), bson!(false));
        assert_eq!(error(bson!({"$allElementsTrue": "$nope"})).code, 17040);
        assert_eq!(value(bson!({"$strcasecmp": ["abc", "ABD"]})), bson!(-1));
        assert_eq!(value(bson!({"$strLenCP": "héllo"})), bson!(5));
        assert_eq!(value(bson!({"$substrCP": ["héllo", 1, 3]})), bson!("éll"));
        assert_eq!(error(bson!({"$substrCP": ["a", 0, -1]})).code, 34454);
        assert_eq!(value(bson!({"$trim": {"input": "  a b \n"}})), bson!("a b"));
        assert_eq!(
            value(bson!({"$ltrim": {"input": "xxaxx", "chars": "x"}})),
            bson!("axx")
        );
        assert_eq!(value(bson!({"$rtrim": {"input": null}})), Bson::Null);
        assert_eq!(error(bson!({"$trim": {"input": 1}})).code, 50699);
        assert_eq!(parse_error(bson!({"$trim": {"chars": "x"}})).code, 50695);
        assert_eq!(
            value(bson!({"$replaceAll": {"input": "a-b-c", "find": "-", "replacement": "+"}})),
            bson!("a+b+c")
        );
        assert_eq!(
            value(bson!({"$replaceOne": {"input": "a-b-c", "find": "-", "replacement": ""}})),
            bson!("ab-c")
        );
        assert_eq!(
            value(bson!({"$replaceAll": {"input": "ab", "find": "", "replacement": "."}})),
            bson!(".a.b.")
        );
        assert_eq!(
            error(bson!({"$replaceOne": {"input": 1, "find": "a", "replacement": null}})).code,
            51746
        );
        assert_eq!(
            value(bson!({"$zip": {"inputs": [[1, 2], ["a"]]}})),
            bson!([[1, "a"]])
        );
        assert_eq!(
            value(
                bson!({"$zip": {"inputs": [[1, 2], ["a"]], "useLongestLength": true, "defaults": [0, "z"]}})
            ),
            bson!([[1, "a"], [2, "z"]])
        );
        assert_eq!(
            parse_error(bson!({"$zip": {"inputs": [[1]], "defaults": [1]}})).code,
            34466
        );
        let ts = Bson::Timestamp(Timestamp {
            time: 7,
            increment: 3,
        });
        assert_eq!(value(bson!({"$tsSecond": ts.clone()})), Bson::Int64(7));
        assert_eq!(value(bson!({"$tsIncrement": ts})), Bson::Int64(3));
        assert_eq!(error(bson!({"$tsSecond": 1})).code, 5687301);
        assert_eq!(value(bson!({"$binarySize": "héllo"})), bson!(6));
        assert_eq!(value(bson!({"$bsonSize": {"$literal": {}}})), bson!(5));
        assert_eq!(error(bson!({"$bsonSize": 1})).code, 31393);
    }

    #[test]
    fn date_parts() {
        // 2021-01-03T10:20:30.456Z, a Sunday in ISO week 53 of 2020.
        let root = doc! {"d": bson::DateTime::from_millis(1_609_669_230_456)};
        let part = |op: &str| eval_in(bson!({op: "$d"}), &root).unwrap().unwrap();
        assert_eq!(part("$year"), bson!(2021));
        assert_eq!(part("$month"), bson!(1));
        assert_eq!(part("$dayOfMonth"), bson!(3));
        assert_eq!(part("$hour"), bson!(10));
        assert_eq!(part("$minute"), bson!(20));
        assert_eq!(part("$second"), bson!(30));
        assert_eq!(part("$millisecond"), bson!(456));
        assert_eq!(part("$dayOfWeek"), bson!(1));
        assert_eq!(part("$dayOfYear"), bson!(3));
        assert_eq!(part("$week"), bson!(1));
        assert_eq!(part("$isoWeek"), bson!(53));
        assert_eq!(part("$isoDayOfWeek"), bson!(7));
        assert_eq!(part("$isoWeekYear"), Bson::Int64(2020));
        let tz = bson!({"$hour": {"date": "$d", "timezone": "-11:00"}});
        assert_eq!(eval_in(tz, &root).unwrap(), Some(bson!(23)));
        assert_eq!(
            eval_in(bson!({"$year": ["$d"]}), &root).unwrap(),
            Some(bson!(2021))
        );
        assert_eq!(value(bson!({"$year": "$nope"})), Bson::Null);
        assert_eq!(error(bson!({"$year": "x"})).code, 16006);
        assert_eq!(
            parse_error(bson!({"$year": {"date": 1, "tz": 1}})).code,
            40535
        );
        assert_eq!(
            parse_error(bson!({"$year": {"timezone": "UTC"}})).code,
            40539
        );
        assert_eq!(parse_error(bson!({"$year": [1, 2]})).code, 40536);
        let e = eval_in(
            bson!({"$year": {"date": "$d", "timezone": "Mars/Base"}}),
            &root,
        );
        assert_eq!(e.unwrap_err().code, 40485);
        let e = eval_in(bson!({"$year": {"date": "$d", "timezone": 5}}), &root).unwrap_err();
        assert_eq!(e.code, 40533);
    }

    #[test]
    fn math_functions() {
        assert_eq!(value(bson!({"$sqrt": 16})), bson!(4.0));
        assert_eq!(error(bson!({"$sqrt": -1})).code, 28714);
        assert_eq!(value(bson!({"$exp": 0})), bson!(1.0));
        assert_eq!(value(bson!({"$ln": 1})), bson!(0.0));
        assert_eq!(error(bson!({"$ln": 0})).code, 28766);
        assert_eq!(value(bson!({"$log10": 1000})), bson!(3.0));
        assert_eq!(error(bson!({"$log10": -1})).code, 28761);
        assert_eq!(value(bson!({"$log": [8, 2]})), bson!(3.0));
        assert_eq!(value(bson!({"$log": [8, null]})), Bson::Null);
        assert_eq!(error(bson!({"$log": [8, 1]})).code, 28759);
        assert_eq!(error(bson!({"$log": ["a", 2]})).code, 28756);
        assert_eq!(error(bson!({"$sqrt": "a"})).code, 28765);
        assert_eq!(value(bson!({"$sqrt": "$nope"})), Bson::Null);
    }

    #[test]
    fn zone_database_names_fail_only_when_a_date_needs_them() {
        // As mongod (date_to_string.js): a null date with a zone name gives null.
        let f = bson!({"$dateToString": {"date": "$nope", "timezone": "America/New_York"}});
        assert_eq!(value(f), Bson::Null);
        let root = doc! {"d": bson::DateTime::from_millis(0)};
        let f = bson!({"$dateToString": {"date": "$d", "timezone": "America/New_York"}});
        assert_eq!(eval_in(f, &root).unwrap_err().code, 40485);
        // A name that is no zone at all fails even for a null date, as in mongod.
        let f = bson!({"$dateToString": {"date": "$nope", "timezone": "Nowhere"}});
        assert_eq!(error(f).code, 40485);
        // A bad format is checked before the null date, at evaluation.
        let f = bson!({"$dateToString": {"date": "$nope", "format": "%Q"}});
        assert_eq!(Expr::parse(&f).map(|_| ()), Ok(()));
        assert_eq!(error(f).code, 18536);
    }

    #[test]
    fn range_memory_limit_and_extreme_dates() {
        let e = error(bson!({"$range": [0, i32::MAX]}));
        assert_eq!((e.code, e.code_name.as_str()), (146, "ExceededMemoryLimit"));
        let far = Bson::DateTime(bson::DateTime::from_millis(i64::MAX));
        let e = error(bson!({"$dateToString": {"date": far, "timezone": "+01"}}));
        assert_eq!(e.code, 18537);
    }

    #[test]
    fn index_of_strings_and_pow() {
        assert_eq!(
            value(bson!({"$indexOfBytes": ["cafétéria", "é"]})),
            bson!(3)
        );
        assert_eq!(value(bson!({"$indexOfCP": ["cafétéria", "é"]})), bson!(3));
        assert_eq!(
            value(bson!({"$indexOfCP": ["cafétéria", "é", 4]})),
            bson!(5)
        );
        assert_eq!(
            value(bson!({"$indexOfBytes": ["abc", "c", 0, 2]})),
            bson!(-1)
        );
        assert_eq!(value(bson!({"$indexOfBytes": ["abc", "", 3]})), bson!(3));
        assert_eq!(value(bson!({"$indexOfBytes": ["abc", "a", 5]})), bson!(-1));
        assert_eq!(value(bson!({"$indexOfBytes": [null, "a"]})), Bson::Null);
        assert_eq!(error(bson!({"$indexOfBytes": ["a", null]})).code, 40092);
        assert_eq!(error(bson!({"$indexOfCP": [1, "a"]})).code, 40093);
        let e = error(bson!({"$indexOfBytes": ["a", "a", -1]}));
        assert_eq!(
            e.errmsg,
            "$indexOfBytes requires a nonnegative starting index, found: -1"
        );
        assert_eq!(value(bson!({"$pow": [2, 10]})), bson!(1024));
        assert_eq!(value(bson!({"$pow": [2, 40]})), Bson::Int64(1 << 40));
        assert_eq!(value(bson!({"$pow": [2_i64, 2]})), Bson::Int64(4));
        assert_eq!(
            value(bson!({"$pow": [2, 64]})),
            bson!(18446744073709551616.0)
        );
        assert_eq!(value(bson!({"$pow": [2, -1]})), bson!(0.5));
        assert_eq!(value(bson!({"$pow": [-1, -3]})), bson!(-1));
        assert_eq!(value(bson!({"$pow": [4, 0.5]})), bson!(2.0));
        assert_eq!(error(bson!({"$pow": [0, -1]})).code, 28764);
        assert_eq!(error(bson!({"$pow": ["a", 1]})).code, 28762);
    }

    #[test]
    fn date_add_and_subtract() {
        let jan31 = date(1_612_051_200_000); // 2021-01-31T00:00:00Z
        let add = |unit: &str, amount: i64| {
            value(bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": unit, "amount": amount}}))
        };
        assert_eq!(add("month", 1), date(1_614_470_400_000)); // 2021-02-28, clamped
        assert_eq!(add("year", -1), date(1_580_428_800_000)); // 2020-01-31
        assert_eq!(add("quarter", 1), date(1_619_740_800_000)); // 2021-04-30
        assert_eq!(add("day", 1), date(1_612_137_600_000));
        assert_eq!(add("hour", -1), date(1_612_047_600_000));
        assert_eq!(add("millisecond", 5), date(1_612_051_200_005));
        let sub =
            bson!({"$dateSubtract": {"startDate": jan31.clone(), "unit": "week", "amount": 1}});
        assert_eq!(value(sub), date(1_612_051_200_000 - 7 * 86_400_000));
        // The month is moved in the given zone: 2021-01-31T00:00Z is Jan 30 19:00 at -05:00,
        // which becomes Feb 28 19:00 there (clamped), 2021-03-01T00:00Z.
        let tz = bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": "month", "amount": 1,
            "timezone": "-05:00"}});
        assert_eq!(value(tz), date(1_614_556_800_000));
        let null = bson!({"$dateAdd": {"startDate": "$nope", "unit": "day", "amount": 1}});
        assert_eq!(value(null), Bson::Null);
        let e =
            error(bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": "days", "amount": 1}}));
        assert_eq!(
            (e.code, e.errmsg.as_str()),
            (9, "unknown time unit value: days")
        );
        let e =
            error(bson!({"$dateAdd": {"startDate": jan31.clone(), "unit": "day", "amount": 1.5}}));
        assert_eq!(e.code, 5166405);
        let e = error(bson!({"$dateAdd": {"startDate": "x", "unit": "day", "amount": 1}}));
        assert_eq!(e.code, 5166403);
        assert_eq!(
            parse_error(bson!({"$dateAdd": {"unit": "day", "amount": 1}})).code,
            5166402
        );
        assert_eq!(
            parse_error(bson!({"$dateAdd": {"startDate": 1, "x": 1}})).code,
            5166401
        );
        let e = error(
            bson!({"$dateSubtract": {"startDate": jan31, "unit": "day", "amount": i64::MIN}}),
        );
        assert_eq!(e.code, 6045000);
    }

    #[test]
    fn date_diff_counts_boundaries() {
        // 2021-01-31T23:30:00Z and 2021-02-01T00:10:00Z.
        let (s, e) = (date(1_612_135_800_000), date(1_612_138_200_000));
        let diff = |unit: &str| {
            value(
                bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(), "unit": unit}}),
            )
        };
        assert_eq!(diff("month"), Bson::Int64(1));
        assert_eq!(diff("year"), Bson::Int64(0));
        assert_eq!(diff("day"), Bson::Int64(1));
        assert_eq!(diff("hour"), Bson::Int64(1));
        assert_eq!(diff("minute"), Bson::Int64(40));
        assert_eq!(diff("millisecond"), Bson::Int64(2_400_000));
        // Sunday 2021-01-31 to Monday 2021-02-01: a Monday week boundary, not a Sunday one.
        assert_eq!(diff("week"), Bson::Int64(0));
        let monday = bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(),
            "unit": "week", "startOfWeek": "MON"}});
        assert_eq!(value(monday), Bson::Int64(1));
        let tz = bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(), "unit": "day",
            "timezone": "+01:00"}});
        assert_eq!(value(tz), Bson::Int64(0));
        let back =
            bson!({"$dateDiff": {"startDate": e.clone(), "endDate": s.clone(), "unit": "minute"}});
        assert_eq!(value(back), Bson::Int64(-40));
        let e2 = error(bson!({"$dateDiff": {"startDate": s.clone(), "endDate": 1, "unit": "day"}}));
        assert_eq!(e2.code, 5166307);
        let e2 = error(
            bson!({"$dateDiff": {"startDate": s.clone(), "endDate": e.clone(), "unit": "days"}}),
        );
        assert_eq!(e2.code, 5439014);
        let e2 = error(
            bson!({"$dateDiff": {"startDate": s, "endDate": e, "unit": "week", "startOfWeek": "x"}}),
        );
        assert_eq!(e2.code, 5439016);
        assert_eq!(
            parse_error(bson!({"$dateDiff": {"startDate": 1, "unit": "day"}})).code,
            5166304
        );
    }

    #[test]
    fn date_to_parts_and_zone_error_order() {
        let d = date(1_609_669_230_456); // 2021-01-03T10:20:30.456Z
        assert_eq!(
            value(bson!({"$dateToParts": {"date": d.clone()}})),
            bson!({"year": 2021, "month": 1, "day": 3, "hour": 10, "minute": 20, "second": 30,
                "millisecond": 456})
        );
        assert_eq!(
            value(bson!({"$dateToParts": {"date": d.clone(), "iso8601": true, "timezone": "+01"}})),
            bson!({"isoWeekYear": 2020, "isoWeek": 53, "isoDayOfWeek": 7, "hour": 11,
                "minute": 20, "second": 30, "millisecond": 456})
        );
        assert_eq!(
            value(bson!({"$dateToParts": {"date": "$nope"}})),
            Bson::Null
        );
        assert_eq!(
            error(bson!({"$dateToParts": {"date": d.clone(), "iso8601": 1}})).code,
            40521
        );
        assert_eq!(
            parse_error(bson!({"$dateToParts": {"timezone": "UTC"}})).code,
            40522
        );
        // As mongod (date_to_parts.js): a zone it knows and a non-date gives the date error.
        let root = doc! {"_id": 0, "tz": "Europe/London"};
        let e = eval_in(
            bson!({"$dateToParts": {"date": "$_id", "timezone": "$tz"}}),
            &root,
        );
        assert_eq!(
            e.unwrap_err().errmsg,
            "can't convert from BSON type int to Date"
        );
        let e = eval_in(
            bson!({"$dateToString": {"date": "$_id", "timezone": "$tz"}}),
            &root,
        );
        assert_eq!(e.unwrap_err().code, 16006);
    }

    #[test]
    fn date_from_parts() {
        let p = |spec: Bson| value(bson!({"$dateFromParts": spec}));
        assert_eq!(
            p(
                bson!({"year": 2021, "month": 1, "day": 3, "hour": 10, "minute": 20,
            "second": 30, "millisecond": 456})
            ),
            date(1_609_669_230_456)
        );
        // Month 13 rolls into the next year; day 0 is the previous month's last day.
        assert_eq!(
            p(bson!({"year": 2020, "month": 13, "day": 3})),
            date(1_609_632_000_000)
        );
        assert_eq!(
            p(bson!({"year": 2021, "month": 3, "day": 0})),
            date(1_614_470_400_000)
        );
        assert_eq!(
            p(bson!({"year": 2021, "timezone": "+01:00"})),
            date(1_609_455_600_000)
        );
        // ISO 2020-W53-7 is Sunday 2021-01-03.
        assert_eq!(
            p(bson!({"isoWeekYear": 2020, "isoWeek": 53, "isoDayOfWeek": 7})),
            date(1_609_632_000_000)
        );
        assert_eq!(p(bson!({"year": "$nope"})), Bson::Null);
        assert_eq!(error(bson!({"$dateFromParts": {"year": 0}})).code, 40523);
        assert_eq!(
            error(bson!({"$dateFromParts": {"year": 2021, "month": 40000}})).code,
            31034
        );
        assert_eq!(
            error(bson!({"$dateFromParts": {"year": 2021, "hour": 1.5}})).code,
            40515
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"month": 1}})).code,
            40516
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"year": 1, "isoWeek": 1}})).code,
            40489
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"isoWeekYear": 1, "day": 1}})).code,
            40525
        );
        assert_eq!(
            parse_error(bson!({"$dateFromParts": {"year": 1, "x": 1}})).code,
            40518
        );
    }

    #[test]
    fn date_trunc() {
        let d = date(1_609_669_230_456); // Sunday 2021-01-03T10:20:30.456Z
        let t = |unit: &str, bin: i64| {
            value(bson!({"$dateTrunc": {"date": d.clone(), "unit": unit, "binSize": bin}}))
        };
        assert_eq!(t("hour", 1), date(1_609_668_000_000));
        assert_eq!(t("day", 1), date(1_609_632_000_000));
        assert_eq!(t("month", 1), date(1_609_459_200_000));
        assert_eq!(t("year", 1), date(1_609_459_200_000));
        assert_eq!(t("quarter", 2), date(1_609_459_200_000));
        assert_eq!(t("month", 5), date(1_604_188_800_000)); // 2020-11-01: 250 months from 2000
        assert_eq!(t("minute", 15), date(1_609_668_900_000)); // 10:15
        // Weeks start on Sunday by default; 2021-01-03 is a Sunday.
        assert_eq!(t("week", 1), date(1_609_632_000_000));
        let monday =
            bson!({"$dateTrunc": {"date": d.clone(), "unit": "week", "startOfWeek": "monday"}});
        assert_eq!(value(monday), date(1_609_113_600_000)); // 2020-12-28
        let tz = bson!({"$dateTrunc": {"date": d.clone(), "unit": "day", "timezone": "-11"}});
        assert_eq!(value(tz), date(1_609_585_200_000)); // 2021-01-02T00:00-11:00
        assert_eq!(
            value(bson!({"$dateTrunc": {"date": null, "unit": "day"}})),
            Bson::Null
        );
        let e = error(bson!({"$dateTrunc": {"date": d.clone(), "unit": "day", "binSize": 0}}));
        assert_eq!(e.code, 5439018);
        let e = error(bson!({"$dateTrunc": {"date": 1, "unit": "day"}}));
        assert_eq!(e.code, 5439012);
        let e = error(bson!({"$dateTrunc": {"date": d, "unit": "day", "timezone": "Nowhere"}}));
        assert_eq!(e.code, 40485);
        assert!(
            e.errmsg.starts_with(
                "$dateTrunc parameter 'timezone' value parsing failed :: caused by :: "
            )
        );
        assert_eq!(
            parse_error(bson!({"$dateTrunc": {"date": 1}})).code,
            5439010
        );
    }

    #[test]
    fn rand_is_a_fresh_double_in_the_unit_interval() {
        let e = Expr::parse(&bson!({"$rand": {}})).unwrap();
        let draws: Vec<f64> = (0..20)
            .map(|_| match e.eval(&doc! {}, &vars()).unwrap() {
                Some(Bson::Double(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
        assert_eq!(parse_error(bson!({"$rand": {"a": 1}})).code, 3040501);
    }

    #[test]
    fn regular_expressions() {
        let m = |input: Bson, regex: Bson| {
            value(bson!({"$regexMatch": {"input": input, "regex": regex}}))
        };
        assert_eq!(m(bson!("Hello"), bson!("^h")), bson!(false));
        let ci = bson!({"$regexMatch": {"input": "Hello", "regex": "^h", "options": "i"}});
        assert_eq!(value(ci), bson!(true));
        let re = Bson::RegularExpression(bson::Regex {
            pattern: "^h".to_string(),
            options: "i".to_string(),
        });
        assert_eq!(m(bson!("Hello"), re.clone()), bson!(true));
        assert_eq!(m(Bson::Null, bson!("x")), bson!(false));
        let both = bson!({"$regexMatch": {"input": "a", "regex": re, "options": "i"}});
        assert_eq!(error(both).code, 51107);
        assert_eq!(
            value(bson!({"$regexFind": {"input": "héllo wörld", "regex": "w(ö)(x)?"}})),
            bson!({"match": "wö", "idx": 6, "captures": ["ö", null]})
        );
        assert_eq!(
            value(bson!({"$regexFind": {"input": "abc", "regex": "z"}})),
            Bson::Null
        );
        assert_eq!(
            value(bson!({"$regexFindAll": {"input": "a1b22", "regex": "[0-9]+"}})),
            bson!([{"match": "1", "idx": 1, "captures": []}, {"match": "22", "idx": 3, "captures": []}])
        );
        assert_eq!(
            value(bson!({"$regexFindAll": {"input": "$nope", "regex": "a"}})),
            bson!([])
        );
        assert_eq!(
            error(bson!({"$regexMatch": {"input": 1, "regex": "a"}})).code,
            51104
        );
        assert_eq!(
            error(bson!({"$regexMatch": {"input": "a", "regex": 1}})).code,
            51105
        );
        assert_eq!(
            error(bson!({"$regexMatch": {"input": "a", "regex": "a", "options": "g"}})).code,
            51108
        );
        assert_eq!(
            error(bson!({"$regexMatch": {"input": "a", "regex": "("}})).code,
            51111
        );
        assert_eq!(
            error(bson!({"$regexMatch": {"input": "a", "regex": "(?=a)"}})).code,
            115
        );
        assert_eq!(
            parse_error(bson!({"$regexMatch": {"input": "a"}})).code,
            31023
        );
        assert_eq!(parse_error(bson!({"$regexMatch": "a"})).code, 51103);
    }
}
