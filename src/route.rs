//! Request routing: which patient and which record category a request is for,
//! and exactly what is forwarded to the EMR.
//!
//! The gateway checks consent for one (patient, category) pair. If the check and
//! the EMR could see different paths, a client could be checked as one patient
//! and served another. So the request target is normalised *once*, the route is
//! matched against the normalised form, and the re-encoded normalised form (never
//! the client's original bytes) is what [`Target::path_and_query`] forwards.
//!
//! # Decisions, class by class
//!
//! | Input class | Decision |
//! |---|---|
//! | Target longer than 4096 bytes | reject `too-long` |
//! | Empty target, `*` (asterisk-form), authority-form, anything not starting with `/` | reject `not-origin-form` |
//! | Absolute-form (`http://host/...`, any `scheme:`) | reject `absolute-form` |
//! | Fragment `#` anywhere (raw) | reject `not-origin-form` |
//! | Path / query split | at the first raw `?`; a decoded `%3F` stays data inside its segment |
//! | Raw control byte (0x00–0x1F, 0x7F) in path or query | reject `control-character` |
//! | Raw space or raw non-ASCII byte in path or query (must be percent-encoded on the wire) | reject `invalid-character` |
//! | Raw `\` or `%5C`/`%5c` in the path | reject `backslash` |
//! | Raw `;` or `%3B`/`%3b` in the path (matrix / path parameters, `;jsessionid=`) | reject `matrix-parameter` |
//! | `%2F`/`%2f` in the path (encoded slash) | reject `encoded-slash` |
//! | `%25` in the path (a `%` that survives the single decode: double encoding, e.g. `%252e`) | reject `double-encoding` |
//! | `%` not followed by two hex digits (`%zz`, `%4`, `%u002e`), path or query | reject `bad-percent-escape` |
//! | Upper- or lower-case hex in escapes | both accepted, decoded identically, re-encoded upper-case |
//! | Decoded bytes not valid UTF-8 (incl. overlong forms such as `%C0%AE`), path or query | reject `invalid-utf8` |
//! | Decoded control character (C0, DEL, and C1 U+0080–U+009F; e.g. `%00`, `%0A`, `%C2%85`), path or query | reject `control-character` |
//! | Decoded non-ASCII segment that NFKC changes, also after lower- or upper-casing (fullwidth `．／＼％；`, vertical forms `︙︰︔`, leaders `․‥…`, small forms, `ſ`, `K`, ligatures) | reject `unicode-lookalike` (rule in [`unicode`]: a normalising backend could turn them into path syntax or another name) |
//! | Non-ASCII format, separator, private-use or unassigned code point in a segment (NBSP, U+3000, ZWSP, BOM, bidi controls, soft hyphen) | reject `unicode-invisible` |
//! | Non-ASCII punctuation or symbol in a segment (`¥` is CP932's backslash under Windows best-fit, `∕`, `⁄`) | reject `unicode-punctuation` |
//! | Segments made only of dots, whitespace, invisible characters and combining marks other than exactly `.` and `..` (`...`, `.. `, `. .`, `..`+U+0301) | reject `dot-segment-lookalike` (Windows-style backends strip trailing dots/spaces); a segment of spaces alone: reject `blank-segment` |
//! | Non-ASCII query key (after decoding) | reject `non-ascii-query-key`: every case or compatibility variant of an ASCII key is ASCII, so the patient-key comparison sees them all |
//! | Empty segments (`//`, trailing `/`) | collapsed/dropped; the forwarded path never ends in `/` (except the root `/`) |
//! | `.` and `..` segments, also when encoded (`%2e`, `%2E.`, `.%2e`, `%2e%2e`) | resolved *after* decoding, like RFC 3986 `remove_dot_segments`; the result is what is matched *and* forwarded |
//! | `..` climbing above the root (`/..`, `/a/../..`) | reject `dot-segment-escape` |
//! | All segments are validated before dot resolution | so a bad segment cannot be hidden by a following `..` |
//! | Re-encoding for the wire | keep `A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) * + , = : @`, percent-encode every other byte with upper-case hex |
//! | Template literal segments | compared case-sensitively to the decoded segment |
//! | `{category}` value not a known [`Category`] | segment does not match (so usually `no-route`) |
//! | `{patient}` / query patient not matching `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$` | reject `bad-patient-id` (fail closed: no fall-through to later routes) |
//! | Query parsing | `application/x-www-form-urlencoded` (`&` separates pairs, `+` is space), strict escapes and UTF-8 checked first; `%25` in a query is ordinary data |
//! | Forwarded query | re-serialised from the parsed pairs with `form_urlencoded::Serializer` (so `;`, raw `+` etc. cannot be read differently by the EMR); `None` when there are no pairs; a bare key `a` is forwarded as `a=` |
//! | Patient query parameter absent | reject `missing-patient-parameter` |
//! | Patient query parameter given more than once, keys compared after decoding (`pat%69ent=P2&patient=P1`), or together with a look-alike key (`PATIENT`, `patient[]`, `patient[0]`, `Patient`, and for `patient_id` also `patient.id`, `patient-id`) | reject `duplicate-patient-parameter` |
//! | Only a look-alike key present (e.g. `PATIENT=P1` on a route expecting `patient`) | reject `lookalike-patient-parameter` |
//! | A query parameter naming a patient (`[routes] patient_query_keys`, default `patient`, `patient_id`, `pid`; compared loosely) whose value is not exactly the route's patient | reject `patient-parameter-mismatch` (see [`patient_keys`]) |
//! | Such a parameter on a route without a patient (`no_patient`) | reject `patient-parameter-on-no-patient-route` |
//! | Route order | first route (config order) whose path matches *and* allows the method wins |
//! | Path matches some route but no matching route allows the method | `method-not-allowed` (405); `HEAD` is allowed wherever `GET` is |
//! | Nothing matches | `no-route` (404, default deny) |

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::ids::PatientId;
use crate::model::Category;

mod patient_keys;
mod unicode;

pub use patient_keys::{PatientKeyError, DEFAULT_PATIENT_QUERY_KEYS};
pub use unicode::{backend_fold, normalising_backend_view};

/// Maximum accepted request-target length in bytes.
pub const MAX_TARGET_LEN: usize = 4096;

/// Bytes kept literal when a decoded segment is re-encoded for the wire.
/// `NON_ALPHANUMERIC` minus the unreserved marks and the harmless sub-delims
/// (`;` is deliberately *not* kept; it can never appear in a decoded segment anyway).
const SEGMENT_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

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

