//! The scheduling rules that depend on where other pods run, and preferred node affinity:
//! kube-scheduler's InterPodAffinity, PodTopologySpread and NodeAffinity (score) plugins.
//!
//! - **Pod affinity / anti-affinity**, required (filter) and preferred (score), with
//!   `labelSelector`, `namespaces` and `namespaceSelector` (the namespaces listed plus those
//!   whose labels the selector matches; an empty selector means every namespace; neither: the
//!   pod's own) and `topologyKey`. Required anti-affinity is symmetric: a pod is also kept
//!   away from domains where an existing pod's required anti-affinity matches it. The first pod
//!   of a group whose required affinity matches itself may go anywhere (as in Kubernetes).
//! - **Topology spread constraints**: `maxSkew`, `topologyKey`, `whenUnsatisfiable`
//!   (`DoNotSchedule` filters, `ScheduleAnyway` scores), `labelSelector`, `matchLabelKeys`,
//!   `minDomains`. Domains are those of nodes that pass the pod's node selector and required
//!   node affinity (`nodeAffinityPolicy: Honor`, the default).
//! - **Default spreading**: a pod with a controller owner (ReplicaSet, StatefulSet, ...) and no
//!   constraints of its own is spread over `kubernetes.io/hostname` with `maxSkew: 3`,
//!   `ScheduleAnyway`, counting its siblings (kube-scheduler's system default, with the owner in
//!   place of the selectors of the Services and controllers that select the pod).
//! - **Preferred node affinity**: the weights of the matching preferences.
//!
//! Scores are normalized to 0..=100 per plugin and weighted 2 each, on top of the
//! resource scores (least-allocated + balanced, 0..=200), as kube-scheduler's defaults weigh
//! them. Everything here is pure: the scheduler builds [`PlacedPod`]s per node once per pass.

use std::collections::{BTreeMap, HashMap};

use ferry_api::k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use ferry_api::selector::{LabelSelector, Operator, Requirement};
use serde_json::Value;

use super::predicates::{self, NodeInfo, PodRequest};

/// Weight of each plugin's normalized score, as kube-scheduler's defaults.
const PLUGIN_WEIGHT: f64 = 2.0;
const HOSTNAME: &str = "kubernetes.io/hostname";

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn controller_of(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| o["controller"] == true)
        .and_then(|o| o["uid"].as_str())
        .map(str::to_string)
}

/// A pod affinity term: which pods (selector, namespaces) count, per which topology.
#[derive(Clone, Debug)]
pub struct Term {
    /// `None`: the term matches no pod (a missing selector).
    selector: Option<LabelSelector>,
    /// `None`: every namespace.
    namespaces: Option<Vec<String>>,
    topology_key: String,
    weight: f64,
}

/// Namespace name -> its labels: what a non-empty `namespaceSelector` is matched against.
pub type NamespaceLabels = HashMap<String, BTreeMap<String, String>>;

/// The labels of every Namespace object, for [`Constraints::from_pod_in`] and
/// [`PlacedPod::from_pod_in`].
pub fn namespace_labels<'a>(namespaces: impl IntoIterator<Item = &'a Value>) -> NamespaceLabels {
    namespaces
        .into_iter()
        .map(|n| (s(n, "/metadata/name").to_string(), labels_of(n)))
        .collect()
}

