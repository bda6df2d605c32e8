//! Path normalisation: the target's shape, strict percent-decoding, the segment checks
//! (with [`super::unicode`]), dot segments, and the canonical re-encoding for the wire. The
//! decisions class by class are in the table of the [module docs](super).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use super::error::RouteError;
use super::unicode;

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
/// Checks the overall shape of the request target (before splitting).
pub(super) fn check_target_form(target: &str) -> Result<(), RouteError> {
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
pub(super) fn encode_path(segments: &[String]) -> String {
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
pub(super) fn parse_query(raw: &str) -> Result<Vec<(String, String)>, RouteError> {
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

pub(super) fn serialise_query(pairs: &[(String, String)]) -> Option<String> {
    if pairs.is_empty() {
        return None;
    }
    Some(
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish(),
    )
}
