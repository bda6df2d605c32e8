//! Writing the index file: [`IndexWriter`] (entries and watermark) and [`Rebuild`], the
//! open-time check of the index against the log that repairs it from the first disagreement.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::format::{
    decode_entry, encode_entry, entry_pos, entry_sum, io_err, read_header, Header, IndexError,
    ENTRY_LEN, HEADER_LEN, INDEX_FILE, RING,
};
use crate::audit::chain::{LineKey, Scanned};

/// The index file as the writer side sees it.
pub(in crate::audit) struct IndexWriter {
    pub(super) path: PathBuf,
    file: File,
    /// Entries present in the file (the first `synced.covered` of them trusted).
    on_file: u64,
    /// Entries not yet written, for lines `on_file + 1 ..= indexed`.
    pub(super) pending: Vec<u8>,
    /// Lines indexed so far (the last one is seq `indexed`).
    pub(super) indexed: u64,
    /// Keys of the last `RING` lines, by `(seq - 1) % RING`.
    ring: Vec<u64>,
    /// [`entry_sum`] of entries `1..=indexed`.
    pub(super) sum: u64,
    /// The header the file has.
    pub(super) synced: Header,
    /// The header to write at the next sync.
    pub(super) latest: Header,
}

impl IndexWriter {
    /// The key of line `seq` (already indexed).
    fn key_of(&self, seq: u64) -> io::Result<u64> {
        if seq == 0 || seq > self.indexed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("outcome for line {seq}, which is not indexed"),
            ));
        }
        if self.indexed - seq < RING {
            return Ok(self.ring[((seq - 1) % RING) as usize]);
        }
        if seq <= self.on_file {
            let mut k = [0u8; 8];
            self.file.read_exact_at(&mut k, entry_pos(seq))?;
            return Ok(u64::from_le_bytes(k));
        }
        let at = ((seq - 1 - self.on_file) * ENTRY_LEN) as usize;
        let mut k = [0u8; 8];
        k.copy_from_slice(self.pending.get(at..at + 8).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "pending index entry missing")
        })?);
        Ok(u64::from_le_bytes(k))
    }

    fn resolve(&self, key: LineKey) -> io::Result<u64> {
        match key {
            LineKey::Request(k) => Ok(k),
            LineKey::Outcome(rid) => self.key_of(rid),
        }
    }

    /// Records line `indexed + 1` with its resolved key (in memory; see [`Self::write_pending`]).
    fn note(&mut self, key: u64, offset: u64) {
        self.indexed += 1;
        self.ring[((self.indexed - 1) % RING) as usize] = key;
        self.sum = self.sum.wrapping_add(entry_sum(self.indexed, key, offset));
    }

    pub(super) fn push(&mut self, key: LineKey, offset: u64) -> io::Result<()> {
        let key = self.resolve(key)?;
        self.pending.extend_from_slice(&encode_entry(key, offset));
        self.note(key, offset);
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = HEADER_LEN + self.on_file * ENTRY_LEN;
        if let Err(e) = self.file.write_all_at(&self.pending, at) {
            // Leave no partial entries behind the trusted ones; retried later.
            let _ = self.file.set_len(at);
            return Err(e);
        }
        self.on_file += (self.pending.len() as u64) / ENTRY_LEN;
        self.pending.clear();
        Ok(())
    }

    fn write_header(&mut self, h: Header) -> io::Result<()> {
        self.file.write_all_at(&h.encode(), 0)?;
        self.synced = h;
        Ok(())
    }

    /// Makes every entry durable, then advances the watermark (the header itself becomes
    /// durable with the next sync or at close; until then the older one stands, which is safe).
    pub(super) fn sync(&mut self) -> io::Result<()> {
        self.write_pending()?;
        if self.latest != self.synced {
            self.file.sync_data()?;
            self.write_header(self.latest)?;
        }
        Ok(())
    }

    pub(super) fn close(&mut self) -> io::Result<()> {
        self.sync()?;
        self.file.sync_data()
    }
}

/// Open-time check of the index against the log, fed line by line by the chain scan.
pub(in crate::audit) struct Rebuild {
    w: IndexWriter,
    /// Entries believed (up to the old watermark) and not yet compared, read in order.
    old: Option<BufReader<File>>,
    trusted: u64,
}

