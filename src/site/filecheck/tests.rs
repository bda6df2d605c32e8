use super::*;

#[test]
fn principal_from_passwd_and_group_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let passwd = dir.path().join("passwd");
    let group = dir.path().join("group");
    std::fs::write(
        &passwd,
        "root:x:0:0:root:/root:/bin/bash\nseibo-gate:x:998:997::/var/lib/seibo-gate:/usr/sbin/nologin\n",
    )
    .expect("write");
    std::fs::write(
        &group,
        "root:x:0:\nseibo-gate:x:997:\nssl-cert:x:110:postgres,seibo-gate\nadm:x:4:syslog\n",
    )
    .expect("write");
    let p = Principal::named_in("seibo-gate", &passwd, &group).expect("user");
    assert_eq!((p.uid, p.gid), (998, 997));
    assert_eq!(p.groups, vec![110]);
    assert_eq!(p.group_name, "seibo-gate");
    assert!(p.in_group(110) && p.in_group(997) && !p.in_group(4));
    assert_eq!(
        Principal::named_in("998", &passwd, &group)
            .expect("by uid")
            .name,
        "seibo-gate"
    );
    assert!(matches!(
        Principal::named_in("nobody", &passwd, &group),
        Err(PrincipalError::UnknownUser(_))
    ));
}

#[test]
fn current_principal_matches_the_owner_of_a_new_file() {
    let me = Principal::current().expect("current");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    std::fs::write(&f, "x").expect("write");
    let m = std::fs::metadata(&f).expect("meta");
    assert_eq!(me.uid, m.uid());
}
