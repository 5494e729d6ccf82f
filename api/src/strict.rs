//! Strict decoding of untyped JSON into the supported Kubernetes kinds.
//!
//! Owns the gate every manifest and API request passes before defaulting and validation:
//! `apiVersion`/`kind` must be present and known, the body must deserialize into the
//! k8s-openapi type (type errors carry the JSON path), and unknown fields are rejected with their
//! full path, as `kubectl apply --validate=strict` does. The result is the canonical JSON: the
//! typed object serialized back. It never applies defaults or semantic rules.
//!
//! Unknown fields are found by round-trip: deserialize into the typed struct, serialize it back,
//! and report every non-null key of the input that the output lacks. Free-form maps (labels,
//! annotations, ConfigMap data, nodeSelector...) keep their keys through the round-trip, so they
//! need no special case. Scalars whose spelling changes through the round-trip (a number given
//! for a Quantity, a base64 string for Secret data, a timestamp with an offset) are compared by
//! presence only.

use crate::error::{FieldError, FieldErrors};
use crate::kinds::{self, KindInfo};
use k8s_openapi::api::{apps, batch, coordination, core, discovery, rbac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

type Canonicalize = fn(&Value) -> Result<Value, FieldErrors>;

/// The typed round-trip for a supported kind, by kind name.
fn canonicalizer(kind: &str) -> Option<Canonicalize> {
    Some(match kind {
        "Namespace" => roundtrip::<core::v1::Namespace>,
        "Node" => roundtrip::<core::v1::Node>,
        "Pod" => roundtrip::<core::v1::Pod>,
        "ConfigMap" => roundtrip::<core::v1::ConfigMap>,
        "Secret" => roundtrip::<core::v1::Secret>,
        "Service" => roundtrip::<core::v1::Service>,
        "Event" => roundtrip::<core::v1::Event>,
        "ServiceAccount" => roundtrip::<core::v1::ServiceAccount>,
        "PersistentVolume" => roundtrip::<core::v1::PersistentVolume>,
        "PersistentVolumeClaim" => roundtrip::<core::v1::PersistentVolumeClaim>,
        "ReplicaSet" => roundtrip::<apps::v1::ReplicaSet>,
        "Deployment" => roundtrip::<apps::v1::Deployment>,
        "DaemonSet" => roundtrip::<apps::v1::DaemonSet>,
        "StatefulSet" => roundtrip::<apps::v1::StatefulSet>,
        "ControllerRevision" => roundtrip::<apps::v1::ControllerRevision>,
        "Job" => roundtrip::<batch::v1::Job>,
        "CronJob" => roundtrip::<batch::v1::CronJob>,
        "EndpointSlice" => roundtrip::<discovery::v1::EndpointSlice>,
        "Lease" => roundtrip::<coordination::v1::Lease>,
        "Role" => roundtrip::<rbac::v1::Role>,
        "ClusterRole" => roundtrip::<rbac::v1::ClusterRole>,
        "RoleBinding" => roundtrip::<rbac::v1::RoleBinding>,
        "ClusterRoleBinding" => roundtrip::<rbac::v1::ClusterRoleBinding>,
        _ => return None,
    })
}

/// Check `apiVersion`/`kind`, decode strictly and return the kind and the canonical JSON.
///
/// Errors name the field: `kind: required`,
/// `apiVersion: "apps/v2" is not a supported version for kind Deployment (expected apps/v1)`,
/// `spec.replicas: invalid type: string "x", expected i32`,
/// `spec.replicaz: unknown field "spec.replicaz"`.
pub fn decode(value: &Value) -> Result<(&'static KindInfo, Value), FieldErrors> {
    let info = resolve_kind(value)?;
    let canonical = canonicalize(info, value)?;
    Ok((info, canonical))
}

/// Strictly decode `value` as `info`'s type (unknown fields rejected) and return the canonical
/// JSON. Does not look at `apiVersion`/`kind` beyond what the typed deserializer checks.
pub fn canonicalize(info: &KindInfo, value: &Value) -> Result<Value, FieldErrors> {
    match canonicalizer(info.kind) {
        Some(f) => f(value),
        None => Err(FieldErrors::single(
            "kind",
            format!("{:?} is not a supported kind", info.kind),
        )),
    }
}

/// Find the [`KindInfo`] named by `value`'s `apiVersion` and `kind`, with field errors otherwise.
pub fn resolve_kind(value: &Value) -> Result<&'static KindInfo, FieldErrors> {
    let Some(obj) = value.as_object() else {
        return Err(FieldErrors::single(
            "<root>",
            format!("expected an object, found {}", type_name(value)),
        ));
    };
    let mut errs = FieldErrors::new();
    let api_version = string_field(obj, "apiVersion", &mut errs);
    let kind = string_field(obj, "kind", &mut errs);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Err(errs);
    };
    if let Some(info) = kinds::lookup_api(api_version, kind) {
        return Ok(info);
    }
    if let Some(info) = kinds::lookup_kind(kind) {
        return Err(FieldErrors::single(
            "apiVersion",
            format!(
                "{api_version:?} is not a supported version for kind {kind} (expected {})",
                info.api_version
            ),
        ));
    }
    let hint = kinds::lookup(kind)
        .map(|k| format!(" (did you mean {}?)", k.kind))
        .unwrap_or_default();
    Err(FieldErrors::single(
        "kind",
        format!("{kind:?} is not a supported kind{hint}"),
    ))
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    errs: &mut FieldErrors,
) -> Option<&'a str> {
    match obj.get(name) {
        None | Some(Value::Null) => {
            errs.push(FieldError::required(name));
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            errs.push(FieldError::required(name));
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errs.push(FieldError::new(
                name,
                format!("expected a string, found {}", type_name(other)),
            ));
            None
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(value: &Value) -> Result<Value, FieldErrors> {
    let typed: T = to_typed(value)?;
    let canonical = from_typed(&typed)?;
    let mut errs = FieldErrors::new();
    unknown_fields(value, &canonical, "", &mut errs);
    errs.into_result().map(|()| canonical)
}

/// Serialize a typed object back to JSON (infallible for k8s-openapi types in practice; reported
/// as a root error otherwise).
pub fn from_typed<T: Serialize>(typed: &T) -> Result<Value, FieldErrors> {
    serde_json::to_value(typed)
        .map_err(|e| FieldErrors::single("<root>", format!("cannot serialize: {e}")))
}

/// Deserialize JSON into a typed value, reporting a failure with the JSON path of the offending
/// field (`spec.replicas: invalid type: string "x", expected i32`). Unknown fields are ignored
/// here; use [`decode`] for strictness.
pub fn to_typed<T: DeserializeOwned>(value: &Value) -> Result<T, FieldErrors> {
    match T::deserialize(value) {
        Ok(t) => Ok(t),
        Err(e) => Err(locate_error::<T>(value)
            .unwrap_or_else(|| FieldErrors::single("<root>", e.to_string()))),
    }
}

/// Re-run the failed deserialization over a pretty-printed copy of `value` whose every line
/// maps to a field path, and translate serde_json's line number into that path.
fn locate_error<T: DeserializeOwned>(value: &Value) -> Option<FieldErrors> {
    let mut printer = PathPrinter::default();
    printer.value(value, String::new(), "", true);
    let err = serde_json::from_str::<T>(&printer.text).err()?;
    let path = printer.paths.get(err.line().checked_sub(1)?)?.clone();
    let full = err.to_string();
    let message = match full.rfind(" at line ") {
        Some(i) => full[..i].to_string(),
        None => full,
    };
    // `missing field `x`` is reported at the closing brace of the object that lacks it.
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(field) = rest.strip_suffix('`')
    {
        return Some(FieldError::required(join(&path, field)).into());
    }
    Some(
        FieldError::new(
            if path.is_empty() {
                "<root>".to_string()
            } else {
                path
            },
            message,
        )
        .into(),
    )
}

/// `parent.key` for identifier-like keys, `parent[key]` for free-form map keys such as
/// `app.kubernetes.io/name`.
fn join(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key}]"),
    }
}

