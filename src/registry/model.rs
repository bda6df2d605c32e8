//! The registry's value types: physicians, terminals, consents, record categories.
//!
//! These are plain data, shared by the store (which persists them), the decision
//! (which reads them) and the admin surface (which edits them). Nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime};

// Calendar dates are written `YYYY-MM-DD` (Japan dates), in the registry and on the admin socket.
time::serde::format_description!(pub ymd, Date, "[year]-[month]-[day]");

/// Record categories that article 8.2 makes viewable. Every routed EMR page is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// 基本情報
    Basic,
    /// 病名
    Diagnoses,
    /// 処方歴
    Prescriptions,
    /// 検査歴
    Labs,
    /// 医師記録
    Notes,
    /// 経過表
    Flowsheets,
    /// サマリ
    Summaries,
    /// レポート
    Reports,
    /// 画像
    Images,
    /// 他職種記録
    StaffRecords,
}

impl Category {
    pub const ALL: [Category; 10] = [
        Category::Basic,
        Category::Diagnoses,
        Category::Prescriptions,
        Category::Labs,
        Category::Notes,
        Category::Flowsheets,
        Category::Summaries,
        Category::Reports,
        Category::Images,
        Category::StaffRecords,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Basic => "basic",
            Category::Diagnoses => "diagnoses",
            Category::Prescriptions => "prescriptions",
            Category::Labs => "labs",
            Category::Notes => "notes",
            Category::Flowsheets => "flowsheets",
            Category::Summaries => "summaries",
            Category::Reports => "reports",
            Category::Images => "images",
            Category::StaffRecords => "staff-records",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown record category {0:?} (art 8.2 allows: basic, diagnoses, prescriptions, labs, notes, flowsheets, summaries, reports, images, staff-records)")]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCategory(s.to_string()))
    }
}

/// Why a physician was suspended (art 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendReason {
    /// (1) lost status by retirement
    Retirement,
    /// (2) own request
    Request,
    /// (3) violation of the rules
    Violation,
}

impl SuspendReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuspendReason::Retirement => "retirement",
            SuspendReason::Request => "request",
            SuspendReason::Violation => "violation",
        }
    }
}

impl FromStr for SuspendReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "retirement" => Ok(SuspendReason::Retirement),
            "request" => Ok(SuspendReason::Request),
            "violation" => Ok(SuspendReason::Violation),
            other => Err(format!(
                "unknown suspension reason {other:?}: use retirement, request or violation (art 4)"
            )),
        }
    }
}

/// A user physician (利用医, art 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Physician {
    pub id: String,
    pub name: String,
    pub site: String,
    /// `Some` while suspended (art 4).
    pub suspended: Option<SuspendReason>,
    /// Registration time, RFC 3339 (Japan time).
    pub registered: String,
    /// Argon2id hash (PHC string) of the password (art 6.3); `None` until one is set.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// True while the password is the one-time initial (or reset) one: it must be changed at
    /// the next sign-in.
    #[serde(default)]
    pub must_change_password: bool,
    /// Wrong passwords in a row (reset by a successful sign-in).
    #[serde(default)]
    pub failed_logins: u32,
    /// Locked after too many wrong passwords, until this time (RFC 3339).
    #[serde(default)]
    pub locked_until: Option<String>,
}

/// What a client certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TerminalKind {
    /// A physician's registered PC or tablet (art 6.2).
    #[default]
    Terminal,
    /// The site's own in-hospital EMR system, trusted to assert the physician (art 6.1).
    SiteSystem,
}

/// A registered terminal (art 6.2, 12.7): the PC or tablet a physician uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    pub name: String,
    pub physician: String,
    /// Lower-case hex SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub fingerprint: String,
    pub serial: String,
    /// Certificate validity end (stored as RFC 3339 with its offset, Japan time when written
    /// by the gateway: `2027-04-01T09:00:00+09:00`).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub revoked: bool,
    pub registered: String,
    /// Terminal or site system; older records are terminals.
    #[serde(default)]
    pub kind: TerminalKind,
    /// For a WireGuard terminal (fingerprint `wg:<public key>`): its one tunnel address.
    #[serde(default)]
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
}

/// What the registry key of a WireGuard terminal starts with (its public key in base64 follows).
pub const WIREGUARD_PREFIX: &str = "wg:";

/// Registry key of a WireGuard terminal: `wg:` + its public key in base64.
pub fn wireguard_fingerprint(public_key_b64: &str) -> String {
    format!("{WIREGUARD_PREFIX}{public_key_b64}")
}

impl Terminal {
    /// The WireGuard public key (base64) of a WireGuard terminal; `None` for a certificate.
    pub fn wireguard_key(&self) -> Option<&str> {
        self.fingerprint.strip_prefix(WIREGUARD_PREFIX)
    }

    /// [`Terminal::not_after`] as it is stored and listed (RFC 3339, its own offset).
    pub fn not_after_rfc3339(&self) -> String {
        self.not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.not_after.unix_timestamp().to_string())
    }
}

/// Who gave consent (art 8.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "relation")]
pub enum ConsentBy {
    Patient,
    /// A relative: blood relative within the 6th degree, spouse, or in-law within the 3rd degree.
    Relative(String),
    Guardian,
}

