//! Fault tolerance of the replicated store, with real `ferry server` processes on loopback.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, ListOptions};
use ferry_tests::{Cluster, configmap};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::Mutex;

fn ns_default() -> ListOptions {
    ListOptions {
        namespace: Some("default".into()),
        ..Default::default()
    }
}

async fn names(client: &Client, prefix: &str) -> Result<BTreeSet<String>> {
    let list = client.list("ConfigMap", &ns_default()).await?;
    Ok(list["items"]
        .as_array()
        .context("items")?
        .iter()
        .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect())
}

/// Creates `name`, treating AlreadyExists as success: names are unique per writer, so only an
/// earlier attempt of ours (whose reply was lost in a failover) can have created it.
async fn create(client: &Client, name: &str) -> Result<()> {
    match client
        .create("ConfigMap", "default", &configmap(name, name))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn wait_caught_up(cluster: &Cluster, i: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = cluster.leader().await?;
        let want = cluster.member_client(leader).members().await?.applied_index;
        if let Ok(r) = cluster.member_client(i).members().await
            && r.applied_index >= want
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "member {i} did not catch up in {timeout:?}:\n{}",
                cluster.members[i].log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_during_writes_loses_no_acknowledged_write() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // (writer, name) -> ack time
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = cluster.client();
        let stop = stop.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("kw{w}-{seq:05}");
                if create(&client, &name).await.is_ok() {
                    acked.lock().await.push((name, Instant::now()));
                    seq += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster.leader().await?;
    let killed_at = Instant::now();
    cluster.members[leader].kill9();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let acked = acked.lock().await.clone();
    let before = acked.iter().filter(|(_, t)| *t < killed_at).count();
    let first_after = acked
        .iter()
        .filter(|(_, t)| *t >= killed_at)
        .map(|(_, t)| *t)
        .min();
    let Some(first_after) = first_after else {
        bail!("no write succeeded after the leader was killed")
    };
    let resumed = first_after - killed_at;
    println!(
        "acked {} writes ({before} before the kill); writes resumed {resumed:?} after it",
        acked.len()
    );
    assert!(before > 0, "writes were flowing before the kill");
    assert!(
        resumed < Duration::from_secs(2),
        "writes resumed only after {resumed:?}"
    );
    let present = names(&cluster.client(), "kw").await?;
    let missing: Vec<_> = acked
        .iter()
        .filter(|(n, _)| !present.contains(n))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(missing.is_empty(), "acknowledged writes lost: {missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_follower_restarts_and_catches_up_from_a_snapshot() -> Result<()> {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "50"]).await?;
    let leader = cluster.leader().await?;
    let follower = (leader + 1) % 3;
    create(&cluster.client(), "early").await?;
    cluster.members[follower].kill9();
    let client = cluster.client();
    for i in 0..300 {
        create(&client, &format!("lag-{i:04}")).await?;
    }
    cluster.restart(follower)?;
    wait_caught_up(&cluster, follower, Duration::from_secs(30)).await?;
    let through_follower = cluster.member_client(follower);
    assert_eq!(names(&through_follower, "lag-").await?.len(), 300);
    // The leader compacted its log behind a snapshot, so the follower can only have caught up by
    // installing it: its history now starts at the snapshot, and a watch from revision 1 is too old.
    let err = match through_follower
        .watch("ConfigMap", &ns_default(), "1", false)
        .await
    {
        Ok(mut s) => match s.next().await {
            Some(Err(e)) => e,
            other => bail!("watch from revision 1 on a snapshot-installed member gave {other:?}"),
        },
        Err(e) => e,
    };
    assert!(err.is_gone(), "expected a too-old error, got {err}");
    // A follower that merely restarts (no lag) catches up from the log.
    let other = 3 - leader - follower;
    cluster.members[other].kill9();
    create(&client, "while-down").await?;
    cluster.restart(other)?;
    wait_caught_up(&cluster, other, Duration::from_secs(30)).await?;
    assert!(
        names(&cluster.member_client(other), "while-down")
            .await?
            .contains("while-down")
    );
    Ok(())
}

/// Members killed with -9 at random moments under load (the leader half of the time, with
/// snapshots every 50 entries so that kills land during snapshot builds and installs) always
/// start again, and no acknowledged write is lost. The seed is printed to replay a failure
/// (`FERRY_CHAOS_SEED`); `FERRY_CHAOS_ROUNDS` runs more rounds than the default 12.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_kill9_and_restart_under_writes_never_fails_a_member() -> Result<()> {
    let rounds: usize = std::env::var("FERRY_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut cluster = Cluster::start(3, &["--snapshot-every", "50"]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let client = cluster.client();
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("chaos{w}-{seq:05}");
                if create(&client, &name).await.is_ok() {
                    acked.lock().await.push(name);
                    seq += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    let seed: u64 = match std::env::var("FERRY_CHAOS_SEED") {
        Ok(s) => s.parse().context("FERRY_CHAOS_SEED: a number")?,
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64
                | 1
        }
    };
    println!("FERRY_CHAOS_SEED={seed}");
    // xorshift64: enough to vary the victim and the timing.
    let mut state = seed;
    let mut random = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(200 + random(1000))).await;
        let victim = if random(2) == 0 {
            cluster.leader().await?
        } else {
            random(3) as usize
        };
        cluster.members[victim].kill9();
        tokio::time::sleep(Duration::from_millis(random(1000))).await;
        cluster.restart(victim)?;
        cluster
            .wait_ready(victim, Duration::from_secs(20))
            .await
            .with_context(|| format!("round {round}, member {victim} restarted"))?;
        for (i, m) in cluster.members.iter().enumerate() {
            if let Some(panic) = m.panic_message() {
                bail!(
                    "round {round}: member {i} panicked:\n{panic}\n{}",
                    m.log_tail(40)
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let acked = acked.lock().await.clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let leader = cluster.leader().await?;
    for i in 0..3 {
        wait_caught_up(&cluster, i, Duration::from_secs(30)).await?;
        let present = names(&cluster.member_client(i), "chaos").await?;
        let missing: Vec<_> = acked.iter().filter(|n| !present.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "member {i} (leader {leader}) lost acknowledged writes: {missing:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_resumes_across_a_leader_change_without_gaps_or_repeats() -> Result<()> {
    let mut cluster = Cluster::start(3, &[]).await?;
    let leader = cluster.leader().await?;
    let start_rv =
        cluster.client().list("ConfigMap", &ns_default()).await?["metadata"]["resourceVersion"]
            .as_str()
            .context("list revision")?
            .to_string();
    // The watcher starts on the leader so the kill forces it to resume elsewhere.
    let addrs: Vec<String> = cluster.members.iter().map(|m| m.addr.clone()).collect();
    let tls = cluster.config.as_ref().context("credentials")?.tls();
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(String, u64)> = Vec::new();
        let mut rv = start_rv;
        let mut member = leader;
        let mut reconnects = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let client = Client::new(&addrs[member], &tls).expect("client");
            match client.watch("ConfigMap", &ns_default(), &rv, true).await {
                Ok(mut stream) => {
                    while let Some(ev) = stream.next().await {
                        let Ok(ev) = ev else { break };
                        rv = ev.resource_version().to_string();
                        if ev.kind == "ADDED" {
                            let name = ev.object["metadata"]["name"]
                                .as_str()
                                .unwrap_or("")
                                .to_string();
                            let done = name == "wr-done";
                            seen.push((name, rv.parse().unwrap_or(0)));
                            if done {
                                return (seen, reconnects);
                            }
                        }
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            reconnects += 1;
            member = (member + 1) % addrs.len();
        }
        (seen, reconnects)
    });
    let client = cluster.client();
    let mut acked = Vec::new();
    for i in 0..150 {
        let name = format!("wr-{i:04}");
        if create(&client, &name).await.is_ok() {
            acked.push(name);
        }
        if i == 50 {
            cluster.members[leader].kill9();
        }
    }
    create(&client, "wr-done").await?;
    let (seen, reconnects) = watcher.await?;
    assert!(reconnects >= 1, "the watch should have had to reconnect");
    let seen_names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    let unique: BTreeSet<&str> = seen_names.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen_names.len(),
        "an event was repeated: {seen_names:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "revisions must increase"
    );
    let stored = names(&cluster.client(), "wr-").await?;
    let seen_set: BTreeSet<String> = unique.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        seen_set, stored,
        "the watch must deliver exactly the objects that were stored"
    );
    for a in &acked {
        assert!(
            seen_set.contains(a),
            "acknowledged {a} missing from the watch"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_members_stopped_and_started_keep_every_object() -> Result<()> {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "40"]).await?;
    let client = cluster.client();
    let mut expected = HashMap::new();
    for i in 0..120 {
        let name = format!("keep-{i:04}");
        client
            .create(
                "ConfigMap",
                "default",
                &configmap(&name, &format!("value-{i}")),
            )
            .await?;
        expected.insert(name, format!("value-{i}"));
    }
    // A graceful stop for two, kill -9 for the third.
    cluster.members[0].stop();
    cluster.members[1].stop();
    cluster.members[2].kill9();
    for i in 0..3 {
        cluster.restart(i)?;
    }
    cluster.wait_voters(3, Duration::from_secs(30)).await?;
    for i in 0..3 {
        // Each member must be serving again before it is asked directly.
        cluster.wait_ready(i, Duration::from_secs(30)).await?;
        let list = cluster
            .member_client(i)
            .list("ConfigMap", &ns_default())
            .await?;
        let got: HashMap<String, String> = list["items"]
            .as_array()
            .context("items")?
            .iter()
            .filter_map(|o| {
                Some((
                    o["metadata"]["name"].as_str()?.to_string(),
                    o["data"]["v"].as_str()?.to_string(),
                ))
            })
            .filter(|(n, _)| n.starts_with("keep-"))
            .collect();
        assert_eq!(got, expected, "member {i} after a full restart");
    }
    // And the cluster still takes writes.
    client
        .create("ConfigMap", "default", &configmap("after-restart", "x"))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_that_lost_its_disk_is_removed_readded_and_catches_up() -> Result<()> {
    let mut cluster = Cluster::start(3, &["--snapshot-every", "50"]).await?;
    let client = cluster.client();
    for i in 0..60 {
        create(&client, &format!("disk-{i:04}")).await?;
    }
    let leader = cluster.leader().await?;
    let lost = (leader + 2) % 3;
    let old_id = cluster.member_id(lost).await?;
    cluster.members[lost].kill9();
    std::fs::remove_dir_all(&cluster.members[lost].data_dir)?;
    let after = client.remove_member(old_id).await?;
    assert!(
        !after.members.iter().any(|m| m.id == old_id),
        "member {old_id} still listed after remove"
    );
    cluster.wait_voters(2, Duration::from_secs(10)).await?;
    for i in 60..120 {
        create(&client, &format!("disk-{i:04}")).await?;
    }
    cluster.start_joining(lost, leader)?;
    cluster.wait_voters(3, Duration::from_secs(60)).await?;
    let new_id = cluster.member_id(lost).await?;
    assert_ne!(new_id, old_id, "a re-added member gets a fresh id");
    wait_caught_up(&cluster, lost, Duration::from_secs(30)).await?;
    assert_eq!(
        names(&cluster.member_client(lost), "disk-").await?.len(),
        120
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_members_survive_two_failures_including_the_leader() -> Result<()> {
    let mut cluster = Cluster::start(5, &[]).await?;
    let client = cluster.client();
    create(&client, "five-before").await?;
    let leader = cluster.leader().await?;
    let other = (leader + 1) % 5;
    cluster.members[leader].kill9();
    cluster.members[other].kill9();
    // Three of five remain: a majority, so the cluster elects a leader and takes writes.
    for i in 0..20 {
        create(&client, &format!("five-after-{i}")).await?;
    }
    let present = names(&client, "five-").await?;
    assert_eq!(present.len(), 21);
    cluster.restart(leader)?;
    cluster.restart(other)?;
    for i in [leader, other] {
        wait_caught_up(&cluster, i, Duration::from_secs(30)).await?;
        assert_eq!(names(&cluster.member_client(i), "five-").await?.len(), 21);
    }
    Ok(())
}
