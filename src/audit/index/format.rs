//! The file format of `audit.idx`: the header (the watermark) and the fixed-size entries.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ring::digest;

use crate::audit::chain::ZERO_HASH;

/// Name of the index inside the audit directory.
pub const INDEX_FILE: &str = "audit.idx";
const MAGIC: &[u8; 8] = b"SGAIDX01";
pub(super) const HEADER_LEN: u64 = 128;
pub(super) const ENTRY_LEN: u64 = 16;
/// Keys of the most recent lines kept in memory to give an outcome its request's key without
/// reading the file (outcomes follow their requests within seconds).
pub(super) const RING: u64 = if cfg!(test) { 64 } else { 1 << 16 };

#[derive(Debug, thiserror::Error)]
pub(in crate::audit) enum IndexError {
    #[error("audit index I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The index does not fit the log (missing, stale, torn, tampered): scan the log instead.
    #[error("audit index not usable: {0}")]
    Unusable(String),
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn unusable(reason: impl Into<String>) -> IndexError {
    IndexError::Unusable(reason.into())
}

pub(super) fn encode_entry(key: u64, offset: u64) -> [u8; ENTRY_LEN as usize] {
    let mut e = [0u8; ENTRY_LEN as usize];
    e[..8].copy_from_slice(&key.to_le_bytes());
    e[8..].copy_from_slice(&offset.to_le_bytes());
    e
}

pub(super) fn decode_entry(e: &[u8]) -> (u64, u64) {
    let mut k = [0u8; 8];
    let mut o = [0u8; 8];
    k.copy_from_slice(&e[..8]);
    o.copy_from_slice(&e[8..16]);
    (u64::from_le_bytes(k), u64::from_le_bytes(o))
}

/// The contribution of entry `seq` to the header's `sum` (wrapping addition over entries): a
/// 64-bit mix of position, key and offset, so any accidental change of an entry shows.
pub(super) fn entry_sum(seq: u64, key: u64, offset: u64) -> u64 {
    let mut x = key ^ offset.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.rotate_left(32);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(super) fn entry_pos(seq: u64) -> u64 {
    HEADER_LEN + (seq - 1) * ENTRY_LEN
}

/// The watermark: entries `1..=covered` are durable and describe `audit.log[..log_end]`,
/// whose last line has chain hash `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub covered: u64,
    pub log_end: u64,
    pub hash: [u8; 64],
    pub sum: u64,
}

impl Header {
    pub(super) const EMPTY: Header = Header {
        covered: 0,
        log_end: 0,
        hash: ZERO_HASH,
        sum: 0,
    };

    pub(super) fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut b = [0u8; HEADER_LEN as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.covered.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_end.to_le_bytes());
        b[24..88].copy_from_slice(&self.hash);
        b[88..96].copy_from_slice(&self.sum.to_le_bytes());
        let check = digest::digest(&digest::SHA256, &b[..96]);
        b[96..104].copy_from_slice(&check.as_ref()[..8]);
        b
    }

    pub(super) fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER_LEN as usize {
            return Err("header is short".into());
        }
        if &b[..8] != MAGIC {
            return Err("not an audit index (bad magic)".into());
        }
        let check = digest::digest(&digest::SHA256, &b[..96]);
        if b[96..104] != check.as_ref()[..8] {
            return Err("header checksum mismatch (torn or altered)".into());
        }
        let (covered, log_end) = decode_entry(&b[8..24]);
        let mut hash = [0u8; 64];
        hash.copy_from_slice(&b[24..88]);
        let (sum, _) = decode_entry(&b[88..104]);
        Ok(Header {
            covered,
            log_end,
            hash,
            sum,
        })
    }
}

/// Reads the header; `Ok(Err(reason))` when it is not valid.
pub(super) fn read_header(file: &File) -> io::Result<Result<Header, String>> {
    let mut b = [0u8; HEADER_LEN as usize];
    let mut got = 0;
    while got < b.len() {
        match file.read_at(&mut b[got..], got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(Header::decode(&b[..got]))
}
