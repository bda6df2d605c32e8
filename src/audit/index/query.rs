//! A per-patient query through the index: the entries up to the watermark name the lines of
//! the patient (and their outcomes), each read and checked; the log beyond the watermark is
//! scanned. Any disagreement is an error ([`IndexError::Unusable`]), and the caller scans the
//! whole log instead.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::format::{
    decode_entry, entry_sum, io_err, read_header, unusable, Header, IndexError, ENTRY_LEN,
    HEADER_LEN, INDEX_FILE,
};
use crate::audit::chain::{for_each_line, patient_key, written_seq, LOG_FILE};
use crate::audit::record::RequestRecord;
use crate::audit::rows::{matches, KindOnly, OutcomeLine, QueryFilter, QueryRow, QueryState};

/// Entries read per chunk by a query.
const QUERY_CHUNK: usize = 1 << 16;

/// [`crate::audit::query`] with a patient, through the index.
pub(in crate::audit) fn query(
    dir: &Path,
    filter: &QueryFilter,
    patient: &str,
) -> Result<Vec<QueryRow>, IndexError> {
    let idx_path = dir.join(INDEX_FILE);
    let idx = match File::open(&idx_path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(unusable(format!("{INDEX_FILE} does not exist")))
        }
        Err(e) => return Err(io_err(&idx_path)(e)),
    };
    let h = read_watermark(&idx, &idx_path)?;
    let mut log = Log::open(dir)?;
    let log_len = log.file.metadata().map_err(io_err(&log.path))?.len();
    if log_len < h.log_end {
        return Err(unusable(format!(
            "the log ({log_len} bytes) is shorter than the index says ({})",
            h.log_end
        )));
    }
    let key = patient_key(Some(patient));
    let hits = Hits::read(&idx, &idx_path, &h, key)?;
    log.check_indexed(&h, hits.last_offset)?;
    let mut state = QueryState::new(filter);
    log.read_hits(&hits.lines, key, patient, &mut state)?;
    log.scan_tail(&h, &mut state)?;
    Ok(state.rows)
}

/// The header, read again when caught mid-update by the index thread.
fn read_watermark(idx: &File, idx_path: &Path) -> Result<Header, IndexError> {
    let mut header = Err(String::new());
    for _ in 0..3 {
        header = read_header(idx).map_err(io_err(idx_path))?;
        if header.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    header.map_err(|r| unusable(format!("{INDEX_FILE}: {r}")))
}

/// What entries `1..=W` say about one key.
struct Hits {
    /// Seq and log offset of every line filed under the key.
    lines: Vec<(u64, u64)>,
    /// Log offset of line W (`None` for an empty index).
    last_offset: Option<u64>,
}

impl Hits {
    /// Reads entries `1..=W` in chunks, checking them against the header's checksum.
    fn read(idx: &File, idx_path: &Path, h: &Header, key: u64) -> Result<Hits, IndexError> {
        let mut hits = Hits {
            lines: Vec::new(),
            last_offset: None,
        };
        let mut reader = idx;
        reader
            .seek(SeekFrom::Start(HEADER_LEN))
            .map_err(io_err(idx_path))?;
        let mut chunk = vec![0u8; QUERY_CHUNK * ENTRY_LEN as usize];
        let mut seq = 0u64;
        let mut sum = 0u64;
        while seq < h.covered {
            let n = (h.covered - seq).min(QUERY_CHUNK as u64) as usize;
            let bytes = &mut chunk[..n * ENTRY_LEN as usize];
            reader.read_exact(bytes).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => unusable(format!(
                    "{INDEX_FILE} is shorter than its watermark ({} lines)",
                    h.covered
                )),
                _ => io_err(idx_path)(e),
            })?;
            for e in bytes.chunks_exact(ENTRY_LEN as usize) {
                seq += 1;
                let (k, o) = decode_entry(e);
                sum = sum.wrapping_add(entry_sum(seq, k, o));
                if k == key {
                    hits.lines.push((seq, o));
                }
            }
            if seq == h.covered {
                hits.last_offset = bytes
                    .chunks_exact(ENTRY_LEN as usize)
                    .last()
                    .map(|e| decode_entry(e).1);
            }
        }
        if sum != h.sum {
            return Err(unusable(format!(
                "the entries of {INDEX_FILE} do not add up to its checksum (altered or damaged)"
            )));
        }
        Ok(hits)
    }
}

