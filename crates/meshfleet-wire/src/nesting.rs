//! The library's JSON nesting limit, enforced before anything parses a frame recursively.
//!
//! serde_json recurses once per nested array or object it deserializes into a value, and
//! its own guard (a recursion limit of 128) is both too low for the library's 255 and, once
//! disabled, no guard at all. The envelope parse takes only the frame's top-level keys and
//! keeps each value as raw text, which serde_json skips without recursion (its
//! `ignore_value` keeps its own stack; `tests/depth.rs` holds it to that on a small stack),
//! so it runs with the recursion limit disabled (feature `unbounded_depth`). Then each value
//! is scanned, iteratively, for its depth ([`nesting_within`]); a frame nested deeper than
//! [`MAX_JSON_NESTING`] is refused before any value is deserialized. A node sync's tree is
//! the exception: the iterative tree parser counts levels as it reads (so a big node sync is
//! not scanned twice), with the same verdict. Anything else deserialized from a frame keeps
//! serde_json's default limit.
//!
//! Cost: a frame with no more brackets than the limit (all but big node syncs and JSON
//! payloads) is cleared by counting them; other values are scanned at ~1.4 ns per byte.

/// Deepest JSON nesting a frame may have: 255 arrays/objects inside each other, the
/// frame's own object included.
///
/// This is the library's limit: `routePackage` parses every frame with ArduinoJson's
/// `DeserializationOption::NestingLimit(255)` (protocol.hpp l.520), which accepts 255
/// nested containers and returns `TooDeep` for the 256th (PROTOCOL.md §4.10; the
/// `nesting_200` probe is delivered, `nesting_300` dropped). It applies to every frame and
/// every key, on the nodes a frame is relayed through as well. For node sync it caps the
/// tree at [`MAX_TREE_DEPTH`](crate::MAX_TREE_DEPTH) levels.
///
/// # Stack use
///
/// Decoding takes the same stack whatever the input's depth: the envelope parse recurses
/// one level (every value below it is skipped iteratively or kept as raw text), node trees
/// are parsed without recursion, and the few values deserialized with serde_json's help
/// (a TIME `msg`, lenient header fields, [`Package::parse`](crate::Package::parse)) keep
/// its default recursion limit (128) and read nothing deeper than a level or two
/// themselves. Re-encoding and dropping a [`NodeTree`](crate::NodeTree) recurse once per
/// level. Measured on x86-64 (`cargo run -p meshfleet-wire [--release] --example
/// stack_use`), for the deepest tree a frame can carry (128 nodes in a chain):
///
/// | build | decode | encode | drop | trivial frame, for scale |
/// | --- | --- | --- | --- | --- |
/// | release | ~2 KiB | ~14 KiB | ~6 KiB | ~2 KiB |
/// | debug | ~8 KiB | ~160 KiB | ~21 KiB | ~8 KiB |
///
/// (With serde_json's recursive descent, decoding that tree took ~84 KiB in release and
/// ~426 KiB in debug.) Junk nested a million levels deep is refused by the pre-scan in the
/// same ~2 KiB.
pub const MAX_JSON_NESTING: usize = 255;

