//! Manifest files: multi-document YAML or JSON into untyped objects.
//!
//! Owns the text-to-JSON step before [`crate::strict::decode`]: splitting `---` documents,
//! skipping empty ones, expanding `kind: List` (and `*List`) items, and reporting the document
//! and line of a syntax error. YAML is read with YAML 1.1 scalar rules, as kubectl does
//! (sigs.k8s.io/yaml is go-yaml v2 underneath): `0644` is octal (420) and `yes`/`on` are booleans.
//! It never checks kinds or fields.

use serde_json::Value;

/// A manifest that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// YAML or JSON syntax error. `document` and `line` are 1-based positions in the text.
    #[error("document {document}, line {line}: {message}")]
    Syntax {
        document: usize,
        line: usize,
        message: String,
    },
    /// A document is valid but is not an object (e.g. a bare string), or a List is malformed.
    #[error("document {document}: {message}")]
    Shape { document: usize, message: String },
}

/// Parse a manifest text into objects, in order. JSON is detected by a leading `{` or `[`
/// (a JSON array is a list of objects; several concatenated JSON objects are allowed).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, ManifestError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let docs = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json(trimmed, text.len() - trimmed.len(), text)?
    } else {
        parse_yaml(text)?
    };
    let mut out = Vec::new();
    for (i, doc) in docs {
        flatten(doc, i, &mut out)?;
    }
    Ok(out)
}

fn flatten(doc: Value, document: usize, out: &mut Vec<Value>) -> Result<(), ManifestError> {
    match doc {
        Value::Null => Ok(()),
        Value::Array(items) => {
            for item in items {
                flatten(item, document, out)?;
            }
            Ok(())
        }
        Value::Object(mut m) => {
            let is_list = m
                .get("kind")
                .and_then(Value::as_str)
                .is_some_and(|k| k == "List" || k.ends_with("List"))
                && m.contains_key("items");
            if !is_list {
                if m.is_empty() {
                    return Ok(());
                }
                out.push(Value::Object(m));
                return Ok(());
            }
            match m.remove("items") {
                Some(Value::Array(items)) => {
                    for item in items {
                        match item {
                            Value::Object(_) => out.push(item),
                            Value::Null => {}
                            other => {
                                return Err(ManifestError::Shape {
                                    document,
                                    message: format!("List items must be objects, found {other}"),
                                });
                            }
                        }
                    }
                    Ok(())
                }
                Some(Value::Null) | None => Ok(()),
                Some(_) => Err(ManifestError::Shape {
                    document,
                    message: "List items must be an array".into(),
                }),
            }
        }
        other => Err(ManifestError::Shape {
            document,
            message: format!("expected an object, found {}", short(&other)),
        }),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(40).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

fn parse_json(text: &str, offset: usize, full: &str) -> Result<Vec<(usize, Value)>, ManifestError> {
    let lines_before = full[..offset].matches('\n').count();
    let mut out = Vec::new();
    let stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for (i, v) in stream.enumerate() {
        match v {
            Ok(v) => out.push((i + 1, v)),
            Err(e) => {
                let full_msg = e.to_string();
                let message = match full_msg.rfind(" at line ") {
                    Some(p) => full_msg[..p].to_string(),
                    None => full_msg,
                };
                return Err(ManifestError::Syntax {
                    document: i + 1,
                    line: e.line() + lines_before,
                    message,
                });
            }
        }
    }
    Ok(out)
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
    }
}

/// Split YAML text into documents at `---` lines, remembering each document's first line.
/// Splitting ourselves (rather than parsing all documents at once) lets errors name their
/// document and keeps one bad document from hiding the position of the problem.
fn split_yaml(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start_line = 1;
    for (i, line) in text.lines().enumerate() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep {
            docs.push((start_line, std::mem::take(&mut cur)));
            start_line = i + 1;
            // Content after the marker on the same line (`--- !tag` or `--- {a: 1}`) is kept;
            // the marker itself is kept too so the parser sees a well-formed document start.
            cur.push_str(line);
            cur.push('\n');
            continue;
        }
        if line == "..." {
            docs.push((start_line, std::mem::take(&mut cur)));
            start_line = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start_line, cur));
    docs
}

