//! The warm pool: sandboxes made ahead of demand, each with its first kernel ready, so that
//! a new session only has to take one.
//!
//! The pool keeps a *lane* for each language of `PYXIS_POOL_LANGUAGES` (default `python`):
//! a Python lane holds sandboxes as the zygote forks them (their Python kernel ready); a
//! JavaScript lane holds sandboxes whose kernel process executed the Node.js kernel
//! (`contexts::first_kernel`), ready (it serves TypeScript sessions too: the kernel
//! switches language when the session is claimed). `python,javascript` gives every lane
//! `PYXIS_POOL_MIN_IDLE`; `python:4,javascript:1` gives each its own minimum.
//!
//! Each lane follows its own demand between its minimum and maximum:
//! - every create of its language that finds it empty (a *miss*) raises its target by one,
//!   so after a burst it holds about as many sandboxes as the burst lacked, ready for the
//!   next one;
//! - after `PYXIS_POOL_SHRINK_S` without a create of its language its target halves (never
//!   below the minimum) and the sandboxes beyond it are destroyed, one period at a time;
//! - the lanes together never hold more than `PYXIS_POOL_MAX_MB` of memory (what their
//!   sandboxes' cgroups use), and a lane grows beyond its minimum only while the host has a
//!   tenth of its memory free.
//!
//! Refilling stays out of the way of live work: it makes one sandbox at a time (the lanes
//! below their minimum first, in the configured order), only while no create of a client is
//! being made (those go to every zygote at once), and only while there is room under the
//! session cap. A sandbox of a lane other than Python's (whose kernel costs ten times the CPU
//! of a forked Python one to start: Node.js boots) is started [`HEAVY_REFILL_PAUSE`] after
//! the last take at the earliest, so the session just claimed runs its first cell without
//! that boot beside it; each such refill waits once at most, so takes in a row cannot starve
//! the lane.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::Notify;

use crate::sandboxes::kernel::KernelConn;
use crate::sandboxes::{Launcher, SandboxError, SandboxHandle};
use crate::services::contexts::{KernelProcess, Language};

/// How long after a client took a sandbox the refill waits before it starts a sandbox of a
/// lane other than Python's (see the module docs).
pub const HEAVY_REFILL_PAUSE: Duration = Duration::from_millis(25);

/// A pooled sandbox whose first kernel has said it is ready.
pub struct Ready {
    /// The sandbox.
    pub sandbox: Arc<dyn SandboxHandle>,
    /// Its first kernel's connection.
    pub conn: KernelConn,
    /// The process of that kernel (the one the zygote forked; a joined one when a Python
    /// sandbox's kernel was replaced).
    pub(crate) process: KernelProcess,
}

/// One lane of the pool as configured: its language and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolLanguage {
    /// The language of the lane's first kernels (never TypeScript: the JavaScript lane
    /// serves it).
    pub language: Language,
    /// Idle sandboxes always kept (when there is room).
    pub min_idle: usize,
    /// Most idle sandboxes.
    pub max_idle: usize,
}

/// The language whose lane serves a session of `language` (TypeScript: JavaScript's).
pub fn lane_language(language: Language) -> Language {
    match language {
        Language::TypeScript => Language::JavaScript,
        other => other,
    }
}

/// Parses `PYXIS_POOL_LANGUAGES`: names separated by commas, each with an optional
/// `:N` minimum (`python,javascript`, `python:4,javascript:1`). A name without `:N` gets
/// `default_min`. Each lane's maximum is `max_idle` when set (raised to its minimum),
/// otherwise 0 for a lane with minimum 0 and `max(min, 32)` for the others.
pub fn parse_pool_languages(
    spec: &str,
    default_min: usize,
    max_idle: Option<usize>,
) -> anyhow::Result<Vec<PoolLanguage>> {
    let mut out: Vec<PoolLanguage> = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, min) = match item.split_once(':') {
            Some((name, n)) => {
                let n: usize = n.trim().parse().map_err(|_| {
                    anyhow::anyhow!("pool_languages: {item:?} is not LANGUAGE or LANGUAGE:COUNT")
                })?;
                (name.trim(), n)
            }
            None => (item, default_min),
        };
        let language = lane_language(
            Language::parse(name).map_err(|e| anyhow::anyhow!("pool_languages: {e}"))?,
        );
        if out.iter().any(|l| l.language == language) {
            anyhow::bail!("pool_languages names {} twice", language.name());
        }
        let max = match max_idle {
            Some(max) => max.max(min),
            None if min == 0 => 0,
            None => min.max(32),
        };
        out.push(PoolLanguage {
            language,
            min_idle: min,
            max_idle: max,
        });
    }
    if out.is_empty() {
        anyhow::bail!("pool_languages names no language (python is the default)");
    }
    Ok(out)
}

