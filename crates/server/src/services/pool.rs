//! The warm pool: sandboxes made ahead of demand, each with its kernel ready, so that a new
//! session only has to take one.
//!
//! The pool follows demand between `PYXIS_POOL_MIN_IDLE` and `PYXIS_POOL_MAX_IDLE`:
//! - every create that finds it empty (a *miss*) raises its target by one, so after a burst
//!   it holds about as many sandboxes as the burst lacked, ready for the next one;
//! - after `PYXIS_POOL_SHRINK_S` without a create its target halves (never below the
//!   minimum) and the sandboxes beyond it are destroyed, one period at a time;
//! - it never holds more than `PYXIS_POOL_MAX_MB` of memory (what its sandboxes' cgroups
//!   use), and grows beyond its minimum only while the host has a tenth of its memory free.
//!
//! Refilling stays out of the way of live work: it makes one sandbox at a time, only while
//! no create of a client is being made (those go to every zygote at once), and only while
//! there is room under the session cap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::sandboxes::kernel::KernelConn;
use crate::sandboxes::{Launcher, SandboxHandle};

/// A pooled sandbox whose kernel has said it is ready.
pub struct Ready {
    /// The sandbox.
    pub sandbox: Arc<dyn SandboxHandle>,
    /// Its kernel's connection.
    pub conn: KernelConn,
}

/// The pool's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBounds {
    /// Idle sandboxes always kept (when there is room).
    pub min_idle: usize,
    /// Most idle sandboxes.
    pub max_idle: usize,
    /// Most memory the idle sandboxes may hold together.
    pub max_bytes: u64,
    /// Time without a create after which the target halves.
    pub shrink_after: Duration,
}

/// How the pool sees the rest of the server.
pub trait PoolHost: Send + Sync {
    /// Whether one more sandbox fits under the session cap.
    fn has_room(&self) -> bool;
    /// Whether the server is shutting down.
    fn stopping(&self) -> bool;
    /// The pool's size changed (for gauges).
    fn changed(&self) {}
}

/// The demand the pool follows.
#[derive(Debug)]
struct Demand {
    /// How many idle sandboxes to hold.
    target: usize,
    /// The last create (hit or miss), or the last shrink.
    last: Instant,
}

/// The warm pool (see the module docs).
pub struct WarmPool {
    bounds: PoolBounds,
    ready: Mutex<VecDeque<Ready>>,
    demand: Mutex<Demand>,
    wake: Notify,
    /// Creates of clients in progress; the refill waits while there are any.
    foreground: AtomicUsize,
}

/// Held while a client's create makes a sandbox itself (see [`WarmPool::foreground`]).
pub struct Foreground<'a>(&'a WarmPool);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        if self.0.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake.notify_one();
        }
    }
}

impl WarmPool {
    /// An empty pool with these bounds (`max_idle` is raised to `min_idle` if below it).
    pub fn new(mut bounds: PoolBounds) -> Self {
        bounds.max_idle = bounds.max_idle.max(bounds.min_idle);
        Self {
            bounds,
            ready: Mutex::new(VecDeque::new()),
            demand: Mutex::new(Demand {
                target: bounds.min_idle,
                last: Instant::now(),
            }),
            wake: Notify::new(),
            foreground: AtomicUsize::new(0),
        }
    }

    /// The bounds.
    pub fn bounds(&self) -> PoolBounds {
        self.bounds
    }

    /// Sandboxes ready now.
    pub fn idle(&self) -> usize {
        self.ready.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// How many the pool is filling up to now.
    pub fn target(&self) -> usize {
        self.demand
            .lock()
            .map(|d| d.target)
            .unwrap_or(self.bounds.min_idle)
    }

    /// Take a ready sandbox, if there is one; a miss raises the target.
    pub fn take(&self) -> Option<Ready> {
        let got = self.ready.lock().ok().and_then(|mut p| p.pop_front());
        if let Ok(mut d) = self.demand.lock() {
            d.last = Instant::now();
            if got.is_none() {
                d.target = (d.target + 1).min(self.bounds.max_idle);
            }
        }
        self.wake.notify_one();
        got
    }

    /// Mark a client's create in progress (until the guard is dropped): the refill waits.
    pub fn foreground(&self) -> Foreground<'_> {
        self.foreground.fetch_add(1, Ordering::AcqRel);
        Foreground(self)
    }

    /// Wake the refill (a session was released, so there may be room again).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Take every pooled sandbox out (at shutdown).
    pub fn drain(&self) -> Vec<Ready> {
        self.ready
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default()
    }

