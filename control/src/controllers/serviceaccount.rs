//! ServiceAccounts: every namespace that is not terminating has a ServiceAccount named
//! `default`, as Kubernetes' serviceaccounts controller makes sure (pods without
//! `serviceAccountName` run as it). One deleted by hand comes back. [`missing`] is pure.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_api::client::Api;
use serde_json::{Value, json};

use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

/// The account every namespace gets.
pub const DEFAULT: &str = "default";

/// The namespaces (active, not being deleted) without a `default` ServiceAccount.
pub fn missing<'a>(namespaces: &'a [&'a Value], accounts: &[&Value]) -> Vec<&'a str> {
    let have: BTreeSet<&str> = accounts
        .iter()
        .filter(|a| s(a, "/metadata/name") == DEFAULT)
        .map(|a| s(a, "/metadata/namespace"))
        .collect();
    namespaces
        .iter()
        .filter(|n| {
            s(n, "/metadata/deletionTimestamp").is_empty() && s(n, "/status/phase") != "Terminating"
        })
        .map(|n| s(n, "/metadata/name"))
        .filter(|n| !have.contains(n))
        .collect()
}

pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
) -> Result<usize, ferry_api::client::ClientError> {
    let namespaces = api.snapshot("Namespace").await?;
    let accounts = api.snapshot("ServiceAccount").await?;
    let namespaces: Vec<&Value> = namespaces.iter().map(|n| &**n).collect();
    let accounts: Vec<&Value> = accounts.iter().map(|a| &**a).collect();
    let mut acted = 0;
    for ns in missing(&namespaces, &accounts) {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": DEFAULT, "namespace": ns}});
        match api.create("ServiceAccount", ns, &sa).await {
            Ok(_) => acted += 1,
            // Created meanwhile, or the namespace began terminating.
            Err(e) if e.is_already_exists() || e.code == tonic::Code::PermissionDenied => {}
            Err(e) => return Err(e),
        }
    }
    Ok(acted)
}

/// Runs passes on the leader whenever the store changes (at most every 300 ms).
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(30),
        throttle: Duration::from_millis(300),
    };
    super::run_passes("serviceaccount", node, pace, || reconcile_all(&api)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_live_namespace_gets_a_default_account() {
        let ns = |name: &str, phase: &str| json!({"metadata": {"name": name}, "status": {"phase": phase}});
        let (a, b, gone) = (
            ns("a", "Active"),
            ns("b", "Active"),
            ns("going", "Terminating"),
        );
        let sa = |ns: &str, name: &str| json!({"metadata": {"name": name, "namespace": ns}});
        let (in_a, robot_b) = (sa("a", "default"), sa("b", "robot"));
        assert_eq!(
            missing(&[&a, &b, &gone], &[&in_a, &robot_b]),
            vec!["b"],
            "a has one; b only has another account; a terminating namespace gets none"
        );
    }
}