/// Why a request target was refused by the router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The target is malformed or ambiguous: answer 400.
    #[error("bad request target: {0}")]
    BadTarget(&'static str),
    /// No route matches: answer 404 (default deny).
    #[error("no route")]
    NoRoute,
    /// A route matches the path but not the method: answer 405.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl RouteError {
    /// Short machine code: the inner reason for `BadTarget`, else `no-route` / `method-not-allowed`.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::BadTarget(r) => r,
            RouteError::NoRoute => "no-route",
            RouteError::MethodNotAllowed => "method-not-allowed",
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
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
struct Route {
    segs: Vec<Seg>,
    category: Option<Category>,
    patient_query: Option<String>,
    methods: Vec<http::Method>,
    max_body_bytes: Option<u64>,
}

impl Route {
    fn allows(&self, method: &http::Method) -> bool {
        self.methods.contains(method)
            || (*method == http::Method::HEAD && self.methods.contains(&http::Method::GET))
    }

    /// Structural match. Returns the captured patient segment and category.
    fn matches<'a>(&self, path: &'a [String]) -> Option<(Option<&'a str>, Option<Category>)> {
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

/// The compiled, validated route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Query keys that name a patient: they must agree with the route's patient.
    patient_keys: patient_keys::PatientKeys,
}

fn is_literal_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()+,=:@".contains(c)
}

fn is_query_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-".contains(c)
}

impl RouteTable {
    /// Validates every spec, reporting all problems at once.
    pub fn new(specs: &[RouteSpec]) -> Result<RouteTable, Vec<RouteConfigError>> {
        let mut errors = Vec::new();
        let mut routes = Vec::with_capacity(specs.len());
        // (index, canonical template) of routes seen so far, for duplicate detection.
        let mut seen: Vec<(usize, Vec<Seg>)> = Vec::new();
        for (index, spec) in specs.iter().enumerate() {
            let before = errors.len();
            let segs = compile_template(index, &spec.path, &mut errors);
            let template = || spec.path.clone();
            if let Some(segs) = &segs {
                if let Some((first, _)) = seen.iter().find(|(_, s)| s == segs) {
                    errors.push(RouteConfigError::Duplicate {
                        index,
                        template: template(),
                        first: *first,
                        first_template: specs[*first].path.clone(),
                    });
                } else {
                    seen.push((index, segs.clone()));
                }
            }
            // Judged on the raw text so a malformed template does not add spurious errors.
            let has_patient_seg = spec.path.split('/').any(|s| s == "{patient}");
            let has_category_seg = spec.path.split('/').any(|s| s == "{category}");

            // Patient source.
            let patient_problem = match (spec.no_patient, has_patient_seg, &spec.patient_query) {
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
            if let Some(problem) = patient_problem {
                errors.push(RouteConfigError::PatientSource {
                    index,
                    template: template(),
                    problem,
                });
            }
            if let Some(name) = &spec.patient_query {
                if name.is_empty() || name.len() > 64 || !name.chars().all(is_query_name_char) {
                    errors.push(RouteConfigError::BadPatientQuery {
                        index,
                        template: template(),
                        name: name.clone(),
                    });
                }
            }

            // Category source.
            let category_problem = match (spec.no_patient, has_category_seg, spec.category) {
                (_, true, Some(_)) => Some(
                    "both {category} and category given: the category must come from exactly one place",
                ),
                (false, false, None) => {
                    Some("no category source: add {category} to the path or set category")
                }
                _ => None,
            };
            if let Some(problem) = category_problem {
                errors.push(RouteConfigError::CategorySource {
                    index,
                    template: template(),
                    problem,
                });
            }

            // Methods.
            let methods = match &spec.methods {
                None => vec![http::Method::GET, http::Method::HEAD],
                Some(list) => {
                    if list.is_empty() {
                        errors.push(RouteConfigError::NoMethods {
                            index,
                            template: template(),
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
                                template: template(),
                                method: m.clone(),
                                problem,
                            }),
                        }
                    }
                    out
                }
            };

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
            Ok(RouteTable {
                routes,
                patient_keys: patient_keys::PatientKeys::default(),
            })
        } else {
            Err(errors)
        }
    }

    /// Replaces the query keys that name a patient (default
    /// [`DEFAULT_PATIENT_QUERY_KEYS`]); each problem comes with the key's index.
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

/// Checks the overall shape of the request target (before splitting).
fn check_target_form(target: &str) -> Result<(), RouteError> {
    if target.len() > MAX_TARGET_LEN {
        return Err(RouteError::BadTarget("too-long"));
    }
    if !target.starts_with('/') {
        return Err(RouteError::BadTarget(if looks_like_absolute_form(target) {
            "absolute-form"
        } else {
            "not-origin-form"
        }));
    }
    if target.contains('#') {
        return Err(RouteError::BadTarget("not-origin-form"));
    }
    Ok(())
}

/// `scheme "://" ...` with an RFC 3986 scheme (authority-form `host:port` is not this).
fn looks_like_absolute_form(target: &str) -> bool {
    let Some((scheme, _)) = target.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && target
            .get(scheme.len() + 1..)
            .is_some_and(|rest| rest.starts_with("//"))
}

/// Rejects raw bytes that must never appear unencoded in a target.
fn check_raw_byte(b: u8) -> Result<(), RouteError> {
    if b < 0x20 || b == 0x7f {
        Err(RouteError::BadTarget("control-character"))
    } else if b == b' ' || b >= 0x80 {
        Err(RouteError::BadTarget("invalid-character"))
    } else {
        Ok(())
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strict single percent-decode: every `%` must start a two-hex-digit escape.
/// `plus_is_space` for form-urlencoded query components.
fn strict_decode(raw: &str, plus_is_space: bool) -> Result<Vec<u8>, RouteError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => return Err(RouteError::BadTarget("bad-percent-escape")),
            }
            i += 3;
        } else {
            out.push(if plus_is_space && b == b'+' { b' ' } else { b });
            i += 1;
        }
    }
    Ok(out)
}

/// Decodes and validates one raw path segment (between slashes).
fn decode_segment(raw: &str) -> Result<String, RouteError> {
    for b in raw.bytes() {
        match b {
            b'\\' => return Err(RouteError::BadTarget("backslash")),
            b';' => return Err(RouteError::BadTarget("matrix-parameter")),
            b'?' | b'#' => return Err(RouteError::BadTarget("not-origin-form")),
            _ => check_raw_byte(b)?,
        }
    }
    let decoded = strict_decode(raw, false)?;
    for b in &decoded {
        match b {
            b'/' => return Err(RouteError::BadTarget("encoded-slash")),
            b'\\' => return Err(RouteError::BadTarget("backslash")),
            b'%' => return Err(RouteError::BadTarget("double-encoding")),
            b';' => return Err(RouteError::BadTarget("matrix-parameter")),
            _ => {}
        }
    }
    let s = String::from_utf8(decoded).map_err(|_| RouteError::BadTarget("invalid-utf8"))?;
    if s.chars().any(char::is_control) {
        return Err(RouteError::BadTarget("control-character"));
    }
    unicode::check_segment(&s).map_err(RouteError::BadTarget)?;
    Ok(s)
}

