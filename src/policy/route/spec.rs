//! A route as written in the config (`[[route]]`), its problems, and its compiled form: the
//! path template as segments, the patient and category sources, the methods, and the
//! structural match against a normalised path.

use std::fmt;

use crate::registry::model::Category;

/// One route as written in the config file (`[[route]]` tables).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Path template: segments are literals, `{patient}`, `{category}`, `*` (exactly one
    /// segment), or a final `**` (zero or more remaining segments).
    pub path: String,
    /// Fixed category when the template has no `{category}`.
    #[serde(default)]
    pub category: Option<Category>,
    /// Name of the query parameter that carries the patient id (instead of `{patient}` in the path).
    #[serde(default)]
    pub patient_query: Option<String>,
    /// True for routes that carry no patient (static assets of the EMR).
    #[serde(default)]
    pub no_patient: bool,
    /// Allowed methods; default ["GET", "HEAD"].
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Largest request body accepted on this route (413 beyond); default `[limits]
    /// max_body_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

/// A configuration problem with one route. Every message names the route by its
/// index in the config (0-based, the order of the `[[route]]` tables) and its template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteConfigError {
    #[error("route #{index}: empty path template")]
    EmptyTemplate { index: usize },
    #[error("route #{index} ({template:?}): path template must start with '/'")]
    NotAbsolute { index: usize, template: String },
    #[error(
        "route #{index} ({template:?}): empty segment ('//' or trailing '/') in path template"
    )]
    EmptySegment { index: usize, template: String },
    #[error(
        "route #{index} ({template:?}): '.' and '..' segments are not allowed in a path template"
    )]
    DotSegment { index: usize, template: String },
    #[error("route #{index} ({template:?}): literal segment {segment:?} has characters outside A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) + , = : @")]
    BadLiteral {
        index: usize,
        template: String,
        segment: String,
    },
    #[error("route #{index} ({template:?}): unknown placeholder {placeholder:?} (use {{patient}}, {{category}}, * or a final **)")]
    UnknownPlaceholder {
        index: usize,
        template: String,
        placeholder: String,
    },
    #[error("route #{index} ({template:?}): placeholder {placeholder} appears more than once")]
    RepeatedPlaceholder {
        index: usize,
        template: String,
        placeholder: &'static str,
    },
    #[error("route #{index} ({template:?}): '**' is only allowed as the last segment")]
    GlobNotLast { index: usize, template: String },
    #[error("route #{index} ({template:?}): {problem}")]
    PatientSource {
        index: usize,
        template: String,
        problem: &'static str,
    },
    #[error("route #{index} ({template:?}): {problem}")]
    CategorySource {
        index: usize,
        template: String,
        problem: &'static str,
    },
    #[error("route #{index} ({template:?}): patient_query name {name:?} must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadPatientQuery {
        index: usize,
        template: String,
        name: String,
    },
    #[error("route #{index} ({template:?}): methods list is empty")]
    NoMethods { index: usize, template: String },
    #[error("route #{index} ({template:?}): bad method {method:?} ({problem})")]
    BadMethod {
        index: usize,
        template: String,
        method: String,
        problem: &'static str,
    },
    #[error("route #{index} ({template:?}): duplicates route #{first} ({first_template:?})")]
    Duplicate {
        index: usize,
        template: String,
        first: usize,
        first_template: String,
    },
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Literal(String),
    Patient,
    Category,
    Any,
    Rest,
}

impl fmt::Display for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Literal(s) => f.write_str(s),
            Seg::Patient => f.write_str("{patient}"),
            Seg::Category => f.write_str("{category}"),
            Seg::Any => f.write_str("*"),
            Seg::Rest => f.write_str("**"),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Route {
    pub(super) segs: Vec<Seg>,
    pub(super) category: Option<Category>,
    pub(super) patient_query: Option<String>,
    pub(super) methods: Vec<http::Method>,
    pub(super) max_body_bytes: Option<u64>,
}

impl Route {
    pub(super) fn allows(&self, method: &http::Method) -> bool {
        self.methods.contains(method)
            || (*method == http::Method::HEAD && self.methods.contains(&http::Method::GET))
    }

    /// Structural match. Returns the captured patient segment and category.
    pub(super) fn matches<'a>(
        &self,
        path: &'a [String],
    ) -> Option<(Option<&'a str>, Option<Category>)> {
        let mut patient = None;
        let mut category = self.category;
        let mut i = 0;
        for seg in &self.segs {
            match seg {
                Seg::Rest => return Some((patient, category)),
                _ => {
                    let got = path.get(i)?;
                    match seg {
                        Seg::Literal(l) => {
                            if l != got {
                                return None;
                            }
                        }
                        Seg::Patient => patient = Some(got.as_str()),
                        Seg::Category => category = Some(got.parse::<Category>().ok()?),
                        Seg::Any | Seg::Rest => {}
                    }
                    i += 1;
                }
            }
        }
        (i == path.len()).then_some((patient, category))
    }
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,=:@".contains(c)
}

fn is_query_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-".contains(c)
}

/// Compiles every spec, reporting all problems at once (each names its route's index).
pub(super) fn compile_all(specs: &[RouteSpec]) -> Result<Vec<Route>, Vec<RouteConfigError>> {
    let mut errors = Vec::new();
    let mut routes = Vec::with_capacity(specs.len());
    // (index, canonical template) of routes seen so far, for duplicate detection.
    let mut seen: Vec<(usize, Vec<Seg>)> = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        let before = errors.len();
        let segs = compile_template(index, &spec.path, &mut errors);
        if let Some(segs) = &segs {
            if let Some((first, _)) = seen.iter().find(|(_, s)| s == segs) {
                errors.push(RouteConfigError::Duplicate {
                    index,
                    template: spec.path.clone(),
                    first: *first,
                    first_template: specs[*first].path.clone(),
                });
            } else {
                seen.push((index, segs.clone()));
            }
        }
        check_patient_source(index, spec, &mut errors);
        check_category_source(index, spec, &mut errors);
        let methods = compile_methods(index, spec, &mut errors);
        if errors.len() == before {
            if let Some(segs) = segs {
                routes.push(Route {
                    segs,
                    category: spec.category,
                    patient_query: spec.patient_query.clone(),
                    methods,
                    max_body_bytes: spec.max_body_bytes,
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(errors)
    }
}

/// The patient comes from exactly one place (`{patient}` or `patient_query`), or from none
/// on a `no_patient` route; a `patient_query` name must be usable.
fn check_patient_source(index: usize, spec: &RouteSpec, errors: &mut Vec<RouteConfigError>) {
    // Judged on the raw text so a malformed template does not add spurious errors.
    let has_patient_seg = spec.path.split('/').any(|s| s == "{patient}");
    let problem = match (spec.no_patient, has_patient_seg, &spec.patient_query) {
        (true, true, _) => Some("no_patient route must not have {patient}"),
        (true, false, Some(_)) => Some("no_patient route must not have patient_query"),
        (false, true, Some(_)) => {
            Some("both {patient} and patient_query given: the patient must come from exactly one place")
        }
        (false, false, None) => Some(
            "no patient source: add {patient} to the path, set patient_query, or set no_patient = true",
        ),
        _ => None,
    };
    if let Some(problem) = problem {
        errors.push(RouteConfigError::PatientSource {
            index,
            template: spec.path.clone(),
            problem,
        });
    }
    if let Some(name) = &spec.patient_query {
        if name.is_empty() || name.len() > 64 || !name.chars().all(is_query_name_char) {
            errors.push(RouteConfigError::BadPatientQuery {
                index,
                template: spec.path.clone(),
                name: name.clone(),
            });
        }
    }
}

/// The category comes from exactly one place (`{category}` or `category`); a `no_patient`
/// route may have none.
fn check_category_source(index: usize, spec: &RouteSpec, errors: &mut Vec<RouteConfigError>) {
    let has_category_seg = spec.path.split('/').any(|s| s == "{category}");
    let problem = match (spec.no_patient, has_category_seg, spec.category) {
        (_, true, Some(_)) => Some(
            "both {category} and category given: the category must come from exactly one place",
        ),
        (false, false, None) => {
            Some("no category source: add {category} to the path or set category")
        }
        _ => None,
    };
    if let Some(problem) = problem {
        errors.push(RouteConfigError::CategorySource {
            index,
            template: spec.path.clone(),
            problem,
        });
    }
}

/// The route's methods (default `GET`, `HEAD`), each checked, duplicates dropped.
fn compile_methods(
    index: usize,
    spec: &RouteSpec,
    errors: &mut Vec<RouteConfigError>,
) -> Vec<http::Method> {
    let Some(list) = &spec.methods else {
        return vec![http::Method::GET, http::Method::HEAD];
    };
    if list.is_empty() {
        errors.push(RouteConfigError::NoMethods {
            index,
            template: spec.path.clone(),
        });
    }
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        match parse_method(m) {
            Ok(method) => {
                if !out.contains(&method) {
                    out.push(method);
                }
            }
            Err(problem) => errors.push(RouteConfigError::BadMethod {
                index,
                template: spec.path.clone(),
                method: m.clone(),
                problem,
            }),
        }
    }
    out
}

fn parse_method(m: &str) -> Result<http::Method, &'static str> {
    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("method names are upper-case letters, e.g. GET");
    }
    if m == "CONNECT" || m == "TRACE" {
        return Err("CONNECT and TRACE are never routed");
    }
    http::Method::from_bytes(m.as_bytes()).map_err(|_| "not a valid HTTP method token")
}

fn compile_template(
    index: usize,
    template: &str,
    errors: &mut Vec<RouteConfigError>,
) -> Option<Vec<Seg>> {
    if template.is_empty() {
        errors.push(RouteConfigError::EmptyTemplate { index });
        return None;
    }
    let t = || template.to_owned();
    let Some(rest) = template.strip_prefix('/') else {
        errors.push(RouteConfigError::NotAbsolute {
            index,
            template: t(),
        });
        return None;
    };
    if rest.is_empty() {
        return Some(Vec::new()); // the root "/"
    }
    let before = errors.len();
    let raw: Vec<&str> = rest.split('/').collect();
    let mut segs = Vec::with_capacity(raw.len());
    let mut empty_reported = false;
    let mut dot_reported = false;
    for (i, s) in raw.iter().enumerate() {
        let seg = match *s {
            "" => {
                if !empty_reported {
                    errors.push(RouteConfigError::EmptySegment {
                        index,
                        template: t(),
                    });
                    empty_reported = true;
                }
                continue;
            }
            "." | ".." => {
                if !dot_reported {
                    errors.push(RouteConfigError::DotSegment {
                        index,
                        template: t(),
                    });
                    dot_reported = true;
                }
                continue;
            }
            "{patient}" => Seg::Patient,
            "{category}" => Seg::Category,
            "*" => Seg::Any,
            "**" => {
                if i + 1 != raw.len() {
                    errors.push(RouteConfigError::GlobNotLast {
                        index,
                        template: t(),
                    });
                }
                Seg::Rest
            }
            other if other.contains(['{', '}', '*']) => {
                errors.push(RouteConfigError::UnknownPlaceholder {
                    index,
                    template: t(),
                    placeholder: other.to_owned(),
                });
                continue;
            }
            other => {
                if !other.chars().all(is_literal_char) {
                    errors.push(RouteConfigError::BadLiteral {
                        index,
                        template: t(),
                        segment: other.to_owned(),
                    });
                    continue;
                }
                Seg::Literal(other.to_owned())
            }
        };
        segs.push(seg);
    }
    for (kind, name) in [(Seg::Patient, "{patient}"), (Seg::Category, "{category}")] {
        if segs.iter().filter(|s| **s == kind).count() > 1 {
            errors.push(RouteConfigError::RepeatedPlaceholder {
                index,
                template: t(),
                placeholder: name,
            });
        }
    }
    (errors.len() == before).then_some(segs)
}
