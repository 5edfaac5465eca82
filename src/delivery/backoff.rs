//! The retry schedule and the verdict on each attempt. Pure: time and
//! randomness come in as arguments.

use std::time::Duration;

/// How an attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Any 2xx.
    Success,
    /// Connection error, timeout, 408, 429 or 5xx: try again later.
    Retryable { retry_after: Option<Duration> },
    /// 410 Gone: the endpoint is gone; disable the subscription.
    Gone,
    /// Any other answer (3xx, other 4xx): retrying will not help.
    Permanent,
}

/// Classifies an HTTP status.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Attempt {
    match status {
        200..=299 => Attempt::Success,
        408 | 429 | 500..=599 => Attempt::Retryable { retry_after },
        410 => Attempt::Gone,
        _ => Attempt::Permanent,
    }
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    /// Try again at this time (epoch ms).
    RetryAt(i64),
    Failed,
    /// The schedule is exhausted.
    Dead,
}

/// The retry schedule: the delay before each attempt after the first, with
/// proportional jitter, and the bounds within which `Retry-After` is honoured.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delays before attempts 2, 3, ...; its length + 1 is the number of attempts.
    pub delays: Vec<Duration>,
    /// ±fraction of each delay drawn at random (0.2 = ±20 %).
    pub jitter: f64,
    /// Longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// Immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts
    /// over about 27.6 hours), ±20 %.
    fn default() -> Self {
        RetryPolicy {
            delays: [5, 300, 1_800, 7_200, 18_000, 36_000, 36_000].into_iter().map(Duration::from_secs).collect(),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(86_400),
        }
    }
}

impl RetryPolicy {
    /// The fate of a delivery whose attempt number `attempts` (1-based,
    /// counting this one) ended as `attempt`, at `now` (epoch ms). `unit` is
    /// a uniform random number in [0, 1) for the jitter.
    pub fn next(&self, attempt: Attempt, attempts: u32, now: i64, unit: f64) -> Next {
        match attempt {
            Attempt::Success => Next::Succeeded,
            Attempt::Gone | Attempt::Permanent => Next::Failed,
            Attempt::Retryable { retry_after } => {
                let Some(delay) = self.delays.get(attempts.saturating_sub(1) as usize) else {
                    return Next::Dead;
                };
                let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
                let mut delay = delay.mul_f64(factor.max(0.0));
                // A server may ask for more time (within bounds), never less.
                if let Some(asked) = retry_after {
                    delay = delay.max(asked.min(self.max_retry_after));
                }
                Next::RetryAt(now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)))
            }
        }
    }

    /// Attempts in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX).saturating_add(1)
    }
}

/// Parses `Retry-After`: delay seconds, or an HTTP date relative to `now`.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9)));
    }
    let format = time::format_description::well_known::Rfc2822;
    let at = time::OffsetDateTime::parse(value, &format)
        .or_else(|_| {
            // The IMF-fixdate form: "Sun, 06 Nov 1994 08:49:37 GMT".
            let f = time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            );
            time::PrimitiveDateTime::parse(value, &f).map(time::PrimitiveDateTime::assume_utc)
        })
        .ok()?;
    let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()?;
    Some(Duration::from_millis(u64::try_from(ms.saturating_sub(now_ms)).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000_000_000;

    #[test]
    fn statuses() {
        assert_eq!(classify_status(204, None), Attempt::Success);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(classify_status(s, None), Attempt::Retryable { .. }), "{s}");
        }
        assert_eq!(classify_status(410, None), Attempt::Gone);
        for s in [301, 302, 400, 401, 403, 404, 422] {
            assert_eq!(classify_status(s, None), Attempt::Permanent, "{s}");
        }
    }

    #[test]
    fn the_default_schedule_without_jitter() {
        let p = RetryPolicy::default();
        let retry = Attempt::Retryable { retry_after: None };
        let expected = [5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];
        for (i, delay) in expected.iter().enumerate() {
            // unit 0.5 = no jitter.
            assert_eq!(p.next(retry, i as u32 + 1, NOW, 0.5), Next::RetryAt(NOW + delay), "after attempt {}", i + 1);
        }
        assert_eq!(p.next(retry, 8, NOW, 0.5), Next::Dead);
        assert_eq!(p.max_attempts(), 8);
        assert_eq!(p.next(Attempt::Success, 3, NOW, 0.5), Next::Succeeded);
        assert_eq!(p.next(Attempt::Permanent, 1, NOW, 0.5), Next::Failed);
        assert_eq!(p.next(Attempt::Gone, 1, NOW, 0.5), Next::Failed);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let p = RetryPolicy::default();
        let retry = Attempt::Retryable { retry_after: None };
        assert_eq!(p.next(retry, 2, NOW, 0.0), Next::RetryAt(NOW + 240_000));
        assert_eq!(p.next(retry, 2, NOW, 1.0), Next::RetryAt(NOW + 360_000));
        for i in 0..100 {
            let Next::RetryAt(at) = p.next(retry, 2, NOW, f64::from(i) / 100.0) else { panic!("retry") };
            assert!((NOW + 240_000..=NOW + 360_000).contains(&at));
        }
    }

    #[test]
    fn retry_after_only_lengthens_within_bounds() {
        let p = RetryPolicy::default();
        let asked = |s| Attempt::Retryable { retry_after: Some(Duration::from_secs(s)) };
        assert_eq!(p.next(asked(1), 2, NOW, 0.5), Next::RetryAt(NOW + 300_000), "never shorter");
        assert_eq!(p.next(asked(600), 2, NOW, 0.5), Next::RetryAt(NOW + 600_000));
        assert_eq!(p.next(asked(10 * 86_400), 2, NOW, 0.5), Next::RetryAt(NOW + 86_400_000), "capped");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120", NOW), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("1.5", NOW), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_retry_after("-3", NOW), None);
        assert_eq!(parse_retry_after("soon", NOW), None);
        // 2001-09-09T01:46:40Z is NOW; one minute later:
        assert_eq!(parse_retry_after("Sun, 09 Sep 2001 01:47:40 GMT", NOW), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Sun, 09 Sep 2001 01:00:00 GMT", NOW), Some(Duration::ZERO));
    }
}
