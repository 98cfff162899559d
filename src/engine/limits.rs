//! Rate limits per provider instance: one governor limiter shared by every
//! credential of the instance and taken by every attempt, retries included; a
//! rate-limited answer (429 with Retry-After, throttling) pauses the whole instance,
//! not just the request that got it.
//!
//! The limit adapts. When the playbook's rate is higher than what the provider
//! really allows, the 429s say so: while rekey sends faster than the provider
//! admits, the requests that do succeed arrive at exactly the provider's rate, so
//! the rate of successes since the first 429 of an episode is the real limit. rekey
//! drops to just under it, then after a quiet period creeps back up (5% at a time,
//! never above the playbook's rate) in case the provider was only briefly strict.
//! An episode where nothing succeeds is an outage or a block, not a rate: the
//! instance pauses for the provider's Retry-After, sends one probe at a time until
//! one gets through, and then goes on at the rate it had.
//!
//! Transient errors are retried from a budget per instance (like tower's retry
//! budget): a standing reserve plus a fraction of the successes, so a provider that
//! fails everything cannot turn a thousand credentials into a retry storm.
//!
//! Time comes from tokio's clock (governor reads it through [`TokioClock`]), so
//! tests run with paused time instead of sleeping.

use crate::playbook::rate::Rate;
use crate::provider::RateHint;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Serialize;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long an instance pauses after a rate-limited answer that gave no delay.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause rekey accepts from one answer (a provider asking for more is
/// asking for an hour-long block; the instance probes again after this).
const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);
/// After a decrease, the rate goes this far under the measured limit: a margin for
/// the provider's own clock and for requests already in flight.
const MARGIN: f64 = 0.95;
/// Each careful increase multiplies the rate by this.
const INCREASE: f64 = 1.05;
/// Retry budget: retries always allowed per second of run, a standing reserve, and
/// the share of each success that becomes retry credit.
const BUDGET_PER_SECOND: f64 = 1.0;
const BUDGET_RESERVE: f64 = 20.0;
const BUDGET_RATIO: f64 = 0.2;

/// governor's clock, read from tokio's (which tests pause and advance).
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// What an instance did during a run, for the summary and the log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitStats {
    pub instance: String,
    /// Requests sent (every attempt).
    pub requests: u64,
    /// Rate-limited answers received.
    pub rate_limited: u64,
    /// Transient failures retried, and those refused a retry by the budget.
    pub retries: u64,
    pub retries_refused: u64,
    /// The playbook's (or the catalog's) rate, and the rate at the end of the run.
    pub configured_per_second: f64,
    pub final_per_second: f64,
    /// The provider's real limit, when rekey measured one.
    pub learned_per_second: Option<f64>,
}

struct State {
    limiter: Arc<Limiter>,
    current: f64,
    paused_until: Option<Instant>,
    /// After a pause, one request goes first; the others wait for its answer.
    probe_pending: bool,
    probe_in_flight: bool,
    /// Since the first 429 of the current episode: when, and successes since.
    episode: Option<(Instant, u64)>,
    last_throttle: Option<Instant>,
    last_change: Instant,
    learned: Option<f64>,
    /// The rate was lowered by the provider's headers (not by 429s): a fresh
    /// window restores it.
    paced_by_headers: bool,
    budget: f64,
    budget_at: Instant,
}

pub struct InstanceLimit {
    name: String,
    configured: Rate,
    clock: TokioClock,
    state: Mutex<State>,
    probe_done: Notify,
    requests: AtomicU64,
    throttled: AtomicU64,
    retries: AtomicU64,
    retries_refused: AtomicU64,
}

fn limiter(per_second: f64, burst: u32, clock: &TokioClock) -> Arc<Limiter> {
    let period = Duration::from_secs_f64((1.0 / per_second).clamp(1e-9, 86_400.0 * 365.0));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    Arc::new(RateLimiter::direct_with_clock(quota, clock.clone()))
}

/// Permission for one request. Report how it went with [`Ticket::succeeded`] or
/// [`Ticket::throttled`]; dropped without a report (a transient or fatal error, a
/// cancelled task) it only releases the probe slot.
pub struct Ticket<'a> {
    limit: &'a InstanceLimit,
    probe: bool,
    reported: bool,
}

