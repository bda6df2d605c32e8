//! Patients and consents (art 8, 9, 11; forms 5, 6, 7, 8): a patient's consent with its
//! window as dates, the grant from forms 5 and 6 (the explaining physician, who signed and
//! the relation as art 8.1 allows it, the publication date, "do not extend", the patient's
//! ids at other sites), the withdrawal (form 7, who withdrew) and the deletion request
//! (form 8), each after a confirmation step.
//!
//! Today's registry keeps one consent per patient id of this site; the form 5 reference, the
//! explaining physician, the links and who withdrew go into the change's audit record (the
//! regional registry of issue 14 keeps them as fields).

use http::StatusCode;
use minijinja::context;

use super::forms::{self, Fields, Relation};
use super::router::{Ctx, Fail, PageResult};
use super::Console;
use crate::admin::AdminRequest;
use crate::policy::consent;

fn relations() -> Vec<minijinja::Value> {
    Relation::all()
        .into_iter()
        .map(|r| context! { value => r.value(), label => r.label() })
        .collect()
}

/// `GET /office/consents[?patient=ID]`.
pub fn page(console: &Console, ctx: &Ctx, q: &Fields) -> PageResult {
    let patient = q.get("patient").to_string();
    let today = console.gate.clock.today();
    let shown = if patient.is_empty() {
        None
    } else {
        let id = forms::patient_id(&patient)?;
        console
            .admin
            .store
            .consent(&id)
            .map_err(|e| Fail::Unavailable(e.to_string()))?
            .map(|c| {
                context! {
                    records_from => consent::records_from(c.published).to_string(),
                    access_until => consent::access_until(&c).to_string(),
                    allowed_today => consent::evaluate(&c, today).is_ok(),
                    by => forms::consenter_words(&c.by),
                    last_view => c.last_view.map(|d| d.to_string()).unwrap_or_else(|| "—".into()),
                    published => c.published.to_string(),
                    patient => c.patient, form_ref => c.form_ref, site => c.site,
                    no_extension => c.no_extension,
                }
            })
    };
    let physicians: Vec<_> = console
        .admin
        .store
        .physicians()
        .map_err(|e| Fail::Unavailable(e.to_string()))?
        .into_iter()
        .filter(|p| p.suspended.is_none())
        .map(|p| context! { id => p.id, name => p.name })
        .collect();
    Ok(console.templates.page(
        StatusCode::OK,
        "consents.html",
        context! { ..ctx.base(console, "consents"), ..context! {
            patient, consent => shown, physicians, relations => relations(),
            today => today.to_string(),
        } },
    ))
}

fn done(
    console: &Console,
    ctx: &Ctx,
    ja: &str,
    en: &str,
    message: String,
    lines: Vec<String>,
    patient: &str,
) -> PageResult {
    Ok(console.templates.page(
        StatusCode::OK,
        "done.html",
        context! { ..ctx.base(console, "consents"), ..context! {
            title_ja => ja, title_en => en, message, lines,
            back => format!("/office/consents?patient={patient}"),
        } },
    ))
}

