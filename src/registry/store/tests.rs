use super::*;
use crate::registry::model::ConsentBy;
use crate::registry::store::block;
use time::macros::date;

fn physician(id: &str) -> Physician {
    Physician {
        id: id.into(),
        name: "Dr".into(),
        site: "s".into(),
        suspended: None,
        registered: "2026-01-01T00:00:00+09:00".into(),
        password_hash: None,
        must_change_password: false,
        failed_logins: 0,
        locked_until: None,
    }
}

fn terminal(name: &str, physician: &str, fp: &str) -> Terminal {
    Terminal {
        name: name.into(),
        physician: physician.into(),
        fingerprint: fp.into(),
        serial: "01".into(),
        not_after: time::macros::datetime!(2030-01-01 00:00:00 +09:00),
        revoked: false,
        registered: "2026-01-01T00:00:00+09:00".into(),
        kind: crate::registry::model::TerminalKind::Terminal,
        tunnel_ip: None,
    }
}

fn consent(patient: &str) -> Consent {
    Consent {
        patient: patient.into(),
        by: ConsentBy::Relative("spouse".into()),
        site: "s".into(),
        form_ref: "F6".into(),
        published: date!(2026 - 01 - 01),
        no_extension: false,
        last_view: None,
        withdrawn: None,
        links: Vec::new(),
        explanation: None,
    }
}

#[test]
fn art_7_deleting_a_physician_removes_their_terminals_and_re_registration_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.add_physician(&physician("d1"))).unwrap();
    assert!(block(s.add_physician(&physician("d1"))).is_err());
    block(s.add_terminal(&terminal("pc1", "d1", "aa"))).unwrap();
    assert!(block(s.add_terminal(&terminal("pc2", "d1", "aa"))).is_err());
    assert!(block(s.add_terminal(&terminal("pc3", "nobody", "bb"))).is_err());
    assert_eq!(
        block(s.delete_physician("d1")).unwrap(),
        vec!["pc1".to_string()]
    );
    assert!(s.terminal_by_fingerprint("aa").unwrap().is_none());
    block(s.add_physician(&physician("d1"))).unwrap();
    assert!(s.terminal_by_fingerprint("aa").unwrap().is_none());
}

/// Art 4, 7, 12.7: a connection's cached identity is reused only while the registry is
/// unchanged; a revocation, suspension, resumption or deregistration is seen at the next
/// request, and expiry is checked against the clock even on a cache hit.
#[test]
fn art_12_7_connection_identity_cache_sees_every_registry_change() {
    use crate::policy::identity::{ConnIdentity, IdentityRefusal};
    use time::macros::datetime;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.add_physician(&physician("d1"))).unwrap();
    block(s.add_terminal(&terminal("pc1", "d1", "aa"))).unwrap();
    let now = datetime!(2026-11-26 10:00 +9);
    let conn = ConnIdentity::default();
    let first = conn.resolve(&s, "aa", now).unwrap().unwrap();
    let again = conn.resolve(&s, "aa", now).unwrap().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "unchanged registry: reused"
    );

    // Expiry is checked on a cache hit too.
    let later = datetime!(2030-01-01 00:00:01 +9);
    assert_eq!(
        conn.resolve(&s, "aa", later).unwrap().unwrap_err(),
        IdentityRefusal::TerminalExpired
    );

    block(s.suspend_physician("d1", SuspendReason::Violation)).unwrap();
    assert_eq!(
        conn.resolve(&s, "aa", now).unwrap().unwrap_err(),
        IdentityRefusal::PhysicianSuspended
    );
    block(s.resume_physician("d1")).unwrap();
    let resumed = conn.resolve(&s, "aa", now).unwrap().unwrap();
    assert!(
        !std::sync::Arc::ptr_eq(&first, &resumed),
        "re-read after a change"
    );
    assert!(resumed.physician.suspended.is_none());

    // Any acknowledged change invalidates, also one that does not touch this terminal.
    let before = s.generation();
    block(s.grant_consent(&consent("P1"))).unwrap();
    assert_ne!(s.generation(), before);
    let after_other = conn.resolve(&s, "aa", now).unwrap().unwrap();
    assert!(!std::sync::Arc::ptr_eq(&resumed, &after_other));

    block(s.revoke_terminal("pc1")).unwrap();
    assert_eq!(
        conn.resolve(&s, "aa", now).unwrap().unwrap_err(),
        IdentityRefusal::TerminalRevoked
    );
    block(s.add_terminal(&terminal("pc2", "d1", "bb"))).unwrap();
    let conn2 = ConnIdentity::default();
    conn2.resolve(&s, "bb", now).unwrap().unwrap();
    block(s.delete_physician("d1")).unwrap();
    assert_eq!(
        conn2.resolve(&s, "bb", now).unwrap().unwrap_err(),
        IdentityRefusal::UnknownTerminal
    );
}

