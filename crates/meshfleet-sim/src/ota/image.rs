//! A synthetic firmware image for campaigns without real firmware at hand.

/// A deterministic pseudo-firmware image of `len` bytes that DEFLATE compresses about as
/// well as real ESP8266 firmware (to ~0.65 of its size, `shared/firmware/README.md`):
/// literals from a skewed distribution mixed with short back-references, like machine code
/// and its constant tables. The same `(len, seed)` always gives the same bytes.
pub fn synthetic_image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out: Vec<u8> = Vec::with_capacity(len);
    // ESP8266 images start with the 0xE9 header magic.
    out.push(0xe9);
    while out.len() < len {
        let r = next();
        if out.len() > 64 && r % 100 < 14 {
            // A back-reference: 3..=10 bytes from up to 4 KiB back (tuned so that
            // DEFLATE level 9 keeps 0.65-0.66 of the bytes, as for the real images).
            let n = 3 + (r >> 8) as usize % 8;
            let back = 1 + (r >> 16) as usize % out.len().min(4096);
            let from = out.len() - back;
            for k in 0..n {
                let b = out[from + k];
                out.push(b);
            }
        } else {
            // A literal, skewed toward a few values (opcodes, zeros).
            let v = (r >> 24) as u8;
            out.push(if r % 3 == 0 { v & 0x1f } else { v });
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_image_compresses_like_firmware() {
        let img = synthetic_image(256 * 1024, 3);
        assert_eq!(img, synthetic_image(256 * 1024, 3));
        let z = meshfleet_firmware::codec::deflate(&img, 9, meshfleet_firmware::MAX_WINDOW)
            .unwrap_or_default();
        let ratio = z.len() as f64 / img.len() as f64;
        assert!((0.62..0.70).contains(&ratio), "{ratio}");
    }
}
