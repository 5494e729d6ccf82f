//! Every link is authenticated: clients without a certificate, with a certificate from another
//! CA, or with the wrong role are refused; joining needs a valid token for this cluster's CA.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_api::client::{Client, ListOptions, TlsConfig};
use ferry_api::proto::raft_internal_client::RaftInternalClient;
use ferry_api::proto::resources_client::ResourcesClient;
use ferry_api::proto::{ListRequest, RaftPayload};
use ferry_control::pki::{self, Pki, Subject};
use ferry_tests::{Cluster, ferry_bin, free_port};
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

async fn channel(addr: &str, tls: ClientTlsConfig) -> Result<tonic::transport::Channel> {
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_foreign_and_wrong_role_clients_are_refused() -> Result<()> {
    let cluster = Cluster::start(1, &[]).await?;
    let cfg = cluster.config.clone().context("credentials")?;
    let addr = cluster.members[0].addr.clone();
    let list = ListRequest {
        kind: "cm".into(),
        ..Default::default()
    };

    // TLS but no client certificate: the API refuses.
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cfg.certificate_authority_data))
        .domain_name(pki::SERVER_NAME);
    let err = ResourcesClient::new(channel(&addr, no_cert).await?)
        .list(list.clone())
        .await
        .expect_err("no cert");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        err.message().contains("client certificate required"),
        "{err}"
    );

    // Plain text: the handshake never completes.
    let plain =
        Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(3));
    let refused = match plain.connect().await {
        Ok(ch) => ResourcesClient::new(ch).list(list.clone()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a plaintext client must not be served");

    // A certificate from another CA (trusting our CA for the server): the handshake fails.
    let dir = tempfile::tempdir()?;
    let foreign = Pki::create(dir.path())?;
    let mallory = foreign.issue(&Subject {
        common_name: pki::ADMIN_USER.into(),
        organizations: vec![pki::GROUP_MASTERS.into()],
        serve_hosts: vec![],
    })?;
    let foreign_tls = TlsConfig {
        ca_pem: cfg.certificate_authority_data.clone(),
        cert_pem: mallory.cert_pem.clone(),
        key_pem: mallory.key_pem.clone(),
    };
    let err = Client::new(&addr, &foreign_tls)?
        .list("cm", &ListOptions::default())
        .await
        .expect_err("foreign CA");
    assert!(
        // TLS 1.3 rejects the client certificate after the client thinks the handshake is done,
        // so the refusal surfaces as a transport failure or a cancelled stream.
        matches!(
            err.code,
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
        ),
        "{err:?}"
    );
    // And a client that trusts another CA does not accept our server.
    let wrong_trust = TlsConfig {
        ca_pem: foreign.ca_pem().to_string(),
        ..cfg.tls()
    };
    assert!(
        Client::new(&addr, &wrong_trust)?
            .list("cm", &ListOptions::default())
            .await
            .is_err()
    );

    // The admin may use the API but may not speak raft.
    let admin = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&cfg.certificate_authority_data))
        .identity(Identity::from_pem(
            &cfg.client_certificate_data,
            &cfg.client_key_data,
        ))
        .domain_name(pki::SERVER_NAME);
    let err = RaftInternalClient::new(channel(&addr, admin).await?)
        .append_entries(RaftPayload {
            data: b"{}".to_vec(),
        })
        .await
        .expect_err("admin is not a member");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // The cluster is unharmed.
    assert!(
        cluster
            .client()
            .list("cm", &ListOptions::default())
            .await
            .is_ok()
    );
    Ok(())
}

