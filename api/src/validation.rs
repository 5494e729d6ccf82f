//! Semantic validation of decoded (and normally defaulted) objects.
//!
//! Owns the Kubernetes rules that the type system does not express: name syntax per kind,
//! label/annotation syntax, container/volume/port/probe rules, workload selectors matching their
//! templates, Service ports, Job/CronJob restart policies and schedules, and Ferry's own
//! additions (the BlueGreen deployment strategy). Every problem is reported, each naming its
//! field. It never mutates objects (see [`crate::defaults`]) and never looks at other objects:
//! rules that need the store (namespace exists, nodePort free) belong to the server.

use crate::error::{FieldError, FieldErrors};
use crate::fieldpath::{child, index, key};
use crate::kinds::KindInfo;
use crate::selector::LabelSelector;
use crate::strict::to_typed;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::{coordination, discovery, rbac};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The annotation a BlueGreen Deployment must carry: the Service whose selector is switched
/// between the blue and green ReplicaSets.
pub const BLUE_GREEN_ACTIVE_SERVICE: &str = "ferry.dev/active-service";

/// Validate an object of `kind` (canonical JSON as produced by [`crate::strict::decode`]).
/// Returns every problem found.
pub fn validate(kind: &KindInfo, obj: &Value) -> Result<(), FieldErrors> {
    let mut v = Errs::default();
    match kind.kind {
        "Namespace" => {
            let o: core::Namespace = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Label);
        }
        "Node" => {
            let o: core::Node = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
        }
        "Pod" => {
            let o: core::Pod = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(spec) => v.pod_spec(spec, "spec"),
                None => v.push(FieldError::required("spec")),
            }
        }
        "ConfigMap" => {
            let o: core::ConfigMap = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            v.config_map(&o);
        }
        "Secret" => {
            let o: core::Secret = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            v.secret(&o);
        }
        "Service" => {
            let o: core::Service = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1035Label);
            match &o.spec {
                Some(spec) => v.service_spec(spec),
                None => v.push(FieldError::required("spec")),
            }
        }
        "Event" => {
            let o: core::Event = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::PathSegment);
            if o.involved_object.kind.as_deref().unwrap_or("").is_empty() {
                v.push(FieldError::required("involvedObject.kind"));
            }
        }
        "PersistentVolume" => {
            let o: core::PersistentVolume = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            v.persistent_volume(obj, &o);
        }
        "PersistentVolumeClaim" => {
            let o: core::PersistentVolumeClaim = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(spec) => v.pvc_spec(spec, "spec"),
                None => v.push(FieldError::required("spec")),
            }
        }
        "ReplicaSet" => {
            let o: apps::ReplicaSet = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(s) => {
                    v.replicas(s.replicas, "spec.replicas");
                    v.non_negative(s.min_ready_seconds, "spec.minReadySeconds");
                    match &s.template {
                        Some(t) => v.workload_template(Some(&s.selector), t, "spec", &["Always"]),
                        None => v.push(FieldError::required("spec.template")),
                    }
                }
                None => v.push(FieldError::required("spec")),
            }
        }
        "Deployment" => {
            let o: apps::Deployment = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(s) => v.deployment_spec(&o.metadata, s),
                None => v.push(FieldError::required("spec")),
            }
        }
        "DaemonSet" => {
            let o: apps::DaemonSet = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(s) => {
                    v.workload_template(Some(&s.selector), &s.template, "spec", &["Always"]);
                    v.non_negative(s.min_ready_seconds, "spec.minReadySeconds");
                    v.non_negative(s.revision_history_limit, "spec.revisionHistoryLimit");
                    if let Some(u) = &s.update_strategy {
                        v.one_of(
                            u.type_.as_deref(),
                            "spec.updateStrategy.type",
                            &["RollingUpdate", "OnDelete"],
                        );
                        if let Some(ru) = &u.rolling_update {
                            let p = "spec.updateStrategy.rollingUpdate";
                            let unavail = v.int_or_percent(
                                ru.max_unavailable.as_ref(),
                                &child(p, "maxUnavailable"),
                                true,
                            );
                            let surge = v.int_or_percent(
                                ru.max_surge.as_ref(),
                                &child(p, "maxSurge"),
                                true,
                            );
                            // Unset maxSurge is 0 (the default); unset maxUnavailable is 1.
                            if matches!(surge, None | Some((_, 0)))
                                && matches!(unavail, Some((_, 0)))
                            {
                                v.push(FieldError::invalid(
                                    child(p, "maxUnavailable"),
                                    0,
                                    "may not be 0 when `maxSurge` is 0",
                                ));
                            }
                        }
                    }
                }
                None => v.push(FieldError::required("spec")),
            }
        }
        "StatefulSet" => {
            let o: apps::StatefulSet = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(s) => v.stateful_set_spec(s),
                None => v.push(FieldError::required("spec")),
            }
        }
        "Job" => {
            let o: batch::Job = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            match &o.spec {
                Some(s) => v.job_spec(s, "spec"),
                None => v.push(FieldError::required("spec")),
            }
        }
        "CronJob" => {
            let o: batch::CronJob = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            if let Some(name) = &o.metadata.name
                && name.len() > 52
            {
                v.push(FieldError::invalid(
                    "metadata.name",
                    q(name),
                    "must be no more than 52 characters",
                ));
            }
            match &o.spec {
                Some(s) => v.cron_job_spec(s),
                None => v.push(FieldError::required("spec")),
            }
        }
        "EndpointSlice" => {
            let o: discovery::v1::EndpointSlice = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            v.one_of(
                Some(&o.address_type),
                "addressType",
                &["IPv4", "IPv6", "FQDN"],
            );
            for (i, p) in o.ports.iter().flatten().enumerate() {
                if let Some(port) = p.port {
                    v.port_range(port, &format!("ports[{i}].port"));
                }
                v.one_of(
                    p.protocol.as_deref(),
                    &format!("ports[{i}].protocol"),
                    PROTOCOLS,
                );
            }
        }
        "ServiceAccount" => {
            let o: core::ServiceAccount = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
        }
        "ControllerRevision" => {
            let o: apps::ControllerRevision = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            v.non_negative(Some(o.revision), "revision");
        }
        "Lease" => {
            let o: coordination::v1::Lease = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::Dns1123Subdomain);
            if let Some(s) = &o.spec {
                v.non_negative(s.lease_duration_seconds, "spec.leaseDurationSeconds");
                v.non_negative(s.lease_transitions, "spec.leaseTransitions");
            }
        }
        "Role" => {
            let o: rbac::v1::Role = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::PathSegment);
            v.policy_rules(o.rules.as_deref());
        }
        "ClusterRole" => {
            let o: rbac::v1::ClusterRole = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::PathSegment);
            if o.aggregation_rule.is_none() {
                v.policy_rules(o.rules.as_deref());
            }
        }
        "RoleBinding" => {
            let o: rbac::v1::RoleBinding = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::PathSegment);
            v.role_ref(&o.role_ref, &["Role", "ClusterRole"]);
            v.subjects(o.subjects.as_deref());
        }
        "ClusterRoleBinding" => {
            let o: rbac::v1::ClusterRoleBinding = to_typed(obj)?;
            v.meta(&o.metadata, NameRule::PathSegment);
            v.role_ref(&o.role_ref, &["ClusterRole"]);
            v.subjects(o.subjects.as_deref());
        }
        other => v.push(FieldError::new(
            "kind",
            format!("{other:?} is not a supported kind"),
        )),
    }
    v.0.into_result()
}

/// The whole write-path pipeline for one untyped object: strict decode, defaulting, validation.
/// Returns the kind and the canonical, defaulted object.
pub fn admit(value: &Value) -> Result<(&'static KindInfo, Value), FieldErrors> {
    let (info, mut obj) = crate::strict::decode(value)?;
    crate::defaults::apply(info, &mut obj);
    validate(info, &obj)?;
    Ok((info, obj))
}

// ---------------------------------------------------------------------------------------------
// Name and label syntax (public: the selector parser and the server use them too).

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// DNS-1123 label: at most 63 characters of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn dns1123_label_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let ok = s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower);
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')".into()
    })
}

/// DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels.
pub fn dns1123_subdomain_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let ok = s.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| is_alnum_lower(c) || c == '-')
            && part.starts_with(is_alnum_lower)
            && part.ends_with(is_alnum_lower)
    });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')".into()
    })
}

/// DNS-1035 label (Service names): like a DNS-1123 label but starting with a letter.
pub fn dns1035_label_error(s: &str) -> Option<String> {
    if let Some(e) = dns1123_label_error(s) {
        return Some(e);
    }
    (!s.starts_with(|c: char| c.is_ascii_lowercase())).then(|| {
        "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name', or 'abc-123')".into()
    })
}

fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Qualified name (label and annotation keys): `[prefix/]name`, prefix a DNS-1123 subdomain,
/// name at most 63 characters of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn label_key_error(s: &str) -> Option<String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Some("prefix part must be non-empty".into());
        }
        if let Some(e) = dns1123_subdomain_error(p) {
            return Some(format!("prefix part {e}"));
        }
    }
    if name.is_empty() {
        return Some("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Some("name part must be no more than 63 characters".into());
    }
    (!is_name_part(name)).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc')".into()
    })
}