/// `POST /office/consents/grant`: forms 5 and 6.
pub async fn grant(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let patient = forms::patient_id(f.required("patient", "患者ID", "Patient ID")?)?;
    let links = forms::links(f.get("links"), &console.site.id)?;
    let form6 = forms::form_ref(f.get("form6"), 6)?;
    let form5 = forms::form_ref(f.get("form5"), 5)?;
    let explained_by =
        forms::physician_id(f.required("explained_by", "説明した医師", "Explaining physician")?)?;
    let explainer = console
        .admin
        .store
        .physician(&explained_by)
        .map_err(|e| Fail::Unavailable(e.to_string()))?;
    if explainer.is_none() {
        return Err(forms::bad(
            format!("説明した医師「{explained_by}」は登録されていません。"),
            format!("The explaining physician {explained_by:?} is not registered."),
        )
        .into());
    }
    let by = forms::consenter(f.get("by"), f.get("relation"))?;
    let today = console.gate.clock.today();
    let published = forms::form_date(
        f.get("published"),
        "公開日",
        today,
        console.future_grace_days,
    )?;
    let no_extension = f.checked("no_extension");
    let links_text = links
        .iter()
        .map(|(s, i)| format!("{s}:{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let note = format!(
        "form 5 {form5} explained by {explained_by}{}",
        if links_text.is_empty() {
            String::new()
        } else {
            format!("; links {links_text}")
        }
    );
    let r = ctx
        .admin(
            console,
            AdminRequest::ConsentGrant {
                patient: patient.clone(),
                by: by.clone(),
                published,
                no_extension,
                form_ref: form6.clone(),
                links: links.iter().map(|(s, i)| format!("{s}:{i}")).collect(),
                explanation: Some(crate::registry::model::Explanation {
                    form_ref: form5.clone(),
                    physician: explained_by.clone(),
                }),
            },
            note,
        )
        .await?;
    let mut lines = vec![
        format!("様式6 / form 6: {form6}"),
        format!("様式5 / form 5: {form5}（説明 / explained by {explained_by}）"),
        format!("署名者 / signed by: {}", forms::consenter_words(&by)),
        format!("公開日 / published: {published}"),
    ];
    if !links_text.is_empty() {
        lines.push(format!(
            "他施設の患者ID / links: {links_text}（監査記録に記録 / recorded in the audit）"
        ));
    }
    done(
        console,
        ctx,
        "同意を登録しました",
        "Consent registered",
        r.message,
        lines,
        &patient,
    )
}

/// `POST /office/consents/withdraw`: form 7, who withdrew; after a confirmation step.
pub async fn withdraw(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let patient = forms::patient_id(f.get("patient"))?;
    let form7 = forms::form_ref(f.get("form7"), 7)?;
    let by = forms::consenter(f.get("by"), f.get("relation"))?;
    let who = forms::consenter_words(&by);
    if !forms::confirmed(f) {
        return Ok(console.templates.page(
            StatusCode::OK,
            "confirm.html",
            context! { ..ctx.base(console, "consents"), ..context! {
                text_ja => format!("患者 {patient} の同意を撤回します。次の要求から閲覧できなくなり、登録は直ちに削除されます（第11条）。"),
                text_en => format!("The consent of patient {patient} is withdrawn: refused from the next request on, and the registration deleted at once (art 11)."),
                shown => vec![("患者ID / patient", patient.clone()), ("様式7 / form 7", form7.clone()), ("撤回した人 / withdrawn by", who)],
                fields => vec![("patient", patient), ("form7", form7), ("by", f.get("by").to_string()), ("relation", f.get("relation").to_string())],
                action => "/office/consents/withdraw",
                button => "撤回する / Withdraw", back => "/office/consents",
            } },
        ));
    }
    let r = ctx
        .admin(
            console,
            AdminRequest::ConsentWithdraw {
                patient: patient.clone(),
                form_ref: form7,
                by: Some(by.clone()),
            },
            format!("withdrawn by {who}"),
        )
        .await?;
    done(
        console,
        ctx,
        "同意を撤回しました",
        "Consent withdrawn",
        r.message,
        vec![format!("撤回した人 / withdrawn by: {who}")],
        &patient,
    )
}

/// `POST /office/consents/no-extension`: a later request not to extend the window by views
/// (art 8.3), on an existing consent, with its form reference.
pub async fn no_extension(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let patient = forms::patient_id(f.get("patient"))?;
    let form_ref = forms::form_ref(f.get("form_ref"), 6)?;
    let r = ctx
        .admin(
            console,
            AdminRequest::ConsentNoExtension {
                patient: patient.clone(),
                form_ref: form_ref.clone(),
            },
            format!("do not extend, form {form_ref}"),
        )
        .await?;
    done(
        console,
        ctx,
        "延長しない旨を登録しました",
        "Recorded: do not extend",
        r.message,
        vec![format!("書類 / form: {form_ref}")],
        &patient,
    )
}

/// `POST /office/consents/delete`: form 8; after a confirmation step.
pub async fn delete(console: &Console, ctx: &Ctx, f: &Fields) -> PageResult {
    let patient = forms::patient_id(f.get("patient"))?;
    let form8 = forms::form_ref(f.get("form8"), 8)?;
    if !forms::confirmed(f) {
        return Ok(console.templates.page(
            StatusCode::OK,
            "confirm.html",
            context! { ..ctx.base(console, "consents"), ..context! {
                text_ja => format!("患者 {patient} の登録情報を削除します（監査記録は残ります）。"),
                text_en => format!("Patient {patient}'s registered data is deleted (the audit history stays)."),
                shown => vec![("患者ID / patient", patient.clone()), ("様式8 / form 8", form8.clone())],
                fields => vec![("patient", patient), ("form8", form8)],
                action => "/office/consents/delete",
                button => "削除する / Delete", back => "/office/consents",
            } },
        ));
    }
    let r = ctx
        .admin(
            console,
            AdminRequest::PatientDelete {
                patient: patient.clone(),
                form_ref: form8,
            },
            String::new(),
        )
        .await?;
    done(
        console,
        ctx,
        "削除しました",
        "Deleted",
        r.message,
        Vec::new(),
        &patient,
    )
}
