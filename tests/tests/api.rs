//! API semantics against a real single-member `ferry server`: metadata, validation errors,
//! optimistic concurrency, status, patches, finalizers, selectors, watches, limits, and the CLI.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_api::client::{Client, ListOptions};
use ferry_tests::{Cluster, configmap, ferry_bin};
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Code;

fn deployment(name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
            }
        }
    })
}

async fn single() -> Result<(Cluster, Client)> {
    // Without the Deployment controller: these tests check the API's own handling of
    // Deployments, which the controller would otherwise update concurrently.
    let cluster = Cluster::start(1, &["--controllers", "*,-deployment"]).await?;
    let client = cluster.client();
    Ok((cluster, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_update_patch_delete() -> Result<()> {
    let (_cluster, c) = single().await?;
    let created = c.create("deploy", "", &deployment("web", 2)).await?;
    let meta = &created["metadata"];
    assert_eq!(meta["namespace"], "default");
    assert_eq!(meta["generation"], 1);
    assert!(meta["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(meta["creationTimestamp"].as_str().is_some());
    let rv1: u64 = meta["resourceVersion"].as_str().context("rv")?.parse()?;
    // Defaults are applied as Kubernetes does.
    assert_eq!(created["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        created["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );

    let got = c.get("deployments", "default", "web").await?;
    assert_eq!(got, created);

    // Update with the current resourceVersion: generation bumps on a spec change.
    let mut scaled = got.clone();
    scaled["spec"]["replicas"] = json!(5);
    let updated = c.update("Deployment", &scaled).await?;
    assert_eq!(updated["metadata"]["generation"], 2);
    let rv2: u64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .parse()?;
    assert!(rv2 > rv1);
    // A stale resourceVersion is a conflict.
    let err = c
        .update("Deployment", &scaled)
        .await
        .expect_err("stale update must fail");
    assert_eq!(err.code, Code::Aborted, "{err}");
    assert!(
        err.message.contains("the object has been modified"),
        "{err}"
    );
    // Labels only: no generation bump.
    let patched = c
        .patch(
            "deploy",
            "default",
            "web",
            &json!({"metadata": {"labels": {"tier": "front"}}}),
        )
        .await?;
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    assert_eq!(patched["metadata"]["generation"], 2);
    // The main resource cannot write status; the status subresource cannot write spec.
    let mut with_status = patched.clone();
    with_status["status"] = json!({"replicas": 3});
    with_status["metadata"]
        .as_object_mut()
        .context("meta")?
        .remove("resourceVersion");
    let main = c.update("Deployment", &with_status).await?;
    assert!(
        main.get("status")
            .is_none_or(|s| s.get("replicas").is_none())
    );
    with_status["spec"]["replicas"] = json!(9);
    let status = c.update_status("Deployment", &with_status).await?;
    assert_eq!(status["status"]["replicas"], 3);
    assert_eq!(status["spec"]["replicas"], 5);

    c.delete("deploy", "default", "web", "").await?;
    let err = c
        .get("deploy", "default", "web")
        .await
        .expect_err("deleted");
    assert!(err.is_not_found());
    assert_eq!(err.message, "deployments \"web\" not found");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_changes_nothing() -> Result<()> {
    let (_cluster, c) = single().await?;
    let mut bad = deployment("bad", 1);
    bad["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
    let err = c
        .create("deploy", "", &bad)
        .await
        .expect_err("unknown field");
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(
        err.message
            .contains("spec.template.spec.containers[0].imagee"),
        "{err}"
    );

    let mut no_image = deployment("bad", 1);
    no_image["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .context("c")?
        .remove("image");
    let err = c
        .create("deploy", "", &no_image)
        .await
        .expect_err("missing image");
    assert!(
        err.message
            .contains("spec.template.spec.containers[0].image: required"),
        "{err}"
    );

    let err = c
        .create("widgets", "", &json!({}))
        .await
        .expect_err("unknown kind");
    assert!(
        err.message
            .contains("doesn't have a resource type \"widgets\""),
        "{err}"
    );

    let err = c
        .create("ConfigMap", "nope", &configmap("x", "y"))
        .await
        .expect_err("missing namespace");
    assert_eq!(err.message, "namespaces \"nope\" not found");

    c.create("ConfigMap", "", &configmap("dup", "1")).await?;
    let err = c
        .create("ConfigMap", "", &configmap("dup", "2"))
        .await
        .expect_err("duplicate");
    assert!(err.is_already_exists());
    assert_eq!(
        c.get("cm", "default", "dup").await?["data"]["v"],
        "1",
        "a failed create changes nothing"
    );

    let huge = configmap("huge", &"x".repeat(4 << 20));
    let err = c
        .create("ConfigMap", "", &huge)
        .await
        .expect_err("oversized");
    assert!(
        matches!(err.code, Code::ResourceExhausted | Code::OutOfRange),
        "{err:?}"
    );

    let err = c
        .delete("ns", "", "default", "")
        .await
        .expect_err("system namespace");
    assert_eq!(err.code, Code::PermissionDenied);
    let err = c
        .delete("cm", "default", "dup", "Sideways")
        .await
        .expect_err("bad policy");
    assert!(err.message.contains("propagationPolicy"), "{err}");
    // The server is still healthy.
    assert_eq!(c.get("cm", "default", "dup").await?["data"]["v"], "1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_name_finalizers_and_selectors() -> Result<()> {
    let (_cluster, c) = single().await?;
    let generated = c
        .create(
            "cm",
            "",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "job-"}}),
        )
        .await?;
    let name = generated["metadata"]["name"].as_str().context("name")?;
    assert!(name.starts_with("job-") && name.len() == 9, "{name}");

    // Finalizers hold deletion: delete marks, removing the last finalizer deletes.
    let mut held = configmap("held", "1");
    held["metadata"]["finalizers"] = json!(["ferry.dev/test"]);
    c.create("cm", "", &held).await?;
    let marked = c.delete("cm", "default", "held", "").await?;
    assert!(marked["metadata"]["deletionTimestamp"].as_str().is_some());
    assert!(c.get("cm", "default", "held").await.is_ok());
    c.patch(
        "cm",
        "default",
        "held",
        &json!({"metadata": {"finalizers": null}}),
    )
    .await?;
    assert!(
        c.get("cm", "default", "held")
            .await
            .expect_err("gone")
            .is_not_found()
    );

    c.create(
        "ns",
        "",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
    )
    .await?;
    for (ns, name, tier) in [
        ("default", "a", "web"),
        ("default", "b", "db"),
        ("other", "c", "web"),
    ] {
        let mut cm = configmap(name, "v");
        cm["metadata"]["labels"] = json!({"tier": tier});
        c.create("cm", ns, &cm).await?;
    }
    let names = |list: Value| -> Vec<String> {
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["metadata"]["name"].as_str().map(String::from))
            .collect()
    };
    let web_all = c
        .list(
            "cm",
            &ListOptions {
                namespace: None,
                label_selector: "tier=web".into(),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(web_all["kind"], "ConfigMapList");
    assert_eq!(names(web_all), vec!["a", "c"]);
    let not_web = c
        .list(
            "cm",
            &ListOptions {
                namespace: Some("default".into()),
                label_selector: "tier notin (web),tier".into(),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(names(not_web), vec!["b"]);
    let by_field = c
        .list(
            "cm",
            &ListOptions {
                namespace: None,
                field_selector: "metadata.namespace=other".into(),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(names(by_field), vec!["c"]);
    let err = c
        .list(
            "cm",
            &ListOptions {
                label_selector: "tier in (".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("bad selector");
    assert!(err.message.starts_with("labelSelector:"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_changes_in_order_with_bookmarks() -> Result<()> {
    let (_cluster, c) = single().await?;
    let opts = ListOptions {
        namespace: Some("default".into()),
        label_selector: "app=w".into(),
        ..Default::default()
    };
    let rv = c.list("cm", &opts).await?["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();
    let mut stream = c.watch("cm", &opts, &rv, true).await?;
    let mut w = configmap("w1", "1");
    w["metadata"]["labels"] = json!({"app": "w"});
    c.create("cm", "", &w).await?;
    c.create("cm", "", &configmap("unlabelled", "1")).await?;
    c.patch("cm", "default", "w1", &json!({"data": {"v": "2"}}))
        .await?;
    c.patch(
        "cm",
        "default",
        "w1",
        &json!({"metadata": {"labels": {"app": "other"}}}),
    )
    .await?;
    c.patch(
        "cm",
        "default",
        "w1",
        &json!({"metadata": {"labels": {"app": "w"}}}),
    )
    .await?;
    c.delete("cm", "default", "w1", "").await?;
    let mut kinds = Vec::new();
    let mut last_rv = 0u64;
    while kinds.len() < 6 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .context("stream ended")??;
        let rv: u64 = ev.resource_version().parse()?;
        assert!(rv > last_rv || ev.kind == "BOOKMARK", "revisions increase");
        last_rv = last_rv.max(rv);
        kinds.push(ev.kind);
    }
    assert_eq!(
        kinds[..5],
        ["ADDED", "MODIFIED", "DELETED", "ADDED", "DELETED"]
    );
    assert_eq!(kinds[5], "BOOKMARK", "an idle watch sends bookmarks");
    Ok(())
}

fn ferry(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
    use std::io::Write;
    let mut cmd = Command::new(ferry_bin());
    cmd.arg("--server")
        .arg(cluster.addrs())
        .arg("--config")
        .arg(cluster.config_path())
        .args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_apply_get_describe_delete() -> Result<()> {
    let (cluster, c) = single().await?;
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cli\n  labels: {a: b, drop: me}\ndata:\n  k: v\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: cli\nspec:\n  selector: {a: b}\n  ports:\n  - port: 80\n";
    let (ok, out, err) = ferry(&cluster, &["apply", "-f", "-"], Some(manifest))?;
    assert!(ok, "{err}");
    assert_eq!(out, "configmap/cli created\nservice/cli created\n");
    let (_, out, _) = ferry(&cluster, &["apply", "-f", "-"], Some(manifest))?;
    assert_eq!(out, "configmap/cli unchanged\nservice/cli unchanged\n");
    // Someone else adds a label; apply drops the label it owned and keeps theirs.
    c.patch(
        "cm",
        "default",
        "cli",
        &json!({"metadata": {"labels": {"theirs": "x"}}}),
    )
    .await?;
    let (_, out, _) = ferry(
        &cluster,
        &["apply", "-f", "-"],
        Some(&manifest.replace(", drop: me", "")),
    )?;
    assert!(out.starts_with("configmap/cli configured\n"), "{out}");
    let labels = &c.get("cm", "default", "cli").await?["metadata"]["labels"];
    assert_eq!(labels, &json!({"a": "b", "theirs": "x"}));

    let (ok, out, _) = ferry(&cluster, &["get", "cm", "cli", "-o", "json"], None)?;
    assert!(ok);
    let printed: Value = serde_json::from_str(&out)?;
    assert_eq!(
        printed,
        c.get("cm", "default", "cli").await?,
        "-o json prints the object as the API returns it"
    );
    let (_, out, _) = ferry(&cluster, &["get", "svc", "-o", "json"], None)?;
    let list: Value = serde_json::from_str(&out)?;
    assert_eq!(list["kind"], "ServiceList");
    let (_, out, _) = ferry(&cluster, &["get", "cm"], None)?;
    assert!(out.starts_with("NAME") && out.contains("cli"), "{out}");
    let (_, out, _) = ferry(&cluster, &["describe", "cm", "cli"], None)?;
    assert!(out.contains("Name:") && out.contains("Events:"), "{out}");

    let (ok, _, err) = ferry(
        &cluster,
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndataa: {}\n"),
    )?;
    assert!(!ok);
    assert!(err.contains("dataa"), "{err}");
    let (ok, _, err) = ferry(&cluster, &["get", "widgets"], None)?;
    assert!(!ok && err.contains("widgets"), "{err}");

    let (ok, out, _) = ferry(&cluster, &["delete", "-f", "-"], Some(manifest))?;
    assert!(ok);
    assert_eq!(out, "configmap \"cli\" deleted\nservice \"cli\" deleted\n");
    let (ok, out, _) = ferry(&cluster, &["cluster", "members"], None)?;
    assert!(ok && out.contains("voter"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_beside_grpc_to_authenticated_clients_only() -> Result<()> {
    let (cluster, c) = single().await?;
    c.create("cm", "", &configmap("m", "1")).await?;
    let cfg = cluster.config.clone().context("credentials")?;
    let dir = tempfile::tempdir()?;
    let write = |name: &str, body: &str| -> Result<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, body)?;
        Ok(p.display().to_string())
    };
    let (ca, cert, key) = (
        write("ca.crt", &cfg.certificate_authority_data)?,
        write("client.crt", &cfg.client_certificate_data)?,
        write("client.key", &cfg.client_key_data)?,
    );
    let port = cluster.members[0]
        .addr
        .rsplit_once(':')
        .context("port")?
        .1
        .to_string();
    let url = format!("https://ferry-apiserver:{port}/metrics");
    let resolve = format!("ferry-apiserver:{port}:127.0.0.1");
    let curl = |extra: &[&str]| -> Result<(String, String)> {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
            ])
            .args(extra)
            .arg(&url)
            .output()
            .context("running curl (installed by .ci/setup)")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        Ok((body.to_string(), code.to_string()))
    };
    let (body, code) = curl(&["--cert", &cert, "--key", &key])?;
    assert_eq!(code, "200", "{body}");
    assert!(
        body.contains("ferry_apiserver_requests_total{method=\"create\",code=\"OK\"} 1"),
        "{body}"
    );
    assert!(body.contains("ferry_raft_is_leader 1"), "{body}");
    let (_, code) = curl(&[])?;
    assert_eq!(
        code, "401",
        "metrics without a client certificate must be refused"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_get_unique_cluster_ips_and_node_ports() -> Result<()> {
    let (_cluster, c) = single().await?;
    let svc = |name: &str, spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec});
    let mut ips = std::collections::BTreeSet::new();
    for i in 0..10 {
        let s = c
            .create(
                "svc",
                "",
                &svc(
                    &format!("s{i}"),
                    json!({"selector": {"app": "x"}, "ports": [{"port": 80}]}),
                ),
            )
            .await?;
        let ip: std::net::Ipv4Addr = s["spec"]["clusterIP"]
            .as_str()
            .context("clusterIP")?
            .parse()?;
        assert!(
            ip.octets()[0] == 10 && (96..112).contains(&ip.octets()[1]),
            "{ip} in 10.96.0.0/12"
        );
        assert_eq!(s["spec"]["clusterIPs"][0], ip.to_string());
        ips.insert(ip);
    }
    assert_eq!(ips.len(), 10, "ClusterIPs are unique");
    // A requested IP is honoured once; a second claim is refused; out-of-range is refused.
    c.create(
        "svc",
        "",
        &svc(
            "fixed",
            json!({"clusterIP": "10.96.7.7", "ports": [{"port": 53}]}),
        ),
    )
    .await?;
    let err = c
        .create(
            "svc",
            "",
            &svc(
                "fixed2",
                json!({"clusterIP": "10.96.7.7", "ports": [{"port": 53}]}),
            ),
        )
        .await
        .expect_err("taken");
    assert!(
        err.message.contains(
            "spec.clusterIP: Invalid value: \"10.96.7.7\": provided IP is already allocated"
        ),
        "{err}"
    );
    let err = c
        .create(
            "svc",
            "",
            &svc(
                "outside",
                json!({"clusterIP": "192.168.1.1", "ports": [{"port": 53}]}),
            ),
        )
        .await
        .expect_err("range");
    assert!(
        err.message
            .contains("not in the valid range. The range of valid IPs is 10.96.0.0/12"),
        "{err}"
    );
    // Headless stays headless.
    let h = c
        .create(
            "svc",
            "",
            &svc(
                "headless",
                json!({"clusterIP": "None", "ports": [{"port": 80}]}),
            ),
        )
        .await?;
    assert_eq!(h["spec"]["clusterIP"], "None");
    // NodePorts: allocated in range, explicit ones unique.
    let np = c.create("svc", "", &svc("np", json!({"type": "NodePort", "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81}]}))).await?;
    for p in np["spec"]["ports"].as_array().context("ports")? {
        let n = p["nodePort"].as_i64().context("nodePort")?;
        assert!((30000..=32767).contains(&n), "{n}");
    }
    c.create(
        "svc",
        "",
        &svc(
            "np-fixed",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
        ),
    )
    .await?;
    let err = c
        .create(
            "svc",
            "",
            &svc(
                "np-dup",
                json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
            ),
        )
        .await
        .expect_err("port taken");
    assert!(
        err.message.contains(
            "spec.ports[0].nodePort: Invalid value: 31000: provided port is already allocated"
        ),
        "{err}"
    );
    // A failed create released what it claimed: its ClusterIP is free again... and updates keep
    // allocations while refusing to change them.
    let mut fixed = c.get("svc", "default", "fixed").await?;
    fixed["spec"]
        .as_object_mut()
        .context("spec")?
        .remove("clusterIP");
    fixed["spec"]
        .as_object_mut()
        .context("spec")?
        .remove("clusterIPs");
    fixed["metadata"]["labels"] = json!({"kept": "yes"});
    assert_eq!(
        c.update("svc", &fixed).await?["spec"]["clusterIP"],
        "10.96.7.7"
    );
    let err = c
        .patch(
            "svc",
            "default",
            "fixed",
            &json!({"spec": {"clusterIP": "10.96.7.8"}}),
        )
        .await
        .expect_err("immutable");
    assert!(err.message.contains("field is immutable"), "{err}");
    // Deleting releases: the IP and the port can be claimed again.
    c.delete("svc", "default", "fixed", "").await?;
    c.delete("svc", "default", "np-fixed", "").await?;
    c.create(
        "svc",
        "",
        &svc(
            "fixed-again",
            json!({"clusterIP": "10.96.7.7", "ports": [{"port": 53}]}),
        ),
    )
    .await?;
    c.create(
        "svc",
        "",
        &svc(
            "np-again",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000}]}),
        ),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_pods_and_services() -> Result<()> {
    let (_cluster, c) = single().await?;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    c.create("svc", "", &svc).await?;
    // Pods as an agent would report them (bound elsewhere, with IPs and readiness).
    for (name, ip, ready) in [("w1", "10.244.1.2", true), ("w2", "10.244.1.3", false)] {
        let p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "web"}, "finalizers": ["test.ferry.dev/hold"]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox:1.36",
                     "ports": [{"name": "http", "containerPort": 8080}]}]}});
        let mut created = c.create("Pod", "default", &p).await?;
        created["status"] = json!({"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]});
        c.update_status("Pod", &created).await?;
    }
    let slice_where = |f: &'static (dyn Fn(&Value) -> bool + Sync)| {
        let c = c.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(s) = c.get("EndpointSlice", "default", "web-ferry").await
                    && f(&s)
                {
                    return Ok::<Value, anyhow::Error>(s);
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "EndpointSlice never matched"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let s = slice_where(&|s| s["endpoints"].as_array().is_some_and(|e| e.len() == 2)).await?;
    assert_eq!(s["ports"][0]["port"], 8080, "named targetPort resolved");
    assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    assert_eq!(
        s["endpoints"][0]["conditions"],
        json!({"ready": true, "serving": true, "terminating": false})
    );
    assert_eq!(s["endpoints"][1]["conditions"]["ready"], false);
    // A terminating pod stays serving but not ready; a removed pod leaves.
    c.delete("Pod", "default", "w1", "").await?;
    slice_where(&|s| {
        s["endpoints"][0]["conditions"]
            == json!({"ready": false, "serving": true, "terminating": true})
    })
    .await?;
    c.patch(
        "Pod",
        "default",
        "w1",
        &json!({"metadata": {"finalizers": null}}),
    )
    .await?;
    slice_where(&|s| {
        s["endpoints"]
            .as_array()
            .is_some_and(|e| e.len() == 1 && e[0]["targetRef"]["name"] == "w2")
    })
    .await?;
    // The Service goes, its slice goes.
    c.delete("svc", "default", "web", "").await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.get("EndpointSlice", "default", "web-ferry").await.is_ok() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "slice outlived its Service"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_services_get_addresses_from_the_pool() -> Result<()> {
    let cluster = Cluster::start(1, &["--loadbalancer-ip-pool", "192.0.2.0/29"]).await?;
    let c = cluster.client();
    let lb = |name: &str, extra: Value| {
        let mut spec =
            json!({"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
    };
    c.create("svc", "", &lb("a", json!({}))).await?;
    c.create("svc", "", &lb("b", json!({"loadBalancerIP": "192.0.2.6"})))
        .await?;
    let ip_of = |name: &'static str| {
        let c = c.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let s = c.get("svc", "default", name).await?;
                if let Some(ip) = s
                    .pointer("/status/loadBalancer/ingress/0/ip")
                    .and_then(Value::as_str)
                {
                    return Ok::<String, anyhow::Error>(ip.to_string());
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{name} never got an address"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(ip_of("a").await?, "192.0.2.1");
    assert_eq!(ip_of("b").await?, "192.0.2.6");
    // `ferry get svc` shows it as EXTERNAL-IP.
    let out = Command::new(ferry_bin())
        .args(["--config"])
        .arg(cluster.config_path())
        .args(["--server", &cluster.addrs(), "get", "svc", "a"])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.1"));
    Ok(())
}
