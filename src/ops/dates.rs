//! Dates typed by an admin, checked against today before they are used: a publication date far
//! in the future (a typo: 2062 for 2026) would register a consent that silently refuses every
//! view until then, and an audit range that cannot hold a record would answer "no records"
//! (exit 0) where the admin mistyped. Both are refused with what was wrong (exit 64).

use time::{Date, Duration, OffsetDateTime};

/// The default of `[admin] future_grace_days`: a form dated a few days ahead is accepted.
pub const DEFAULT_FUTURE_GRACE_DAYS: u32 = 3;

/// `--published`: a date `YYYY-MM-DD`, at most `grace_days` after `today` unless
/// `allow_future`.
pub fn publication(
    text: &str,
    today: Date,
    grace_days: u32,
    allow_future: bool,
) -> Result<Date, String> {
    let d = crate::ops::clock::parse_date(text).map_err(|e| format!("--published: {e}"))?;
    let limit = today + Duration::days(i64::from(grace_days));
    if d > limit && !allow_future {
        return Err(format!(
            "--published {d} is {} days after today ({today}, Japan): the consent would refuse \
             every view until then. Check the date on the form; if it really is in the future, \
             add --allow-future (up to {grace_days} days ahead is accepted without it: \
             [admin] future_grace_days)",
            (d - today).whole_days()
        ));
    }
    Ok(d)
}

/// `--since` / `--until` of `audit query`: `since` must come before `until` (`until` is
/// exclusive, so equal bounds hold nothing), and `since` may not lie beyond `grace_days` from
/// `now` (no record can be there yet).
pub fn query_range(
    since: Option<OffsetDateTime>,
    until: Option<OffsetDateTime>,
    now: OffsetDateTime,
    grace_days: u32,
) -> Result<(), String> {
    let show = crate::ops::clock::rfc3339;
    if let (Some(s), Some(u)) = (since, until) {
        if s >= u {
            return Err(format!(
                "--since {} is not before --until {} (until is exclusive): the range holds no \
                 record. Swap them, or for one day give --since DAY --until NEXT-DAY",
                show(s),
                show(u)
            ));
        }
    }
    if let Some(s) = since {
        if s > now + Duration::days(i64::from(grace_days)) {
            return Err(format!(
                "--since {} is in the future (now {}): no record can match yet",
                show(s),
                show(now)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn art_8_3_publication_beyond_the_grace_needs_allow_future() {
        let today = date!(2026 - 11 - 26);
        assert_eq!(
            publication("2026-11-29", today, 3, false),
            Ok(date!(2026 - 11 - 29))
        );
        let e = publication("2026-11-30", today, 3, false).expect_err("4 days ahead");
        assert!(e.contains("--allow-future") && e.contains("4 days"), "{e}");
        assert_eq!(
            publication("2030-01-01", today, 3, true),
            Ok(date!(2030 - 01 - 01))
        );
        assert!(publication("2030-01-01", today, 0, false).is_err());
        assert_eq!(
            publication("2024-02-29", today, 0, false),
            Ok(date!(2024 - 02 - 29))
        );
        assert!(publication("2026-02-30", today, 3, true).is_err());
    }

    #[test]
    fn art_12_8_reversed_empty_or_future_query_ranges_are_refused() {
        let now = datetime!(2026-11-26 12:00 +09:00);
        let d = |s: &str| Some(crate::audit::parse_time_arg(s).expect("time"));
        assert!(query_range(d("2026-04-01"), d("2026-04-02"), now, 3).is_ok());
        assert!(query_range(None, d("2030-01-01"), now, 3).is_ok());
        let e = query_range(d("2026-04-02"), d("2026-04-01"), now, 3).expect_err("reversed");
        assert!(e.contains("not before --until"), "{e}");
        assert!(query_range(d("2026-04-01"), d("2026-04-01"), now, 3).is_err());
        let e = query_range(d("2027-01-01"), None, now, 3).expect_err("future");
        assert!(e.contains("in the future"), "{e}");
    }
}
