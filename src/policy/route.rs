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
//!
//! # Files
//!
//! * `normalise`: the target's shape, decoding, segment checks, dot segments, re-encoding;
//!   [`unicode`]: the look-alike rule for decoded segments and query keys.
//! * `spec`: a `[[route]]` as written, its problems, its compiled form and match;
//!   `table`: the route table and [`RouteTable::resolve`] → [`Target`];
//!   [`patient_keys`]: query parameters that name a patient.
//! * [`own`]: the gateway's own pages under `/.seibo/`, never routed.

mod error;
mod normalise;
pub(crate) mod own;
mod patient_keys;
mod spec;
mod table;
mod unicode;

pub use error::RouteError;
pub use normalise::{normalise_path, MAX_TARGET_LEN};
pub use patient_keys::{PatientKeyError, DEFAULT_PATIENT_QUERY_KEYS};
pub use spec::{RouteConfigError, RouteSpec};
pub use table::{RouteTable, Target};
pub use unicode::{backend_fold, normalising_backend_view};

#[cfg(test)]
mod tests;
