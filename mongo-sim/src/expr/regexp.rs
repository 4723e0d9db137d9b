//! Regular expressions: `$regexMatch`, `$regexFind` and `$regexFindAll`.

use crate::bsontype::type_name;
use crate::error::{CommandError, Result};
use crate::expr::common::loc;
use crate::expr::{Cx, Expr, Node, named_args};
use bson::Bson;

/// `$regexMatch`, `$regexFind`, `$regexFindAll`.
#[derive(Debug, Clone)]
pub(crate) struct Regex {
    op: &'static str,
    input: Box<Expr>,
    regex: Box<Expr>,
    options: Option<Box<Expr>>,
}

/// CommonRegexParse.
pub(crate) fn parse_regex(op: &str, arg: &Bson) -> Result<Node> {
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
    let [input, regex, options] = named_args(d, ["input", "regex", "options"], |k| {
        loc(31024, format!("{op} found an unknown argument: {k}"))
    })?;
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
    Ok(Node::Regex(Regex {
        op,
        input,
        regex,
        options,
    }))
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

impl Regex {
    pub(crate) fn eval(&self, cx: &Cx) -> Result<Option<Bson>> {
        let Regex {
            op,
            input,
            regex,
            options,
        } = self;
        let input = cx.eval(input)?.unwrap_or(Bson::Null);
        let pattern = cx.eval(regex)?.unwrap_or(Bson::Null);
        let options = match options {
            Some(o) => cx.eval(o)?.unwrap_or(Bson::Null),
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
}

#[cfg(test)]
mod tests {
    use crate::expr::tests::{error, parse_error, value};
    use bson::{Bson, bson};

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
