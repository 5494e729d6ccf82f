//! Label and field selectors.
//!
//! Owns the kubectl selector syntax (`app=web,tier!=db,env in (a,b),!canary`), conversion from
//! the API's `LabelSelector` (matchLabels + matchExpressions), and matching against labels or
//! object fields. Pure functions only; it never lists or watches anything.
//!
//! Semantics follow Kubernetes: an empty selector matches everything; `!=`/`notin` match objects
//! that lack the label; a field selector treats a missing field as the empty string.

use crate::fieldpath;
use crate::validation::{label_key_error, label_value_error};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// A selector that could not be parsed or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {input:?}: {message}")]
pub struct SelectorError {
    pub input: String,
    pub message: String,
}

impl SelectorError {
    fn new(input: &str, message: impl Into<String>) -> Self {
        SelectorError {
            input: input.to_string(),
            message: message.into(),
        }
    }
}

/// Label selector operators, as in `k8s.io/apimachinery/pkg/selection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals,
    /// `key!=value`: also matches when the label is absent.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`: also matches when the label is absent.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>n`: the label's value parses as an integer greater than n.
    GreaterThan,
    /// `key<n`.
    LessThan,
}

/// One requirement of a label selector. `values` is sorted and deduplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

impl Requirement {
    /// Build and check a requirement (key syntax, value syntax, value count per operator).
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, String> {
        if let Some(e) = label_key_error(key) {
            return Err(format!("key {key:?}: {e}"));
        }
        let mut values = values;
        match operator {
            Operator::Equals | Operator::NotEquals if values.len() != 1 => {
                return Err(format!("key {key:?}: exactly one value is required"));
            }
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(format!(
                    "key {key:?}: for 'in', 'notin' operators, values set can't be empty"
                ));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(format!(
                    "key {key:?}: values set must be empty for exists and does not exist"
                ));
            }
            Operator::GreaterThan | Operator::LessThan
                if values.len() != 1 || values[0].parse::<i64>().is_err() =>
            {
                return Err(format!(
                    "key {key:?}: for 'Gt', 'Lt' operators, exactly one integer value is required"
                ));
            }
            _ => {}
        }
        if !matches!(operator, Operator::GreaterThan | Operator::LessThan) {
            for v in &values {
                if let Some(e) = label_value_error(v) {
                    return Err(format!("value {v:?} for key {key:?}: {e}"));
                }
            }
        }
        values.sort();
        values.dedup();
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let got = labels.get(&self.key);
        match self.operator {
            Operator::Equals | Operator::In => got.is_some_and(|v| self.values.contains(v)),
            Operator::NotEquals | Operator::NotIn => got.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => got.is_some(),
            Operator::DoesNotExist => got.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), Some(want)) = (
                    got.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = self.values.first().map(String::as_str).unwrap_or("");
        match self.operator {
            Operator::Equals => write!(f, "{}={one}", self.key),
            Operator::NotEquals => write!(f, "{}!={one}", self.key),
            Operator::In => write!(f, "{} in ({})", self.key, self.values.join(",")),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, self.values.join(",")),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::GreaterThan => write!(f, "{}>{one}", self.key),
            Operator::LessThan => write!(f, "{}<{one}", self.key),
        }
    }
}