/// Art 13.1 (issue 11 item 1): 40 tries reserved at once from 8 threads: exactly
/// `max_failures` are counted (and may check a password), the one that reaches the limit
/// locks, every other is refused as locked; a success clears the count and the lock.
#[test]
fn art_13_1_concurrent_reservations_count_at_most_max_failures() {
    use time::macros::datetime;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.add_physician(&physician("d1"))).unwrap();
    let now = datetime!(2026-11-26 10:00 +9);
    let lockout = time::Duration::minutes(15);
    let results: Vec<auth::Attempt> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..5)
                        .map(|_| {
                            block(s.reserve_signin_attempt("d1", now, 5, lockout))
                                .unwrap()
                                .0
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let counted = results
        .iter()
        .filter(|a| matches!(a, auth::Attempt::Counted { .. }))
        .count();
    let locking = results
        .iter()
        .filter(|a| matches!(a, auth::Attempt::Counted { locks: true }))
        .count();
    assert_eq!((counted, locking), (5, 1), "{results:?}");
    let p = s.physician("d1").unwrap().unwrap();
    assert!(auth::locked_until(&p, now).is_some());
    block(s.signin_succeeded("d1")).unwrap();
    let p = s.physician("d1").unwrap().unwrap();
    assert_eq!((p.failed_logins, p.locked_until), (0, None));
    assert!(block(s.reserve_signin_attempt("nobody", now, 5, lockout)).is_err());
}

#[test]
fn art_4_suspend_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.add_physician(&physician("d1"))).unwrap();
    let p = block(s.suspend_physician("d1", SuspendReason::Violation)).unwrap();
    assert_eq!(p.suspended, Some(SuspendReason::Violation));
    assert_eq!(s.physician("d1").unwrap().unwrap().suspended, p.suspended);
    assert!(block(s.resume_physician("d1")).unwrap().suspended.is_none());
    assert!(block(s.suspend_physician("zz", SuspendReason::Request)).is_err());
}

#[test]
fn art_9_2_withdrawal_wins_over_a_concurrent_view() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.grant_consent(&consent("P1"))).unwrap();
    assert!(block(s.grant_consent(&consent("P1"))).is_err());
    block(s.touch_consent("P1", date!(2026 - 02 - 01))).unwrap();
    assert_eq!(
        s.consent("P1").unwrap().unwrap().last_view,
        Some(date!(2026 - 02 - 01))
    );
    let w = block(s.withdraw_consent("P1", "F7", date!(2026 - 02 - 02))).unwrap();
    assert_eq!(w.withdrawn.map(|w| w.form_ref), Some("F7".to_string()));
    // Art 11: the registration is gone at once; a late view does not bring it back.
    assert!(s.consent("P1").unwrap().is_none());
    block(s.touch_consent("P1", date!(2026 - 02 - 03))).unwrap();
    assert!(s.consent("P1").unwrap().is_none());
    assert!(block(s.withdraw_consent("P1", "F7b", date!(2026 - 02 - 03))).is_err());
    // A fresh form 6 after a withdrawal registers anew.
    block(s.grant_consent(&consent("P1"))).unwrap();
    assert!(s.consent("P1").unwrap().unwrap().withdrawn.is_none());
}

#[test]
fn art_11_purge_deletes_ended_and_withdrawn_consents() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.grant_consent(&consent("P1"))).unwrap();
    let mut old = consent("P2");
    old.published = date!(2020 - 01 - 01);
    block(s.grant_consent(&old)).unwrap();
    // A withdrawn consent left by an older version (withdrawal now deletes at once).
    let mut withdrawn = consent("P3");
    withdrawn.withdrawn = Some(Withdrawal {
        form_ref: "F7".into(),
        date: date!(2026 - 03 - 01),
    });
    block(s.grant_consent(&withdrawn)).unwrap();
    let mut purged = block(s.purge(date!(2026 - 11 - 26))).unwrap();
    purged.sort();
    assert_eq!(purged, vec!["P2".to_string(), "P3".to_string()]);
    assert!(s.consent("P1").unwrap().is_some());
}

