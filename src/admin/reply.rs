//! What an admin request answers: `{ok, message, data}` on the wire, where `data` is the
//! request's typed [`AdminReply`] (serialised as the bare value: the wire JSON is the same
//! as when it was built by hand), read back on the other side with [`AdminResponse::reply`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::Date;

use super::AdminSocketError;
use crate::registry::model::{Consent, Physician, Staff, Terminal};

/// One answer line on the admin socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    pub message: String,
    /// The [`AdminReply`] of a request that succeeded; `null` for a refusal.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// The data of each request that succeeded; the comment of each variant names the requests
/// that answer with it, and the type to read it back as with [`AdminResponse::reply`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AdminReply {
    /// `physician-add`, `-get`, `-suspend`, `-resume`: [`Physician`].
    Physician(Physician),
    /// `physician-list`: `Vec<Physician>`.
    Physicians(Vec<Physician>),
    /// `physician-passwd`: the physician's id (`String`).
    PhysicianId(String),
    /// `physician-delete`: the names of the terminals removed with the physician;
    /// `purge`: the patients purged (`Vec<String>`).
    Names(Vec<String>),
    /// `terminal-register`, `-revoke`: [`Terminal`].
    Terminal(Terminal),
    /// `terminal-list`: `Vec<Terminal>`.
    Terminals(Vec<Terminal>),
    /// `consent-grant`, `-withdraw` (the consent as deleted, marked withdrawn): [`Consent`].
    Consent(Consent),
    /// `consent-show`: [`ConsentView`].
    ConsentView(ConsentView),
    /// `patient-delete`: nothing (`null`).
    Nothing,
    /// `staff-add`, `staff-suspend`: [`StaffView`].
    Staff(StaffView),
    /// `staff-list`: `Vec<StaffView>`.
    StaffList(Vec<StaffView>),
    /// `registry-status`: [`crate::registry::RegistryStatus`].
    Registry(crate::registry::RegistryStatus),
}

/// A consent with what it means today (`consent show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    #[serde(flatten)]
    pub consent: Consent,
    /// The first day of the records the consent opens (art 8.2: 2 years before publication).
    #[serde(with = "crate::registry::model::ymd")]
    pub records_from: Date,
    /// The last day of access (999 days after the last view or the publication).
    #[serde(with = "crate::registry::model::ymd")]
    pub access_until: Date,
    /// True when the consent allows a view today.
    pub allowed_today: bool,
}

impl AdminResponse {
    pub(super) fn ok(message: impl Into<String>, reply: AdminReply) -> AdminResponse {
        AdminResponse {
            ok: true,
            message: message.into(),
            // Serialising these plain structs cannot fail (no maps with non-string keys).
            data: serde_json::to_value(reply).unwrap_or(serde_json::Value::Null),
        }
    }

    pub(super) fn err(message: impl Into<String>) -> AdminResponse {
        AdminResponse {
            ok: false,
            message: message.into(),
            data: serde_json::Value::Null,
        }
    }

    /// The reply's data as the type its request answers with (see [`AdminReply`]), e.g.
    /// `Physician` for `physician-get`, `Vec<Terminal>` for `terminal-list`.
    pub fn reply<T: DeserializeOwned>(&self) -> Result<T, AdminSocketError> {
        T::deserialize(&self.data).map_err(|e| AdminSocketError::Protocol(e.to_string()))
    }
}

/// A staff account as the admin surface shows it: never its password hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffView {
    pub id: String,
    pub name: String,
    pub role: crate::registry::model::StaffRole,
    pub suspended: bool,
    pub registered: String,
    pub fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
    pub locked_until: Option<String>,
}

impl From<&Staff> for StaffView {
    fn from(s: &Staff) -> StaffView {
        StaffView {
            id: s.id.clone(),
            name: s.name.clone(),
            role: s.role,
            suspended: s.suspended,
            registered: s.registered.clone(),
            fingerprint: s.fingerprint.clone(),
            not_after: s.not_after,
            locked_until: s.locked_until.clone(),
        }
    }
}
