//! A container's environment, as Kubernetes builds it: the image's `Env`, then `envFrom`
//! (ConfigMaps and Secrets, with an optional prefix), then `env` in order (literal values with
//! `$(VAR)` expansion, or `valueFrom` a ConfigMap key, a Secret key, a field of the pod, or a
//! resource limit). Later entries override earlier ones of the same name.
//!
//! Pure: ConfigMaps and Secrets come in through [`Sources`], which the worker fills from the API
//! before it starts the container.

use std::collections::BTreeMap;

use ferry_api::k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

use super::plan::expand;

/// Objects an environment may read, by name in the pod's namespace (`None`: not found).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// ConfigMap name -> data (`binaryData` is not exposed as env, as in Kubernetes).
    pub config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// Secret name -> decoded data.
    pub secrets: BTreeMap<String, Option<BTreeMap<String, Vec<u8>>>>,
}

/// Values of the pod only known on the node.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// Why a container cannot be started yet; shown as `CreateContainerConfigError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EnvError(pub String);

/// The ConfigMap and Secret names a pod's containers read (env, envFrom and volumes), for
/// fetching.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = &v.secret
            && let Some(n) = &s.secret_name
        {
            secrets.push(n.clone());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &p.config_map {
                cms.push(cm.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    env.retain(|(k, _)| k != name);
    env.push((name.to_owned(), value));
}

fn field_value(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let label_or_annotation = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let key_in = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(k) = key_in("metadata.labels['") {
                label_or_annotation(&meta.labels, &k)
            } else if let Some(k) = key_in("metadata.annotations['") {
                label_or_annotation(&meta.annotations, &k)
            } else {
                return Err(format!("unsupported fieldPath {path:?}"));
            }
        }
    })
}

/// `limits.memory` and friends, in the divisor's unit (default 1), rounded up, as Kubernetes.
fn resource_value(c: &Container, resource: &str, divisor: Option<&str>) -> Result<String, String> {
    let (section, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let quantities = c.resources.as_ref().and_then(|r| match section {
        "limits" => r.limits.as_ref(),
        "requests" => r.requests.as_ref(),
        _ => None,
    });
    let q = quantities.and_then(|m| m.get(name)).map(|q| q.0.as_str());
    let divisor = divisor.unwrap_or("1");
    let parse = |s: &str| ferry_api::validation::parse_quantity(s);
    let d = parse(divisor)
        .filter(|d| *d > 0.0)
        .ok_or_else(|| format!("invalid divisor {divisor:?}"))?;
    let value = match q {
        Some(q) => parse(q).ok_or_else(|| format!("invalid quantity {q:?}"))?,
        // Unset limits report the node's allocatable in Kubernetes; 0 is what we know here.
        None => 0.0,
    };
    Ok(format!("{}", (value / d).ceil() as i64))
}

/// Kubernetes' service links: for every Service of the namespace with a cluster IP,
/// `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT`, `<SVC>_SERVICE_PORT_<PORT>` and the Docker-link
/// variables `<SVC>_PORT`, `<SVC>_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`.
pub fn service_env(services: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Value> = services.iter().collect();
    sorted.sort_by_key(|s| {
        s.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    });
    for svc in sorted {
        let ip = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_uppercase()
            .replace('-', "_");
        let ports: Vec<&Value> = svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|p| p.iter().collect())
            .unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let port_of = |p: &Value| p["port"].as_u64().unwrap_or(0);
        let proto_of = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_ascii_lowercase();
        out.push((format!("{name}_SERVICE_HOST"), ip.to_owned()));
        out.push((format!("{name}_SERVICE_PORT"), port_of(first).to_string()));
        for p in &ports {
            if let Some(pn) = p["name"].as_str().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pn.to_ascii_uppercase().replace('-', "_")
                    ),
                    port_of(p).to_string(),
                ));
            }
        }
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto_of(first), port_of(first)),
        ));
        for p in &ports {
            let (port, proto) = (port_of(p), proto_of(p));
            let base = format!("{name}_PORT_{port}_{}", proto.to_ascii_uppercase());
            out.push((base.clone(), format!("{proto}://{ip}:{port}")));
            out.push((format!("{base}_PROTO"), proto.clone()));
            out.push((format!("{base}_PORT"), port.to_string()));
            out.push((format!("{base}_ADDR"), ip.to_owned()));
        }
    }
    out
}