/// The log, read at the offsets the index gives.
struct Log {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
}

impl Log {
    fn open(dir: &Path) -> Result<Log, IndexError> {
        let path = dir.join(LOG_FILE);
        let file = File::open(&path).map_err(io_err(&path))?;
        Ok(Log {
            path,
            file,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Reads the line starting at `offset` (without its `\n`) into `buf`; false when there
    /// is no complete line there.
    fn line_at(&mut self, offset: u64) -> Result<bool, IndexError> {
        self.buf.clear();
        let mut chunk = [0u8; 2048];
        let mut at = offset;
        loop {
            let n = self
                .file
                .read_at(&mut chunk, at)
                .map_err(io_err(&self.path))?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(i) = memchr::memchr(b'\n', &chunk[..n]) {
                self.buf.extend_from_slice(&chunk[..i]);
                return Ok(true);
            }
            self.buf.extend_from_slice(&chunk[..n]);
            at += n as u64;
        }
    }

    /// Is the log still the one indexed? Line W must end at `log_end` with the hash recorded.
    fn check_indexed(&mut self, h: &Header, last_offset: Option<u64>) -> Result<(), IndexError> {
        let Some(o) = last_offset else {
            if h.log_end != 0 {
                return Err(unusable("empty index with a nonzero log end"));
            }
            return Ok(());
        };
        let ok = self.line_at(o)?
            && o + self.buf.len() as u64 + 1 == h.log_end
            && written_seq(&self.buf) == Some(h.covered)
            && self.buf.ends_with(&[&h.hash[..], b"\"}"].concat());
        if !ok {
            return Err(unusable(format!(
                "line {} of the log is not the one indexed (log replaced or altered?)",
                h.covered
            )));
        }
        Ok(())
    }

    /// Reads and checks every line the index files under `key`, keeping the patient's.
    fn read_hits(
        &mut self,
        hits: &[(u64, u64)],
        key: u64,
        patient: &str,
        state: &mut QueryState<'_>,
    ) -> Result<(), IndexError> {
        let hit_seqs: HashSet<u64> = hits.iter().map(|&(s, _)| s).collect();
        for &(seq, offset) in hits {
            let bad = |why: &str| unusable(format!("line {seq} (offset {offset}): {why}"));
            if !self.line_at(offset)? {
                return Err(bad("no complete line there"));
            }
            let buf = &self.buf;
            if written_seq(buf) != Some(seq) {
                return Err(bad("the line there has another seq"));
            }
            let k: KindOnly = serde_json::from_slice(buf).map_err(|_| bad("not a valid line"))?;
            match k.kind.as_ref() {
                "request" => {
                    let rec: RequestRecord =
                        serde_json::from_slice(buf).map_err(|_| bad("not a valid request line"))?;
                    if patient_key(rec.patient.as_deref()) != key {
                        return Err(bad("its patient is not the one the index files it under"));
                    }
                    // Another patient with the same key (a hash collision): not a hit.
                    if rec.patient.as_deref() != Some(patient) {
                        continue;
                    }
                    if matches(state.filter(), &rec).map_err(|r| bad(&r))? {
                        state.push_request(seq, rec);
                    }
                }
                "outcome" => {
                    let o: OutcomeLine =
                        serde_json::from_slice(buf).map_err(|_| bad("not a valid outcome line"))?;
                    if !hit_seqs.contains(&o.rid) {
                        return Err(bad(
                            "an outcome whose request is not filed under the patient",
                        ));
                    }
                    state.join_outcome(&o);
                }
                _ => return Err(bad("unknown kind")),
            }
        }
        Ok(())
    }

    /// The log beyond the watermark: scanned as usual.
    fn scan_tail(self, h: &Header, state: &mut QueryState<'_>) -> Result<(), IndexError> {
        let Log { path, file, .. } = self;
        let mut tail = BufReader::with_capacity(1 << 20, file);
        tail.seek(SeekFrom::Start(h.log_end))
            .map_err(io_err(&path))?;
        for_each_line(
            &mut tail,
            h.covered,
            |e| io_err(&path)(e),
            |line, line_no| {
                if written_seq(line) != Some(line_no) {
                    return Err(unusable(format!(
                        "line {line_no} beyond the index's watermark has another seq"
                    )));
                }
                state
                    .scan_line(line, line_no)
                    .map_err(|e| unusable(e.to_string()))
            },
        )
    }
}