/// The pool's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolBounds {
    /// The lanes, in the order they are refilled.
    pub lanes: Vec<PoolLanguage>,
    /// Most memory the idle sandboxes of every lane may hold together.
    pub max_bytes: u64,
    /// Time without a create after which a lane's target halves.
    pub shrink_after: Duration,
}

/// One lane as `/v1/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneStatus {
    /// Its language.
    pub language: Language,
    /// Sandboxes ready now.
    pub idle: usize,
    /// Its minimum.
    pub min_idle: usize,
    /// Its maximum.
    pub max_idle: usize,
    /// How many it is filling up to now.
    pub target: usize,
}

/// How the pool sees the rest of the server.
pub trait PoolHost: Send + Sync {
    /// Whether one more sandbox fits under the session cap.
    fn has_room(&self) -> bool;
    /// Whether the server is shutting down.
    fn stopping(&self) -> bool;
    /// The pool's size changed (for gauges).
    fn changed(&self) {}
    /// Makes a sandbox with the default limits whose first kernel is of `language`.
    fn make(&self, language: Language) -> BoxFuture<'_, Result<Ready, SandboxError>>;
}

/// The demand a lane follows.
#[derive(Debug)]
struct Demand {
    /// How many idle sandboxes to hold.
    target: usize,
    /// The last create (hit or miss), or the last shrink.
    last: Instant,
}

struct Lane {
    spec: PoolLanguage,
    ready: Mutex<VecDeque<Ready>>,
    demand: Mutex<Demand>,
}

impl Lane {
    fn idle(&self) -> usize {
        self.ready.lock().map(|p| p.len()).unwrap_or(0)
    }

    fn target(&self) -> usize {
        self.demand
            .lock()
            .map(|d| d.target)
            .unwrap_or(self.spec.min_idle)
    }

    /// Memory held by the lane's sandboxes.
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

    /// The lane's target now, halved first when its shrink is due.
    fn target_now(&self, shrink_after: Duration) -> Option<usize> {
        let mut d = self.demand.lock().ok()?;
        if d.target > self.spec.min_idle && d.last.elapsed() >= shrink_after {
            d.target = (d.target / 2).max(self.spec.min_idle);
            d.last = Instant::now();
        }
        Some(d.target)
    }
}

/// The warm pool (see the module docs).
pub struct WarmPool {
    lanes: Vec<Lane>,
    max_bytes: u64,
    shrink_after: Duration,
    wake: Notify,
    /// Creates of clients in progress; the refill waits while there are any.
    foreground: AtomicUsize,
    /// When a client last took a sandbox (see [`HEAVY_REFILL_PAUSE`]).
    last_take: Mutex<Option<Instant>>,
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
    /// An empty pool with these bounds (each lane's `max_idle` is raised to its `min_idle`
    /// if below it).
    pub fn new(bounds: PoolBounds) -> Self {
        let lanes = bounds
            .lanes
            .into_iter()
            .map(|mut spec| {
                spec.max_idle = spec.max_idle.max(spec.min_idle);
                Lane {
                    spec,
                    ready: Mutex::new(VecDeque::new()),
                    demand: Mutex::new(Demand {
                        target: spec.min_idle,
                        last: Instant::now(),
                    }),
                }
            })
            .collect();
        Self {
            lanes,
            max_bytes: bounds.max_bytes,
            shrink_after: bounds.shrink_after,
            wake: Notify::new(),
            foreground: AtomicUsize::new(0),
            last_take: Mutex::new(None),
        }
    }

