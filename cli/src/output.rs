//! Printing objects the way kubectl does: tables with per-kind columns, YAML, names, describe.

use anyhow::Result;
use ferry_api::kinds::KindInfo;
use serde_json::Value;

/// `deployment.apps` for grouped kinds, `service` for core ones (kubectl's resource/name form).
pub fn qualified(info: &KindInfo) -> String {
    let singular = info.kind.to_ascii_lowercase();
    match info.api_version.rsplit_once('/') {
        Some((group, _)) => format!("{singular}.{group}"),
        None => singular,
    }
}

pub fn name_of(info: &KindInfo, obj: &Value) -> String {
    format!("{}/{}", qualified(info), s(obj, "/metadata/name"))
}

pub fn yaml(v: &Value) -> Result<String> {
    Ok(serde_saphyr::to_string(v)?)
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(v: &str) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v.to_string()
    }
}

/// Kubernetes' short age: 45s, 12m, 3h, 5d.
pub fn age(obj: &Value) -> String {
    let ts = s(obj, "/metadata/creationTimestamp");
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

fn ports(obj: &Value) -> String {
    let Some(ports) = obj.pointer("/spec/ports").and_then(Value::as_array) else {
        return "<none>".into();
    };
    let parts: Vec<String> = ports
        .iter()
        .map(|p| {
            let port = n(p, "/port");
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn pod_columns(obj: &Value) -> Vec<String> {
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
    let waiting = statuses
        .iter()
        .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str));
    let status = if !s(obj, "/metadata/deletionTimestamp").is_empty() {
        "Terminating".to_string()
    } else {
        waiting
            .map(String::from)
            .unwrap_or_else(|| or_none(s(obj, "/status/phase")))
    };
    vec![format!("{ready}/{total}"), status, restarts.to_string()]
}

/// Column headers and cells for a kind: (headers, cells-per-object, wide-extra headers, wide cells).
type Columns = (Vec<&'static str>, Vec<&'static str>);

fn columns(info: &KindInfo) -> Columns {
    match info.kind {
        "Pod" => (
            vec!["READY", "STATUS", "RESTARTS", "AGE"],
            vec!["IP", "NODE"],
        ),
        "Deployment" => (
            vec!["READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec!["SELECTOR"],
        ),
        "ReplicaSet" => (vec!["DESIRED", "CURRENT", "READY", "AGE"], vec!["SELECTOR"]),
        "DaemonSet" => (
            vec![
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "AGE",
            ],
            vec![],
        ),
        "StatefulSet" => (vec!["READY", "AGE"], vec![]),
        "ControllerRevision" => (vec!["CONTROLLER", "REVISION", "AGE"], vec![]),
        "Job" => (vec!["COMPLETIONS", "AGE"], vec![]),
        "CronJob" => (
            vec!["SCHEDULE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
            vec![],
        ),
        "Service" => (
            vec!["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
            vec!["SELECTOR"],
        ),
        "Node" => (
            vec!["STATUS", "ROLES", "AGE", "VERSION"],
            vec!["INTERNAL-IP"],
        ),
        "Namespace" => (vec!["STATUS", "AGE"], vec![]),
        "ConfigMap" => (vec!["DATA", "AGE"], vec![]),
        "Secret" => (vec!["TYPE", "DATA", "AGE"], vec![]),
        "PersistentVolume" => (
            vec![
                "CAPACITY",
                "ACCESS MODES",
                "RECLAIM POLICY",
                "STATUS",
                "CLAIM",
                "AGE",
            ],
            vec![],
        ),
        "PersistentVolumeClaim" => (
            vec!["STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "AGE"],
            vec![],
        ),
        "Event" => (vec!["TYPE", "REASON", "OBJECT", "MESSAGE"], vec![]),
        _ => (vec!["AGE"], vec![]),
    }
}

fn selector_text(obj: &Value) -> String {
    let sel = obj
        .pointer("/spec/selector/matchLabels")
        .or_else(|| obj.pointer("/spec/selector"));
    match sel.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => m
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "<none>".into(),
    }
}

fn cells(info: &KindInfo, obj: &Value, wide: bool) -> Vec<String> {
    let mut c: Vec<String> = match info.kind {
        "Pod" => {
            let mut v = pod_columns(obj);
            v.push(age(obj));
            v
        }
        "Deployment" => vec![
            format!(
                "{}/{}",
                n(obj, "/status/readyReplicas"),
                n(obj, "/spec/replicas")
            ),
            n(obj, "/status/updatedReplicas").to_string(),
            n(obj, "/status/availableReplicas").to_string(),
            age(obj),
        ],
        "ReplicaSet" => vec![
            n(obj, "/spec/replicas").to_string(),
            n(obj, "/status/replicas").to_string(),
            n(obj, "/status/readyReplicas").to_string(),
            age(obj),
        ],
        "DaemonSet" => vec![
            n(obj, "/status/desiredNumberScheduled").to_string(),
            n(obj, "/status/currentNumberScheduled").to_string(),
            n(obj, "/status/numberReady").to_string(),
            n(obj, "/status/updatedNumberScheduled").to_string(),
            n(obj, "/status/numberAvailable").to_string(),
            age(obj),
        ],
        "ControllerRevision" => vec![
            obj.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
                .map_or_else(
                    || "<none>".to_string(),
                    |r| format!("{}.apps/{}", s(r, "/kind").to_lowercase(), s(r, "/name")),
                ),
            n(obj, "/revision").to_string(),
            age(obj),
        ],
        "StatefulSet" => vec![
            format!(
                "{}/{}",
                n(obj, "/status/readyReplicas"),
                n(obj, "/spec/replicas")
            ),
            age(obj),
        ],
        "Job" => vec![
            format!(
                "{}/{}",
                n(obj, "/status/succeeded"),
                obj.pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            ),
            age(obj),
        ],
        "CronJob" => vec![
            s(obj, "/spec/schedule").to_string(),
            obj.pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string(),
            obj.pointer("/status/active")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                .to_string(),
            or_none(s(obj, "/status/lastScheduleTime")),
            age(obj),
        ],
        "Service" => {
            let ext = obj
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.get("ip").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| {
                    if s(obj, "/spec/type") == "LoadBalancer" {
                        "<pending>".into()
                    } else {
                        "<none>".into()
                    }
                });
            vec![
                s(obj, "/spec/type").to_string(),
                or_none(s(obj, "/spec/clusterIP")),
                ext,
                ports(obj),
                age(obj),
            ]
        }
        "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| s(c, "/type") == "Ready"))
                .map(|c| {
                    if s(c, "/status") == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            vec![
                ready.into(),
                "<none>".into(),
                age(obj),
                or_none(s(obj, "/status/nodeInfo/kubeletVersion")),
            ]
        }
        "Namespace" => vec![or_none(s(obj, "/status/phase")), age(obj)],
        "ConfigMap" => {
            let d = obj
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + obj
                    .get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![d.to_string(), age(obj)]
        }
        "Secret" => vec![
            s(obj, "/type").to_string(),
            obj.get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                .to_string(),
            age(obj),
        ],
        "PersistentVolume" => vec![
            or_none(s(obj, "/spec/capacity/storage")),
            access_modes(obj),
            s(obj, "/spec/persistentVolumeReclaimPolicy").to_string(),
            or_none(s(obj, "/status/phase")),
            if s(obj, "/spec/claimRef/name").is_empty() {
                String::new()
            } else {
                format!(
                    "{}/{}",
                    s(obj, "/spec/claimRef/namespace"),
                    s(obj, "/spec/claimRef/name")
                )
            },
            age(obj),
        ],
        "PersistentVolumeClaim" => vec![
            or_none(s(obj, "/status/phase")),
            s(obj, "/spec/volumeName").to_string(),
            s(obj, "/status/capacity/storage").to_string(),
            access_modes(obj),
            age(obj),
        ],
        "Event" => vec![
            s(obj, "/type").to_string(),
            s(obj, "/reason").to_string(),
            format!(
                "{}/{}",
                s(obj, "/involvedObject/kind").to_ascii_lowercase(),
                s(obj, "/involvedObject/name")
            ),
            s(obj, "/message").to_string(),
        ],
        _ => vec![age(obj)],
    };
    if wide {
        match info.kind {
            "Pod" => {
                c.push(or_none(s(obj, "/status/podIP")));
                c.push(or_none(s(obj, "/spec/nodeName")));
            }
            "Deployment" | "ReplicaSet" | "Service" => c.push(selector_text(obj)),
            "Node" => {
                let ip = obj
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().find(|x| s(x, "/type") == "InternalIP"))
                    .map(|x| s(x, "/address").to_string())
                    .unwrap_or_default();
                c.push(or_none(&ip));
            }
            _ => {}
        }
    }
    c
}

fn access_modes(obj: &Value) -> String {
    let modes = obj
        .pointer("/spec/accessModes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    modes
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn row(info: &KindInfo, obj: &Value, show_ns: bool, wide: bool) -> Vec<String> {
    let mut r = Vec::new();
    if show_ns {
        r.push(s(obj, "/metadata/namespace").to_string());
    }
    r.push(s(obj, "/metadata/name").to_string());
    r.extend(cells(info, obj, wide));
    r
}

fn header(info: &KindInfo, show_ns: bool, wide: bool) -> Vec<String> {
    let (base, extra) = columns(info);
    let mut h: Vec<String> = Vec::new();
    if show_ns {
        h.push("NAMESPACE".into());
    }
    h.push("NAME".into());
    h.extend(base.iter().map(|s| s.to_string()));
    if wide {
        h.extend(extra.iter().map(|s| s.to_string()));
    }
    h
}

pub fn table(info: &KindInfo, objs: &[Value], show_ns: bool, wide: bool) -> String {
    let mut rows = vec![header(info, show_ns, wide)];
    rows.extend(objs.iter().map(|o| row(info, o, show_ns, wide)));
    render(&rows)
}

/// Rows without a header, for `get -w` updates.
pub fn rows_only(info: &KindInfo, objs: &[Value], show_ns: bool, wide: bool) -> String {
    let rows: Vec<_> = objs.iter().map(|o| row(info, o, show_ns, wide)).collect();
    render(&rows)
}

pub fn describe(info: &KindInfo, obj: &Value, events: &[Value]) -> Result<String> {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: &str| {
        out.push_str(&format!("{:<20}{}\n", format!("{k}:"), v))
    };
    line(&mut out, "Name", s(obj, "/metadata/name"));
    if info.namespaced {
        line(&mut out, "Namespace", s(obj, "/metadata/namespace"));
    }
    line(&mut out, "Kind", info.kind);
    for (title, ptr) in [
        ("Labels", "/metadata/labels"),
        ("Annotations", "/metadata/annotations"),
    ] {
        let text = obj
            .pointer(ptr)
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty())
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != crate::apply::LAST_APPLIED)
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(&format!("\n{:20}", ""))
            })
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "<none>".into());
        line(&mut out, title, &text);
    }
    line(&mut out, "UID", s(obj, "/metadata/uid"));
    line(
        &mut out,
        "Resource Version",
        s(obj, "/metadata/resourceVersion"),
    );
    line(&mut out, "Created", s(obj, "/metadata/creationTimestamp"));
    if !s(obj, "/metadata/deletionTimestamp").is_empty() {
        line(
            &mut out,
            "Deleting Since",
            s(obj, "/metadata/deletionTimestamp"),
        );
    }
    for section in ["spec", "data", "status"] {
        if let Some(v) = obj.get(section) {
            out.push_str(&format!(
                "{}{}:\n",
                &section[..1].to_uppercase(),
                &section[1..]
            ));
            for l in yaml(v)?.lines() {
                out.push_str(&format!("  {l}\n"));
            }
        }
    }
    out.push_str("Events:");
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push('\n');
        let mut rows = vec![vec![
            "  TYPE".to_string(),
            "REASON".into(),
            "AGE".into(),
            "MESSAGE".into(),
        ]];
        for e in events {
            rows.push(vec![
                format!("  {}", s(e, "/type")),
                s(e, "/reason").into(),
                age(e),
                s(e, "/message").into(),
            ]);
        }
        out.push_str(&render(&rows));
    }
    Ok(out)
}
