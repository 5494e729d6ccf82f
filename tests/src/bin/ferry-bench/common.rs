//! Helpers shared by several benchmarks: wrk runs and their reports, the `ferry-bench-httpd`
//! backend, waiting for pods and the default namespace, nf_conntrack_max, the multi-node
//! harness's teardown and the figures' summaries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_api::client::{Client, ListOptions, WatchStream};
use ferry_tests::Cluster;
use ferry_tests::netns::Fabric;
use serde_json::Value;

/// Both kinds of traffic wrk sends: a new connection per request (`Connection: close`) and
/// keep-alive; the flag is [`wrk`]'s `close`.
pub(crate) const KINDS: [(&str, bool); 2] = [("new connection", true), ("keep-alive", false)];

/// What `ferry-bench-httpd` answers to every request.
pub(crate) const HTTPD_BODY: &str = "hello, ferry\n";

/// One wrk run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WrkRun {
    pub(crate) requests_per_s: f64,
    pub(crate) p99_ms: f64,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.01s`, `1.00m`) in milliseconds.
pub(crate) fn wrk_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        "h" => v * 3_600_000.0,
        _ => return None,
    })
}

/// Parses wrk's `--latency` report: `Requests/sec:`, the `99%` line of the latency
/// distribution, the request count, socket errors and non-2xx responses.
pub(crate) fn parse_wrk(out: &str) -> Result<WrkRun> {
    let mut run = WrkRun::default();
    let mut rps = None;
    let mut p99 = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = wrk_ms(v.trim());
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            run.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some((n, _)) = t.split_once(" requests in ") {
            run.requests = n.trim().parse().unwrap_or(0);
        }
    }
    run.requests_per_s = rps.context("no Requests/sec in wrk's output")?;
    run.p99_ms = p99.context("no 99% latency in wrk's output")?;
    Ok(run)
}

/// One measurement: a wrk (`-t1 --latency`) per target at once, `connections` shared among
/// them, for `seconds`, each run by `exec` (its argv → its stdout); requests/s and requests
/// summed, p99 the worst.
pub(crate) async fn wrk<F, Fut>(
    targets: &[String],
    connections: usize,
    close: bool,
    seconds: u32,
    exec: F,
) -> Result<WrkRun>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<String>>,
{
    let per = (connections / targets.len()).max(1);
    let runs = futures::future::join_all(targets.iter().map(|url| {
        let mut argv: Vec<String> = ["wrk", "-t1", "--latency"]
            .into_iter()
            .map(String::from)
            .collect();
        argv.push(format!("-c{per}"));
        argv.push(format!("-d{seconds}s"));
        if close {
            argv.extend(["-H".into(), "Connection: close".into()]);
        }
        argv.push(url.clone());
        let out = exec(argv);
        async move {
            let out = out.await?;
            parse_wrk(&out).with_context(|| format!("wrk {url}: {out}"))
        }
    }))
    .await;
    let mut total = WrkRun::default();
    for r in runs {
        let r = r?;
        total.requests_per_s += r.requests_per_s;
        total.p99_ms = total.p99_ms.max(r.p99_ms);
        total.requests += r.requests;
        total.errors += r.errors;
    }
    Ok(total)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The order of round `round`'s visits: every item of `0..n`, rotated by the round.
pub(crate) fn rotated(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + round) % n)
}

/// `, N errors` after a run's figures, or nothing without errors.
pub(crate) fn errors_note(errors: u64) -> String {
    if errors > 0 {
        format!(", {errors} errors")
    } else {
        String::new()
    }
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `ferry-bench-httpd` next to this executable; `bench` names the benchmark whose
/// `tests/bench/run` builds it.
pub(crate) fn httpd_binary(bench: &str) -> Result<PathBuf> {
    let httpd = std::env::current_exe()?.with_file_name("ferry-bench-httpd");
    if !httpd.is_file() {
        bail!(
            "{} not found: run `tests/bench/run {bench}` (it builds it)",
            httpd.display()
        );
    }
    Ok(httpd)
}

/// Waits until every pod of `names` (namespace `default`) is Ready; returns them in that order.
pub(crate) async fn wait_pods_ready(
    c: &Client,
    names: &[String],
    fabric: &Fabric,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut pods = Vec::new();
        for n in names {
            let p = c.get("Pod", "default", n).await?;
            let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                pods.push(p);
            }
        }
        if pods.len() == names.len() {
            return Ok(pods);
        }
        if Instant::now() > deadline {
            bail!(
                "pods {names:?} not Ready within 120 s:\n{}",
                fabric.agent_logs(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub(crate) async fn wait_default_namespace(c: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.get("Namespace", "", "default").await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("no default namespace after 30 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A watch on every pod from the current revision: it sees what happens after this call.
pub(crate) async fn watch_pods(admin: &Client) -> Result<WatchStream> {
    let list = admin.list("Pod", &ListOptions::default()).await?;
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    admin
        .watch("Pod", &ListOptions::default(), &rv, false)
        .await
        .context("watching pods")
}

/// Tears `fabric` down, then stops `cluster`; reports what the teardown had to remove by force.
pub(crate) fn teardown(mut fabric: Fabric, cluster: Cluster) {
    let left = fabric.teardown();
    drop(fabric);
    drop(cluster);
    if !left.is_empty() {
        eprintln!("[bench] left after teardown (removed by force): {left:#?}");
    }
}

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Raises nf_conntrack_max to 2^20 as kube-proxy does (32768 per core, at least 131072): a run
/// of new connections at full speed through netfilter's NAT leaves a conntrack entry per
/// connection (TIME_WAIT), more than the default allows on a small machine. Puts the old value
/// back when dropped.
pub(crate) struct ConntrackMax(Option<String>);

impl ConntrackMax {
    pub(crate) fn raise() -> ConntrackMax {
        let _ = std::process::Command::new("modprobe")
            .arg("nf_conntrack")
            .status();
        let old = std::fs::read_to_string(CONNTRACK_MAX).ok();
        let low = old
            .as_deref()
            .and_then(|o| o.trim().parse::<u64>().ok())
            .is_some_and(|v| v < 1 << 20);
        if low && std::fs::write(CONNTRACK_MAX, (1u64 << 20).to_string()).is_ok() {
            ConntrackMax(old)
        } else {
            ConntrackMax(None)
        }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = std::fs::write(CONNTRACK_MAX, old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_report_is_parsed() {
        let out = "Running 5s test @ http://172.30.1.12:30080/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  310.00us   9.87ms   90.00%
    Req/Sec    14.50k     1.00k   16.00k    70.00%
  Latency Distribution
     50%    1.02ms
     75%    1.20ms
     90%    1.40ms
     99%  812.00us
  72150 requests in 5.00s, 7.02MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  14429.71
Transfer/sec:      1.40MB
";
        let r = parse_wrk(out).unwrap();
        assert!((r.requests_per_s - 14429.71).abs() < 1e-6);
        assert!((r.p99_ms - 0.812).abs() < 1e-9);
        assert_eq!(r.requests, 72150);
        assert_eq!(r.errors, 9);
        assert!(parse_wrk("unable to connect").is_err());
        assert!(parse_wrk("unable to connect to 172.30.1.12:30080").is_err());
        assert!((wrk_ms("2.01s").unwrap() - 2010.0).abs() < 1e-9);
        assert_eq!(wrk_ms("1.5m"), Some(90_000.0));
        assert_eq!(wrk_ms("12"), None);
    }

    #[test]
    fn rounds_are_rotated_and_figures_are_medians() {
        assert_eq!(rotated(4, 0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(rotated(4, 1).collect::<Vec<_>>(), [1, 2, 3, 0]);
        assert_eq!(rotated(4, 5).collect::<Vec<_>>(), [1, 2, 3, 0]);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
