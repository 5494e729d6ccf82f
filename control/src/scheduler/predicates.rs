//! Pure scheduling decisions: filters and scores over a snapshot of nodes.

use std::collections::BTreeMap;

use ferry_api::validation::parse_quantity;
use serde_json::Value;

/// What a pod asks for (sum over its containers, max with its init containers).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodRequest {
    pub cpu: f64,
    pub memory: f64,
}

fn requests(containers: Option<&Value>) -> (f64, f64, f64, f64) {
    let mut sum = (0.0, 0.0);
    let mut max = (0.0f64, 0.0f64);
    for c in containers.and_then(Value::as_array).into_iter().flatten() {
        let q = |k: &str| {
            c.pointer(&format!("/resources/requests/{k}"))
                .and_then(Value::as_str)
                .and_then(parse_quantity)
                .unwrap_or(0.0)
        };
        let (cpu, mem) = (q("cpu"), q("memory"));
        sum = (sum.0 + cpu, sum.1 + mem);
        max = (max.0.max(cpu), max.1.max(mem));
    }
    (sum.0, sum.1, max.0, max.1)
}

impl PodRequest {
    pub fn from_pod(pod: &Value) -> Self {
        let (cpu, mem, _, _) = requests(pod.pointer("/spec/containers"));
        let (_, _, icpu, imem) = requests(pod.pointer("/spec/initContainers"));
        PodRequest {
            cpu: cpu.max(icpu),
            memory: mem.max(imem),
        }
    }
}

/// A node as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Value>,
    pub unschedulable: bool,
    pub alloc_cpu: f64,
    pub alloc_memory: f64,
    pub alloc_pods: f64,
    pub used_cpu: f64,
    pub used_memory: f64,
    pub used_pods: f64,
}

impl NodeInfo {
    pub fn from_node(n: &Value) -> Self {
        let q = |k: &str| {
            n.pointer(&format!("/status/allocatable/{k}"))
                .or_else(|| n.pointer(&format!("/status/capacity/{k}")))
                .and_then(Value::as_str)
                .and_then(parse_quantity)
                .unwrap_or(0.0)
        };
        NodeInfo {
            name: n
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            labels: n
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            taints: n
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            unschedulable: n
                .pointer("/spec/unschedulable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            alloc_cpu: q("cpu"),
            alloc_memory: q("memory"),
            alloc_pods: q("pods"),
            ..Default::default()
        }
    }

    pub fn add(&mut self, r: &PodRequest) {
        self.used_cpu += r.cpu;
        self.used_memory += r.memory;
        self.used_pods += 1.0;
    }
}

/// The scheduler's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Fit {
    Node(String),
    /// No node fits; Kubernetes-style summary of why.
    None(String),
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    let key = taint["key"].as_str().unwrap_or("");
    let value = taint["value"].as_str().unwrap_or("");
    let effect = taint["effect"].as_str().unwrap_or("");
    tolerations.iter().any(|t| {
        let t_effect = t["effect"].as_str().unwrap_or("");
        if !t_effect.is_empty() && t_effect != effect {
            return false;
        }
        let t_key = t["key"].as_str().unwrap_or("");
        match t["operator"].as_str().unwrap_or("Equal") {
            "Exists" => t_key.is_empty() || t_key == key,
            _ => t_key == key && t["value"].as_str().unwrap_or("") == value,
        }
    })
}

