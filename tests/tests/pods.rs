//! Root-only: pods on a real agent, under real runc, in real network namespaces.
//!
//! One cluster and one agent (on this machine's network namespace, with its own bridge), a
//! busybox image built here and imported with `ferry image import`, then: a web pod with env
//! from a ConfigMap, a Secret and the downward API, a ConfigMap volume it serves over HTTP and
//! that updates in place, a readiness probe gating Ready; a liveness probe restarting a
//! container; an OOM kill reported as OOMKilled; a pod that succeeds; init containers in order
//! sharing an emptyDir; kill -9 of the agent leaving the pods running and re-adopted; a preStop
//! hook running before SIGTERM; graceful deletion that removes the pod's namespace and
//! directory. Separately: the ServiceAccount token every pod finds at Kubernetes' path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ferry_api::client::Client;
use ferry_tests::{Cluster, agent::TestAgent, image};
use serde_json::{Value, json};

const IMAGE: &str = "localhost/ferry-test/busybox:1";

fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root");
    }
    if image::busybox().is_none() {
        return Some("busybox-static not installed (bash .ci/setup installs it)");
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"];
    if !runc.iter().any(|p| std::path::Path::new(p).exists()) {
        return Some("runc not installed (bash .ci/setup installs it)");
    }
    None
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    agent: &TestAgent,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {what}; agent log:\n{}",
                agent.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

fn pod(agent: &TestAgent, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["nodeName"] = json!(agent.node_name);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

async fn get_pod(c: &Client, name: &str) -> Option<Value> {
    c.get("Pod", "default", name).await.ok()
}

/// The messages of the Events with `reason` about pod `name`.
async fn event_messages(c: &Client, name: &str, reason: &str) -> Vec<String> {
    let Ok(events) = c
        .list("Event", &ferry_api::client::ListOptions::default())
        .await
    else {
        return Vec::new();
    };
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason && e["involvedObject"]["name"] == name)
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

fn cond(p: &Value, kind: &str) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_under_runc_with_probes_volumes_and_adoption() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP pods: {why}");
        return Ok(());
    }
    let cidr = format!("10.{}.0.0/16", 150 + std::process::id() % 50);
    let cluster = Cluster::start(1, &["--cluster-cidr", &cidr]).await?;
    let c = cluster.client();
    let mut agent = TestAgent::start(&cluster, "pods")?;
    let archive = agent.dir().join("busybox.tar");
    // With ferry-netcheck, whose `probe-targets` serves HTTPS and gRPC health for the probes.
    let netcheck = image::host_binary_files(
        std::path::Path::new(env!("CARGO_BIN_EXE_ferry-netcheck")),
        "bin/ferry-netcheck",
    )?;
    image::write_busybox_archive_with(&archive, IMAGE, &netcheck)?;
    agent.import_image(&archive)?;

    c.create(
        "ConfigMap",
        "default",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "web-content"}, "data": {"index.html": "v1"}}),
    )
    .await?;
    c.create(
        "ConfigMap",
        "default",
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"greeting": "hello"}}),
    )
    .await?;
    c.create(
        "Secret",
        "default",
        &json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}),
    )
    .await?;

    // A web server: env from everywhere, content from a ConfigMap volume, readiness by HTTP.
    let web = pod(
        &agent,
        "web",
        json!({
            "terminationGracePeriodSeconds": 3,
            "containers": [{
                "name": "web", "image": IMAGE,
                "command": ["sh", "-c", "echo GREETING=$GREETING POD_IP=$POD_IP PASSWORD=$PASSWORD IMAGE_VAR=$IMAGE_VAR NODE=$NODE; exec httpd -f -p 8080 -h /www"],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                ],
                "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1},
                "volumeMounts": [{"name": "content", "mountPath": "/www"}],
            }],
            "volumes": [{"name": "content", "configMap": {"name": "web-content"}}],
        }),
    );
    c.create("Pod", "default", &web).await?;
    let ready = wait_for(
        "the web pod to be Ready",
        Duration::from_secs(60),
        &agent,
        async || get_pod(&c, "web").await.filter(|p| cond(p, "Ready")),
    )
    .await?;
    assert_eq!(ready["status"]["phase"], "Running");
    let ip = ready["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        ip.starts_with(&cidr[..cidr.find(".0.0").unwrap_or(0)]),
        "pod IP {ip} from {cidr}"
    );
    let uid = ready["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let container_id = ready["status"]["containerStatuses"][0]["containerID"].clone();
    assert_eq!(http_get(&ip, 8080, "/index.html").as_deref(), Some("v1"));
    let log = std::fs::read_to_string(agent.container_log(&uid, "web", 0))?;
    for want in [
        "GREETING=hello",
        &format!("POD_IP={ip}"),
        "PASSWORD=s3cret",
        "IMAGE_VAR=from-image",
        &format!("NODE={}", agent.node_name),
    ] {
        assert!(
            log.contains(want),
            "{want:?} missing from the container's output: {log}"
        );
    }

    // Logs and exec through the API server, which relays to the node's agent.
    let out = TestAgent::cli(&cluster, &["logs", "web"])?;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("GREETING=hello"),
        "ferry logs: {out:?}"
    );
    let out = TestAgent::cli(&cluster, &["exec", "web", "--", "cat", "/www/index.html"])?;
    assert!(out.status.success(), "ferry exec: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1");
    let out = TestAgent::cli(
        &cluster,
        &["exec", "web", "--", "sh", "-c", "echo $HOSTNAME; exit 3"],
    )?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "the command's exit code: {out:?}"
    );
    let out = TestAgent::cli(&cluster, &["logs", "web", "-c", "nope"])?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("container nope is not valid for pod web"),
        "{out:?}"
    );
    // Only control-plane members may call the agent itself, even with a cluster certificate.
    let node = c.get("Node", "", &agent.node_name).await?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .unwrap_or(0);
    let admin = ferry_api::client::ClientConfig::load(&cluster.config_path())?.tls();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&admin.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &admin.cert_pem,
            &admin.key_pem,
        ))
        .domain_name(agent.node_name.clone());
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let refused = ferry_api::proto::agent_client::AgentClient::new(channel)
        .exec(ferry_api::proto::PodExecRequest {
            uid: uid.clone(),
            container: "web".into(),
            command: vec!["true".into()],
            ..Default::default()
        })
        .await
        .expect_err("an administrator's certificate is not a member's");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // The ConfigMap changes; the mounted file follows without a restart.
    let mut cm = c.get("ConfigMap", "default", "web-content").await?;
    cm["data"]["index.html"] = json!("v2");
    c.update("ConfigMap", &cm).await?;
    wait_for(
        "the volume to update",
        Duration::from_secs(30),
        &agent,
        async || (http_get(&ip, 8080, "/index.html").as_deref() == Some("v2")).then_some(()),
    )
    .await?;

    // Liveness: the probe fails after two seconds; the container is restarted.
    c.create("Pod", "default", &pod(&agent, "flaky", json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "c", "image": IMAGE,
            "command": ["sh", "-c", "touch /tmp/ok; sleep 2; rm /tmp/ok; exec sleep 600"],
            "livenessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "periodSeconds": 1, "failureThreshold": 1}}],
    })))
    .await?;
    // OOM: a 64 MiB buffer under a 16 MiB limit.
    c.create(
        "Pod",
        "default",
        &pod(
            &agent,
            "hungry",
            json!({
                "restartPolicy": "Never",
                "containers": [{"name": "c", "image": IMAGE,
                    "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                    "resources": {"limits": {"memory": "16Mi"}}}],
            }),
        ),
    )
    .await?;
    // Init containers in order, sharing an emptyDir with the app container; the pod succeeds.
    c.create("Pod", "default", &pod(&agent, "staged", json!({
        "restartPolicy": "Never",
        "initContainers": [
            {"name": "one", "image": IMAGE, "command": ["sh", "-c", "echo one > /work/log"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            {"name": "two", "image": IMAGE, "command": ["sh", "-c", "echo two >> /work/log"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        ],
        "containers": [{"name": "main", "image": IMAGE, "command": ["sh", "-c", "cat /work/log; test \"$(cat /work/log)\" = \"$(printf 'one\\ntwo')\""],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        "volumes": [{"name": "work", "emptyDir": {}}],
    })))
    .await?;
    // A missing image is reported, not retried in a hot loop.
    c.create(
        "Pod",
        "default",
        &pod(
            &agent,
            "noimage",
            json!({
                "containers": [{"name": "c", "image": "localhost/not/here:1"}],
            }),
        ),
    )
    .await?;

    let flaky = wait_for(
        "the liveness restart",
        Duration::from_secs(60),
        &agent,
        async || {
            get_pod(&c, "flaky")
                .await
                .filter(|p| p["status"]["containerStatuses"][0]["restartCount"].as_u64() >= Some(1))
        },
    )
    .await?;
    assert_eq!(
        flaky["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137,
        "{flaky:#}"
    );
    let out = TestAgent::cli(&cluster, &["logs", "flaky", "--previous"])?;
    assert!(out.status.success(), "ferry logs --previous: {out:?}");
    let hungry = wait_for(
        "the OOM kill",
        Duration::from_secs(60),
        &agent,
        async || {
            get_pod(&c, "hungry")
                .await
                .filter(|p| p["status"]["phase"] == "Failed")
        },
    )
    .await?;
    assert_eq!(
        hungry["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "OOMKilled",
        "{hungry:#}"
    );
    let staged = wait_for(
        "the staged pod to succeed",
        Duration::from_secs(60),
        &agent,
        async || {
            get_pod(&c, "staged")
                .await
                .filter(|p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        },
    )
    .await?;
    assert_eq!(staged["status"]["phase"], "Succeeded", "{staged:#}");
    assert_eq!(
        staged["status"]["initContainerStatuses"][1]["state"]["terminated"]["reason"],
        "Completed"
    );
    let noimage = wait_for(
        "the image error",
        Duration::from_secs(30),
        &agent,
        async || {
            get_pod(&c, "noimage").await.filter(|p| {
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("Image"))
            })
        },
    )
    .await?;
    let msg = noimage["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
    assert!(msg.contains("localhost/not/here:1"), "{msg}");

    // kill -9 of the agent: the web pod keeps serving; the restarted agent adopts it.
    agent.kill9();
    assert_eq!(http_get(&ip, 8080, "/index.html").as_deref(), Some("v2"));
    agent.restart()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = get_pod(&c, "web").await.unwrap_or_default();
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        container_id
    );
    assert_eq!(after["status"]["containerStatuses"][0]["restartCount"], 0);
    assert!(cond(&after, "Ready"), "{after:#}");
    assert_eq!(http_get(&ip, 8080, "/index.html").as_deref(), Some("v2"));

    // Graceful termination as the kubelet does it: the preStop hook runs first, then SIGTERM
    // reaches the container, which exits by itself well within the grace period.
    let out_dir = agent.dir().join("prestop-out");
    std::fs::create_dir_all(&out_dir)?;
    c.create(
        "Pod",
        "default",
        &pod(
            &agent,
            "stopper",
            json!({"terminationGracePeriodSeconds": 20,
                "volumes": [{"name": "out", "hostPath": {"path": out_dir.display().to_string(), "type": "Directory"}}],
                "containers": [{"name": "main", "image": IMAGE,
                "command": ["sh", "-c", "trap 'echo term >> /out/log; exit 0' TERM; echo started > /out/log; while true; do sleep 0.1; done"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}],
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /out/log; sleep 1"]}},
                              "postStart": {"exec": {"command": ["sh", "-c", "echo $HOSTNAME > /out/poststart"]}}}}]}),
        ),
    )
    .await?;
    let log = out_dir.join("log");
    wait_for(
        "the stopper pod to start",
        Duration::from_secs(30),
        &agent,
        async || (std::fs::read_to_string(&log).ok()? == "started\n").then_some(()),
    )
    .await?;
    // Its postStart hook ran inside the container.
    wait_for(
        "the postStart hook",
        Duration::from_secs(10),
        &agent,
        async || {
            (std::fs::read_to_string(out_dir.join("poststart")).ok()? == "stopper\n").then_some(())
        },
    )
    .await?;
    let asked = Instant::now();
    c.delete("Pod", "default", "stopper", "").await?;
    wait_for(
        "the stopper pod to be deleted",
        Duration::from_secs(30),
        &agent,
        async || {
            c.get("Pod", "default", "stopper")
                .await
                .err()
                .filter(|e| e.is_not_found())
                .map(drop)
        },
    )
    .await?;
    assert_eq!(
        std::fs::read_to_string(&log)?,
        "started\nprestop\nterm\n",
        "preStop first, then SIGTERM"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the container exited on SIGTERM, not at the end of the grace period: {:?}",
        asked.elapsed()
    );

    // HTTPS and gRPC probes against real servers in the container: an HTTPS readiness probe
    // and a gRPC liveness probe that pass; a gRPC readiness probe on a NOT_SERVING service and
    // an HTTPS one on a path answering 500 keep the other pod unready, with Unhealthy events.
    let targets = json!(["ferry-netcheck", "probe-targets", "8443", "9090"]);
    let grpc =
        |service: &str| json!({"grpc": {"port": 9090, "service": service}, "periodSeconds": 1});
    let https = |path: &str| json!({"httpGet": {"scheme": "HTTPS", "port": 8443, "path": path}, "periodSeconds": 1});
    c.create(
        "Pod",
        "default",
        &pod(
            &agent,
            "secure",
            json!({"containers": [{"name": "main", "image": IMAGE, "command": targets,
                "readinessProbe": https("/healthz"), "livenessProbe": grpc("ferry.Up")}]}),
        ),
    )
    .await?;
    c.create(
        "Pod",
        "default",
        &pod(
            &agent,
            "unready",
            json!({"containers": [
                {"name": "grpc", "image": IMAGE, "command": targets, "readinessProbe": grpc("ferry.Down")},
                {"name": "https", "image": IMAGE, "command": ["sleep", "3600"],
                 "readinessProbe": {"httpGet": {"scheme": "HTTPS", "port": 8443, "path": "/nope"}, "periodSeconds": 1}}]}),
        ),
    )
    .await?;
    wait_for(
        "the secure pod to be Ready through HTTPS and gRPC probes",
        Duration::from_secs(40),
        &agent,
        async || {
            get_pod(&c, "secure")
                .await
                .filter(|p| cond(p, "Ready"))
                .map(drop)
        },
    )
    .await?;
    wait_for(
        "Unhealthy events for the NOT_SERVING and 500 probes",
        Duration::from_secs(30),
        &agent,
        async || {
            let msgs = event_messages(&c, "unready", "Unhealthy").await;
            (msgs.iter().any(|m| m.contains("NOT_SERVING"))
                && msgs.iter().any(|m| m.contains("statuscode: 500")))
            .then_some(())
        },
    )
    .await?;
    let secure = get_pod(&c, "secure").await.unwrap_or_default();
    assert_eq!(
        secure["status"]["containerStatuses"][0]["restartCount"], 0,
        "the gRPC liveness probe passes: {secure:#}"
    );
    assert!(!cond(
        &get_pod(&c, "unready").await.unwrap_or_default(),
        "Ready"
    ));
    for name in ["secure", "unready"] {
        c.delete("Pod", "default", name, "").await?;
    }

    // A failing postStart hook: a FailedPostStartHook Event, the container killed and
    // restarted by its restart policy.
    c.create(
        "Pod",
        "default",
        &pod(
            &agent,
            "badstart",
            json!({"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"],
                "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "exit 3"]}}}}]}),
        ),
    )
    .await?;
    wait_for(
        "the failed postStart hook to restart the container",
        Duration::from_secs(40),
        &agent,
        async || {
            let p = get_pod(&c, "badstart").await?;
            (p["status"]["containerStatuses"][0]["restartCount"].as_i64()? >= 1).then_some(())
        },
    )
    .await?;
    let failed = event_messages(&c, "badstart", "FailedPostStartHook").await;
    assert!(
        failed.iter().any(|m| m.contains("exited with 3")),
        "{failed:?}"
    );
    c.delete("Pod", "default", "badstart", "").await?;

    // Graceful deletion: marked first, then gone with its namespace and directory.
    let marked = c.delete("Pod", "default", "web", "").await?;
    assert!(
        marked["metadata"]["deletionTimestamp"].is_string(),
        "{marked:#}"
    );
    wait_for(
        "the web pod to be deleted",
        Duration::from_secs(30),
        &agent,
        async || {
            c.get("Pod", "default", "web")
                .await
                .err()
                .filter(|e| e.is_not_found())
                .map(drop)
        },
    )
    .await?;
    wait_for(
        "the pod's namespace and directory to go",
        Duration::from_secs(10),
        &agent,
        async || {
            let netns = std::path::Path::new("/run/netns").join(format!("ferry-{uid}"));
            (!netns.exists() && !agent.dir().join("pods").join(&uid).exists()).then_some(())
        },
    )
    .await?;
    assert!(http_get(&ip, 8080, "/index.html").is_none());
    Ok(())
}

/// Every pod gets its ServiceAccount's credentials at Kubernetes' path: a token bound to the
/// pod (which authenticates as the account, and dies with the pod), the cluster CA and the
/// namespace; `automountServiceAccountToken: false` leaves them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_service_account_token() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP pods: {why}");
        return Ok(());
    }
    let cidr = format!("10.{}.0.0/16", 150 + (std::process::id() + 7) % 50);
    let cluster = Cluster::start(1, &["--cluster-cidr", &cidr]).await?;
    let c = cluster.client();
    let agent = TestAgent::start(&cluster, "satoken")?;
    let archive = agent.dir().join("busybox.tar");
    image::write_busybox_archive(&archive, IMAGE)?;
    agent.import_image(&archive)?;
    let sleeper = |name: &str, automount: Option<bool>| {
        let mut spec = json!({"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]});
        if let Some(a) = automount {
            spec["automountServiceAccountToken"] = json!(a);
        }
        pod(&agent, name, spec)
    };
    c.create("Pod", "default", &sleeper("with-token", None))
        .await?;
    c.create("Pod", "default", &sleeper("without-token", Some(false)))
        .await?;
    for name in ["with-token", "without-token"] {
        wait_for(
            &format!("{name} to be Ready"),
            Duration::from_secs(60),
            &agent,
            async || get_pod(&c, name).await.filter(|p| cond(p, "Ready")),
        )
        .await?;
    }
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let read = async |file: &str| {
        ferry_tests::exec_in_pod(&c, "with-token", &["cat", &format!("{dir}/{file}")], 10).await
    };
    let token = read("token").await?;
    assert_eq!(read("namespace").await?, "default");
    let cfg = cluster.config.clone().expect("admin config");
    assert_eq!(
        read("ca.crt").await?.trim(),
        cfg.certificate_authority_data.trim()
    );
    let p = get_pod(&c, "with-token").await.expect("pod");
    assert_eq!(p["spec"]["serviceAccountName"], "default", "admission");
    // The token is the account's, for the API.
    let as_pod = cluster.bearer_client(token.trim())?;
    let who = as_pod
        .access_review("get", "pods", "default", "", "")
        .await?;
    assert_eq!(who.user, "system:serviceaccount:default:default");
    let err = ferry_tests::exec_in_pod(&c, "without-token", &["ls", dir], 10)
        .await
        .expect_err("no token without automount");
    assert!(err.to_string().contains("exited with"), "{err}");
    // Bound to its pod: gone with it.
    c.delete("Pod", "default", "with-token", "").await?;
    wait_for(
        "with-token to be gone",
        Duration::from_secs(30),
        &agent,
        async || get_pod(&c, "with-token").await.is_none().then_some(()),
    )
    .await?;
    let err = as_pod
        .access_review("get", "pods", "default", "", "")
        .await
        .expect_err("the pod is gone");
    assert!(err.message.contains("no longer exists"), "{err}");
    c.delete("Pod", "default", "without-token", "").await?;
    Ok(())
}
