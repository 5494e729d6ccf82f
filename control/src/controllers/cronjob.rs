//! CronJobs: create a Job from `spec.jobTemplate` at each time of `spec.schedule`, as
//! Kubernetes' CronJob controller (v2) does.
//!
//! The schedule is standard 5-field cron (minute hour day-of-month month day-of-week; `*`,
//! lists, ranges, steps, `N/step`, month and day names, `?`; when both day fields are
//! restricted a day matching either runs, as in cron) or a descriptor (`@hourly`, `@daily`,
//! `@midnight`, `@weekly`, `@monthly`, `@yearly`, `@annually`), in UTC. Each pass takes the
//! most recent schedule time missed since `status.lastScheduleTime` (or the CronJob's
//! creation), not older than `spec.startingDeadlineSeconds`, and starts a Job named
//! `<cronjob>-<scheduled time in minutes since the epoch>` owned by the CronJob.
//! `concurrencyPolicy`: Allow runs Jobs side by side, Forbid skips a time while a Job is
//! active (retried until the starting deadline), Replace deletes the active Jobs first.
//! `spec.suspend` stops new runs. Finished Jobs beyond `successfulJobsHistoryLimit` /
//! `failedJobsHistoryLimit` are deleted, oldest first. Status: active (references to running
//! Jobs), lastScheduleTime, lastSuccessfulTime. [`plan`] and [`Schedule`] are pure.

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use ferry_api::client::Api;
use serde_json::{Value, json};

use super::job::{Event, finished, owned_by};
use super::record_event as record;
use crate::controllers::backoff::Backoff;
use crate::controllers::cache::Cached;
use crate::controllers::str_at as s;

/// A parsed cron schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    /// Day of month / day of week given as `*` (no step): then both must match, else either.
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field: (bits, star).
fn field(
    text: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    base: u32,
    what: &str,
) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + base);
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{what}: failed to parse {s:?}"))?;
        if n < lo || n > hi {
            return Err(format!("{what}: {n} is out of range ({lo}-{hi})"));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let n: u32 = st
                    .parse()
                    .map_err(|_| format!("{what}: failed to parse step {st:?}"))?;
                if n == 0 {
                    return Err(format!("{what}: step must be positive"));
                }
                (r, Some(n))
            }
            None => (part, None),
        };
        let (start, end) = if range == "*" || range == "?" {
            if step.is_none_or(|n| n == 1) {
                star = true;
            }
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("{what}: beginning of range ({a}) beyond end ({b})"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // `N/step` means N through the maximum.
            (a, if step.is_some() { hi } else { a })
        };
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step.unwrap_or(1);
        }
    }
    Ok((bits, star))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Schedule, String> {
        let spec = spec.trim();
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            d if d.starts_with('@') => return Err(format!("unsupported schedule {d:?}")),
            d => d,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("expected exactly 5 fields, found {}", f.len()));
        }
        let (minute, _) = field(f[0], 0, 59, &[], 0, "minute")?;
        let (hour, _) = field(f[1], 0, 23, &[], 0, "hour")?;
        let (dom, dom_star) = field(f[2], 1, 31, &[], 0, "day of month")?;
        let (month, _) = field(f[3], 1, 12, MONTHS, 1, "month")?;
        let (mut dow, dow_star) = field(f[4], 0, 7, DAYS, 0, "day of week")?;
        // 7 is Sunday too.
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            minute,
            hour,
            dom,
            month,
            dow,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.dom & (1 << t.day()) != 0;
        let dow = self.dow & (1 << t.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first schedule time strictly after `t` (None if there is none within 5 years, as
    /// for `0 0 30 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = t.with_second(0)?.with_nanosecond(0)? + chrono::Duration::minutes(1);
        let limit = t + chrono::Duration::days(5 * 366);
        while t < limit {
            if self.month & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(t) {
                t = Utc
                    .with_ymd_and_hms(t.year(), t.month(), t.day(), 0, 0, 0)
                    .single()?
                    + chrono::Duration::days(1);
                continue;
            }
            if self.hour & (1 << t.hour()) == 0 {
                t = t.with_minute(0)? + chrono::Duration::hours(1);
                continue;
            }
            if self.minute & (1 << t.minute()) == 0 {
                t += chrono::Duration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The most recent schedule time in (`earliest`, `now`], and how many there were
    /// (counting stops at 100, as Kubernetes' "too many missed start times").
    pub fn most_recent(
        &self,
        earliest: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, usize) {
        let mut last = None;
        let mut n = 0;
        let mut t = earliest;
        // Far behind: only the last week matters for "most recent".
        if now - earliest > chrono::Duration::days(7) {
            t = now - chrono::Duration::days(7);
            n = 100;
        }
        while let Some(next) = self.next_after(t) {
            if next > now {
                break;
            }
            last = Some(next);
            n = (n + 1).min(100);
            t = next;
        }
        (last, n)
    }
}

/// What a CronJob needs now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// A Job to create: (name, scheduled time).
    pub create: Option<(String, DateTime<Utc>)>,
    /// Jobs to delete (Replace, or beyond the history limits), names.
    pub delete: Vec<String>,
    /// The new status (None: unchanged).
    pub status: Option<Value>,
    pub events: Vec<Event>,
}

fn time(v: &Value, ptr: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s(v, ptr))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn job_ref(j: &Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "name": s(j, "/metadata/name"),
           "namespace": s(j, "/metadata/namespace"), "uid": s(j, "/metadata/uid")})
}

