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
//!
//! This module holds the entry points ([`Expr::parse`], [`Expr::eval`]), the variables in
//! scope and the dispatch on the operator name; each operator family (arithmetic, strings,
//! arrays, dates, ...) has a file of its own, which evaluates its sub-expressions through
//! [`Expr`]'s evaluation context here. `common` and `number` hold what the families share.

// CommandError is the crate-wide error type; its size is decided in `error`, not here.
#![allow(clippy::result_large_err)]

mod accumulator;
mod arithmetic;
mod array;
mod calendar;
mod common;
mod conditional;
mod conversion;
mod date;
mod logic;
mod misc;
mod number;
mod object;
mod regexp;
mod set;
mod string;
mod variables;

use crate::error::{CommandError, Result};
use crate::expr::array::{parse_filter, parse_map, parse_reduce, parse_sort_array, parse_zip};
use crate::expr::common::{
    decimal_unsupported, loc, show, show_obj, unrecognized, validate_field_name,
    validate_user_var_name,
};
use crate::expr::conditional::{fold_switch, parse_cond_object, parse_switch};
use crate::expr::conversion::parse_convert;
use crate::expr::date::{
    DATE_PART_OPS, parse_date_arith, parse_date_diff, parse_date_from_parts, parse_date_part,
    parse_date_to_parts, parse_date_to_string, parse_date_trunc,
};
use crate::expr::misc::parse_rand;
use crate::expr::object::{parse_get_field, parse_set_field};
use crate::expr::regexp::parse_regex;
use crate::expr::string::{parse_replace, parse_trim};
use crate::expr::variables::{eval_path, eval_var, parse_let, parse_string_ref};
use bson::{Bson, Document};
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

/// An expression: a constant, a reference, an object or array of expressions, an operator
/// taking a list of arguments (evaluated by its family), or an operator with named
/// arguments, whose node type its family defines.
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
        family: Family,
        op: &'static str,
        args: Vec<Expr>,
    },
    Switch(crate::expr::conditional::Switch),
    Let(crate::expr::variables::Let),
    Filter(crate::expr::array::Filter),
    Map(crate::expr::array::Map),
    Reduce(crate::expr::array::Reduce),
    Zip(crate::expr::array::Zip),
    SortArray(crate::expr::array::SortArray),
    GetField(crate::expr::object::GetField),
    SetField(crate::expr::object::SetField),
    Trim(crate::expr::string::Trim),
    Replace(crate::expr::string::Replace),
    Regex(crate::expr::regexp::Regex),
    Convert(crate::expr::conversion::Convert),
    DateToString(crate::expr::date::DateToString),
    DatePart(crate::expr::date::DatePart),
    DateArith(crate::expr::date::DateArith),
    DateFromParts(crate::expr::date::DateFromParts),
    DateToParts(crate::expr::date::DateToParts),
    DateTrunc(crate::expr::date::DateTrunc),
    DateDiff(crate::expr::date::DateDiff),
    /// `$rand`: never folded, a new value per evaluation.
    Rand,
}

/// How many arguments an operator takes, as mongod's `ExpressionFixedArity` /
/// `ExpressionRangedArity` / `ExpressionVariadic` declare it.
#[derive(Debug, Clone, Copy)]
enum Arity {
    Exactly(usize),
    Range(usize, usize),
    Variadic,
}

/// The families whose operators take a list of arguments (`{$op: [a, b]}`). Each declares
/// its operators with their arity and evaluates them.
#[derive(Debug, Clone, Copy)]
enum Family {
    Accumulator,
    Arithmetic,
    Array,
    Conditional,
    Conversion,
    Logic,
    Misc,
    Object,
    Set,
    String,
}

impl Family {
    const ALL: [Family; 10] = [
        Family::Accumulator,
        Family::Arithmetic,
        Family::Array,
        Family::Conditional,
        Family::Conversion,
        Family::Logic,
        Family::Misc,
        Family::Object,
        Family::Set,
        Family::String,
    ];

