//! Small helpers for Kubernetes-style field paths over `serde_json::Value`.
//!
//! Owns path syntax (`spec.template.spec.containers[0].image`): reading a value at a path, and
//! building paths for error messages. It never interprets what the fields mean.

use serde_json::Value;

/// Split `a.b[0].c` into segments `a`, `b`, `[0]`, `c`. A leading `.` is ignored; text inside
/// brackets is taken literally (`labels[a.b/c]`). `None` for an unterminated bracket.
fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut out = Vec::new();
    let mut rest = path.trim_start_matches('.');
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let end = inner.find(']')?;
            let k = &inner[..end];
            out.push(match k.parse::<usize>() {
                Ok(i) => Segment::Index(i),
                Err(_) => Segment::Key(k),
            });
            rest = inner[end + 1..]
                .strip_prefix('.')
                .unwrap_or(&inner[end + 1..]);
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            out.push(Segment::Key(&rest[..end]));
            rest = &rest[end..];
            rest = rest.strip_prefix('.').unwrap_or(rest);
        }
    }
    Some(out)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// The value at a dotted path (`metadata.name`, `spec.containers[0].image`,
/// `metadata.labels[app]`), or `None` when any step is missing or of the wrong shape.
/// The empty path returns the value itself.
pub fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = value;
    for seg in segments(path)? {
        cur = match (seg, cur) {
            (Segment::Key(k), Value::Object(m)) => m.get(k)?,
            (Segment::Index(i), Value::Array(a)) => a.get(i)?,
            (Segment::Index(i), Value::Object(m)) => m.get(&i.to_string())?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Like [`get`] but only for string values.
pub fn get_str<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    get(value, path).and_then(Value::as_str)
}

/// Render a scalar the way field selectors compare it: strings as-is, numbers and booleans
/// in their JSON spelling, null/missing/objects/arrays as `""`.
pub fn scalar_string(value: Option<&Value>) -> String {
    match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// `parent.field` (or `field` when parent is empty).
pub fn child(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// `parent[i]`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// `parent[key]`, used for map entries such as `metadata.labels[app]`.
pub fn key(parent: &str, key: &str) -> String {
    format!("{parent}[{key}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_paths() {
        let v = json!({
            "metadata": {"name": "a", "labels": {"app": "web", "a.b/c": "x"}},
            "spec": {"containers": [{"name": "c0"}, {"name": "c1", "ports": [{"containerPort": 80}]}]},
            "status": {"phase": "Running", "ready": true}
        });
        assert_eq!(get_str(&v, "metadata.name"), Some("a"));
        assert_eq!(get_str(&v, ".metadata.name"), Some("a"));
        assert_eq!(get_str(&v, "spec.containers[1].name"), Some("c1"));
        assert_eq!(
            get(&v, "spec.containers[1].ports[0].containerPort"),
            Some(&json!(80))
        );
        assert_eq!(get_str(&v, "metadata.labels[app]"), Some("web"));
        assert_eq!(get_str(&v, "metadata.labels[a.b/c]"), Some("x"));
        assert!(get(&v, "spec.containers[2]").is_none());
        assert!(get(&v, "spec.nodeName").is_none());
        assert!(get(&v, "metadata.name.x").is_none());
        assert!(get(&v, "spec.containers[").is_none());
        assert_eq!(get(&v, ""), Some(&v));
        assert_eq!(scalar_string(get(&v, "status.ready")), "true");
        assert_eq!(scalar_string(get(&v, "spec.nodeName")), "");
        assert_eq!(scalar_string(get(&v, "spec")), "");
    }

    #[test]
    fn build_paths() {
        assert_eq!(child("", "spec"), "spec");
        assert_eq!(child("spec", "replicas"), "spec.replicas");
        assert_eq!(index("spec.containers", 2), "spec.containers[2]");
        assert_eq!(key("metadata.labels", "app"), "metadata.labels[app]");
    }
}
