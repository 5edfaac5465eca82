//! Per-subscription rate limits: a token bucket on tokio's clock, so tests
//! can pause time and step through a schedule.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `rate` per second, bursts of one second's worth.
#[derive(Debug)]
pub struct Bucket {
    pub rate: f64,
    pub tokens: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Bucket { rate, tokens: rate, last: Instant::now() }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
    }

    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    pub fn next_token(&self) -> Instant {
        self.last + Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_at_their_rate() {
        let mut b = Bucket::new(2);
        assert!(b.try_take(Instant::now()));
        assert!(b.try_take(Instant::now()));
        assert!(!b.try_take(Instant::now()), "the burst is one second's worth");
        let next = b.next_token();
        assert_eq!(next - Instant::now(), Duration::from_millis(500));
        tokio::time::sleep_until(next).await;
        assert!(b.try_take(Instant::now()), "a token every 500 ms");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!b.try_take(Instant::now()), "not yet the next");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_take(Instant::now()) && b.try_take(Instant::now()));
        assert!(!b.try_take(Instant::now()), "an idle bucket holds one second's worth, no more");
    }
}
