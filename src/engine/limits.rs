//! Rate limits per provider instance: one governor limiter shared by every
//! credential of the instance and taken by every attempt, retries included; a
//! rate-limited answer (429 with Retry-After, throttling) pauses the whole instance,
//! not just the request that got it.
//!
//! The limit adapts, through a model of the provider's limit as a token bucket:
//! a rate and a burst (the tokens that build up while rekey is quiet, up to a
//! cap). Between two pauses the instance sends a *segment* of requests; a segment
//! that ends in a refusal says how many requests the provider admitted in how much
//! sending time after a pause of how long: `admitted ≈ min(burst, rate × pause) +
//! rate × active time`. The time spent paused only refills the bucket up to its
//! burst; it is not the provider's rate, which is why a whole-second Retry-After
//! (a 25 ms wait rounded up to 1 s) does not make rekey believe the provider is
//! slow. A refused segment is weighed once the probe after the pause gets through
//! (a refused probe means a block, and the segment teaches nothing):
//!
//! - a refusal that the segment alone, with the model's burst, explains at the rate
//!   rekey sends (jitter: a request that arrived early, another client of the same
//!   account) dips the rate by 1% until the instance has been quiet for 10 s; it
//!   does not teach a lower limit;
//! - a refusal that shows the provider admits less: rekey fits rate and burst to
//!   the latest such segments (least squares) and drops the rate to just under
//!   the fitted one at once (at most 4x in one step), so an overstated `rate`
//!   converges in a few refusals and stays there; after 30 s without a refusal
//!   rekey tries 5% more (twice the step after each try that passes, half as often
//!   after each that is refused), never above the playbook.
//!
//! The limiter keeps part of the modelled burst in reserve (it sends at most half
//! of it back to back) so that requests bunched by the network do not find the
//! provider's bucket empty. An episode where nothing succeeds (the probe after a
//! pause refused too) is an outage or a block, not a rate: the instance waits out
//! each Retry-After, sends one probe at a time, and then goes on at the rate it had.
//! Providers that send rate-limit headers (requests left, reset) are paced by them
//! instead ([`InstanceLimit::observe`]), and their 429s teach no rate.
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
use std::collections::VecDeque;
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
/// After a refusal that shows a lower limit, the rate goes this far under the
/// fitted one: a margin for the provider's clock and for the fit's error.
const MARGIN: f64 = 0.98;
/// A refusal after which the segment's own estimate of the provider's rate is at
/// least this share of the rate rekey sends at is explained by jitter (or another
/// client of the same account), not by a lower limit.
const CONSISTENT: f64 = 0.98;
/// What such a refusal costs the rate, until the next quiet period.
const DIP: f64 = 0.99;
/// The most one refusal lowers the rate by (a noisy fit cannot collapse it).
const MAX_DROP: f64 = 4.0;
/// Refused segments the fit looks at: the latest ones describe the provider now.
const SEGMENTS: usize = 8;
/// Quiet time (no refusal, no change) before the rate goes back up to the model's.
const RECOVER_AFTER: Duration = Duration::from_secs(10);
/// Quiet time before rekey tries more than the model's rate (doubled after each try
/// that was refused), and by how much (doubled after each try that was not).
const EXPLORE_AFTER: Duration = Duration::from_secs(30);
const EXPLORE_STEP: f64 = 0.05;
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
    /// Time the instance spent paused by rate-limited answers and used-up windows.
    pub paused_seconds: f64,
    /// Transient failures retried, and those refused a retry by the budget.
    pub retries: u64,
    pub retries_refused: u64,
    /// The playbook's (or the catalog's) rate, and the rate at the end of the run.
    pub configured_per_second: f64,
    pub final_per_second: f64,
    /// The provider's real limit, when rekey measured one below the configured rate,
    /// and the burst the same fit found.
    pub learned_per_second: Option<f64>,
    pub learned_burst: Option<u32>,
}

/// One stretch of requests between two pauses that ended in a refusal: the data
/// the bucket model is fitted to.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    /// The pause before it (`None`: the run's start, the bucket full).
    pause: Option<f64>,
    /// Seconds from its first request to the one refused.
    active: f64,
    /// Requests sent before the refused one, all admitted.
    admitted: u64,
}

/// The provider's bucket as rekey believes it to be.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bucket {
    rate: f64,
    burst: f64,
}

