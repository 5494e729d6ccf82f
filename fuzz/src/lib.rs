//! Shared harness code for Ferry's fuzz targets.
//!
//! The API server's request handlers (`ApiServer::create`/`update`/`patch`/`list`, `watch::start`)
//! are async and need a running store, and their decode helpers (`parse_object`, `admit`,
//! `kind_info`) are private. This module replays, step by step, what those handlers do with a
//! request *before* the store is touched, calling the same public functions
//! (`ferry_api::{kinds, strict, defaults, validation, selector}` and
//! `ferry_control::apiserver::objects`). Keep it in step with control/src/apiserver/mod.rs.
//!
//! Only panics count as failures: every `Err` is an accepted outcome.

use std::collections::BTreeMap;

use ferry_api::kinds::{self, KindInfo};
use ferry_api::selector::{FieldSelector, LabelSelector};
use ferry_control::apiserver::objects::{self, Subresource};
use serde_json::Value;

/// `FERRY_FUZZ_DEBUG=1` prints each step's outcome to stderr: for checking that seeds reach the
/// stage they are meant to (run with `-runs=0` over a corpus directory).
pub fn debug(what: impl FnOnce() -> String) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FERRY_FUZZ_DEBUG").is_some()) {
        eprintln!("ferry-fuzz: {}", what());
    }
}

