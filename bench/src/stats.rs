//! Summaries that survive a noisy machine: medians over repeated runs with min–max, and percentiles of
//! one run's latency samples.

use serde_json::{json, Value};

/// Nearest-rank percentile of `sorted` (ascending); `p` in 0..=100. NaN when there are no samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Median (mean of the middle two for an even count), min and max of repeated runs.
#[derive(Debug, Clone)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Summary {
    /// Non-finite values (a run that produced no figure) are left out.
    pub fn of(values: &[f64]) -> Summary {
        let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let ordered = sorted(values.clone());
        let n = ordered.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => ordered[n / 2],
            _ => (ordered[n / 2 - 1] + ordered[n / 2]) / 2.0,
        };
        Summary {
            median,
            min: ordered.first().copied().unwrap_or(f64::NAN),
            max: ordered.last().copied().unwrap_or(f64::NAN),
            runs: values,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "median": round(self.median),
            "min": round(self.min),
            "max": round(self.max),
            "runs": self.runs.iter().map(|v| round(*v)).collect::<Vec<_>>(),
        })
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of_ms(samples: Vec<f64>) -> Latency {
        let ordered = sorted(samples);
        Latency {
            count: ordered.len(),
            p50: percentile(&ordered, 50.0),
            p95: percentile(&ordered, 95.0),
            p99: percentile(&ordered, 99.0),
            max: ordered.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": round(self.p50),
            "p95_ms": round(self.p95),
            "p99_ms": round(self.p99),
            "max_ms": round(self.max),
        })
    }
}

/// Four significant digits are plenty for figures this noisy, and keep the JSON readable. NaN becomes
/// null in JSON (serde_json writes non-finite numbers as null).
pub fn round(value: f64) -> f64 {
    if !value.is_finite() || value == 0.0 {
        return value;
    }
    let digits = 4 - value.abs().log10().floor() as i32 - 1;
    let factor = 10f64.powi(digits.clamp(-12, 12));
    (value * factor).round() / factor
}

/// A figure for the markdown table: `1.23` / `12.3` / `12,345`.
pub fn fmt(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let abs = value.abs();
    if abs >= 10_000.0 {
        let whole = value.round() as i64;
        let text = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, ch) in text.chars().enumerate() {
            if i > 0 && (text.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        if whole < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if abs >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if abs >= 10.0 {
        format!("{value:.1}")
    } else if abs >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}