    fn operators(self) -> &'static [(&'static str, Arity)] {
        match self {
            Family::Accumulator => crate::expr::accumulator::OPERATORS,
            Family::Arithmetic => crate::expr::arithmetic::OPERATORS,
            Family::Array => crate::expr::array::OPERATORS,
            Family::Conditional => crate::expr::conditional::OPERATORS,
            Family::Conversion => crate::expr::conversion::OPERATORS,
            Family::Logic => crate::expr::logic::OPERATORS,
            Family::Misc => crate::expr::misc::OPERATORS,
            Family::Object => crate::expr::object::OPERATORS,
            Family::Set => crate::expr::set::OPERATORS,
            Family::String => crate::expr::string::OPERATORS,
        }
    }

    fn eval(self, cx: &Cx, op: &str, args: &[Expr]) -> Result<Option<Bson>> {
        match self {
            Family::Accumulator => crate::expr::accumulator::eval(cx, op, args),
            Family::Arithmetic => crate::expr::arithmetic::eval(cx, op, args),
            Family::Array => crate::expr::array::eval(cx, op, args),
            Family::Conditional => crate::expr::conditional::eval(cx, op, args),
            Family::Conversion => crate::expr::conversion::eval(cx, op, args),
            Family::Logic => crate::expr::logic::eval(cx, op, args),
            Family::Misc => crate::expr::misc::eval(cx, op, args),
            Family::Object => crate::expr::object::eval(cx, op, args),
            Family::Set => crate::expr::set::eval(cx, op, args),
            Family::String => crate::expr::string::eval(cx, op, args),
        }
    }
}

/// The family, name and arity of an operator that takes a list of arguments.
fn lookup(op: &str) -> Option<(Family, &'static str, Arity)> {
    // `$substr` is mongod's deprecated alias, parsed as `$substrBytes`.
    let op = if op == "$substr" { "$substrBytes" } else { op };
    Family::ALL.into_iter().find_map(|family| {
        family
            .operators()
            .iter()
            .find(|(name, _)| *name == op)
            .map(|(name, arity)| (family, *name, *arity))
    })
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

/// The fields of an operator's argument object, each parsed as an expression (before its
/// name is checked, as mongod does for these operators) and put in the slot of its name in
/// `names`; another name is the error `unknown` gives.
fn named_args<const N: usize>(
    d: &Document,
    names: [&str; N],
    unknown: impl Fn(&str) -> CommandError,
) -> Result<[Option<Box<Expr>>; N]> {
    let mut args = std::array::from_fn(|_| None);
    for (k, v) in d {
        let e = boxed(Expr::parse(v)?);
        let Some(i) = names.iter().position(|n| n == k) else {
            return Err(unknown(k));
        };
        args[i] = Some(e);
    }
    Ok(args)
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
        "$rand" => parse_rand(arg)?,
        "$dateToParts" => parse_date_to_parts(arg)?,
        "$dateFromParts" => parse_date_from_parts(arg)?,
        "$toDecimal" => return Err(decimal_unsupported()),
        _ => parse_listed(op, arg)?,
    };
    fold(Expr { node })
}

/// An operator of a family's table, which takes a list of arguments.
fn parse_listed(op: &str, arg: &Bson) -> Result<Node> {
    let Some((family, name, arity)) = lookup(op) else {
        return Err(unrecognized(op));
    };
    let args = parse_args(arg)?;
    check_arity(name, arity, args.len())?;
    Ok(Node::Op {
        family,
        op: name,
        args,
    })
}

