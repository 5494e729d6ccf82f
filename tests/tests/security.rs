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
        matches!(err.code, Code::Unavailable | Code::Unknown | Code::Internal),
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