impl Term {
    /// A `PodAffinityTerm` of a pod in namespace `own_ns`. The namespaces it covers are those
    /// listed in `namespaces` plus those whose labels (`nss`) `namespaceSelector` matches; an
    /// empty selector covers every namespace; neither given: the pod's own.
    fn parse(t: &Value, own_ns: &str, weight: f64, nss: &NamespaceLabels) -> Option<Term> {
        let topology_key = t["topologyKey"].as_str()?.to_string();
        let selector = t
            .get("labelSelector")
            .filter(|v| !v.is_null())
            .and_then(|v| serde_json::from_value::<metav1::LabelSelector>(v.clone()).ok())
            .and_then(|sel| LabelSelector::from_k8s(&sel).ok());
        let listed: Vec<String> = t["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        let ns_selector = t.get("namespaceSelector").filter(|v| !v.is_null());
        let all = ns_selector.and_then(Value::as_object).is_some_and(|o| {
            o.values().all(|v| {
                v.is_null()
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|m| m.is_empty())
            })
        });
        let namespaces = if all {
            None
        } else if let Some(sel) = ns_selector {
            // A selector that does not parse selects nothing.
            let sel = serde_json::from_value::<metav1::LabelSelector>(sel.clone())
                .ok()
                .and_then(|sel| LabelSelector::from_k8s(&sel).ok());
            let mut covered = listed;
            if let Some(sel) = sel {
                covered.extend(
                    nss.iter()
                        .filter(|(_, labels)| sel.matches(labels))
                        .map(|(name, _)| name.clone()),
                );
            }
            Some(covered)
        } else if listed.is_empty() {
            Some(vec![own_ns.to_string()])
        } else {
            Some(listed)
        };
        Some(Term {
            selector,
            namespaces,
            topology_key,
            weight,
        })
    }

    fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|n| n == namespace))
            && self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// A bound pod, as the rules see it.
#[derive(Clone, Debug, Default)]
pub struct PlacedPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Its controller owner's uid (default spreading counts siblings).
    pub owner: Option<String>,
    /// Its required anti-affinity terms (they also keep other pods away).
    pub required_anti: Vec<Term>,
}

impl PlacedPod {
    /// A bound pod whose terms know no namespace labels (see [`PlacedPod::from_pod_in`]).
    pub fn from_pod(pod: &Value) -> Self {
        Self::from_pod_in(pod, &NamespaceLabels::new())
    }

    /// A bound pod; `nss` resolves its terms' `namespaceSelector`s.
    pub fn from_pod_in(pod: &Value, nss: &NamespaceLabels) -> Self {
        let ns = s(pod, "/metadata/namespace");
        PlacedPod {
            namespace: ns.to_string(),
            labels: labels_of(pod),
            owner: controller_of(pod),
            required_anti: terms(
                pod,
                "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution",
                ns,
                false,
                nss,
            ),
        }
    }
}

