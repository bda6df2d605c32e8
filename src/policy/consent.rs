//! The consent decision (art 8.1, 8.3, 9.2, 11): pure calendar arithmetic on a patient's
//! consent record. No I/O: the store reads the record, this module says yes or no.
//!
//! * Access is allowed while `today <= max(published + 999 days, last_view + 999 days)`;
//!   only the first term when the patient declined the automatic extension.
//! * The viewable records start 2 calendar years before the publication date
//!   (29 February minus two years is 28 February).
//! * A withdrawn consent never allows access (art 9.2).
//! * A consent whose access has ended is purged (art 11).

use time::{Date, Duration};

use crate::registry::model::Consent;

/// Days of access after publication or after the last view (art 8.3, art 11).
pub const ACCESS_DAYS: i64 = 999;
/// Years of records before publication that may be viewed (art 8.3).
pub const LOOKBACK_YEARS: i32 = 2;

/// The records a physician may see, passed to the EMR in request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First day of viewable records: published − 2 years.
    pub records_from: Date,
    /// Last day on which access is allowed (before this view extends it).
    pub access_until: Date,
}

/// Why consent does not allow access. Variants are what a refusal page and the audit say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsentRefusal {
    #[error("no consent is registered for this patient")]
    NoConsent,
    #[error("the consent was withdrawn")]
    Withdrawn,
    #[error("the consent is not published yet")]
    NotYetPublished,
    #[error("the viewing period has ended")]
    Expired,
}

impl ConsentRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            ConsentRefusal::NoConsent => "no-consent",
            ConsentRefusal::Withdrawn => "consent-withdrawn",
            ConsentRefusal::NotYetPublished => "consent-not-yet-published",
            ConsentRefusal::Expired => "viewing-period-ended",
        }
    }
}

/// `date + days`, saturating at the calendar's end instead of failing.
fn add_days(date: Date, days: i64) -> Date {
    date.checked_add(Duration::days(days)).unwrap_or(Date::MAX)
}

/// The last day on which access is allowed.
pub fn access_until(c: &Consent) -> Date {
    let by_publication = add_days(c.published, ACCESS_DAYS);
    match (c.no_extension, c.last_view) {
        (false, Some(last)) => by_publication.max(add_days(last, ACCESS_DAYS)),
        _ => by_publication,
    }
}

/// First day of viewable records: two calendar years before publication.
pub fn records_from(published: Date) -> Date {
    let year = published.year() - LOOKBACK_YEARS;
    let month = published.month();
    let mut day = published.day();
    loop {
        if let Ok(d) = Date::from_calendar_date(year, month, day) {
            return d;
        }
        // 29 February in a year without one: the last day of that February.
        if day <= 28 {
            return Date::MIN;
        }
        day -= 1;
    }
}

/// Decides whether the consent allows a view today.
pub fn evaluate(c: &Consent, today: Date) -> Result<Window, ConsentRefusal> {
    if c.withdrawn.is_some() {
        return Err(ConsentRefusal::Withdrawn);
    }
    if today < c.published {
        return Err(ConsentRefusal::NotYetPublished);
    }
    let until = access_until(c);
    if today > until {
        return Err(ConsentRefusal::Expired);
    }
    Ok(Window {
        records_from: records_from(c.published),
        access_until: until,
    })
}

