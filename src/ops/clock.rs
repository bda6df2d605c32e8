//! Japan time. Every date in the rules is a calendar date in Japan (UTC+09:00, no DST); the
//! clock is passed in so that consent windows can be tested at any date.

use std::sync::Arc;

use time::{Date, OffsetDateTime, UtcOffset};

/// UTC+09:00, Japan Standard Time (no daylight saving time since 1952).
pub const JST: UtcOffset = match UtcOffset::from_hms(9, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;

    /// Today's calendar date in Japan.
    fn today(&self) -> Date {
        self.now().to_offset(JST).date()
    }
}

/// The system clock, read in Japan time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc().to_offset(JST)
    }
}

/// A clock stopped at one instant (tests).
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The environment variable that must hold [`TEST_CLOCK_CONSENT`] for `serve --test-clock` to
/// be honoured (integration tests of art 8.3 and 11 at day 999/1000).
pub const TEST_CLOCK_ENV: &str = "SEIBO_GATE_TEST_CLOCK";
/// The value [`TEST_CLOCK_ENV`] must have: long and explicit, so that it is never set by
/// accident in a unit file or a shell profile.
pub const TEST_CLOCK_CONSENT: &str = "fixed-clock-for-tests-only";

#[derive(Debug, thiserror::Error)]
pub enum TestClockError {
    #[error("--test-clock is for tests only: it needs {TEST_CLOCK_ENV}={TEST_CLOCK_CONSENT} in the environment")]
    NotAllowed,
    #[error("--test-clock is refused under systemd (NOTIFY_SOCKET is set): a production gateway always runs on the system clock")]
    UnderSystemd,
    #[error("--test-clock {0:?}: expected RFC 3339, e.g. 2026-04-01T09:00:00+09:00")]
    Invalid(String),
}

/// The clock `serve` runs on: the system clock, or — only with the hidden `--test-clock`
/// flag *and* [`TEST_CLOCK_ENV`] set to [`TEST_CLOCK_CONSENT`], and never under systemd — a
/// clock stopped at the given instant. `env` reads the environment (a parameter for tests).
pub fn serve_clock(
    test_clock: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SharedClock, TestClockError> {
    let Some(at) = test_clock else {
        return Ok(Arc::new(SystemClock));
    };
    if env(TEST_CLOCK_ENV).as_deref() != Some(TEST_CLOCK_CONSENT) {
        return Err(TestClockError::NotAllowed);
    }
    if env("NOTIFY_SOCKET").is_some() {
        return Err(TestClockError::UnderSystemd);
    }
    let t = OffsetDateTime::parse(at.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|_| TestClockError::Invalid(at.to_string()))?;
    tracing::warn!(clock = %rfc3339(t), "TEST CLOCK: this gateway runs on a fixed clock (tests only)");
    Ok(Arc::new(FixedClock(t)))
}

/// RFC 3339 in Japan time, e.g. `2026-11-26T14:38:48.123+09:00`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(JST)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// A time as a physician reads it: Japan time to the minute, e.g. `2026-11-27 15:04 (JST)`.
pub fn local_minutes(t: OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    match t.to_offset(JST).format(&fmt) {
        Ok(s) => format!("{s} (JST)"),
        Err(_) => rfc3339(t),
    }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date, String> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.trim(), &fmt).map_err(|e| format!("{s:?} is not a date YYYY-MM-DD: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn today_is_the_japan_calendar_date() {
        // 2026-03-31 15:30 UTC is already April 1st in Japan.
        let c = FixedClock(datetime!(2026-03-31 15:30 UTC));
        assert_eq!(c.today(), time::macros::date!(2026 - 04 - 01));
        let c = FixedClock(datetime!(2026-03-31 14:59 UTC));
        assert_eq!(c.today(), time::macros::date!(2026 - 03 - 31));
    }

    #[test]
    fn local_minutes_is_japan_time_without_seconds() {
        let t = datetime!(2026-11-27 06:04:59.123456789 UTC);
        assert_eq!(local_minutes(t), "2026-11-27 15:04 (JST)");
    }

    #[test]
    fn test_clock_needs_the_consent_variable_and_no_systemd() {
        let at = Some("2026-04-01T09:00:00+09:00");
        let none = |_: &str| None;
        assert!(serve_clock(None, none).is_ok());
        assert!(matches!(
            serve_clock(at, none),
            Err(TestClockError::NotAllowed)
        ));
        let wrong = |k: &str| (k == TEST_CLOCK_ENV).then(|| "1".to_string());
        assert!(matches!(
            serve_clock(at, wrong),
            Err(TestClockError::NotAllowed)
        ));
        let ok = |k: &str| (k == TEST_CLOCK_ENV).then(|| TEST_CLOCK_CONSENT.to_string());
        let c = serve_clock(at, ok).unwrap();
        assert_eq!(c.today(), time::macros::date!(2026 - 04 - 01));
        let systemd = |k: &str| match k {
            TEST_CLOCK_ENV => Some(TEST_CLOCK_CONSENT.to_string()),
            "NOTIFY_SOCKET" => Some("/run/systemd/notify".to_string()),
            _ => None,
        };
        assert!(matches!(
            serve_clock(at, systemd),
            Err(TestClockError::UnderSystemd)
        ));
        assert!(matches!(
            serve_clock(Some("yesterday"), ok),
            Err(TestClockError::Invalid(_))
        ));
    }

    #[test]
    fn parse_date_rejects_garbage() {
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("yesterday").is_err());
        assert_eq!(
            parse_date("2024-02-29"),
            Ok(time::macros::date!(2024 - 02 - 29))
        );
    }
}