/// Fits rate and burst to refused segments: least squares of `admitted + 0.5 ≈
/// min(burst, rate × pause) + rate × active` (the refused request arrived when the
/// bucket held less than one token, the one before it when it held at least one:
/// half a token is the middle). When the segments cannot tell burst from rate
/// (all as long as each other), a small penalty keeps the burst near `prior`.
fn fit(segments: &VecDeque<Segment>, prior: Bucket) -> Bucket {
    let most = segments.iter().map(|s| s.admitted).max().unwrap_or(0) as f64 + 1.0;
    let mut best = (f64::INFINITY, prior);
    let mut candidate = 1.0f64;
    while candidate <= most.max(1.0) {
        let burst = candidate;
        let mut rate = prior.rate;
        for _ in 0..6 {
            let (mut xy, mut xx) = (0.0, 0.0);
            for s in segments {
                let (x, y) = term(s, burst, rate);
                xy += x * y;
                xx += x * x;
            }
            if xx <= 0.0 {
                break;
            }
            rate = (xy / xx).max(1e-6);
        }
        let sse: f64 = segments
            .iter()
            .map(|s| {
                let (x, y) = term(s, burst, rate);
                (y - rate * x).powi(2)
            })
            .sum::<f64>()
            + 0.05 * (burst - prior.burst).powi(2) / prior.burst.max(1.0);
        if sse < best.0 {
            best = (sse, Bucket { rate, burst });
        }
        // Every burst up to 64, then 5% steps (a provider's burst of 5,000 needs
        // no finer grain).
        candidate = if candidate < 64.0 {
            candidate + 1.0
        } else {
            (candidate * 1.05).ceil()
        };
    }
    best.1
}

/// One segment's term of the fit at `burst` and `rate`: `(x, y)` with `y ≈ rate × x`.
fn term(s: &Segment, burst: f64, rate: f64) -> (f64, f64) {
    let y = s.admitted as f64 + 0.5;
    match s.pause {
        // The pause refilled only part of the bucket: it counts as sending time.
        Some(p) if rate * p < burst => (s.active + p, y),
        _ => (s.active, y - burst),
    }
}

struct State {
    limiter: Arc<Limiter>,
    /// The rate requests leave at, and the model of the provider it comes from.
    current: f64,
    model: Bucket,
    /// Whether the model's rate was measured (below the configured one).
    learned: bool,
    paused_until: Option<Instant>,
    paused_total: Duration,
    /// After a pause, one request goes first; the others wait for its answer.
    probe_pending: bool,
    probe_in_flight: bool,
    /// The segment being sent: its number, when its first request left, how many
    /// left so far, and the pause before it.
    segment: u64,
    segment_start: Option<Instant>,
    segment_sent: u64,
    pause_before: Option<Duration>,
    last_refusal: Option<Instant>,
    /// A refused segment (and the rate it was sent at) waiting for the probe after
    /// the pause: if the probe is refused too, it was a block, not the bucket.
    pending: Option<(Segment, f64)>,
    refused: VecDeque<Segment>,
    last_change: Instant,
    /// Trying more than the model's rate: since when, and how long the instance
    /// must be quiet before the next try.
    exploring: bool,
    explore_after: Duration,
    explore_step: f64,
    /// The provider sends rate-limit headers: they pace the instance, 429s teach
    /// nothing. `paced_by_headers`: the rate is lowered by them now.
    headers_seen: bool,
    paced_by_headers: bool,
    /// When the window the headers spread requests over resets.
    window_reset: Option<Instant>,
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

/// How many requests rekey sends back to back when the provider's burst is
/// `burst`: half of it (at least 2 when it allows 3), so that requests the network
/// bunches together still find tokens, and 2 lets a late timer catch up.
fn send_burst(burst: f64) -> u32 {
    if burst < 3.0 {
        1
    } else {
        ((burst / 2.0).floor() as u32).max(2)
    }
}

/// A limiter at `per_second`, `burst` back to back. `empty`: its burst is spent
/// already, so that a new rate does not open with a burst the old one did not
/// allow (the first permit comes one period after the change).
fn limiter(per_second: f64, burst: u32, clock: &TokioClock, empty: bool) -> Arc<Limiter> {
    let period = Duration::from_secs_f64((1.0 / per_second).clamp(1e-9, 86_400.0 * 365.0));
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst);
    let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
    if empty {
        let _ = limiter.check_n(burst);
    }
    Arc::new(limiter)
}

/// Permission for one request. Report how it went with [`Ticket::succeeded`] or
/// [`Ticket::throttled`]; dropped without a report (a transient or fatal error, a
/// cancelled task) it only releases the probe slot.
pub struct Ticket<'a> {
    limit: &'a InstanceLimit,
    probe: bool,
    reported: bool,
    /// The segment it was sent in, its place there, and when it left.
    segment: u64,
    seq: u64,
    sent: Instant,
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
        self.limit.on_throttle(retry_after, &self);
    }
}

/// The probe role while its request waits for a permit.
struct ProbeRole<'a> {
    limit: &'a InstanceLimit,
    armed: bool,
}