fn expression_matches(labels: &BTreeMap<String, String>, e: &Value) -> bool {
    let key = e["key"].as_str().unwrap_or("");
    let values: Vec<&str> = e["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let have = labels.get(key).map(String::as_str);
    match e["operator"].as_str().unwrap_or("") {
        "In" => have.is_some_and(|v| values.contains(&v)),
        "NotIn" => have.is_none_or(|v| !values.contains(&v)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        op @ ("Gt" | "Lt") => {
            let (Some(h), Some(v)) = (
                have.and_then(|h| h.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" { h > v } else { h < v }
        }
        _ => false,
    }
}

/// nodeSelector and required node affinity (terms are ORed, expressions ANDed).
fn selector_matches(pod: &Value, node: &NodeInfo) -> bool {
    let selector_ok = pod
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .is_none_or(|sel| {
            sel.iter()
                .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
        });
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let affinity_ok = terms.is_none_or(|terms| {
        terms.iter().any(|t| {
            t["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| expression_matches(&node.labels, e))
        })
    });
    selector_ok && affinity_ok
}

/// Why `node` cannot take the pod, if it cannot (one reason, in kube-scheduler's wording).
pub fn filter(pod: &Value, req: &PodRequest, node: &NodeInfo) -> Option<String> {
    if node.unschedulable {
        return Some("node(s) were unschedulable".into());
    }
    let tolerations: Vec<Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for taint in &node.taints {
        if matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
            && !tolerates(&tolerations, taint)
        {
            return Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint["key"].as_str().unwrap_or(""),
                taint["value"].as_str().unwrap_or("")
            ));
        }
    }
    if !selector_matches(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if node.used_pods + 1.0 > node.alloc_pods {
        return Some("Too many pods".into());
    }
    if req.cpu > 0.0 && node.used_cpu + req.cpu > node.alloc_cpu + 1e-9 {
        return Some("Insufficient cpu".into());
    }
    if req.memory > 0.0 && node.used_memory + req.memory > node.alloc_memory + 1e-9 {
        return Some("Insufficient memory".into());
    }
    None
}

/// kube-scheduler's least-allocated plus balanced-allocation scores (0..=200).
pub fn score(req: &PodRequest, node: &NodeInfo) -> f64 {
    let frac = |used: f64, want: f64, alloc: f64| {
        if alloc <= 0.0 {
            1.0
        } else {
            ((used + want) / alloc).min(1.0)
        }
    };
    let cpu = frac(node.used_cpu, req.cpu, node.alloc_cpu);
    let mem = frac(node.used_memory, req.memory, node.alloc_memory);
    let least = ((1.0 - cpu) + (1.0 - mem)) / 2.0 * 100.0;
    let balanced = (1.0 - (cpu - mem).abs()) * 100.0;
    least + balanced
}

/// The best node for the pod, or why there is none.
pub fn decide<'a>(
    pod: &Value,
    req: &PodRequest,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
) -> Fit {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    let mut best: Option<(f64, &NodeInfo)> = None;
    for n in nodes {
        total += 1;
        match filter(pod, req, n) {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                let s = score(req, n);
                // Highest score wins; ties go to the name that sorts first (deterministic).
                if best.is_none_or(|(b, bn)| {
                    s > b + 1e-9 || ((s - b).abs() <= 1e-9 && n.name < bn.name)
                }) {
                    best = Some((s, n));
                }
            }
        }
    }
    match best {
        Some((_, n)) => Fit::Node(n.name.clone()),
        None => {
            let why: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
            if why.is_empty() {
                Fit::None(format!(
                    "0/{total} nodes are available: no nodes registered."
                ))
            } else {
                Fit::None(format!(
                    "0/{total} nodes are available: {}.",
                    why.join(", ")
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, cpu: &str, mem: &str, labels: Value, taints: Value) -> NodeInfo {
        NodeInfo::from_node(
            &json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": cpu, "memory": mem, "pods": "110"}}}),
        )
    }

    fn pod(cpu: &str, mem: &str, extra: Value) -> Value {
        let mut p = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]}});
        if let (Some(spec), Some(extra)) = (p["spec"].as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                spec.insert(k.clone(), v.clone());
            }
        }
        p
    }

    #[test]
    fn requests_sum_containers_and_take_init_max() {
        let p = json!({"spec": {
            "containers": [{"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}, {"resources": {"requests": {"cpu": "200m"}}}],
            "initContainers": [{"resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}]}});
        let r = PodRequest::from_pod(&p);
        assert!((r.cpu - 1.0).abs() < 1e-9);
        assert!((r.memory - 64.0 * 1024.0 * 1024.0).abs() < 1.0);
    }

    #[test]
    fn filters_and_reasons() {
        let nodes = vec![
            node("small", "1", "1Gi", json!({}), json!([])),
            node(
                "tainted",
                "8",
                "8Gi",
                json!({}),
                json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
            ),
            node("ssd", "4", "4Gi", json!({"disk": "ssd"}), json!([])),
        ];
        let big = pod("2", "1Gi", json!({}));
        assert_eq!(
            decide(&big, &PodRequest::from_pod(&big), &nodes),
            Fit::Node("ssd".into())
        );
        let huge = pod("16", "1Gi", json!({}));
        assert_eq!(
            decide(&huge, &PodRequest::from_pod(&huge), &nodes),
            Fit::None("0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: gpu}.".into())
        );
        let tolerant = pod(
            "6",
            "1Gi",
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            decide(&tolerant, &PodRequest::from_pod(&tolerant), &nodes),
            Fit::Node("tainted".into())
        );
        let picky = pod("100m", "1Mi", json!({"nodeSelector": {"disk": "ssd"}}));
        assert_eq!(
            decide(&picky, &PodRequest::from_pod(&picky), &nodes),
            Fit::Node("ssd".into())
        );
        let affinity = pod(
            "100m",
            "1Mi",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "NotIn", "values": ["ssd"]}]}]}}}}),
        );
        assert_eq!(
            decide(&affinity, &PodRequest::from_pod(&affinity), &nodes),
            Fit::Node("small".into())
        );
        assert_eq!(
            decide(&picky, &PodRequest::from_pod(&picky), &[]),
            Fit::None("0/0 nodes are available: no nodes registered.".into())
        );
    }

    #[test]
    fn scores_prefer_the_emptier_node_and_account_for_bound_pods() {
        let mut a = node("a", "4", "4Gi", json!({}), json!([]));
        let b = node("b", "4", "4Gi", json!({}), json!([]));
        let p = pod("1", "1Gi", json!({}));
        let r = PodRequest::from_pod(&p);
        assert_eq!(
            decide(&p, &r, [&a, &b]),
            Fit::Node("a".into()),
            "tie goes to the first name"
        );
        a.add(&r);
        assert_eq!(
            decide(&p, &r, [&a, &b]),
            Fit::Node("b".into()),
            "then the emptier node"
        );
        let mut full = node("f", "1", "1Gi", json!({}), json!([]));
        full.alloc_pods = 1.0;
        full.add(&PodRequest::default());
        assert_eq!(
            filter(&p, &PodRequest::default(), &full).as_deref(),
            Some("Too many pods")
        );
    }
}
