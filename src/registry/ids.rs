//! Identifiers, parsed once where they enter (admin input, config, URLs, the registry on disk)
//! and carried as their own types afterwards, so that every entry point agrees on what a valid
//! id is: consent cannot be granted for a patient id that no route can reach, and a site id in
//! the config is checked by the same rule as one typed at the admin socket.
//!
//! | type | rule | where it enters |
//! |---|---|---|
//! | [`PhysicianId`] | `[A-Za-z0-9][A-Za-z0-9_-]{0,63}` | admin commands, the site-system header |
//! | [`PatientId`] | `[A-Za-z0-9][A-Za-z0-9_-]{0,63}` | admin commands, the route table (URL) |
//! | [`SiteId`] | `[A-Za-z0-9][A-Za-z0-9_-]{0,63}` | `[site] id` in the config |
//! | [`TerminalName`] | `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, no `..` | admin commands (a file stem) |
//!
//! Each type deserialises through its parser (`serde(try_from = "String")`), so a registry
//! record with a malformed id is an error when it is read, never a value in memory.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest id of every kind (bytes; all ids are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not an id of the asked kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {rule}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub rule: &'static str,
}

const ID_RULE: &str = "use 1-64 characters A-Z a-z 0-9 - _, starting with a letter or digit";
const NAME_RULE: &str =
    "use 1-64 characters A-Z a-z 0-9 . _ -, starting with a letter or digit, without \"..\"";

/// The common rule of physician, patient and site ids.
fn is_id(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b.first(), Some(f) if f.is_ascii_alphanumeric())
        && b.len() <= MAX_ID_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

/// The rule of terminal names (they become file stems: `.p12`, `.conf`).
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(b.first(), Some(f) if f.is_ascii_alphanumeric())
        && b.len() <= MAX_ID_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !s.contains("..")
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident, $rule:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses `s`, or says which rule it breaks.
            pub fn parse(s: &str) -> Result<$name, InvalidId> {
                if $check(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(InvalidId { kind: $kind, value: s.to_string(), rule: $rule })
                }
            }

            /// True when `s` is a valid id of this kind.
            pub fn is_valid(s: &str) -> bool {
                $check(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<$name, InvalidId> {
                if $check(&s) {
                    Ok($name(s))
                } else {
                    Err(InvalidId { kind: $kind, value: s, rule: $rule })
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<$name, InvalidId> {
                $name::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// A registered physician's id (利用医 ID, art 6.3).
    PhysicianId, "physician id", is_id, ID_RULE
);
id_type!(
    /// A patient's id in this site's EMR, as its URLs carry it (art 8.1).
    PatientId, "patient id", is_id, ID_RULE
);
id_type!(
    /// A site of the network (`[site] id`).
    SiteId, "site id", is_id, ID_RULE
);
id_type!(
    /// A registered terminal's name (art 12.7); also the stem of its credential files.
    TerminalName, "terminal name", is_name, NAME_RULE
);

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule for every entry point (issue 12): the admin socket, the config and the route
    /// table accepted different ids before (a leading `-` or `_` was grantable but unroutable).
    #[test]
    fn one_rule_for_ids() {
        for ok in ["P001", "dr-nomura_01", "a", "0", &"x".repeat(64)] {
            assert!(PatientId::is_valid(ok), "{ok}");
            assert!(PhysicianId::is_valid(ok), "{ok}");
            assert!(SiteId::is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "-P001",
            "_P001",
            "a/b",
            "a\nb",
            "a b",
            "ａ",
            "P.001",
            &"x".repeat(65),
        ] {
            assert!(!PatientId::is_valid(bad), "{bad:?}");
            assert!(!PhysicianId::is_valid(bad), "{bad:?}");
            assert!(!SiteId::is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn terminal_names_allow_dots_but_not_dot_dot() {
        for ok in ["pc1", "dr.saiyo-pc_2", "A_b-9", "x1.y2", &"n".repeat(64)] {
            assert!(TerminalName::is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "_x",
            "a..b",
            "a/b",
            "../x",
            "a b",
            "名前",
            "a\0",
            &"n".repeat(65),
        ] {
            assert!(!TerminalName::is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_kind_and_the_rule() {
        let e = PatientId::parse("-x").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("invalid patient id \"-x\": use 1-64 characters A-Z a-z 0-9 - _, starting with a letter or digit")
        );
    }

    #[test]
    fn serde_parses_and_refuses() {
        let id: PatientId = serde_json::from_str("\"P001\"").expect("valid id");
        assert_eq!(id, "P001");
        assert_eq!(serde_json::to_string(&id).ok().as_deref(), Some("\"P001\""));
        assert!(serde_json::from_str::<PatientId>("\"../P001\"").is_err());
        assert!(serde_json::from_str::<TerminalName>("\"a..b\"").is_err());
    }
}
