//! Prometheus metrics in the text exposition format: counters kept in memory, job gauges read
//! from the database when scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the step-time histogram's buckets.
const STEP_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    step_buckets: [AtomicU64; STEP_BUCKETS.len()],
    step_count: AtomicU64,
    /// Sum of step seconds, in microseconds.
    step_sum_us: AtomicU64,
    tokens_spent: AtomicU64,
    jobs_finished: [AtomicU64; 3],
    requests_rate_limited: AtomicU64,
    openai_image_requests: AtomicU64,
}

impl Metrics {
    pub fn observe_step(&self, seconds: f64) {
        for (b, bound) in self.step_buckets.iter().zip(STEP_BUCKETS) {
            if seconds <= bound {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.step_count.fetch_add(1, Ordering::Relaxed);
        self.step_sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn tokens_spent(&self, tokens: i64) {
        self.tokens_spent.fetch_add(tokens.max(0) as u64, Ordering::Relaxed);
    }

    /// 0 succeeded, 1 failed, 2 canceled.
    pub fn job_finished(&self, outcome: usize) {
        self.jobs_finished[outcome.min(2)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn openai_image_request(&self) {
        self.openai_image_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rate_limited(&self) {
        self.requests_rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text, with the job counts by status from the store.
    pub fn render(&self, jobs_by_status: &[(String, i64)]) -> String {
        let mut out = String::new();
        let queued = jobs_by_status.iter().find(|(s, _)| s == "queued").map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "# HELP stipple_queue_depth Jobs waiting for a worker.\n# TYPE stipple_queue_depth gauge\nstipple_queue_depth {queued}");
        let _ = writeln!(out, "# HELP stipple_jobs Jobs in the store by status.\n# TYPE stipple_jobs gauge");
        for status in crate::jobs::JobStatus::ALL {
            let n = jobs_by_status.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "stipple_jobs{{status=\"{}\"}} {n}", status.as_str());
        }
        let _ = writeln!(out, "# HELP stipple_jobs_finished_total Jobs finished by this process.\n# TYPE stipple_jobs_finished_total counter");
        for (i, name) in ["succeeded", "failed", "canceled"].iter().enumerate() {
            let _ = writeln!(out, "stipple_jobs_finished_total{{status=\"{name}\"}} {}", self.jobs_finished[i].load(Ordering::Relaxed));
        }
        let _ = writeln!(out, "# HELP stipple_step_seconds Time of one sampler step.\n# TYPE stipple_step_seconds histogram");
        for (b, bound) in self.step_buckets.iter().zip(STEP_BUCKETS) {
            let _ = writeln!(out, "stipple_step_seconds_bucket{{le=\"{bound}\"}} {}", b.load(Ordering::Relaxed));
        }
        let count = self.step_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "stipple_step_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "stipple_step_seconds_sum {}", self.step_sum_us.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "stipple_step_seconds_count {count}");
        let _ = writeln!(out, "# HELP stipple_tokens_spent_total Tokens charged for finished generations.\n# TYPE stipple_tokens_spent_total counter");
        let _ = writeln!(out, "stipple_tokens_spent_total {}", self.tokens_spent.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP stipple_rate_limited_total Requests refused by the per-address rate limit.\n# TYPE stipple_rate_limited_total counter");
        let _ = writeln!(out, "stipple_rate_limited_total {}", self.requests_rate_limited.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP stipple_openai_image_requests_total Requests to the OpenAI-style image endpoint.\n# TYPE stipple_openai_image_requests_total counter");
        let _ = writeln!(out, "stipple_openai_image_requests_total {}", self.openai_image_requests.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe_step(0.2);
        m.observe_step(3.0);
        let text = m.render(&[("queued".into(), 4)]);
        assert!(text.contains("stipple_queue_depth 4"));
        assert!(text.contains("stipple_step_seconds_bucket{le=\"0.1\"} 0"));
        assert!(text.contains("stipple_step_seconds_bucket{le=\"0.25\"} 1"));
        assert!(text.contains("stipple_step_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("stipple_step_seconds_count 2"));
        assert!(text.contains("stipple_jobs{status=\"running\"} 0"));
    }
}
