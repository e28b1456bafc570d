//! Latency summaries: percentiles by nearest rank over all samples (no
//! histogram buckets, so no rounding; the sample counts here are small).

use serde_json::{json, Map, Value};

/// Summary of a set of samples in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=100).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (mean of the two middle samples for an even count).
pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        if samples.is_empty() {
            return Summary {
                n: 0,
                mean: f64::NAN,
                min: f64::NAN,
                p50: f64::NAN,
                p95: f64::NAN,
                p99: f64::NAN,
                max: f64::NAN,
            };
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Summary {
            n: s.len(),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            min: s[0],
            p50: median(&s),
            p95: percentile(&s, 95.0),
            p99: percentile(&s, 99.0),
            max: s[s.len() - 1],
        }
    }

    /// Insert `<prefix>p50_ms` etc. into a JSON object.
    pub fn put(&self, m: &mut Map<String, Value>, prefix: &str) {
        m.insert(format!("{prefix}p50_ms"), num(self.p50));
        m.insert(format!("{prefix}p95_ms"), num(self.p95));
        m.insert(format!("{prefix}p99_ms"), num(self.p99));
        m.insert(format!("{prefix}mean_ms"), num(self.mean));
        m.insert(format!("{prefix}min_ms"), num(self.min));
        m.insert(format!("{prefix}max_ms"), num(self.max));
        m.insert(format!("{prefix}n"), json!(self.n));
    }
}

/// A JSON number rounded to 3 decimals (null for NaN / infinity).
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = Summary::of(&[]);
        assert_eq!(s.n, 0);
        assert!(s.p50.is_nan());
    }
}
