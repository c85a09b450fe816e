//! A link tree's JSON text, possibly made of pieces shared with other nodes' texts.
//!
//! A node keeps, per link, the JSON of the tree behind that link, and embeds it in the
//! node syncs it sends ([`crate::SharedFrame`]). The receiver of such a sync keeps, for
//! its own link, the sender's id and flags around exactly those texts. Copied, every node
//! of a 10,000-node mesh held its own ~380 KB of nearly the whole mesh's text (gigabytes
//! in the simulator); kept as `head` + the sender's pieces (reference-counted) + `tail`,
//! it costs a few pointers per link. A piece is immutable: a node that receives a new
//! tree makes a new text, and the old one lives on only while someone still holds it.

use alloc::borrow::Cow;
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// A text in pieces: its head, its parts (joined by `,`) and its tail.
pub(crate) type Pieces<'a> = (&'a [u8], &'a [Arc<TreeText>], &'a [u8]);

/// JSON text, flat or as `head`, then `parts` joined by `,`, then `tail` (a rope).
/// Its bytes are what [`TreeText::write_to`] writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TreeText {
    /// The bytes in one buffer.
    Flat(Vec<u8>),
    /// Pieces (boxed: a flat text, the common small case, stays small).
    Joined(Box<Joined>),
}

/// `ends[..split]`, then `parts` joined by `,`, then `ends[split..]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Joined {
    /// Head and tail in one allocation.
    ends: Vec<u8>,
    split: usize,
    parts: Vec<Arc<TreeText>>,
    /// Length of the whole text, so that it is known without a walk.
    len: usize,
}

impl Default for TreeText {
    fn default() -> Self {
        Self::Flat(Vec::new())
    }
}

impl TreeText {
    /// `head`, then `parts` joined by `,`, then `tail`.
    pub(crate) fn joined(head: &[u8], parts: Vec<Arc<Self>>, tail: &[u8]) -> Self {
        let len = joined_len(head, &parts, tail);
        let mut ends = Vec::with_capacity(head.len() + tail.len());
        ends.extend_from_slice(head);
        ends.extend_from_slice(tail);
        Self::Joined(Box::new(Joined {
            ends,
            split: head.len(),
            parts,
            len,
        }))
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Flat(b) => b.len(),
            Self::Joined(j) => j.len,
        }
    }

    /// The head, the parts and the tail, if the text is in pieces.
    pub(crate) fn pieces(&self) -> Option<Pieces<'_>> {
        match self {
            Self::Flat(_) => None,
            Self::Joined(j) => {
                let (head, tail) = j.ends.split_at(j.split);
                Some((head, &j.parts, tail))
            }
        }
    }

    /// The first byte.
    pub(crate) fn first(&self) -> Option<u8> {
        match self {
            Self::Flat(b) => b.first().copied(),
            Self::Joined(j) => j
                .ends
                .get(..j.split)
                .and_then(|h| h.first().copied())
                .or_else(|| j.parts.first().and_then(|p| p.first())),
        }
    }

    /// Appends the bytes to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Self::Flat(b) => out.extend_from_slice(b),
            Self::Joined(j) => {
                out.reserve(j.len);
                let (head, tail) = j.ends.split_at(j.split);
                out.extend_from_slice(head);
                join_parts(&j.parts, out);
                out.extend_from_slice(tail);
            }
        }
    }

    /// The bytes in one piece: borrowed when flat, else laid out in a new buffer (which
    /// the caller drops when done: the flat copy is transient).
    pub(crate) fn flat(&self) -> Cow<'_, [u8]> {
        match self {
            Self::Flat(b) => Cow::Borrowed(b),
            Self::Joined(j) => {
                let mut out = Vec::with_capacity(j.len);
                self.write_to(&mut out);
                Cow::Owned(out)
            }
        }
    }

    /// How many leading bytes of the text equal those of `other` (at most the shorter
    /// length), read piece by piece: no flat copy, and it stops at the first difference.
    pub(crate) fn common_prefix(&self, other: &[u8]) -> usize {
        let mut at = 0;
        self.prefix_walk(other, &mut at);
        at
    }

    /// Advances `at` over the bytes of `self` that equal `other[at..]`; false once they
    /// differ (or `other` ends).
    fn prefix_walk(&self, other: &[u8], at: &mut usize) -> bool {
        let eat = |bytes: &[u8], at: &mut usize| -> bool {
            let rest = other.get(*at..).unwrap_or_default();
            let n = meshfleet_wire::common_prefix(bytes, rest);
            *at += n;
            n == bytes.len()
        };
        match self {
            Self::Flat(b) => eat(b, at),
            Self::Joined(j) => {
                let (head, tail) = j.ends.split_at(j.split);
                if !eat(head, at) {
                    return false;
                }
                for (i, p) in j.parts.iter().enumerate() {
                    if i > 0 && !eat(b",", at) {
                        return false;
                    }
                    if !p.prefix_walk(other, at) {
                        return false;
                    }
                }
                eat(tail, at)
            }
        }
    }
}