#[test]
fn reopen_keeps_everything_and_checks_schema() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path()).unwrap();
        block(s.add_physician(&physician("d1"))).unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert!(s.physician("d1").unwrap().is_some());
}

/// The typed conflicts and missing records say what kind of record and which id, with the
/// messages the admin has always seen.
#[test]
fn conflicts_and_missing_records_are_typed_with_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    block(s.add_physician(&physician("d1"))).unwrap();
    let e = block(s.add_physician(&physician("d1"))).unwrap_err();
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::PhysicianRegistered(id)) if id == "d1"
    ));
    assert_eq!(e.to_string(), r#"physician "d1" is already registered"#);
    block(s.add_terminal(&terminal("pc1", "d1", "aa"))).unwrap();
    let e = block(s.add_terminal(&terminal("pc1", "d1", "bb"))).unwrap_err();
    assert_eq!(e.to_string(), r#"terminal "pc1" is already registered"#);
    let e = block(s.add_terminal(&terminal("pc2", "d1", "aa"))).unwrap_err();
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::KeyRegistered { fingerprint }) if fingerprint == "aa"
    ));
    assert_eq!(
        e.to_string(),
        "a terminal with this key is already registered"
    );
    let e = block(s.add_terminal(&terminal("pc3", "nobody", "cc"))).unwrap_err();
    assert!(matches!(&e, StoreError::NotFound(Missing::Physician(id)) if id == "nobody"));
    assert_eq!(e.to_string(), r#"no physician "nobody""#);
    let e = block(s.revoke_terminal("pc9")).unwrap_err();
    assert_eq!(e.to_string(), r#"no terminal "pc9""#);
    block(s.grant_consent(&consent("P1"))).unwrap();
    let e = block(s.grant_consent(&consent("P1"))).unwrap_err();
    assert!(matches!(
        &e,
        StoreError::Conflict(Conflict::ConsentRegistered { patient, .. }) if patient == "P1"
    ));
    assert_eq!(
        e.to_string(),
        r#"patient "P1" already has a consent (form F6); withdraw it first"#
    );
    let e = block(s.withdraw_consent("P9", "F7", date!(2026 - 03 - 01))).unwrap_err();
    assert!(matches!(&e, StoreError::NotFound(Missing::Consent(p)) if p == "P9"));
    assert_eq!(e.to_string(), r#"no consent for patient "P9""#);
}

fn linked(patient: &str, site: &str, links: &[&str]) -> Consent {
    let mut c = consent(patient);
    c.site = site.into();
    c.links = std::iter::once(format!("{site}:{patient}"))
        .chain(links.iter().map(|l| l.to_string()))
        .collect();
    c
}

/// Issue 14 (art 9.4): a consent granted at one site with a link is found at the other site
/// through that site's own id, not through the granting site's id; a link is one-to-one per
/// site; a withdrawal forgets every link.
#[test]
fn art_9_4_linked_consent_is_found_by_each_sites_own_id_and_links_are_one_to_one() {
    let dir = tempfile::tempdir().unwrap();
    let clinic = Store::open(dir.path()).unwrap().at_site("nomura-clinic");
    let hospital = clinic.clone().at_site("seiyo-hospital");
    block(clinic.grant_consent(&linked(
        "N-778",
        "nomura-clinic",
        &["seiyo-hospital:0012345"],
    )))
    .unwrap();
    assert_eq!(
        hospital.consent("0012345").unwrap().unwrap().patient,
        "N-778"
    );
    assert!(hospital.consent("N-778").unwrap().is_none());
    assert!(clinic.consent("0012345").unwrap().is_none());
    // One id per site.
    let e = block(clinic.link_patient("N-778", "seiyo-hospital:0099999")).unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(Conflict::SiteLinkedTwice { .. })),
        "{e}"
    );
    // One patient per id: the hospital's other patient cannot take the clinic's N-778.
    let e = block(hospital.grant_consent(&linked(
        "0055555",
        "seiyo-hospital",
        &["nomura-clinic:N-778"],
    )))
    .unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(Conflict::LinkTaken { .. })),
        "{e}"
    );
    assert!(
        hospital.consent("0055555").unwrap().is_none(),
        "nothing left behind"
    );
    // A view at the hospital moves the one regional last_view.
    block(hospital.touch_consent("0012345", date!(2026 - 02 - 01))).unwrap();
    assert_eq!(
        clinic.consent("N-778").unwrap().unwrap().last_view,
        Some(date!(2026 - 02 - 01))
    );
    // Withdrawal at the hospital: gone at both, links forgotten (a new grant may reuse them).
    block(hospital.withdraw_consent("0012345", "F7", date!(2026 - 02 - 02))).unwrap();
    assert!(clinic.consent("N-778").unwrap().is_none());
    assert!(hospital.consent("0012345").unwrap().is_none());
    block(hospital.grant_consent(&linked(
        "0055555",
        "seiyo-hospital",
        &["nomura-clinic:N-778"],
    )))
    .unwrap();
    assert_eq!(clinic.consent("N-778").unwrap().unwrap().patient, "0055555");
}

