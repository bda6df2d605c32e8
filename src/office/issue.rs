//! A terminal certificate issued on the console (form 3; art 6.2): the site CA signs it (the
//! CA key must be readable by the service when the console is enabled — README, "For the
//! liaison office"), the files are written to a private directory, the `.p12` is read into
//! memory and every file removed at once; the `.p12` can then be downloaded **once**, by the
//! staff member who issued it, within ten minutes. A second download is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

use super::listener::StaffPeer;
use super::render;
use super::router::{note, Ctx, Fail, PageResult};
use super::Console;
use crate::admin::terminal_issue::{self, Request};
use crate::admin::AdminRequest;
use crate::audit::Decision;
use crate::registry::model::TerminalKind;
use crate::site::pki::Ca;

/// How long an issued `.p12` waits for its one download.
const DOWNLOAD_TTL: Duration = Duration::from_secs(600);

/// One `.p12` waiting for its download.
#[derive(Debug)]
struct Pending {
    staff: String,
    filename: String,
    bytes: Vec<u8>,
    created: Instant,
}

/// The `.p12` files waiting for their one download, by a random token.
#[derive(Debug, Default)]
pub struct Downloads {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Downloads {
    fn put(&self, staff: &str, filename: String, bytes: Vec<u8>) -> String {
        let token = hex::encode(rand::rng().random::<[u8; 24]>());
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, p| p.created.elapsed() < DOWNLOAD_TTL);
        m.insert(
            token.clone(),
            Pending {
                staff: staff.to_string(),
                filename,
                bytes,
                created: Instant::now(),
            },
        );
        token
    }

    /// Takes the file of `token` for `staff`: once, within the time. `None` afterwards.
    fn take(&self, token: &str, staff: &str) -> Option<(String, Vec<u8>)> {
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let p = m.get(token)?;
        if p.staff != staff || p.created.elapsed() >= DOWNLOAD_TTL {
            return None;
        }
        m.remove(token).map(|p| (p.filename, p.bytes))
    }
}

/// What the page shows of an issued certificate.
#[derive(Debug, serde::Serialize)]
pub struct Issued {
    pub token: String,
    pub filename: String,
    pub password: String,
}

/// Issues a certificate for `physician` (named `common_name`) as terminal `name`, registers it
/// as this staff member (audited first), and keeps the `.p12` for one download.
pub async fn certificate(
    console: &Console,
    ctx: &Ctx,
    physician: &str,
    common_name: &str,
    name: &str,
    note_text: &str,
) -> Result<Issued, Fail> {
    let ca = Ca::load(&console.ca.cert, &console.ca.key).map_err(|e| {
        Fail::Unavailable(format!(
            "the site CA cannot sign certificates here ({e}); the service must be able to read {} when the console issues terminals",
            console.ca.key.display()
        ))
    })?;
    let dir = console
        .issue_dir
        .join(hex::encode(rand::rng().random::<[u8; 8]>()));
    let req = Request {
        physician,
        name,
        out: &dir,
        days: console.ca.terminal_days,
        now: console.gate.clock.now(),
    };
    let issued = terminal_issue::certificate(&ca, TerminalKind::Terminal, common_name, &req);
    let read = issued
        .as_ref()
        .ok()
        .map(|i| std::fs::read(&i.files.p12_path));
    // Nothing of the credential stays on disk: the .p12 lives in memory until downloaded.
    let _ = std::fs::remove_dir_all(&dir);
    let issued = issued
        .map_err(|e| Fail::Unavailable(format!("the certificate could not be issued: {e}")))?;
    let bytes = match read {
        Some(Ok(b)) => b,
        _ => {
            return Err(Fail::Unavailable(
                "the issued certificate could not be read back".into(),
            ))
        }
    };
    ctx.admin(
        console,
        AdminRequest::TerminalRegister {
            terminal: issued.terminal.clone(),
        },
        note_text.to_string(),
    )
    .await?;
    let filename = format!("{name}.p12");
    let token = console
        .downloads
        .put(&ctx.staff.id, filename.clone(), bytes);
    Ok(Issued {
        token,
        filename,
        password: issued.files.p12_password.clone(),
    })
}