fn join_with(cluster: &Cluster, token: &str) -> Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(ferry_bin())
        .args(["server", "--admin-config", "-", "--data-dir"])
        .arg(dir.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--join")
        .arg(&cluster.members[0].addr)
        .arg("--token")
        .arg(token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            return Ok((status.success(), err));
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("a join with a bad token should fail fast");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_needs_a_valid_token_for_this_cluster() -> Result<()> {
    let cluster = Cluster::start(1, &[]).await?;
    let good = pki::JoinToken::parse(&cluster.token)?;

    let wrong_secret = pki::JoinToken {
        secret: "x".repeat(32),
        ..good.clone()
    };
    let (ok, err) = join_with(&cluster, &wrong_secret.to_string())?;
    assert!(!ok);
    assert!(err.contains("join token not valid"), "{err}");

    let wrong_ca = pki::JoinToken {
        ca_hash: "0".repeat(64),
        ..good.clone()
    };
    let (ok, err) = join_with(&cluster, &wrong_ca.to_string())?;
    assert!(!ok);
    assert!(
        err.contains("did not present a CA matching the token"),
        "{err}"
    );

    let (ok, err) = join_with(&cluster, "not-a-token")?;
    assert!(!ok);
    assert!(err.contains("invalid join token"), "{err}");

    assert_eq!(
        cluster.client().members().await?.members.len(),
        1,
        "no bad join added a member"
    );
    Ok(())
}

fn ferry(config: &std::path::Path, args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(ferry_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    ))
}

async fn until_allowed(config: &std::path::Path, args: &[&str]) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, _) = ferry(config, args)?;
        if ok && out.trim() == "yes" {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "`ferry {}` never said yes",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_allows_and_denies_what_bindings_say() -> Result<()> {
    use serde_json::json;
    let cluster = Cluster::start(1, &[]).await?;
    let admin = cluster.client();
    let dir = tempfile::tempdir()?;
    // A user certificate from the cluster CA, as an operator would make it on a member.
    let out = Command::new(ferry_bin())
        .args([
            "user-config",
            "--user",
            "alice",
            "--group",
            "dev-team",
            "--data-dir",
        ])
        .arg(&cluster.members[0].data_dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "user-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice_cfg = dir.path().join("alice.yaml");
    std::fs::write(&alice_cfg, &out.stdout)?;
    let alice = Client::from_config(&ferry_api::client::ClientConfig::load(&alice_cfg)?)?;

    let (_, who, _) = ferry(&cluster.config_path(), &["auth", "whoami"])?;
    assert!(
        who.contains("ferry-admin") && who.contains("system:masters"),
        "{who}"
    );
    let (_, who, _) = ferry(&alice_cfg, &["auth", "whoami"])?;
    assert!(who.contains("alice") && who.contains("dev-team"), "{who}");

    // No bindings: everything is refused, with Kubernetes' wording.
    let ns_default = in_namespace("default");
    let err = alice
        .list("cm", &ns_default)
        .await
        .expect_err("no binding yet");
    assert_eq!(err.code, Code::PermissionDenied);
    assert_eq!(
        err.message,
        "configmaps is forbidden: User \"alice\" cannot list resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    let (ok, out, _) = ferry(&alice_cfg, &["auth", "can-i", "list", "configmaps"])?;
    assert!(!ok && out.trim() == "no");

    // A Role and RoleBinding in default: get/list/create ConfigMaps.
    admin
        .create("Role", "default", &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "cm-writer"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}]
        }))
        .await?;
    admin
        .create("RoleBinding", "default", &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-cm"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-writer"},
            "subjects": [{"kind": "User", "name": "alice"}]
        }))
        .await?;
    until_allowed(&alice_cfg, &["auth", "can-i", "create", "cm"]).await?;
    alice
        .create("cm", "default", &ferry_tests::configmap("mine", "1"))
        .await?;
    assert!(alice.list("cm", &ns_default).await.is_ok());
    let err = alice
        .delete("cm", "default", "mine", "")
        .await
        .expect_err("no delete verb");
    assert_eq!(err.code, Code::PermissionDenied);
    assert!(
        alice
            .list("cm", &in_namespace("ferry-system"))
            .await
            .is_err()
    );
    assert!(
        alice.list("cm", &ListOptions::default()).await.is_err(),
        "not across namespaces"
    );
    assert!(
        alice
            .get("secrets", "default", "x")
            .await
            .expect_err("secrets")
            .code
            == Code::PermissionDenied
    );

    // A ClusterRoleBinding of the default `view` ClusterRole to her group: read workloads anywhere.
    let (ok, _, _) = ferry(&alice_cfg, &["auth", "can-i", "list", "deployments", "-A"])?;
    assert!(!ok);
    admin
        .create("ClusterRoleBinding", "", &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "dev-team-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": "dev-team"}]
        }))
        .await?;
    until_allowed(&alice_cfg, &["auth", "can-i", "list", "deployments", "-A"]).await?;
    assert!(alice.list("deploy", &ListOptions::default()).await.is_ok());
    assert!(
        alice
            .list("secrets", &ListOptions::default())
            .await
            .is_err(),
        "view excludes secrets"
    );

    // Removing the binding takes the right away again.
    admin
        .delete("RoleBinding", "default", "alice-cm", "")
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alice
        .create("cm", "default", &ferry_tests::configmap("again", "1"))
        .await
        .is_ok()
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "revoked binding still grants"
        );
        admin.delete("cm", "default", "again", "").await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Membership is for administrators only.
    let err = alice.remove_member(1).await.expect_err("not an admin");
    assert_eq!(err.code, Code::PermissionDenied);
    Ok(())
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_plaintext_never_reaches_the_disk() -> Result<()> {
    use base64::Engine;
    use serde_json::json;
    let mut cluster = Cluster::start(3, &["--snapshot-every", "20"]).await?;
    let c = cluster.client();
    let plaintext = "correct-horse-battery-staple-4711";
    let b64 = base64::engine::general_purpose::STANDARD.encode(plaintext);
    let secret = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
               "stringData": {"password": plaintext}, "data": {"also": b64}})
    };
    let opts = ListOptions {
        namespace: Some("default".into()),
        ..Default::default()
    };
    let rv = c.list("secrets", &opts).await?["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();
    let mut watch = c.watch("secrets", &opts, &rv, false).await?;
    c.create("secrets", "default", &secret("db")).await?;
    // Enough other writes for every member to take a snapshot.
    for i in 0..60 {
        c.create(
            "cm",
            "default",
            &ferry_tests::configmap(&format!("fill-{i}"), "x"),
        )
        .await?;
    }
    c.create("secrets", "default", &secret("db2")).await?;
    // The API hands the plaintext back, as Kubernetes does (base64 in `data`)...
    let got = c.get("secrets", "default", "db").await?;
    assert_eq!(got["data"]["password"], b64);
    // ...and so does a watch.
    let ev = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut watch),
    )
    .await?
    .context("watch ended")??;
    assert_eq!(ev.object["data"]["password"], b64);
    // Let every member apply and snapshot, then stop them so everything is on disk.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in &mut cluster.members {
        m.stop();
    }
    assert!(
        std::path::Path::new(&cluster.members[1].data_dir)
            .join("snapshot.json")
            .exists(),
        "a follower took a snapshot, so snapshots are covered too"
    );
    for needle in [plaintext.as_bytes(), b64.as_bytes()] {
        let hits = files_containing(cluster.dir(), needle);
        assert!(hits.is_empty(), "secret found in {hits:?}");
    }
    for i in 0..3 {
        cluster.restart(i)?;
    }
    cluster.wait_voters(3, Duration::from_secs(30)).await?;
    // Rotation re-encrypts every Secret, which stays readable.
    let (ok, out, err) = ferry(
        &cluster.config_path(),
        &["--server", &cluster.addrs(), "secrets", "rotate-key"],
    )?;
    assert!(ok, "{err}");
    assert!(
        out.contains("new encryption key k2; 2 secret(s) re-encrypted"),
        "{out}"
    );
    assert_eq!(
        c.get("secrets", "default", "db2").await?["data"]["password"],
        b64
    );
    for m in &mut cluster.members {
        m.stop();
    }
    assert!(files_containing(cluster.dir(), plaintext.as_bytes()).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_wrong_usage_tokens_are_refused() -> Result<()> {
    let cluster = Cluster::start(1, &[]).await?;
    let cfg = cluster.config_path();
    let (ok, token, err) = ferry(
        &cfg,
        &["token", "create", "--usage", "member", "--ttl", "1h"],
    )?;
    assert!(ok, "{err}");
    let token = token.trim().to_string();
    let id = pki::JoinToken::parse(&token)?.id;
    let (_, list, _) = ferry(&cfg, &["token", "list"])?;
    assert!(list.contains(&id) && list.contains("member"), "{list}");
    assert!(
        !list.contains(&pki::JoinToken::parse(&token)?.secret),
        "list never shows secrets"
    );
    let (ok, _, _) = ferry(&cfg, &["token", "revoke", &id])?;
    assert!(ok);
    let (ok, err) = join_with(&cluster, &token)?;
    assert!(!ok);
    assert!(
        err.contains("join token not valid"),
        "a revoked token is refused: {err}"
    );

    let (_, node_only, _) = ferry(&cfg, &["token", "create", "--usage", "node"])?;
    let (ok, err) = join_with(&cluster, node_only.trim())?;
    assert!(!ok);
    assert!(err.contains("cannot be used to join as a member"), "{err}");

    let (_, short, _) = ferry(&cfg, &["token", "create", "--ttl", "1s"])?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, err) = join_with(&cluster, short.trim())?;
    assert!(!ok);
    assert!(err.contains("expired"), "{err}");

    let (ok, _, err) = ferry(&cfg, &["token", "revoke", "nosuch"])?;
    assert!(!ok && err.contains("not found"), "{err}");
    assert_eq!(cluster.client().members().await?.members.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_the_audit_log() -> Result<()> {
    use serde_json::json;
    let cluster = Cluster::start(1, &["--rate-limit-qps", "2", "--rate-limit-burst", "3"]).await?;
    let admin = cluster.client();
    let out = Command::new(ferry_bin())
        .args(["user-config", "--user", "carol", "--data-dir"])
        .arg(&cluster.members[0].data_dir)
        .output()?;
    let dir = tempfile::tempdir()?;
    let carol_cfg = dir.path().join("carol.yaml");
    std::fs::write(&carol_cfg, &out.stdout)?;
    let carol = Client::from_config(&ferry_api::client::ClientConfig::load(&carol_cfg)?)?;
    // A user past its burst is refused with a clear message; administrators are exempt.
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) = carol.list("cm", &ListOptions::default()).await
            && e.code == Code::ResourceExhausted
        {
            limited = Some(e);
            break;
        }
    }
    let err = limited.context("carol was never rate limited")?;
    assert!(
        err.message
            .contains("rate limit exceeded for user \"carol\""),
        "{err}"
    );
    for i in 0..20 {
        admin
            .create(
                "cm",
                "default",
                &ferry_tests::configmap(&format!("a{i}"), "x"),
            )
            .await?;
    }
    // Mutating requests are audited (who, what, result), bodies never.
    admin
        .create(
            "secrets",
            "default",
            &json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "audited"}, "stringData": {"k": "very-secret-value-99"}}),
        )
        .await?;
    admin.delete("cm", "default", "a0", "").await?;
    let _ = admin
        .create("cm", "default", &ferry_tests::configmap("a1", "dup"))
        .await;
    let log = std::fs::read_to_string(cluster.members[0].data_dir.join("audit.log"))?;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let find = |verb: &str, name: &str, code: &str| {
        lines.iter().any(|l| {
            l["verb"] == verb
                && l["name"] == name
                && l["code"] == code
                && l["user"] == "ferry-admin"
        })
    };
    assert!(find("create", "audited", "OK"), "{log}");
    assert!(find("delete", "a0", "OK"), "{log}");
    assert!(find("create", "a1", "AlreadyExists"), "{log}");
    assert!(
        lines
            .iter()
            .all(|l| l["time"].is_string() && l["resource"].is_string())
    );
    assert!(
        !log.contains("very-secret-value-99"),
        "bodies are never audited"
    );
    assert!(
        !lines.iter().any(|l| l["verb"] == "list"),
        "reads are not audited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_authenticate_users_without_certificates() -> Result<()> {
    use serde_json::json;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens.csv");
    std::fs::write(
        &file,
        "# static tokens\ndave-s3cret-token-0001,dave,1001,\"ops,oncall\"\n",
    )?;
    let file_arg = file.display().to_string();
    let cluster = Cluster::start(1, &["--token-auth-file", &file_arg]).await?;
    let cfg = cluster.config.clone().context("credentials")?;
    let addr = cluster.members[0].addr.clone();
    let dave = cluster.bearer_client("dave-s3cret-token-0001")?;
    let who = dave
        .access_review("list", "deployments", "default", "", "")
        .await?;
    assert_eq!(who.user, "dave");
    assert_eq!(who.groups, vec!["ops".to_string(), "oncall".to_string()]);
    assert!(!who.allowed);
    cluster
        .client()
        .create("ClusterRoleBinding", "", &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "ops-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": "ops"}]
        }))
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dave.list("deploy", &ListOptions::default()).await.is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the binding never took effect for dave"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = cluster
        .bearer_client("wrong")?
        .list("cm", &ListOptions::default())
        .await
        .expect_err("bad token");
    assert_eq!(err.code, Code::Unauthenticated);
    assert_eq!(err.message, "invalid bearer token");
    // The same works from a client config with `token:` instead of a certificate.
    let yaml = format!(
        "server: {addr}\ncertificate-authority-data: |\n{}token: dave-s3cret-token-0001\n",
        cfg.certificate_authority_data
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let dave_cfg = dir.path().join("dave.yaml");
    std::fs::write(&dave_cfg, yaml)?;
    let (ok, out, err) = ferry(&dave_cfg, &["auth", "whoami"])?;
    assert!(ok && out.contains("dave"), "{out}{err}");
    Ok(())
}

