//! Pure scheduling decisions: filters and scores over a snapshot of nodes.

use std::borrow::Cow;
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

pub(crate) fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
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

pub(crate) fn expression_matches(labels: &BTreeMap<String, String>, e: &Value) -> bool {
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

/// The pod-level inputs of the filters, looked up once per pod rather than once per node.
struct PodTerms<'a> {
    tolerations: &'a [Value],
    node_selector: Option<&'a serde_json::Map<String, Value>>,
    affinity_terms: Option<&'a Vec<Value>>,
}

impl<'a> PodTerms<'a> {
    fn new(pod: &'a Value) -> Self {
        PodTerms {
            tolerations: pod
                .pointer("/spec/tolerations")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default(),
            node_selector: pod.pointer("/spec/nodeSelector").and_then(Value::as_object),
            affinity_terms: pod
                .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
                .and_then(Value::as_array),
        }
    }

    /// nodeSelector and required node affinity (terms are ORed, expressions ANDed).
    fn selector_matches(&self, node: &NodeInfo) -> bool {
        let selector_ok = self.node_selector.is_none_or(|sel| {
            sel.iter()
                .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
        });
        let affinity_ok = self.affinity_terms.is_none_or(|terms| {
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

    /// Why `node` cannot take the pod, if it cannot. Static reasons do not allocate: on a large
    /// cluster this runs for hundreds of nodes per pod.
    fn check(&self, req: &PodRequest, node: &NodeInfo) -> Option<Cow<'static, str>> {
        if node.unschedulable {
            return Some(Cow::Borrowed("node(s) were unschedulable"));
        }
        for taint in &node.taints {
            if matches!(taint["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
                && !tolerates(self.tolerations, taint)
            {
                return Some(Cow::Owned(format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    taint["key"].as_str().unwrap_or(""),
                    taint["value"].as_str().unwrap_or("")
                )));
            }
        }
        if !self.selector_matches(node) {
            return Some(Cow::Borrowed(
                "node(s) didn't match Pod's node affinity/selector",
            ));
        }
        if node.used_pods + 1.0 > node.alloc_pods {
            return Some(Cow::Borrowed("Too many pods"));
        }
        if req.cpu > 0.0 && node.used_cpu + req.cpu > node.alloc_cpu + 1e-9 {
            return Some(Cow::Borrowed("Insufficient cpu"));
        }
        if req.memory > 0.0 && node.used_memory + req.memory > node.alloc_memory + 1e-9 {
            return Some(Cow::Borrowed("Insufficient memory"));
        }
        None
    }
}

/// Whether the pod may run on `node` by placement alone: nodeSelector, required node affinity
/// and NoSchedule / NoExecute taints against its tolerations (no resources, no
/// `spec.unschedulable`). The DaemonSet controller's `nodeShouldRunDaemonPod`.
pub fn placement_fits(pod: &Value, node: &NodeInfo) -> bool {
    let terms = PodTerms::new(pod);
    terms.selector_matches(node)
        && node.taints.iter().all(|t| {
            !matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
                || tolerates(terms.tolerations, t)
        })
}

/// Why `node` cannot take the pod, if it cannot (one reason, in kube-scheduler's wording).
pub fn filter(pod: &Value, req: &PodRequest, node: &NodeInfo) -> Option<String> {
    PodTerms::new(pod).check(req, node).map(Cow::into_owned)
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

/// Kubernetes' summary of why no node fits: "0/3 nodes are available: 2 Insufficient cpu, ...".
fn unavailable(total: usize, reasons: &BTreeMap<Cow<'static, str>, usize>) -> String {
    if reasons.is_empty() {
        return format!("0/{total} nodes are available: no nodes registered.");
    }
    let why: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
    format!("0/{total} nodes are available: {}.", why.join(", "))
}

/// The best node for the pod, or why there is none (every node filtered and scored).
pub fn decide<'a>(
    pod: &Value,
    req: &PodRequest,
    nodes: impl IntoIterator<Item = &'a NodeInfo>,
) -> Fit {
    let terms = PodTerms::new(pod);
    let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
    let mut total = 0;
    let mut best: Option<(f64, &NodeInfo)> = None;
    for n in nodes {
        total += 1;
        match terms.check(req, n) {
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
        None => Fit::None(unavailable(total, &reasons)),
    }
}

/// How many feasible nodes to find before scoring, as kube-scheduler's `numFeasibleNodesToFind`
/// with the adaptive `percentageOfNodesToScore`: every node below 100, else 50% minus one point
/// per 125 nodes (42% at 1,000, 10% at 5,000), never below 5% nor below 100 nodes.
pub fn nodes_to_find(total: usize) -> usize {
    const MIN_NODES: usize = 100;
    if total < MIN_NODES {
        return total;
    }
    let percent = 50usize.saturating_sub(total / 125).max(5);
    (total * percent / 100).max(MIN_NODES)
}

/// The result of a sampled search ([`pick`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Pick {
    /// Index into `nodes` of the chosen node, or Kubernetes' summary of why none fits.
    pub fit: Result<usize, String>,
    /// Nodes looked at: the next search starts this many nodes after this one's start.
    pub scanned: usize,
}

/// Sampled placement, as kube-scheduler does on large clusters: filters nodes in order from
/// `start` (wrapping around) until [`nodes_to_find`] feasible ones are found, then picks the
/// best-scored of those (ties: the first found). Successive searches starting where the last one
/// stopped spread pods over the whole cluster. With no feasible node every node was filtered, so
/// the summary is the same as [`decide`]'s.
pub fn pick(pod: &Value, req: &PodRequest, nodes: &[NodeInfo], start: usize) -> Pick {
    let total = nodes.len();
    let want = nodes_to_find(total);
    let terms = PodTerms::new(pod);
    let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
    let mut best: Option<(f64, usize)> = None;
    let mut feasible = 0;
    let mut scanned = 0;
    let start = if total == 0 { 0 } else { start % total };
    while scanned < total && feasible < want {
        let i = (start + scanned) % total;
        scanned += 1;
        let n = &nodes[i];
        match terms.check(req, n) {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                feasible += 1;
                let s = score(req, n);
                if best.is_none_or(|(b, _)| s > b + 1e-9) {
                    best = Some((s, i));
                }
            }
        }
    }
    Pick {
        fit: best
            .map(|(_, i)| i)
            .ok_or_else(|| unavailable(total, &reasons)),
        scanned,
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

    #[test]
    fn sample_sizes_follow_kube_scheduler() {
        assert_eq!(nodes_to_find(0), 0);
        assert_eq!(nodes_to_find(50), 50);
        assert_eq!(nodes_to_find(100), 100);
        assert_eq!(
            nodes_to_find(150),
            100,
            "49% of 150 is below the floor of 100"
        );
        assert_eq!(nodes_to_find(1000), 420);
        assert_eq!(nodes_to_find(5000), 500);
        assert_eq!(nodes_to_find(20000), 1000);
    }

    #[test]
    fn sampled_pick_round_robins_and_never_overcommits() {
        let mut nodes: Vec<NodeInfo> = (0..300)
            .map(|i| node(&format!("n{i:03}"), "1", "1Gi", json!({}), json!([])))
            .collect();
        let p = pod("600m", "1Mi", json!({}));
        let r = PodRequest::from_pod(&p);
        // 48% of 300: windows of 144 nodes, each search starting where the last stopped.
        assert_eq!(nodes_to_find(300), 144);
        let first = pick(&p, &r, &nodes, 0);
        assert_eq!(
            first,
            Pick {
                fit: Ok(0),
                scanned: 144
            }
        );
        nodes[0].add(&r);
        assert_eq!(pick(&p, &r, &nodes, 100).fit, Ok(100));
        assert_eq!(pick(&p, &r, &nodes, 299).fit, Ok(299), "wraps around");
        // Fill every node: each takes exactly one 600m pod, then none fits and all were looked at.
        let mut start = 1;
        for _ in 1..300 {
            let got = pick(&p, &r, &nodes, start);
            let i = got.fit.expect("a node with room");
            nodes[i].add(&r);
            start += got.scanned;
        }
        assert!(nodes.iter().all(|n| n.used_pods == 1.0));
        let none = pick(&p, &r, &nodes, start);
        assert_eq!(
            none,
            Pick {
                fit: Err("0/300 nodes are available: 300 Insufficient cpu.".into()),
                scanned: 300
            }
        );
        assert_eq!(
            pick(&p, &r, &[], 7).fit,
            Err("0/0 nodes are available: no nodes registered.".into())
        );
    }
}
