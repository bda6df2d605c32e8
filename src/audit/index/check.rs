//! `audit verify`'s comparison of the index's trusted entries with the log ([`Check`]).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{
    decode_entry, entry_pos, read_header, Header, ENTRY_LEN, HEADER_LEN, INDEX_FILE, RING,
};
use crate::audit::chain::{LineKey, Scanned};

/// `verify`'s comparison of the trusted entries with the log, fed by the chain scan.
pub(in crate::audit) struct Check {
    reader: BufReader<File>,
    file: File,
    header: Header,
    checked: u64,
    ring: Vec<u64>,
}

impl Check {
    /// `None` when there is no index (nothing to check).
    pub(in crate::audit) fn open(dir: &Path) -> Result<Option<Check>, String> {
        let path = dir.join(INDEX_FILE);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{INDEX_FILE}: {e}")),
        };
        let h = match read_header(&file) {
            Ok(Ok(h)) => h,
            // Rewritten at the next open; nothing it says is believed meanwhile.
            Ok(Err(_)) => return Ok(None),
            Err(e) => return Err(format!("{INDEX_FILE}: {e}")),
        };
        let mut r = file.try_clone().map_err(|e| format!("{INDEX_FILE}: {e}"))?;
        r.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| format!("{INDEX_FILE}: {e}"))?;
        Ok(Some(Check {
            reader: BufReader::with_capacity(1 << 20, r),
            file,
            header: h,
            checked: 0,
            ring: vec![0; RING as usize],
        }))
    }

    /// Compares the line's entry (if trusted) with the log; `Err(reason)` on a disagreement.
    pub(in crate::audit) fn line(&mut self, l: &Scanned) -> Result<(), String> {
        let (seq, offset, key) = (l.seq, l.offset, l.key);
        if seq > self.header.covered {
            return Ok(());
        }
        if seq == self.header.covered && (l.end, l.hash) != (self.header.log_end, self.header.hash)
        {
            return Err(format!(
                "{INDEX_FILE}'s watermark (line {seq}) does not describe the log's line {seq}"
            ));
        }
        let mut e = [0u8; ENTRY_LEN as usize];
        self.reader
            .read_exact(&mut e)
            .map_err(|err| format!("{INDEX_FILE} entry {seq}: {err}"))?;
        let (k, o) = decode_entry(&e);
        let want = match key {
            LineKey::Request(k) => k,
            LineKey::Outcome(rid) if self.checked - rid < RING => {
                self.ring[((rid - 1) % RING) as usize]
            }
            LineKey::Outcome(rid) => {
                let mut b = [0u8; 8];
                self.file
                    .read_exact_at(&mut b, entry_pos(rid))
                    .map_err(|err| format!("{INDEX_FILE} entry {rid}: {err}"))?;
                u64::from_le_bytes(b)
            }
        };
        if (k, o) != (want, offset) {
            return Err(format!(
                "{INDEX_FILE} entry {seq} (key {k:016x}, offset {o}) does not describe the log's \
                 line (key {want:016x}, offset {offset}); the log is the record, the index is \
                 rebuilt at the next start"
            ));
        }
        self.ring[((seq - 1) % RING) as usize] = k;
        self.checked = seq;
        Ok(())
    }

    /// After the scan of `lines` lines.
    pub(in crate::audit) fn finish(&self, lines: u64) -> Result<(), String> {
        if self.header.covered > lines {
            return Err(format!(
                "{INDEX_FILE} covers {} lines but the log has {lines}",
                self.header.covered
            ));
        }
        Ok(())
    }
}