/// The Job name for a scheduled time: `<cronjob>-<minutes since the epoch>`.
pub fn job_name(cronjob: &str, scheduled: DateTime<Utc>) -> String {
    format!("{cronjob}-{}", scheduled.timestamp() / 60)
}

/// The pure decision for one CronJob over the Jobs it owns, at `now`.
pub fn plan(cj: &Value, jobs: &[&Value], now: DateTime<Utc>) -> Result<Plan, String> {
    let schedule = Schedule::parse(s(cj, "/spec/schedule"))?;
    let name = s(cj, "/metadata/name");
    let mut p = Plan::default();
    let old = match cj.get("status") {
        Some(v) if v.is_object() => v.clone(),
        _ => json!({}),
    };
    let mut status = old.clone();
    let mut active: Vec<&Value> = Vec::new();
    let mut done_ok: Vec<&Value> = Vec::new();
    let mut done_failed: Vec<&Value> = Vec::new();
    for j in jobs {
        if !s(j, "/metadata/deletionTimestamp").is_empty() {
            continue;
        }
        match finished(j) {
            None => active.push(j),
            Some((kind, _)) if kind == "Complete" => done_ok.push(j),
            Some(_) => done_failed.push(j),
        }
    }
    if let Some(t) = done_ok
        .iter()
        .filter_map(|j| time(j, "/status/completionTime"))
        .max()
        && time(&old, "/lastSuccessfulTime").is_none_or(|o| t > o)
    {
        status["lastSuccessfulTime"] = json!(rfc3339(t));
    }
    // History limits, oldest first.
    let started = |j: &&Value| {
        time(j, "/status/startTime")
            .or_else(|| time(j, "/metadata/creationTimestamp"))
            .unwrap_or(now)
    };
    for (mut list, limit) in [
        (
            done_ok,
            cj.pointer("/spec/successfulJobsHistoryLimit")
                .and_then(Value::as_i64)
                .unwrap_or(3),
        ),
        (
            done_failed,
            cj.pointer("/spec/failedJobsHistoryLimit")
                .and_then(Value::as_i64)
                .unwrap_or(1),
        ),
    ] {
        list.sort_by_key(started);
        let extra = list.len().saturating_sub(limit.max(0) as usize);
        for j in list.iter().take(extra) {
            p.delete.push(s(j, "/metadata/name").to_string());
            p.events.push(Event {
                warning: false,
                reason: "SuccessfulDelete",
                message: format!("Deleted job {}", s(j, "/metadata/name")),
            });
        }
    }
    let mut active_refs: Vec<Value> = active.iter().map(|j| job_ref(j)).collect();
    if cj["spec"]["suspend"] != true {
        let created = time(cj, "/metadata/creationTimestamp").unwrap_or(now);
        let mut earliest = time(&old, "/lastScheduleTime").unwrap_or(created);
        let deadline = cj
            .pointer("/spec/startingDeadlineSeconds")
            .and_then(Value::as_i64);
        if let Some(d) = deadline {
            earliest = earliest.max(now - chrono::Duration::seconds(d));
        }
        let (due, missed) = schedule.most_recent(earliest, now);
        if let Some(due) = due {
            let policy = s(cj, "/spec/concurrencyPolicy");
            // Forbid: skip this time while a Job runs (retried on every pass until the
            // starting deadline; no Event, which would repeat every pass).
            if policy != "Forbid" || active.is_empty() {
                if missed >= 100 {
                    p.events.push(Event {
                        warning: true,
                        reason: "TooManyMissedTimes",
                        message: "too many missed start times; check clock skew or set startingDeadlineSeconds".into(),
                    });
                }
                if policy == "Replace" {
                    for j in &active {
                        p.delete.push(s(j, "/metadata/name").to_string());
                        p.events.push(Event {
                            warning: false,
                            reason: "SuccessfulDelete",
                            message: format!("Deleted job {}", s(j, "/metadata/name")),
                        });
                    }
                    active_refs.clear();
                }
                let jname = job_name(name, due);
                p.events.push(Event {
                    warning: false,
                    reason: "SuccessfulCreate",
                    message: format!("Created job {jname}"),
                });
                active_refs.push(
                    json!({"apiVersion": "batch/v1", "kind": "Job", "name": jname,
                                        "namespace": s(cj, "/metadata/namespace")}),
                );
                p.create = Some((jname, due));
                status["lastScheduleTime"] = json!(rfc3339(due));
            }
        }
    }
    if active_refs.is_empty() {
        if let Some(m) = status.as_object_mut() {
            m.remove("active");
        }
    } else {
        status["active"] = json!(active_refs);
    }
    if status != old {
        p.status = Some(status);
    }
    Ok(p)
}

