//! Per-user rate limits on the API: a token bucket per authenticated user name. Cluster
//! administrators and control-plane members are exempt (as Kubernetes' priority-and-fairness
//! exempts `system:masters`), so a runaway client cannot starve the cluster's operators.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::pki::{GROUP_MASTERS, GROUP_MEMBERS, UserInfo};

pub struct RateLimiter {
    qps: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `qps` requests per second sustained, `burst` at once; `qps == 0` disables limiting.
    pub fn new(qps: f64, burst: f64) -> Self {
        Self {
            qps,
            burst: burst.max(1.0),
            buckets: Mutex::default(),
        }
    }

    /// Ok, or the error message for a refused request.
    pub fn check(&self, user: &UserInfo) -> Result<(), String> {
        if self.qps <= 0.0 || user.in_group(GROUP_MASTERS) || user.in_group(GROUP_MEMBERS) {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets
            .entry(user.name.clone())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.qps).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(format!(
                "rate limit exceeded for user {:?}: {} requests/s, burst {}; retry shortly",
                user.name, self.qps, self.burst
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_refuses_and_exempts_admins() {
        let rl = RateLimiter::new(1.0, 3.0);
        let alice = UserInfo {
            name: "alice".into(),
            groups: vec![],
        };
        assert!((0..3).all(|_| rl.check(&alice).is_ok()));
        let err = rl.check(&alice).expect_err("over the burst");
        assert!(err.contains("alice"), "{err}");
        let bob = UserInfo {
            name: "bob".into(),
            groups: vec![],
        };
        assert!(rl.check(&bob).is_ok(), "buckets are per user");
        let admin = UserInfo {
            name: "root".into(),
            groups: vec![GROUP_MASTERS.into()],
        };
        assert!((0..100).all(|_| rl.check(&admin).is_ok()));
        assert!(
            RateLimiter::new(0.0, 1.0).check(&alice).is_ok(),
            "0 disables"
        );
    }
}