fn terms(pod: &Value, ptr: &str, ns: &str, weighted: bool, nss: &NamespaceLabels) -> Vec<Term> {
    pod.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            if weighted {
                Term::parse(
                    &t["podAffinityTerm"],
                    ns,
                    t["weight"].as_f64().unwrap_or(1.0),
                    nss,
                )
            } else {
                Term::parse(t, ns, 1.0, nss)
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Spread {
    max_skew: f64,
    topology_key: String,
    hard: bool,
    selector: LabelSelector,
    /// `None`: count pods with this controller owner (default spreading), not the selector.
    owner: Option<String>,
    min_domains: usize,
}

/// The rules of one pod that depend on other pods or score nodes.
#[derive(Clone, Debug, Default)]
pub struct Constraints {
    namespace: String,
    labels: BTreeMap<String, String>,
    required_affinity: Vec<Term>,
    required_anti: Vec<Term>,
    preferred_affinity: Vec<Term>,
    preferred_anti: Vec<Term>,
    spread: Vec<Spread>,
    /// (weight, matchExpressions) of preferred node affinity.
    preferred_nodes: Vec<(f64, Vec<Value>)>,
}

impl Constraints {
    /// A pod's rules whose terms know no namespace labels (see [`Constraints::from_pod_in`]).
    pub fn from_pod(pod: &Value) -> Self {
        Self::from_pod_in(pod, &NamespaceLabels::new())
    }

    /// A pod's rules; `nss` resolves its terms' `namespaceSelector`s.
    pub fn from_pod_in(pod: &Value, nss: &NamespaceLabels) -> Self {
        let ns = s(pod, "/metadata/namespace").to_string();
        let labels = labels_of(pod);
        let aff = "/spec/affinity/podAffinity";
        let anti = "/spec/affinity/podAntiAffinity";
        let req = "requiredDuringSchedulingIgnoredDuringExecution";
        let pref = "preferredDuringSchedulingIgnoredDuringExecution";
        let mut spread: Vec<Spread> = pod
            .pointer("/spec/topologySpreadConstraints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let sel = c
                    .get("labelSelector")
                    .filter(|v| !v.is_null())
                    .and_then(|v| serde_json::from_value::<metav1::LabelSelector>(v.clone()).ok())
                    .and_then(|sel| LabelSelector::from_k8s(&sel).ok())?;
                // matchLabelKeys: the pod's own values of these keys narrow the selector.
                let mut reqs = sel.requirements().to_vec();
                for key in c["matchLabelKeys"].as_array().into_iter().flatten() {
                    let Some(key) = key.as_str() else { continue };
                    if let Some(v) = labels.get(key)
                        && let Ok(r) = Requirement::new(key, Operator::In, vec![v.clone()])
                    {
                        reqs.push(r);
                    }
                }
                Some(Spread {
                    max_skew: c["maxSkew"].as_f64().unwrap_or(1.0).max(1.0),
                    topology_key: c["topologyKey"].as_str()?.to_string(),
                    hard: c["whenUnsatisfiable"].as_str() != Some("ScheduleAnyway"),
                    selector: LabelSelector::from_requirements(reqs),
                    owner: None,
                    min_domains: c["minDomains"].as_u64().unwrap_or(1).max(1) as usize,
                })
            })
            .collect();
        if spread.is_empty()
            && let Some(owner) = controller_of(pod)
        {
            spread.push(Spread {
                max_skew: 3.0,
                topology_key: HOSTNAME.into(),
                hard: false,
                selector: LabelSelector::everything(),
                owner: Some(owner),
                min_domains: 1,
            });
        }
        let preferred_nodes = pod
            .pointer(&format!("/spec/affinity/nodeAffinity/{pref}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["weight"].as_f64().unwrap_or(1.0),
                    p.pointer("/preference/matchExpressions")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect();
        Constraints {
            required_affinity: terms(pod, &format!("{aff}/{req}"), &ns, false, nss),
            required_anti: terms(pod, &format!("{anti}/{req}"), &ns, false, nss),
            preferred_affinity: terms(pod, &format!("{aff}/{pref}"), &ns, true, nss),
            preferred_anti: terms(pod, &format!("{anti}/{pref}"), &ns, true, nss),
            spread,
            preferred_nodes,
            namespace: ns,
            labels,
        }
    }

    /// Nothing here for the pod: the plain resource-based search serves it.
    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti.is_empty()
            && self.spread.is_empty()
            && self.preferred_nodes.is_empty()
    }
}

/// How many pods matching `matches` run in each domain of `key` (nodes without the label are
/// in no domain).
fn domain_counts<'a>(
    key: &str,
    nodes: &'a [NodeInfo],
    placed: &[Vec<PlacedPod>],
    matches: impl Fn(&PlacedPod) -> bool,
) -> HashMap<&'a str, f64> {
    let mut counts: HashMap<&str, f64> = HashMap::new();
    for (n, pods) in nodes.iter().zip(placed) {
        if let Some(v) = n.labels.get(key) {
            let c = pods.iter().filter(|p| matches(p)).count() as f64;
            *counts.entry(v.as_str()).or_default() += c;
        }
    }
    counts
}

/// Scales raw scores of the feasible nodes to 0..=100 (all equal: all 0).
fn normalize(raw: &[f64], higher_is_better: bool) -> Vec<f64> {
    let (lo, hi) = raw
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(*v), h.max(*v))
        });
    raw.iter()
        .map(|v| {
            if hi - lo <= 1e-9 {
                0.0
            } else if higher_is_better {
                (v - lo) / (hi - lo) * 100.0
            } else {
                (hi - v) / (hi - lo) * 100.0
            }
        })
        .collect()
}

fn unavailable(total: usize, reasons: &BTreeMap<String, usize>) -> String {
    let why: Vec<String> = reasons.iter().map(|(r, c)| format!("{c} {r}")).collect();
    format!("0/{total} nodes are available: {}.", why.join(", "))
}