/// Issue 14: a consent registered before links (keyed by the bare id) keeps working at the
/// site that granted it (fallback, no migration), is not found by another site's same id, and
/// `patient link` moves it to the linked form.
#[test]
fn art_9_4_a_pre_link_consent_keeps_working_and_link_moves_it_to_the_linked_form() {
    let dir = tempfile::tempdir().unwrap();
    let bare = Store::open(dir.path()).unwrap();
    let mut old = consent("P001");
    old.site = "seiyo-hospital".into();
    block(bare.grant_consent(&old)).unwrap();
    let hospital = bare.clone().at_site("seiyo-hospital");
    let clinic = bare.clone().at_site("nomura-clinic");
    assert!(hospital.consent("P001").unwrap().is_some());
    assert!(
        clinic.consent("P001").unwrap().is_none(),
        "another EMR's P001"
    );
    // A second grant for the same patient is refused while the old one holds.
    let e = block(hospital.grant_consent(&linked("P001", "seiyo-hospital", &[]))).unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(Conflict::ConsentRegistered { .. })),
        "{e}"
    );
    let c = block(hospital.link_patient("P001", "nomura-clinic:N-1")).unwrap();
    assert_eq!(c.links, ["seiyo-hospital:P001", "nomura-clinic:N-1"]);
    assert_eq!(clinic.consent("N-1").unwrap().unwrap().patient, "P001");
    assert!(hospital.consent("P001").unwrap().is_some());
    assert_eq!(bare.consents().unwrap().len(), 1, "re-keyed, not copied");
    // The purge removes it with its links.
    let purged = block(hospital.purge(date!(2030 - 01 - 01))).unwrap();
    assert_eq!(purged, ["P001"]);
    assert!(clinic.consent("N-1").unwrap().is_none());
}

/// Issue 15: the `staff` tree — added once, found by its certificate, updated atomically with
/// the physicians' lockout rule (art 13.1), and kept across a reopen.
#[test]
fn art_13_1_staff_accounts_are_stored_found_by_certificate_and_locked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    let staff = Staff {
        id: "clerk-1".into(),
        name: "連携室".into(),
        role: crate::registry::model::StaffRole::Clerk,
        suspended: false,
        registered: "2026-01-01T00:00:00+09:00".into(),
        password_hash: "$argon2id$x".into(),
        must_change_password: true,
        failed_logins: 0,
        locked_until: None,
        fingerprint: "fp-staff".into(),
        serial: "02".into(),
        not_after: time::macros::datetime!(2030-01-01 00:00:00 +09:00),
    };
    block(s.add_staff(&staff)).unwrap();
    let again = block(s.add_staff(&staff)).unwrap_err();
    assert!(matches!(
        again,
        StoreError::Conflict(Conflict::StaffRegistered(_))
    ));
    assert_eq!(
        s.staff_by_fingerprint("fp-staff").unwrap(),
        Some(staff.clone())
    );
    assert_eq!(s.staff_by_fingerprint("fp-other").unwrap(), None);
    let now = time::macros::datetime!(2026-11-27 10:00:00 +09:00);
    for _ in 0..5 {
        block(s.update_staff("clerk-1", |x| {
            auth::reserve_attempt(x, now, 5, time::Duration::minutes(15));
            true
        }))
        .unwrap();
    }
    let locked = s.staff("clerk-1").unwrap().unwrap();
    assert!(auth::locked_until(&locked, now).is_some());
    let missing = block(s.update_staff("nobody", |_| true)).unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(Missing::Staff(_))));
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.staff_list().unwrap().len(), 1);
}