/// Label value: empty, or at most 63 characters of `[A-Za-z0-9-_.]` starting and ending
/// alphanumeric.
pub fn label_value_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    if s.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    (!is_name_part(s)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345')".into()
    })
}

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.`/`..`.
pub fn config_key_error(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be between 1 and 253 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some("a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', or 'KEY_NAME', or 'key-name')".into());
    }
    if s == "." || s == ".." || s.starts_with("..") {
        return Some("must not be '.' or '..' or start with '..'".into());
    }
    None
}

/// IANA service name (named ports): at most 15 characters of `[a-z0-9-]`, at least one letter,
/// no leading, trailing or doubled '-'.
pub fn port_name_error(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 15 {
        return Some("must be no more than 15 characters".into());
    }
    if !s.chars().all(|c| is_alnum_lower(c) || c == '-') {
        return Some(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into(),
        );
    }
    if s.contains("--") {
        return Some("must not contain consecutive hyphens".into());
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must not begin or end with a hyphen".into());
    }
    None
}

/// Path segment names (RBAC objects, Events): anything but `.`, `..`, or containing `/` or `%`.
pub fn path_segment_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s == "." || s == ".." {
        return Some(format!("may not be '{s}'"));
    }
    (s.contains('/') || s.contains('%')).then(|| "may not contain '/' or '%'".into())
}

/// Parse a resource quantity (`100m`, `1.5Gi`, `2e3`) into a number of base units.
/// `None` when malformed.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let digits = num.trim_start_matches(['+', '-']);
    if digits.is_empty()
        || num.len() - digits.len() > 1
        || digits.contains(['+', '-'])
        || digits.matches('.').count() > 1
        || digits == "."
    {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(n * mult)
}

/// Validate a cron schedule as CronJob accepts it: five fields (minute hour day-of-month month
/// day-of-week) or a descriptor (`@hourly`, `@daily`, `@every 5m`...).
pub fn cron_schedule_error(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return Some("required".into());
    }
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Some("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
    }
    if let Some(desc) = s.strip_prefix('@') {
        return match desc {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => None,
            d if d.starts_with("every ") => (!valid_go_duration(d["every ".len()..].trim()))
                .then(|| format!("invalid duration in {s:?}")),
            _ => Some(format!("unrecognized descriptor: {s}")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if fields.len() != 5 {
        return Some(format!(
            "expected exactly 5 fields, found {}: {s}",
            fields.len()
        ));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let specs: [(&str, u32, u32, &[&str], u32); 5] = [
        ("minute", 0, 59, &[], 0),
        ("hour", 0, 23, &[], 0),
        ("day of month", 1, 31, &[], 0),
        ("month", 1, 12, MONTHS, 1),
        ("day of week", 0, 6, DAYS, 0),
    ];
    for (field, (what, lo, hi, names, name_base)) in fields.iter().zip(specs) {
        if let Err(e) = cron_field(
            field,
            lo,
            hi,
            names,
            name_base,
            what != "minute" && what != "hour",
        ) {
            return Some(format!("{what} field {field:?}: {e}"));
        }
    }
    None
}

fn cron_field(
    field: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    name_base: u32,
    allow_q: bool,
) -> Result<(), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        let n: u32 = s.parse().map_err(|_| format!("failed to parse {s:?}"))?;
        if n < lo || n > hi {
            return Err(format!("{n} is out of range ({lo}-{hi})"));
        }
        Ok(n)
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(step) = step {
            let n: u32 = step
                .parse()
                .map_err(|_| format!("failed to parse step {step:?}"))?;
            if n == 0 {
                return Err("step must be positive".into());
            }
        }
        if range == "*" || (allow_q && range == "?") {
            continue;
        }
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (value(a)?, value(b)?);
                if a > b {
                    return Err(format!(
                        "beginning of range ({a}) beyond end of range ({b})"
                    ));
                }
            }
            None => {
                value(range)?;
            }
        }
    }
    Ok(())
}

/// Go `time.ParseDuration` syntax, e.g. `1h30m`, `90s`, `1.5h`.
fn valid_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        if !matches!(&rest[..u], "ns" | "us" | "µs" | "ms" | "s" | "m" | "h") {
            return false;
        }
        rest = &rest[u..];
    }
    true
}

// ---------------------------------------------------------------------------------------------

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

#[derive(Clone, Copy)]
enum NameRule {
    Dns1123Label,
    Dns1123Subdomain,
    Dns1035Label,
    PathSegment,
}

impl NameRule {
    fn check(self, s: &str) -> Option<String> {
        match self {
            NameRule::Dns1123Label => dns1123_label_error(s),
            NameRule::Dns1123Subdomain => dns1123_subdomain_error(s),
            NameRule::Dns1035Label => dns1035_label_error(s),
            NameRule::PathSegment => path_segment_error(s),
        }
    }
}

/// Quote a value for an error message.
fn q(s: &str) -> String {
    format!("{s:?}")
}

fn json_of<T: serde::Serialize>(t: &T) -> String {
    serde_json::to_string(t).unwrap_or_default()
}

#[derive(Default)]
struct Errs(FieldErrors);

impl Errs {
    fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    fn one_of(&mut self, value: Option<&str>, path: &str, allowed: &[&str]) {
        if let Some(v) = value
            && !allowed.contains(&v)
        {
            self.push(FieldError::not_supported(path, v, allowed));
        }
    }

    fn non_negative<N: Into<i64> + Copy>(&mut self, value: Option<N>, path: &str) {
        if let Some(n) = value
            && n.into() < 0
        {
            self.push(FieldError::invalid(
                path,
                n.into(),
                "must be greater than or equal to 0",
            ));
        }
    }

    fn replicas(&mut self, value: Option<i32>, path: &str) {
        self.non_negative(value, path);
    }

    fn port_range(&mut self, port: i32, path: &str) {
        if !(1..=65535).contains(&port) {
            self.push(FieldError::invalid(
                path,
                port,
                "must be between 1 and 65535, inclusive",
            ));
        }
    }

    fn meta(&mut self, m: &metav1::ObjectMeta, rule: NameRule) {
        match (
            m.name.as_deref().filter(|s| !s.is_empty()),
            m.generate_name.as_deref().filter(|s| !s.is_empty()),
        ) {
            (Some(name), _) => {
                if let Some(e) = rule.check(name) {
                    self.push(FieldError::invalid("metadata.name", q(name), e));
                }
            }
            (None, Some(prefix)) => {
                // A prefix may end in '-': check it as if a suffix had been appended.
                let masked = format!("{}a", prefix);
                if let Some(e) = rule.check(&masked) {
                    self.push(FieldError::invalid("metadata.generateName", q(prefix), e));
                }
            }
            (None, None) => self.push(FieldError::new(
                "metadata.name",
                "required (or metadata.generateName)",
            )),
        }
        if let Some(ns) = m.namespace.as_deref().filter(|s| !s.is_empty())
            && let Some(e) = dns1123_label_error(ns)
        {
            self.push(FieldError::invalid("metadata.namespace", q(ns), e));
        }
        self.labels(m.labels.as_ref(), "metadata.labels");
        self.annotations(m.annotations.as_ref(), "metadata.annotations");
    }

    fn labels(&mut self, labels: Option<&BTreeMap<String, String>>, path: &str) {
        for (k, v) in labels.into_iter().flatten() {
            if let Some(e) = label_key_error(k) {
                self.push(FieldError::invalid(path, q(k), e));
            }
            if let Some(e) = label_value_error(v) {
                self.push(FieldError::invalid(key(path, k), q(v), e));
            }
        }
    }

    fn annotations(&mut self, annotations: Option<&BTreeMap<String, String>>, path: &str) {
        let mut total = 0usize;
        for (k, v) in annotations.into_iter().flatten() {
            if let Some(e) = label_key_error(&k.to_ascii_lowercase()) {
                self.push(FieldError::invalid(path, q(k), e));
            }
            total += k.len() + v.len();
        }
        if total > 256 * 1024 {
            self.push(FieldError::new(
                path,
                format!("Too long: must have at most 262144 bytes, found {total}"),
            ));
        }
    }

    // --- pods -------------------------------------------------------------------------------

    fn pod_spec(&mut self, spec: &core::PodSpec, path: &str) {
        let volumes = self.volumes(spec.volumes.as_deref(), &child(path, "volumes"));
        if spec.containers.is_empty() {
            self.push(FieldError::required(child(path, "containers")));
        }
        let mut names = HashSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            self.container(
                c,
                &index(&child(path, "containers"), i),
                &volumes,
                &mut names,
                true,
            );
        }
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            self.container(
                c,
                &index(&child(path, "initContainers"), i),
                &volumes,
                &mut names,
                false,
            );
        }
        self.one_of(
            spec.restart_policy.as_deref(),
            &child(path, "restartPolicy"),
            &["Always", "OnFailure", "Never"],
        );
        self.one_of(
            spec.dns_policy.as_deref(),
            &child(path, "dnsPolicy"),
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        );
        if spec.dns_policy.as_deref() == Some("None")
            && spec
                .dns_config
                .as_ref()
                .and_then(|d| d.nameservers.as_ref())
                .is_none_or(|n| n.is_empty())
        {
            self.push(FieldError::required(child(path, "dnsConfig.nameservers")));
        }
        self.non_negative(
            spec.termination_grace_period_seconds,
            &child(path, "terminationGracePeriodSeconds"),
        );
        if let Some(n) = spec.active_deadline_seconds
            && n <= 0
        {
            self.push(FieldError::invalid(
                child(path, "activeDeadlineSeconds"),
                n,
                "must be greater than 0",
            ));
        }
        self.labels(spec.node_selector.as_ref(), &child(path, "nodeSelector"));
        if let Some(h) = spec.hostname.as_deref()
            && let Some(e) = dns1123_label_error(h)
        {
            self.push(FieldError::invalid(child(path, "hostname"), q(h), e));
        }
        if let Some(sd) = spec.subdomain.as_deref()
            && let Some(e) = dns1123_label_error(sd)
        {
            self.push(FieldError::invalid(child(path, "subdomain"), q(sd), e));
        }
        for (i, t) in spec.tolerations.iter().flatten().enumerate() {
            let p = index(&child(path, "tolerations"), i);
            self.one_of(
                t.operator.as_deref(),
                &child(&p, "operator"),
                &["Exists", "Equal"],
            );
            self.one_of(
                t.effect.as_deref(),
                &child(&p, "effect"),
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            );
            if t.operator.as_deref() == Some("Exists")
                && t.value.as_deref().is_some_and(|v| !v.is_empty())
            {
                self.push(FieldError::invalid(
                    child(&p, "operator"),
                    q("Exists"),
                    "value must be empty when `operator` is 'Exists'",
                ));
            }
        }
    }

    /// Validates the volume list and returns the set of volume names.
    fn volumes(&mut self, volumes: Option<&[core::Volume]>, path: &str) -> HashSet<String> {
        let mut names = HashSet::new();
        for (i, vol) in volumes.into_iter().flatten().enumerate() {
            let p = index(path, i);
            if vol.name.is_empty() {
                self.push(FieldError::required(child(&p, "name")));
            } else if let Some(e) = dns1123_label_error(&vol.name) {
                self.push(FieldError::invalid(child(&p, "name"), q(&vol.name), e));
            } else if !names.insert(vol.name.clone()) {
                self.push(FieldError::duplicate(child(&p, "name"), q(&vol.name)));
            }
            let sources = serde_json::to_value(vol)
                .ok()
                .and_then(|v| {
                    v.as_object()
                        .map(|m| m.keys().filter(|k| *k != "name").count())
                })
                .unwrap_or(0);
            if sources == 0 {
                self.push(FieldError::new(
                    p.clone(),
                    "required: must specify a volume type",
                ));
            } else if sources > 1 {
                self.push(FieldError::new(
                    p.clone(),
                    "may not specify more than 1 volume type",
                ));
            }
            for (what, mode) in [
                (
                    "configMap",
                    vol.config_map.as_ref().and_then(|c| c.default_mode),
                ),
                ("secret", vol.secret.as_ref().and_then(|c| c.default_mode)),
                (
                    "projected",
                    vol.projected.as_ref().and_then(|c| c.default_mode),
                ),
            ] {
                if let Some(m) = mode
                    && !(0..=0o777).contains(&m)
                {
                    self.push(FieldError::invalid(
                        format!("{p}.{what}.defaultMode"),
                        m,
                        "must be a number between 0 and 0777 (octal), both inclusive",
                    ));
                }
            }
            if let Some(hp) = &vol.host_path
                && !hp.path.starts_with('/')
            {
                self.push(FieldError::invalid(
                    format!("{p}.hostPath.path"),
                    q(&hp.path),
                    "must be an absolute path",
                ));
            }
        }
        names
    }

    fn container(
        &mut self,
        c: &core::Container,
        path: &str,
        volumes: &HashSet<String>,
        names: &mut HashSet<String>,
        regular: bool,
    ) {
        let name_path = child(path, "name");
        if c.name.is_empty() {
            self.push(FieldError::required(name_path));
        } else if let Some(e) = dns1123_label_error(&c.name) {
            self.push(FieldError::invalid(name_path, q(&c.name), e));
        } else if !names.insert(c.name.clone()) {
            self.push(FieldError::duplicate(name_path, q(&c.name)));
        }
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            self.push(FieldError::required(child(path, "image")));
        }
        self.one_of(
            c.image_pull_policy.as_deref(),
            &child(path, "imagePullPolicy"),
            &["Always", "IfNotPresent", "Never"],
        );
        self.one_of(
            c.termination_message_policy.as_deref(),
            &child(path, "terminationMessagePolicy"),
            &["File", "FallbackToLogsOnError"],
        );
        // Ports.
        let mut port_names = HashSet::new();
        for (i, p) in c.ports.iter().flatten().enumerate() {
            let pp = index(&child(path, "ports"), i);
            self.port_range(p.container_port, &child(&pp, "containerPort"));
            if let Some(hp) = p.host_port
                && hp != 0
            {
                self.port_range(hp, &child(&pp, "hostPort"));
            }
            self.one_of(p.protocol.as_deref(), &child(&pp, "protocol"), PROTOCOLS);
            if let Some(n) = p.name.as_deref() {
                if let Some(e) = port_name_error(n) {
                    self.push(FieldError::invalid(child(&pp, "name"), q(n), e));
                } else if !port_names.insert(n.to_string()) {
                    self.push(FieldError::duplicate(child(&pp, "name"), q(n)));
                }
            }
        }
        // Environment.
        for (i, e) in c.env.iter().flatten().enumerate() {
            let ep = index(&child(path, "env"), i);
            if e.name.is_empty() {
                self.push(FieldError::required(child(&ep, "name")));
            } else if e.name.contains('=') || e.name.chars().any(|ch| !(' '..='~').contains(&ch)) {
                self.push(FieldError::invalid(
                    child(&ep, "name"),
                    q(&e.name),
                    "a valid environment variable name must consist only of printable ASCII characters other than '='",
                ));
            }
            if let Some(vf) = &e.value_from {
                if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
                    self.push(FieldError::invalid(
                        child(&ep, "valueFrom"),
                        "",
                        "may not be specified when `value` is not empty",
                    ));
                }
                let n = [
                    vf.field_ref.is_some(),
                    vf.resource_field_ref.is_some(),
                    vf.config_map_key_ref.is_some(),
                    vf.secret_key_ref.is_some(),
                    vf.file_key_ref.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if n != 1 {
                    self.push(FieldError::invalid(
                        child(&ep, "valueFrom"),
                        "",
                        "must specify exactly one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef`, `secretKeyRef` or `fileKeyRef`",
                    ));
                }
                if let Some(r) = &vf.config_map_key_ref
                    && r.key.is_empty()
                {
                    self.push(FieldError::required(child(
                        &ep,
                        "valueFrom.configMapKeyRef.key",
                    )));
                }
                if let Some(r) = &vf.secret_key_ref
                    && r.key.is_empty()
                {
                    self.push(FieldError::required(child(
                        &ep,
                        "valueFrom.secretKeyRef.key",
                    )));
                }
                if let Some(r) = &vf.field_ref
                    && r.field_path.is_empty()
                {
                    self.push(FieldError::required(child(
                        &ep,
                        "valueFrom.fieldRef.fieldPath",
                    )));
                }
            }
        }
        // Volume mounts.
        let mut mount_paths = HashSet::new();
        for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
            let mp = index(&child(path, "volumeMounts"), i);
            if m.name.is_empty() {
                self.push(FieldError::required(child(&mp, "name")));
            } else if !volumes.contains(&m.name) {
                self.push(FieldError::new(
                    child(&mp, "name"),
                    format!("Not found: {}", q(&m.name)),
                ));
            }
            if m.mount_path.is_empty() {
                self.push(FieldError::required(child(&mp, "mountPath")));
            } else if !mount_paths.insert(m.mount_path.clone()) {
                self.push(FieldError::invalid(
                    child(&mp, "mountPath"),
                    q(&m.mount_path),
                    "must be unique",
                ));
            }
        }
        // Resources.
        if let Some(r) = &c.resources {
            self.resources(r, &child(path, "resources"));
        }
        // Probes. Init containers may not have the readiness/liveness/startup probes
        // unless they are restartable sidecars.
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        for (field, probe) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let Some(probe) = probe else { continue };
            let pp = child(path, field);
            if !regular && !sidecar {
                self.push(FieldError::new(
                    pp,
                    "Forbidden: may not be set for init containers without restartPolicy=Always",
                ));
                continue;
            }
            self.probe(probe, &pp, field != "readinessProbe");
        }
        if regular && c.restart_policy.is_some() {
            self.push(FieldError::new(
                child(path, "restartPolicy"),
                "Forbidden: may not be set for non-init containers",
            ));
        }
        if !regular {
            self.one_of(
                c.restart_policy.as_deref(),
                &child(path, "restartPolicy"),
                &["Always"],
            );
        }
    }

    fn resources(&mut self, r: &core::ResourceRequirements, path: &str) {
        let parse_all = |errs: &mut Self,
                         m: Option<&BTreeMap<String, Quantity>>,
                         p: &str|
         -> BTreeMap<String, f64> {
            let mut out = BTreeMap::new();
            for (k, v) in m.into_iter().flatten() {
                match parse_quantity(&v.0) {
                    Some(n) if n < 0.0 => {
                        errs.push(FieldError::invalid(key(p, k), q(&v.0), "must be greater than or equal to 0"))
                    }
                    Some(n) => {
                        out.insert(k.clone(), n);
                    }
                    None => errs.push(FieldError::invalid(
                        key(p, k),
                        q(&v.0),
                        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    )),
                }
            }
            out
        };
        let limits = parse_all(self, r.limits.as_ref(), &child(path, "limits"));
        let requests = parse_all(self, r.requests.as_ref(), &child(path, "requests"));
        for (k, req) in &requests {
            if let Some(lim) = limits.get(k)
                && req > lim
            {
                let raw = r
                    .requests
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .map(|q| q.0.as_str())
                    .unwrap_or("");
                let lim_raw = r
                    .limits
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .map(|q| q.0.as_str())
                    .unwrap_or("");
                self.push(FieldError::invalid(
                    key(&child(path, "requests"), k),
                    q(raw),
                    format!("must be less than or equal to {k} limit of {lim_raw}"),
                ));
            }
        }
    }

    fn probe(&mut self, p: &core::Probe, path: &str, success_must_be_one: bool) {
        let handlers = [
            p.exec.is_some(),
            p.http_get.is_some(),
            p.tcp_socket.is_some(),
            p.grpc.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if handlers == 0 {
            self.push(FieldError::new(
                path,
                "required: must specify a handler type",
            ));
        } else if handlers > 1 {
            self.push(FieldError::new(
                path,
                "Forbidden: may not specify more than 1 handler type",
            ));
        }
        if let Some(e) = &p.exec
            && e.command.as_ref().is_none_or(|c| c.is_empty())
        {
            self.push(FieldError::required(child(path, "exec.command")));
        }
        if let Some(h) = &p.http_get {
            self.probe_port(&h.port, &child(path, "httpGet.port"));
            self.one_of(
                h.scheme.as_deref(),
                &child(path, "httpGet.scheme"),
                &["HTTP", "HTTPS"],
            );
        }
        if let Some(t) = &p.tcp_socket {
            self.probe_port(&t.port, &child(path, "tcpSocket.port"));
        }
        if let Some(g) = &p.grpc {
            self.port_range(g.port, &child(path, "grpc.port"));
        }
        self.non_negative(p.initial_delay_seconds, &child(path, "initialDelaySeconds"));
        for (f, v) in [
            ("timeoutSeconds", p.timeout_seconds),
            ("periodSeconds", p.period_seconds),
            ("successThreshold", p.success_threshold),
            ("failureThreshold", p.failure_threshold),
        ] {
            if let Some(n) = v
                && n < 1
            {
                self.push(FieldError::invalid(
                    child(path, f),
                    n,
                    "must be greater than or equal to 1",
                ));
            }
        }
        if success_must_be_one && let Some(n) = p.success_threshold.filter(|n| *n != 1) {
            self.push(FieldError::invalid(
                child(path, "successThreshold"),
                n,
                "must be 1",
            ));
        }
    }

    fn probe_port(&mut self, port: &IntOrString, path: &str) {
        match port {
            IntOrString::Int(n) => self.port_range(*n, path),
            IntOrString::String(s) => {
                if let Some(e) = port_name_error(s) {
                    self.push(FieldError::invalid(path, q(s), e));
                }
            }
        }
    }

    // --- workloads --------------------------------------------------------------------------

    /// Selector present, valid and matching the template's labels; template labels and pod spec
    /// valid; template restartPolicy among `restart_policies`.
    fn workload_template(
        &mut self,
        selector: Option<&metav1::LabelSelector>,
        t: &core::PodTemplateSpec,
        spec_path: &str,
        restart_policies: &[&str],
    ) {
        let tpath = child(spec_path, "template");
        let labels = t
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if let Some(meta) = &t.metadata {
            self.labels(meta.labels.as_ref(), &child(&tpath, "metadata.labels"));
            self.annotations(
                meta.annotations.as_ref(),
                &child(&tpath, "metadata.annotations"),
            );
        }
        if let Some(sel) = selector {
            let sel_path = child(spec_path, "selector");
            let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
                && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
            if empty {
                self.push(FieldError::required(sel_path));
            } else {
                match LabelSelector::from_k8s(sel) {
                    Err(e) => self.push(FieldError::invalid(sel_path, json_of(sel), e.message)),
                    Ok(s) => {
                        if !s.matches(&labels) {
                            self.push(FieldError::invalid(
                                child(&tpath, "metadata.labels"),
                                json_of(&labels),
                                "selector does not match template labels",
                            ));
                        }
                    }
                }
            }
        }
        match &t.spec {
            Some(spec) => {
                let sp = child(&tpath, "spec");
                self.pod_spec(spec, &sp);
                let rp = spec.restart_policy.as_deref().unwrap_or("Always");
                if !restart_policies.contains(&rp) {
                    self.push(FieldError::not_supported(
                        child(&sp, "restartPolicy"),
                        rp,
                        restart_policies,
                    ));
                }
                if spec.active_deadline_seconds.is_some() && restart_policies == ["Always"] {
                    self.push(FieldError::new(
                        child(&sp, "activeDeadlineSeconds"),
                        "Forbidden: not supported for this workload",
                    ));
                }
            }
            None => self.push(FieldError::required(child(&tpath, "spec"))),
        }
    }

    fn int_or_percent(
        &mut self,
        v: Option<&IntOrString>,
        path: &str,
        max_100: bool,
    ) -> Option<(bool, i64)> {
        let v = v?;
        match v {
            IntOrString::Int(n) => {
                if *n < 0 {
                    self.push(FieldError::invalid(
                        path,
                        n,
                        "must be greater than or equal to 0",
                    ));
                }
                Some((false, i64::from(*n)))
            }
            IntOrString::String(s) => {
                let Some(n) = s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()) else {
                    self.push(FieldError::invalid(path, q(s), "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%')"));
                    return None;
                };
                if n < 0 {
                    self.push(FieldError::invalid(
                        path,
                        q(s),
                        "must be greater than or equal to 0",
                    ));
                } else if max_100 && n > 100 {
                    self.push(FieldError::invalid(
                        path,
                        q(s),
                        "must not be greater than 100%",
                    ));
                }
                Some((true, n))
            }
        }
    }

    fn deployment_spec(&mut self, meta: &metav1::ObjectMeta, s: &apps::DeploymentSpec) {
        self.replicas(s.replicas, "spec.replicas");
        self.non_negative(s.min_ready_seconds, "spec.minReadySeconds");
        self.non_negative(s.revision_history_limit, "spec.revisionHistoryLimit");
        if let Some(pd) = s.progress_deadline_seconds
            && pd <= s.min_ready_seconds.unwrap_or(0)
        {
            self.push(FieldError::invalid(
                "spec.progressDeadlineSeconds",
                pd,
                "must be greater than minReadySeconds",
            ));
        }
        self.workload_template(Some(&s.selector), &s.template, "spec", &["Always"]);
        let Some(strategy) = &s.strategy else { return };
        let ty = strategy.type_.as_deref().unwrap_or("RollingUpdate");
        self.one_of(
            Some(ty),
            "spec.strategy.type",
            &["RollingUpdate", "Recreate", "BlueGreen"],
        );
        if ty != "RollingUpdate" && strategy.rolling_update.is_some() {
            self.push(FieldError::new(
                "spec.strategy.rollingUpdate",
                format!("Forbidden: may not be specified when strategy `type` is '{ty}'"),
            ));
        }
        if let Some(ru) = &strategy.rolling_update {
            let p = "spec.strategy.rollingUpdate";
            let surge = self.int_or_percent(ru.max_surge.as_ref(), &child(p, "maxSurge"), false);
            let unavail = self.int_or_percent(
                ru.max_unavailable.as_ref(),
                &child(p, "maxUnavailable"),
                true,
            );
            if matches!(surge, Some((_, 0))) && matches!(unavail, Some((_, 0))) {
                self.push(FieldError::invalid(
                    child(p, "maxUnavailable"),
                    0,
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        if ty == "BlueGreen" {
            let active = meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(BLUE_GREEN_ACTIVE_SERVICE));
            match active {
                None => self.push(FieldError::new(
                    key("metadata.annotations", BLUE_GREEN_ACTIVE_SERVICE),
                    "required when spec.strategy.type is BlueGreen",
                )),
                Some(svc) => {
                    if let Some(e) = dns1035_label_error(svc) {
                        self.push(FieldError::invalid(
                            key("metadata.annotations", BLUE_GREEN_ACTIVE_SERVICE),
                            q(svc),
                            format!("must name a Service: {e}"),
                        ));
                    }
                }
            }
        }
    }

    fn stateful_set_spec(&mut self, s: &apps::StatefulSetSpec) {
        self.replicas(s.replicas, "spec.replicas");
        self.non_negative(s.min_ready_seconds, "spec.minReadySeconds");
        self.non_negative(s.revision_history_limit, "spec.revisionHistoryLimit");
        self.one_of(
            s.pod_management_policy.as_deref(),
            "spec.podManagementPolicy",
            &["OrderedReady", "Parallel"],
        );
        if let Some(u) = &s.update_strategy {
            let ty = u.type_.as_deref().unwrap_or("RollingUpdate");
            self.one_of(
                Some(ty),
                "spec.updateStrategy.type",
                &["RollingUpdate", "OnDelete"],
            );
            if let Some(ru) = &u.rolling_update {
                if ty != "RollingUpdate" {
                    self.push(FieldError::new(
                        "spec.updateStrategy.rollingUpdate",
                        format!(
                            "Forbidden: only allowed for updateStrategy '{}'",
                            "RollingUpdate"
                        ),
                    ));
                }
                self.non_negative(ru.partition, "spec.updateStrategy.rollingUpdate.partition");
                self.int_or_percent(
                    ru.max_unavailable.as_ref(),
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    true,
                );
            }
        }
        if let Some(sn) = s.service_name.as_deref().filter(|s| !s.is_empty())
            && let Some(e) = dns1035_label_error(sn)
        {
            self.push(FieldError::invalid("spec.serviceName", q(sn), e));
        }
        // Claim templates count as volumes for the template's volumeMounts.
        let mut spec = s.template.spec.clone();
        let mut claim_names = HashSet::new();
        for (i, t) in s.volume_claim_templates.iter().flatten().enumerate() {
            let p = format!("spec.volumeClaimTemplates[{i}]");
            let name = t.metadata.name.clone().unwrap_or_default();
            if name.is_empty() {
                self.push(FieldError::required(format!("{p}.metadata.name")));
                continue;
            }
            if let Some(e) = dns1123_label_error(&name) {
                self.push(FieldError::invalid(
                    format!("{p}.metadata.name"),
                    q(&name),
                    e,
                ));
            } else if !claim_names.insert(name.clone()) {
                self.push(FieldError::duplicate(
                    format!("{p}.metadata.name"),
                    q(&name),
                ));
            }
            match &t.spec {
                Some(ps) => self.pvc_spec(ps, &format!("{p}.spec")),
                None => self.push(FieldError::required(format!("{p}.spec"))),
            }
            if let Some(spec) = spec.as_mut()
                && !spec.volumes.iter().flatten().any(|v| v.name == name)
            {
                spec.volumes
                    .get_or_insert_with(Vec::new)
                    .push(core::Volume {
                        name: name.clone(),
                        persistent_volume_claim: Some(core::PersistentVolumeClaimVolumeSource {
                            claim_name: name.clone(),
                            read_only: None,
                        }),
                        ..Default::default()
                    });
            }
        }
        let template = core::PodTemplateSpec {
            metadata: s.template.metadata.clone(),
            spec,
        };
        self.workload_template(Some(&s.selector), &template, "spec", &["Always"]);
    }

    fn job_spec(&mut self, s: &batch::JobSpec, path: &str) {
        self.non_negative(s.parallelism, &child(path, "parallelism"));
        self.non_negative(s.completions, &child(path, "completions"));
        self.non_negative(s.backoff_limit, &child(path, "backoffLimit"));
        self.non_negative(
            s.ttl_seconds_after_finished,
            &child(path, "ttlSecondsAfterFinished"),
        );
        if let Some(n) = s.active_deadline_seconds
            && n <= 0
        {
            self.push(FieldError::invalid(
                child(path, "activeDeadlineSeconds"),
                n,
                "must be greater than 0",
            ));
        }
        self.one_of(
            s.completion_mode.as_deref(),
            &child(path, "completionMode"),
            &["NonIndexed", "Indexed"],
        );
        if s.completion_mode.as_deref() == Some("Indexed") && s.completions.is_none() {
            self.push(FieldError::new(
                child(path, "completions"),
                "required when completion mode is Indexed",
            ));
        }
        let indexed = s.completion_mode.as_deref() == Some("Indexed");
        let completions = i64::from(s.completions.unwrap_or(0));
        if let Some(limit) = s.backoff_limit_per_index {
            self.non_negative(Some(limit), &child(path, "backoffLimitPerIndex"));
            if !indexed {
                self.push(FieldError::invalid(
                    child(path, "backoffLimitPerIndex"),
                    limit,
                    "requires indexed completion mode",
                ));
            }
        }
        if let Some(m) = s.max_failed_indexes {
            let mpath = child(path, "maxFailedIndexes");
            if s.backoff_limit_per_index.is_none() {
                self.push(FieldError::new(
                    child(path, "backoffLimitPerIndex"),
                    "required when maxFailedIndexes is specified",
                ));
            }
            self.non_negative(Some(m), &mpath);
            if indexed && i64::from(m) > completions {
                self.push(FieldError::invalid(
                    mpath,
                    m,
                    "must be less than or equal to completions",
                ));
            }
        }
        if let Some(policy) = &s.success_policy {
            let ppath = child(path, "successPolicy");
            if !indexed {
                self.push(FieldError::invalid(
                    child(path, "completionMode"),
                    q(s.completion_mode.as_deref().unwrap_or("NonIndexed")),
                    "requires indexed completion mode when successPolicy is specified",
                ));
            }
            if policy.rules.is_empty() {
                self.push(FieldError::required(child(&ppath, "rules")));
            } else if policy.rules.len() > 20 {
                self.push(FieldError::new(
                    child(&ppath, "rules"),
                    format!(
                        "Too many: {}: must have at most 20 items",
                        policy.rules.len()
                    ),
                ));
            }
            for (i, rule) in policy.rules.iter().enumerate() {
                let rpath = format!("{ppath}.rules[{i}]");
                let mut listed = None;
                if let Some(list) = &rule.succeeded_indexes {
                    match index_list(list, completions) {
                        Ok(n) => listed = Some(n),
                        Err(e) => self.push(FieldError::invalid(
                            child(&rpath, "succeededIndexes"),
                            q(list),
                            e,
                        )),
                    }
                }
                match rule.succeeded_count {
                    None if rule.succeeded_indexes.is_none() => self.push(FieldError::new(
                        rpath.clone(),
                        "at least one of succeededCount or succeededIndexes must be specified",
                    )),
                    Some(n) => {
                        let cpath = child(&rpath, "succeededCount");
                        self.non_negative(Some(n), &cpath);
                        if indexed && i64::from(n) > completions {
                            self.push(FieldError::invalid(
                                cpath,
                                n,
                                format!("must be less than or equal to {completions} (the number of specified completions)"),
                            ));
                        } else if let Some(listed) = listed
                            && n as usize > listed
                        {
                            self.push(FieldError::invalid(
                                cpath,
                                n,
                                format!("must be less than or equal to {listed} (the number of indexes in the specified succeededIndexes field)"),
                            ));
                        }
                    }
                    None => {}
                }
            }
        }
        if let Some(policy) = &s.pod_failure_policy {
            let restart = s
                .template
                .spec
                .as_ref()
                .and_then(|p| p.restart_policy.as_deref());
            if restart != Some("Never") {
                self.push(FieldError::invalid(
                    format!("{path}.template.spec.restartPolicy"),
                    q(restart.unwrap_or("")),
                    "only \"Never\" is supported when podFailurePolicy is specified",
                ));
            }
            for (i, rule) in policy.rules.iter().enumerate() {
                let rpath = format!("{path}.podFailurePolicy.rules[{i}]");
                self.one_of(
                    Some(rule.action.as_str()),
                    &child(&rpath, "action"),
                    &["FailJob", "Ignore", "Count", "FailIndex"],
                );
                if rule.action == "FailIndex" && s.backoff_limit_per_index.is_none() {
                    self.push(FieldError::invalid(
                        child(&rpath, "action"),
                        q("FailIndex"),
                        "requires the backoffLimitPerIndex to be set",
                    ));
                }
                match (&rule.on_exit_codes, &rule.on_pod_conditions) {
                    (Some(_), Some(c)) if !c.is_empty() => self.push(FieldError::new(
                        rpath.clone(),
                        "specifying both onExitCodes and onPodConditions is not supported",
                    )),
                    (None, None) => self.push(FieldError::new(
                        rpath.clone(),
                        "specifying one of onExitCodes and onPodConditions is required",
                    )),
                    _ => {}
                }
                if let Some(e) = &rule.on_exit_codes {
                    let epath = child(&rpath, "onExitCodes");
                    self.one_of(
                        Some(e.operator.as_str()),
                        &child(&epath, "operator"),
                        &["In", "NotIn"],
                    );
                    if e.values.is_empty() {
                        self.push(FieldError::required(child(&epath, "values")));
                    }
                    if e.operator == "In" && e.values.contains(&0) {
                        self.push(FieldError::invalid(
                            child(&epath, "values"),
                            0,
                            "must not be 0 for the In operator",
                        ));
                    }
                }
            }
        }
        // A Job's selector is normally generated by the server; only check it when given.
        let selector = s.selector.as_ref().filter(|sel| {
            sel.match_labels.as_ref().is_some_and(|m| !m.is_empty())
                || sel
                    .match_expressions
                    .as_ref()
                    .is_some_and(|m| !m.is_empty())
        });
        let mut tmpl = s.template.clone();
        if let Some(spec) = tmpl.spec.as_mut()
            && spec.restart_policy.is_none()
        {
            // Kubernetes requires the field; report it rather than the implied "Always".
            self.push(FieldError::not_supported(
                format!("{path}.template.spec.restartPolicy"),
                "",
                &["OnFailure", "Never"],
            ));
            spec.restart_policy = Some("Never".into());
        }
        self.workload_template(selector, &tmpl, path, &["OnFailure", "Never"]);
    }

    fn cron_job_spec(&mut self, s: &batch::CronJobSpec) {
        if let Some(e) = cron_schedule_error(&s.schedule) {
            if s.schedule.trim().is_empty() {
                self.push(FieldError::required("spec.schedule"));
            } else {
                self.push(FieldError::invalid("spec.schedule", q(&s.schedule), e));
            }
        }
        if let Some(tz) = s.time_zone.as_deref()
            && (tz.is_empty() || tz.contains(' ') || tz.starts_with('/') || tz.contains(".."))
        {
            self.push(FieldError::invalid(
                "spec.timeZone",
                q(tz),
                "unknown time zone",
            ));
        }
        self.one_of(
            s.concurrency_policy.as_deref(),
            "spec.concurrencyPolicy",
            &["Allow", "Forbid", "Replace"],
        );
        self.non_negative(
            s.successful_jobs_history_limit,
            "spec.successfulJobsHistoryLimit",
        );
        self.non_negative(s.failed_jobs_history_limit, "spec.failedJobsHistoryLimit");
        self.non_negative(s.starting_deadline_seconds, "spec.startingDeadlineSeconds");
        if let Some(meta) = &s.job_template.metadata {
            self.labels(meta.labels.as_ref(), "spec.jobTemplate.metadata.labels");
            self.annotations(
                meta.annotations.as_ref(),
                "spec.jobTemplate.metadata.annotations",
            );
        }
        match &s.job_template.spec {
            Some(js) => self.job_spec(js, "spec.jobTemplate.spec"),
            None => self.push(FieldError::required("spec.jobTemplate.spec")),
        }
    }

    // --- services ---------------------------------------------------------------------------

    fn service_spec(&mut self, s: &core::ServiceSpec) {
        let ty = s.type_.as_deref().unwrap_or("ClusterIP");
        self.one_of(
            Some(ty),
            "spec.type",
            &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        );
        self.one_of(
            s.session_affinity.as_deref(),
            "spec.sessionAffinity",
            &["None", "ClientIP"],
        );
        self.one_of(
            s.internal_traffic_policy.as_deref(),
            "spec.internalTrafficPolicy",
            &["Cluster", "Local"],
        );
        self.one_of(
            s.external_traffic_policy.as_deref(),
            "spec.externalTrafficPolicy",
            &["Cluster", "Local"],
        );
        if s.external_traffic_policy.is_some() && !matches!(ty, "NodePort" | "LoadBalancer") {
            self.push(FieldError::new(
                "spec.externalTrafficPolicy",
                "Invalid value: may only be set for externally-accessible services",
            ));
        }
        if s.health_check_node_port.is_some_and(|p| p != 0)
            && !(ty == "LoadBalancer" && s.external_traffic_policy.as_deref() == Some("Local"))
        {
            self.push(FieldError::new(
                "spec.healthCheckNodePort",
                "Invalid value: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
        let headless = s.cluster_ip.as_deref() == Some("None");
        if let Some(ip) = s
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            self.push(FieldError::invalid(
                "spec.clusterIP",
                q(ip),
                "must be empty, 'None', or a valid IP address",
            ));
        }
        for (i, ip) in s.cluster_ips.iter().flatten().enumerate() {
            if ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
                self.push(FieldError::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    q(ip),
                    "must be 'None' or a valid IP address",
                ));
            }
        }
        for (i, f) in s.ip_families.iter().flatten().enumerate() {
            self.one_of(Some(f), &format!("spec.ipFamilies[{i}]"), &["IPv4", "IPv6"]);
        }
        self.one_of(
            s.ip_family_policy.as_deref(),
            "spec.ipFamilyPolicy",
            &["SingleStack", "PreferDualStack", "RequireDualStack"],
        );
        if ty == "ExternalName" {
            match s.external_name.as_deref().filter(|n| !n.is_empty()) {
                None => self.push(FieldError::required("spec.externalName")),
                Some(n) => {
                    if let Some(e) = dns1123_subdomain_error(n.trim_end_matches('.')) {
                        self.push(FieldError::invalid("spec.externalName", q(n), e));
                    }
                }
            }
        }
        let ports = s.ports.as_deref().unwrap_or(&[]);
        if ports.is_empty() && ty != "ExternalName" && !headless {
            self.push(FieldError::required("spec.ports"));
        }
        let mut names = HashSet::new();
        let mut seen = HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let pp = format!("spec.ports[{i}]");
            match p.name.as_deref().filter(|n| !n.is_empty()) {
                None if ports.len() > 1 => self.push(FieldError::required(child(&pp, "name"))),
                None => {}
                Some(n) => {
                    if let Some(e) = dns1123_label_error(n) {
                        self.push(FieldError::invalid(child(&pp, "name"), q(n), e));
                    } else if !names.insert(n.to_string()) {
                        self.push(FieldError::duplicate(child(&pp, "name"), q(n)));
                    }
                }
            }
            self.port_range(p.port, &child(&pp, "port"));
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            self.one_of(Some(proto), &child(&pp, "protocol"), PROTOCOLS);
            if !seen.insert((p.port, proto.to_string())) {
                self.push(FieldError::duplicate(
                    &pp,
                    format!("{{port: {}, protocol: {proto}}}", p.port),
                ));
            }
            if let Some(np) = p.node_port.filter(|n| *n != 0) {
                if !matches!(ty, "NodePort" | "LoadBalancer") {
                    self.push(FieldError::new(
                        child(&pp, "nodePort"),
                        format!("Forbidden: may not be used when `type` is '{ty}'"),
                    ));
                } else if !(30000..=32767).contains(&np) {
                    self.push(FieldError::invalid(
                        child(&pp, "nodePort"),
                        np,
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    ));
                }
            }
            if let Some(tp) = &p.target_port {
                match tp {
                    // A defaulted targetPort equals port, whose problem is already reported.
                    IntOrString::Int(n) if *n == p.port => {}
                    IntOrString::Int(n) => self.port_range(*n, &child(&pp, "targetPort")),
                    IntOrString::String(s) => {
                        if let Some(e) = port_name_error(s) {
                            self.push(FieldError::invalid(child(&pp, "targetPort"), q(s), e));
                        }
                    }
                }
            }
        }
        self.labels(s.selector.as_ref(), "spec.selector");
    }

    // --- config and storage -----------------------------------------------------------------

    fn config_map(&mut self, o: &core::ConfigMap) {
        let mut total = 0usize;
        for (k, v) in o.data.iter().flatten() {
            if let Some(e) = config_key_error(k) {
                self.push(FieldError::invalid(key("data", k), q(k), e));
            }
            total += v.len();
        }
        for (k, v) in o.binary_data.iter().flatten() {
            if let Some(e) = config_key_error(k) {
                self.push(FieldError::invalid(key("binaryData", k), q(k), e));
            }
            if o.data.as_ref().is_some_and(|d| d.contains_key(k)) {
                self.push(FieldError::new(
                    key("data", k),
                    "Invalid value: duplicate of key present in binaryData",
                ));
            }
            total += v.0.len();
        }
        if total > 1024 * 1024 {
            self.push(FieldError::new(
                "data",
                format!("Too long: must have at most 1048576 bytes, found {total}"),
            ));
        }
    }

    fn secret(&mut self, o: &core::Secret) {
        let mut keys = BTreeSet::new();
        let mut total = 0usize;
        for (k, v) in o.data.iter().flatten() {
            if let Some(e) = config_key_error(k) {
                self.push(FieldError::invalid(key("data", k), q(k), e));
            }
            keys.insert(k.as_str());
            total += v.0.len();
        }
        for (k, v) in o.string_data.iter().flatten() {
            if let Some(e) = config_key_error(k) {
                self.push(FieldError::invalid(key("stringData", k), q(k), e));
            }
            keys.insert(k.as_str());
            total += v.len();
        }
        if total > 1024 * 1024 {
            self.push(FieldError::new(
                "data",
                format!("Too long: must have at most 1048576 bytes, found {total}"),
            ));
        }
        let required: &[&str] = match o.type_.as_deref().unwrap_or("Opaque") {
            "" => {
                self.push(FieldError::required("type"));
                &[]
            }
            "kubernetes.io/tls" => &["tls.crt", "tls.key"],
            "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
            "kubernetes.io/dockercfg" => &[".dockercfg"],
            "kubernetes.io/basic-auth" => &[],
            "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
            _ => &[],
        };
        for k in required {
            if !keys.contains(k) {
                self.push(FieldError::required(key("data", k)));
            }
        }
    }

    fn pvc_spec(&mut self, s: &core::PersistentVolumeClaimSpec, path: &str) {
        self.access_modes(s.access_modes.as_deref(), &child(path, "accessModes"));
        self.one_of(
            s.volume_mode.as_deref(),
            &child(path, "volumeMode"),
            &["Filesystem", "Block"],
        );
        let storage = s
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"));
        let rpath = key(&child(path, "resources.requests"), "storage");
        match storage {
            None if s.data_source.is_none() && s.data_source_ref.is_none() => {
                self.push(FieldError::required(rpath))
            }
            None => {}
            Some(qty) => match parse_quantity(&qty.0) {
                Some(n) if n > 0.0 => {}
                Some(_) => self.push(FieldError::invalid(
                    rpath,
                    q(&qty.0),
                    "must be greater than zero",
                )),
                None => self.push(FieldError::invalid(
                    rpath,
                    q(&qty.0),
                    "not a valid quantity",
                )),
            },
        }
        if let Some(sel) = &s.selector
            && let Err(e) = LabelSelector::from_k8s(sel)
        {
            self.push(FieldError::invalid(
                child(path, "selector"),
                json_of(sel),
                e.message,
            ));
        }
    }

    fn access_modes(&mut self, modes: Option<&[String]>, path: &str) {
        let modes = modes.unwrap_or(&[]);
        if modes.is_empty() {
            self.push(FieldError::required(path));
        }
        for (i, m) in modes.iter().enumerate() {
            self.one_of(
                Some(m),
                &index(path, i),
                &[
                    "ReadWriteOnce",
                    "ReadOnlyMany",
                    "ReadWriteMany",
                    "ReadWriteOncePod",
                ],
            );
        }
    }

    fn persistent_volume(&mut self, raw: &Value, o: &core::PersistentVolume) {
        let Some(s) = &o.spec else {
            self.push(FieldError::required("spec"));
            return;
        };
        self.access_modes(s.access_modes.as_deref(), "spec.accessModes");
        match s.capacity.as_ref().and_then(|c| c.get("storage")) {
            None => self.push(FieldError::required("spec.capacity[storage]")),
            Some(qty) => {
                if parse_quantity(&qty.0).is_none_or(|n| n <= 0.0) {
                    self.push(FieldError::invalid(
                        "spec.capacity[storage]",
                        q(&qty.0),
                        "must be greater than zero",
                    ));
                }
            }
        }
        self.one_of(
            s.persistent_volume_reclaim_policy.as_deref(),
            "spec.persistentVolumeReclaimPolicy",
            &["Retain", "Delete", "Recycle"],
        );
        self.one_of(
            s.volume_mode.as_deref(),
            "spec.volumeMode",
            &["Filesystem", "Block"],
        );
        const NOT_SOURCES: &[&str] = &[
            "accessModes",
            "capacity",
            "claimRef",
            "mountOptions",
            "nodeAffinity",
            "persistentVolumeReclaimPolicy",
            "storageClassName",
            "volumeAttributesClassName",
            "volumeMode",
        ];
        let sources = raw
            .get("spec")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(k, v)| !v.is_null() && !NOT_SOURCES.contains(&k.as_str()))
                    .count()
            })
            .unwrap_or(0);
        if sources == 0 {
            self.push(FieldError::new(
                "spec",
                "required: must specify a volume type",
            ));
        } else if sources > 1 {
            self.push(FieldError::new(
                "spec",
                "may not specify more than 1 volume type",
            ));
        }
        if let Some(hp) = &s.host_path
            && !hp.path.starts_with('/')
        {
            self.push(FieldError::invalid(
                "spec.hostPath.path",
                q(&hp.path),
                "must be an absolute path",
            ));
        }
        if let Some(l) = &s.local
            && !l.path.starts_with('/')
        {
            self.push(FieldError::invalid(
                "spec.local.path",
                q(&l.path),
                "must be an absolute path",
            ));
        }
    }

    // --- rbac -------------------------------------------------------------------------------

    fn policy_rules(&mut self, rules: Option<&[rbac::v1::PolicyRule]>) {
        for (i, r) in rules.into_iter().flatten().enumerate() {
            let p = format!("rules[{i}]");
            if r.verbs.is_empty() {
                self.push(FieldError::required(child(&p, "verbs")));
            }
            let has_urls = r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty());
            let has_resources = r.resources.as_ref().is_some_and(|u| !u.is_empty());
            if has_urls && has_resources {
                self.push(FieldError::new(
                    child(&p, "nonResourceURLs"),
                    "Invalid value: rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            if !has_urls && !has_resources {
                self.push(FieldError::required(child(&p, "resources")));
            }
            if has_resources && r.api_groups.as_ref().is_none_or(|g| g.is_empty()) {
                self.push(FieldError::required(child(&p, "apiGroups")));
            }
        }
    }

    fn role_ref(&mut self, r: &rbac::v1::RoleRef, kinds: &[&str]) {
        self.one_of(Some(&r.kind), "roleRef.kind", kinds);
        if r.name.is_empty() {
            self.push(FieldError::required("roleRef.name"));
        } else if let Some(e) = path_segment_error(&r.name) {
            self.push(FieldError::invalid("roleRef.name", q(&r.name), e));
        }
        self.one_of(
            Some(&r.api_group),
            "roleRef.apiGroup",
            &["rbac.authorization.k8s.io"],
        );
    }

    fn subjects(&mut self, subjects: Option<&[rbac::v1::Subject]>) {
        for (i, s) in subjects.into_iter().flatten().enumerate() {
            let p = format!("subjects[{i}]");
            self.one_of(
                Some(&s.kind),
                &child(&p, "kind"),
                &["User", "Group", "ServiceAccount"],
            );
            if s.name.is_empty() {
                self.push(FieldError::required(child(&p, "name")));
            }
            if s.kind == "ServiceAccount" {
                if let Some(e) = dns1123_subdomain_error(&s.name) {
                    self.push(FieldError::invalid(child(&p, "name"), q(&s.name), e));
                }
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    self.one_of(s.api_group.as_deref(), &child(&p, "apiGroup"), &[""]);
                }
            }
        }
    }
}