/// Whether the first JSON value of `text` nests at most `limit` arrays/objects deep.
///
/// A single pass, no recursion, no allocation; stops as soon as `limit` is exceeded or the
/// first value is closed (what follows it is ignored by the parser, as by ArduinoJson).
/// It need not validate: it only has to count at least as deep as serde_json would get
/// before it accepts or rejects the text. Brackets are counted outside strings; a string
/// runs from an unescaped `"` to the next unescaped `"` (a `\` escapes the next byte,
/// which also covers `\"` and `\\`; `\uXXXX` holds no quote). Where the text is not JSON,
/// serde_json stops at the first byte that makes it so, and up to there it reads strings
/// and brackets exactly as this scan does. Input is UTF-8, where no byte of a multi-byte
/// character is ASCII, so scanning bytes is exact.
pub(crate) fn nesting_within(text: &[u8], limit: usize) -> bool {
    // Every level opens with a bracket, so a text with no more brackets than the limit
    // (all but big node syncs and JSON payloads) is within it however they nest; counting
    // them is a branch-free pass, several times faster than the scan below.
    if text.len() <= limit || text.iter().filter(|b| matches!(b, b'[' | b'{')).count() <= limit {
        return true;
    }
    // A first value that is not an array or object nests nothing.
    match text
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        Some(b'[' | b'{') => {}
        _ => return true,
    }
    let mut depth = 0usize;
    let mut rest = text;
    loop {
        let Some(at) = rest
            .iter()
            .position(|b| matches!(b, b'"' | b'[' | b'{' | b']' | b'}'))
        else {
            return true;
        };
        let b = rest[at];
        rest = &rest[at + 1..];
        match b {
            b'"' => loop {
                // Skip to the closing quote.
                let Some(at) = rest.iter().position(|b| matches!(b, b'"' | b'\\')) else {
                    return true;
                };
                let quote = rest[at] == b'"';
                rest = rest
                    .get(at + if quote { 1 } else { 2 }..)
                    .unwrap_or_default();
                if quote {
                    break;
                }
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            _ => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return true; // the first value is complete
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    fn nested(n: usize) -> String {
        format!("{}{}", "[".repeat(n), "]".repeat(n))
    }

    #[test]
    fn counts_arrays_and_objects() {
        assert!(nesting_within(b"5", 0));
        assert!(nesting_within(b"\"[[[\"", 0));
        assert!(!nesting_within(b"{}", 0));
        assert!(nesting_within(b"{}", 1));
        assert!(nesting_within(br#"{"a":[1,{"b":2}],"c":{}}"#, 3));
        assert!(!nesting_within(br#"{"a":[1,{"b":2}],"c":{}}"#, 2));
        assert!(nesting_within(nested(255).as_bytes(), 255));
        assert!(!nesting_within(nested(256).as_bytes(), 255));
    }

    #[test]
    fn ignores_brackets_in_strings_and_escapes() {
        assert!(nesting_within(br#"{"k[[[":"v{{{"}"#, 1));
        assert!(nesting_within(br#"{"a":"\"[[[\\"}"#, 1));
        // An escaped backslash ends the escape: the quote after it closes the string.
        assert!(!nesting_within(br#"{"a":"\\",[[]]}"#, 2));
        assert!(nesting_within(br#"{"a":"\u005b\u007b"}"#, 1));
        // A string that never closes hides whatever follows (serde_json fails on it).
        assert!(nesting_within(br#"{"a":"[[[[[["#, 1));
        assert!(nesting_within(b"{\"a\":\"\\", 1));
    }

    #[test]
    fn the_bracket_count_shortcut_is_only_an_upper_bound() {
        // 300 brackets, all in a string or after the first value: within the limit.
        let text = format!(r#"{{"a":"{}"}}"#, "[".repeat(300));
        assert!(nesting_within(text.as_bytes(), 255));
        // 300 brackets nesting 3 deep at most.
        let text = format!("[{}]", vec!["[[]]"; 100].join(","));
        assert!(nesting_within(text.as_bytes(), 3));
        assert!(!nesting_within(text.as_bytes(), 2));
    }

    #[test]
    fn stops_at_the_end_of_the_first_value() {
        // Trailing garbage (ignored by the parser, as by the library) is not scanned.
        let text = format!(r#"{{"type":9}}{}"#, nested(300));
        assert!(nesting_within(text.as_bytes(), 1));
        let text = format!("5{}", nested(300));
        assert!(nesting_within(text.as_bytes(), 0));
        assert!(nesting_within(b"  \n{}", 1));
        assert!(nesting_within(b"]]]", 0));
        assert!(nesting_within(b"", 0));
    }
}
