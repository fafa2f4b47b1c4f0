//! Latency histograms as Prometheus keeps them (cumulative counts per upper bound), so that
//! outboxd's `outboxd_commit_to_ack_seconds` and the naive relay's own count read alike.

use serde::{Deserialize, Serialize};

/// The upper bounds, seconds: those of `outboxd_commit_to_ack_seconds`.
pub const BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];

/// +Inf as these buckets keep it (JSON has no infinity).
pub const INF: f64 = f64::MAX;

/// Cumulative counts per upper bound (the last bound is +Inf, kept as [`INF`]), seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// Empty buckets with [`BOUNDS`] and +Inf.
    pub fn new() -> Self {
        Buckets(
            BOUNDS
                .iter()
                .chain(std::iter::once(&INF))
                .map(|&le| (le, 0.0))
                .collect(),
        )
    }

    /// Counts one observation, seconds.
    pub fn record(&mut self, seconds: f64) {
        for (le, n) in &mut self.0 {
            if seconds <= *le {
                *n += 1.0;
            }
        }
    }

    /// The `{metric}_bucket` lines of a Prometheus text exposition, summed over the other
    /// labels.
    pub fn from_exposition(body: &str, metric: &str) -> Self {
        let prefix = format!("{metric}_bucket{{");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for line in body.lines().filter(|l| l.starts_with(&prefix)) {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|v| match v {
                    "+Inf" => Some(INF),
                    v => v.parse::<f64>().ok(),
                });
            let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            if let (Some(le), Some(value)) = (le, value) {
                match by_le.iter_mut().find(|(l, _)| *l == le) {
                    Some((_, n)) => *n += value,
                    None => by_le.push((le, value)),
                }
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(by_le)
    }

    /// The observations after `earlier` (same bounds).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, n)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| *l == le)
                        .map_or(0.0, |&(_, m)| m);
                    (le, n - before)
                })
                .collect(),
        )
    }

    /// Observations in all.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |&(_, n)| n)
    }

    /// Share of observations at or below `le` (one of the bounds), 0 when there are none.
    pub fn share_within(&self, le: f64) -> f64 {
        let total = self.count();
        let within = self
            .0
            .iter()
            .find(|(l, _)| *l >= le)
            .map_or(total, |&(_, n)| n);
        if total > 0.0 { within / total } else { 0.0 }
    }

    /// The `q` quantile, seconds, interpolated linearly inside its bucket (as Prometheus'
    /// `histogram_quantile`); `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &self.0 {
            if n >= rank {
                if le == INF {
                    return Some(lower.0);
                }
                let in_bucket = n - lower.1;
                let part = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * part);
            }
            lower = (le, n);
        }
        Some(lower.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_exposition_and_interpolates_like_prometheus() {
        let body = "outboxd_commit_to_ack_seconds_bucket{sink=\"kafka\",le=\"0.001\"} 0\n\
                    outboxd_commit_to_ack_seconds_bucket{sink=\"kafka\",le=\"0.0025\"} 10\n\
                    outboxd_commit_to_ack_seconds_bucket{sink=\"kafka\",le=\"0.005\"} 30\n\
                    outboxd_commit_to_ack_seconds_bucket{sink=\"kafka\",le=\"+Inf\"} 40\n\
                    outboxd_commit_to_ack_seconds_sum{sink=\"kafka\"} 0.2\n";
        let b = Buckets::from_exposition(body, "outboxd_commit_to_ack_seconds");
        assert_eq!(b.count(), 40.0);
        assert_eq!(b.share_within(0.005), 0.75);
        // The 20th of 40 is halfway through the (2.5 ms, 5 ms] bucket.
        let p50 = b.quantile(0.5).expect("observations");
        assert!((p50 - 0.00375).abs() < 1e-9, "{p50}");
        let earlier = Buckets::from_exposition(
            "outboxd_commit_to_ack_seconds_bucket{le=\"0.0025\"} 10\n",
            "outboxd_commit_to_ack_seconds",
        );
        assert_eq!(b.since(&earlier).share_within(0.0025), 0.0);
    }

    #[test]
    fn records_cumulatively() {
        let mut b = Buckets::new();
        b.record(0.002);
        b.record(0.004);
        b.record(700.0);
        assert_eq!(b.count(), 3.0);
        assert_eq!(b.share_within(0.0025), 1.0 / 3.0);
        assert_eq!(b.quantile(0.99), Some(600.0));
    }
}
