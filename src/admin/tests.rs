use super::*;
use crate::model::SuspendReason;
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
            reason: SuspendReason::Retirement
        }
    );
    assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"drop-tables"}"#).is_err());
    assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"purge","extra":1}"#).is_err());
}