/// A WireGuard terminal (art 12.2) for `physician`: a key pair, the next free tunnel address
/// (terminals' and every site gateway's excluded), the `.conf` read into memory and its file
/// removed, the terminal registered as this staff member (audited first), the `.conf` kept
/// for one download. The private key exists only in that one download.
pub async fn wireguard_conf(
    console: &Console,
    ctx: &Ctx,
    physician: &str,
    name: &str,
) -> Result<Issued, Fail> {
    let wg = console.wireguard.as_ref().ok_or_else(|| {
        Fail::Unavailable(
            "the WireGuard ingress is not enabled at this site ([wireguard] in gate.toml)".into(),
        )
    })?;
    let terminals = console
        .admin
        .store
        .terminals()
        .map_err(|e| Fail::Unavailable(e.to_string()))?;
    let used: std::collections::HashSet<std::net::Ipv4Addr> = terminals
        .iter()
        .filter_map(|t| t.tunnel_ip)
        .chain(
            console
                .network
                .iter()
                .flat_map(|n| n.sites.iter())
                .filter_map(|s| s.wireguard.as_ref().map(|w| w.address)),
        )
        .collect();
    let ip = crate::ingress::wireguard::conf::free_address(wg.pool, wg.address, &used).ok_or_else(
        || {
            Fail::Unavailable(format!(
                "wireguard.pool {} has no free address left",
                wg.pool
            ))
        },
    )?;
    let dir = console
        .issue_dir
        .join(hex::encode(rand::rng().random::<[u8; 8]>()));
    let req = Request {
        physician,
        name,
        out: &dir,
        days: console.ca.terminal_days,
        now: console.gate.clock.now(),
    };
    let issued =
        terminal_issue::wireguard(wg, &console.site.id, console.network.as_ref(), ip, &req);
    let read = issued.as_ref().ok().map(|i| std::fs::read(&i.conf_path));
    let _ = std::fs::remove_dir_all(&dir);
    let issued = issued.map_err(|e| {
        Fail::Unavailable(format!("the WireGuard terminal could not be issued: {e}"))
    })?;
    let bytes = match read {
        Some(Ok(b)) => b,
        _ => {
            return Err(Fail::Unavailable(
                "the issued .conf could not be read back".into(),
            ))
        }
    };
    ctx.admin(
        console,
        AdminRequest::TerminalRegister {
            terminal: issued.terminal.clone(),
        },
        format!("WireGuard terminal, tunnel address {ip}"),
    )
    .await?;
    let filename = format!("{name}.conf");
    let token = console
        .downloads
        .put(&ctx.staff.id, filename.clone(), bytes);
    Ok(Issued {
        token,
        filename,
        password: String::new(),
    })
}

/// `GET /office/download/TOKEN`: the `.p12` or `.conf`, once.
pub async fn download(console: &Console, peer: &StaffPeer, ctx: &Ctx, token: &str) -> PageResult {
    match console.downloads.take(token, &ctx.staff.id) {
        Some((filename, bytes)) => {
            note(
                console,
                peer,
                Some(&ctx.staff.id),
                "office-p12-download",
                None,
                Decision::Allow,
                &filename,
                200,
            )
            .await;
            let kind = if filename.ends_with(".conf") {
                "application/octet-stream"
            } else {
                "application/x-pkcs12"
            };
            Ok(render::download(kind, &filename, bytes))
        }
        None => {
            note(
                console,
                peer,
                Some(&ctx.staff.id),
                "office-p12-download",
                None,
                Decision::Deny,
                "already-downloaded-or-expired",
                410,
            )
            .await;
            Ok(console.templates.error(
                ctx.base(console, ""),
                http::StatusCode::GONE,
                ("このファイルはもうダウンロードできません", "This file can no longer be downloaded"),
                (
                    "端末証明書は1回だけ、発行から10分以内にダウンロードできます。必要なら端末の画面から再発行してください（古い端末は失効させます）。",
                    "A terminal certificate can be downloaded once, within 10 minutes of issue. If needed, issue a new one on the Terminals page (and revoke the old terminal).",
                ),
                "download-gone",
                "/office/terminals",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Art 6.2: the credential is handed over once; a second download, or another staff
    /// member's, finds nothing.
    #[test]
    fn art_6_2_a_p12_is_downloadable_once_by_its_issuer() {
        let d = Downloads::default();
        let t = d.put("clerk-1", "pc.p12".into(), vec![1, 2, 3]);
        assert!(d.take(&t, "clerk-2").is_none());
        assert_eq!(
            d.take(&t, "clerk-1"),
            Some(("pc.p12".into(), vec![1, 2, 3]))
        );
        assert!(d.take(&t, "clerk-1").is_none());
        assert!(d.take("nope", "clerk-1").is_none());
    }
}