/// Listing options for one namespace.
fn in_namespace(ns: &str) -> ListOptions {
    ListOptions {
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

/// ServiceAccount `apps/robot`.
async fn create_robot(admin: &Client) -> Result<()> {
    admin
        .create(
            "ServiceAccount",
            "apps",
            &serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}}),
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_authenticate_until_their_account_goes() -> Result<()> {
    use serde_json::json;
    let cluster = Cluster::start(1, &[]).await?;
    let admin = cluster.client();
    // Every namespace gets a `default` account.
    admin
        .create(
            "Namespace",
            "",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        )
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin
        .get("ServiceAccount", "apps", "default")
        .await
        .is_err()
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no default ServiceAccount in apps"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_robot(&admin).await?;
    // `ferry create token` as the administrator.
    let out = cluster
        .ferry_ok(&["create", "token", "robot", "-n", "apps"])
        .await?;
    let token = out.trim().to_string();
    let robot = cluster.bearer_client(&token)?;
    let who = robot
        .access_review("list", "configmaps", "apps", "", "")
        .await?;
    assert_eq!(who.user, "system:serviceaccount:apps:robot");
    assert!(
        who.groups
            .iter()
            .any(|g| g == "system:serviceaccounts:apps"),
        "{:?}",
        who.groups
    );
    assert!(!who.allowed, "a new account may do nothing");
    // RBAC names it as a ServiceAccount subject.
    admin
        .create("RoleBinding", "apps", &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "robot-view"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "apps"}]
        }))
        .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while robot.list("cm", &in_namespace("apps")).await.is_err() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the binding never took effect for the robot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = robot
        .list("secrets", &ListOptions::default())
        .await
        .expect_err("view does not read secrets");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    // The account itself may not mint tokens, and nobody gets one shorter than 10 minutes.
    let err = robot
        .create_service_account_token("apps", "robot", &[], 0, "")
        .await
        .expect_err("no create serviceaccounts/token");
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    let err = admin
        .create_service_account_token("apps", "robot", &[], 60, "")
        .await
        .expect_err("too short");
    assert!(err.message.contains("less than 600 seconds"), "{err}");
    // A token for another audience is not one for the API; a tampered one is nothing.
    let other = admin
        .create_service_account_token("apps", "robot", &["vault".into()], 0, "")
        .await?;
    let err = cluster
        .bearer_client(&other.token)?
        .list("cm", &ListOptions::default())
        .await
        .expect_err("wrong audience");
    assert_eq!(err.code, Code::Unauthenticated, "{err}");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let err = cluster
        .bearer_client(&forged)?
        .list("cm", &ListOptions::default())
        .await
        .expect_err("forged");
    assert_eq!(err.code, Code::Unauthenticated, "{err}");
    // Deleting the account kills its tokens at once; a new account of the same name (another
    // uid) does not revive them.
    admin.delete("ServiceAccount", "apps", "robot", "").await?;
    create_robot(&admin).await?;
    let err = robot
        .list("cm", &ListOptions::default())
        .await
        .expect_err("account gone");
    assert_eq!(err.code, Code::Unauthenticated, "{err}");
    assert!(err.message.contains("no longer exists"), "{err}");
    Ok(())
}
