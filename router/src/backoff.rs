//! Retry timing: Knative's backoff policies and ISO 8601 durations.

use std::time::Duration;

/// Longest wait between two attempts, whatever the policy computes. Defends
/// against `exponential` with a large retry count waiting for years.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffPolicy {
    /// `delay * 2^n` before retry `n` (1-based).
    Exponential,
    /// `delay * n` before retry `n`.
    Linear,
}

impl BackoffPolicy {
    /// The Knative name.
    pub fn as_str(self) -> &'static str {
        match self {
            BackoffPolicy::Exponential => "exponential",
            BackoffPolicy::Linear => "linear",
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), as
    /// Knative computes it, capped at [`MAX_BACKOFF`].
    pub fn delay(self, base: Duration, retry: u32) -> Duration {
        let factor = match self {
            BackoffPolicy::Exponential => 2u32.checked_pow(retry).unwrap_or(u32::MAX),
            BackoffPolicy::Linear => retry,
        };
        base.checked_mul(factor)
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF)
    }
}

/// Parses an ISO 8601 duration of days, hours, minutes and (fractional)
/// seconds: `PT0.2S`, `PT30S`, `PT1M30S`, `P1DT2H`. Years, months and weeks
/// are refused: their length is ambiguous.
pub fn parse_iso8601(text: &str) -> Option<Duration> {
    let rest = text.strip_prefix('P')?;
    if rest.is_empty() {
        return None;
    }
    let (date, time) = match rest.split_once('T') {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut parse_part = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        let mut unit_index = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let position = units[unit_index..].iter().position(|(u, _)| *u == c)? + unit_index;
            if number.is_empty() || (number.contains('.') && c != 'S') {
                return None;
            }
            total += number.parse::<f64>().ok()? * units[position].1;
            number.clear();
            unit_index = position + 1;
        }
        number.is_empty().then_some(())
    };
    parse_part(date, &[('D', 86_400.0)])?;
    if let Some(time) = time {
        parse_part(time, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// Formats a duration as ISO 8601 seconds, such as `PT0.2S`.
pub fn format_iso8601(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    format!("PT{}S", (secs * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_durations() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(parse_iso8601("PT0.2S"), ms(200));
        assert_eq!(parse_iso8601("PT30S"), ms(30_000));
        assert_eq!(parse_iso8601("PT1M30S"), ms(90_000));
        assert_eq!(parse_iso8601("PT1H"), ms(3_600_000));
        assert_eq!(parse_iso8601("P1DT1S"), ms(86_401_000));
        assert_eq!(parse_iso8601("P2D"), ms(172_800_000));
        for bad in [
            "", "P", "PT", "30S", "PT-1S", "P1Y", "P1M", "PT1S1M", "PT1.5M", "PTS", "pt1s", "PT1S ",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad:?}");
        }
        assert_eq!(format_iso8601(Duration::from_millis(200)), "PT0.2S");
        assert_eq!(
            parse_iso8601(&format_iso8601(Duration::from_millis(1500))),
            ms(1500)
        );
    }

    #[test]
    fn knative_backoff() {
        let base = Duration::from_millis(200);
        assert_eq!(
            BackoffPolicy::Exponential.delay(base, 1),
            Duration::from_millis(400)
        );
        assert_eq!(
            BackoffPolicy::Exponential.delay(base, 3),
            Duration::from_millis(1600)
        );
        assert_eq!(
            BackoffPolicy::Linear.delay(base, 1),
            Duration::from_millis(200)
        );
        assert_eq!(
            BackoffPolicy::Linear.delay(base, 3),
            Duration::from_millis(600)
        );
        assert_eq!(BackoffPolicy::Exponential.delay(base, 60), MAX_BACKOFF);
    }
}