impl Rebuild {
    /// Opens (creating) `DIR/audit.idx` and drops whatever lies beyond its watermark.
    pub(in crate::audit) fn open(dir: &Path) -> Result<Rebuild, IndexError> {
        let path = dir.join(INDEX_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let header = match read_header(&file).map_err(io_err(&path))? {
            Ok(h) if len >= HEADER_LEN + h.covered * ENTRY_LEN => Some(h),
            Ok(h) => {
                tracing::warn!(path = %path.display(), covered = h.covered, len,
                    "audit: index shorter than its watermark; rebuilding it");
                None
            }
            Err(_) if len == 0 => None,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "audit: index header not valid; rebuilding it");
                None
            }
        };
        let mut w = IndexWriter {
            path: path.clone(),
            file,
            on_file: 0,
            pending: Vec::with_capacity(1 << 20),
            indexed: 0,
            ring: vec![0; RING as usize],
            sum: 0,
            synced: Header::EMPTY,
            latest: Header::EMPTY,
        };
        let trusted = match header {
            Some(h) => {
                w.synced = h;
                w.on_file = h.covered;
                h.covered
            }
            None => {
                w.write_header(Header::EMPTY).map_err(io_err(&path))?;
                w.file.sync_data().map_err(io_err(&path))?;
                0
            }
        };
        // Entries beyond the watermark may be torn: they are derived again below.
        let keep = HEADER_LEN + trusted * ENTRY_LEN;
        if len > keep {
            w.file.set_len(keep).map_err(io_err(&path))?;
        }
        let old = if trusted > 0 {
            let mut f = w.file.try_clone().map_err(io_err(&path))?;
            f.seek(SeekFrom::Start(HEADER_LEN)).map_err(io_err(&path))?;
            Some(BufReader::with_capacity(1 << 20, f))
        } else {
            None
        };
        Ok(Rebuild { w, old, trusted })
    }

    /// The next good line of the log, from the chain scan.
    pub(in crate::audit) fn line(&mut self, l: &Scanned) -> io::Result<()> {
        let (seq, offset) = (l.seq, l.offset);
        if seq != self.w.indexed + 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "index rebuild fed out of order",
            ));
        }
        let key = self.w.resolve(l.key)?;
        let want = encode_entry(key, offset);
        if seq <= self.trusted {
            let mut have = [0u8; ENTRY_LEN as usize];
            let old = self.old.as_mut().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "index reader missing")
            })?;
            old.read_exact(&mut have)?;
            if have == want {
                self.w.note(key, offset);
                return Ok(());
            }
            let (k, o) = decode_entry(&have);
            tracing::warn!(path = %self.w.path.display(), seq, index_key = k, index_offset = o,
                log_key = key, log_offset = offset,
                "audit: index disagrees with the log; rebuilding it from this line");
            self.lower(seq - 1, offset, l.prev)?;
        }
        self.w.pending.extend_from_slice(&want);
        self.w.note(key, offset);
        if self.w.pending.len() >= 1 << 20 {
            self.w.write_pending()?;
        }
        Ok(())
    }

    /// Moves the watermark down to `covered` lines (durably) and drops the entries after it.
    fn lower(&mut self, covered: u64, log_end: u64, hash: [u8; 64]) -> io::Result<()> {
        // Called with `indexed == covered`: the running sum is that of the entries kept.
        self.w.write_header(Header {
            covered,
            log_end,
            hash,
            sum: self.w.sum,
        })?;
        self.w.file.sync_data()?;
        self.w.file.set_len(HEADER_LEN + covered * ENTRY_LEN)?;
        self.w.on_file = covered;
        self.trusted = covered;
        self.old = None;
        Ok(())
    }

    /// After the scan: the log has `covered` good lines, `log_end` bytes, last hash `hash`.
    /// Makes the index cover exactly that, durably.
    pub(in crate::audit) fn finish(
        mut self,
        covered: u64,
        log_end: u64,
        hash: [u8; 64],
    ) -> io::Result<IndexWriter> {
        if self.w.indexed != covered {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("index rebuilt {} lines of {covered}", self.w.indexed),
            ));
        }
        if self.trusted > covered {
            tracing::warn!(path = %self.w.path.display(), index = self.trusted, log = covered,
                "audit: index covers more lines than the log has; cut back");
            self.lower(covered, log_end, hash)?;
        }
        self.old = None;
        self.w.latest = Header {
            covered,
            log_end,
            hash,
            sum: self.w.sum,
        };
        if self.w.latest != self.w.synced {
            self.w.close()?;
        }
        Ok(self.w)
    }
}