impl Drop for ProbeRole<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.limit.lock();
            state.probe_in_flight = false;
            state.probe_pending = true;
            drop(state);
            self.limit.probe_done.notify_waiters();
        }
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
        let model = Bucket {
            rate: rate.per_second,
            burst: f64::from(rate.burst.max(1)),
        };
        InstanceLimit {
            name: name.into(),
            configured: rate,
            state: Mutex::new(State {
                limiter: limiter(rate.per_second, send_burst(model.burst), &clock, false),
                current: rate.per_second,
                model,
                learned: false,
                paused_until: None,
                paused_total: Duration::ZERO,
                probe_pending: false,
                probe_in_flight: false,
                segment: 0,
                segment_start: None,
                segment_sent: 0,
                pause_before: None,
                last_refusal: None,
                pending: None,
                refused: VecDeque::new(),
                last_change: now,
                exploring: false,
                explore_after: EXPLORE_AFTER,
                explore_step: EXPLORE_STEP,
                headers_seen: false,
                paced_by_headers: false,
                window_reset: None,
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
    /// permit of the limiter; a pause that began while it waited for the permit
    /// sends it back to wait (a permit is cheaper than a refusal).
    pub async fn acquire(&self) -> Ticket<'_> {
        enum Next {
            Sleep(Instant),
            AwaitProbe,
            Go(Arc<Limiter>, bool),
        }
        loop {
            let (limiter, probe) = loop {
                let notified = self.probe_done.notified();
                tokio::pin!(notified);
                let next = {
                    let mut state = self.lock();
                    let now = Instant::now();
                    if state.paced_by_headers && state.window_reset.is_some_and(|t| t <= now) {
                        // The window rekey spread its last requests over has reset.
                        self.restore_after_window(&mut state, now);
                    }
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
            // A probe that does not leave (its task cancelled, or sent back to
            // wait below) hands the role on.
            let mut role = ProbeRole {
                limit: self,
                armed: probe,
            };
            let permitted = loop {
                match limiter.check() {
                    Ok(()) => break true,
                    Err(not_until) => {
                        let wait = not_until.wait_time_from(self.clock.now());
                        // A window rekey spreads requests over resets before the
                        // slow permit: wake then and go at the new rate.
                        let reset = self.lock().window_reset;
                        match reset.filter(|t| *t < Instant::now() + wait) {
                            Some(reset) => {
                                tokio::time::sleep_until(reset).await;
                                break false;
                            }
                            None => tokio::time::sleep(wait).await,
                        }
                    }
                }
            };
            let now = Instant::now();
            if !permitted {
                continue;
            }
            let mut state = self.lock();
            // Paused, or the rate changed (a new limiter), while this request
            // waited for its permit: it waits again, under the new rules.
            if state.paused_until.is_some_and(|t| t > now) || !Arc::ptr_eq(&limiter, &state.limiter)
            {
                drop(state);
                continue;
            }
            role.armed = false;
            if !probe && (state.probe_in_flight || state.probe_pending) {
                continue;
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            if state.segment_start.is_none() {
                state.segment_start = Some(now);
                state.pause_before = state.last_refusal.map(|t| now.duration_since(t));
            }
            let seq = state.segment_sent;
            state.segment_sent += 1;
            return Ticket {
                limit: self,
                probe,
                reported: false,
                segment: state.segment,
                seq,
                sent: now,
            };
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
        let burst = send_burst(state.model.burst).min(rate.ceil().max(1.0) as u32);
        state.limiter = limiter(rate, burst, &self.clock, true);
        state.last_change = now;
    }

    /// Ends the segment being sent without learning from it (a pause that is not
    /// the provider's bucket running dry).
    fn new_segment(state: &mut State, now: Instant) {
        state.segment += 1;
        state.segment_start = None;
        state.segment_sent = 0;
        state.last_refusal = Some(now);
    }

    fn pause(state: &mut State, until: Instant, now: Instant) {
        let from = state.paused_until.filter(|p| *p > now).unwrap_or(now);
        if until > from {
            state.paused_total += until - from;
            state.paused_until = Some(until);
        }
    }

    fn on_success(&self, probe: bool) {
        let mut state = self.lock();
        let now = Instant::now();
        state.budget = (state.budget + BUDGET_RATIO).min(BUDGET_RESERVE * 5.0);
        if probe {
            // The probe after a pause got through: the refusal before the pause
            // was the provider's bucket running dry, and the others wait for the
            // rate learnt from it.
            if let Some((segment, sending)) = state.pending.take() {
                self.learn(&mut state, segment, sending, now);
            }
            state.probe_in_flight = false;
            self.probe_done.notify_waiters();
        }
        if state.paced_by_headers {
            return;
        }
        let quiet = state
            .last_refusal
            .map_or(Duration::MAX, |t| now.duration_since(t))
            .min(now.duration_since(state.last_change));
        let configured = self.configured.per_second;
        let model = state.model.rate.min(configured);
        if state.current < model * 0.999 && quiet >= RECOVER_AFTER {
            // Back to what the model says the provider admits.
            self.set_rate(&mut state, model, now);
            tracing::info!(instance = %self.name, per_second = model, "No rate-limited answer for a while; back to the provider's rate.");
        } else if state.current < configured && quiet >= state.explore_after {
            // The provider may have been strict only for a while: try a little more.
            if state.exploring {
                // The last try went unrefused: the provider admits it.
                state.model.rate = state.current;
                state.explore_after = EXPLORE_AFTER;
                state.explore_step *= 2.0;
            }
            let rate = (state.current * (1.0 + state.explore_step)).min(configured);
            state.exploring = rate < configured;
            if !state.exploring {
                state.model.rate = configured;
                state.learned = false;
            }
            self.set_rate(&mut state, rate, now);
            tracing::info!(instance = %self.name, per_second = rate, "No rate-limited answer for a while; trying a little more.");
        }
    }

    /// The provider's headers said how many requests its window has left. Nearly
    /// none: spread them over the time to the reset (all at once would earn a 429
    /// or a block); none: pause the instance until the reset. Plenty: nothing to do
    /// (slowing down early would waste the provider's allowance during an incident).
    fn observe(&self, hint: RateHint) {
        let mut state = self.lock();
        let now = Instant::now();
        state.headers_seen = true;
        let low = u64::from(self.configured.burst.max(1)) * 2 + 5;
        if hint.remaining == 0 {
            let until = now + hint.reset_in.min(MAX_PAUSE);
            if state.paused_until.is_none_or(|p| p < until) {
                Self::pause(&mut state, until, now);
                Self::new_segment(&mut state, now);
                state.probe_pending = true;
                // The window after the reset is fresh: full speed from its start.
                if state.paced_by_headers {
                    self.restore_after_window(&mut state, now);
                }
                drop(state);
                tracing::warn!(instance = %self.name, wait_ms = hint.reset_in.as_millis() as u64, "Provider's rate-limit window is used up; waiting for it to reset.");
            }
            return;
        }
        if hint.remaining > low {
            // A fresh window after rekey paced itself by headers: back to full speed.
            if state.paced_by_headers {
                self.restore_after_window(&mut state, now);
                drop(state);
                tracing::info!(instance = %self.name, remaining = hint.remaining, "Provider's rate-limit window reset; back to the configured rate.");
            }
            return;
        }
        let pace = hint.remaining as f64 / hint.reset_in.as_secs_f64().max(0.001);
        if pace < state.current * 0.98 {
            state.learned = true;
            state.model.rate = pace;
            state.paced_by_headers = true;
            state.window_reset = Some(now + hint.reset_in);
            self.set_rate(&mut state, pace.max(self.configured.per_second / 1e6), now);
            drop(state);
            tracing::warn!(instance = %self.name, remaining = hint.remaining, reset_ms = hint.reset_in.as_millis() as u64, per_second = pace, "Provider's rate-limit window is nearly used up; spreading the rest until it resets.");
        }
    }

    /// Back to the configured rate after pacing by a provider's window.
    fn restore_after_window(&self, state: &mut State, now: Instant) {
        state.paced_by_headers = false;
        state.window_reset = None;
        state.learned = false;
        state.model.rate = self.configured.per_second;
        self.set_rate(state, self.configured.per_second, now);
    }

    fn on_throttle(&self, retry_after: Option<Duration>, ticket: &Ticket<'_>) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let pause = retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
        let mut state = self.lock();
        let now = Instant::now();
        Self::pause(&mut state, now + pause, now);
        state.probe_pending = true;
        if ticket.probe {
            state.probe_in_flight = false;
        }
        if ticket.segment == state.segment {
            // The first refusal of the segment being sent: what it says about the
            // provider's bucket, learnt once the probe after the pause gets through.
            // A refused first request (a probe, or the run's first) says nothing
            // about a rate: a block or an outage.
            let active = ticket
                .sent
                .duration_since(state.segment_start.unwrap_or(ticket.sent));
            let sending = state.current;
            if ticket.seq == 0 {
                // Refused at once after a pause: a block, so the segment before it
                // says nothing about the rate either.
                state.pending = None;
            } else if !state.headers_seen {
                let segment = Segment {
                    pause: state.pause_before.map(|p| p.as_secs_f64()),
                    active: active.as_secs_f64(),
                    admitted: ticket.seq,
                };
                state.pending = Some((segment, sending));
            }
            Self::new_segment(&mut state, now);
        } else if state.segment_start.is_some() {
            // A late answer to a request of an earlier segment, after the instance
            // started sending again: the pause it adds breaks the segment.
            Self::new_segment(&mut state, now);
        }
        drop(state);
        self.probe_done.notify_waiters();
        tracing::warn!(instance = %self.name, wait_ms = pause.as_millis() as u64, "Provider rate limit hit; pausing the instance.");
    }

    /// Learns from a segment sent at `sending` per second that ended in a refusal.
    /// Alone, with the model's burst, it says whether the refusal shows a lower
    /// limit; if it does, rate and burst are refitted to the segments that did.
    fn learn(&self, state: &mut State, segment: Segment, sending: f64, now: Instant) {
        let configured = self.configured.per_second;
        if state.exploring {
            // The try above the model's rate was refused: wait longer for the next.
            state.exploring = false;
            state.explore_after = (state.explore_after * 2).min(Duration::from_secs(3600));
            state.explore_step = EXPLORE_STEP;
        }
        let (x, y) = term(&segment, state.model.burst, state.model.rate);
        let alone = if x > 0.0 { y / x } else { 0.0 };
        if alone >= sending * CONSISTENT {
            // What jitter or another client does at this rate: a small dip until
            // the next quiet period, no lesson.
            let rate = sending * DIP;
            self.set_rate(state, rate, now);
            tracing::debug!(instance = %self.name, per_second = rate, "Rate-limited at about the provider's rate; slowing down a little for a while.");
            return;
        }
        if state.refused.len() == SEGMENTS {
            state.refused.pop_front();
        }
        state.refused.push_back(segment);
        let fitted = fit(&state.refused, state.model);
        let rate = (fitted.rate * MARGIN).clamp(sending / MAX_DROP, sending * DIP);
        state.model = Bucket {
            rate: fitted.rate.min(sending).min(configured),
            burst: fitted.burst,
        };
        state.learned = true;
        self.set_rate(state, rate, now);
        tracing::warn!(instance = %self.name, measured_per_second = fitted.rate, measured_burst = fitted.burst, per_second = rate, configured_per_second = configured, "Provider admits fewer requests than configured; lowering the rate.");
    }

    pub fn stats(&self) -> LimitStats {
        let state = self.lock();
        LimitStats {
            instance: self.name.clone(),
            requests: self.requests.load(Ordering::Relaxed),
            rate_limited: self.throttled.load(Ordering::Relaxed),
            paused_seconds: state.paused_total.as_secs_f64(),
            retries: self.retries.load(Ordering::Relaxed),
            retries_refused: self.retries_refused.load(Ordering::Relaxed),
            configured_per_second: self.configured.per_second,
            final_per_second: state.current,
            learned_per_second: (state.learned
                && state.model.rate < self.configured.per_second * CONSISTENT)
                .then_some(state.model.rate),
            learned_burst: (state.learned && !state.headers_seen)
                .then_some(state.model.burst.round() as u32),
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

    /// How a simulated provider limits: each model follows a real server's rules.
    enum Policy {
        /// A token bucket (`rate` a second, `burst` at most) answering 429 with
        /// Retry-After: exact, or rounded up to whole seconds (GitHub, Cloudflare,
        /// Twilio, nginx's `add_header Retry-After 1`).
        Bucket {
            rate: f64,
            burst: f64,
            whole_seconds: bool,
        },
        /// At most `limit` requests in any `window` (a moving window, like the
        /// `limits` library's): Retry-After until the oldest leaves it, whole seconds.
        Sliding { limit: usize, window: Duration },
        /// `limit` requests per fixed `window`, with remaining/reset headers on every
        /// answer (Okta's `X-Rate-Limit-Remaining` / `X-Rate-Limit-Reset`).
        Headers { limit: u64, window: Duration },
    }

    /// A provider's server on tokio's clock.
    struct Server {
        policy: Policy,
        start: Instant,
        bucket: Mutex<(f64, Instant)>,
        log: Mutex<VecDeque<Instant>>,
        fixed: Mutex<(u64, u64)>,
        blocked: Mutex<Option<(Instant, Instant)>>,
        admitted: AtomicU64,
        refused: AtomicU64,
        /// Successes per whole second since the start, to see where the rate settled.
        per_second: Mutex<Vec<u64>>,
    }

    /// What an answer carried: success (with headers) or a 429 with its delay.
    type Answer = Result<Option<RateHint>, Duration>;

    impl Server {
        fn new(policy: Policy) -> Arc<Server> {
            let burst = match &policy {
                Policy::Bucket { burst, .. } => *burst,
                _ => 0.0,
            };
            Arc::new(Server {
                policy,
                start: Instant::now(),
                bucket: Mutex::new((burst, Instant::now())),
                log: Mutex::new(VecDeque::new()),
                fixed: Mutex::new((0, 0)),
                blocked: Mutex::new(None),
                admitted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                per_second: Mutex::new(Vec::new()),
            })
        }

        fn bucket(rate: f64, burst: f64) -> Arc<Server> {
            Server::new(Policy::Bucket {
                rate,
                burst,
                whole_seconds: true,
            })
        }

        fn refused(&self) -> u64 {
            self.refused.load(Ordering::Relaxed)
        }

        fn call(&self) -> Answer {
            let now = Instant::now();
            let answer = self.decide(now);
            match answer {
                Ok(_) => {
                    self.admitted.fetch_add(1, Ordering::Relaxed);
                    let second = now.duration_since(self.start).as_secs() as usize;
                    let mut counts = self.per_second.lock().unwrap();
                    if counts.len() <= second {
                        counts.resize(second + 1, 0);
                    }
                    counts[second] += 1;
                }
                Err(_) => {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            answer
        }

        fn decide(&self, now: Instant) -> Answer {
            if let Some((from, to)) = *self.blocked.lock().unwrap()
                && (from..to).contains(&now)
            {
                return Err(Duration::from_secs(1));
            }
            let whole = |d: Duration| Duration::from_secs(d.as_secs_f64().ceil().max(1.0) as u64);
            match &self.policy {
                Policy::Bucket {
                    rate,
                    burst,
                    whole_seconds,
                } => {
                    let mut b = self.bucket.lock().unwrap();
                    b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(*burst);
                    b.1 = now;
                    if b.0 >= 1.0 {
                        b.0 -= 1.0;
                        return Ok(None);
                    }
                    let wait = Duration::from_secs_f64((1.0 - b.0) / rate);
                    Err(if *whole_seconds { whole(wait) } else { wait })
                }
                Policy::Sliding { limit, window } => {
                    let mut log = self.log.lock().unwrap();
                    while log
                        .front()
                        .is_some_and(|t| now.duration_since(*t) >= *window)
                    {
                        log.pop_front();
                    }
                    if log.len() < *limit {
                        log.push_back(now);
                        return Ok(None);
                    }
                    Err(whole(*log.front().unwrap() + *window - now))
                }
                Policy::Headers { limit, window } => {
                    let elapsed = now.duration_since(self.start).as_secs_f64();
                    let index = (elapsed / window.as_secs_f64()) as u64;
                    let reset = self.start + window.mul_f64((index + 1) as f64) - now;
                    let mut fixed = self.fixed.lock().unwrap();
                    if fixed.0 != index {
                        *fixed = (index, 0);
                    }
                    if fixed.1 >= *limit {
                        return Err(reset);
                    }
                    fixed.1 += 1;
                    Ok(Some(RateHint {
                        remaining: limit - fixed.1,
                        reset_in: reset,
                    }))
                }
            }
        }

        /// Successes in each whole second from `from` to the end, but the last.
        fn settled(&self, from: usize) -> Vec<u64> {
            let counts = self.per_second.lock().unwrap();
            counts[from.min(counts.len())..counts.len().saturating_sub(1)].to_vec()
        }
    }

    /// `workers` tasks send `total` successful requests through `limit` to
    /// `server`, retrying 429s as the engine does; each request reaches the server
    /// 1 ms after its permit plus up to `jitter` (the network, a busy machine).
    /// Returns the virtual time taken.
    async fn drive(
        limit: &Arc<InstanceLimit>,
        server: &Arc<Server>,
        total: u64,
        workers: u64,
        jitter: Duration,
    ) -> Duration {
        let start = Instant::now();
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let (limit, server, done) = (limit.clone(), server.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                // xorshift: the same jitter on every run.
                let mut seed =
                    0x9e37_79b9_7f4a_7c15u64 ^ (worker + 1).wrapping_mul(0x1234_5678_9abc);
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % 1_000_000) as f64 / 1_000_000.0
                };
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    loop {
                        let ticket = limit.acquire().await;
                        let delay = Duration::from_millis(1) + jitter.mul_f64(next());
                        tokio::time::sleep(delay).await;
                        let answer = server.call();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        match answer {
                            Ok(hint) => {
                                ticket.succeeded_with(hint);
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

    #[test]
    fn the_fit_tells_rate_from_burst_across_pauses() {
        // nginx at 40 r/s with burst=5 (6 tokens) and Retry-After: 1, sent at 200/s,
        // 100/s and 45/s: short and long segments after 1 s pauses.
        let segments: VecDeque<Segment> = [(0.025, 6), (0.06, 8), (1.2, 53)]
            .into_iter()
            .map(|(active, admitted)| Segment {
                pause: Some(1.0),
                active,
                admitted,
            })
            .collect();
        let prior = Bucket {
            rate: 200.0,
            burst: 1.0,
        };
        let fitted = fit(&segments, prior);
        assert!((38.0..42.0).contains(&fitted.rate), "{fitted:?}");
        assert!((4.0..8.0).contains(&fitted.burst), "{fitted:?}");
        // Short pauses (an exact Retry-After) refill less than the burst: they count
        // as time at the provider's rate.
        let exact: VecDeque<Segment> = [(0.1, 5), (0.5, 21)]
            .into_iter()
            .map(|(active, admitted)| Segment {
                pause: Some(0.025),
                active,
                admitted,
            })
            .collect();
        let fitted = fit(
            &exact,
            Bucket {
                rate: 200.0,
                burst: 40.0,
            },
        );
        assert!((38.0..45.0).contains(&fitted.rate), "{fitted:?}");
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
        let stats = limit.stats();
        assert_eq!(stats.rate_limited, 1);
        assert!((29.9..30.1).contains(&stats.paused_seconds), "{stats:?}");
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

    /// The user's case: a strict bucket of 40/s with burst 5, Retry-After in whole
    /// seconds, and `rate` set to exactly that, with up to 20 ms of jitter.
    #[tokio::test(start_paused = true)]
    async fn whole_second_retry_after_at_the_exact_rate_keeps_full_speed() {
        let limit = Arc::new(InstanceLimit::new("i", rate(40.0, 5)));
        let server = Server::bucket(40.0, 5.0);
        let took = drive(&limit, &server, 2000, 16, Duration::from_millis(20)).await;
        let achieved = 2000.0 / took.as_secs_f64();
        let stats = limit.stats();
        assert!(achieved >= 0.95 * 40.0, "{achieved}/s {stats:?}");
        assert!(server.refused() < 20, "{} 429s {stats:?}", server.refused());
        assert!(stats.learned_per_second.is_none(), "{stats:?}");
        assert!(limit.current_rate() >= 0.98 * 40.0, "{stats:?}");
    }

    /// A few refusals at the right rate (another client took tokens, a request
    /// arrived early) do not lower it.
    #[tokio::test(start_paused = true)]
    async fn a_few_refusals_at_the_configured_rate_do_not_lower_it() {
        let limit = Arc::new(InstanceLimit::new("i", rate(40.0, 5)));
        let server = Server::bucket(40.0, 5.0);
        let thief = {
            let server = server.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_secs(7)).await;
                    // Another client drains the bucket.
                    for _ in 0..8 {
                        let _ = server.call();
                    }
                }
            })
        };
        let took = drive(&limit, &server, 1600, 16, Duration::from_millis(5)).await;
        thief.await.unwrap();
        let stats = limit.stats();
        assert!(stats.rate_limited >= 1, "{stats:?}");
        assert!(stats.learned_per_second.is_none(), "{stats:?}");
        assert!(limit.current_rate() >= 0.98 * 40.0, "{stats:?}");
        // Three refusals cost three whole-second pauses, nothing more.
        assert!(took.as_secs_f64() <= 40.0 + 4.5, "{took:?} {stats:?}");
    }

    /// More requests in flight than the provider's burst: the limiter, not the
    /// concurrency, decides how many leave at once.
    #[tokio::test(start_paused = true)]
    async fn a_burst_smaller_than_the_concurrency_earns_no_refusal() {
        let limit = Arc::new(InstanceLimit::new("i", rate(40.0, 3)));
        let server = Server::bucket(40.0, 3.0);
        let took = drive(&limit, &server, 800, 32, Duration::from_millis(10)).await;
        assert_eq!(server.refused(), 0, "{:?}", limit.stats());
        let achieved = 800.0 / took.as_secs_f64();
        assert!(achieved >= 0.95 * 40.0, "{achieved}/s");
    }

    /// `rate` five times the real limit: a few refusals teach the real rate, the
    /// instance stays there, and the run takes little more than the ideal time.
    #[tokio::test(start_paused = true)]
    async fn an_overstated_rate_converges_to_the_real_one_and_stays() {
        let limit = Arc::new(InstanceLimit::new("i", rate(200.0, 5)));
        let server = Server::bucket(40.0, 5.0);
        let took = drive(&limit, &server, 2400, 32, Duration::from_millis(5)).await;
        let stats = limit.stats();
        let learned = stats.learned_per_second.expect("a limit was learned");
        assert!((37.0..=42.0).contains(&learned), "{stats:?}");
        let ideal = 2400.0 / 40.0;
        assert!(
            took.as_secs_f64() <= 1.1 * ideal,
            "took {took:?} for an ideal of {ideal} s: {stats:?}"
        );
        assert!(stats.rate_limited <= 24, "{stats:?}");
        // Converged within a few seconds: from second 5 on, every second is near
        // the provider's rate but the odd one with a pause (a try at more).
        let settled = server.settled(5);
        let off = settled.iter().filter(|n| !(36..=46).contains(*n)).count();
        assert!(off <= 2, "{settled:?} {stats:?}");
    }

    /// Time spent paused is not the provider's rate: with a long Retry-After the
    /// learner still finds the rate the provider admits while rekey sends.
    #[tokio::test(start_paused = true)]
    async fn pauses_are_not_counted_as_the_providers_rate() {
        let limit = Arc::new(InstanceLimit::new("i", rate(500.0, 1)));
        let server = Server::new(Policy::Bucket {
            rate: 100.0,
            burst: 10.0,
            whole_seconds: true,
        });
        // Retry-After is at least 1 s: 100 requests' worth of time each.
        drive(&limit, &server, 3000, 32, Duration::from_millis(2)).await;
        let stats = limit.stats();
        let learned = stats.learned_per_second.expect("a limit was learned");
        assert!((90.0..=105.0).contains(&learned), "{stats:?}");
        let burst = stats.learned_burst.expect("a burst was fitted");
        assert!((5..=16).contains(&burst), "{stats:?}");
        assert!(stats.paused_seconds <= 8.0, "{stats:?}");
    }

    /// A moving window (at most 100 requests in any 10 s, GitHub's hourly limit
    /// in small): the instance uses each window whole and waits for the next.
    #[tokio::test(start_paused = true)]
    async fn a_sliding_window_is_used_whole_without_a_storm_of_refusals() {
        let limit = Arc::new(InstanceLimit::new("i", rate(50.0, 1)));
        let server = Server::new(Policy::Sliding {
            limit: 100,
            window: Duration::from_secs(10),
        });
        let took = drive(&limit, &server, 600, 8, Duration::from_millis(2)).await;
        let stats = limit.stats();
        // 600 requests at 100 per 10 s: 50 s at best (the first window is free);
        // the fit models the window as a bucket (about 10/s, a burst of about 80)
        // and keeps under it, 0.8 of the best at worst.
        assert!(took.as_secs_f64() <= 62.5, "{took:?} {stats:?}");
        assert!(
            server.refused() <= 20,
            "{} refused: {stats:?}",
            server.refused()
        );
    }

    /// Okta-style headers (requests left, the window's reset): the instance spreads
    /// the last requests of a window and waits for the reset instead of earning 429s.
    #[tokio::test(start_paused = true)]
    async fn reset_headers_pace_the_instance_without_refusals() {
        let limit = Arc::new(InstanceLimit::new("i", rate(100.0, 1)));
        let server = Server::new(Policy::Headers {
            limit: 120,
            window: Duration::from_secs(10),
        });
        let took = drive(&limit, &server, 600, 8, Duration::from_millis(2)).await;
        let stats = limit.stats();
        assert!(
            server.refused() <= 2,
            "{} refused: {stats:?}",
            server.refused()
        );
        // 600 requests at 120 per window: the fifth window, at best.
        assert!(took.as_secs_f64() <= 50.5, "{took:?} {stats:?}");
        assert!(stats.learned_burst.is_none(), "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_of_429s_does_not_lower_the_rate_and_full_speed_returns() {
        let limit = Arc::new(InstanceLimit::new("i", rate(100.0, 5)));
        let server = Server::bucket(100.0, 5.0);
        *server.blocked.lock().unwrap() = Some((
            Instant::now() + Duration::from_secs(5),
            Instant::now() + Duration::from_secs(35),
        ));
        let took = drive(&limit, &server, 3000, 8, Duration::from_millis(2)).await;
        // 30 s of work plus the 30 s outage; a lowered rate would take far longer.
        assert!(took.as_secs_f64() < 62.5, "{took:?} {:?}", limit.stats());
        assert!(limit.current_rate() >= 99.0, "{:?}", limit.stats());
        assert!(limit.stats().learned_per_second.is_none());
        // One probe a second during the outage, not every worker every second.
        let refused = server.refused();
        assert!(refused <= 45, "{refused} 429s during a 30 s outage");
    }

    #[tokio::test(start_paused = true)]
    async fn a_learned_rate_creeps_back_up_when_the_provider_relaxes() {
        let limit = Arc::new(InstanceLimit::new("i", rate(100.0, 5)));
        let strict = Server::bucket(20.0, 5.0);
        drive(&limit, &strict, 200, 8, Duration::from_millis(2)).await;
        let lowered = limit.current_rate();
        assert!(lowered < 22.0, "{:?}", limit.stats());
        // The provider relaxes; quiet from now on: the rate climbs back, never
        // above the configured one.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1800) {
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
    async fn a_probe_cancelled_while_it_waits_for_its_permit_hands_the_role_on() {
        let limit = Arc::new(InstanceLimit::new("i", rate(1.0, 1)));
        limit
            .acquire()
            .await
            .throttled(Some(Duration::from_millis(10)));
        // The probe waits about a second for its permit; its task is cancelled.
        let probe = {
            let limit = limit.clone();
            tokio::spawn(async move {
                limit.acquire().await.succeeded();
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        probe.abort();
        let next = tokio::time::timeout(Duration::from_secs(5), limit.acquire()).await;
        assert!(next.is_ok(), "nobody may send after a cancelled probe");
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
