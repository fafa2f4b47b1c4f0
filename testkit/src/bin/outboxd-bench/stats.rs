//! Medians with their spread, over repeated measurements.

use serde::{Deserialize, Serialize};

/// A median with its spread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Every run.
    pub runs: Vec<f64>,
}

impl Stat {
    pub(crate) fn of(mut v: Vec<f64>) -> Stat {
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.is_empty() {
            0.0
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Stat {
            median,
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
            runs: v,
        }
    }
}

pub(crate) fn push(slot: &mut Option<Stat>, v: f64) {
    let mut runs = slot.take().map(|s| s.runs).unwrap_or_default();
    runs.push(v);
    *slot = Some(Stat::of(runs));
}

/// A median for a table cell, with its ratio to a baseline in brackets when there is one.
pub(crate) fn with_ratio(v: f64, base: Option<f64>, digits: usize) -> String {
    match base {
        Some(b) if b > 0.0 => format!("{v:.digits$} ({:.2}×)", v / b),
        _ => format!("{v:.digits$}"),
    }
}
