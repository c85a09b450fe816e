//! What the controller knows about a node: its id, its kind, the selection attributes the
//! operator filters on, and where it sits in the mesh tree.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// A painlessMesh node id (the same number as `meshfleet_wire::NodeId`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl core::fmt::Display for NodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(&self.0, f)
    }
}

/// How a node is updated and rolled back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Speaks the meshfleet OTA protocol: A/B slots, confirmed boot, a rollback command to
    /// its previous slot.
    #[default]
    Meshfleet,
    /// A stock painlessMesh node: one running image; rolled back by re-offering the previous
    /// image.
    Stock,
}

/// Longest accepted image version string (it arrives from nodes in boot reports).
pub const MAX_VERSION_LEN: usize = 64;

/// A firmware version as nodes report it (at most [`MAX_VERSION_LEN`] bytes).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageVersion(String);

/// A version string longer than [`MAX_VERSION_LEN`] or empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VersionError {
    /// The string is empty.
    Empty,
    /// The string is longer than [`MAX_VERSION_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
}

impl core::fmt::Display for VersionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Empty => f.write_str("image version is empty"),
            Self::TooLong { len } => write!(
                f,
                "image version is {len} bytes long, at most {MAX_VERSION_LEN} are accepted"
            ),
        }
    }
}

impl ImageVersion {
    /// A version from a string (1 to [`MAX_VERSION_LEN`] bytes).
    pub fn new(s: impl Into<String>) -> Result<Self, VersionError> {
        let s = s.into();
        if s.is_empty() {
            Err(VersionError::Empty)
        } else if s.len() > MAX_VERSION_LEN {
            Err(VersionError::TooLong { len: s.len() })
        } else {
            Ok(Self(s))
        }
    }

    /// The version string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ImageVersion {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, VersionError> {
        Self::new(s)
    }
}

impl From<ImageVersion> for String {
    fn from(v: ImageVersion) -> Self {
        v.0
    }
}

impl core::fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One node of the fleet as the driver (gateway, simulator) describes it.
///
/// The topology fields come from the mesh tree the gateway sees: `branch` is the child of
/// the gateway's root through which this node is reached (the node itself if it is such a
/// child), `subtree_size` is how many nodes reach the root through this node, itself
/// included (1 for a leaf). The planner offers leaves before relays and spreads every wave
/// over branches, so one bad relay cannot cut off the nodes behind it, and one bad branch
/// cannot hide a bad build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Mesh node id.
    pub id: NodeId,
    /// How it is updated and rolled back.
    #[serde(default)]
    pub kind: NodeKind,
    /// Application role ("sensor", "relay", ...); empty if none.
    #[serde(default)]
    pub role: String,
    /// Hardware type ("ESP32", ...).
    #[serde(default)]
    pub hardware: String,
    /// Free-form tags ("lab", "building-a", ...).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The root's child this node hangs under (see the type docs).
    #[serde(default)]
    pub branch: NodeId,
    /// Nodes reaching the root through this one, itself included (1 = leaf).
    #[serde(default = "one")]
    pub subtree_size: u32,
    /// Whether the node is in the mesh right now.
    #[serde(default = "yes")]
    pub online: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

impl NodeInfo {
    /// A leaf meshfleet node on its own branch, online, with no role, hardware or tags.
    pub fn leaf(id: NodeId) -> Self {
        Self {
            id,
            kind: NodeKind::Meshfleet,
            role: String::new(),
            hardware: String::new(),
            tags: Vec::new(),
            branch: id,
            subtree_size: 1,
            online: true,
        }
    }
}

/// Which nodes a rollout targets. Every non-empty list must match: `roles` and `hardware`
/// are "any of", `tags` is "all of", `exclude_tags` is "none of".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Selector {
    /// Accepted roles (empty = any).
    pub roles: Vec<String>,
    /// Accepted hardware types (empty = any).
    pub hardware: Vec<String>,
    /// Tags a node must all carry.
    pub tags: Vec<String>,
    /// Tags that exclude a node.
    pub exclude_tags: Vec<String>,
}

impl Selector {
    /// Whether `node` is targeted.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        (self.roles.is_empty() || self.roles.contains(&node.role))
            && (self.hardware.is_empty() || self.hardware.contains(&node.hardware))
            && self.tags.iter().all(|t| node.tags.contains(t))
            && !self.exclude_tags.iter().any(|t| node.tags.contains(t))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn selector_any_of_roles_all_of_tags_none_of_excludes() {
        let mut n = NodeInfo::leaf(NodeId(1));
        n.role = "sensor".to_string();
        n.hardware = "ESP32".to_string();
        n.tags = vec!["lab".to_string(), "a".to_string()];
        assert!(Selector::default().matches(&n));
        let s = Selector {
            roles: vec!["relay".to_string(), "sensor".to_string()],
            hardware: vec!["ESP32".to_string()],
            tags: vec!["lab".to_string()],
            exclude_tags: vec![],
        };
        assert!(s.matches(&n));
        let wrong_hw = Selector {
            hardware: vec!["ESP8266".to_string()],
            ..s.clone()
        };
        assert!(!wrong_hw.matches(&n));
        let needs_b = Selector {
            tags: vec!["lab".to_string(), "b".to_string()],
            ..s.clone()
        };
        assert!(!needs_b.matches(&n));
        let excl = Selector {
            exclude_tags: vec!["a".to_string()],
            ..s
        };
        assert!(!excl.matches(&n));
    }

    #[test]
    fn version_length_is_bounded_even_through_serde() {
        assert!(ImageVersion::new("").is_err());
        assert!(ImageVersion::new("x".repeat(MAX_VERSION_LEN)).is_ok());
        assert_eq!(
            ImageVersion::new("x".repeat(MAX_VERSION_LEN + 1)),
            Err(VersionError::TooLong {
                len: MAX_VERSION_LEN + 1
            })
        );
        let long = alloc::format!("\"{}\"", "y".repeat(100));
        assert!(serde_json::from_str::<ImageVersion>(&long).is_err());
    }
}
