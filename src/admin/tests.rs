use super::*;
use crate::registry::model::SuspendReason;
/// The wire format is stable JSON: scripts may speak it.
#[test]
fn admin_request_wire_format() {
    let r: AdminRequest =
        serde_json::from_str(r#"{"op":"physician-suspend","id":"d1","reason":"retirement"}"#)
            .unwrap();
    assert_eq!(
        r,
        AdminRequest::PhysicianSuspend {
            id: "d1".into(),
            reason: SuspendReason::Retirement,
            form_ref: None,
        }
    );
    assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"drop-tables"}"#).is_err());
    assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"purge","extra":1}"#).is_err());
}

/// The typed replies are the same JSON as the values built by hand before them.
#[test]
fn typed_replies_keep_the_wire_json() {
    use crate::registry::model::{Consent, ConsentBy};
    use time::macros::date;
    let c = Consent {
        patient: "P1".into(),
        by: ConsentBy::Relative("spouse".into()),
        site: "s".into(),
        form_ref: "F-1".into(),
        published: date!(2026 - 01 - 05),
        no_extension: false,
        last_view: Some(date!(2026 - 02 - 01)),
        withdrawn: None,
        links: Vec::new(),
        explanation: None,
    };
    let today = date!(2026 - 03 - 01);
    // As `consent-show` built it by hand.
    let mut old = serde_json::to_value(&c).unwrap();
    if let serde_json::Value::Object(m) = &mut old {
        m.insert(
            "records_from".into(),
            crate::policy::consent::records_from(c.published)
                .to_string()
                .into(),
        );
        m.insert(
            "access_until".into(),
            crate::policy::consent::access_until(&c).to_string().into(),
        );
        m.insert(
            "allowed_today".into(),
            crate::policy::consent::evaluate(&c, today).is_ok().into(),
        );
    }
    let view = ConsentView {
        records_from: crate::policy::consent::records_from(c.published),
        access_until: crate::policy::consent::access_until(&c),
        allowed_today: crate::policy::consent::evaluate(&c, today).is_ok(),
        consent: c.clone(),
    };
    let r = AdminResponse::ok("m", AdminReply::ConsentView(view.clone()));
    assert_eq!(r.data, old);
    assert_eq!(
        serde_json::to_string(&r.data).unwrap(),
        serde_json::to_string(&old).unwrap()
    );
    assert_eq!(r.reply::<ConsentView>().unwrap(), view);
    assert_eq!(r.reply::<Consent>().unwrap(), c);

    let r = AdminResponse::ok("m", AdminReply::Consent(c.clone()));
    assert_eq!(r.data, serde_json::to_value(&c).unwrap());
    let r = AdminResponse::ok("m", AdminReply::Nothing);
    assert_eq!(r.data, serde_json::Value::Null);
    let r = AdminResponse::ok("m", AdminReply::PhysicianId("d1".into()));
    assert_eq!(r.data, serde_json::json!("d1"));
    let r = AdminResponse::ok("m", AdminReply::Names(vec!["a".into(), "b".into()]));
    assert_eq!(r.data, serde_json::json!(["a", "b"]));
    assert_eq!(r.reply::<Vec<String>>().unwrap(), ["a", "b"]);
    assert!(r.reply::<crate::registry::model::Physician>().is_err());
    assert_eq!(
        serde_json::to_string(&AdminResponse::err("no")).unwrap(),
        r#"{"ok":false,"message":"no","data":null}"#
    );
}