/// Pretty-prints JSON with one scalar per line, remembering the field path of every line.
#[derive(Default)]
struct PathPrinter {
    text: String,
    paths: Vec<String>,
}

impl PathPrinter {
    fn line(&mut self, path: &str, content: &str) {
        self.text.push_str(content);
        self.text.push('\n');
        self.paths.push(path.to_string());
    }

    fn value(&mut self, v: &Value, path: String, prefix: &str, last: bool) {
        let comma = if last { "" } else { "," };
        match v {
            Value::Object(m) if !m.is_empty() => {
                self.line(&path, &format!("{prefix}{{"));
                let n = m.len();
                for (i, (k, child)) in m.iter().enumerate() {
                    let key = serde_json::to_string(k).unwrap_or_default();
                    self.value(child, join(&path, k), &format!("{key}: "), i + 1 == n);
                }
                self.line(&path, &format!("}}{comma}"));
            }
            Value::Array(a) if !a.is_empty() => {
                self.line(&path, &format!("{prefix}["));
                let n = a.len();
                for (i, child) in a.iter().enumerate() {
                    self.value(child, format!("{path}[{i}]"), "", i + 1 == n);
                }
                self.line(&path, &format!("]{comma}"));
            }
            scalar => {
                let s = serde_json::to_string(scalar).unwrap_or_default();
                self.line(&path, &format!("{prefix}{s}{comma}"));
            }
        }
    }
}

