//! The .mfw artefact parser and verifier on arbitrary bytes: no panic, no allocation driven
//! by a length the file merely claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfleet_firmware::Artefact;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Artefact::from_bytes(data) {
        // Whatever parses must verify or fail cleanly, and its chunks must be addressable.
        let _ = a.verify(None);
        for i in 0..a.chunk_count().min(64) {
            if let Some(c) = a.chunk(i) {
                let _ = a.verify_chunk(i, c);
            }
        }
        let _ = Artefact::from_bytes(&a.to_bytes()).expect("re-encoded artefact parses");
    }
});
