//! Simulated nodes for controller tests: Node objects without agents (the test plays the
//! agent where it must), and a polling helper.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::Client;
use serde_json::{Value, json};

/// Creates Node `name` with `labels` (plus `kubernetes.io/hostname`) and 8 CPUs, 16 Gi and 110
/// pods allocatable.
pub async fn add_node(c: &Client, name: &str, labels: Value) -> Result<()> {
    let mut l = if labels.is_object() {
        labels
    } else {
        json!({})
    };
    l["kubernetes.io/hostname"] = json!(name);
    let mut n = c
        .create(
            "Node",
            "",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": l}}),
        )
        .await?;
    n["status"] = json!({"capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                         "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}});
    // Without a resourceVersion: node IPAM may have written the Node since (its pod CIDR).
    if let Some(m) = n["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    c.update_status("Node", &n).await?;
    Ok(())
}

/// Polls `f` every 50 ms until it says yes, for at most `secs` seconds.
pub async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
