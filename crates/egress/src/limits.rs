//! Per-session limits: bytes through the proxy, connections open at once, new connections
//! per second.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A session's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressLimits {
    /// Bytes both ways, over the session's life.
    pub max_bytes: u64,
    /// Connections from the sandbox to the proxy open at once.
    pub max_open: usize,
    /// New connections per second, sustained.
    pub per_second: u32,
    /// New connections in a burst above that rate.
    pub burst: u32,
}

impl Default for EgressLimits {
    /// 2 GiB (a large wheel such as torch is about 0.9 GB), 64 open, 20/s with bursts of 100.
    fn default() -> EgressLimits {
        EgressLimits {
            max_bytes: 2 << 30,
            max_open: 64,
            per_second: 20,
            burst: 100,
        }
    }
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// [`EgressLimits::max_open`].
    Open(usize),
    /// [`EgressLimits::per_second`] and [`EgressLimits::burst`].
    Rate(u32),
    /// [`EgressLimits::max_bytes`].
    Bytes(u64),
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What a session has used.
#[derive(Debug)]
pub struct Usage {
    limits: EgressLimits,
    bytes: AtomicU64,
    open: AtomicUsize,
    bucket: Mutex<Bucket>,
}

/// One open connection; counted until dropped.
#[derive(Debug)]
pub struct OpenGuard(Arc<Usage>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Usage {
    /// Nothing used yet.
    pub fn new(limits: EgressLimits) -> Arc<Usage> {
        Arc::new(Usage {
            limits,
            bytes: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(limits.burst.max(1)),
                at: Instant::now(),
            }),
        })
    }

    /// The limits.
    pub fn limits(&self) -> EgressLimits {
        self.limits
    }

    /// Bytes used so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Admits a new connection, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>) -> Result<OpenGuard, LimitHit> {
        if self.bytes() >= self.limits.max_bytes {
            return Err(LimitHit::Bytes(self.limits.max_bytes));
        }
        {
            // Poisoned only by a panic while holding it, which these lines cannot cause.
            let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.saturating_duration_since(bucket.at).as_secs_f64()
                * f64::from(self.limits.per_second);
            bucket.tokens = (bucket.tokens + refill).min(f64::from(self.limits.burst.max(1)));
            bucket.at = now;
            if bucket.tokens < 1.0 {
                return Err(LimitHit::Rate(self.limits.per_second));
            }
            bucket.tokens -= 1.0;
        }
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if open >= self.limits.max_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::Open(self.limits.max_open));
        }
        Ok(OpenGuard(self.clone()))
    }

    /// Counts `n` bytes; false once the byte limit is passed.
    pub fn spend(&self, n: usize) -> bool {
        let n = n as u64;
        self.bytes.fetch_add(n, Ordering::AcqRel).saturating_add(n) <= self.limits.max_bytes
    }

    /// How long until the rate limit admits a connection again (for `Retry-After`).
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.limits.per_second.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_are_bounded_and_released() {
        let usage = Usage::new(EgressLimits {
            max_open: 2,
            ..EgressLimits::default()
        });
        let a = usage.admit().expect("first");
        let _b = usage.admit().expect("second");
        assert_eq!(usage.admit().err(), Some(LimitHit::Open(2)));
        assert_eq!(usage.open(), 2);
        drop(a);
        assert_eq!(usage.open(), 1);
        assert!(usage.admit().is_ok());
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills() {
        let usage = Usage::new(EgressLimits {
            per_second: 50,
            burst: 3,
            ..EgressLimits::default()
        });
        for _ in 0..3 {
            drop(usage.admit().expect("within the burst"));
        }
        assert_eq!(usage.admit().err(), Some(LimitHit::Rate(50)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(usage.admit().is_ok(), "refilled after 60 ms at 50/s");
    }

    #[test]
    fn bytes_are_counted_to_the_limit() {
        let usage = Usage::new(EgressLimits {
            max_bytes: 100,
            ..EgressLimits::default()
        });
        assert!(usage.spend(60));
        assert!(usage.spend(40));
        assert!(!usage.spend(1));
        assert_eq!(usage.admit().err(), Some(LimitHit::Bytes(100)));
    }
}