/// The argument count `n` against the operator's arity, with mongod's codes and messages.
fn check_arity(name: &str, arity: Arity, n: usize) -> Result<()> {
    let conversion_alias = matches!(
        name,
        "$toString" | "$toInt" | "$toLong" | "$toDouble" | "$toDate" | "$toBool" | "$toObjectId"
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
                format!("Expression {name} takes exactly {k} arguments. {n} were passed in."),
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
    Ok(())
}

fn is_const(e: &Expr) -> bool {
    matches!(e.node, Node::Const(_))
}

fn opt_const(e: &Option<Box<Expr>>) -> bool {
    e.as_deref().is_none_or(is_const)
}

fn boxed(e: Expr) -> Box<Expr> {
    Box::new(e)
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
            ..
        } if is_const(&args[0]) => {
            let branch = if is_truthy(args[0].as_constant()) {
                1
            } else {
                2
            };
            return Ok(args.swap_remove(branch));
        }
        Node::Switch(switch) => return fold_switch(switch),
        other => other,
    };
    let foldable = match &node {
        Node::Op { args, .. } => args.iter().all(is_const),
        Node::Array(items) => items.iter().all(is_const),
        Node::Object(fields) => fields.iter().all(|(_, e)| is_const(e)),
        Node::Convert(n) => n.is_foldable(),
        Node::DateToString(n) => n.is_foldable(),
        Node::DatePart(n) => n.is_foldable(),
        Node::DateArith(n) => n.is_foldable(),
        Node::DateToParts(n) => n.is_foldable(),
        Node::DateFromParts(n) => n.is_foldable(),
        Node::DateTrunc(n) => n.is_foldable(),
        Node::DateDiff(n) => n.is_foldable(),
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

/// Evaluation context: `$$ROOT` plus the variables in scope (`CURRENT` may be rebound).
struct Cx<'a> {
    root: &'a Document,
    vars: &'a Variables,
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

    /// Evaluates `e` in this context; the families evaluate their arguments through it.
    fn eval(&self, e: &Expr) -> Result<Option<Bson>> {
        match &e.node {
            Node::Const(v) => Ok(Some(v.clone())),
            Node::Path(path) => Ok(eval_path(self, path)),
            Node::Var { name, path } => eval_var(self, name, path),
            Node::Object(fields) => self.eval_object(fields),
            Node::Array(items) => self.eval_array(items),
            Node::Op { family, op, args } => family.eval(self, op, args),
            Node::Switch(n) => n.eval(self),
            Node::Let(n) => n.eval(self),
            Node::Filter(n) => n.eval(self),
            Node::Map(n) => n.eval(self),
            Node::Reduce(n) => n.eval(self),
            Node::Zip(n) => n.eval(self),
            Node::SortArray(n) => n.eval(self),
            Node::GetField(n) => n.eval(self),
            Node::SetField(n) => n.eval(self),
            Node::Trim(n) => n.eval(self),
            Node::Replace(n) => n.eval(self),
            Node::Regex(n) => n.eval(self),
            Node::Convert(n) => n.eval(self),
            Node::DateToString(n) => n.eval(self),
            Node::DatePart(n) => n.eval(self),
            Node::DateArith(n) => n.eval(self),
            Node::DateFromParts(n) => n.eval(self),
            Node::DateToParts(n) => n.eval(self),
            Node::DateTrunc(n) => n.eval(self),
            Node::DateDiff(n) => n.eval(self),
            Node::Rand => Ok(Some(Bson::Double(rand::random::<f64>()))),
        }
    }

    /// `{a: <expr>, ...}`: a field whose value is missing is left out.
    fn eval_object(&self, fields: &[(String, Expr)]) -> Result<Option<Bson>> {
        let mut out = Document::new();
        for (k, fe) in fields {
            if let Some(v) = self.eval(fe)? {
                out.insert(k.clone(), v);
            }
        }
        Ok(Some(Bson::Document(out)))
    }

    /// `[<expr>, ...]`: a missing element becomes null.
    fn eval_array(&self, items: &[Expr]) -> Result<Option<Bson>> {
        let mut out = Vec::with_capacity(items.len());
        for i in items {
            out.push(self.eval(i)?.unwrap_or(Bson::Null));
        }
        Ok(Some(Bson::Array(out)))
    }

    fn eval_all(&self, args: &[Expr]) -> Result<Vec<Option<Bson>>> {
        args.iter().map(|a| self.eval(a)).collect()
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

#[cfg(test)]
mod tests;
