//! The console's forms checked into typed values before anything is asked of the admin
//! surface: who consented and their relation (art 8.1: a blood relative within the 6th
//! degree, a spouse, an in-law within the 3rd degree, or a guardian), dates on the paper forms,
//! form references, and the links of a patient's ids at other sites (`SITE:ID`, issue 14).
//!
//! Every refusal is a [`FormError`] with a Japanese and an English sentence, shown on the
//! console's error page (status 400).

use std::collections::BTreeMap;

use time::{Date, Duration};

use crate::registry::ids::{PatientId, PhysicianId, SiteId, TerminalName};
use crate::registry::model::ConsentBy;

/// Longest form reference accepted (as the admin surface).
const FORM_REF_MAX: usize = 128;
/// Longest name accepted.
const NAME_MAX: usize = 200;
/// A form dated more than this far back is not a new form (the window would already have
/// closed: 999 days after publication, art 8.3).
const OLDEST_FORM_DAYS: i64 = 999;

/// Why a form was not accepted: what to say, in Japanese then English.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{en}")]
pub struct FormError {
    pub ja: String,
    pub en: String,
}

pub(crate) fn bad(ja: impl Into<String>, en: impl Into<String>) -> FormError {
    FormError {
        ja: ja.into(),
        en: en.into(),
    }
}

/// The submitted fields of one form (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, Clone)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Fields {
        Fields(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The field's value, trimmed; empty when absent.
    pub fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.trim())
    }

    /// The field's value, or a clear error naming it.
    pub fn required(&self, key: &str, label_ja: &str, label_en: &str) -> Result<&str, FormError> {
        let v = self.get(key);
        if v.is_empty() {
            return Err(bad(
                format!("「{label_ja}」を入力してください。"),
                format!("{label_en} is required."),
            ));
        }
        Ok(v)
    }

    pub fn checked(&self, key: &str) -> bool {
        matches!(self.get(key), "on" | "yes" | "1" | "true")
    }
}

pub fn physician_id(v: &str) -> Result<String, FormError> {
    PhysicianId::parse(v)
        .map(|p| p.as_str().to_string())
        .map_err(|_| {
            bad(
                format!(
                    "医師ID「{v}」は使えません。英数字・ハイフン・下線で64文字以内にしてください。"
                ),
                format!(
                    "Physician ID {v:?} is not valid: use up to 64 letters, digits, '-' or '_'."
                ),
            )
        })
}

pub fn patient_id(v: &str) -> Result<String, FormError> {
    PatientId::parse(v)
        .map(|p| p.as_str().to_string())
        .map_err(|_| {
            bad(
                format!(
                    "患者ID「{v}」は使えません。英数字・ハイフン・下線で64文字以内にしてください。"
                ),
                format!("Patient ID {v:?} is not valid: use up to 64 letters, digits, '-' or '_'."),
            )
        })
}

pub fn terminal_name(v: &str) -> Result<String, FormError> {
    if TerminalName::is_valid(v) {
        Ok(v.to_string())
    } else {
        Err(bad(
            format!(
                "端末名「{v}」は使えません。英数字・「.」「_」「-」で64文字以内にしてください。"
            ),
            format!(
                "Terminal name {v:?} is not valid: use up to 64 letters, digits, '.', '_' or '-'."
            ),
        ))
    }
}

/// A person's name as written on the form.
pub fn person_name(v: &str) -> Result<String, FormError> {
    if v.is_empty() || v.chars().count() > NAME_MAX || v.chars().any(char::is_control) {
        return Err(bad(
            format!("氏名は1〜{NAME_MAX}文字で入力してください。"),
            format!("The name must have 1-{NAME_MAX} characters."),
        ));
    }
    Ok(v.to_string())
}

/// A paper form's reference number (様式3, 5, 6, 7, 8, 9).
pub fn form_ref(v: &str, form: u8) -> Result<String, FormError> {
    if v.is_empty() || v.chars().count() > FORM_REF_MAX || v.chars().any(char::is_control) {
        return Err(bad(
            format!("様式{form}の番号を入力してください（{FORM_REF_MAX}文字以内）。"),
            format!("The form {form} reference is required (at most {FORM_REF_MAX} characters)."),
        ));
    }
    Ok(v.to_string())
}

/// The relation of a consenting relative, as art 8.1 allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// 血族 (blood relative) within the 6th degree.
    Blood(u8),
    /// 配偶者
    Spouse,
    /// 姻族 (in-law) within the 3rd degree.
    InLaw(u8),
}

impl Relation {
    /// Every value the picker offers: exactly what art 8.1 allows.
    pub fn all() -> Vec<Relation> {
        let mut v: Vec<Relation> = (1..=6).map(Relation::Blood).collect();
        v.push(Relation::Spouse);
        v.extend((1..=3).map(Relation::InLaw));
        v
    }

    /// The picker's value: `blood-2`, `spouse`, `inlaw-1`.
    pub fn value(self) -> String {
        match self {
            Relation::Blood(d) => format!("blood-{d}"),
            Relation::Spouse => "spouse".into(),
            Relation::InLaw(d) => format!("inlaw-{d}"),
        }
    }