fn parse_yaml(text: &str) -> Result<Vec<(usize, Value)>, ManifestError> {
    let mut out = Vec::new();
    let mut directives = String::new();
    for (n, (start_line, doc)) in split_yaml(text).into_iter().enumerate() {
        let document = n + 1;
        // Directives (`%YAML 1.1`) belong to the following document only; keep them simple.
        if doc.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t.starts_with('%')
        }) {
            directives = doc
                .lines()
                .filter(|l| l.trim_start().starts_with('%'))
                .collect::<Vec<_>>()
                .join("\n");
            continue;
        }
        let (body, shift) = if directives.is_empty() {
            (doc, 0)
        } else {
            let d = std::mem::take(&mut directives);
            let shift = d.lines().count();
            let body = if doc.starts_with("---") {
                format!("{d}\n{doc}")
            } else {
                format!("{d}\n---\n{doc}")
            };
            (body, shift + usize::from(!doc.starts_with("---")))
        };
        let value: Value =
            match serde_saphyr::from_str_with_options::<Option<Value>>(&body, yaml_options()) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    let rel = e.location().map(|l| l.line() as usize).unwrap_or(1);
                    let line = start_line + rel.saturating_sub(1).saturating_sub(shift);
                    return Err(ManifestError::Syntax {
                        document,
                        line,
                        message: first_line(&e.to_string()),
                    });
                }
            };
        out.push((document, value));
    }
    Ok(out)
}

/// The first line of a parser message, without its own `error: line N column M: ` prefix (that
/// line is relative to the split-off document; the caller reports the absolute one).
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    if let Some(rest) = line.strip_prefix("line ")
        && let Some((pos, msg)) = rest.split_once(": ")
        && pos.split_once(" column ").is_some_and(|(l, c)| {
            l.chars().all(|ch| ch.is_ascii_digit()) && c.chars().all(|ch| ch.is_ascii_digit())
        })
    {
        return msg.to_string();
    }
    line.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn multi_document_with_empty_documents() {
        let text = r#"
# leading comment
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: a
data:
  key: value
---
---
# only a comment
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec:
  ports: [{port: 80}]
"#;
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], json!("ConfigMap"));
        assert_eq!(docs[0]["data"]["key"], json!("value"));
        assert_eq!(docs[1]["spec"]["ports"][0]["port"], json!(80));
    }

    #[test]
    fn yaml_1_1_scalars_as_kubectl_reads_them() {
        let text = "a: 0644\nb: yes\nc: on\nd: \"0644\"\ne: 1.5\nf: ~\ng: '8080'\nh: 0o17\ni: 12\n";
        let docs = parse_documents(text).unwrap();
        let d = &docs[0];
        assert_eq!(d["a"], json!(420), "0644 is octal as in go-yaml v2");
        assert_eq!(d["b"], json!(true));
        assert_eq!(d["c"], json!(true));
        assert_eq!(d["d"], json!("0644"));
        assert_eq!(d["e"], json!(1.5));
        assert_eq!(d["f"], Value::Null);
        assert_eq!(d["g"], json!("8080"));
        assert_eq!(d["i"], json!(12));
    }

    #[test]
    fn default_mode_octal_in_a_volume() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers: [{name: c, image: busybox}]
  volumes:
  - name: cfg
    configMap:
      name: cfg
      defaultMode: 0644
"#;
        let docs = parse_documents(text).unwrap();
        assert_eq!(
            docs[0]["spec"]["volumes"][0]["configMap"]["defaultMode"],
            json!(420)
        );
    }

    #[test]
    fn list_kind_is_expanded() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: a}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: b}
---
apiVersion: v1
kind: ServiceList
items: []
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
"#;
        let docs = parse_documents(text).unwrap();
        let names: Vec<&str> = docs
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["a", "b", "c"]);
    }

    #[test]
    fn json_inputs() {
        let docs =
            parse_documents(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"x"}}"#)
                .unwrap();
        assert_eq!(docs.len(), 1);
        let docs = parse_documents("{\"kind\":\"A\"}\n{\"kind\":\"B\"}").unwrap();
        assert_eq!(docs.len(), 2);
        let docs = parse_documents(r#"[{"kind":"A"},{"kind":"B"}]"#).unwrap();
        assert_eq!(docs.len(), 2);
        let err = parse_documents("{\"kind\":\"A\"}\n{\"kind\": }").unwrap_err();
        match err {
            ManifestError::Syntax { document, line, .. } => {
                assert_eq!(document, 2);
                assert_eq!(line, 2);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn errors_name_document_and_line() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [unclosed\n";
        let err = parse_documents(text).unwrap_err();
        let ManifestError::Syntax { document, line, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(*document, 2);
        assert!((7..=9).contains(line), "line {line}: {err}");
        assert!(err.to_string().starts_with("document 2, line "), "{err}");
        assert!(
            !err.to_string().contains("column"),
            "no relative position leaks: {err}"
        );

        let text = "a: 1\n---\nb: 2\nb: 3\n";
        let err = parse_documents(text).unwrap_err();
        assert!(
            matches!(err, ManifestError::Syntax { document: 2, .. }),
            "{err}"
        );

        let err = parse_documents("just a string\n").unwrap_err();
        assert!(
            matches!(err, ManifestError::Shape { document: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn empty_inputs() {
        assert!(parse_documents("").unwrap().is_empty());
        assert!(parse_documents("---\n---\n# nothing\n").unwrap().is_empty());
        assert!(parse_documents("   \n").unwrap().is_empty());
    }
}