/// A label selector: all requirements must match (logical AND). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// Parse kubectl syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
    /// `a>1`, `a<1`, comma-separated. The empty string is the everything-selector.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let tokens = lex(input).map_err(|m| SelectorError::new(input, m))?;
        let mut p = Parser { tokens, pos: 0 };
        let mut reqs = Vec::new();
        if p.peek().is_none() {
            return Ok(LabelSelector::default());
        }
        loop {
            reqs.push(p.requirement().map_err(|m| SelectorError::new(input, m))?);
            match p.next() {
                None => break,
                Some(Token::Comma) => {
                    if p.peek().is_none() {
                        return Err(SelectorError::new(
                            input,
                            "expected a requirement after ','",
                        ));
                    }
                }
                Some(t) => {
                    return Err(SelectorError::new(
                        input,
                        format!("expected ',' but found {t}"),
                    ));
                }
            }
        }
        Ok(Self::from_requirements(reqs))
    }

    /// Convert the API form. matchLabels become `key=value`; matchExpressions operators are
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`. An empty API selector matches everything; a caller
    /// holding `None` (no selector at all) should treat it as matching nothing, as Kubernetes does.
    pub fn from_k8s(sel: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        let err = |m: String| SelectorError::new(&describe_k8s(sel), m);
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::new(k, Operator::Equals, vec![v.clone()]).map_err(err)?);
        }
        for e in sel.match_expressions.iter().flatten() {
            let op = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(err(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            reqs.push(
                Requirement::new(&e.key, op, e.values.clone().unwrap_or_default()).map_err(err)?,
            );
        }
        Ok(Self::from_requirements(reqs))
    }

    /// Equality on every entry of `labels` (a Service's or ReplicaSet's map selector).
    /// Entries that are not valid label syntax never match anything.
    pub fn from_map(labels: &BTreeMap<String, String>) -> Self {
        let reqs = labels
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        Self::from_requirements(reqs)
    }

    /// Build from requirements (sorted by key, as Kubernetes does, for a stable Display).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector { requirements }
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Match against an optional label map (a missing map is an empty one).
    pub fn matches_opt(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        match labels {
            Some(l) => self.matches(l),
            None => self.matches(&BTreeMap::new()),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

fn describe_k8s(sel: &metav1::LabelSelector) -> String {
    serde_json::to_string(sel).unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "{s:?}"),
            Token::Not => f.write_str("'!'"),
            Token::Eq => f.write_str("'='"),
            Token::DoubleEq => f.write_str("'=='"),
            Token::NotEq => f.write_str("'!='"),
            Token::Gt => f.write_str("'>'"),
            Token::Lt => f.write_str("'<'"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
        }
    }
}

fn lex(input: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '!' | '=' => {
                chars.next();
                let double = chars.peek() == Some(&'=');
                if double {
                    chars.next();
                }
                out.push(match (c, double) {
                    ('!', false) => Token::Not,
                    ('!', true) => Token::NotEq,
                    ('=', false) => Token::Eq,
                    _ => Token::DoubleEq,
                });
            }
            '>' | '<' | '(' | ')' | ',' => {
                chars.next();
                out.push(match c {
                    '>' => Token::Gt,
                    '<' => Token::Lt,
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Comma,
                });
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "!=<>(),".contains(c) {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(Token::Ident(s));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(s)) if s != "in" && s != "notin" => Ok(s),
            Some(t) => Err(format!("expected a label key but found {t}")),
            None => Err("expected a label key".into()),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            let key = self.key()?;
            return Requirement::new(&key, Operator::DoesNotExist, vec![]);
        }
        let key = self.key()?;
        let op = match self.peek() {
            None | Some(Token::Comma) => return Requirement::new(&key, Operator::Exists, vec![]),
            Some(Token::Eq) | Some(Token::DoubleEq) => Operator::Equals,
            Some(Token::NotEq) => Operator::NotEquals,
            Some(Token::Gt) => Operator::GreaterThan,
            Some(Token::Lt) => Operator::LessThan,
            Some(Token::Ident(s)) if s == "in" => Operator::In,
            Some(Token::Ident(s)) if s == "notin" => Operator::NotIn,
            Some(t) => return Err(format!("expected an operator after {key:?} but found {t}")),
        };
        self.next();
        let values = match op {
            Operator::In | Operator::NotIn => self.set()?,
            _ => match self.peek() {
                // `a=` selects an empty value, as in Kubernetes.
                None | Some(Token::Comma) => vec![String::new()],
                Some(Token::Ident(_)) => match self.next() {
                    Some(Token::Ident(v)) => vec![v],
                    _ => vec![],
                },
                Some(t) => return Err(format!("expected a value after {key:?} but found {t}")),
            },
        };
        Requirement::new(&key, op, values)
    }

    fn set(&mut self) -> Result<Vec<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            Some(t) => return Err(format!("expected '(' but found {t}")),
            None => return Err("expected '('".into()),
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Ident(v)) => values.push(v),
                Some(Token::Close) if values.is_empty() => return Ok(values),
                Some(t) => return Err(format!("expected a value but found {t}")),
                None => return Err("unterminated value set, expected ')'".into()),
            }
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(values),
                Some(t) => return Err(format!("expected ',' or ')' but found {t}")),
                None => return Err("unterminated value set, expected ')'".into()),
            }
        }
    }
}

/// Field selector operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldOperator {
    Equals,
    NotEquals,
}

/// One `path=value` or `path!=value` term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    pub path: String,
    pub operator: FieldOperator,
    pub value: String,
}

/// A field selector (`metadata.name=web,status.phase!=Running`). Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Parse `path=value`, `path==value`, `path!=value`, comma-separated. Values may escape
    /// `,`, `=`, `!` and `\` with a backslash, as in Kubernetes.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(input, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (path, operator, raw) = if let Some(i) = find_unescaped(term, "!=") {
                (&term[..i], FieldOperator::NotEquals, &term[i + 2..])
            } else if let Some(i) = find_unescaped(term, "==") {
                (&term[..i], FieldOperator::Equals, &term[i + 2..])
            } else if let Some(i) = find_unescaped(term, "=") {
                (&term[..i], FieldOperator::Equals, &term[i + 1..])
            } else {
                return Err(SelectorError::new(
                    input,
                    format!("invalid field selector term {term:?}: expected =, == or !="),
                ));
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(SelectorError::new(
                    input,
                    format!("invalid field selector term {term:?}: empty field path"),
                ));
            }
            requirements.push(FieldRequirement {
                path: path.trim_start_matches('.').to_string(),
                operator,
                value: unescape(raw.trim()),
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Match against an object's JSON: the dotted path resolves to a scalar (missing = `""`).
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let got = fieldpath::scalar_string(fieldpath::get(obj, &r.path));
            match r.operator {
                FieldOperator::Equals => got == r.value,
                FieldOperator::NotEquals => got != r.value,
            }
        })
    }

    /// The value `path` must equal for this selector to match, if the selector pins it
    /// (useful to serve `spec.nodeName=n1` from an index).
    pub fn exact(&self, path: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.operator == FieldOperator::Equals && r.path == path)
            .map(|r| r.value.as_str())
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match r.operator {
                FieldOperator::Equals => "=",
                FieldOperator::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", r.path, escape(&r.value))?;
        }
        Ok(())
    }
}

impl std::str::FromStr for FieldSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldSelector::parse(s)
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if s[i..].starts_with(pat) {
            return Some(i);
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_and_match_all_operators() {
        let l = labels(&[
            ("app", "web"),
            ("tier", "frontend"),
            ("env", "prod"),
            ("gen", "7"),
        ]);
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app = web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("env in (prod,staging)", true),
            ("env in (staging)", false),
            ("env notin (prod)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("gen>5", true),
            ("gen<5", false),
            ("app=web,tier=frontend", true),
            ("app=web,tier=backend", false),
            ("app=web, env in (prod), !canary", true),
            ("", true),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn empty_value_and_qualified_keys() {
        let s = LabelSelector::parse("app.kubernetes.io/name=web,flag=").unwrap();
        assert!(s.matches(&labels(&[("app.kubernetes.io/name", "web"), ("flag", "")])));
        assert!(!s.matches(&labels(&[("app.kubernetes.io/name", "web")])));
        assert_eq!(s.to_string(), "app.kubernetes.io/name=web,flag=");
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "app=web,",
            ",app",
            "env in prod",
            "env in (prod",
            "env in ()",
            "env in (a b)",
            "a=b=c",
            "a b",
            "=b",
            "!",
            "app=-bad-",
            "bad key=1",
            "-key=1",
            "a>x",
            "in=1",
            "a (b)",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should fail");
        }
        let e = LabelSelector::parse("env in (prod").unwrap_err();
        assert!(e.to_string().contains("expected ')'"), "{e}");
    }

    #[test]
    fn display_round_trips_and_sorts() {
        let s = LabelSelector::parse("tier notin (b,a),app==web,!canary,env,x!=y,gen>3").unwrap();
        assert_eq!(
            s.to_string(),
            "app=web,!canary,env,gen>3,tier notin (a,b),x!=y"
        );
        assert_eq!(LabelSelector::parse(&s.to_string()).unwrap(), s);
        assert!(LabelSelector::parse("  ").unwrap().is_empty());
        assert!(!s.is_empty());
    }

    #[test]
    fn from_k8s_selector() {
        let sel: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "Exists"},
                {"key": "zone", "operator": "NotIn", "values": ["z1"]}
            ]
        }))
        .unwrap();
        let s = LabelSelector::from_k8s(&sel).unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("tier", "x")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("tier", "x"),
            ("canary", "1")
        ])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("tier", "x"),
            ("zone", "z1")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("env", "dev"), ("tier", "x")])));
        assert_eq!(
            s.to_string(),
            "app=web,!canary,env in (prod,staging),tier,zone notin (z1)"
        );

        let empty = LabelSelector::from_k8s(&metav1::LabelSelector::default()).unwrap();
        assert!(empty.is_empty() && empty.matches(&BTreeMap::new()));

        let bad: metav1::LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "env", "operator": "Equals", "values": ["a"]}]
        }))
        .unwrap();
        assert!(LabelSelector::from_k8s(&bad).is_err());
        let bad: metav1::LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "env", "operator": "In", "values": []}]
        }))
        .unwrap();
        assert!(LabelSelector::from_k8s(&bad).is_err());
        let bad: metav1::LabelSelector = serde_json::from_value(json!({
            "matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]
        }))
        .unwrap();
        assert!(LabelSelector::from_k8s(&bad).is_err());
    }

    #[test]
    fn from_map_is_equality() {
        let s = LabelSelector::from_map(&labels(&[("app", "web")]));
        assert!(s.matches(&labels(&[("app", "web"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
        assert!(s.matches_opt(Some(&labels(&[("app", "web")]))));
        assert!(!s.matches_opt(None));
        assert!(LabelSelector::everything().matches_opt(None));
    }

    #[test]
    fn field_selectors() {
        let pod = json!({
            "metadata": {"name": "web-1", "namespace": "default"},
            "spec": {"nodeName": "node-a", "restartPolicy": "Always"},
            "status": {"phase": "Running"}
        });
        let cases = [
            ("metadata.name=web-1", true),
            ("metadata.name==web-1", true),
            ("metadata.name!=web-1", false),
            ("metadata.namespace=default,spec.nodeName=node-a", true),
            ("spec.nodeName=node-b", false),
            ("spec.nodeName!=", true),
            ("status.phase!=Succeeded,status.phase!=Failed", true),
            ("spec.schedulerName=", true),
            ("spec.schedulerName!=", false),
            ("spec=", true),
            ("", true),
        ];
        for (sel, want) in cases {
            let s = FieldSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&pod), want, "{sel}");
        }
        let s = FieldSelector::parse("spec.nodeName=node-a,status.phase!=Failed").unwrap();
        assert_eq!(s.exact("spec.nodeName"), Some("node-a"));
        assert_eq!(s.exact("status.phase"), None);
        assert_eq!(s.to_string(), "spec.nodeName=node-a,status.phase!=Failed");
        assert!(FieldSelector::parse("metadata.name").is_err());
        assert!(FieldSelector::parse("=x").is_err());
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let l = labels(&[("a", "1")]);
        for input in [
            "(",
            ")",
            "!!a",
            "a!b",
            "a=(b)",
            "ä=ö",
            "a=b,,c",
            "a in (",
            "a in (,)",
            "a notin",
            "a>",
            "a<b",
            "\\",
            "a==",
            "a!=",
            "=",
            "==",
            "!=",
            ",",
            "a in (b,c,)",
            "\u{0}",
            "a=b)",
        ] {
            if let Ok(s) = LabelSelector::parse(input) {
                let _ = s.matches(&l);
                assert_eq!(
                    LabelSelector::parse(&s.to_string()).as_ref(),
                    Ok(&s),
                    "{input:?}"
                );
            }
            if let Ok(f) = FieldSelector::parse(input) {
                let _ = f.matches(&json!({"a": [1]}));
            }
        }
        assert!(LabelSelector::parse("a in (b,c,)").is_err());
        assert!(LabelSelector::parse("ä=ö").is_err());
        let f = FieldSelector::parse("a[0]=1,a]=x,[=y").unwrap();
        assert!(!f.matches(&json!({"a": [1]})));
    }

    #[test]
    fn field_selector_escapes() {
        let s = FieldSelector::parse(r"metadata.name=a\,b,spec.x=c\=d").unwrap();
        assert_eq!(s.requirements().len(), 2);
        assert_eq!(s.requirements()[0].value, "a,b");
        assert_eq!(s.requirements()[1].value, "c=d");
        assert!(s.matches(&json!({"metadata": {"name": "a,b"}, "spec": {"x": "c=d"}})));
        assert_eq!(FieldSelector::parse(&s.to_string()).unwrap(), s);
    }
}
