//! Consent and patient requests that change the registry (art 8, 9, 11), and the purge.

use time::Date;

use super::{outcome, Admin, AdminError, AdminReply, AdminResponse};
use crate::policy::consent;
use crate::registry::model::{link, Consent, ConsentBy};
use crate::registry::store::Missing;

/// The paperwork of a grant: the consent form (form 6), the other sites' ids, and the
/// explanation (form 5) with the physician who explained.
pub(super) struct Paper {
    pub(super) form_ref: String,
    pub(super) links: Vec<String>,
    pub(super) explanation: Option<crate::registry::model::Explanation>,
}

impl Admin {
    pub(super) async fn consent_grant(
        &self,
        patient: String,
        by: ConsentBy,
        published: Date,
        no_extension: bool,
        paper: Paper,
    ) -> Result<AdminResponse, AdminError> {
        let Paper {
            form_ref,
            links,
            explanation,
        } = paper;
        // The granting site's own id first, then the other sites' (issue 14).
        let mut all = vec![link(&self.site, &patient)];
        for l in links {
            if !all.contains(&l) {
                all.push(l);
            }
        }
        let c = Consent {
            patient,
            by,
            site: self.site.clone(),
            form_ref,
            published,
            no_extension,
            last_view: None,
            withdrawn: None,
            links: all,
            explanation,
        };
        self.store.grant_consent(&c).await?;
        self.count("grant", 1);
        Ok(AdminResponse::ok(
            format!(
                "consent for patient {} registered: records from {}, access until {} (extended by each view{})",
                c.patient,
                consent::records_from(c.published),
                consent::access_until(&c),
                if c.no_extension { " — declined" } else { "" }
            ),
            AdminReply::Consent(c),
        ))
    }

    /// A later "do not extend" request (art 8.3): the consent's window is no longer extended
    /// by views (it ends 999 days after publication, or the last view already made).
    pub(super) async fn consent_no_extension(
        &self,
        patient: &str,
    ) -> Result<AdminResponse, AdminError> {
        let c = self.store.set_no_extension(patient).await?;
        Ok(AdminResponse::ok(
            format!(
                "consent of patient {patient}: no longer extended by views (art 8.3); access until {}",
                consent::access_until(&c)
            ),
            AdminReply::Consent(c),
        ))
    }

    /// Withdrawal (form 7): access stops now and the registration is deleted.
    pub(super) async fn consent_withdraw(
        &self,
        patient: &str,
        form_ref: &str,
    ) -> Result<AdminResponse, AdminError> {
        let c = self
            .store
            .withdraw_consent(patient, form_ref, self.clock.today())
            .await?;
        self.count("withdraw", 1);
        Ok(AdminResponse::ok(
            format!(
                "consent of patient {patient} withdrawn: access stops now, and the registration is deleted (art 11; the withdrawal stays in the audit log)"
            ),
            AdminReply::Consent(c),
        ))
    }

    /// `patient link`: another site's EMR id of this site's patient (issue 14).
    pub(super) async fn patient_link(
        &self,
        patient: &str,
        l: &str,
    ) -> Result<AdminResponse, AdminError> {
        let c = self.store.link_patient(patient, l).await?;
        Ok(AdminResponse::ok(
            format!(
                "patient {patient} linked as {l}: the consent holds at every linked site ({})",
                c.links.join(", ")
            ),
            AdminReply::Consent(c),
        ))
    }

    /// Form 8: the patient's registered data is deleted at every linked site (the audit
    /// history stays; the reply names the ids removed).
    pub(super) async fn patient_delete(&self, patient: &str) -> Result<AdminResponse, AdminError> {
        let Some(c) = self.store.delete_consent(patient).await? else {
            return Err(AdminError::NotFound(Missing::Consent(patient.to_string())));
        };
        self.count("delete", 1);
        Ok(AdminResponse::ok(
            format!(
                "patient {patient}'s registered data deleted{} (audit history kept)",
                if c.links.is_empty() {
                    String::new()
                } else {
                    format!(" at every linked site ({})", c.links.join(", "))
                }
            ),
            AdminReply::Nothing,
        ))
    }

    /// The `purge` request: every consent due today, deleted by [`Admin::purge`].
    pub(super) async fn purge_due(&self) -> Result<AdminResponse, AdminError> {
        let purged = self.purge(self.clock.today()).await?;
        Ok(AdminResponse::ok(
            format!("{} patient(s) purged", purged.len()),
            AdminReply::Names(purged),
        ))
    }

    /// Art 11: every consent due is deleted, each after its own audit record (op
    /// `patient-purge`, the patient, why it is due) is durable; a record that cannot be
    /// written stops the purge there (fail closed).
    async fn purge(&self, today: Date) -> Result<Vec<String>, AdminError> {
        let mut purged = Vec::new();
        for c in self.store.purge_due(today)? {
            let names = if c.links.is_empty() {
                format!("patient {} of {}", c.patient, c.site)
            } else {
                format!("patient {}", c.links.join(", "))
            };
            let why = match &c.withdrawn {
                Some(w) => format!("art 11: {names}: consent withdrawn (form {})", w.form_ref),
                None => format!(
                    "art 11: {names}: access ended on {} (999 days after the last view at any site, or the publication)",
                    consent::access_until(&c)
                ),
            };
            let started = std::time::Instant::now();
            let rec = self.record(
                "patient-purge",
                crate::audit::Decision::Allow,
                None,
                // This site's id of the patient when linked here, else the granting site's.
                Some(c.id_at(&self.site).unwrap_or(&c.patient).to_string()),
                why,
            );
            let rid = self.audit.record(rec).await?;
            let done = self.store.purge_if_due(&c.regional_key(), today).await;
            let status = match &done {
                Ok(true) => 200,
                // Viewed or granted anew since it was read: kept.
                Ok(false) => 409,
                Err(_) => 500,
            };
            self.audit
                .outcome_synced(rid, outcome(status, started))
                .await?;
            if done? {
                purged.push(c.patient);
            }
        }
        if !purged.is_empty() {
            self.count("purge", purged.len() as u64);
        }
        // Links of consents deleted earlier whose removal did not go through (best effort
        // at the deletion): the registry forgets them here.
        if let Err(e) = self.store.sweep_orphan_links().await {
            tracing::warn!(error = %e, "orphan patient links not swept (next purge retries)");
        }
        Ok(purged)
    }

    /// Counts a consent event (`consent_events_total{kind}`).
    fn count(&self, kind: &str, n: u64) {
        if let Some(m) = &self.metrics {
            m.consent_events.with_label_values(&[kind]).inc_by(n);
        }
    }
}
