//! Node agents join with a token, register their Node, get a pod CIDR, keep a heartbeat Lease,
//! and may write only their own Node and Lease.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, TlsConfig};
use ferry_tests::{Cluster, ferry_bin};
use serde_json::{Value, json};
use tonic::Code;

struct Agent {
    child: Child,
    data_dir: Option<tempfile::TempDir>,
    name: String,
}

/// A pod bridge name unique to this run and node, so agents never share one.
fn bridge_for(name: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in format!("{}-{name}", std::process::id()).bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    format!("fb{:08x}", h)
}

impl Agent {
    fn dir(&self) -> &std::path::Path {
        self.data_dir.as_ref().expect("data dir").path()
    }

    /// Kills the agent (by its PID) and keeps its data directory.
    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.data_dir.take().expect("data dir")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the agent made on this machine (its bridge above all) goes with it.
        if let Some(dir) = &self.data_dir {
            let _ = Command::new(ferry_bin())
                .args([
                    "agent",
                    "--cleanup",
                    "--node-name",
                    &self.name,
                    "--pod-bridge",
                ])
                .arg(bridge_for(&self.name))
                .arg("--data-dir")
                .arg(dir.path())
                .output();
        }
    }
}

fn agent(
    cluster: &Cluster,
    name: &str,
    token: Option<&str>,
    data_dir: Option<tempfile::TempDir>,
) -> Result<Agent> {
    let data_dir = match data_dir {
        Some(d) => d,
        None => tempfile::tempdir()?,
    };
    let log = std::fs::File::create(data_dir.path().join("agent.log"))?;
    let mut cmd = Command::new(ferry_bin());
    cmd.args([
        "agent",
        "--server",
        &cluster.members[0].addr,
        "--node-name",
        name,
        "--pod-bridge",
        &bridge_for(name),
        "--port",
        "0",
        "--cgroup-root",
        &format!("/ferry/{name}"),
        "--data-dir",
    ])
    .arg(data_dir.path())
    .env("FERRY_LOG", "info")
    .env_remove("FERRY_TOKEN")
    .stdout(log.try_clone()?)
    .stderr(log)
    .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.arg("--token").arg(t);
    }
    Ok(Agent {
        child: cmd.spawn()?,
        data_dir: Some(data_dir),
        name: name.to_owned(),
    })
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_client(cluster: &Cluster, a: &Agent) -> Result<Client> {
    let read = |f: &str| std::fs::read_to_string(a.dir().join("pki").join(f));
    let tls = TlsConfig {
        ca_pem: read("ca.crt")?,
        cert_pem: read("node.crt")?,
        key_pem: read("node.key")?,
    };
    Ok(Client::new(&cluster.members[0].addr, &tls)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_get_pod_cidrs_heartbeat_and_stay_in_their_lane() -> Result<()> {
    let cluster = Cluster::start(1, &[]).await?;
    let admin = cluster.client();
    let token = admin.create_token(&["node".to_string()], 3600).await?.token;
    let a1 = agent(&cluster, "node-a", Some(&token), None)?;
    let a2 = agent(&cluster, "node-b", Some(&token), None)?;

    let ready = |name: &'static str| {
        let admin = admin.clone();
        async move || -> Option<Value> {
            let n = admin.get("Node", "", name).await.ok()?;
            let ready = n["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && n["spec"]["podCIDR"].is_string()).then_some(n)
        }
    };
    let n1 = wait_for(
        "node-a Ready with a pod CIDR",
        Duration::from_secs(20),
        ready("node-a"),
    )
    .await?;
    let n2 = wait_for(
        "node-b Ready with a pod CIDR",
        Duration::from_secs(20),
        ready("node-b"),
    )
    .await?;
    let cidrs = [
        n1["spec"]["podCIDR"].as_str().unwrap_or(""),
        n2["spec"]["podCIDR"].as_str().unwrap_or(""),
    ];
    assert_ne!(cidrs[0], cidrs[1], "each node gets its own range");
    for c in cidrs {
        assert!(c.starts_with("10.244.") && c.ends_with(".0/24"), "{c}");
    }
    assert!(
        n1["status"]["capacity"]["cpu"]
            .as_str()
            .is_some_and(|c| c.parse::<u32>().is_ok_and(|c| c >= 1))
    );
    assert!(
        n1["status"]["capacity"]["memory"]
            .as_str()
            .is_some_and(|m| m.ends_with("Ki"))
    );
    assert_eq!(n1["status"]["capacity"]["pods"], "110");
    assert!(
        n1["status"]["addresses"]
            .as_array()
            .context("addresses")?
            .iter()
            .any(|a| a["type"] == "InternalIP")
    );
    assert_eq!(n1["metadata"]["labels"]["kubernetes.io/hostname"], "node-a");

    // The heartbeat Lease is renewed.
    let renew = |admin: Client| async move {
        admin
            .get("Lease", "kube-node-lease", "node-a")
            .await
            .ok()
            .and_then(|l| l["spec"]["renewTime"].as_str().map(String::from))
    };
    let first = wait_for("node-a's lease", Duration::from_secs(15), async || {
        renew(admin.clone()).await
    })
    .await?;
    let later = wait_for("a lease renewal", Duration::from_secs(15), async || {
        renew(admin.clone()).await.filter(|t| *t != first)
    })
    .await?;
    assert!(later > first);

    // The node authorizer: node-a may write node-a, not node-b; no Secrets.
    let as_a = node_client(&cluster, &a1)?;
    as_a.patch(
        "Node",
        "",
        "node-a",
        &json!({"metadata": {"labels": {"zone": "z1"}}}),
    )
    .await?;
    let err = as_a
        .patch(
            "Node",
            "",
            "node-b",
            &json!({"metadata": {"labels": {"zone": "z1"}}}),
        )
        .await
        .expect_err("other node");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(err.message.contains("system:node:node-a"), "{err}");
    let err = as_a
        .patch(
            "Lease",
            "kube-node-lease",
            "node-b",
            &json!({"spec": {"holderIdentity": "x"}}),
        )
        .await
        .expect_err("lease");
    assert_eq!(err.code, Code::PermissionDenied);
    assert_eq!(
        as_a.get("Secret", "default", "x")
            .await
            .expect_err("secrets")
            .code,
        Code::PermissionDenied
    );
    assert_eq!(
        as_a.delete("Node", "", "node-a", "")
            .await
            .expect_err("delete")
            .code,
        Code::PermissionDenied
    );
    // It may write the status of pods bound to it, not others'.
    let pod = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36"}]}})
    };
    admin
        .create("Pod", "default", &pod("mine", "node-a"))
        .await?;
    admin
        .create("Pod", "default", &pod("theirs", "node-b"))
        .await?;
    let mut mine = as_a.get("Pod", "default", "mine").await?;
    mine["status"] = json!({"phase": "Running"});
    assert_eq!(
        as_a.update_status("Pod", &mine).await?["status"]["phase"],
        "Running"
    );
    let mut theirs = as_a.get("Pod", "default", "theirs").await?;
    theirs["status"] = json!({"phase": "Failed"});
    let err = as_a
        .update_status("Pod", &theirs)
        .await
        .expect_err("another node's pod");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");

    // The node graph: a node may read the Secrets its pods reference, and no others.
    for name in ["for-a", "for-b"] {
        admin
            .create(
                "Secret",
                "default",
                &json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name}, "stringData": {"k": "v"}}),
            )
            .await?;
    }
    let with_secret = |pod_name: &str, node: &str, secret: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod_name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox:1.36",
            "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}]}})
    };
    admin
        .create("Pod", "default", &with_secret("uses-a", "node-a", "for-a"))
        .await?;
    admin
        .create("Pod", "default", &with_secret("uses-b", "node-b", "for-b"))
        .await?;
    assert_eq!(
        as_a.get("Secret", "default", "for-a").await?["data"]["k"],
        "dg=="
    );
    let err = as_a
        .get("Secret", "default", "for-b")
        .await
        .expect_err("another node's secret");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(
        err.message.contains("referenced by pods bound to it"),
        "{err}"
    );
    assert_eq!(
        as_a.list("Secret", &ferry_api::client::ListOptions::default())
            .await
            .expect_err("list")
            .code,
        Code::PermissionDenied
    );

    // Local volumes pinned to a node: it may add or remove the cleanup finalizer, nothing else,
    // and not on another node's volumes.
    let volume = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "local": {"path": format!("/var/lib/ferry/local-volumes/{name}")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
    };
    admin
        .create("PersistentVolume", "", &volume("pv-a", "node-a"))
        .await?;
    admin
        .create("PersistentVolume", "", &volume("pv-b", "node-b"))
        .await?;
    // Unconditional updates (no resourceVersion): the volume binding controller may write the
    // volumes' status at any time.
    let unconditional = |mut v: Value| {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        v
    };
    // Every volume carries pv-protection, which a node may not touch.
    let both = json!([
        ferry_api::volumes::PV_PROTECTION,
        ferry_api::volumes::LOCAL_VOLUME_CLEANUP
    ]);
    let mut pv = unconditional(as_a.get("PersistentVolume", "", "pv-a").await?);
    assert_eq!(
        pv["metadata"]["finalizers"],
        json!([ferry_api::volumes::PV_PROTECTION])
    );
    let mut stripped = pv.clone();
    stripped["metadata"]["finalizers"] = json!([ferry_api::volumes::LOCAL_VOLUME_CLEANUP]);
    let err = as_a
        .update("PersistentVolume", &stripped)
        .await
        .expect_err("removing pv-protection");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    pv["metadata"]["finalizers"] = both.clone();
    let marked = as_a.update("PersistentVolume", &pv).await?;
    assert_eq!(marked["metadata"]["finalizers"], both);
    let mut grown = unconditional(marked.clone());
    grown["spec"]["capacity"]["storage"] = json!("100Gi");
    let err = as_a
        .update("PersistentVolume", &grown)
        .await
        .expect_err("a spec change");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(err.message.contains("may only add or remove"), "{err}");
    let err = as_a
        .get("PersistentVolume", "", "pv-b")
        .await
        .expect_err("another node's volume");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    let mut theirs = unconditional(admin.get("PersistentVolume", "", "pv-b").await?);
    theirs["metadata"]["finalizers"] = both;
    let err = as_a
        .update("PersistentVolume", &theirs)
        .await
        .expect_err("another node's volume");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");

    // A restarted agent reuses its credentials (no token) and keeps its Node and range.
    drop(a2);
    let a1_dir = a1.kill();
    let restarted = agent(&cluster, "node-a", None, Some(a1_dir))?;
    let before = first;
    wait_for(
        "the restarted agent's renewal",
        Duration::from_secs(15),
        async || {
            renew(admin.clone())
                .await
                .filter(|t| *t > before && *t > later)
        },
    )
    .await?;
    let n1b = admin.get("Node", "", "node-a").await?;
    assert_eq!(n1b["spec"]["podCIDR"], n1["spec"]["podCIDR"]);
    drop(restarted);

    // Without credentials or token the agent says what to do.
    let out = Command::new(ferry_bin())
        .args([
            "agent",
            "--server",
            &cluster.members[0].addr,
            "--node-name",
            "node-c",
            "--data-dir",
        ])
        .arg(tempfile::tempdir()?.path())
        .env_remove("FERRY_TOKEN")
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_marked_unreachable_and_recovers() -> Result<()> {
    let cluster = Cluster::start(1, &["--node-monitor-grace-seconds", "3"]).await?;
    let admin = cluster.client();
    let token = admin.create_token(&["node".to_string()], 0).await?.token;
    let a = agent(&cluster, "node-z", Some(&token), None)?;
    let state = |admin: Client| async move {
        let n = admin.get("Node", "", "node-z").await.ok()?;
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?["status"]
            .as_str()?
            .to_string();
        let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
        });
        Some((ready, tainted))
    };
    wait_for("node-z Ready", Duration::from_secs(20), async || {
        state(admin.clone())
            .await
            .filter(|(r, t)| r == "True" && !t)
    })
    .await?;
    let dir = a.kill();
    let killed = Instant::now();
    wait_for("node-z unreachable", Duration::from_secs(20), async || {
        state(admin.clone())
            .await
            .filter(|(r, t)| r == "Unknown" && *t)
    })
    .await?;
    println!(
        "node marked unreachable {:?} after its agent died",
        killed.elapsed()
    );
    let _back = agent(&cluster, "node-z", None, Some(dir))?;
    wait_for("node-z back", Duration::from_secs(20), async || {
        state(admin.clone())
            .await
            .filter(|(r, t)| r == "True" && !t)
    })
    .await?;
    Ok(())
}
