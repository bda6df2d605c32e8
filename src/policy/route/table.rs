//! The route table: the compiled routes in config order, and [`RouteTable::resolve`], which
//! normalises a request target once and finds the route, the patient and the category it is
//! for — the [`Target`] that is checked and, re-encoded, forwarded.

use crate::registry::ids::PatientId;
use crate::registry::model::Category;

use super::error::RouteError;
use super::normalise::{
    check_target_form, encode_path, normalise_path, parse_query, serialise_query,
};
use super::patient_keys::{self, query_patient, PatientKeyError};
use super::spec::{self, Route, RouteConfigError, RouteSpec};

/// What the request is for, and exactly what will be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Normalised path, percent-encoded for the wire: this, not the client's original, is forwarded.
    pub path: String,
    /// Canonical query string (re-serialised from the parsed pairs), None when absent/empty.
    pub query: Option<String>,
    pub patient: Option<String>,
    pub category: Option<Category>,
    /// Index of the matched route in the table.
    pub route: usize,
    /// The matched route's own request body limit, if it sets one.
    pub max_body_bytes: Option<u64>,
}

impl Target {
    /// The origin-form request target to forward: normalised path plus canonical query.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// The compiled, validated route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Query keys that name a patient: they must agree with the route's patient.
    patient_keys: patient_keys::PatientKeys,
}

impl RouteTable {
    /// Validates every spec, reporting all problems at once.
    pub fn new(specs: &[RouteSpec]) -> Result<RouteTable, Vec<RouteConfigError>> {
        Ok(RouteTable {
            routes: spec::compile_all(specs)?,
            patient_keys: patient_keys::PatientKeys::default(),
        })
    }

    /// Replaces the query keys that name a patient (default
    /// [`DEFAULT_PATIENT_QUERY_KEYS`](super::DEFAULT_PATIENT_QUERY_KEYS)); each problem comes
    /// with the key's index.
    pub fn with_patient_query_keys(
        mut self,
        keys: &[String],
    ) -> Result<RouteTable, Vec<(usize, PatientKeyError)>> {
        self.patient_keys = patient_keys::PatientKeys::new(keys)?;
        Ok(self)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when the table has no routes (everything is then refused).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Normalises the request target and finds the first matching route (config order).
    pub fn resolve(
        &self,
        method: &http::Method,
        path_and_query: &str,
    ) -> Result<Target, RouteError> {
        check_target_form(path_and_query)?;
        let (raw_path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let segments = normalise_path(raw_path)?;
        let pairs = match raw_query {
            Some(q) => parse_query(q)?,
            None => Vec::new(),
        };

        let mut path_matched = false;
        for (index, route) in self.routes.iter().enumerate() {
            let Some((seg_patient, category)) = route.matches(&segments) else {
                continue;
            };
            if !route.allows(method) {
                path_matched = true;
                continue;
            }
            let patient = match (&route.patient_query, seg_patient) {
                (Some(name), _) => Some(query_patient(name, &pairs)?),
                (None, Some(p)) => Some(p.to_owned()),
                (None, None) => None,
            };
            if let Some(p) = &patient {
                if !PatientId::is_valid(p) {
                    return Err(RouteError::BadTarget("bad-patient-id"));
                }
            }
            self.patient_keys.check(patient.as_deref(), &pairs)?;
            return Ok(Target {
                path: encode_path(&segments),
                query: serialise_query(&pairs),
                patient,
                category,
                route: index,
                max_body_bytes: route.max_body_bytes,
            });
        }
        Err(if path_matched {
            RouteError::MethodNotAllowed
        } else {
            RouteError::NoRoute
        })
    }
}