/// Pure path normalisation, public for fuzzing and tests: returns decoded segments.
///
/// `raw_path` is the path part of an origin-form target (no query). Every segment is
/// validated and percent-decoded once, empty segments are dropped, then `.`/`..` are
/// resolved; `..` above the root is an error. See the module docs for each class.
pub fn normalise_path(raw_path: &str) -> Result<Vec<String>, RouteError> {
    check_target_form(raw_path)?;
    let decoded = raw_path
        .split('/')
        .skip(1)
        .map(decode_segment)
        .collect::<Result<Vec<_>, _>>()?;
    let mut out: Vec<String> = Vec::with_capacity(decoded.len());
    for seg in decoded {
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(RouteError::BadTarget("dot-segment-escape"));
                }
            }
            _ => out.push(seg),
        }
    }
    Ok(out)
}

/// Re-encodes decoded segments for the wire; the root is `/`.
fn encode_path(segments: &[String]) -> String {
    if segments.is_empty() {
        return "/".to_owned();
    }
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.extend(percent_encoding::utf8_percent_encode(s, SEGMENT_ENCODE));
    }
    out
}

/// Validates the raw query strictly, then parses it with `form_urlencoded`.
fn parse_query(raw: &str) -> Result<Vec<(String, String)>, RouteError> {
    for b in raw.bytes() {
        check_raw_byte(b)?;
    }
    for piece in raw.split('&') {
        let decoded = strict_decode(piece, true)?;
        let s = String::from_utf8(decoded).map_err(|_| RouteError::BadTarget("invalid-utf8"))?;
        if s.chars().any(char::is_control) {
            return Err(RouteError::BadTarget("control-character"));
        }
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (k, _) in &pairs {
        unicode::check_query_key(k).map_err(RouteError::BadTarget)?;
    }
    Ok(pairs)
}

fn serialise_query(pairs: &[(String, String)]) -> Option<String> {
    if pairs.is_empty() {
        return None;
    }
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}

/// A loose form of a query key: what various backends might consider "the same name"
/// (case-insensitive, PHP-style `name[...]` arrays, `.`/`-`/space/`_` variants).
fn loose_key(key: &str) -> String {
    let base = key.split('[').next().unwrap_or(key);
    base.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The single value of the patient query parameter.
fn query_patient(name: &str, pairs: &[(String, String)]) -> Result<String, RouteError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn spec(path: &str) -> RouteSpec {
        RouteSpec {
            path: path.to_owned(),
            category: None,
            patient_query: None,
            no_patient: false,
            methods: None,
            max_body_bytes: None,
        }
    }

    /// The reference table used by most tests.
    /// 0 `/patients/{patient}/{category}/**`
    /// 1 `/summary/{patient}` (fixed: summaries)
    /// 2 `/viewer/images` (patient from `?patient=`, fixed: images)
    /// 3 `/static/**` (no patient)
    /// 4 `/orders/{patient}/notes` (fixed: notes, POST only)
    /// 5 `/` (no patient: EMR start page)
    fn table() -> RouteTable {
        let specs = vec![
            spec("/patients/{patient}/{category}/**"),
            RouteSpec {
                category: Some(Category::Summaries),
                ..spec("/summary/{patient}")
            },
            RouteSpec {
                category: Some(Category::Images),
                patient_query: Some("patient".into()),
                ..spec("/viewer/images")
            },
            RouteSpec {
                no_patient: true,
                ..spec("/static/**")
            },
            RouteSpec {
                category: Some(Category::Notes),
                methods: Some(vec!["POST".into()]),
                ..spec("/orders/{patient}/notes")
            },
            RouteSpec {
                no_patient: true,
                ..spec("/")
            },
        ];
        match RouteTable::new(&specs) {
            Ok(t) => t,
            Err(e) => panic!("reference table invalid: {e:?}"),
        }
    }

    fn get(target: &str) -> Result<Target, RouteError> {
        table().resolve(&Method::GET, target)
    }

    /// (request target, forwarded path_and_query, patient, category, route index)
    type Accept = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<Category>,
        usize,
    );

    fn check_accepts(cases: &[Accept]) {
        let t = table();
        for (target, fwd, patient, category, route) in cases {
            let got = t
                .resolve(&Method::GET, target)
                .unwrap_or_else(|e| panic!("{target:?} refused: {e:?}"));
            assert_eq!(got.path_and_query(), *fwd, "forwarded form of {target:?}");
            assert_eq!(got.patient.as_deref(), *patient, "patient of {target:?}");
            assert_eq!(got.category, *category, "category of {target:?}");
            assert_eq!(got.route, *route, "route of {target:?}");
            // What is forwarded must resolve to the very same check (idempotence).
            let again = t
                .resolve(&Method::GET, &got.path_and_query())
                .unwrap_or_else(|e| panic!("forwarded {fwd:?} refused: {e:?}"));
            assert_eq!(again, got, "re-resolving the forwarded form of {target:?}");
        }
    }

    fn check_refuses(cases: &[(&str, &str)]) {
        let t = table();
        for (target, reason) in cases {
            match t.resolve(&Method::GET, target) {
                Ok(got) => panic!("{target:?} accepted as {got:?}, expected {reason}"),
                Err(e) => assert_eq!(e.reason(), *reason, "reason for {target:?}"),
            }
        }
    }

    use Category::*;

    #[test]
    fn art_8_2_patient_and_category_from_path_template() {
        check_accepts(&[
            (
                "/patients/P1/labs",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/labs/2024/result.pdf",
                "/patients/P1/labs/2024/result.pdf",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/patients/p-01_x/staff-records/a",
                "/patients/p-01_x/staff-records/a",
                Some("p-01_x"),
                Some(StaffRecords),
                0,
            ),
            (
                "/patients/P1/images/x?b=2&a=1",
                "/patients/P1/images/x?b=2&a=1",
                Some("P1"),
                Some(Images),
                0,
            ),
        ]);
    }

    #[test]
    fn fixed_category_route_and_query_patient_route_and_no_patient_route() {
        check_accepts(&[
            ("/summary/P9", "/summary/P9", Some("P9"), Some(Summaries), 1),
            (
                "/viewer/images?patient=P7&series=3",
                "/viewer/images?patient=P7&series=3",
                Some("P7"),
                Some(Images),
                2,
            ),
            (
                "/viewer/images?series=3&patient=P7",
                "/viewer/images?series=3&patient=P7",
                Some("P7"),
                Some(Images),
                2,
            ),
            ("/static/app.js", "/static/app.js", None, None, 3),
            (
                "/static/css/a/b.css?v=3",
                "/static/css/a/b.css?v=3",
                None,
                None,
                3,
            ),
            ("/static", "/static", None, None, 3),
            ("/", "/", None, None, 5),
        ]);
    }

    #[test]
    fn first_matching_route_in_config_order_wins() {
        let fixed = RouteSpec {
            category: Some(Reports),
            ..spec("/x/{patient}/basic")
        };
        let generic = spec("/x/{patient}/{category}");
        let t =
            RouteTable::new(&[fixed.clone(), generic.clone()]).unwrap_or_else(|e| panic!("{e:?}"));
        let got = t.resolve(&Method::GET, "/x/P1/basic");
        assert_eq!(
            got.as_ref().map(|g| (g.route, g.category)),
            Ok((0, Some(Reports)))
        );
        let t = RouteTable::new(&[generic, fixed]).unwrap_or_else(|e| panic!("{e:?}"));
        let got = t.resolve(&Method::GET, "/x/P1/basic");
        assert_eq!(
            got.as_ref().map(|g| (g.route, g.category)),
            Ok((0, Some(Basic)))
        );
    }

    #[test]
    fn art_8_2_unmapped_path_is_refused() {
        check_refuses(&[
            ("/admin", "no-route"),
            ("/patients", "no-route"),
            ("/patients/P1", "no-route"),
            // Unknown category never matches {category}.
            ("/patients/P1/billing", "no-route"),
            ("/patients/P1/LABS", "no-route"),
            // Literals are case-sensitive.
            ("/Patients/P1/labs", "no-route"),
            ("/SUMMARY/P1", "no-route"),
            // Fixed route with extra segment.
            ("/summary/P1/x", "no-route"),
            ("/viewer/images/x?patient=P1", "no-route"),
        ]);
        let empty = RouteTable::new(&[]).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(empty.is_empty());
        assert_eq!(empty.resolve(&Method::GET, "/"), Err(RouteError::NoRoute));
    }

    #[test]
    fn method_not_allowed_and_head_follows_get() {
        let t = table();
        assert_eq!(
            t.resolve(&Method::POST, "/patients/P1/labs"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            t.resolve(&Method::DELETE, "/static/a.js"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            t.resolve(&Method::GET, "/orders/P1/notes"),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            t.resolve(&Method::POST, "/orders/P1/notes")
                .map(|x| x.route),
            Ok(4)
        );
        assert_eq!(
            t.resolve(&Method::POST, "/nowhere"),
            Err(RouteError::NoRoute)
        );
        // HEAD wherever GET, even when only GET is listed.
        let only_get = RouteSpec {
            methods: Some(vec!["GET".into()]),
            no_patient: true,
            ..spec("/a")
        };
        let t = RouteTable::new(&[only_get]).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(t.resolve(&Method::HEAD, "/a").is_ok());
        assert_eq!(
            t.resolve(&Method::PUT, "/a"),
            Err(RouteError::MethodNotAllowed)
        );
    }

    #[test]
    fn method_mismatch_falls_through_to_a_later_route_that_allows_it() {
        let get_route = RouteSpec {
            category: Some(Labs),
            ..spec("/p/{patient}")
        };
        let post_route = RouteSpec {
            category: Some(Notes),
            patient_query: Some("patient".into()),
            methods: Some(vec!["POST".into()]),
            ..spec("/p/*")
        };
        let t = RouteTable::new(&[get_route, post_route]).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            t.resolve(&Method::POST, "/p/P1?patient=P1")
                .map(|x| (x.route, x.patient)),
            Ok((1, Some("P1".to_owned())))
        );
    }

    #[test]
    fn dot_segments_resolve_before_matching_so_checked_patient_is_forwarded_patient() {
        check_accepts(&[
            (
                "/patients/P2/../P1/labs",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/%2e%2e/P2/labs",
                "/patients/P2/labs",
                Some("P2"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/%2E./P2/labs",
                "/patients/P2/labs",
                Some("P2"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/.%2e/P2/labs",
                "/patients/P2/labs",
                Some("P2"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/./labs/.",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/labs/%2e",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            // A static prefix cannot be used to reach a patient page unchecked.
            (
                "/static/../patients/P2/notes",
                "/patients/P2/notes",
                Some("P2"),
                Some(Notes),
                0,
            ),
            (
                "/static/%2e%2e/summary/P3",
                "/summary/P3",
                Some("P3"),
                Some(Summaries),
                1,
            ),
            (
                "/patients/P1/labs/../../P2/labs",
                "/patients/P2/labs",
                Some("P2"),
                Some(Labs),
                0,
            ),
        ]);
    }

    #[test]
    fn duplicate_and_trailing_slashes_are_collapsed() {
        check_accepts(&[
            (
                "//patients//P1///labs",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/patients/P1/labs/",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            ("/static/", "/static", None, None, 3),
            ("//", "/", None, None, 5),
        ]);
    }

    #[test]
    fn percent_encoded_unreserved_chars_decode_and_forward_canonically() {
        check_accepts(&[
            (
                "/patients/%50%31/labs",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/patients/%70%31/labs",
                "/patients/p1/labs",
                Some("p1"),
                Some(Labs),
                0,
            ),
            (
                "/%70atients/P1/%6c%61%62%73",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/%70atients/P1/%6C%61%62%73",
                "/patients/P1/labs",
                Some("P1"),
                Some(Labs),
                0,
            ),
            // Upper/lower-case escapes are the same byte and are re-encoded upper-case.
            (
                "/static/a%20b/%e3%81%82",
                "/static/a%20b/%E3%81%82",
                None,
                None,
                3,
            ),
            ("/static/a%3fb%23c", "/static/a%3Fb%23c", None, None, 3),
            (
                "/static/x+y(1)!$&'*,=:@~",
                "/static/x+y(1)!$&'*,=:@~",
                None,
                None,
                3,
            ),
            (
                "/static/%7Bx%7D%5B%5D|^",
                "/static/%7Bx%7D%5B%5D%7C%5E",
                None,
                None,
                3,
            ),
        ]);
    }

    #[test]
    fn target_form_attacks_are_rejected() {
        let long = format!("/static/{}", "a".repeat(MAX_TARGET_LEN));
        check_refuses(&[
            ("http://evil/patients/P1/labs", "absolute-form"),
            ("HTTPS://emr/patients/P1/labs", "absolute-form"),
            ("*", "not-origin-form"),
            ("", "not-origin-form"),
            ("emr.example:443", "not-origin-form"),
            ("patients/P1/labs", "not-origin-form"),
            ("/patients/P1/labs#frag", "not-origin-form"),
            ("/patients/P1/labs?a=1#x", "not-origin-form"),
            (&long, "too-long"),
        ]);
    }

    #[test]
    fn encoding_tricks_are_rejected() {
        check_refuses(&[
            // Encoded slash: would let the EMR see another patient path.
            ("/patients/P1/labs/..%2F..%2FP2", "encoded-slash"),
            ("/patients/P1/labs/..%2f..%2fP2", "encoded-slash"),
            ("/patients/P1%2fx/labs", "encoded-slash"),
            ("/patients/P1%2Fx/labs", "encoded-slash"),
            // Backslash, raw and encoded.
            ("/patients/P1/labs/..\\..\\P2", "backslash"),
            ("/patients/P1/labs/..%5c..%5cP2", "backslash"),
            ("/patients/P1/labs/..%5C..%5CP2", "backslash"),
            // Double encoding.
            ("/patients/P1/labs/%252e%252e", "double-encoding"),
            ("/patients/P1/labs/%252E%252E/%252F", "double-encoding"),
            ("/static/100%25", "double-encoding"),
            // Invalid escapes.
            ("/patients/P1/labs/%zz", "bad-percent-escape"),
            ("/patients/P1/labs/%4", "bad-percent-escape"),
            ("/patients/P1/labs/%", "bad-percent-escape"),
            ("/patients/P1/labs/%u002e%u002e", "bad-percent-escape"),
            // Invalid / overlong UTF-8.
            ("/%c0%ae%c0%ae/", "invalid-utf8"),
            (
                "/patients/P1/labs/%C0%AE%C0%AE/%C0%AE%C0%AE/P2",
                "invalid-utf8",
            ),
            ("/static/%e0%80%ae", "invalid-utf8"),
            ("/static/%ff", "invalid-utf8"),
            ("/static/%ed%a0%80", "invalid-utf8"),
            // Control characters, decoded (C0, DEL, C1) and raw.
            ("/patients/P1/labs%00", "control-character"),
            ("/patients/P1/labs%00/../../P2/labs", "control-character"),
            (
                "/patients/P1/labs/%0d%0aX-Patient:%20P2",
                "control-character",
            ),
            ("/static/a%7f", "control-character"),
            ("/static/a%c2%85", "control-character"),
            ("/static/a%C2%9F", "control-character"),
            ("/static/a\tb", "control-character"),
            ("/static/a\u{7f}", "control-character"),
            // Raw space / raw non-ASCII.
            ("/static/a b", "invalid-character"),
            ("/static/\u{3042}", "invalid-character"),
            ("/static/\u{85}", "invalid-character"),
            // Matrix parameters, raw and encoded.
            ("/patients/P1;jsessionid=x/labs", "matrix-parameter"),
            ("/patients/P1/labs;/../../P2/labs", "matrix-parameter"),
            ("/patients/P1%3bx/labs", "matrix-parameter"),
            ("/patients/P1%3Bx/labs", "matrix-parameter"),
            // Unicode look-alikes of path syntax.
            (
                "/patients/P1/labs/%EF%BC%8E%EF%BC%8E/P2",
                "unicode-lookalike",
            ),
            ("/patients/P1/labs/%ef%bc%8f", "unicode-lookalike"),
            ("/patients/P1/labs/%E2%80%A5", "unicode-lookalike"),
            ("/patients/P1/labs/%EF%BC%BC", "unicode-lookalike"),
            // Dot-segment look-alikes (Windows strips trailing dots/spaces).
            (
                "/patients/P1/labs/..%20/..%20/P2/labs",
                "dot-segment-lookalike",
            ),
            ("/patients/P1/labs/.../P2", "dot-segment-lookalike"),
            ("/patients/P1/labs/.%20./x", "dot-segment-lookalike"),
        ]);
    }

    #[test]
    fn dot_segment_above_root_is_rejected() {
        check_refuses(&[
            ("/..", "dot-segment-escape"),
            ("/../patients/P1/labs", "dot-segment-escape"),
            ("/%2e%2e/patients/P1/labs", "dot-segment-escape"),
            ("/patients/../../etc/passwd", "dot-segment-escape"),
            ("/static/%2E%2E/..", "dot-segment-escape"),
        ]);
    }

    #[test]
    fn bad_patient_ids_are_rejected_not_passed_through() {
        let long_id = format!("/summary/{}", "A".repeat(65));
        check_refuses(&[
            ("/patients/-P1/labs", "bad-patient-id"),
            ("/patients/_P1/labs", "bad-patient-id"),
            ("/patients/P1.x/labs", "bad-patient-id"),
            ("/patients/P%201/labs", "bad-patient-id"),
            ("/patients/P1'or'1/labs", "bad-patient-id"),
            ("/patients/%E3%81%82/labs", "bad-patient-id"),
            ("/patients/P1:2/labs", "bad-patient-id"),
            (&long_id, "bad-patient-id"),
            ("/viewer/images?patient=", "bad-patient-id"),
            ("/viewer/images?patient=P1+P2", "bad-patient-id"),
            ("/viewer/images?patient=P1,P2", "bad-patient-id"),
            ("/viewer/images?patient=P1%26patient%3DP2", "bad-patient-id"),
            ("/viewer/images?patient=P1;patient=P2", "bad-patient-id"),
        ]);
        let max_id = format!("/summary/{}", "A".repeat(64));
        assert!(get(&max_id).is_ok());
    }

    #[test]
    fn patient_query_parameter_must_appear_exactly_once() {
        check_refuses(&[
            ("/viewer/images", "missing-patient-parameter"),
            ("/viewer/images?", "missing-patient-parameter"),
            ("/viewer/images?series=1", "missing-patient-parameter"),
            (
                "/viewer/images?patient=P1&patient=P2",
                "duplicate-patient-parameter",
            ),
            (
                "/viewer/images?pat%69ent=P2&patient=P1",
                "duplicate-patient-parameter",
            ),
            (
                "/viewer/images?patient=P1&PATIENT=P2",
                "duplicate-patient-parameter",
            ),
            (
                "/viewer/images?patient=P1&patient[]=P2",
                "duplicate-patient-parameter",
            ),
            (
                "/viewer/images?patient=P1&patient%5B0%5D=P2",
                "duplicate-patient-parameter",
            ),
            ("/viewer/images?Patient=P2", "lookalike-patient-parameter"),
            (
                "/viewer/images?patient%20=P2",
                "lookalike-patient-parameter",
            ),
        ]);
    }

    #[test]
    fn query_is_validated_and_reserialised_canonically() {
        check_accepts(&[
            (
                "/viewer/images?patient=%50%31&q=a%20b&r=x+y",
                "/viewer/images?patient=P1&q=a+b&r=x+y",
                Some("P1"),
                Some(Images),
                2,
            ),
            (
                "/static/a?x=1;y=2&z",
                "/static/a?x=1%3By%3D2&z=",
                None,
                None,
                3,
            ),
            ("/static/a?", "/static/a", None, None, 3),
            ("/static/a?&&", "/static/a", None, None, 3),
            (
                "/static/a?s=%25&t=%e3%81%82",
                "/static/a?s=%25&t=%E3%81%82",
                None,
                None,
                3,
            ),
            (
                "/patients/P1/labs?patient=P1",
                "/patients/P1/labs?patient=P1",
                Some("P1"),
                Some(Labs),
                0,
            ),
        ]);
        check_refuses(&[
            ("/static/a?x=%zz", "bad-percent-escape"),
            ("/static/a?x=%4", "bad-percent-escape"),
            ("/static/a?x=%00", "control-character"),
            ("/static/a?x=%0d%0aHost:evil", "control-character"),
            ("/static/a?x\u{0}=1", "control-character"),
            ("/static/a?x=%c2%85", "control-character"),
            ("/static/a?x=%c0%ae", "invalid-utf8"),
            ("/static/a?x=a b", "invalid-character"),
            ("/viewer/images?patient=P1%00", "control-character"),
        ]);
    }

    /// Art 8.2 (issue 11 item 4): compatibility forms of `.` `..` `/` `\` `;` `%` `?` `#`, dot
    /// segments with non-ASCII spaces, invisible characters or combining marks, best-fit
    /// punctuation and case-fold tricks are refused by rule; each case is a look-alike a
    /// normalising EMR would resolve differently from the gateway.
    #[test]
    fn art_8_2_unicode_lookalikes_refused_by_rule() {
        let enc = |s: &str| -> String {
            percent_encoding::utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
        };
        let cases: &[(&str, &str)] = &[
            ("\u{FE19}", "unicode-lookalike"), // vertical horizontal ellipsis -> "..."
            ("\u{FE30}", "unicode-lookalike"), // vertical two dot leader -> ".."
            ("\u{FE52}", "unicode-lookalike"), // small full stop
            ("\u{FF0E}", "unicode-lookalike"), // fullwidth full stop
            ("\u{FF0E}\u{FF0E}", "unicode-lookalike"),
            ("\u{2024}", "unicode-lookalike"), // one dot leader
            ("\u{2024}\u{2024}", "unicode-lookalike"),
            ("\u{2025}", "unicode-lookalike"),   // two dot leader
            ("\u{2026}", "unicode-lookalike"),   // ellipsis
            ("\u{FF0F}", "unicode-lookalike"),   // fullwidth solidus
            ("\u{FE68}", "unicode-lookalike"),   // small reverse solidus
            ("\u{FF3C}", "unicode-lookalike"),   // fullwidth reverse solidus
            ("x\u{FF1B}y", "unicode-lookalike"), // fullwidth semicolon
            ("x\u{FE54}y", "unicode-lookalike"), // small semicolon
            ("x\u{037E}y", "unicode-lookalike"), // Greek question mark -> ";"
            ("x\u{FE14}y", "unicode-lookalike"), // vertical semicolon
            ("x\u{FF1F}y", "unicode-lookalike"), // fullwidth question mark
            ("x\u{FF03}y", "unicode-lookalike"), // fullwidth number sign
            ("x\u{FF05}y", "unicode-lookalike"), // fullwidth percent
            ("P\u{FF10}\u{FF10}2", "unicode-lookalike"), // fullwidth digits
            ("\u{017F}tatic", "unicode-lookalike"), // long s
            ("\u{212A}", "unicode-lookalike"),   // Kelvin sign
            ("\u{FB03}", "unicode-lookalike"),   // ffi ligature
            ("\u{2460}", "unicode-lookalike"),   // circled digit one
            ("..\u{00A0}", "unicode-invisible"), // no-break space
            ("..\u{3000}", "unicode-invisible"), // ideographic space
            ("..\u{2028}", "unicode-invisible"), // line separator
            ("..\u{200B}", "unicode-invisible"), // zero width space
            ("\u{FEFF}..", "unicode-invisible"), // BOM
            (".\u{200D}.", "unicode-invisible"), // zero width joiner
            ("..\u{00AD}", "unicode-invisible"), // soft hyphen
            ("a\u{202E}b", "unicode-invisible"), // right-to-left override
            ("a\u{E000}", "unicode-invisible"),  // private use
            ("a\u{0378}", "unicode-invisible"),  // unassigned
            ("..\u{0301}", "dot-segment-lookalike"), // combining acute
            ("..\u{20DD}", "dot-segment-lookalike"), // enclosing circle
            ("a\u{00A5}b", "unicode-punctuation"), // yen: backslash in CP932 best fit
            ("a\u{20A9}b", "unicode-punctuation"), // won: backslash in CP949
            ("a\u{2215}b", "unicode-punctuation"), // division slash
            ("a\u{2044}b", "unicode-punctuation"), // fraction slash
            ("a\u{2027}b", "unicode-punctuation"), // hyphenation point
            ("a\u{3002}b", "unicode-punctuation"), // ideographic full stop
        ];
        for (seg, reason) in cases {
            for target in [
                format!("/patients/P1/labs/{}/P2/labs", enc(seg)),
                format!("/static/{}", enc(seg)),
                format!("/static/x/{}/..", enc(seg)),
            ] {
                match get(&target) {
                    Ok(t) => panic!("{seg:?} in {target:?} accepted as {t:?}"),
                    Err(e) => assert_eq!(e.reason(), *reason, "{seg:?} in {target:?}"),
                }
            }
        }
        // Letters, digits and marks of other scripts stay allowed where a route allows them.
        for seg in [
            "\u{691C}\u{67FB}",
            "\u{30EC}\u{30F3}\u{30C8}\u{30B2}\u{30F3}",
            "caf\u{E9}",
        ] {
            let target = format!("/static/{}", enc(seg));
            assert!(get(&target).is_ok(), "{seg:?}");
        }
    }

    /// Art 8.2 (issue 11 item 4): whatever is accepted, a Unicode-normalising EMR (NFKC, case
    /// folding, Windows trimming, `\` and `;` as syntax) resolves to the same segments, route
    /// and patient; checked over look-alike inputs and a pseudo-random mix.
    #[test]
    fn art_8_2_accepted_targets_resolve_the_same_in_a_normalising_emr() {
        const TOKENS: &[&str] = &[
            "/",
            "patients",
            "P1",
            "P2",
            "labs",
            "static",
            "viewer",
            "images",
            ".",
            "..",
            "%2e",
            "%EF%BC%8E",
            "%EF%B8%99",
            "%EF%B8%B0",
            "%E2%80%A4",
            "%C2%A0",
            "%E3%80%80",
            "%E2%80%8B",
            "%C5%BF",
            "%E2%84%AA",
            "%C2%A5",
            "%E6%A4%9C",
            "%CC%81",
            "%20",
            "x",
            "?",
            "&",
            "=",
            "patient",
            "pid",
            "PID",
            "patient_id",
            "pat%C4%B1ent",
            "%EF%BD%90id",
        ];
        let t = table();
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut target = String::from("/");
            for _ in 0..(next() % 10) {
                let i = usize::try_from(next() % TOKENS.len() as u64).unwrap_or(0);
                target.push_str(TOKENS[i]);
            }
            let Ok(got) = t.resolve(&Method::GET, &target) else {
                continue;
            };
            accepted += 1;
            assert_emr_sees_the_same(&t, &target, &got);
        }
        assert!(accepted > 100, "only {accepted} accepted");
    }

    /// The property of the `lookalike` fuzz target, shared with it in spirit.
    fn assert_emr_sees_the_same(t: &RouteTable, target: &str, got: &Target) {
        let decoded = percent_encoding::percent_decode_str(&got.path)
            .decode_utf8()
            .unwrap_or_else(|e| panic!("{target:?}: forwarded path not UTF-8: {e}"));
        let view = normalising_backend_view(&decoded)
            .unwrap_or_else(|| panic!("{target:?}: the EMR climbs above the root"));
        let ours: Vec<String> = got
            .path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                backend_fold(
                    &percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .unwrap_or_default(),
                )
            })
            .collect();
        // Windows trims trailing dots and spaces: a segment may lose them, never change
        // otherwise (a segment of nothing else is refused).
        let trimmed: Vec<String> = ours
            .iter()
            .map(|s| {
                s.trim_end_matches(|c: char| c == '.' || c.is_whitespace())
                    .to_owned()
            })
            .collect();
        assert_eq!(view, trimmed, "{target:?}: the EMR resolves another path");
        for (k, v) in form_urlencoded::parse(got.query.as_deref().unwrap_or("").as_bytes()) {
            let folded = loose_key(&backend_fold(&k));
            if DEFAULT_PATIENT_QUERY_KEYS
                .iter()
                .any(|p| loose_key(p) == folded)
            {
                assert_eq!(
                    got.patient.as_deref(),
                    Some(&*v),
                    "{target:?}: query names another patient"
                );
            }
        }
        let again = t.resolve(&Method::GET, &got.path_and_query());
        assert_eq!(again.as_ref(), Ok(got), "{target:?}");
    }

    /// Art 8.2 (issue 11 item 5): a query parameter naming a patient (`patient`, `patient_id`,
    /// `pid`, in any spelling) must be the route's patient; on a route without a patient it is
    /// refused; the keys are configurable and validated.
    #[test]
    fn art_8_2_patient_query_parameter_must_agree_with_the_route() {
        check_refuses(&[
            ("/patients/P1/labs?patient=P2", "patient-parameter-mismatch"),
            ("/patients/P1/labs?x=1&pid=P2", "patient-parameter-mismatch"),
            (
                "/patients/P1/labs?Patient_ID=P2",
                "patient-parameter-mismatch",
            ),
            (
                "/patients/P1/labs?patient-id=P2",
                "patient-parameter-mismatch",
            ),
            (
                "/patients/P1/labs?PID%5B%5D=P2",
                "patient-parameter-mismatch",
            ),
            (
                "/patients/P1/labs?pat%69ent=P2",
                "patient-parameter-mismatch",
            ),
            ("/patients/P1/labs?patient=p1", "patient-parameter-mismatch"),
            (
                "/patients/P1/labs?patient=P1%20",
                "patient-parameter-mismatch",
            ),
            (
                "/patients/P1/labs?patient=P1&patient=P2",
                "patient-parameter-mismatch",
            ),
            ("/summary/P1?patient_id=P2", "patient-parameter-mismatch"),
            (
                "/viewer/images?patient=P1&pid=P2",
                "patient-parameter-mismatch",
            ),
            (
                "/static/x?patient=P2",
                "patient-parameter-on-no-patient-route",
            ),
            ("/static/x?PID=P2", "patient-parameter-on-no-patient-route"),
            ("/?patient_id=P1", "patient-parameter-on-no-patient-route"),
            // Non-ASCII keys never reach the comparison (item 4).
            (
                "/patients/P1/labs?%EF%BD%90atient=P2",
                "non-ascii-query-key",
            ),
            ("/patients/P1/labs?pat%C4%B1ent=P2", "non-ascii-query-key"),
            ("/patients/P1/labs?%C5%BFid=P2", "non-ascii-query-key"),
            ("/static/x?pi%E2%84%AA=P2", "non-ascii-query-key"),
        ]);
        check_accepts(&[
            (
                "/patients/P1/labs?pid=P1&page=2",
                "/patients/P1/labs?pid=P1&page=2",
                Some("P1"),
                Some(Labs),
                0,
            ),
            (
                "/viewer/images?patient=P1&patient_id=P1",
                "/viewer/images?patient=P1&patient_id=P1",
                Some("P1"),
                Some(Images),
                2,
            ),
            ("/static/x?v=3", "/static/x?v=3", None, None, 3),
            (
                "/static/x?t=%E6%A4%9C",
                "/static/x?t=%E6%A4%9C",
                None,
                None,
                3,
            ),
        ]);
        // A site's own keys replace the defaults.
        let t = table()
            .with_patient_query_keys(&["kanja".into(), "emr.patient".into()])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            t.resolve(&Method::GET, "/patients/P1/labs?KANJA=P2")
                .map_err(|e| e.reason()),
            Err("patient-parameter-mismatch")
        );
        assert_eq!(
            t.resolve(&Method::GET, "/static/a?emr_patient=P2")
                .map_err(|e| e.reason()),
            Err("patient-parameter-on-no-patient-route")
        );
        assert!(t.resolve(&Method::GET, "/static/a?pid=1").is_ok());
        let errs = table()
            .with_patient_query_keys(&[
                "ok".into(),
                "".into(),
                "pa tient".into(),
                "Patient".into(),
                "p\u{FF41}".into(),
                "patient".into(),
                "--".into(),
            ])
            .err()
            .unwrap_or_default();
        let idx: Vec<usize> = errs.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 2, 4, 5, 6], "{errs:?}");
    }

    #[test]
    fn normalise_path_is_pure_and_returns_decoded_segments() {
        let ok: &[(&str, &[&str])] = &[
            ("/", &[]),
            ("/a/b", &["a", "b"]),
            ("/a%20b/%E3%81%82", &["a b", "\u{3042}"]),
            ("/a/./b/../c", &["a", "c"]),
            ("/a/%2e%2E/b", &["b"]),
            ("///a//", &["a"]),
            ("/a/..", &[]),
        ];
        for (raw, want) in ok {
            let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(normalise_path(raw), Ok(want), "{raw:?}");
        }
        for (raw, reason) in [
            ("a/b", "not-origin-form"),
            ("/a?b", "not-origin-form"),
            ("/a%2fb", "encoded-slash"),
            ("/..", "dot-segment-escape"),
        ] {
            assert_eq!(
                normalise_path(raw).map_err(|e| e.reason()),
                Err(reason),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn route_error_reasons_are_short_codes() {
        assert_eq!(RouteError::NoRoute.reason(), "no-route");
        assert_eq!(RouteError::MethodNotAllowed.reason(), "method-not-allowed");
        assert_eq!(RouteError::BadTarget("backslash").reason(), "backslash");
        assert_eq!(
            RouteError::BadTarget("backslash").to_string(),
            "bad request target: backslash"
        );
    }

    #[test]
    fn config_errors_are_all_reported_with_route_index() {
        let specs = vec![
            spec("/ok/{patient}/{category}"), // 0 fine
            spec("/a/{patient}"),             // 1 no category source
            RouteSpec {
                category: Some(Labs),
                ..spec("/b/{category}/{patient}") // 2 both category sources
            },
            RouteSpec {
                category: Some(Labs),
                ..spec("/c/x") // 3 no patient source
            },
            RouteSpec {
                category: Some(Labs),
                patient_query: Some("patient".into()),
                ..spec("/d/{patient}") // 4 both patient sources
            },
            RouteSpec {
                no_patient: true,
                ..spec("/e/{patient}/**") // 5 no_patient with {patient}
            },
            spec("/f/**/{patient}/{category}"), // 6 ** not last
            spec("/g/{patient}/{cat}"),         // 7 unknown placeholder
            spec(""),                           // 8 empty
            spec("/ok/{patient}/{category}"),   // 9 duplicate of 0
            RouteSpec {
                methods: Some(vec!["get".into(), "TRACE".into(), "PO ST".into()]),
                ..spec("/h/{patient}/{category}") // 10 three bad methods
            },
            spec("h/{patient}/{category}"),     // 11 not absolute
            spec("/i//{patient}/{category}"),   // 12 empty segment
            spec("/j/../{patient}/{category}"), // 13 dot segment
            spec("/k/{patient}/{patient}/{category}"), // 14 repeated
            spec("/l/a%2fb/{patient}/{category}"), // 15 bad literal
            RouteSpec {
                category: Some(Labs),
                patient_query: Some("pa tient".into()),
                ..spec("/m") // 16 bad query name
            },
            RouteSpec {
                methods: Some(vec![]),
                ..spec("/n/{patient}/{category}") // 17 no methods
            },
            RouteSpec {
                no_patient: true,
                patient_query: Some("p".into()),
                ..spec("/o/**") // 18 no_patient with patient_query
            },
            spec("/p/x*/{patient}/{category}"), // 19 glob inside literal
        ];
        let errs = match RouteTable::new(&specs) {
            Ok(_) => panic!("invalid config accepted"),
            Err(e) => e,
        };
        let idx = |e: &RouteConfigError| match e {
            RouteConfigError::EmptyTemplate { index }
            | RouteConfigError::NotAbsolute { index, .. }
            | RouteConfigError::EmptySegment { index, .. }
            | RouteConfigError::DotSegment { index, .. }
            | RouteConfigError::BadLiteral { index, .. }
            | RouteConfigError::UnknownPlaceholder { index, .. }
            | RouteConfigError::RepeatedPlaceholder { index, .. }
            | RouteConfigError::GlobNotLast { index, .. }
            | RouteConfigError::PatientSource { index, .. }
            | RouteConfigError::CategorySource { index, .. }
            | RouteConfigError::BadPatientQuery { index, .. }
            | RouteConfigError::NoMethods { index, .. }
            | RouteConfigError::BadMethod { index, .. }
            | RouteConfigError::Duplicate { index, .. } => *index,
        };
        let mut indices: Vec<usize> = errs.iter().map(idx).collect();
        indices.dedup();
        assert_eq!(indices, (1..=19).collect::<Vec<_>>(), "{errs:#?}");
        assert_eq!(errs.iter().filter(|e| idx(e) == 10).count(), 3);
        for e in &errs {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("route #{}", idx(e))), "{msg}");
            if idx(e) != 8 {
                assert!(msg.contains(&format!("{:?}", specs[idx(e)].path)), "{msg}");
            }
        }
        assert!(matches!(
            errs.iter().find(|e| idx(e) == 9),
            Some(RouteConfigError::Duplicate { first: 0, .. })
        ));
        assert!(matches!(
            errs.iter().find(|e| idx(e) == 6),
            Some(RouteConfigError::GlobNotLast { .. })
        ));
        assert!(matches!(
            errs.iter().find(|e| idx(e) == 7),
            Some(RouteConfigError::UnknownPlaceholder { placeholder, .. }) if placeholder == "{cat}"
        ));
    }

    #[test]
    fn route_spec_deserialises_from_toml_and_rejects_unknown_fields() {
        #[derive(serde::Deserialize)]
        struct File {
            route: Vec<RouteSpec>,
        }
        let text = r#"
            [[route]]
            path = "/patients/{patient}/{category}/**"

            [[route]]
            path = "/viewer/images"
            patient_query = "patient"
            category = "staff-records"
            methods = ["GET", "POST"]

            [[route]]
            path = "/static/**"
            no_patient = true
        "#;
        let file: File = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(file.route[1].category, Some(StaffRecords));
        let t = RouteTable::new(&file.route).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(t.len(), 3);
        assert!(t
            .resolve(&Method::POST, "/viewer/images?patient=P1")
            .is_ok());

        let bad = "[[route]]\npath = \"/x\"\nno_patient = true\npatient = \"p\"\n";
        assert!(toml::from_str::<File>(bad).is_err());
        let bad_cat = "[[route]]\npath = \"/x/{patient}\"\ncategory = \"billing\"\n";
        assert!(toml::from_str::<File>(bad_cat).is_err());
    }

    #[test]
    fn fuzz_forwarded_form_is_a_fixed_point_and_free_of_traversal_syntax() {
        const TOKENS: &[&str] = &[
            "/",
            "//",
            "patients",
            "P1",
            "P2",
            "labs",
            "static",
            "summary",
            "viewer",
            "images",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "%25",
            "%00",
            "%c0%ae",
            "%3b",
            ";",
            "\\",
            "?",
            "&",
            "=",
            "patient",
            "pat%69ent",
            "+",
            "%20",
            "%e3%81%82",
            "%",
            "#",
            "x",
            "-",
            "%50",
        ];
        let t = table();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut target = String::from("/");
            for _ in 0..(next() % 12) {
                let i = usize::try_from(next() % TOKENS.len() as u64).unwrap_or(0);
                target.push_str(TOKENS[i]);
            }
            for method in [Method::GET, Method::POST] {
                let Ok(got) = t.resolve(&method, &target) else {
                    continue;
                };
                accepted += 1;
                let fwd = got.path_and_query();
                for seg in got.path.split('/') {
                    assert!(seg != "." && seg != "..", "{target:?} -> {fwd:?}");
                }
                for bad in ["%25", "%2F", "%5C", ";", "\\", "//", "#"] {
                    assert!(!got.path.contains(bad), "{target:?} -> {fwd:?}");
                }
                if let Some(p) = &got.patient {
                    assert!(PatientId::is_valid(p), "{target:?}");
                }
                assert_eq!(
                    t.resolve(&method, &fwd).as_ref(),
                    Ok(&got),
                    "{target:?} -> {fwd:?}"
                );
            }
        }
        assert!(
            accepted > 50,
            "fuzz reached only {accepted} accepted targets"
        );
    }

    #[test]
    fn route_table_is_send_sync_clone_debug() {
        fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug>() {}
        assert_traits::<RouteTable>();
        assert_traits::<Target>();
        assert_traits::<RouteError>();
    }
}