    fn note_take(&self) {
        if let Ok(mut t) = self.last_take.lock() {
            *t = Some(Instant::now());
        }
    }

    /// How much longer a heavy refill should wait after the last take, if at all.
    fn pause_after_take(&self) -> Option<Duration> {
        let last = (*self.last_take.lock().ok()?)?;
        HEAVY_REFILL_PAUSE
            .checked_sub(last.elapsed())
            .filter(|d| !d.is_zero())
    }

    fn lane(&self, language: Language) -> Option<&Lane> {
        let language = lane_language(language);
        self.lanes.iter().find(|l| l.spec.language == language)
    }

    /// The languages the pool keeps sandboxes for, in its order.
    pub fn languages(&self) -> Vec<Language> {
        self.lanes.iter().map(|l| l.spec.language).collect()
    }

    /// Sandboxes ready now, in every lane.
    pub fn idle(&self) -> usize {
        self.lanes.iter().map(Lane::idle).sum()
    }

    /// Each lane's counters.
    pub fn lanes(&self) -> Vec<LaneStatus> {
        self.lanes
            .iter()
            .map(|l| LaneStatus {
                language: l.spec.language,
                idle: l.idle(),
                min_idle: l.spec.min_idle,
                max_idle: l.spec.max_idle,
                target: l.target(),
            })
            .collect()
    }

    /// How many the lane of `language` is filling up to now (0 without a lane).
    pub fn target(&self, language: Language) -> usize {
        self.lane(language).map_or(0, Lane::target)
    }

    /// Take a ready sandbox for a session of `language`, if its lane has one; a miss
    /// raises the lane's target. A language without a lane always misses.
    pub fn take(&self, language: Language) -> Option<Ready> {
        let lane = self.lane(language)?;
        let got = lane.ready.lock().ok().and_then(|mut p| p.pop_front());
        if got.is_some() {
            self.note_take();
        }
        if let Ok(mut d) = lane.demand.lock() {
            d.last = Instant::now();
            if got.is_none() {
                d.target = (d.target + 1).min(lane.spec.max_idle);
            }
        }
        self.wake.notify_one();
        got
    }

    /// Whether the pool has a lane for sessions of `language`.
    pub fn serves(&self, language: Language) -> bool {
        self.lane(language).is_some()
    }

