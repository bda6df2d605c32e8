//! The admin socket: one JSON request line in, one JSON response line out, mode 0600.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{Admin, AdminRequest, AdminResponse, MAX_REQUEST};
use crate::ops::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum AdminSocketError {
    #[error("admin socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("admin socket: bad response: {0}")]
    Protocol(String),
}

/// Binds the admin socket with mode 0600 (a stale socket file from a crash is replaced).
pub fn bind(path: &Path) -> Result<UnixListener, AdminSocketError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| AdminSocketError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(io)?;
    }
    // Bind with a restrictive umask-equivalent: set the mode immediately after binding; the
    // directory (state dir, 0700) already keeps others out in between.
    let l = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(l)
}

/// Serves admin requests until shutdown.
pub async fn serve(listener: UnixListener, admin: Arc<Admin>, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => s,
            _ = shutdown.recv() => return,
        };
        let Ok((stream, _)) = stream else { continue };
        let admin = admin.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, &admin).await {
                tracing::warn!(error = %e, "admin connection failed");
            }
        });
    }
}

async fn serve_one(stream: UnixStream, admin: &Admin) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let n = BufReader::new(r.take(MAX_REQUEST as u64 + 1))
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        // A connection that only probed the socket (readiness checks): nothing to answer.
        return Ok(());
    }
    let resp = if n > MAX_REQUEST {
        AdminResponse::err("request too long")
    } else {
        match serde_json::from_slice::<AdminRequest>(&line) {
            Ok(req) => admin.execute(req).await,
            Err(e) => AdminResponse::err(format!("bad admin request: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Sends one request to a running gateway. `Ok(None)` when no gateway listens on the socket.
pub async fn call(
    path: &Path,
    req: &AdminRequest,
) -> Result<Option<AdminResponse>, AdminSocketError> {
    let io = |source| AdminSocketError::Io {
        path: path.display().to_string(),
        source,
    };
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let (r, mut w) = stream.into_split();
    let mut line =
        serde_json::to_vec(req).map_err(|e| AdminSocketError::Protocol(e.to_string()))?;
    line.push(b'\n');
    w.write_all(&line).await.map_err(io)?;
    w.shutdown().await.map_err(io)?;
    let mut resp = Vec::new();
    BufReader::new(r.take(16 * 1024 * 1024))
        .read_until(b'\n', &mut resp)
        .await
        .map_err(io)?;
    serde_json::from_slice(&resp)
        .map(Some)
        .map_err(|e| AdminSocketError::Protocol(e.to_string()))
}
