//! Config loading: any text is either a validated config or an error naming the problem;
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use seibo_gate::site::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("/etc/seibo-gate/gate.toml"), text) {
        Ok(cfg) => {
            assert!(!cfg.listeners.is_empty());
            assert!(cfg.limits.max_connections >= 1);
            assert!(cfg.limits.max_header_bytes >= 8192);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