    /// Memory held by the pooled sandboxes.
    fn held_bytes(&self) -> u64 {
        self.ready
            .lock()
            .map(|p| {
                p.iter()
                    .filter_map(|r| r.sandbox.usage())
                    .map(|u| u.memory_bytes)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Whether one more sandbox may be made now, and if not, whether to shrink.
    fn next_step(&self, host: &dyn PoolHost) -> Step {
        let idle = self.idle();
        let target = {
            let Ok(mut d) = self.demand.lock() else {
                return Step::Wait;
            };
            if d.target > self.bounds.min_idle && d.last.elapsed() >= self.bounds.shrink_after {
                d.target = (d.target / 2).max(self.bounds.min_idle);
                d.last = Instant::now();
            }
            d.target
        };
        if idle > target {
            return Step::Shrink(idle - target);
        }
        if idle == target || !host.has_room() {
            return Step::Wait;
        }
        if self.foreground.load(Ordering::Acquire) > 0 {
            return Step::Wait;
        }
        if idle >= self.bounds.min_idle {
            // Growing beyond the minimum: within the memory bound, with memory to spare.
            let held = self.held_bytes();
            let each = if idle > 0 { held / idle as u64 } else { 0 };
            if held + each > self.bounds.max_bytes || !host_has_spare_memory() {
                return Step::Wait;
            }
        }
        Step::Make
    }

    /// The refill: keeps the pool at its target until the host stops. Runs as one task.
    pub async fn refill_loop(
        self: Arc<Self>,
        launcher: Arc<dyn Launcher>,
        host: Arc<dyn PoolHost>,
    ) {
        let mut failures = 0u32;
        loop {
            if host.stopping() {
                return;
            }
            match self.next_step(host.as_ref()) {
                Step::Make => match launcher.create(&launcher.default_limits()).await {
                    Ok((sandbox, conn)) => {
                        failures = 0;
                        if host.stopping() {
                            launcher.destroy(sandbox).await;
                            return;
                        }
                        if let Ok(mut p) = self.ready.lock() {
                            p.push_back(Ready { sandbox, conn });
                        }
                        host.changed();
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "warm pool: creating a sandbox failed");
                        let backoff = Duration::from_millis(200 * u64::from(failures.min(25)));
                        tokio::time::sleep(backoff).await;
                    }
                },
                Step::Shrink(n) => {
                    let extra: Vec<Ready> = self
                        .ready
                        .lock()
                        .map(|mut p| {
                            let keep = p.len().saturating_sub(n);
                            p.drain(keep..).collect()
                        })
                        .unwrap_or_default();
                    tracing::debug!(n = extra.len(), "warm pool: shrinking");
                    for r in extra {
                        launcher.destroy(r.sandbox).await;
                    }
                    host.changed();
                }
                Step::Wait => {
                    // A grown pool is checked again when its shrink is due.
                    let _ = tokio::time::timeout(self.recheck(), self.wake.notified()).await;
                }
            }
        }
    }

    /// How long the refill sleeps without a wake-up before it looks again.
    fn recheck(&self) -> Duration {
        (self.bounds.shrink_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

enum Step {
    Make,
    Shrink(usize),
    Wait,
}

/// Whether at least a tenth of the host's memory is available (true if unknown).
fn host_has_spare_memory() -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return true;
    };
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) => avail * 10 >= total,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Host(bool);
    impl PoolHost for Host {
        fn has_room(&self) -> bool {
            self.0
        }
        fn stopping(&self) -> bool {
            false
        }
    }

    fn bounds(min: usize, max: usize, shrink_ms: u64) -> PoolBounds {
        PoolBounds {
            min_idle: min,
            max_idle: max,
            max_bytes: 1 << 30,
            shrink_after: Duration::from_millis(shrink_ms),
        }
    }

    #[test]
    fn misses_raise_the_target_up_to_the_maximum() {
        let pool = WarmPool::new(bounds(2, 5, 60_000));
        assert_eq!(pool.target(), 2);
        for _ in 0..10 {
            assert!(pool.take().is_none());
        }
        assert_eq!(pool.target(), 5);
    }

    #[test]
    fn an_idle_pool_halves_its_target_down_to_the_minimum() {
        let pool = WarmPool::new(bounds(1, 16, 1));
        for _ in 0..15 {
            pool.take();
        }
        assert_eq!(pool.target(), 16);
        let host = Host(true);
        let mut seen = vec![];
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(3));
            let _ = pool.next_step(&host);
            seen.push(pool.target());
        }
        assert_eq!(seen, vec![8, 4, 2, 1, 1, 1]);
    }

    #[test]
    fn the_refill_waits_for_room_and_for_clients_creates() {
        let pool = WarmPool::new(bounds(2, 4, 60_000));
        assert!(matches!(pool.next_step(&Host(false)), Step::Wait));
        assert!(matches!(pool.next_step(&Host(true)), Step::Make));
        let guard = pool.foreground();
        assert!(matches!(pool.next_step(&Host(true)), Step::Wait));
        drop(guard);
        assert!(matches!(pool.next_step(&Host(true)), Step::Make));
    }

    #[test]
    fn max_is_never_below_min() {
        let pool = WarmPool::new(bounds(6, 2, 60_000));
        assert_eq!(pool.bounds().max_idle, 6);
        pool.take();
        assert_eq!(pool.target(), 6);
    }
}
