//! Splitting a TCP byte stream into frames.
//!
//! painlessMesh frames are JSON text ended by a NUL. meshfleet adds one optional frame kind
//! between meshfleet nodes: a **binary frame** `0x01, len: u32 LE, payload[len]` (no NUL),
//! used for OTA chunk data so it travels without the base64 tax. A JSON frame never starts
//! with 0x01 (it starts with `{` or whitespace), so the two cannot be confused, and a
//! meshfleet node only sends binary frames to a peer that advertised it accepts them.

use alloc::vec::Vec;

/// First byte of a binary frame.
pub const BINARY_FRAME_MARK: u8 = 0x01;

/// Why the framer refused bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame grew past the cap; its bytes are discarded without being buffered.
    TooLong {
        /// The configured cap.
        max: usize,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLong { max } => write!(f, "frame longer than {max} bytes"),
        }
    }
}

/// One complete frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// JSON text, NUL excluded.
    Json(&'a [u8]),
    /// A binary frame's payload.
    Binary(&'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames or inside a JSON frame (bytes in `buf`).
    Text,
    /// Skipping an oversized JSON frame up to its NUL.
    DiscardText,
    /// Reading the 4 length bytes of a binary frame (count read so far in `buf`).
    BinaryLen,
    /// Reading `remaining` payload bytes of a binary frame into `buf`.
    BinaryBody { remaining: usize },
    /// Skipping `remaining` payload bytes of an oversized binary frame.
    DiscardBinary { remaining: usize },
}

/// Accumulates bytes of one link and hands out complete frames.
///
/// Memory is bounded by `max_frame_len`: once a frame exceeds it, the framer reports
/// [`FrameError::TooLong`] once and skips the frame, keeping nothing. Empty JSON frames
/// (consecutive NULs) are skipped, like the library's `ReceiveBuffer`.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_frame_len: usize,
    state: State,
    accept_binary: bool,
}