/// The Job a CronJob starts for a scheduled time.
pub fn job_from_template(cj: &Value, name: &str, scheduled: DateTime<Utc>) -> Value {
    let mut meta = cj
        .pointer("/spec/jobTemplate/metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !meta.is_object() {
        meta = json!({});
    }
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] =
        json!(rfc3339(scheduled));
    meta["name"] = json!(name);
    meta["namespace"] = json!(s(cj, "/metadata/namespace"));
    meta["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "CronJob",
        "name": s(cj, "/metadata/name"), "uid": s(cj, "/metadata/uid"),
        "controller": true, "blockOwnerDeletion": true}]);
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": cj.pointer("/spec/jobTemplate/spec").cloned().unwrap_or_else(|| json!({}))})
}

const COMPONENT: &str = "cronjob-controller";

/// One pass over every CronJob. One whose Job could not be created gets a Warning Event and
/// is retried after its back-off ([`Backoff`]).
pub async fn reconcile_all<A: Api + Clone + 'static>(
    api: &Cached<A>,
    backoff: &mut Backoff,
) -> Result<usize, ferry_api::client::ClientError> {
    let cjs = api.snapshot("CronJob").await?;
    backoff.retain(cjs.iter().map(|c| &**c));
    if cjs.is_empty() {
        return Ok(0);
    }
    let jobs = api.snapshot("Job").await?;
    let mut acted = 0;
    let started = std::time::Instant::now();
    for cj in &cjs {
        let cj: &Value = cj;
        if !s(cj, "/metadata/deletionTimestamp").is_empty() || !backoff.ready(cj, started) {
            continue;
        }
        let ns = s(cj, "/metadata/namespace");
        let name = s(cj, "/metadata/name");
        let uid = s(cj, "/metadata/uid");
        let mine: Vec<&Value> = jobs
            .iter()
            .filter(|j| s(j, "/metadata/namespace") == ns && owned_by(j, uid))
            .map(|j| &**j)
            .collect();
        let plan = match plan(cj, &mine, Utc::now()) {
            Ok(p) => p,
            Err(e) => {
                let wait = backoff.failed(cj, started);
                tracing::warn!(cronjob = name, retry_in = ?wait, "{e}");
                continue;
            }
        };
        let mut failure: Option<(&str, String)> = None;
        for j in &plan.delete {
            match api.delete("Job", ns, j).await {
                Ok(_) => acted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failure.get_or_insert(("FailedDelete", format!("Error deleting job {j}: {e}")));
                }
            }
        }
        let mut status = plan.status.clone();
        if let Some((jname, due)) = &plan.create {
            match api
                .create("Job", ns, &job_from_template(cj, jname, *due))
                .await
            {
                Ok(created) => {
                    acted += 1;
                    // The reference with the new Job's uid.
                    if let Some(refs) = status.as_mut().and_then(|st| st["active"].as_array_mut())
                        && let Some(r) = refs.iter_mut().find(|r| r["name"] == jname.as_str())
                    {
                        *r = job_ref(&created);
                    }
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    let failure = ("FailedCreate", format!("Error creating job {jname}: {e}"));
                    backoff
                        .report(api, "CronJob", COMPONENT, cj, Some(&failure), started)
                        .await;
                    continue;
                }
            }
        }
        backoff
            .report(api, "CronJob", COMPONENT, cj, failure.as_ref(), started)
            .await;
        if let Some(st) = status {
            let mut updated = cj.clone();
            updated["status"] = st;
            if let Err(e) = api.update_status("CronJob", &updated).await {
                tracing::debug!(cronjob = name, "status: {e}");
                continue;
            }
            acted += 1;
        }
        for e in &plan.events {
            record(
                api, "CronJob", cj, COMPONENT, e.warning, e.reason, &e.message,
            )
            .await;
        }
    }
    Ok(acted)
}