    pub fn label(self) -> String {
        match self {
            Relation::Blood(d) => format!("血族 {d}親等 / blood relative, degree {d}"),
            Relation::Spouse => "配偶者 / spouse".into(),
            Relation::InLaw(d) => format!("姻族 {d}親等 / in-law, degree {d}"),
        }
    }

    /// What the registry keeps as the relation (the English words).
    pub fn registry_text(self) -> String {
        match self {
            Relation::Blood(d) => format!("blood relative, degree {d}"),
            Relation::Spouse => "spouse".into(),
            Relation::InLaw(d) => format!("in-law, degree {d}"),
        }
    }

    pub fn parse(v: &str) -> Result<Relation, FormError> {
        let refuse = || {
            bad(
                format!("続柄「{v}」は第8条第1項の範囲外です（6親等内の血族、配偶者、3親等内の姻族）。"),
                format!("Relation {v:?} is not one art 8.1 allows (blood relative up to the 6th degree, spouse, in-law up to the 3rd degree)."),
            )
        };
        let degree = |d: &str, max: u8| match d.parse::<u8>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(refuse()),
        };
        match v.split_once('-') {
            None if v == "spouse" => Ok(Relation::Spouse),
            Some(("blood", d)) => degree(d, 6).map(Relation::Blood),
            Some(("inlaw", d)) => degree(d, 3).map(Relation::InLaw),
            _ => Err(refuse()),
        }
    }
}

/// Who signed a consent (form 6) or a withdrawal (form 7): the patient, a relative with a
/// relation art 8.1 allows, or the guardian.
pub fn consenter(by: &str, relation: &str) -> Result<ConsentBy, FormError> {
    match by {
        "patient" => Ok(ConsentBy::Patient),
        "guardian" => Ok(ConsentBy::Guardian),
        "relative" => {
            if relation.is_empty() {
                return Err(bad(
                    "家族が署名した場合は続柄を選んでください（第8条第1項）。",
                    "Choose the relation when a relative signed (art 8.1).",
                ));
            }
            Ok(ConsentBy::Relative(
                Relation::parse(relation)?.registry_text(),
            ))
        }
        other => Err(bad(
            format!("署名者「{other}」は選べません（本人・家族・後見人）。"),
            format!("Signer {other:?} is not one of: patient, relative, guardian."),
        )),
    }
}

/// Words for who signed, for the audit and the pages.
pub fn consenter_words(by: &ConsentBy) -> String {
    match by {
        ConsentBy::Patient => "patient".into(),
        ConsentBy::Guardian => "guardian".into(),
        ConsentBy::Relative(r) => format!("relative ({r})"),
    }
}

/// A date written on a form (`YYYY-MM-DD`, Japan calendar), no more than `grace_days` after
/// `today` and no more than 999 days before it.
pub fn form_date(v: &str, what_ja: &str, today: Date, grace_days: u32) -> Result<Date, FormError> {
    let d = crate::ops::clock::parse_date(v).map_err(|_| {
        bad(
            format!("{what_ja}「{v}」は日付として読めません（例: 2026-11-27）。"),
            format!("{v:?} is not a date YYYY-MM-DD (e.g. 2026-11-27)."),
        )
    })?;
    if d > today + Duration::days(i64::from(grace_days)) {
        return Err(bad(
            format!(
                "{what_ja} {d} は今日（{today}）より{}日先です。用紙の日付を確認してください。",
                (d - today).whole_days()
            ),
            format!(
                "{d} is {} days after today ({today}, Japan): check the date on the form.",
                (d - today).whole_days()
            ),
        ));
    }
    if d < today - Duration::days(OLDEST_FORM_DAYS) {
        return Err(bad(
            format!("{what_ja} {d} は999日以上前です。この同意の閲覧期間はすでに終わっています。"),
            format!("{d} is more than 999 days ago: this consent's window has already closed."),
        ));
    }
    Ok(d)
}

/// The patient's ids at other sites, one `SITE:ID` per line or comma (issue 14): each site
/// once, never this site (the patient id itself is this site's), each part a valid id.
pub fn links(text: &str, own_site: &str) -> Result<BTreeMap<String, String>, FormError> {
    let mut out = BTreeMap::new();
    for item in text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let Some((site, id)) = item.split_once(':') else {
            return Err(bad(
                format!("連携ID「{item}」は「施設ID:患者ID」の形で書いてください（例: nomura-clinic:N-778）。"),
                format!("Link {item:?} must be SITE:ID (e.g. nomura-clinic:N-778)."),
            ));
        };
        let (site, id) = (site.trim(), id.trim());
        if !SiteId::is_valid(site) {
            return Err(bad(
                format!("連携ID「{item}」の施設ID「{site}」は使えません。"),
                format!("Link {item:?}: {site:?} is not a site id."),
            ));
        }
        if site == own_site {
            return Err(bad(
                format!("連携ID「{item}」はこの施設のものです。この施設の患者IDは「患者ID」欄に書いてください。"),
                format!("Link {item:?} names this site: this site's id is the patient id field."),
            ));
        }
        let id = patient_id(id)?;
        if let Some(prev) = out.insert(site.to_string(), id.clone()) {
            return Err(bad(
                format!("施設「{site}」の連携IDが2つあります（{prev} と {id}）。1施設に1つです。"),
                format!("Site {site:?} is linked twice ({prev} and {id}): one id per site."),
            ));
        }
    }
    Ok(out)
}