    /// Take a ready sandbox of `language`'s lane for a session of another language whose
    /// own lane missed: the lane's demand is left as it is (the miss raised the other's).
    pub fn take_spare(&self, language: Language) -> Option<Ready> {
        let got = self
            .lane(language)?
            .ready
            .lock()
            .ok()
            .and_then(|mut p| p.pop_front());
        if got.is_some() {
            self.note_take();
            self.wake.notify_one();
        }
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
        self.lanes
            .iter()
            .flat_map(|l| {
                l.ready
                    .lock()
                    .map(|mut p| p.drain(..).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// What the refill does next: shrink a lane beyond its target, make a sandbox for the
    /// first lane below its minimum (then for the first below its target), or wait.
    fn next_step(&self, host: &dyn PoolHost) -> Step {
        let mut counts = Vec::with_capacity(self.lanes.len());
        for (i, lane) in self.lanes.iter().enumerate() {
            let idle = lane.idle();
            let Some(target) = lane.target_now(self.shrink_after) else {
                return Step::Wait;
            };
            if idle > target {
                return Step::Shrink(i, idle - target);
            }
            counts.push((idle, target));
        }
        if !host.has_room() || self.foreground.load(Ordering::Acquire) > 0 {
            return Step::Wait;
        }
        let below_min = self
            .lanes
            .iter()
            .zip(&counts)
            .position(|(l, (idle, target))| idle < target && *idle < l.spec.min_idle);
        if let Some(i) = below_min {
            return Step::Make(i);
        }
        let Some(i) = counts.iter().position(|(idle, target)| idle < target) else {
            return Step::Wait;
        };
        // Growing beyond the minimum: within the memory bound, with memory to spare.
        let held: Vec<u64> = self.lanes.iter().map(Lane::held_bytes).collect();
        let total: u64 = held.iter().sum();
        let idle = counts[i].0;
        let each = if idle > 0 {
            held[i] / idle as u64
        } else {
            let all: usize = counts.iter().map(|c| c.0).sum();
            if all > 0 {
                total / all as u64
            } else {
                0
            }
        };
        if total + each > self.max_bytes || !host_has_spare_memory() {
            return Step::Wait;
        }
        Step::Make(i)
    }

    /// The refill: keeps every lane at its target until the host stops. Runs as one task.
    pub async fn refill_loop(
        self: Arc<Self>,
        launcher: Arc<dyn Launcher>,
        host: Arc<dyn PoolHost>,
    ) {
        let mut failures = 0u32;
        // Whether the next heavy refill already waited after a take.
        let mut paused = false;
        loop {
            if host.stopping() {
                return;
            }
            match self.next_step(host.as_ref()) {
                Step::Make(i) => {
                    let lane = &self.lanes[i];
                    if lane.spec.language != Language::Python && !paused {
                        if let Some(wait) = self.pause_after_take() {
                            paused = true;
                            tokio::time::sleep(wait).await;
                            // The pool may have changed meanwhile: look again.
                            continue;
                        }
                    }
                    paused = false;
                    match host.make(lane.spec.language).await {
                        Ok(ready) => {
                            failures = 0;
                            if host.stopping() {
                                launcher.destroy(ready.sandbox).await;
                                return;
                            }
                            if let Ok(mut p) = lane.ready.lock() {
                                p.push_back(ready);
                            }
                            host.changed();
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::error!(
                                error = %e,
                                language = lane.spec.language.name(),
                                "warm pool: creating a sandbox failed"
                            );
                            let backoff = Duration::from_millis(200 * u64::from(failures.min(25)));
                            tokio::time::sleep(backoff).await;
                        }
                    }
                }
                Step::Shrink(i, n) => {
                    let lane = &self.lanes[i];
                    let extra: Vec<Ready> = lane
                        .ready
                        .lock()
                        .map(|mut p| {
                            let keep = p.len().saturating_sub(n);
                            p.drain(keep..).collect()
                        })
                        .unwrap_or_default();
                    tracing::debug!(
                        n = extra.len(),
                        language = lane.spec.language.name(),
                        "warm pool: shrinking"
                    );
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
        (self.shrink_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    Make(usize),
    Shrink(usize, usize),
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
        fn make(&self, _: Language) -> BoxFuture<'_, Result<Ready, SandboxError>> {
            Box::pin(async { Err(SandboxError::Internal("not in unit tests".into())) })
        }
    }

    fn lane(language: Language, min: usize, max: usize) -> PoolLanguage {
        PoolLanguage {
            language,
            min_idle: min,
            max_idle: max,
        }
    }

    fn bounds(min: usize, max: usize, shrink_ms: u64) -> PoolBounds {
        PoolBounds {
            lanes: vec![lane(Language::Python, min, max)],
            max_bytes: 1 << 30,
            shrink_after: Duration::from_millis(shrink_ms),
        }
    }

    #[test]
    fn misses_raise_the_target_up_to_the_maximum() {
        let pool = WarmPool::new(bounds(2, 5, 60_000));
        assert_eq!(pool.target(Language::Python), 2);
        for _ in 0..10 {
            assert!(pool.take(Language::Python).is_none());
        }
        assert_eq!(pool.target(Language::Python), 5);
    }

    #[test]
    fn an_idle_pool_halves_its_target_down_to_the_minimum() {
        let pool = WarmPool::new(bounds(1, 16, 1));
        for _ in 0..15 {
            pool.take(Language::Python);
        }
        assert_eq!(pool.target(Language::Python), 16);
        let host = Host(true);
        let mut seen = vec![];
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(3));
            let _ = pool.next_step(&host);
            seen.push(pool.target(Language::Python));
        }
        assert_eq!(seen, vec![8, 4, 2, 1, 1, 1]);
    }

    #[test]
    fn the_refill_waits_for_room_and_for_clients_creates() {
        let pool = WarmPool::new(bounds(2, 4, 60_000));
        assert_eq!(pool.next_step(&Host(false)), Step::Wait);
        assert_eq!(pool.next_step(&Host(true)), Step::Make(0));
        let guard = pool.foreground();
        assert_eq!(pool.next_step(&Host(true)), Step::Wait);
        drop(guard);
        assert_eq!(pool.next_step(&Host(true)), Step::Make(0));
    }

    #[test]
    fn a_heavy_refill_waits_a_little_after_a_take_and_only_then() {
        let pool = WarmPool::new(bounds(1, 2, 60_000));
        assert_eq!(pool.pause_after_take(), None, "no take yet");
        pool.note_take();
        let wait = pool.pause_after_take().expect("just taken");
        assert!(wait <= HEAVY_REFILL_PAUSE && !wait.is_zero(), "{wait:?}");
        std::thread::sleep(HEAVY_REFILL_PAUSE);
        assert_eq!(pool.pause_after_take(), None, "the pause is over");
    }

    #[test]
    fn max_is_never_below_min() {
        let pool = WarmPool::new(bounds(6, 2, 60_000));
        assert_eq!(pool.lanes()[0].max_idle, 6);
        pool.take(Language::Python);
        assert_eq!(pool.target(Language::Python), 6);
    }

    #[test]
    fn each_lane_follows_its_own_demand_and_typescript_takes_from_javascript() {
        let pool = WarmPool::new(PoolBounds {
            lanes: vec![
                lane(Language::Python, 0, 0),
                lane(Language::JavaScript, 1, 3),
            ],
            max_bytes: 1 << 30,
            shrink_after: Duration::from_secs(60),
        });
        // Python's lane is off: nothing to make for it; JavaScript's is below its minimum.
        assert_eq!(pool.next_step(&Host(true)), Step::Make(1));
        assert!(pool.take(Language::TypeScript).is_none());
        assert!(pool.take(Language::JavaScript).is_none());
        assert_eq!(pool.target(Language::JavaScript), 3);
        assert!(pool.take(Language::Python).is_none());
        assert_eq!(pool.target(Language::Python), 0);
        // Bash has no lane: it always misses and changes nothing.
        assert!(pool.take(Language::Bash).is_none());
        assert_eq!(pool.target(Language::Bash), 0);
        assert_eq!(
            pool.languages(),
            vec![Language::Python, Language::JavaScript]
        );
    }

    #[test]
    fn pool_languages_parse_with_and_without_counts() {
        let l = parse_pool_languages("python", 2, None).unwrap();
        assert_eq!(l, vec![lane(Language::Python, 2, 32)]);
        let l = parse_pool_languages(" python:4 , js:1 ", 2, None).unwrap();
        assert_eq!(
            l,
            vec![
                lane(Language::Python, 4, 32),
                lane(Language::JavaScript, 1, 32)
            ]
        );
        let l = parse_pool_languages("python,javascript:0", 3, Some(8)).unwrap();
        assert_eq!(
            l,
            vec![
                lane(Language::Python, 3, 8),
                lane(Language::JavaScript, 0, 8)
            ]
        );
        let l = parse_pool_languages("typescript:2", 0, None).unwrap();
        assert_eq!(l, vec![lane(Language::JavaScript, 2, 32)]);
        assert_eq!(
            parse_pool_languages("python:0", 2, None).unwrap(),
            vec![lane(Language::Python, 0, 0)]
        );
        for bad in [
            "",
            " , ",
            "cobol",
            "python:x",
            "python:-1",
            "js,ts",
            "python,python:2",
        ] {
            assert!(parse_pool_languages(bad, 2, None).is_err(), "{bad:?}");
        }
    }
}