/// Runs passes on the leader on store changes (at most every 200 ms) and every second.
pub async fn run<A: Api + Clone + 'static>(
    api: Cached<A>,
    node: std::sync::Arc<crate::node::Node>,
) {
    let pace = super::Pace {
        idle: Duration::from_secs(1),
        throttle: Duration::from_millis(200),
    };
    let mut turns = super::Turns::new("cronjob", node, pace);
    let mut backoff = Backoff::default();
    while turns.next().await {
        if let Err(e) = reconcile_all(&api, &mut backoff).await {
            turns.failed(e);
        }
        turns.requeue_after(backoff.next_due(std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn next(spec: &str, t: &str) -> String {
        rfc3339(
            Schedule::parse(spec)
                .expect("parse")
                .next_after(at(t))
                .expect("next"),
        )
    }

    #[test]
    fn schedules_parse_and_step() {
        // 2026-01-01 is a Thursday.
        assert_eq!(
            next("* * * * *", "2026-01-01T00:00:30Z"),
            "2026-01-01T00:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T00:16:00Z"),
            "2026-01-01T00:30:00Z"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01T00:26:00Z"),
            "2026-01-01T00:45:00Z"
        );
        assert_eq!(
            next("0 9-17/4 * * *", "2026-01-01T10:00:00Z"),
            "2026-01-01T13:00:00Z"
        );
        assert_eq!(
            next("30 2 * * mon,WED", "2026-01-01T00:00:00Z"),
            "2026-01-05T02:30:00Z"
        );
        assert_eq!(
            next("0 0 1 feb-mar *", "2026-01-01T00:00:00Z"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        // Both day fields restricted: either matches (the 13th, or a Friday).
        assert_eq!(
            next("0 0 13 * 5", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        // A stepped day of week counts as restricted.
        assert_eq!(
            next("0 0 13 * */7", "2026-01-01T00:00:00Z"),
            "2026-01-04T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "2026-01-15T00:00:00Z"),
            "2026-02-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            Schedule::parse("0 0 30 2 *")
                .expect("parse")
                .next_after(at("2026-01-01T00:00:00Z")),
            None
        );
        for bad in [
            "* * * *",
            "60 * * * *",
            "* * * foo *",
            "5-1 * * * *",
            "*/0 * * * *",
            "@every 5m",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn most_recent_missed_time() {
        let s = Schedule::parse("*/10 * * * *").expect("parse");
        let (t, n) = s.most_recent(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:35:00Z"));
        assert_eq!(t, Some(at("2026-01-01T00:30:00Z")));
        assert_eq!(n, 3);
        let (t, _) = s.most_recent(at("2026-01-01T00:30:00Z"), at("2026-01-01T00:35:00Z"));
        assert_eq!(t, None);
    }

    fn cj(policy: &str) -> Value {
        json!({"metadata": {"name": "hello", "namespace": "default", "uid": "cj-uid",
                            "creationTimestamp": "2026-01-01T00:00:10Z"},
               "spec": {"schedule": "* * * * *", "concurrencyPolicy": policy,
                        "successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1,
                        "jobTemplate": {"metadata": {"labels": {"app": "hello"}},
                                        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}}}}})
    }

    fn job(name: &str, state: Option<&str>, start: &str) -> Value {
        let mut j = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
                           "status": {"startTime": start}});
        if let Some(st) = state {
            j["status"]["conditions"] = json!([{"type": st, "status": "True"}]);
            j["status"]["completionTime"] = json!(start);
        }
        j
    }

    #[test]
    fn starts_a_job_at_the_scheduled_time() {
        let c = cj("Allow");
        let p = plan(&c, &[], at("2026-01-01T00:00:50Z")).expect("plan");
        assert_eq!(p.create, None);
        assert_eq!(p.status, None);
        let p = plan(&c, &[], at("2026-01-01T00:01:05Z")).expect("plan");
        let due = at("2026-01-01T00:01:00Z");
        assert_eq!(
            p.create,
            Some((format!("hello-{}", due.timestamp() / 60), due))
        );
        let st = p.status.expect("status");
        assert_eq!(st["lastScheduleTime"], "2026-01-01T00:01:00Z");
        assert_eq!(
            st["active"][0]["name"],
            format!("hello-{}", due.timestamp() / 60)
        );
        // Done for that minute.
        let mut c2 = c.clone();
        c2["status"] = json!({"lastScheduleTime": "2026-01-01T00:01:00Z"});
        assert_eq!(
            plan(&c2, &[], at("2026-01-01T00:01:30Z"))
                .expect("plan")
                .create,
            None
        );
        // Suspended: nothing.
        let mut c3 = c.clone();
        c3["spec"]["suspend"] = json!(true);
        assert_eq!(
            plan(&c3, &[], at("2026-01-01T00:05:00Z"))
                .expect("plan")
                .create,
            None
        );
        // Missed by more than startingDeadlineSeconds: nothing.
        let mut c4 = c.clone();
        c4["spec"]["startingDeadlineSeconds"] = json!(10);
        assert_eq!(
            plan(&c4, &[], at("2026-01-01T00:01:20Z"))
                .expect("plan")
                .create,
            None
        );
        assert!(
            plan(&c4, &[], at("2026-01-01T00:01:05Z"))
                .expect("plan")
                .create
                .is_some()
        );
        let j = job_from_template(&c, "hello-1", due);
        assert_eq!(j["metadata"]["name"], "hello-1");
        assert_eq!(j["metadata"]["ownerReferences"][0]["uid"], "cj-uid");
        assert_eq!(j["metadata"]["labels"]["app"], "hello");
        assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    }

    #[test]
    fn concurrency_policies() {
        let running = job("hello-1", None, "2026-01-01T00:00:00Z");
        let now = at("2026-01-01T00:01:05Z");
        let p = plan(&cj("Forbid"), &[&running], now).expect("plan");
        assert_eq!(p.create, None);
        assert!(p.events.is_empty());
        assert_eq!(p.status.expect("status")["active"][0]["name"], "hello-1");
        let p = plan(&cj("Replace"), &[&running], now).expect("plan");
        assert!(p.create.is_some());
        assert_eq!(p.delete, vec!["hello-1"]);
        assert_eq!(
            p.status.expect("status")["active"].as_array().map(Vec::len),
            Some(1)
        );
        let p = plan(&cj("Allow"), &[&running], now).expect("plan");
        assert!(p.create.is_some());
        assert!(p.delete.is_empty());
        assert_eq!(
            p.status.expect("status")["active"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn history_limits_and_last_success() {
        let jobs = [
            job("a", Some("Complete"), "2026-01-01T00:00:00Z"),
            job("b", Some("Complete"), "2026-01-01T00:01:00Z"),
            job("c", Some("Failed"), "2026-01-01T00:02:00Z"),
            job("d", Some("Failed"), "2026-01-01T00:03:00Z"),
        ];
        let refs: Vec<&Value> = jobs.iter().collect();
        let mut c = cj("Allow");
        c["status"] = json!({"lastScheduleTime": "2026-01-01T00:04:00Z"});
        let p = plan(&c, &refs, at("2026-01-01T00:04:30Z")).expect("plan");
        assert_eq!(p.delete, vec!["a", "c"]);
        assert_eq!(
            p.status.expect("status")["lastSuccessfulTime"],
            "2026-01-01T00:01:00Z"
        );
    }
}