impl Ticket<'_> {
    pub fn succeeded(mut self) {
        self.reported = true;
        self.limit.on_success(self.probe);
    }

    /// Succeeded, and the provider's rate-limit headers said this about its window.
    pub fn succeeded_with(self, hint: Option<RateHint>) {
        let limit = self.limit;
        self.succeeded();
        if let Some(hint) = hint {
            limit.observe(hint);
        }
    }

    /// The provider said "slow down": pause every request of this instance.
    pub fn throttled(mut self, retry_after: Option<Duration>) {
        self.reported = true;
        self.limit.on_throttle(retry_after, self.probe);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.limit.lock().probe_in_flight = false;
            self.limit.probe_done.notify_waiters();
        }
    }
}

impl InstanceLimit {
    pub fn new(name: impl Into<String>, rate: Rate) -> InstanceLimit {
        let clock = TokioClock::default();
        let now = Instant::now();
        InstanceLimit {
            name: name.into(),
            configured: rate,
            state: Mutex::new(State {
                limiter: limiter(rate.per_second, rate.burst, &clock),
                current: rate.per_second,
                paused_until: None,
                probe_pending: false,
                probe_in_flight: false,
                episode: None,
                last_throttle: None,
                last_change: now,
                learned: None,
                paced_by_headers: false,
                budget: BUDGET_RESERVE,
                budget_at: now,
            }),
            clock,
            probe_done: Notify::new(),
            requests: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The rate requests leave at now (requests per second).
    pub fn current_rate(&self) -> f64 {
        self.lock().current
    }

    /// Waits until a request may leave: after any pause, behind a probe, then for a
    /// permit of the limiter.
    pub async fn acquire(&self) -> Ticket<'_> {
        enum Next {
            Sleep(Instant),
            AwaitProbe,
            Go(Arc<Limiter>, bool),
        }
        let (limiter, probe) = loop {
            let notified = self.probe_done.notified();
            tokio::pin!(notified);
            let next = {
                let mut state = self.lock();
                let now = Instant::now();
                if let Some(until) = state.paused_until.filter(|t| *t > now) {
                    Next::Sleep(until)
                } else if state.probe_in_flight {
                    // Registered before the lock goes, so the probe's answer
                    // cannot slip between the check and the wait.
                    notified.as_mut().enable();
                    Next::AwaitProbe
                } else {
                    let probe = std::mem::take(&mut state.probe_pending);
                    state.probe_in_flight = probe;
                    Next::Go(state.limiter.clone(), probe)
                }
            };
            match next {
                Next::Sleep(until) => tokio::time::sleep_until(until).await,
                Next::AwaitProbe => notified.await,
                Next::Go(limiter, probe) => break (limiter, probe),
            }
        };
        loop {
            match limiter.check() {
                Ok(()) => break,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await
                }
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ticket {
            limit: self,
            probe,
            reported: false,
        }
    }

    /// Whether a transient failure may be retried: takes one unit of the budget.
    pub fn allow_retry(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(state.budget_at).as_secs_f64();
        state.budget = (state.budget + elapsed * BUDGET_PER_SECOND).min(BUDGET_RESERVE * 5.0);
        state.budget_at = now;
        if state.budget >= 1.0 {
            state.budget -= 1.0;
            drop(state);
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            drop(state);
            self.retries_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(instance = %self.name, "Retry budget spent; not retrying this failure.");
            false
        }
    }

    fn set_rate(&self, state: &mut State, rate: f64, now: Instant) {
        state.current = rate;
        state.limiter = limiter(
            rate,
            self.configured.burst.min(rate.ceil() as u32),
            &self.clock,
        );
        state.last_change = now;
    }

    /// How long an episode's successes are counted before they say anything:
    /// 20 requests' worth at the current rate, at least a fifth of a second.
    fn window(current: f64) -> Duration {
        Duration::from_secs_f64((20.0 / current).clamp(0.2, 3600.0))
    }

    fn on_success(&self, probe: bool) {
        let mut state = self.lock();
        let now = Instant::now();
        state.budget = (state.budget + BUDGET_RATIO).min(BUDGET_RESERVE * 5.0);
        if probe {
            state.probe_in_flight = false;
            self.probe_done.notify_waiters();
        }
        let window = Self::window(state.current);
        let last_throttle = state.last_throttle;
        if let Some((start, successes)) = &mut state.episode {
            *successes += 1;
            // An episode ends when the 429s stop for a while.
            if now.duration_since(last_throttle.unwrap_or(*start))
                > (window * 2).max(Duration::from_secs(2))
            {
                state.episode = None;
            }
        }
        // Careful increase: only after a decrease, only after a quiet period, 5% at
        // a time, never above the configured rate.
        let quiet = window.max(Duration::from_secs(5)) * 2;
        if state.learned.is_some()
            && state.current < self.configured.per_second
            && state
                .last_throttle
                .is_none_or(|t| now.duration_since(t) >= quiet)
            && now.duration_since(state.last_change) >= quiet
        {
            let rate = (state.current * INCREASE).min(self.configured.per_second);
            self.set_rate(&mut state, rate, now);
            tracing::info!(instance = %self.name, per_second = rate, "No rate-limited answer for a while; raising the rate carefully.");
        }
    }

    /// The provider's headers said how many requests its window has left. Nearly
    /// none: spread them over the time to the reset (all at once would earn a 429
    /// or a block); none: pause the instance until the reset. Plenty: nothing to do
    /// (slowing down early would waste the provider's allowance during an incident).
    fn observe(&self, hint: RateHint) {
        let mut state = self.lock();
        let now = Instant::now();
        let low = u64::from(self.configured.burst.max(1)) * 2 + 5;
        if hint.remaining == 0 {
            let until = now + hint.reset_in.min(MAX_PAUSE);
            if state.paused_until.is_none_or(|p| p < until) {
                state.paused_until = Some(until);
                state.probe_pending = true;
                drop(state);
                tracing::warn!(instance = %self.name, wait_ms = hint.reset_in.as_millis() as u64, "Provider's rate-limit window is used up; waiting for it to reset.");
            }
            return;
        }
        if hint.remaining > low {
            // A fresh window after rekey paced itself by headers: back to full speed.
            if std::mem::take(&mut state.paced_by_headers) {
                state.learned = None;
                self.set_rate(&mut state, self.configured.per_second, now);
                drop(state);
                tracing::info!(instance = %self.name, remaining = hint.remaining, "Provider's rate-limit window reset; back to the configured rate.");
            }
            return;
        }
        let pace = hint.remaining as f64 / hint.reset_in.as_secs_f64().max(0.001);
        if pace < state.current * 0.98 {
            state.learned = Some(pace);
            state.paced_by_headers = true;
            self.set_rate(&mut state, pace.max(self.configured.per_second / 1e6), now);
            drop(state);
            tracing::warn!(instance = %self.name, remaining = hint.remaining, reset_ms = hint.reset_in.as_millis() as u64, per_second = pace, "Provider's rate-limit window is nearly used up; spreading the rest until it resets.");
        }
    }

    fn on_throttle(&self, retry_after: Option<Duration>, probe: bool) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        let mut state = self.lock();
        let now = Instant::now();
        let until = now + pause;
        if state.paused_until.is_none_or(|p| p < until) {
            state.paused_until = Some(until);
        }
        state.probe_pending = true;
        if probe {
            state.probe_in_flight = false;
        }
        state.last_throttle = Some(now);
        let window = Self::window(state.current);
        match state.episode {
            None => state.episode = Some((now, 0)),
            Some((start, successes)) if now.duration_since(start) >= window => {
                let seconds = now.duration_since(start).as_secs_f64();
                let admitted = successes as f64 / seconds;
                // Requests kept succeeding while others were refused: the provider
                // admits `admitted` per second. None succeeded: an outage or a
                // block, which says nothing about the rate.
                if successes > 0 && admitted < state.current * 0.98 {
                    let rate = (admitted * MARGIN).max(self.configured.per_second / 1e6);
                    state.learned = Some(admitted);
                    self.set_rate(&mut state, rate, now);
                    tracing::warn!(instance = %self.name, measured_per_second = admitted, per_second = rate, configured_per_second = self.configured.per_second, "Provider admits fewer requests than configured; lowering the rate.");
                }
                state.episode = Some((now, 0));
            }
            Some(_) => {}
        }
        drop(state);
        self.probe_done.notify_waiters();
        tracing::warn!(instance = %self.name, wait_ms = pause.as_millis() as u64, "Provider rate limit hit; pausing the instance.");
    }

    pub fn stats(&self) -> LimitStats {
        let state = self.lock();
        LimitStats {
            instance: self.name.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            rate_limited: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            retries_refused: self.retries_refused.load(Ordering::Relaxed),
            configured_per_second: self.configured.per_second,
            final_per_second: state.current,
            learned_per_second: state.learned,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn rate(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// A provider's server-side token bucket on tokio's clock, like the sandbox's.
    struct Server {
        rate: f64,
        bucket: Mutex<(f64, Instant)>,
        blocked_until: Mutex<Option<Instant>>,
        admitted: AtomicU64,
        refused: AtomicU64,
    }

    impl Server {
        fn new(rate: f64) -> Arc<Server> {
            Arc::new(Server {
                rate,
                bucket: Mutex::new((rate, Instant::now())),
                blocked_until: Mutex::new(None),
                admitted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            })
        }
        /// Ok, or the Retry-After of a 429.
        fn call(&self) -> Result<(), Duration> {
            let now = Instant::now();
            if let Some(until) = *self.blocked_until.lock().unwrap()
                && now < until
            {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Duration::from_secs(1));
            }
            let mut b = self.bucket.lock().unwrap();
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * self.rate).min(self.rate);
            b.1 = now;
            if b.0 >= 1.0 {
                b.0 -= 1.0;
                self.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            } else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(Duration::from_secs_f64((1.0 - b.0) / self.rate))
            }
        }
    }

    /// `workers` tasks send `total` successful requests through `limit` to
    /// `server` (retrying 429s as the engine does); returns the virtual time taken.
    async fn drive(
        limit: Arc<InstanceLimit>,
        server: Arc<Server>,
        total: u64,
        workers: u64,
    ) -> Duration {
        let start = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (limit, server, done) = (limit.clone(), server.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    loop {
                        let ticket = limit.acquire().await;
                        // One millisecond of network each way.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        match server.call() {
                            Ok(()) => {
                                ticket.succeeded();
                                break;
                            }
                            Err(after) => ticket.throttled(Some(after)),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_every_request_of_the_instance() {
        let limit = InstanceLimit::new("i", rate(1000.0, 10));
        let start = Instant::now();
        limit.acquire().await.succeeded();
        limit
            .acquire()
            .await
            .throttled(Some(Duration::from_secs(30)));
        limit.acquire().await.succeeded();
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(limit.stats().rate_limited, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_holds_the_configured_rate_on_tokio_time() {
        let limit = InstanceLimit::new("i", rate(10.0, 1));
        let start = Instant::now();
        for _ in 0..101 {
            limit.acquire().await.succeeded();
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((9.9..10.2).contains(&elapsed), "{elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_equal_to_the_real_one_gets_no_429_and_full_speed() {
        let limit = Arc::new(InstanceLimit::new("i", rate(200.0, 10)));
        let server = Server::new(200.0);
        let took = drive(limit.clone(), server.clone(), 4000, 16).await;
        let achieved = 4000.0 / took.as_secs_f64();
        assert_eq!(server.refused.load(Ordering::Relaxed), 0);
        assert!(achieved >= 0.97 * 200.0, "{achieved}/s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_five_times_too_high_is_learned_from_429s() {
        let limit = Arc::new(InstanceLimit::new("i", rate(1000.0, 10)));
        let server = Server::new(200.0);
        let took = drive(limit.clone(), server.clone(), 4000, 16).await;
        let ideal = 4000.0 / 200.0;
        let stats = limit.stats();
        let learned = stats.learned_per_second.expect("a limit was learned");
        assert!((180.0..=215.0).contains(&learned), "learned {learned}/s");
        assert!(
            took.as_secs_f64() <= 1.25 * ideal,
            "took {took:?} for an ideal of {ideal}s"
        );
        let refused = server.refused.load(Ordering::Relaxed);
        assert!(refused < 400, "{refused} 429s");
        assert_eq!(stats.rate_limited, refused);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_of_429s_does_not_lower_the_rate_and_full_speed_returns() {
        let limit = Arc::new(InstanceLimit::new("i", rate(100.0, 5)));
        let server = Server::new(100.0);
        let blocker = {
            let server = server.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                *server.blocked_until.lock().unwrap() =
                    Some(Instant::now() + Duration::from_secs(30));
            })
        };
        let took = drive(limit.clone(), server.clone(), 3000, 8).await;
        blocker.await.unwrap();
        // 30 s of work plus the 30 s outage; a lowered rate would take far longer.
        assert!(took.as_secs_f64() < 62.5, "{took:?}");
        assert_eq!(limit.current_rate(), 100.0);
        assert!(limit.stats().learned_per_second.is_none());
        // One probe a second during the outage, not every worker every second.
        let refused = server.refused.load(Ordering::Relaxed);
        assert!(refused <= 45, "{refused} 429s during a 30 s outage");
    }

    #[tokio::test(start_paused = true)]
    async fn a_learned_rate_creeps_back_up_when_the_provider_relaxes() {
        let limit = InstanceLimit::new("i", rate(100.0, 1));
        // An episode: 429s with successes at 20 per second.
        for _ in 0..2 {
            limit
                .acquire()
                .await
                .throttled(Some(Duration::from_millis(10)));
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                limit.acquire().await.succeeded();
            }
        }
        limit
            .acquire()
            .await
            .throttled(Some(Duration::from_millis(10)));
        let lowered = limit.current_rate();
        assert!(lowered < 25.0, "{lowered}");
        // Quiet from now on: the rate climbs back, never above the configured one.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(600) {
            limit.acquire().await.succeeded();
        }
        assert_eq!(limit.current_rate(), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_headers_slow_the_instance_before_the_provider_refuses() {
        let limit = InstanceLimit::new("i", rate(100.0, 5));
        // Plenty left: full speed.
        let hint = |remaining, secs| RateHint {
            remaining,
            reset_in: Duration::from_secs(secs),
        };
        limit.acquire().await.succeeded_with(Some(hint(4000, 3600)));
        assert_eq!(limit.current_rate(), 100.0);
        // Ten left for the next 20 s: one every 2 s.
        limit.acquire().await.succeeded_with(Some(hint(10, 20)));
        assert_eq!(limit.current_rate(), 0.5);
        // None left: nothing leaves before the reset, and no 429 was needed.
        let start = Instant::now();
        limit.acquire().await.succeeded_with(Some(hint(0, 30)));
        limit.acquire().await.succeeded();
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(limit.stats().rate_limited, 0);
        // A fresh window: back to the configured rate at once.
        limit.acquire().await.succeeded_with(Some(hint(5000, 3600)));
        assert_eq!(limit.current_rate(), 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_budget_stops_a_retry_storm() {
        let limit = InstanceLimit::new("i", rate(1000.0, 10));
        // A thousand failing requests in one second may retry about twenty times.
        let allowed = (0..1000).filter(|_| limit.allow_retry()).count();
        assert!((20..=22).contains(&allowed), "{allowed}");
        // Time and successes refill it.
        tokio::time::sleep(Duration::from_secs(10)).await;
        for _ in 0..50 {
            limit.acquire().await.succeeded();
        }
        let later = (0..1000).filter(|_| limit.allow_retry()).count();
        assert!((19..=21).contains(&later), "{later}");
        assert_eq!(
            limit.stats().retries_refused,
            2000 - (allowed + later) as u64
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_fails_otherwise_lets_the_next_request_probe() {
        let limit = Arc::new(InstanceLimit::new("i", rate(1000.0, 10)));
        limit
            .acquire()
            .await
            .throttled(Some(Duration::from_millis(100)));
        let probe = limit.acquire().await;
        let waiting = Arc::new(AtomicBool::new(true));
        let other = {
            let (limit, waiting) = (limit.clone(), waiting.clone());
            tokio::spawn(async move {
                limit.acquire().await.succeeded();
                waiting.store(false, Ordering::SeqCst);
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            waiting.load(Ordering::SeqCst),
            "others wait behind the probe"
        );
        drop(probe); // a transient error: no report
        other.await.unwrap();
        assert!(!waiting.load(Ordering::SeqCst));
    }
}
