//! The admin socket's request decoding: any bytes decode to a request or an error, and a
//! decoded request survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use seibo_gate::admin::AdminRequest;

fuzz_target!(|data: &[u8]| {
    if data.len() > seibo_gate::admin::MAX_REQUEST {
        return;
    }
    if let Ok(req) = serde_json::from_slice::<AdminRequest>(data) {
        let text = serde_json::to_vec(&req).expect("encode");
        let back: AdminRequest = serde_json::from_slice(&text).expect("round trip");
        assert_eq!(back, req);
    }
});