impl Framer {
    /// A framer for frames of at most `max_frame_len` bytes (NUL excluded), accepting
    /// binary frames.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_frame_len,
            state: State::Text,
            accept_binary: true,
        }
    }

    /// Whether a frame starting with 0x01 is read as binary (default) or as text (which
    /// then fails to decode, as in the C++ library).
    pub fn set_accept_binary(&mut self, accept: bool) {
        self.accept_binary = accept;
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; calls `on_frame` for each complete frame or error, in stream order.
    /// A JSON frame that arrives whole while nothing is buffered is passed without a copy.
    pub fn push(
        &mut self,
        mut data: &[u8],
        mut on_frame: impl FnMut(Result<FrameRef<'_>, FrameError>),
    ) {
        let max = self.max_frame_len;
        while !data.is_empty() {
            match self.state {
                State::Text => {
                    if self.buf.is_empty() && self.accept_binary && data[0] == BINARY_FRAME_MARK {
                        data = &data[1..];
                        self.state = State::BinaryLen;
                        continue;
                    }
                    match find_nul(data) {
                        Some(nul) => {
                            let head = &data[..nul];
                            data = &data[nul + 1..];
                            if self.buf.len() + head.len() > max {
                                self.buf = Vec::new();
                                on_frame(Err(FrameError::TooLong { max }));
                            } else if self.buf.is_empty() {
                                if !head.is_empty() {
                                    on_frame(Ok(FrameRef::Json(head)));
                                }
                            } else {
                                self.buf.extend_from_slice(head);
                                on_frame(Ok(FrameRef::Json(&self.buf)));
                                self.buf.clear();
                            }
                        }
                        None => {
                            if self.buf.len() + data.len() > max {
                                self.buf = Vec::new();
                                self.state = State::DiscardText;
                                on_frame(Err(FrameError::TooLong { max }));
                            } else {
                                self.buf.extend_from_slice(data);
                            }
                            return;
                        }
                    }
                }
                State::DiscardText => match find_nul(data) {
                    Some(nul) => {
                        data = &data[nul + 1..];
                        self.state = State::Text;
                    }
                    None => return,
                },
                State::BinaryLen => {
                    let need = 4 - self.buf.len();
                    let take = need.min(data.len());
                    self.buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.buf.len() == 4 {
                        let len = u32::from_le_bytes([
                            self.buf[0],
                            self.buf[1],
                            self.buf[2],
                            self.buf[3],
                        ]) as usize;
                        self.buf.clear();
                        if len > max {
                            self.state = State::DiscardBinary { remaining: len };
                            on_frame(Err(FrameError::TooLong { max }));
                        } else {
                            self.state = State::BinaryBody { remaining: len };
                        }
                        if len == 0 {
                            self.state = State::Text;
                            on_frame(Ok(FrameRef::Binary(&[])));
                        }
                    }
                }
                State::BinaryBody { remaining } => {
                    let take = remaining.min(data.len());
                    if self.buf.is_empty() && take == remaining {
                        on_frame(Ok(FrameRef::Binary(&data[..take])));
                    } else {
                        self.buf.extend_from_slice(&data[..take]);
                        if take == remaining {
                            on_frame(Ok(FrameRef::Binary(&self.buf)));
                            self.buf.clear();
                        }
                    }
                    data = &data[take..];
                    self.state = if take == remaining {
                        State::Text
                    } else {
                        State::BinaryBody {
                            remaining: remaining - take,
                        }
                    };
                }
                State::DiscardBinary { remaining } => {
                    let take = remaining.min(data.len());
                    data = &data[take..];
                    self.state = if take == remaining {
                        State::Text
                    } else {
                        State::DiscardBinary {
                            remaining: remaining - take,
                        }
                    };
                }
            }
        }
    }
}

/// Wraps `payload` as a binary frame (`0x01, len u32 LE, payload`).
pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(BINARY_FRAME_MARK);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Index of the first NUL in `data`, eight bytes at a time (frames are mostly long
/// runs without one: a big node sync is tens of KB).
fn find_nul(data: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = data.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // Nonzero iff some byte of x is zero.
        if x.wrapping_sub(LO) & !x & HI != 0 {
            break;
        }
        at += 8;
    }
    data[at..].iter().position(|&b| b == 0).map(|i| at + i)
}

#[cfg(test)]
mod tests {

    #[test]
    fn find_nul_is_the_first_nul() {
        for len in 0..40 {
            for nul in (0..len).map(Some).chain([None]) {
                // Bytes that trip naive word tricks: 0x80, 0x01, 0xff around the NUL.
                let mut data: Vec<u8> = (0..len).map(|i| [0x80, 0x01, 0xff, b'{'][i % 4]).collect();
                if let Some(n) = nul {
                    data[n] = 0;
                    if n + 3 < len {
                        data[n + 3] = 0;
                    }
                }
                assert_eq!(
                    find_nul(&data),
                    data.iter().position(|&b| b == 0),
                    "{data:?}"
                );
            }
        }
    }
    use super::*;
    use alloc::vec;

    #[derive(Debug, PartialEq)]
    enum F {
        J(Vec<u8>),
        B(Vec<u8>),
        E,
    }

    fn frames(framer: &mut Framer, data: &[u8]) -> Vec<F> {
        let mut out = vec![];
        framer.push(data, |f| {
            out.push(match f {
                Ok(FrameRef::Json(j)) => F::J(j.to_vec()),
                Ok(FrameRef::Binary(b)) => F::B(b.to_vec()),
                Err(_) => F::E,
            })
        });
        out
    }

    #[test]
    fn splits_joins_and_skips_empty() {
        let mut f = Framer::new(100);
        assert_eq!(
            frames(&mut f, b"{\"a\":1}\0\0{\"b\""),
            vec![F::J(b"{\"a\":1}".to_vec())]
        );
        assert_eq!(f.buffered(), 4);
        assert_eq!(frames(&mut f, b":2}\0"), vec![F::J(b"{\"b\":2}".to_vec())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn endless_bytes_without_nul_stay_bounded() {
        let mut f = Framer::new(1000);
        let chunk = [b'x'; 700];
        let mut errors = 0;
        for _ in 0..10_000 {
            for r in frames(&mut f, &chunk) {
                assert_eq!(r, F::E);
                errors += 1;
            }
            assert!(f.buffered() <= 1000);
        }
        assert_eq!(errors, 1, "the overflow is reported once, not per chunk");
        assert_eq!(frames(&mut f, b"tail\0{}\0"), vec![F::J(b"{}".to_vec())]);
    }

    #[test]
    fn oversized_frame_in_one_piece_is_rejected() {
        let mut f = Framer::new(4);
        assert_eq!(
            frames(&mut f, b"123456\0ok\0"),
            vec![F::E, F::J(b"ok".to_vec())]
        );
        assert_eq!(frames(&mut f, b"12"), vec![]);
        assert_eq!(
            frames(&mut f, b"345\0ab\0"),
            vec![F::E, F::J(b"ab".to_vec())]
        );
    }

    #[test]
    fn binary_frames_carry_nuls_and_interleave_with_json() {
        let mut f = Framer::new(100);
        let mut stream = b"{\"a\":1}\0".to_vec();
        stream.extend(binary_frame(&[0, 1, 2, 0, 255]));
        stream.extend(b"{\"b\":2}\0");
        stream.extend(binary_frame(&[]));
        let want = vec![
            F::J(b"{\"a\":1}".to_vec()),
            F::B(vec![0, 1, 2, 0, 255]),
            F::J(b"{\"b\":2}".to_vec()),
            F::B(vec![]),
        ];
        assert_eq!(frames(&mut f, &stream), want);
        // Byte by byte gives the same frames.
        let mut f = Framer::new(100);
        let mut got = vec![];
        for b in &stream {
            got.extend(frames(&mut f, core::slice::from_ref(b)));
        }
        assert_eq!(got, want);
    }

    #[test]
    fn oversized_binary_frame_is_skipped_without_buffering() {
        let mut f = Framer::new(10);
        let mut stream = binary_frame(&[7; 1000]);
        stream.extend(b"{}\0");
        assert_eq!(frames(&mut f, &stream), vec![F::E, F::J(b"{}".to_vec())]);
        // A lying length prefix (4 GB) never allocates: it is skipped as it arrives.
        let mut f = Framer::new(10);
        assert_eq!(
            frames(&mut f, &[1, 255, 255, 255, 255, 9, 9, 9]),
            vec![F::E]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn binary_off_reads_the_mark_as_text() {
        let mut f = Framer::new(100);
        f.set_accept_binary(false);
        assert_eq!(
            frames(&mut f, b"\x01abc\0"),
            vec![F::J(b"\x01abc".to_vec())]
        );
    }
}