/// What the server does with a manifest file's text (the CLI's `apply -f` path): split and
/// parse the documents, then strict decode, default and validate each.
pub fn manifest(text: &str) {
    let Ok(docs) = ferry_api::manifest::parse_documents(text) else {
        return;
    };
    for doc in &docs {
        // Validation must cope with a canonical but not yet defaulted object, too.
        match ferry_api::strict::decode(doc) {
            Ok((info, mut obj)) => {
                let _ = ferry_api::validation::validate(info, &obj);
                ferry_api::defaults::apply(info, &mut obj);
                if let Err(e) = ferry_api::validation::validate(info, &obj) {
                    let _ = e.to_string();
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        // The one-call form the CLI uses.
        let r = ferry_api::validation::admit(doc);
        debug(|| match &r {
            Ok((info, _)) => format!("manifest: admitted {}", info.kind),
            Err(e) => format!("manifest: rejected: {e}"),
        });
    }
}

/// `kind_info` in the API server: empty is an error, else the registry lookup.
pub fn kind_info(name: &str) -> Option<&'static KindInfo> {
    if name.is_empty() {
        return None;
    }
    let info = kinds::lookup(name)?;
    // Pure accessors the server and CLI print.
    let _ = (
        info.list_kind(),
        info.group(),
        info.version(),
        info.qualified_plural(),
    );
    Some(info)
}

/// `parse_object` in the API server: size limit, JSON, must be an object.
pub fn parse_object(bytes: &[u8]) -> Option<Value> {
    if bytes.len() > objects::MAX_OBJECT_BYTES {
        return None;
    }
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.is_object().then_some(v)
}

/// `ApiServer::admit`: fill apiVersion/kind from the request, strict decode, check the kind,
/// default, validate. On success `obj` is the canonical, defaulted object.
pub fn admit(info: &'static KindInfo, obj: &mut Value) -> bool {
    let obj_map = obj.as_object_mut().expect("checked object");
    obj_map
        .entry("apiVersion")
        .or_insert_with(|| Value::String(info.api_version.into()));
    obj_map
        .entry("kind")
        .or_insert_with(|| Value::String(info.kind.into()));
    let (decoded_info, mut canonical) = match ferry_api::strict::decode(obj) {
        Ok(r) => r,
        Err(e) => {
            debug(|| format!("admit {}: decode: {e}", info.kind));
            return false;
        }
    };
    if decoded_info.kind != info.kind {
        debug(|| format!("admit {}: body is a {}", info.kind, decoded_info.kind));
        return false;
    }
    ferry_api::defaults::apply(info, &mut canonical);
    if let Err(e) = ferry_api::validation::validate(info, &canonical) {
        debug(|| format!("admit {}: validate: {e}", info.kind));
        return false;
    }
    debug(|| format!("admit {}: ok", info.kind));
    *obj = canonical;
    true
}

/// An object as the store would hand it back: the server only ever stores JSON objects that it
/// wrote itself, so a stored value that is not an object is not a reachable state.
pub fn stored_object(stored: &[u8], mod_revision: u64) -> Option<Value> {
    let s = std::str::from_utf8(stored).ok()?;
    let v = objects::from_store(s, mod_revision).ok()?;
    v.is_object().then_some(v)
}

/// The stored round trip every successful write takes, plus the read accessors.
fn store_round_trip(info: &KindInfo, obj: &Value, mod_revision: u64) -> Value {
    let namespace = objects::meta_str(obj, "namespace").to_string();
    let name = objects::meta_str(obj, "name").to_string();
    let _ = objects::key(info, &namespace, &name);
    let _ = objects::finalizers(obj);
    let value = objects::to_store(obj);
    let back = objects::from_store(&value, mod_revision).expect("to_store output parses");
    assert_eq!(
        objects::meta_str(&back, "resourceVersion"),
        mod_revision.to_string(),
        "from_store stamps the revision"
    );
    back
}

/// `ApiServer::create` up to the store write.
pub fn create(kind: &str, namespace: &str, body: &[u8]) -> Option<Value> {
    let info = kind_info(kind)?;
    let mut obj = parse_object(body)?;
    let req_name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let generate = obj
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if req_name.is_empty() && !generate.is_empty() {
        objects::metadata_mut(&mut obj).insert(
            "name".into(),
            Value::String(objects::generated_name(&generate)),
        );
    }
    if info.namespaced {
        let ns = match objects::meta_str(&obj, "namespace") {
            "" if namespace.is_empty() => "default".to_string(),
            "" => namespace.to_string(),
            ns if !namespace.is_empty() && ns != namespace => return None,
            ns => ns.to_string(),
        };
        objects::metadata_mut(&mut obj).insert("namespace".into(), Value::String(ns));
    }
    if !admit(info, &mut obj) {
        return None;
    }
    objects::prepare_create(info, &mut obj);
    Some(store_round_trip(info, &obj, 1))
}

/// `ApiServer::update` up to the store write, against `old` as the stored object.
pub fn update(kind: &str, body: &[u8], old: Option<&Value>, sub: Subresource) -> Option<Value> {
    let info = kind_info(kind)?;
    let mut obj = parse_object(body)?;
    let name = objects::meta_str(&obj, "name").to_string();
    if name.is_empty() {
        return None;
    }
    let namespace = match objects::meta_str(&obj, "namespace") {
        "" if info.namespaced => "default".to_string(),
        ns => ns.to_string(),
    };
    if info.namespaced {
        objects::metadata_mut(&mut obj).insert("namespace".into(), Value::String(namespace));
    }
    let client_rv = objects::meta_str(&obj, "resourceVersion").to_string();
    if !client_rv.is_empty() && client_rv.parse::<u64>().is_err() {
        return None;
    }
    if !admit(info, &mut obj) {
        return None;
    }
    let old = old?;
    let mut new = obj.clone();
    objects::prepare_update(old, &mut new, sub);
    Some(store_round_trip(info, &new, 2))
}

/// `ApiServer::patch` up to the store write, against `old` as the stored object.
pub fn patch(
    kind: &str,
    namespace: &str,
    name: &str,
    patch: &[u8],
    old: Option<&Value>,
    sub: Subresource,
) -> Option<Value> {
    let info = kind_info(kind)?;
    let patch = parse_object(patch)?;
    let ns = if namespace.is_empty() {
        "default"
    } else {
        namespace
    };
    let _ = objects::key(info, ns, name);
    let _ = patch
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(String::from);
    let old = old?;
    let mut new = old.clone();
    objects::merge_patch(&mut new, &patch);
    if !new.is_object() {
        return None;
    }
    if objects::meta_str(&new, "name") != name
        || (info.namespaced && objects::meta_str(&new, "namespace") != ns)
    {
        return None;
    }
    if !admit(info, &mut new) {
        return None;
    }
    objects::prepare_update(old, &mut new, sub);
    Some(store_round_trip(info, &new, 3))
}

/// Parsed list/watch selectors, as `ApiServer::list` and `watch::start` build them.
pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

/// `ApiServer::list` / `watch::start` request decoding (kind, selectors, namespace prefix,
/// resourceVersion).
pub fn list_or_watch(
    kind: &str,
    namespace: &str,
    label_selector: &str,
    field_selector: &str,
    resource_version: &str,
) -> Option<Selectors> {
    let info = kind_info(kind);
    let labels = LabelSelector::parse(label_selector);
    let fields = FieldSelector::parse(field_selector);
    let (labels, fields) = match (labels, fields) {
        (Ok(l), Ok(f)) => (l, f),
        (l, f) => {
            // Error messages are returned to clients: they must format without panicking.
            if let Err(e) = l {
                let _ = e.to_string();
            }
            if let Err(e) = f {
                let _ = e.to_string();
            }
            return None;
        }
    };
    // Display is what the CLI and logs print; it must not panic on anything parse accepted.
    let _ = (labels.to_string(), fields.to_string());
    let _ = labels.is_empty() || fields.is_empty();
    let _ = fields.exact("spec.nodeName");
    if let Some(info) = info {
        let ns = (!namespace.is_empty()).then_some(namespace);
        let _ = objects::prefix(info, ns);
    }
    match resource_version {
        "" | "0" => {}
        rv => {
            let _ = rv.parse::<u64>();
        }
    }
    Some(Selectors { labels, fields })
}

impl Selectors {
    /// The filter list and watch apply to each stored object.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels: BTreeMap<String, String> = objects::labels(obj);
        let _ = self.labels.matches_opt(None);
        self.labels.matches(&labels) && self.fields.matches(obj)
    }
}
