//! `consent grant | withdraw | show` (art 8, 9).

use std::process::ExitCode;

use super::{admin_call, report};
use crate::admin::AdminRequest;
use crate::ops::clock::{Clock, SystemClock};
use crate::ops::exit::UsageError;
use crate::registry::model::ConsentBy;
use crate::site::config::Config;

/// `consent grant`'s arguments as typed.
#[derive(Debug, Clone)]
pub struct Grant {
    pub patient: String,
    /// `patient`, `relative` or `guardian`.
    pub by: String,
    pub relation: Option<String>,
    /// `YYYY-MM-DD`, checked against today ([`crate::ops::dates::publication`]).
    pub published: String,
    pub allow_future: bool,
    pub no_extension: bool,
    pub form_ref: String,
    /// Other sites' ids of the patient (`SITE:ID`).
    pub links: Vec<String>,
    /// The explanation (form 5) and who explained.
    pub explanation: Option<crate::registry::model::Explanation>,
}

/// `--by` and `--relation` as one [`ConsentBy`] (art 8.1).
pub fn consent_by(by: &str, relation: Option<String>) -> Result<ConsentBy, UsageError> {
    match (by, relation) {
        ("patient", None) => Ok(ConsentBy::Patient),
        ("guardian", None) => Ok(ConsentBy::Guardian),
        ("relative", Some(r)) => Ok(ConsentBy::Relative(r)),
        ("relative", None) => Err(UsageError("--by relative needs --relation (art 8.1: blood relative within the 6th degree, spouse, or in-law within the 3rd degree)".into())),
        ("patient" | "guardian", Some(_)) => Err(UsageError("--relation is only for --by relative".into())),
        (other, _) => Err(UsageError(format!("--by {other:?}: use patient, relative or guardian (art 8.1)"))),
    }
}

/// `consent grant`: registers a consent (form 6).
pub async fn grant(c: &Config, g: Grant) -> anyhow::Result<ExitCode> {
    let by = consent_by(&g.by, g.relation)?;
    let published = crate::ops::dates::publication(
        &g.published,
        SystemClock.today(),
        c.future_grace_days,
        g.allow_future,
    )
    .map_err(UsageError)?;
    let req = AdminRequest::ConsentGrant {
        patient: g.patient,
        by,
        published,
        no_extension: g.no_extension,
        form_ref: g.form_ref,
        links: g.links,
        explanation: g.explanation,
    };
    Ok(report(admin_call(c, req).await?, false))
}

/// `consent show [--json]`: indented JSON, or compact with `--json`.
pub async fn show(c: &Config, patient: String, json: bool) -> anyhow::Result<ExitCode> {
    let r = admin_call(c, AdminRequest::ConsentShow { patient }).await?;
    if !json && r.ok {
        println!("{}", serde_json::to_string_pretty(&r.data)?);
        return Ok(ExitCode::SUCCESS);
    }
    Ok(report(r, json))
}