/// The environment of container `c`: the image's variables, then the service links (which the
/// container's own `envFrom` and `env` override, as in Kubernetes). `Err` names the first
/// missing required ConfigMap, Secret or key.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    image_env: &[String],
    service_links: &[(String, String)],
    sources: &Sources,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(&mut env, k, v.to_owned());
    }
    for (k, v) in service_links {
        set(&mut env, k, v.clone());
    }
    let err = |m: String| EnvError(format!("container {:?}: {m}", c.name));
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match sources.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut env, &format!("{prefix}{k}"), v);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(err(format!("configmap {:?} not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secrets.get(&r.name).cloned().flatten() {
                Some(data) => {
                    for (k, v) in data {
                        set(
                            &mut env,
                            &format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v).into(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(err(format!("secret {:?} not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else {
            let v = expand(e.value.as_deref().unwrap_or(""), &env);
            set(&mut env, &e.name, v);
            continue;
        };
        let value = if let Some(r) = &from.config_map_key_ref {
            let cm = sources.config_maps.get(&r.name).cloned().flatten();
            match (cm, r.optional == Some(true)) {
                (Some(d), _) if d.contains_key(&r.key) => d[&r.key].clone(),
                (_, true) => continue,
                (Some(_), false) => {
                    return Err(err(format!(
                        "couldn't find key {} in ConfigMap {}/{}",
                        r.key,
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        r.name
                    )));
                }
                (None, false) => return Err(err(format!("configmap {:?} not found", r.name))),
            }
        } else if let Some(r) = &from.secret_key_ref {
            let s = sources.secrets.get(&r.name).cloned().flatten();
            match (s, r.optional == Some(true)) {
                (Some(d), _) if d.contains_key(&r.key) => {
                    String::from_utf8_lossy(&d[&r.key]).into()
                }
                (_, true) => continue,
                (Some(_), false) => {
                    return Err(err(format!(
                        "couldn't find key {} in Secret {}/{}",
                        r.key,
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        r.name
                    )));
                }
                (None, false) => return Err(err(format!("secret {:?} not found", r.name))),
            }
        } else if let Some(f) = &from.field_ref {
            field_value(pod, facts, &f.field_path)
                .map_err(|m| err(format!("env {}: {m}", e.name)))?
        } else if let Some(r) = &from.resource_field_ref {
            let target = match &r.container_name {
                Some(n) if !n.is_empty() => pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .find(|x| &x.name == n)
                    .ok_or_else(|| err(format!("env {}: no container {n:?}", e.name)))?,
                _ => c,
            };
            resource_value(
                target,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
            )
            .map_err(|m| err(format!("env {}: {m}", e.name)))?
        } else {
            String::new()
        };
        set(&mut env, &e.name, value);
    }
    Ok(env)
}

/// Decodes a Secret's `data` (base64) as the API returns it.
pub fn secret_data(secret: &Value) -> BTreeMap<String, Vec<u8>> {
    use base64::Engine as _;
    let mut out = BTreeMap::new();
    if let Some(m) = secret.get("data").and_then(Value::as_object) {
        for (k, v) in m {
            if let Some(b) = v
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            {
                out.insert(k.clone(), b);
            }
        }
    }
    if let Some(m) = secret.get("stringData").and_then(Value::as_object) {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.as_bytes().to_vec());
            }
        }
    }
    out
}

/// A ConfigMap's `data` and `binaryData` (decoded) as files; `data` alone for env.
pub fn config_map_data(cm: &Value) -> BTreeMap<String, String> {
    cm.get("data")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A ConfigMap's `binaryData`, decoded.
pub fn config_map_binary(cm: &Value) -> BTreeMap<String, Vec<u8>> {
    use base64::Engine as _;
    cm.get("binaryData")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.clone(),
                        base64::engine::general_purpose::STANDARD
                            .decode(v.as_str()?)
                            .ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "value": "$(A)-$(IMG)"},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "x", "optional": true}}},
                ]}]}
        }))
        .unwrap()
    }

    #[test]
    fn builds_the_environment_in_kubernetes_order() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let mut sources = Sources::default();
        sources.config_maps.insert(
            "cm".into(),
            Some(BTreeMap::from([("x".to_string(), "y".to_string())])),
        );
        sources.config_maps.insert("gone".into(), None);
        sources.secrets.insert(
            "s".into(),
            Some(BTreeMap::from([("k".to_string(), b"secret".to_vec())])),
        );
        let facts = PodFacts {
            pod_ip: "10.0.0.5".into(),
            host_ip: "192.0.2.1".into(),
            node_name: "n1".into(),
        };
        let links = service_env(&[json!({
            "metadata": {"name": "my-db"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]},
        })]);
        let env = container_env(
            &p,
            c,
            &["IMG=from-image".into(), "A=0".into()],
            &links,
            &sources,
            &facts,
        )
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("A"),
            Some("1"),
            "the container's env overrides the image's"
        );
        assert_eq!(get("B"), Some("1-from-image"));
        assert_eq!(get("CM_x"), Some("y"));
        assert_eq!(get("S"), Some("secret"));
        assert_eq!(get("IP"), Some("10.0.0.5"));
        assert_eq!(get("APP"), Some("web"));
        assert_eq!(get("MEM"), Some("64"));
        assert_eq!(get("CPU"), Some("500"));
        assert_eq!(get("OPT"), None);
        assert_eq!(get("MY_DB_SERVICE_HOST"), Some("10.96.0.9"));
        assert_eq!(get("MY_DB_SERVICE_PORT"), Some("5432"));
        assert_eq!(get("MY_DB_SERVICE_PORT_SQL"), Some("5432"));
        assert_eq!(get("MY_DB_PORT"), Some("tcp://10.96.0.9:5432"));
        assert_eq!(get("MY_DB_PORT_5432_TCP_ADDR"), Some("10.96.0.9"));
        assert_eq!(
            referenced(&p),
            (vec!["cm".into(), "gone".into()], vec!["s".into()])
        );

        // A missing required source names what is missing.
        sources.secrets.insert("s".into(), None);
        let e = container_env(&p, c, &[], &[], &sources, &facts).unwrap_err();
        assert!(e.0.contains("secret \"s\" not found"), "{e}");
        sources.secrets.insert("s".into(), Some(BTreeMap::new()));
        let e = container_env(&p, c, &[], &[], &sources, &facts).unwrap_err();
        assert!(e.0.contains("couldn't find key k in Secret ns/s"), "{e}");
    }
}