/// A Job's index list (`0,2-4`): ascending, non-overlapping intervals of indexes below
/// `completions`; the number of indexes, or what is wrong.
fn index_list(list: &str, completions: i64) -> Result<usize, String> {
    let mut next = 0i64;
    let mut count = 0usize;
    for part in list.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>()) else {
            return Err(format!("{part:?} is not an index or a range of indexes"));
        };
        if a < next || b < a {
            return Err("must be ascending, non-overlapping intervals".into());
        }
        if b >= completions {
            return Err(format!("must be less than {completions} (completions)"));
        }
        count += (b - a + 1) as usize;
        next = b + 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// manifest text -> decode -> defaults -> validate; the error strings (empty when valid).
    fn check_yaml(text: &str) -> Vec<String> {
        let docs = crate::manifest::parse_documents(text).expect("parses");
        let mut out = Vec::new();
        for doc in docs {
            let (info, mut obj) =
                crate::strict::decode(&doc).unwrap_or_else(|e| panic!("decode: {e}"));
            crate::defaults::apply(info, &mut obj);
            if let Err(e) = validate(info, &obj) {
                out.extend(e.iter().map(|e| e.to_string()));
            }
        }
        out
    }

    #[test]
    fn admit_pipeline() {
        let (info, obj) = admit(&deployment()).expect("valid");
        assert_eq!(info.kind, "Deployment");
        assert_eq!(obj["spec"]["strategy"]["type"], json!("RollingUpdate"));
        let mut bad = deployment();
        bad["spec"]["replicaz"] = json!(1);
        assert_eq!(
            admit(&bad).unwrap_err().to_string(),
            r#"spec.replicaz: unknown field "spec.replicaz""#
        );
    }

    #[test]
    fn kubectl_dry_run_output_is_valid() {
        // `kubectl create deployment web --image=nginx --dry-run=client -o yaml`
        let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  creationTimestamp: null
  labels:
    app: web
  name: web
spec:
  replicas: 1
  selector:
    matchLabels:
      app: web
  strategy: {}
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: web
    spec:
      containers:
      - image: nginx
        name: nginx
        resources: {}
status: {}
"#;
        assert_eq!(check_yaml(text), Vec::<String>::new());
    }

    fn check(v: Value) -> Vec<String> {
        check_yaml(&v.to_string())
    }

    fn has(errs: &[String], needle: &str) -> bool {
        errs.iter().any(|e| e.contains(needle))
    }

    const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app.kubernetes.io/name: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, tier: frontend}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - {name: http, containerPort: 80}
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
        resources:
          requests: {cpu: 100m, memory: 128Mi}
          limits: {cpu: "1", memory: 256Mi}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
        livenessProbe:
          tcpSocket: {port: 80}
          initialDelaySeconds: 5
        volumeMounts:
        - {name: config, mountPath: /etc/nginx/conf.d, readOnly: true}
        - {name: cache, mountPath: /var/cache/nginx}
      volumes:
      - name: config
        configMap: {name: web-config, defaultMode: 0644}
      - name: cache
        emptyDir: {sizeLimit: 1Gi}
