//! Per-address request rate limit: a token bucket per client address, in memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Forget idle addresses once the table grows past this.
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        RateLimiter { per_second: per_minute as f64 / 60.0, burst: burst.max(1) as f64, buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one request's token: `Ok` or `Err(seconds until the next token)`.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(addr).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_the_sustained_rate_per_address() {
        let rl = RateLimiter::new(60, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(rl.check(a, t).is_ok());
        }
        assert_eq!(rl.check(a, t), Err(1));
        assert!(rl.check(b, t).is_ok(), "addresses have separate buckets");
        assert!(rl.check(a, t + Duration::from_millis(1100)).is_ok(), "one request per second refills");
        assert!(rl.check(a, t + Duration::from_millis(1200)).is_err());
    }
}
