//! The relation of a consenting relative (art 8.1), checked: a blood relative within the 6th
//! degree, a spouse, or an in-law within the 3rd degree. A guardian is not a relative (its own
//! [`ConsentBy`](super::model::ConsentBy) kind).
//!
//! The relation is typed in as text, either short (`spouse`, `blood:2`, `in-law:3`) or as a
//! description naming its kind and degree (`child (blood, 1st degree)`, `spouse's niece
//! (in-law, 3rd degree)`); the text is kept as typed, and [`Relation::parse`] is the one check
//! every entry point applies.

use std::fmt;

/// Highest degree of a blood relative who may consent (art 8.1).
pub const MAX_BLOOD_DEGREE: u8 = 6;
/// Highest degree of an in-law who may consent (art 8.1).
pub const MAX_IN_LAW_DEGREE: u8 = 3;

/// A relation that art 8.1 accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// Blood relative of this degree (1..=6).
    Blood(u8),
    Spouse,
    /// In-law of this degree (1..=3).
    InLaw(u8),
}

/// Why a relation is not one art 8.1 accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRelation {
    #[error("relation {0:?}: say spouse, blood:N (N 1-6) or in-law:N (N 1-3), or describe it with its kind and degree, e.g. \"child (blood, 1st degree)\" (art 8.1)")]
    Unknown(String),
    #[error("relation {0:?}: the degree is missing (blood:N or \"(blood, Nth degree)\")")]
    NoDegree(String),
    #[error("relation {text:?}: a blood relative of degree {degree} may not consent (art 8.1: within the 6th degree)")]
    BloodTooFar { text: String, degree: u32 },
    #[error("relation {text:?}: an in-law of degree {degree} may not consent (art 8.1: within the 3rd degree)")]
    InLawTooFar { text: String, degree: u32 },
    #[error("relation {0:?}: a guardian consents as --by guardian, not as a relative")]
    Guardian(String),
}

/// The first number in `s` (the degree), if any.
fn degree_in(s: &str) -> Option<u32> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let digits: String = s[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .take(4)
        .collect();
    digits.parse().ok()
}

impl Relation {
    /// Checks a relation as typed (see the module doc for the accepted forms).
    pub fn parse(text: &str) -> Result<Relation, BadRelation> {
        let t = text.trim().to_ascii_lowercase();
        let bad = |f: fn(String) -> BadRelation| f(text.to_string());
        if t.is_empty() || t.chars().count() > 100 || text.chars().any(char::is_control) {
            return Err(bad(BadRelation::Unknown));
        }
        if t.contains("guardian") {
            return Err(bad(BadRelation::Guardian));
        }
        let degree = || degree_in(&t).ok_or_else(|| bad(BadRelation::NoDegree));
        if t.starts_with("in-law") || t.contains("(in-law") || t.contains("in-law,") {
            let d = degree()?;
            return match u8::try_from(d) {
                Ok(n @ 1..=MAX_IN_LAW_DEGREE) => Ok(Relation::InLaw(n)),
                _ => Err(BadRelation::InLawTooFar {
                    text: text.to_string(),
                    degree: d,
                }),
            };
        }
        if t.starts_with("blood") || t.contains("(blood") {
            let d = degree()?;
            return match u8::try_from(d) {
                Ok(n @ 1..=MAX_BLOOD_DEGREE) => Ok(Relation::Blood(n)),
                _ => Err(BadRelation::BloodTooFar {
                    text: text.to_string(),
                    degree: d,
                }),
            };
        }
        if t == "spouse" || t.starts_with("spouse (") {
            return Ok(Relation::Spouse);
        }
        Err(bad(BadRelation::Unknown))
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Relation::Blood(n) => write!(f, "blood:{n}"),
            Relation::Spouse => f.write_str("spouse"),
            Relation::InLaw(n) => write!(f, "in-law:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Art 8.1: blood relatives up to the 6th degree, not the 7th; degree 0 is no relation.
    #[test]
    fn art_8_1_blood_relative_degree_boundaries() {
        assert_eq!(Relation::parse("blood:1"), Ok(Relation::Blood(1)));
        assert_eq!(Relation::parse("blood:6"), Ok(Relation::Blood(6)));
        assert_eq!(
            Relation::parse("cousin's grandchild (blood, 6th degree)"),
            Ok(Relation::Blood(6))
        );
        assert!(matches!(
            Relation::parse("blood:7"),
            Err(BadRelation::BloodTooFar { degree: 7, .. })
        ));
        assert!(matches!(
            Relation::parse("x (blood, 7th degree)"),
            Err(BadRelation::BloodTooFar { degree: 7, .. })
        ));
        assert!(matches!(
            Relation::parse("blood:0"),
            Err(BadRelation::BloodTooFar { degree: 0, .. })
        ));
        assert!(matches!(
            Relation::parse("blood:99999999999"),
            Err(BadRelation::BloodTooFar { .. })
        ));
    }

    /// Art 8.1: in-laws up to the 3rd degree, not the 4th.
    #[test]
    fn art_8_1_in_law_degree_boundaries() {
        assert_eq!(Relation::parse("in-law:1"), Ok(Relation::InLaw(1)));
        assert_eq!(Relation::parse("in-law:3"), Ok(Relation::InLaw(3)));
        assert_eq!(
            Relation::parse("spouse's niece (in-law, 3rd degree)"),
            Ok(Relation::InLaw(3))
        );
        assert!(matches!(
            Relation::parse("in-law:4"),
            Err(BadRelation::InLawTooFar { degree: 4, .. })
        ));
        assert!(matches!(
            Relation::parse("spouse's cousin (in-law, 4th degree)"),
            Err(BadRelation::InLawTooFar { degree: 4, .. })
        ));
    }

    /// Art 8.1: a spouse has no degree; a guardian is its own kind; anything else is refused.
    #[test]
    fn art_8_1_spouse_guardian_and_unknown_relations() {
        assert_eq!(Relation::parse("spouse"), Ok(Relation::Spouse));
        assert_eq!(Relation::parse(" Spouse "), Ok(Relation::Spouse));
        assert_eq!(Relation::parse("spouse").unwrap().to_string(), "spouse");
        assert_eq!(Relation::parse("blood:2").unwrap().to_string(), "blood:2");
        assert!(matches!(
            Relation::parse("guardian"),
            Err(BadRelation::Guardian(_))
        ));
        assert!(matches!(
            Relation::parse("neighbour"),
            Err(BadRelation::Unknown(_))
        ));
        assert!(matches!(Relation::parse(""), Err(BadRelation::Unknown(_))));
        assert!(matches!(
            Relation::parse("child (blood)"),
            Err(BadRelation::NoDegree(_))
        ));
        assert!(matches!(
            Relation::parse("friend\u{7}"),
            Err(BadRelation::Unknown(_))
        ));
    }
}