"#;

    fn deployment() -> Value {
        crate::manifest::parse_documents(DEPLOYMENT)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn real_manifests_are_valid() {
        assert_eq!(check_yaml(DEPLOYMENT), Vec::<String>::new());
        let text = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: postgres
        image: postgres:16
        volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 10Gi}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: backup}
spec:
  schedule: "0 3 * * 1-5"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: backup, image: "busybox:1.36", args: [sh, -c, date]}]
---
apiVersion: v1
kind: Secret
metadata: {name: db}
type: Opaque
data: {password: cGFzc3dvcmQ=}
stringData: {username: admin}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data:
  default.conf: |
    server { listen 80; }
  LOG_LEVEL: info
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:pod-reader"}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read-pods, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:pod-reader"}
subjects:
- {kind: ServiceAccount, name: default, namespace: team-a}
- {kind: User, name: alice@example.com}
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv0}
spec:
  capacity: {storage: 5Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /mnt/data}
---
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: scheduler, namespace: kube-system}
spec: {holderIdentity: node-1, leaseDurationSeconds: 15}
"#;
        assert_eq!(check_yaml(text), Vec::<String>::new());
    }

    #[test]
    fn names_and_metadata() {
        let mut d = deployment();
        d["metadata"]["name"] = json!("Web_Server");
        d["metadata"]["namespace"] = json!("Team.A");
        d["metadata"]["labels"] = json!({"-bad": "x", "ok": "bad value!"});
        d["metadata"]["annotations"] = json!({"a/b/c": "x"});
        let errs = check(d);
        assert!(
            has(
                &errs,
                r#"metadata.name: Invalid value: "Web_Server": a lowercase RFC 1123 subdomain"#
            ),
            "{errs:?}"
        );
        assert!(
            has(&errs, r#"metadata.namespace: Invalid value: "Team.A""#),
            "{errs:?}"
        );
        assert!(
            has(&errs, r#"metadata.labels: Invalid value: "-bad""#),
            "{errs:?}"
        );
        assert!(
            has(&errs, r#"metadata.labels[ok]: Invalid value: "bad value!""#),
            "{errs:?}"
        );
        assert!(
            has(&errs, r#"metadata.annotations: Invalid value: "a/b/c""#),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 5, "{errs:?}");

        let mut d = deployment();
        d["metadata"].as_object_mut().unwrap().remove("name");
        assert_eq!(
            check(d.clone()),
            vec!["metadata.name: required (or metadata.generateName)"]
        );
        d["metadata"]["generateName"] = json!("web-");
        assert_eq!(check(d), Vec::<String>::new());

        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1web"},
            "spec": {"ports": [{"port": 80}]}});
        assert!(has(&check(svc), "DNS-1035"));
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}});
        assert!(has(
            &check(ns),
            "metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label"
        ));
    }

    #[test]
    fn containers_ports_probes_resources_volumes() {
        let mut d = deployment();
        let c = &mut d["spec"]["template"]["spec"]["containers"];
        c[0]["image"] = json!("");
        c[0]["ports"][0]["containerPort"] = json!(70000);
        c[0]["resources"]["requests"]["memory"] = json!("512Mi");
        c[0]["readinessProbe"]["exec"] = json!({"command": ["true"]});
        c[0]["livenessProbe"] = json!({"periodSeconds": 3});
        c[0]["volumeMounts"][1]["name"] = json!("missing");
        c[0]["resources"]["limits"]["gpu"] = json!("lots");
        c.as_array_mut()
            .unwrap()
            .push(json!({"name": "nginx", "image": "x"}));
        c.as_array_mut()
            .unwrap()
            .push(json!({"name": "Bad_Name", "image": "x"}));
        d["spec"]["template"]["spec"]["volumes"][1]["name"] = json!("config");
        let errs = check(d);
        let want = [
            "spec.template.spec.containers[0].image: required",
            "spec.template.spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
            r#"spec.template.spec.containers[0].resources.requests[memory]: Invalid value: "512Mi": must be less than or equal to memory limit of 256Mi"#,
            r#"spec.template.spec.containers[0].resources.limits[gpu]: Invalid value: "lots""#,
            "spec.template.spec.containers[0].readinessProbe: Forbidden: may not specify more than 1 handler type",
            "spec.template.spec.containers[0].livenessProbe: required: must specify a handler type",
            r#"spec.template.spec.containers[0].volumeMounts[1].name: Not found: "missing""#,
            r#"spec.template.spec.containers[1].name: Duplicate value: "nginx""#,
            r#"spec.template.spec.containers[2].name: Invalid value: "Bad_Name""#,
            r#"spec.template.spec.volumes[1].name: Duplicate value: "config""#,
        ];
        for w in want {
            assert!(has(&errs, w), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn empty_containers_and_bad_restart_policy() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [], "restartPolicy": "Sometimes"}});
        let errs = check(pod);
        assert!(has(&errs, "spec.containers: required"), "{errs:?}");
        assert!(
            has(
                &errs,
                r#"spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never""#
            ),
            "{errs:?}"
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        assert_eq!(check(pod), vec!["spec: required"]);
    }

    #[test]
    fn workload_selectors() {
        let mut d = deployment();
        d["spec"]["selector"] = json!({"matchLabels": {"app": "api"}});
        let errs = check(d);
        assert_eq!(
            errs,
            vec![
                r#"spec.template.metadata.labels: Invalid value: {"app":"web","tier":"frontend"}: selector does not match template labels"#
            ]
        );

        let mut d = deployment();
        d["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(check(d), vec!["spec.selector: required"]);

        let mut d = deployment();
        d["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]},
                                                            {"key": "canary", "operator": "DoesNotExist"}]});
        assert_eq!(check(d), Vec::<String>::new());

        let mut d = deployment();
        d["spec"]["selector"] =
            json!({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["w"]}]});
        assert!(has(&check(d), "spec.selector: Invalid value"));

        let mut d = deployment();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        let errs = check(d);
        assert!(
            has(
                &errs,
                "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                r#"spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always""#
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn deployment_strategies() {
        let mut d = deployment();
        d["spec"]["strategy"] = json!({"type": "Canary"});
        assert!(has(
            &check(d),
            r#"spec.strategy.type: Unsupported value: "Canary": supported values: "RollingUpdate", "Recreate", "BlueGreen""#
        ));

        let mut d = deployment();
        d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
        assert!(has(
            &check(d),
            "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
        ));

        let mut d = deployment();
        d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "150%", "maxSurge": "x"}});
        let errs = check(d);
        assert!(
            has(
                &errs,
                "maxUnavailable: Invalid value: \"150%\": must not be greater than 100%"
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "maxSurge: Invalid value: \"x\": a valid percent string"
            ),
            "{errs:?}"
        );

        let mut d = deployment();
        d["spec"]["strategy"] = json!({"type": "BlueGreen"});
        assert_eq!(
            check(d.clone()),
            vec![
                "metadata.annotations[ferry.dev/active-service]: required when spec.strategy.type is BlueGreen"
            ]
        );
        d["metadata"]["annotations"] = json!({"ferry.dev/active-service": "web"});
        assert_eq!(check(d.clone()), Vec::<String>::new());
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 1});
        assert!(has(
            &check(d),
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'BlueGreen'"
        ));
    }

    #[test]
    fn services() {
        let svc = |spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec});
        let errs = check(svc(json!({
            "type": "ClusterIP",
            "ports": [{"port": 0}, {"name": "a", "port": 80, "protocol": "HTTP", "nodePort": 30001},
                      {"name": "a", "port": 81, "targetPort": 70000}],
            "selector": {"app": "bad value"}
        })));
        let want = [
            "spec.ports[0].name: required",
            "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
            r#"spec.ports[1].protocol: Unsupported value: "HTTP""#,
            "spec.ports[1].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
            r#"spec.ports[2].name: Duplicate value: "a""#,
            "spec.ports[2].targetPort: Invalid value: 70000",
            r#"spec.selector[app]: Invalid value: "bad value""#,
        ];
        for w in want {
            assert!(has(&errs, w), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");

        let errs = check(svc(
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
        ));
        assert!(
            has(
                &errs,
                "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"
            ),
            "{errs:?}"
        );
        let errs = check(svc(json!({"type": "Magic", "ports": [{"port": 80}]})));
        assert!(
            has(&errs, r#"spec.type: Unsupported value: "Magic""#),
            "{errs:?}"
        );
        assert_eq!(
            check(svc(json!({"ports": []}))),
            vec!["spec.ports: required"]
        );
        assert_eq!(
            check(svc(json!({"clusterIP": "None", "selector": {"app": "x"}}))),
            Vec::<String>::new()
        );
        assert_eq!(
            check(svc(
                json!({"type": "ExternalName", "externalName": "db.example.com"})
            )),
            Vec::<String>::new()
        );
        assert_eq!(
            check(svc(json!({"type": "ExternalName"}))),
            vec!["spec.externalName: required"]
        );
        assert!(has(
            &check(svc(
                json!({"clusterIP": "10.0.0.300", "ports": [{"port": 1}]})
            )),
            "spec.clusterIP"
        ));
    }

    #[test]
    fn daemonset_surge_and_unavailable_are_not_both_zero() {
        let ds = |ru: Value| {
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "d"},
                "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": ru},
                    "template": {"metadata": {"labels": {"a": "b"}},
                        "spec": {"containers": [{"name": "c", "image": "x"}]}}}})
        };
        assert_eq!(
            check(ds(json!({"maxSurge": 1, "maxUnavailable": 0}))),
            Vec::<String>::new()
        );
        assert!(has(
            &check(ds(json!({"maxSurge": 0, "maxUnavailable": 0}))),
            "spec.updateStrategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"
        ));
        assert!(has(
            &check(ds(json!({"maxSurge": "150%"}))),
            "spec.updateStrategy.rollingUpdate.maxSurge: Invalid value"
        ));
    }

    /// `job` with `restartPolicy: Never` (valid).
    fn ok_job(job: &Value) -> Value {
        let mut j = job.clone();
        j["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        j
    }

    #[test]
    fn jobs_and_cronjobs() {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "busybox"}]}}}});
        assert_eq!(
            check(job.clone()),
            vec![
                r#"spec.template.spec.restartPolicy: Unsupported value: "Always": supported values: "OnFailure", "Never""#
            ]
        );
        let mut ok = job.clone();
        ok["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        assert_eq!(check(ok.clone()), Vec::<String>::new());
        ok["spec"]["backoffLimit"] = json!(-2);
        assert!(has(&check(ok), "spec.backoffLimit: Invalid value: -2"));
        let mut policy = job.clone();
        policy["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        policy["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 42]}},
            {"action": "Explode", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "Ignore"}]});
        let errs = check(policy.clone());
        assert!(
            has(
                &errs,
                "spec.template.spec.restartPolicy: Invalid value: \"OnFailure\": only \"Never\""
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "spec.podFailurePolicy.rules[0].onExitCodes.values: Invalid value: 0"
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "spec.podFailurePolicy.rules[1].action: Unsupported value: \"Explode\""
            ),
            "{errs:?}"
        );
        assert!(
            has(
                &errs,
                "spec.podFailurePolicy.rules[2]: specifying one of onExitCodes and onPodConditions is required"
            ),
            "{errs:?}"
        );
        policy["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        policy["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "a", "operator": "In", "values": [42]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]});
        assert_eq!(check(policy), Vec::<String>::new());

        // Indexed-only knobs: per-index back-off limits and success policies.
        let mut indexed = ok_job(&job);
        indexed["spec"]["completionMode"] = json!("Indexed");
        indexed["spec"]["completions"] = json!(5);
        indexed["spec"]["backoffLimitPerIndex"] = json!(1);
        indexed["spec"]["maxFailedIndexes"] = json!(2);
        indexed["spec"]["successPolicy"] = json!({"rules": [{"succeededIndexes": "0,2-4", "succeededCount": 2}, {"succeededCount": 5}]});
        indexed["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]});
        assert_eq!(check(indexed.clone()), Vec::<String>::new());
        let mut bad = indexed.clone();
        bad["spec"]["maxFailedIndexes"] = json!(9);
        bad["spec"]["successPolicy"] = json!({"rules": [
            {"succeededIndexes": "3,1"}, {"succeededIndexes": "0-9"},
            {"succeededIndexes": "0", "succeededCount": 2}, {}]});
        let errs = check(bad);
        for want in [
            "spec.maxFailedIndexes: Invalid value: 9: must be less than or equal to completions",
            "spec.successPolicy.rules[0].succeededIndexes: Invalid value: \"3,1\": must be ascending",
            "spec.successPolicy.rules[1].succeededIndexes: Invalid value: \"0-9\": must be less than 5",
            "spec.successPolicy.rules[2].succeededCount: Invalid value: 2: must be less than or equal to 1",
            "spec.successPolicy.rules[3]: at least one of succeededCount or succeededIndexes",
        ] {
            assert!(has(&errs, want), "{want} in {errs:?}");
        }
        let mut plain = ok_job(&job);
        plain["spec"]["backoffLimitPerIndex"] = json!(1);
        plain["spec"]["successPolicy"] = json!({"rules": [{"succeededCount": 1}]});
        plain["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]});
        let errs = check(plain.clone());
        for want in [
            "spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode",
            "spec.completionMode: Invalid value: \"NonIndexed\": requires indexed completion mode",
        ] {
            assert!(has(&errs, want), "{want} in {errs:?}");
        }
        plain["spec"]
            .as_object_mut()
            .map(|m| m.remove("backoffLimitPerIndex"));
        plain["spec"]["maxFailedIndexes"] = json!(1);
        let errs = check(plain);
        for want in [
            "spec.backoffLimitPerIndex: required when maxFailedIndexes is specified",
            "spec.podFailurePolicy.rules[0].action: Invalid value: \"FailIndex\": requires the backoffLimitPerIndex",
        ] {
            assert!(has(&errs, want), "{want} in {errs:?}");
        }

        let cron = |schedule: &str| {
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                "spec": {"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure", "containers": [{"name": "a", "image": "busybox"}]}}}}}})
        };
        for good in [
            "*/5 * * * *",
            "0 0 1 1 *",
            "0 9-17/2 * JAN-jun mon-fri",
            "@hourly",
            "@every 1h30m",
            "15 3 ? * 0,6",
        ] {
            assert_eq!(check(cron(good)), Vec::<String>::new(), "{good}");
        }
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7-1",
            "@sometimes",
            "TZ=UTC 0 * * * *",
            "*/0 * * * *",
            "",
        ] {
            let errs = check(cron(bad));
            assert!(has(&errs, "spec.schedule"), "{bad:?}: {errs:?}");
        }
        let mut c = cron("@daily");
        c["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        assert!(has(
            &check(c),
            "spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"Always\""
        ));
        let mut c = cron("@daily");
        c["metadata"]["name"] = json!("a".repeat(53));
        assert!(has(&check(c), "must be no more than 52 characters"));
    }

    #[test]
    fn configmap_and_secret_keys() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"good.key": "1", "bad/key": "2", "..": "3"}, "binaryData": {"good.key": "AA=="}});
        let errs = check(cm);
        assert!(
            has(&errs, r#"data[bad/key]: Invalid value: "bad/key""#),
            "{errs:?}"
        );
        assert!(has(&errs, r#"data[..]"#), "{errs:?}");
        assert!(
            has(
                &errs,
                "data[good.key]: Invalid value: duplicate of key present in binaryData"
            ),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 3);

        let tls = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "x", "bad key": "y"}});
        let errs = check(tls);
        assert!(has(&errs, "data[tls.key]: required"), "{errs:?}");
        assert!(
            has(&errs, r#"data[bad key]: Invalid value: "bad key""#),
            "{errs:?}"
        );
    }

    #[test]
    fn statefulset_and_storage() {
        let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "podManagementPolicy": "Random",
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "pg", "image": "pg",
                    "volumeMounts": [{"name": "data", "mountPath": "/d"}, {"name": "logs", "mountPath": "/l"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteEventually"]}}]}});
        let errs = check(sts);
        let want = [
            r#"spec.podManagementPolicy: Unsupported value: "Random""#,
            r#"spec.volumeClaimTemplates[0].spec.accessModes[0]: Unsupported value: "ReadWriteEventually""#,
            "spec.volumeClaimTemplates[0].spec.resources.requests[storage]: required",
            r#"spec.template.spec.containers[0].volumeMounts[1].name: Not found: "logs""#,
        ];
        for w in want {
            assert!(has(&errs, w), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");

        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "v"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"]}});
        assert_eq!(
            check(pv),
            vec!["spec: required: must specify a volume type"]
        );
    }

    #[test]
    fn rbac() {
        let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ""},
            "subjects": [{"kind": "Robot", "name": "r2"}]});
        let errs = check(rb);
        assert!(
            has(
                &errs,
                r#"roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole""#
            ),
            "{errs:?}"
        );
        assert!(has(&errs, "roleRef.name: required"), "{errs:?}");
        assert!(
            has(&errs, r#"subjects[0].kind: Unsupported value: "Robot""#),
            "{errs:?}"
        );
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}]});
        assert_eq!(check(role), vec!["rules[0].verbs: required"]);
    }

    #[test]
    fn syntax_helpers() {
        assert!(dns1123_label_error("my-name").is_none());
        assert!(dns1123_label_error("My-name").is_some());
        assert!(dns1123_label_error(&"a".repeat(64)).is_some());
        assert!(dns1123_subdomain_error("a.b-c.d").is_none());
        assert!(dns1123_subdomain_error("a..b").is_some());
        assert!(dns1035_label_error("a1").is_none());
        assert!(dns1035_label_error("1a").is_some());
        assert!(label_key_error("app.kubernetes.io/name").is_none());
        assert!(label_key_error("Example_Key.1").is_none());
        assert!(label_key_error("/name").is_some());
        assert!(label_key_error("UPPER.io/name").is_some());
        assert!(label_value_error("").is_none());
        assert!(label_value_error("v1.2_3-x").is_none());
        assert!(label_value_error("-x").is_some());
        assert!(port_name_error("http").is_none());
        assert!(port_name_error("8080").is_some());
        assert!(port_name_error("a--b").is_some());
        assert!(port_name_error("averyverylongname").is_some());
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("1Ki"), Some(1024.0));
        assert_eq!(
            parse_quantity("1.5Gi"),
            Some(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("-1"), Some(-1.0));
        assert_eq!(parse_quantity("1KB"), None);
        assert_eq!(parse_quantity(""), None);
        assert_eq!(parse_quantity("1.2.3"), None);
        assert_eq!(parse_quantity("--1"), None);
        assert!(parse_quantity("1G").unwrap() < parse_quantity("1Gi").unwrap());
    }
}
