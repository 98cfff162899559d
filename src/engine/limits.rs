//! Rate limits per provider instance: one governor limiter shared by every
//! credential of the instance and taken by every attempt, retries included; a
//! rate-limited answer (429 with Retry-After, throttling) pauses the whole instance,
//! not just the request that got it.

use crate::playbook::rate::Rate;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long an instance pauses after a rate-limited answer that gave no delay.
const DEFAULT_PAUSE: Duration = Duration::from_secs(1);

pub struct InstanceLimit {
    limiter: DefaultDirectRateLimiter,
    /// Set by a rate-limited answer: no request leaves before this instant.
    paused_until: Mutex<Option<Instant>>,
    /// Rate-limited answers received, for the summary.
    pub throttled: AtomicU64,
}

impl InstanceLimit {
    pub fn new(rate: Rate) -> InstanceLimit {
        let period = Duration::from_secs_f64((1.0 / rate.per_second).clamp(1e-9, 86_400.0 * 365.0));
        let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        InstanceLimit {
            limiter: RateLimiter::direct(quota),
            paused_until: Mutex::new(None),
            throttled: AtomicU64::new(0),
        }
    }

    /// Waits until a request may leave: after any pause, then for a permit.
    pub async fn acquire(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
    }

    /// The provider said "slow down": pause every request of this instance.
    pub fn throttle(&self, retry_after: Option<Duration>) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let until = Instant::now() + retry_after.unwrap_or(DEFAULT_PAUSE);
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
        tracing::warn!(
            wait_ms = retry_after.unwrap_or(DEFAULT_PAUSE).as_millis() as u64,
            "Provider rate limit hit; pausing the instance."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_every_request_of_the_instance() {
        let limit = InstanceLimit::new(Rate {
            per_second: 1000.0,
            burst: 10,
        });
        let start = Instant::now();
        limit.acquire().await;
        limit.throttle(Some(Duration::from_secs(30)));
        limit.acquire().await;
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert_eq!(limit.throttled.load(Ordering::Relaxed), 1);
    }
}
