//! `ferry apply`: create-or-update from manifests with kubectl's three-way merge semantics, using
//! the `kubectl.kubernetes.io/last-applied-configuration` annotation to know what a previous
//! apply set (so fields removed from the manifest are removed from the object, and fields other
//! writers set are left alone).

use std::path::Path;

use anyhow::{Context, Result, bail};
use ferry_api::client::Client;
use serde_json::{Map, Value};

use crate::output::qualified;

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub struct Document {
    /// Where it came from, for error messages ("web.yaml, document 2").
    pub source: String,
    pub object: Value,
}

fn read_source(file: &str) -> Result<Vec<(String, String)>> {
    if file == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading stdin")?;
        return Ok(vec![("stdin".into(), text)]);
    }
    let path = Path::new(file);
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {file}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        entries.sort();
        let mut out = Vec::new();
        for p in entries {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            out.push((p.display().to_string(), text));
        }
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {file}"))?;
    Ok(vec![(file.to_string(), text)])
}

/// Every document in `files`, parsed (not yet validated).
pub fn load_documents(files: &[String]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for f in files {
        for (source, text) in read_source(f)? {
            let values = ferry_api::manifest::parse_documents(&text)
                .map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            let many = values.len() > 1;
            for (i, object) in values.into_iter().enumerate() {
                let source = if many {
                    format!("{source} (document {})", i + 1)
                } else {
                    source.clone()
                };
                docs.push(Document { source, object });
            }
        }
    }
    if docs.is_empty() {
        bail!("no objects passed to apply");
    }
    Ok(docs)
}

/// A JSON merge patch that turns `current` into `modified`, deleting what `original` (the last
/// applied configuration) had and `modified` no longer has.
pub fn three_way_patch(original: &Value, modified: &Value, current: &Value) -> Value {
    match (modified, current) {
        (Value::Object(m), Value::Object(c)) => {
            let mut patch = Map::new();
            if let Value::Object(o) = original {
                for k in o.keys() {
                    if !m.contains_key(k) && c.contains_key(k) {
                        patch.insert(k.clone(), Value::Null);
                    }
                }
            }
            for (k, mv) in m {
                let cv = c.get(k);
                if cv == Some(mv) {
                    continue;
                }
                match cv {
                    Some(cv @ Value::Object(_)) if mv.is_object() => {
                        let ov = original.get(k).unwrap_or(&Value::Null);
                        let sub = three_way_patch(ov, mv, cv);
                        if sub.as_object().is_some_and(|s| !s.is_empty()) {
                            patch.insert(k.clone(), sub);
                        }
                    }
                    _ => {
                        patch.insert(k.clone(), mv.clone());
                    }
                }
            }
            Value::Object(patch)
        }
        _ => modified.clone(),
    }
}

pub async fn apply(client: &Client, files: &[String], namespace: Option<&str>) -> Result<()> {
    let docs = load_documents(files)?;
    // Validate everything first: a bad document applies nothing.
    let mut prepared = Vec::new();
    for doc in docs {
        let (info, mut canonical) = ferry_api::strict::decode(&doc.object)
            .map_err(|e| anyhow::anyhow!("{}: {e}", doc.source))?;
        let name = canonical
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            bail!(
                "{}: metadata.name: required (apply needs a name; use `ferry create` semantics via the API for generateName)",
                doc.source
            );
        }
        let ns = if info.namespaced {
            let ns = canonical
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(String::from)
                .or_else(|| namespace.map(String::from))
                .unwrap_or_else(|| "default".into());
            if let Some(given) = namespace
                && given != ns
            {
                bail!(
                    "{}: the namespace from the manifest ({ns}) does not match --namespace {given}",
                    doc.source
                );
            }
            ns
        } else {
            String::new()
        };
        let applied = doc.object.clone();
        ferry_api::defaults::apply(info, &mut canonical);
        ferry_api::validation::validate(info, &canonical).map_err(|e| {
            anyhow::anyhow!("{}: {} \"{name}\" is invalid: {e}", doc.source, info.kind)
        })?;
        prepared.push((info, ns, name, applied, canonical));
    }
    let mut failed = false;
    for (info, ns, name, applied, mut desired) in prepared {
        let mut applied = applied;
        if let Some(m) = applied
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
        {
            m.remove(LAST_APPLIED);
        }
        let applied_text = serde_json::to_string(&applied)?;
        let annotations = desired
            .as_object_mut()
            .and_then(|o| {
                o.entry("metadata")
                    .or_insert_with(|| Value::Object(Map::new()))
                    .as_object_mut()
            })
            .map(|m| {
                m.entry("annotations")
                    .or_insert_with(|| Value::Object(Map::new()))
            });
        if let Some(Value::Object(a)) = annotations {
            a.insert(LAST_APPLIED.into(), Value::String(applied_text.clone()));
        }
        let label = format!("{}/{name}", qualified(info));
        let result = match client.get(info.kind, &ns, &name).await {
            Err(e) if e.is_not_found() => client
                .create(info.kind, &ns, &desired)
                .await
                .map(|_| "created"),
            Err(e) => Err(e),
            Ok(current) => {
                let original = current
                    .pointer(&format!(
                        "/metadata/annotations/{}",
                        LAST_APPLIED.replace('/', "~1")
                    ))
                    .and_then(Value::as_str)
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .map(|mut v| {
                        ferry_api::defaults::apply(info, &mut v);
                        v
                    })
                    .unwrap_or(Value::Object(Map::new()));
                let mut current_cmp = current.clone();
                if let Some(o) = current_cmp.as_object_mut() {
                    o.remove("status");
                }
                let patch = three_way_patch(&original, &desired, &current_cmp);
                if patch.as_object().is_some_and(Map::is_empty) {
                    Ok("unchanged")
                } else {
                    client
                        .patch(info.kind, &ns, &name, &patch)
                        .await
                        .map(|_| "configured")
                }
            }
        };
        match result {
            Ok(verb) => println!("{label} {verb}"),
            Err(e) => {
                eprintln!("error: {label}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some objects were not applied");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn three_way_removes_only_what_apply_owned() {
        let original = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        let modified = json!({"metadata": {"labels": {"a": "1"}}, "data": {"x": "2"}});
        let current = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "kept"}}, "data": {"x": "1"}});
        let p = three_way_patch(&original, &modified, &current);
        assert_eq!(
            p,
            json!({"metadata": {"labels": {"b": null}}, "data": {"x": "2"}})
        );
    }

    #[test]
    fn identical_gives_an_empty_patch() {
        let v = json!({"spec": {"replicas": 2, "list": [1, 2]}});
        assert_eq!(three_way_patch(&v, &v, &v), json!({}));
    }
}
