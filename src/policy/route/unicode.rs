//! Unicode look-alikes (issue 11 item 4): a decoded path segment or query key is accepted only
//! when it is already what a Unicode-normalising EMR would see.
//!
//! An EMR (or the framework, web server or file system under it) may apply NFKC, case folding,
//! strip invisible characters or trailing dots and spaces before it resolves a path. If any of
//! these changes a segment, the gateway's check and the EMR could name different resources:
//! `／` (U+FF0F) becomes `/`, `︙` (U+FE19) becomes `...`, `..` + NO-BREAK SPACE becomes `.. `.
//! So the decision is a rule over every character, not a list of known offenders:
//!
//! * a segment must be NFKC-stable, also after lower- or upper-casing
//!   ([`unicode-normalization`](unicode_normalization), not tables of our own);
//! * a segment holds no invisible or unassigned code point: format characters (`Cf`: zero-width
//!   spaces and joiners, BOM, bidi controls, soft hyphen), non-ASCII separators (`Zs`, `Zl`,
//!   `Zp`), private-use and unassigned code points (`Co`, `Cn` — a later Unicode version may give
//!   an unassigned one a compatibility mapping the gateway's tables do not know);
//! * a segment holds no non-ASCII punctuation or symbol (`P*`, `S*`): `¥` is NFKC-stable but
//!   is the backslash of Japanese Windows' code page (best-fit conversion, "WorstFit"), `∕`
//!   and `⁄` read as `/`; letters, digits and marks of any script stay allowed;
//! * a segment that is only dots once whitespace and combining marks are removed must be exactly
//!   `.` or `..` (then it is resolved) — `...`, `.. `, `..\u{301}` are refused, and so is a
//!   segment of spaces alone (a trimming back end drops it);
//! * a query key must be ASCII: no EMR names its parameters in other scripts, and an ASCII key's
//!   every case or compatibility variant is ASCII too, so
//!   [`super::patient_keys::loose_key`] sees all of them.
//!
//! [`normalising_backend_view`] is the adversary model the unit tests and the `lookalike` fuzz
//! target check the rule against.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// Why a decoded path segment is refused, or `Ok` when a normalising EMR sees it unchanged.
pub(super) fn check_segment(s: &str) -> Result<(), &'static str> {
    if !s.is_ascii() {
        if s.chars().any(is_invisible) {
            return Err("unicode-invisible");
        }
        if !nfkc_stable(s) {
            return Err("unicode-lookalike");
        }
        if s.chars().any(is_non_ascii_punctuation_or_symbol) {
            return Err("unicode-punctuation");
        }
    }
    match blank_or_dots(s) {
        Some(0) => Err("blank-segment"),
        Some(_) => Err("dot-segment-lookalike"),
        None => Ok(()),
    }
}

/// Why a decoded query key is refused (non-ASCII keys are never accepted).
pub(super) fn check_query_key(k: &str) -> Result<(), &'static str> {
    if k.is_ascii() {
        Ok(())
    } else {
        Err("non-ascii-query-key")
    }
}

/// NFKC leaves `s` unchanged, and so it does after lower- and upper-casing (`ſ` → `S`, `K` →
/// `k`, `ﬃ` → `FFI`: whatever case a back end folds to, it sees no new character).
fn nfkc_stable(s: &str) -> bool {
    let stable = |t: &str| t.nfkc().eq(t.chars());
    stable(s) && stable(&s.to_lowercase()) && stable(&s.to_uppercase())
}

/// Code points a reader cannot see or that may be given a meaning later.
fn is_invisible(c: char) -> bool {
    !c.is_ascii()
        && matches!(
            c.general_category(),
            GeneralCategory::Format
                | GeneralCategory::SpaceSeparator
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::PrivateUse
                | GeneralCategory::Unassigned
                | GeneralCategory::Surrogate
                | GeneralCategory::Control
        )
}

/// Non-ASCII punctuation and symbols: NFKC leaves `¥` `∕` `⁄` `‧` alone, but Windows
/// back ends converting to a code page map them "best fit" (`¥` is the backslash byte of
/// CP932, Japanese Windows'), and a look-alike of `.` or `/` misleads whoever reads the audit.
/// An EMR's paths need letters, digits and marks of other scripts, not their punctuation.
fn is_non_ascii_punctuation_or_symbol(c: char) -> bool {
    !c.is_ascii()
        && matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Punctuation | GeneralCategoryGroup::Symbol
        )
}

fn is_mark(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::NonspacingMark
            | GeneralCategory::SpacingMark
            | GeneralCategory::EnclosingMark
    )
}

/// For a segment other than `.` and `..` made only of dots, whitespace, invisible characters
/// and combining marks: how many dots (0 for a blank segment). Windows-style back ends trim
/// trailing dots and spaces, Unicode-aware ones strip marks and zero-width characters, so such
/// a segment could become `..`, `.` or nothing at all (which changes what `*` matches).
fn blank_or_dots(s: &str) -> Option<usize> {
    if s.is_empty() || s == "." || s == ".." {
        return None;
    }
    let mut dots = 0usize;
    for c in s.chars() {
        if c == '.' {
            dots += 1;
        } else if !(c.is_whitespace() || is_invisible(c) || is_mark(c)) {
            return None;
        }
    }
    Some(dots)
}

/// The adversary model: the segments a Unicode-normalising back end resolves from a decoded
/// path. It applies NFKC, lower-cases, applies NFKC again, splits on `/` and `\`, cuts `;`
/// path parameters, drops format characters, trims trailing dots and whitespace from every
/// segment other than `.` and `..` (as Windows does), then resolves dot segments. `None` when
/// the path climbs above the root. Used by the tests and the `lookalike` fuzz target: for every
/// target the gateway accepts, this view of the forwarded path must equal the gateway's own
/// segments, folded the same way.
pub fn normalising_backend_view(decoded_path: &str) -> Option<Vec<String>> {
    let folded: String = decoded_path
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .filter(|c| c.general_category() != GeneralCategory::Format)
        .collect();
    let mut out: Vec<String> = Vec::new();
    for raw in folded.split(['/', '\\']) {
        let seg = raw.split(';').next().unwrap_or("");
        let seg = if seg == "." || seg == ".." {
            seg
        } else {
            seg.trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        };
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s.to_owned()),
        }
    }
    Some(out)
}

/// One segment as [`normalising_backend_view`] folds it (for comparing with the gateway's).
pub fn backend_fold(segment: &str) -> String {
    segment
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect()
}
