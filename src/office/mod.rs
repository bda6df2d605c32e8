//! The liaison office's console (issue 15; rules art 2, 3, 4, 6.2, 7, 8.1, 9, 11, 12.8): a web
//! page on its own listener (`[office]`, normally open to the office LAN only) where the
//! liaison office's clerks register physicians and terminals, record consents and their
//! withdrawal or deletion from the paper forms, see what runs out soon, answer a patient's
//! "who viewed my records", and review usage.
//!
//! Two factors as for physicians, but never a physician's: a **staff certificate** (issued by
//! the site CA with the staff OU and registered in the `staff` tree, never in `terminals`, so
//! that a physician's terminal opens no console and a staff certificate no EMR) and a
//! **password** (Argon2 on the gateway's bounded pool, the same lockout counting). Every
//! change goes through [`crate::admin::Admin::execute_by`]: validated, audited before it
//! takes effect, with the staff member's id, the forms and the site in the record.
//!
//! * [`listener`]: accept (allow-list, refusals audited), mutual TLS, HTTP/1.1;
//! * [`router`]: who is asking (certificate, session, CSRF, role) and which page answers;
//! * [`signin`]: the password, the lockout and the forced change of a one-time password;
//! * [`session`]: the console's sessions, cookie and CSRF tokens;
//! * [`forms`]: the forms checked into typed values (relations, dates, links);
//! * [`render`]: the minijinja templates (`templates/`, embedded) and the error page;
//! * [`issue`]: a terminal certificate issued on the console, downloadable once;
//! * the pages: [`today`], [`physicians`], [`terminals`], [`consents`], [`views`], [`staff`].

pub mod consents;
pub mod forms;
pub mod issue;
pub mod listener;
pub mod physicians;
pub mod render;
pub mod router;
pub mod session;
pub mod signin;
pub mod staff;
pub mod terminals;
pub mod today;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;

use crate::admin::Admin;
use crate::gate::Gate;
use crate::site::config::{Auth, CaPaths, Config, Network, Office, Site, WireGuard};

/// What every console request needs.
#[derive(Debug)]
pub struct Console {
    pub admin: Arc<Admin>,
    pub gate: Arc<Gate>,
    pub office: Office,
    pub site: Site,
    pub ca: CaPaths,
    pub auth: Auth,
    /// The audit log's directory (the views come from the audit query).
    pub audit_dir: PathBuf,
    /// Where certificates issued on the console are written before they are read into memory.
    pub issue_dir: PathBuf,
    pub future_grace_days: u32,
    /// The WireGuard ingress and the network's sites, for `.conf` terminals (art 12.2).
    pub wireguard: Option<WireGuard>,
    pub network: Option<Network>,
    /// The whole configuration, for the network-wide audit query (`[network]` + `[peer]`).
    pub config: Config,
    pub sessions: session::StaffSessions,
    pub downloads: issue::Downloads,
    pub templates: render::Templates,
}

impl Console {
    pub fn new(cfg: &Config, office: &Office, admin: Arc<Admin>, gate: Arc<Gate>) -> Console {
        Console {
            admin,
            gate,
            office: office.clone(),
            site: cfg.site.clone(),
            ca: cfg.ca.clone(),
            auth: cfg.auth.clone(),
            audit_dir: cfg.state_dir.join("audit"),
            issue_dir: cfg.state_dir.join("office-issue"),
            future_grace_days: cfg.future_grace_days,
            wireguard: cfg.wireguard.clone(),
            network: cfg.network.clone(),
            config: cfg.clone(),
            sessions: session::StaffSessions::new(office.idle_timeout, office.session_lifetime),
            downloads: issue::Downloads::default(),
            templates: render::Templates::new(),
        }
    }
}
