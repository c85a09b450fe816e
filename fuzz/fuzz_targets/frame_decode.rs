//! Framer + decoder on arbitrary bytes: must never panic, never buffer past the cap, and
//! whatever decodes must re-encode to JSON that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshfleet_wire::{decode, FrameRef, Framer};

fuzz_target!(|data: &[u8]| {
    let mut framer = Framer::new(64 * 1024);
    // Split the input at a data-dependent point to exercise reassembly.
    let cut = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    for part in [&data[..cut], &data[cut..]] {
        framer.push(part, |frame| {
            if let Ok(FrameRef::Json(text)) = frame {
                if let Ok(msg) = decode(text) {
                    let again = decode(&msg.encode()).expect("our own encoding decodes");
                    assert_eq!(again.ty(), msg.ty());
                    assert_eq!(again.dest(), msg.dest());
                    assert_eq!(again.from(), msg.from());
                }
            }
        });
        assert!(framer.buffered() <= 64 * 1024);
    }
});