/// Report input keys (with non-null values) that the canonical form lacks.
fn unknown_fields(input: &Value, canonical: &Value, path: &str, errs: &mut FieldErrors) {
    match (input, canonical) {
        (Value::Object(i), Value::Object(c)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = join(path, k);
                match c.get(k) {
                    Some(cv) => unknown_fields(v, cv, &p, errs),
                    None => errs.push(FieldError::unknown_field(p)),
                }
            }
        }
        (Value::Array(i), Value::Array(c)) => {
            for (idx, (iv, cv)) in i.iter().zip(c).enumerate() {
                unknown_fields(iv, cv, &format!("{path}[{idx}]"), errs);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app.kubernetes.io/name": "web", "tier": "frontend"},
                "annotations": {"example.com/owner": "team-a"},
                "creationTimestamp": null
            },
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "containers": [{
                            "name": "web",
                            "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "name": "http"}],
                            "env": [
                                {"name": "MODE", "value": "prod"},
                                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
                            ],
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": 1, "memory": "256Mi"}
                            },
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
                            "livenessProbe": {"tcpSocket": {"port": 80}, "initialDelaySeconds": 10},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/nginx/conf.d", "readOnly": true}]
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}}]
                    }
                }
            }
        })
    }

    #[test]
    fn typical_deployment_decodes_unchanged() {
        let input = deployment();
        let (info, canonical) = decode(&input).expect("decodes");
        assert_eq!(info.kind, "Deployment");
        assert_eq!(canonical["spec"]["replicas"], json!(3));
        assert_eq!(
            canonical["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            json!(0)
        );
        assert_eq!(
            canonical["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            json!("25%")
        );
        let c = &canonical["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["resources"]["limits"]["cpu"],
            json!("1"),
            "numeric quantity becomes a string"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], json!("http"));
        assert_eq!(
            c["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
            json!("status.podIP")
        );
        assert_eq!(
            canonical["metadata"]["labels"]["app.kubernetes.io/name"],
            json!("web")
        );
        assert!(canonical["metadata"].get("creationTimestamp").is_none());
    }

    #[test]
    fn unknown_fields_reported_with_paths() {
        let mut input = deployment();
        input["spec"]["replicaz"] = json!(2);
        input["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
        input["spec"]["template"]["spec"]["volumes"][0]["configMap"]["mode"] = json!(1);
        input["metadata"]["lables"] = json!({"a": "b"});
        let errs = decode(&input).unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "metadata.lables",
                "spec.replicaz",
                "spec.template.spec.containers[0].imagee",
                "spec.template.spec.volumes[0].configMap.mode",
            ]
        );
        assert!(
            errs.to_string()
                .contains(r#"unknown field "spec.template.spec.containers[0].imagee""#)
        );
    }

    #[test]
    fn unknown_top_level_field_and_null_values() {
        let mut input = deployment();
        input["extra"] = json!(true);
        input["spec"]["paused"] = Value::Null; // nulls are "not set", as in Kubernetes
        input["spec"]["bogus"] = Value::Null;
        let errs = decode(&input).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs.0[0].path, "extra");
    }

    #[test]
    fn type_errors_have_paths() {
        let mut input = deployment();
        input["spec"]["replicas"] = json!("three");
        let errs = decode(&input).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs.0[0].path, "spec.replicas");
        assert!(
            errs.0[0].message.contains("invalid type: string \"three\""),
            "{errs}"
        );

        let mut input = deployment();
        input["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
            json!({"a": 1});
        let errs = decode(&input).unwrap_err();
        assert_eq!(
            errs.0[0].path,
            "spec.template.spec.containers[0].ports[0].containerPort"
        );

        let mut input = deployment();
        input["spec"]["template"]["spec"]["containers"] = json!("nginx");
        let errs = decode(&input).unwrap_err();
        assert_eq!(errs.0[0].path, "spec.template.spec.containers");

        let mut input = deployment();
        input["metadata"]["labels"]["app.kubernetes.io/name"] = json!(5);
        let errs = decode(&input).unwrap_err();
        assert_eq!(errs.0[0].path, "metadata.labels[app.kubernetes.io/name]");

        let mut input = deployment();
        input["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!(8080);
        let errs = decode(&input).unwrap_err();
        assert_eq!(
            errs.0[0].path,
            "spec.template.spec.containers[0].env[0].value"
        );
    }

    #[test]
    fn kind_and_api_version_checks() {
        let errs = decode(&json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(errs.to_string(), "apiVersion: required; kind: required");

        let errs = decode(&json!({"apiVersion": "apps/v2", "kind": "Deployment"})).unwrap_err();
        assert_eq!(
            errs.to_string(),
            r#"apiVersion: "apps/v2" is not a supported version for kind Deployment (expected apps/v1)"#
        );

        let errs = decode(&json!({"apiVersion": "v1", "kind": "Widget"})).unwrap_err();
        assert_eq!(errs.0[0].path, "kind");

        let errs = decode(&json!({"apiVersion": "apps/v1", "kind": "deployment"})).unwrap_err();
        assert!(
            errs.to_string().contains("did you mean Deployment?"),
            "{errs}"
        );

        let errs = decode(&json!({"apiVersion": 1, "kind": "Pod"})).unwrap_err();
        assert_eq!(
            errs.to_string(),
            "apiVersion: expected a string, found number"
        );

        assert!(decode(&json!([1])).is_err());
    }

    #[test]
    fn service_statefulset_cronjob_secret_roundtrip() {
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                               {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]}
        });
        let (_, c) = decode(&svc).expect("service");
        assert_eq!(c["spec"]["ports"][0]["targetPort"], json!(8080));
        assert_eq!(c["spec"]["ports"][1]["targetPort"], json!("metrics"));

        let sts = json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db", "replicas": 3,
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                             "spec": {"containers": [{"name": "pg", "image": "postgres:16",
                                       "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}]}]}},
                "volumeClaimTemplates": [{
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                             "resources": {"requests": {"storage": "10Gi"}}}
                }]
            }
        });
        let (_, c) = decode(&sts).expect("statefulset");
        assert_eq!(
            c["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            json!("10Gi")
        );
        let mut bad = sts.clone();
        bad["spec"]["volumeClaimTemplates"][0]["spec"]["size"] = json!("1Gi");
        assert_eq!(
            decode(&bad).unwrap_err().0[0].path,
            "spec.volumeClaimTemplates[0].spec.size"
        );

        let cj = json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "backup"},
            "spec": {"schedule": "*/5 * * * *", "timeZone": "Etc/UTC",
                     "jobTemplate": {"spec": {"backoffLimit": 2, "template": {"spec": {
                        "restartPolicy": "OnFailure",
                        "containers": [{"name": "b", "image": "busybox", "command": ["sh", "-c", "date"]}]}}}}}
        });
        let (_, c) = decode(&cj).expect("cronjob");
        assert_eq!(c["spec"]["schedule"], json!("*/5 * * * *"));

        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db"},
            "type": "Opaque",
            "data": {"password": "cGFzc3dvcmQ=", "empty": ""},
            "stringData": {"user": "admin"}
        });
        let (_, c) = decode(&secret).expect("secret");
        assert_eq!(c["data"]["password"], json!("cGFzc3dvcmQ="));
        assert_eq!(c["stringData"]["user"], json!("admin"));
        let mut bad = secret.clone();
        bad["data"]["password"] = json!("not base64!");
        let errs = decode(&bad).unwrap_err();
        assert_eq!(errs.0[0].path, "data.password");
    }

    #[test]
    fn to_typed_helper() {
        let pod: core::v1::Pod =
            to_typed(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}))
                .unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        let err = to_typed::<core::v1::Pod>(&json!({"metadata": {"name": 3}})).unwrap_err();
        assert_eq!(err.0[0].path, "metadata.name");
    }

    #[test]
    fn every_kind_decodes_minimal_object() {
        for k in kinds::all() {
            let v = json!({"apiVersion": k.api_version, "kind": k.kind, "metadata": {"name": "x"}});
            let (info, c) = decode(&v).unwrap_or_else(|e| panic!("{}: {e}", k.kind));
            assert_eq!(info, k);
            assert_eq!(c["kind"], json!(k.kind));
            assert_eq!(c["apiVersion"], json!(k.api_version));
        }
    }
}