/// The length of `head`, then `parts` joined by `,`, then `tail`.
pub(crate) fn joined_len(head: &[u8], parts: &[Arc<TreeText>], tail: &[u8]) -> usize {
    head.len()
        + tail.len()
        + parts.len().saturating_sub(1)
        + parts.iter().map(|p| p.len()).sum::<usize>()
}

/// `parts` joined by `,`, appended to `out`.
pub(crate) fn join_parts(parts: &[Arc<TreeText>], out: &mut Vec<u8>) {
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        p.write_to(out);
    }
}

/// Whether two lists of parts are the same texts: pointer-equal parts are equal text,
/// so a node sync that carries exactly the pieces we keep is recognised without reading
/// its bytes.
pub(crate) fn same_parts(a: &[Arc<TreeText>], b: &[Arc<TreeText>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    /// A rope of depth up to `depth` built from `seed`, and its flat bytes made the
    /// plain way.
    fn build(seed: &[u8], depth: usize) -> (Arc<TreeText>, Vec<u8>) {
        if depth == 0 || seed.len() < 3 {
            return (Arc::new(TreeText::Flat(seed.to_vec())), seed.to_vec());
        }
        let k = usize::from(seed[0] % 4);
        let head = &seed[1..2];
        let tail = &seed[2..3];
        let rest = &seed[3..];
        let chunk = rest.len() / k.max(1);
        let mut parts = Vec::new();
        let mut want = head.to_vec();
        for i in 0..k {
            let piece = &rest[i * chunk..(i + 1) * chunk];
            let (p, flat) = build(piece, depth - 1);
            if i > 0 {
                want.push(b',');
            }
            want.extend_from_slice(&flat);
            parts.push(p);
        }
        want.extend_from_slice(tail);
        (Arc::new(TreeText::joined(head, parts, tail)), want)
    }

    #[test]
    fn flattening_gives_the_joined_bytes() {
        let a = Arc::new(TreeText::Flat(b"{\"nodeId\":2}".to_vec()));
        let b = Arc::new(TreeText::joined(
            b"{\"nodeId\":3,\"subs\":[",
            vec![a.clone()],
            b"]}",
        ));
        let t = TreeText::joined(b"{\"nodeId\":1,\"subs\":[", vec![a, b], b"]}");
        let want = br#"{"nodeId":1,"subs":[{"nodeId":2},{"nodeId":3,"subs":[{"nodeId":2}]}]}"#;
        assert_eq!(&*t.flat(), want);
        assert_eq!(t.len(), want.len());
        assert_eq!(t.first(), Some(b'{'));
        assert_eq!(t.common_prefix(want), want.len());
        assert_eq!(t.common_prefix(&want[..10]), 10);
        let mut other = want.to_vec();
        other[40] = b'x';
        assert_eq!(t.common_prefix(&other), 40);
        let empty = TreeText::joined(b"[", vec![], b"]");
        assert_eq!(&*empty.flat(), b"[]");
        assert_eq!(empty.len(), 2);
    }

    proptest! {
        #[test]
        fn any_rope_flattens_to_its_bytes(seed in proptest::collection::vec(any::<u8>(), 0..300), depth in 0usize..5, cut in any::<usize>()) {
            let (t, want) = build(&seed, depth);
            prop_assert_eq!(&*t.flat(), &want[..]);
            prop_assert_eq!(t.len(), want.len());
            prop_assert_eq!(t.first(), want.first().copied());
            prop_assert_eq!(t.common_prefix(&want), want.len());
            if !want.is_empty() {
                let i = cut % want.len();
                let mut other = want.clone();
                other[i] ^= 1;
                prop_assert_eq!(t.common_prefix(&other), i);
                prop_assert_eq!(t.common_prefix(&want[..i]), i);
            }
        }
    }
}