/// True when art 11 asks for the record to be deleted: access ended (999 days after the
/// last view, or after publication when never viewed or extension declined).
pub fn purgeable(c: &Consent, today: Date) -> bool {
    today > access_until(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{ConsentBy, Withdrawal};
    use time::macros::date;

    fn consent(published: Date) -> Consent {
        Consent {
            patient: "P1".into(),
            by: ConsentBy::Patient,
            site: "seiyo-hospital".into(),
            form_ref: "F6-1".into(),
            published,
            no_extension: false,
            last_view: None,
            withdrawn: None,
            links: Vec::new(),
            explanation: None,
        }
    }

    /// Art 8.3: day 999 after publication is allowed, day 1000 is refused.
    #[test]
    fn art_8_3_day_999_allowed_day_1000_refused() {
        let p = date!(2024 - 01 - 10);
        let c = consent(p);
        let day999 = p + Duration::days(999);
        assert_eq!(day999, date!(2026 - 10 - 05));
        assert!(evaluate(&c, day999).is_ok());
        assert_eq!(
            evaluate(&c, day999 + Duration::days(1)),
            Err(ConsentRefusal::Expired)
        );
    }

    /// Art 8.3: the automatic extension counts 999 days from the last view; a view on the
    /// last day extends to last day + 999.
    #[test]
    fn art_8_3_extension_on_the_last_day() {
        let p = date!(2023 - 03 - 01);
        let mut c = consent(p);
        let last_day = p + Duration::days(999);
        assert!(evaluate(&c, last_day).is_ok());
        c.last_view = Some(last_day);
        assert_eq!(access_until(&c), last_day + Duration::days(999));
        assert!(evaluate(&c, last_day + Duration::days(999)).is_ok());
        assert_eq!(
            evaluate(&c, last_day + Duration::days(1000)),
            Err(ConsentRefusal::Expired)
        );
    }

    /// Art 8.3 "unless otherwise requested": a declined extension ignores the last view.
    #[test]
    fn art_8_3_declined_extension_ends_999_days_after_publication() {
        let p = date!(2023 - 03 - 01);
        let mut c = consent(p);
        c.no_extension = true;
        c.last_view = Some(p + Duration::days(900));
        assert!(evaluate(&c, p + Duration::days(999)).is_ok());
        assert_eq!(
            evaluate(&c, p + Duration::days(1000)),
            Err(ConsentRefusal::Expired)
        );
    }

    /// Leap days count as days: 999 days from 2023-06-01 crosses 29 Feb 2024.
    #[test]
    fn art_8_3_window_counts_leap_days() {
        let p = date!(2023 - 06 - 01);
        let c = consent(p);
        // 2023-06-01 + 999 days = 2026-02-24 (2024 has 366 days).
        assert_eq!(access_until(&c), date!(2026 - 02 - 24));
        assert!(evaluate(&c, date!(2026 - 02 - 24)).is_ok());
        assert!(evaluate(&c, date!(2026 - 02 - 25)).is_err());
    }

    /// Art 8.3: records from two calendar years before publication; 29 Feb maps to 28 Feb.
    #[test]
    fn art_8_3_records_from_two_years_before_publication() {
        assert_eq!(records_from(date!(2026 - 11 - 26)), date!(2024 - 11 - 26));
        assert_eq!(records_from(date!(2024 - 02 - 29)), date!(2022 - 02 - 28));
        assert_eq!(records_from(date!(2026 - 03 - 01)), date!(2024 - 03 - 01));
        let w = evaluate(&consent(date!(2024 - 02 - 29)), date!(2024 - 03 - 01));
        assert_eq!(
            w,
            Ok(Window {
                records_from: date!(2022 - 02 - 28),
                access_until: date!(2026 - 11 - 24)
            })
        );
    }

    /// Art 9.2: a withdrawal stops access even inside the period.
    #[test]
    fn art_9_2_withdrawn_consent_refuses_inside_the_period() {
        let mut c = consent(date!(2026 - 01 - 01));
        c.withdrawn = Some(Withdrawal {
            form_ref: "F7-1".into(),
            date: date!(2026 - 02 - 01),
        });
        assert_eq!(
            evaluate(&c, date!(2026 - 02 - 02)),
            Err(ConsentRefusal::Withdrawn)
        );
    }

    #[test]
    fn art_8_3_not_yet_published_is_refused() {
        let c = consent(date!(2026 - 12 - 01));
        assert_eq!(
            evaluate(&c, date!(2026 - 11 - 30)),
            Err(ConsentRefusal::NotYetPublished)
        );
        assert!(evaluate(&c, date!(2026 - 12 - 01)).is_ok());
    }

    /// Art 11: purge 999 days after the last view (the day after access ends).
    #[test]
    fn art_11_purge_after_access_ends() {
        let p = date!(2022 - 01 - 01);
        let mut c = consent(p);
        c.last_view = Some(date!(2023 - 01 - 01));
        let until = date!(2023 - 01 - 01) + Duration::days(999);
        assert!(!purgeable(&c, until));
        assert!(purgeable(&c, until + Duration::days(1)));
    }

    #[test]
    fn far_future_dates_saturate_instead_of_panicking() {
        let c = consent(Date::MAX);
        assert_eq!(access_until(&c), Date::MAX);
    }
}