/// A patient's consent record (art 8, 9, 11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub patient: String,
    pub by: ConsentBy,
    /// The site that received the form (art 9.3).
    pub site: String,
    /// Form 6 reference.
    pub form_ref: String,
    /// Publication date (公開日), Japan calendar date.
    #[serde(with = "ymd")]
    pub published: Date,
    /// True when the patient asked not to extend automatically (art 8.3 "unless otherwise requested").
    pub no_extension: bool,
    /// Date of the last allowed view, if any.
    #[serde(default, with = "ymd::option")]
    pub last_view: Option<Date>,
    /// Set when withdrawn (form 7): reference and date. A withdrawn consent never allows access.
    pub withdrawn: Option<Withdrawal>,
    /// The patient's ids in each site's EMR (`SITE:ID`, one per site, issue 14), the
    /// granting site's own first. Empty for a consent registered before patients were
    /// linked (a single-site registry): it is keyed by the granting site's id alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The explanation before consent (form 5) and the physician who explained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<Explanation>,
}

/// The explanation to the patient (form 5): its reference and the physician who explained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub form_ref: String,
    pub physician: String,
}

impl Consent {
    /// The key of this consent in the registry: `SITE:ID` of the granting site for a linked
    /// (regional) consent, the bare patient id for one registered before links.
    pub fn regional_key(&self) -> String {
        if self.links.is_empty() {
            self.patient.clone()
        } else {
            link(&self.site, &self.patient)
        }
    }

    /// The patient's id at `site`, when linked.
    pub fn id_at(&self, site: &str) -> Option<&str> {
        self.links.iter().find_map(|l| {
            let (s, id) = l.split_once(':')?;
            (s == site).then_some(id)
        })
    }
}

/// A site's EMR patient id as one link: `SITE:ID`.
pub fn link(site: &str, patient: &str) -> String {
    format!("{site}:{patient}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub form_ref: String,
    #[serde(with = "ymd")]
    pub date: Date,
}

/// A liaison-office staff member's role on the office console (issue 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StaffRole {
    /// Registrations, consents, reports (地域連携室の事務).
    Clerk,
    /// Everything a clerk does, and staff accounts.
    Admin,
}

impl StaffRole {
    pub fn as_str(self) -> &'static str {
        match self {
            StaffRole::Clerk => "clerk",
            StaffRole::Admin => "admin",
        }
    }
}

impl FromStr for StaffRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "clerk" => Ok(StaffRole::Clerk),
            "admin" => Ok(StaffRole::Admin),
            other => Err(format!("unknown staff role {other:?}: use clerk or admin")),
        }
    }
}

/// A liaison-office staff account (issue 15): a staff certificate (its own terminal, never a
/// physician's) and a password, counted and locked like a physician's (art 13.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staff {
    pub id: String,
    pub name: String,
    pub role: StaffRole,
    pub suspended: bool,
    /// Registration time, RFC 3339 (Japan time).
    pub registered: String,
    /// Argon2id hash (PHC string) of the password.
    pub password_hash: String,
    /// True while the password is the one-time one from `staff add`.
    #[serde(default)]
    pub must_change_password: bool,
    #[serde(default)]
    pub failed_logins: u32,
    #[serde(default)]
    pub locked_until: Option<String>,
    /// The staff certificate's SPKI SHA-256 (hex): the console's first factor.
    pub fingerprint: String,
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A terminal record as written before `not_after` was typed: it loads, and is written
    /// back byte for byte.
    #[test]
    fn terminal_record_of_an_older_gateway_loads_and_round_trips() {
        let old = r#"{"name":"pc-1","physician":"dr-a","fingerprint":"ab12","serial":"01","not_after":"2030-01-01T00:00:00+09:00","revoked":false,"registered":"2025-04-01T09:30:15.123456789+09:00"}"#;
        let t: Terminal = serde_json::from_str(old).unwrap();
        assert_eq!(
            t.not_after,
            time::macros::datetime!(2030-01-01 00:00:00 +09:00)
        );
        assert_eq!(t.not_after_rfc3339(), "2030-01-01T00:00:00+09:00");
        assert_eq!(t.kind, TerminalKind::Terminal);
        assert_eq!(t.tunnel_ip, None);
        assert_eq!(t.wireguard_key(), None);
        let new = serde_json::to_string(&t).unwrap();
        assert!(
            new.contains(r#""not_after":"2030-01-01T00:00:00+09:00""#),
            "{new}"
        );
        let again: Terminal = serde_json::from_str(&new).unwrap();
        assert_eq!(again, t);
    }

    /// A time written by the gateway (`clock::rfc3339`, with nanoseconds) is stored the same.
    #[test]
    fn terminal_not_after_is_stored_as_clock_rfc3339_writes_it() {
        let at = time::macros::datetime!(2031-02-03 04:05:06.789 UTC);
        let t = Terminal {
            name: "wg-1".into(),
            physician: "dr-a".into(),
            fingerprint: wireguard_fingerprint("S2V5"),
            serial: String::new(),
            not_after: at.to_offset(crate::ops::clock::JST),
            revoked: false,
            registered: crate::ops::clock::rfc3339(at),
            kind: TerminalKind::Terminal,
            tunnel_ip: None,
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["not_after"], crate::ops::clock::rfc3339(at));
        assert_eq!(t.wireguard_key(), Some("S2V5"));
    }

    #[test]
    fn terminal_with_a_malformed_expiry_does_not_load() {
        let bad = r#"{"name":"pc-1","physician":"dr-a","fingerprint":"ab12","serial":"01","not_after":"next year","revoked":false,"registered":""}"#;
        assert!(serde_json::from_str::<Terminal>(bad).is_err());
    }
}