/// A confirmation step: the form must carry `confirm=yes` (the second submission).
pub fn confirmed(f: &Fields) -> bool {
    f.get("confirm") == "yes"
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    /// Art 8.1: the picker offers exactly blood relatives 1-6, the spouse, in-laws 1-3, and
    /// nothing else is accepted, whatever is posted.
    #[test]
    fn art_8_1_relations_are_only_those_the_rule_allows() {
        let all = Relation::all();
        assert_eq!(all.len(), 10);
        for r in &all {
            assert_eq!(Relation::parse(&r.value()), Ok(*r));
        }
        for bad_value in [
            "blood-7",
            "blood-0",
            "inlaw-4",
            "inlaw-0",
            "friend",
            "",
            "blood-",
            "spouse-1",
            "blood-2x",
            "inlaw--1",
            "BLOOD-1",
            "blood-255",
            "blood-256",
        ] {
            assert!(
                Relation::parse(bad_value).is_err(),
                "{bad_value:?} accepted"
            );
        }
        assert_eq!(
            consenter("relative", "inlaw-3").unwrap(),
            ConsentBy::Relative("in-law, degree 3".into())
        );
        assert!(consenter("relative", "").is_err());
        assert!(consenter("relative", "blood-9").is_err());
        assert_eq!(consenter("guardian", "").unwrap(), ConsentBy::Guardian);
        assert_eq!(consenter("patient", "spouse").unwrap(), ConsentBy::Patient);
        assert!(consenter("neighbour", "").is_err());
        let e = consenter("relative", "blood-7").unwrap_err();
        assert!(
            e.ja.contains("第8条第1項") && e.en.contains("art 8.1"),
            "{e:?}"
        );
    }

    /// Art 8.3, 9.1: the dates on a form: well-formed, not beyond the grace days ahead, and
    /// not so old that the 999-day window has closed.
    #[test]
    fn art_9_1_form_dates_are_checked_against_today() {
        let today = date!(2026 - 11 - 27);
        assert_eq!(form_date("2026-11-27", "公開日", today, 3), Ok(today));
        assert_eq!(
            form_date("2026-11-30", "公開日", today, 3),
            Ok(date!(2026 - 11 - 30))
        );
        assert!(form_date("2026-12-01", "公開日", today, 3).is_err());
        assert!(form_date("2062-11-27", "公開日", today, 3).is_err());
        assert!(form_date("2026-02-30", "公開日", today, 3).is_err());
        assert!(form_date("27/11/2026", "公開日", today, 3).is_err());
        assert!(form_date("", "公開日", today, 3).is_err());
        assert!(form_date("2024-03-03", "公開日", today, 3).is_ok());
        assert!(form_date("2024-03-02", "公開日", today, 3).is_err());
    }

    /// Issue 14's links, checked on the form: `SITE:ID`, one per site, never this site.
    #[test]
    fn art_9_4_links_are_site_colon_id_one_per_site() {
        let l = links("nomura-clinic:N-778\n", "seiyo-hospital").unwrap();
        assert_eq!(l.get("nomura-clinic").map(String::as_str), Some("N-778"));
        assert!(links("", "seiyo-hospital").unwrap().is_empty());
        assert_eq!(
            links("nomura-clinic:N-1, other-site:X2", "seiyo-hospital")
                .unwrap()
                .len(),
            2
        );
        for bad_text in [
            "nomura-clinic",
            "nomura-clinic:",
            ":N-1",
            "nomura clinic:N-1",
            "seiyo-hospital:0012345",
            "nomura-clinic:N-1\nnomura-clinic:N-2",
            "nomura-clinic:N/1",
            "nomura-clinic:../x",
        ] {
            assert!(
                links(bad_text, "seiyo-hospital").is_err(),
                "{bad_text:?} accepted"
            );
        }
    }

    #[test]
    fn ids_names_and_form_refs_are_checked() {
        assert!(patient_id("P001").is_ok());
        assert!(patient_id("P 001").is_err());
        assert!(physician_id("dr-a").is_ok());
        assert!(physician_id("dr/a").is_err());
        assert!(terminal_name("pc-1.local").is_ok());
        assert!(terminal_name("../pc").is_err());
        assert!(form_ref("様式6-12", 6).is_ok());
        assert!(form_ref("", 6).is_err());
        assert!(form_ref("a\nb", 6).is_err());
        assert!(form_ref(&"x".repeat(129), 6).is_err());
        assert!(person_name("西予 太郎").is_ok());
        assert!(person_name("").is_err());
        let f = Fields::parse(b"a=+x+&b=&confirm=yes");
        assert_eq!(f.get("a"), "x");
        assert!(f.required("b", "b", "b").is_err());
        assert!(confirmed(&f));
    }
}
