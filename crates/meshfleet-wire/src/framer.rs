//! Splitting a TCP byte stream into NUL-terminated frames.

use alloc::vec::Vec;

/// Why the framer refused bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame grew past the cap before its NUL arrived; its bytes up to the next NUL are
    /// discarded without being buffered.
    TooLong {
        /// The configured cap.
        max: usize,
    },
}

impl core::fmt::Display for FrameError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLong { max } => write!(f, "frame longer than {max} bytes without a NUL"),
        }
    }
}

/// Accumulates bytes of one link and hands out complete frames (NUL excluded).
///
/// Memory is bounded by `max_frame_len`: once a frame exceeds it, the framer reports
/// [`FrameError::TooLong`] once and skips to the next NUL, keeping nothing. Empty frames
/// (consecutive NULs) are skipped, like the library's `ReceiveBuffer`.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_frame_len: usize,
    discarding: bool,
}

impl Framer {
    /// A framer that accepts frames of at most `max_frame_len` bytes (NUL excluded).
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_frame_len,
            discarding: false,
        }
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; calls `on_frame` for each complete frame or error, in stream order.
    ///
    /// A frame that arrives whole in `data` while nothing is buffered is passed without a
    /// copy.
    pub fn push(&mut self, mut data: &[u8], mut on_frame: impl FnMut(Result<&[u8], FrameError>)) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == 0) {
                Some(nul) => {
                    let (head, rest) = (&data[..nul], &data[nul + 1..]);
                    data = rest;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if self.buf.is_empty() {
                        if head.len() > self.max_frame_len {
                            on_frame(Err(FrameError::TooLong {
                                max: self.max_frame_len,
                            }));
                        } else if !head.is_empty() {
                            on_frame(Ok(head));
                        }
                    } else if self.buf.len() + head.len() > self.max_frame_len {
                        self.buf.clear();
                        on_frame(Err(FrameError::TooLong {
                            max: self.max_frame_len,
                        }));
                    } else {
                        self.buf.extend_from_slice(head);
                        on_frame(Ok(&self.buf));
                        self.buf.clear();
                    }
                }
                None => {
                    if !self.discarding {
                        if self.buf.len() + data.len() > self.max_frame_len {
                            self.buf = Vec::new();
                            self.discarding = true;
                            on_frame(Err(FrameError::TooLong {
                                max: self.max_frame_len,
                            }));
                        } else {
                            self.buf.extend_from_slice(data);
                        }
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn frames(framer: &mut Framer, data: &[u8]) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = vec![];
        framer.push(data, |f| out.push(f.map(<[u8]>::to_vec)));
        out
    }

    #[test]
    fn splits_joins_and_skips_empty() {
        let mut f = Framer::new(100);
        assert_eq!(
            frames(&mut f, b"{\"a\":1}\0\0{\"b\""),
            vec![Ok(b"{\"a\":1}".to_vec())]
        );
        assert_eq!(f.buffered(), 4);
        assert_eq!(frames(&mut f, b":2}\0"), vec![Ok(b"{\"b\":2}".to_vec())]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn endless_bytes_without_nul_stay_bounded() {
        let mut f = Framer::new(1000);
        let chunk = [b'x'; 700];
        let mut errors = 0;
        for _ in 0..10_000 {
            for r in frames(&mut f, &chunk) {
                assert!(r.is_err());
                errors += 1;
            }
            assert!(f.buffered() <= 1000);
        }
        assert_eq!(errors, 1, "the overflow is reported once, not per chunk");
        // The stream recovers at the next NUL.
        assert_eq!(frames(&mut f, b"tail\0{}\0"), vec![Ok(b"{}".to_vec())]);
    }

    #[test]
    fn oversized_frame_in_one_piece_is_rejected() {
        let mut f = Framer::new(4);
        assert_eq!(
            frames(&mut f, b"123456\0ok\0"),
            vec![Err(FrameError::TooLong { max: 4 }), Ok(b"ok".to_vec())]
        );
        assert_eq!(frames(&mut f, b"12"), vec![]);
        assert_eq!(
            frames(&mut f, b"345\0ab\0"),
            vec![Err(FrameError::TooLong { max: 4 }), Ok(b"ab".to_vec())]
        );
    }
}
