//! Audit record decoding: `audit verify` and `audit query` over a log (and head anchor) with
//! fuzzed content never panic; a log they accept re-verifies identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seibo_gate::audit::{self, QueryFilter, HEAD_FILE, LOG_FILE};

fuzz_target!(|data: &[u8]| {
    // The first line (up to the first 0xFF byte) is the head anchor, the rest the log.
    let (head, log) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(LOG_FILE), log).expect("write log");
    if let Some(h) = head {
        std::fs::write(dir.path().join(HEAD_FILE), h).expect("write head");
    }
    // No index is written here: the chain and anchor are what is fuzzed.
    let opts = audit::VerifyOptions {
        index_optional: true,
        head: None,
    };
    let first = audit::verify_with(dir.path(), &opts);
    let _ = audit::query(dir.path(), &QueryFilter::default());
    if let Ok(report) = first {
        let again = audit::verify_with(dir.path(), &opts).expect("second verify");
        assert_eq!(again, report);
    }
});