/// The best node for `pod` with constraints `c`, every node considered: index into `nodes`,
/// or Kubernetes' summary of why none fits. `placed[i]` are the pods bound to `nodes[i]`.
pub fn decide(
    pod: &Value,
    req: &PodRequest,
    c: &Constraints,
    nodes: &[NodeInfo],
    placed: &[Vec<PlacedPod>],
) -> Result<usize, String> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    // Required affinity: domains holding a matching pod; a term no pod matches yet lets the
    // first pod of a group that matches it itself go anywhere.
    let affinity: Vec<(HashMap<&str, f64>, bool)> = c
        .required_affinity
        .iter()
        .map(|t| {
            let counts = domain_counts(&t.topology_key, nodes, placed, |p| {
                t.matches(&p.namespace, &p.labels)
            });
            let none_anywhere =
                counts.values().all(|n| *n == 0.0) && t.matches(&c.namespace, &c.labels);
            (counts, none_anywhere)
        })
        .collect();
    let anti: Vec<HashMap<&str, f64>> = c
        .required_anti
        .iter()
        .map(|t| {
            domain_counts(&t.topology_key, nodes, placed, |p| {
                t.matches(&p.namespace, &p.labels)
            })
        })
        .collect();
    // Existing pods' required anti-affinity against this pod: forbidden (key, value) domains.
    let mut forbidden: Vec<(&str, &str)> = Vec::new();
    for (n, pods) in nodes.iter().zip(placed) {
        for p in pods {
            for t in &p.required_anti {
                if t.matches(&c.namespace, &c.labels)
                    && let Some(v) = n.labels.get(&t.topology_key)
                {
                    forbidden.push((t.topology_key.as_str(), v.as_str()));
                }
            }
        }
    }
    // Spread: matching pods per domain, over the domains of nodes the pod may use.
    let eligible = |n: &NodeInfo| predicates::placement_fits(pod, n);
    let spread: Vec<(HashMap<&str, f64>, f64)> = c
        .spread
        .iter()
        .map(|sp| {
            let counts = domain_counts(&sp.topology_key, nodes, placed, |p| match &sp.owner {
                Some(o) => p.owner.as_deref() == Some(o),
                None => p.namespace == c.namespace && sp.selector.matches(&p.labels),
            });
            let mut domains: HashMap<&str, f64> = HashMap::new();
            for n in nodes.iter().filter(|n| eligible(n)) {
                if let Some(v) = n.labels.get(&sp.topology_key) {
                    domains.insert(v.as_str(), counts.get(v.as_str()).copied().unwrap_or(0.0));
                }
            }
            let min = if domains.len() < sp.min_domains {
                0.0
            } else {
                domains.values().copied().fold(f64::INFINITY, f64::min)
            };
            (domains, if min.is_finite() { min } else { 0.0 })
        })
        .collect();
    let self_counts = |sp: &Spread| match &sp.owner {
        Some(_) => 1.0,
        None => f64::from(u8::from(sp.selector.matches(&c.labels))),
    };

    let mut feasible: Vec<usize> = Vec::new();
    'nodes: for (i, n) in nodes.iter().enumerate() {
        if let Some(r) = predicates::filter(pod, req, n) {
            *reasons.entry(r).or_default() += 1;
            continue;
        }
        for (t, (counts, first)) in c.required_affinity.iter().zip(&affinity) {
            let here = n
                .labels
                .get(&t.topology_key)
                .and_then(|v| counts.get(v.as_str()))
                .copied()
                .unwrap_or(0.0);
            if here == 0.0 && !(*first && n.labels.contains_key(&t.topology_key)) {
                *reasons
                    .entry("node(s) didn't match pod affinity rules".into())
                    .or_default() += 1;
                continue 'nodes;
            }
        }
        for (t, counts) in c.required_anti.iter().zip(&anti) {
            if n.labels
                .get(&t.topology_key)
                .and_then(|v| counts.get(v.as_str()))
                .is_some_and(|c| *c > 0.0)
            {
                *reasons
                    .entry("node(s) didn't match pod anti-affinity rules".into())
                    .or_default() += 1;
                continue 'nodes;
            }
        }
        if forbidden
            .iter()
            .any(|(k, v)| n.labels.get(*k).map(String::as_str) == Some(*v))
        {
            *reasons
                .entry("node(s) didn't satisfy existing pods anti-affinity rules".into())
                .or_default() += 1;
            continue 'nodes;
        }
        for (sp, (domains, min)) in c.spread.iter().zip(&spread) {
            if !sp.hard {
                continue;
            }
            let Some(v) = n.labels.get(&sp.topology_key) else {
                *reasons
                    .entry("node(s) didn't match pod topology spread constraints (missing required label)".into())
                    .or_default() += 1;
                continue 'nodes;
            };
            let here = domains.get(v.as_str()).copied().unwrap_or(0.0);
            if here + self_counts(sp) - min > sp.max_skew {
                *reasons
                    .entry("node(s) didn't match pod topology spread constraints".into())
                    .or_default() += 1;
                continue 'nodes;
            }
        }
        feasible.push(i);
    }
    if feasible.is_empty() {
        return Err(unavailable(nodes.len(), &reasons));
    }

    let count_in = |counts: &HashMap<&str, f64>, key: &str, n: &NodeInfo| {
        n.labels
            .get(key)
            .and_then(|v| counts.get(v.as_str()))
            .copied()
            .unwrap_or(0.0)
    };
    // Preferred node affinity.
    let node_pref: Vec<f64> = feasible
        .iter()
        .map(|&i| {
            c.preferred_nodes
                .iter()
                .filter(|(_, exprs)| {
                    exprs
                        .iter()
                        .all(|e| predicates::expression_matches(&nodes[i].labels, e))
                })
                .map(|(w, _)| *w)
                .sum()
        })
        .collect();
    // Preferred pod affinity minus anti-affinity.
    let pref_counts: Vec<(HashMap<&str, f64>, &Term, f64)> = c
        .preferred_affinity
        .iter()
        .map(|t| (t, 1.0))
        .chain(c.preferred_anti.iter().map(|t| (t, -1.0)))
        .map(|(t, sign)| {
            (
                domain_counts(&t.topology_key, nodes, placed, |p| {
                    t.matches(&p.namespace, &p.labels)
                }),
                t,
                sign,
            )
        })
        .collect();
    let inter: Vec<f64> = feasible
        .iter()
        .map(|&i| {
            pref_counts
                .iter()
                .map(|(counts, t, sign)| {
                    sign * t.weight * count_in(counts, &t.topology_key, &nodes[i])
                })
                .sum()
        })
        .collect();
    // Soft spreading: fewer matching pods in the node's domain is better.
    let soft: Vec<f64> = feasible
        .iter()
        .map(|&i| {
            c.spread
                .iter()
                .zip(&spread)
                .filter(|(sp, _)| !sp.hard)
                .map(|(sp, (domains, _))| {
                    count_in(domains, &sp.topology_key, &nodes[i]) / sp.max_skew
                })
                .sum()
        })
        .collect();
    let (node_pref, inter, soft) = (
        normalize(&node_pref, true),
        normalize(&inter, true),
        normalize(&soft, false),
    );
    let mut best: Option<(f64, usize)> = None;
    for (k, &i) in feasible.iter().enumerate() {
        let total =
            predicates::score(req, &nodes[i]) + PLUGIN_WEIGHT * (node_pref[k] + inter[k] + soft[k]);
        if best.is_none_or(|(b, bi)| {
            total > b + 1e-9 || ((total - b).abs() <= 1e-9 && nodes[i].name < nodes[bi].name)
        }) {
            best = Some((total, i));
        }
    }
    best.map(|(_, i)| i)
        .ok_or_else(|| unavailable(nodes.len(), &reasons))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(name: &str, zone: &str) -> NodeInfo {
        NodeInfo::from_node(&json!({
            "metadata": {"name": name, "labels": {HOSTNAME: name, "topology.kubernetes.io/zone": zone}},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}}}))
    }

    fn nodes() -> Vec<NodeInfo> {
        vec![
            node("a1", "a"),
            node("a2", "a"),
            node("b1", "b"),
            node("c1", "c"),
        ]
    }

    fn pod(labels: Value, spec: Value) -> Value {
        let mut spec = spec;
        spec["containers"] =
            json!([{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]);
        json!({"metadata": {"namespace": "default", "name": "p", "labels": labels}, "spec": spec})
    }

    fn placed_on(nodes: &[NodeInfo], pods: &[(&str, Value)]) -> Vec<Vec<PlacedPod>> {
        nodes
            .iter()
            .map(|n| {
                pods.iter()
                    .filter(|(on, _)| *on == n.name)
                    .map(|(_, p)| PlacedPod::from_pod(p))
                    .collect()
            })
            .collect()
    }

    fn place(p: &Value, nodes: &[NodeInfo], placed: &[Vec<PlacedPod>]) -> Result<String, String> {
        let c = Constraints::from_pod(p);
        decide(p, &PodRequest::from_pod(p), &c, nodes, placed).map(|i| nodes[i].name.clone())
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_apart_and_says_why() {
        let ns = nodes();
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}});
        let db = pod(json!({"app": "db"}), anti.clone());
        let placed = placed_on(&ns, &[("a1", db.clone()), ("b1", db.clone())]);
        assert_eq!(place(&db, &ns, &placed).as_deref(), Ok("c1"));
        let placed = placed_on(
            &ns,
            &[("a1", db.clone()), ("b1", db.clone()), ("c1", db.clone())],
        );
        let err = place(&db, &ns, &placed).unwrap_err();
        assert_eq!(
            err,
            "0/4 nodes are available: 4 node(s) didn't match pod anti-affinity rules."
        );
        // Symmetry: a pod without rules of its own stays out of the db's zones too.
        let other = pod(json!({"app": "db"}), json!({}));
        let placed = placed_on(&ns, &[("a1", db.clone())]);
        let got = place(&other, &ns, &placed).unwrap();
        assert!(got == "b1" || got == "c1", "{got}");
    }

    #[test]
    fn namespace_selectors_pick_namespaces_by_their_labels() {
        let ns = nodes();
        let in_ns = |ns: &str, labels: Value| {
            let mut p = pod(labels, json!({}));
            p["metadata"]["namespace"] = json!(ns);
            p
        };
        let nss = namespace_labels(&[
            json!({"metadata": {"name": "team-a", "labels": {"team": "a"}}}),
            json!({"metadata": {"name": "team-b", "labels": {"team": "b"}}}),
            json!({"metadata": {"name": "default"}}),
        ]);
        // A cache in team-a on a1, one in team-b on b1.
        let placed: Vec<Vec<PlacedPod>> = ns
            .iter()
            .map(|n| match n.name.as_str() {
                "a1" => vec![PlacedPod::from_pod_in(
                    &in_ns("team-a", json!({"app": "cache"})),
                    &nss,
                )],
                "b1" => vec![PlacedPod::from_pod_in(
                    &in_ns("team-b", json!({"app": "cache"})),
                    &nss,
                )],
                _ => vec![],
            })
            .collect();
        let web = |selector: Value| {
            pod(
                json!({"app": "web"}),
                json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "cache"}}, "namespaceSelector": selector,
                     "topologyKey": "topology.kubernetes.io/zone"}]}}}),
            )
        };
        let place_in = |p: &Value| {
            let c = Constraints::from_pod_in(p, &nss);
            decide(p, &PodRequest::from_pod(p), &c, &ns, &placed).map(|i| ns[i].name.clone())
        };
        // Only namespaces labelled team=b count: zone b.
        assert_eq!(
            place_in(&web(json!({"matchLabels": {"team": "b"}}))).as_deref(),
            Ok("b1")
        );
        // team=a: zone a (a1 or a2).
        let got = place_in(&web(json!({"matchExpressions": [
            {"key": "team", "operator": "In", "values": ["a"]}]})))
        .unwrap();
        assert!(got.starts_with('a'), "{got}");
        // A selector matching no namespace: no cache counts, so the pod cannot be placed.
        assert!(place_in(&web(json!({"matchLabels": {"team": "z"}}))).is_err());
        // Without a selector only the pod's own namespace (default) counts: nothing there.
        let own = pod(
            json!({"app": "web"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}),
        );
        assert!(place_in(&own).is_err());
        // An empty selector: every namespace.
        assert!(place_in(&web(json!({}))).is_ok());
    }

    #[test]
    fn required_affinity_follows_the_group_and_lets_the_first_in() {
        let ns = nodes();
        let web = pod(
            json!({"app": "web"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}),
        );
        let cache = pod(json!({"app": "cache"}), json!({}));
        let placed = placed_on(&ns, &[("b1", cache)]);
        assert_eq!(place(&web, &ns, &placed).as_deref(), Ok("b1"));
        // No cache anywhere and web does not match its own term: nowhere.
        let err = place(&web, &ns, &placed_on(&ns, &[])).unwrap_err();
        assert!(
            err.contains("4 node(s) didn't match pod affinity rules"),
            "{err}"
        );
        // A group that matches itself: its first pod goes anywhere.
        let group = pod(
            json!({"app": "g"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "g"}}, "topologyKey": "topology.kubernetes.io/zone"}]}}}),
        );
        assert!(place(&group, &ns, &placed_on(&ns, &[])).is_ok());
        let placed = placed_on(&ns, &[("a2", group.clone())]);
        let got = place(&group, &ns, &placed).unwrap();
        assert!(got.starts_with('a'), "{got}");
    }

    #[test]
    fn hard_spread_bounds_the_skew_and_soft_spread_prefers_empty_domains() {
        let ns = nodes();
        let spread = |when: &str| {
            pod(
                json!({"app": "w"}),
                json!({"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": when,
                 "labelSelector": {"matchLabels": {"app": "w"}}}]}),
            )
        };
        let w = spread("DoNotSchedule");
        // Zone a has 1, b has 1, c has 0: only c keeps the skew at 1.
        let placed = placed_on(&ns, &[("a1", w.clone()), ("b1", w.clone())]);
        assert_eq!(place(&w, &ns, &placed).as_deref(), Ok("c1"));
        // a has 2: a would make the skew 2 against c's 0... with b and c at 1 each, a is out.
        let placed = placed_on(
            &ns,
            &[
                ("a1", w.clone()),
                ("a2", w.clone()),
                ("b1", w.clone()),
                ("c1", w.clone()),
            ],
        );
        let got = place(&w, &ns, &placed).unwrap();
        assert!(got == "b1" || got == "c1", "{got}");
        let soft = spread("ScheduleAnyway");
        let placed = placed_on(&ns, &[("a1", soft.clone()), ("c1", soft.clone())]);
        assert_eq!(place(&soft, &ns, &placed).as_deref(), Ok("b1"));
    }

    #[test]
    fn replicas_of_one_owner_spread_by_default() {
        let ns = nodes();
        let mut p = pod(json!({"app": "x"}), json!({}));
        p["metadata"]["ownerReferences"] =
            json!([{"kind": "ReplicaSet", "name": "x", "uid": "rs-1", "controller": true}]);
        let mut placed = placed_on(&ns, &[]);
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..8 {
            let i = decide(
                &p,
                &PodRequest::from_pod(&p),
                &Constraints::from_pod(&p),
                &ns,
                &placed,
            )
            .unwrap();
            placed[i].push(PlacedPod::from_pod(&p));
            *counts.entry(ns[i].name.clone()).or_default() += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            [2, 2, 2, 2],
            "{counts:?}"
        );
    }

    #[test]
    fn preferred_rules_order_the_nodes() {
        let ns = nodes();
        let p = pod(
            json!({"app": "p"}),
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["c"]}]}}]}}}),
        );
        assert_eq!(place(&p, &ns, &placed_on(&ns, &[])).as_deref(), Ok("c1"));
        let q = pod(
            json!({"app": "q"}),
            json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "q"}}, "topologyKey": HOSTNAME}}]}}}),
        );
        let placed = placed_on(
            &ns,
            &[("a1", q.clone()), ("a2", q.clone()), ("b1", q.clone())],
        );
        assert_eq!(place(&q, &ns, &placed).as_deref(), Ok("c1"));
        assert!(Constraints::from_pod(&pod(json!({}), json!({}))).is_empty());
    }
}
