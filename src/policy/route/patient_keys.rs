//! Query parameters that name a patient (issue 11 item 5).
//!
//! `/patients/P001/labs?patient=P002` is checked and audited as P001; an EMR that reads its
//! patient from the query would show P002. So every query parameter whose key is one of the
//! configured patient keys (`[routes] patient_query_keys`, default `patient`, `patient_id`,
//! `pid`) must carry exactly the route's patient; on a route without a patient it is refused.
//!
//! Keys are compared loosely ([`loose_key`]: after percent-decoding, ASCII case folded,
//! `_` `-` `.` spaces and a PHP-style `[...]` suffix ignored), so `Patient_ID`, `patient-id`,
//! `PID[]` all count. Non-ASCII keys never get this far (see [`super::unicode`]), so fullwidth,
//! `ſ` or Kelvin-sign spellings cannot slip past the comparison. Values are compared exactly:
//! `p001` or `P001 ` beside the route's `P001` is refused too.

use super::error::RouteError;

/// Query keys that name a patient unless `[routes] patient_query_keys` says otherwise.
pub const DEFAULT_PATIENT_QUERY_KEYS: [&str; 3] = ["patient", "patient_id", "pid"];

/// A configured patient query key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatientKeyError {
    #[error(
        "{key:?} must be 1-64 characters of A-Z a-z 0-9 _ . - with at least one letter or digit"
    )]
    BadKey { key: String },
    #[error("{key:?} is the same key as {first:?} once case, '_', '-' and '.' are ignored")]
    Duplicate { key: String, first: String },
}

/// The validated, loosely folded patient keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PatientKeys {
    folded: Vec<String>,
}

impl Default for PatientKeys {
    fn default() -> PatientKeys {
        PatientKeys {
            folded: DEFAULT_PATIENT_QUERY_KEYS
                .iter()
                .map(|k| loose_key(k))
                .collect(),
        }
    }
}

impl PatientKeys {
    /// Validates keys as written in the config; every problem is reported with its index.
    pub(super) fn new(keys: &[String]) -> Result<PatientKeys, Vec<(usize, PatientKeyError)>> {
        let mut errors = Vec::new();
        // (index in `keys`, folded key) of the valid keys so far.
        let mut seen: Vec<(usize, String)> = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            let f = loose_key(key);
            let chars_ok = !key.is_empty()
                && key.len() <= 64
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !chars_ok || f.is_empty() {
                errors.push((i, PatientKeyError::BadKey { key: key.clone() }));
            } else if let Some((first, _)) = seen.iter().find(|(_, x)| *x == f) {
                errors.push((
                    i,
                    PatientKeyError::Duplicate {
                        key: key.clone(),
                        first: keys[*first].clone(),
                    },
                ));
            } else {
                seen.push((i, f));
            }
        }
        if errors.is_empty() {
            Ok(PatientKeys {
                folded: seen.into_iter().map(|(_, f)| f).collect(),
            })
        } else {
            Err(errors)
        }
    }

    /// Every query parameter naming a patient agrees with the route's `patient`; with no
    /// patient (a `no_patient` route) there must be none.
    pub(super) fn check(
        &self,
        patient: Option<&str>,
        pairs: &[(String, String)],
    ) -> Result<(), RouteError> {
        for (k, v) in pairs {
            let f = loose_key(k);
            if !self.folded.contains(&f) {
                continue;
            }
            match patient {
                None => {
                    return Err(RouteError::BadTarget(
                        "patient-parameter-on-no-patient-route",
                    ))
                }
                Some(p) if p != v => {
                    return Err(RouteError::BadTarget("patient-parameter-mismatch"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A loose form of a query key: what various backends might consider "the same name"
/// (case-insensitive, PHP-style `name[...]` arrays, `.`/`-`/space/`_` variants).
pub(super) fn loose_key(key: &str) -> String {
    let base = key.split('[').next().unwrap_or(key);
    base.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The single value of a route's patient query parameter (`patient_query`): exactly one
/// pair whose key is `name` (a look-alike key or a second one is refused).
pub(super) fn query_patient(name: &str, pairs: &[(String, String)]) -> Result<String, RouteError> {
    let wanted = loose_key(name);
    let mut found: Option<&(String, String)> = None;
    for pair in pairs.iter().filter(|(k, _)| loose_key(k) == wanted) {
        if found.is_some() {
            return Err(RouteError::BadTarget("duplicate-patient-parameter"));
        }
        found = Some(pair);
    }
    match found {
        None => Err(RouteError::BadTarget("missing-patient-parameter")),
        Some((k, _)) if k != name => Err(RouteError::BadTarget("lookalike-patient-parameter")),
        Some((_, v)) => Ok(v.clone()),
    }
}
