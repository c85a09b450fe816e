//! The fault script: what goes wrong in the demo's mesh, and when (`examples/demo/faults.toml`,
//! embedded as the default).

use serde::Deserialize;

/// The default script (`examples/demo/faults.toml`).
pub const DEFAULT_FAULTS: &str = include_str!("../../../examples/demo/faults.toml");

/// Most faults a script may hold.
pub const MAX_FAULTS: usize = 1_000;

/// Longest a fault may wait or last, seconds (a year).
const MAX_SECONDS: f64 = 365.0 * 86_400.0;

/// What happens to the node.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Its free heap falls by this many bytes per (virtual) minute.
    Leak {
        /// Bytes per minute.
        bytes_per_min: u32,
    },
    /// It reboots every `every_s` seconds, `count` times.
    RebootLoop {
        /// Seconds between reboots.
        every_s: f64,
        /// Reboots.
        count: u32,
    },
    /// It and everything below it (as the gateway sees the tree then) lose the rest of the
    /// mesh for `duration_s`.
    Partition {
        /// Seconds until the partition heals.
        duration_s: f64,
    },
    /// It loses power for good.
    Death,
}

impl FaultKind {
    /// A short stable label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Leak { .. } => "leak",
            Self::RebootLoop { .. } => "reboot_loop",
            Self::Partition { .. } => "partition",
            Self::Death => "death",
        }
    }
}

/// One scripted fault.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Virtual seconds from the start.
    pub at_s: f64,
    /// The node's number (1 is the gateway).
    pub node: u32,
    /// What happens.
    pub kind: FaultKind,
}

/// Why a script was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultsError {
    /// Not valid TOML, unknown keys, missing fields.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A fault that cannot happen.
    #[error("fault {index}: {reason}")]
    Invalid {
        /// 1-based position in the file.
        index: usize,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    fault: Vec<Raw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    at_s: f64,
    node: u32,
    kind: String,
    bytes_per_min: Option<u32>,
    every_s: Option<f64>,
    count: Option<u32>,
    duration_s: Option<f64>,
}

/// Parses a script, sorted by time.
pub fn parse_faults(text: &str) -> Result<Vec<Fault>, FaultsError> {
    let file: File = toml::from_str(text)?;
    if file.fault.len() > MAX_FAULTS {
        return Err(FaultsError::Invalid {
            index: MAX_FAULTS + 1,
            reason: format!("a script holds at most {MAX_FAULTS} faults"),
        });
    }
    let mut out = Vec::with_capacity(file.fault.len());
    for (i, r) in file.fault.into_iter().enumerate() {
        let bad = |reason: String| FaultsError::Invalid {
            index: i + 1,
            reason,
        };
        let seconds = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) {
                Ok(v)
            } else {
                Err(bad(format!(
                    "`{name}` must be between 0 and {MAX_SECONDS} (got {v})"
                )))
            }
        };
        seconds("at_s", r.at_s)?;
        if r.node < 2 {
            return Err(bad(format!(
                "`node` must be 2 or more (node 1 is the gateway; got {})",
                r.node
            )));
        }
        let unused = |names: &[(&str, bool)]| -> Result<(), FaultsError> {
            match names.iter().find(|(_, set)| *set) {
                Some((n, _)) => Err(bad(format!("`{n}` is not used by kind `{}`", r.kind))),
                None => Ok(()),
            }
        };
        let kind = match r.kind.as_str() {
            "leak" => {
                unused(&[
                    ("every_s", r.every_s.is_some()),
                    ("count", r.count.is_some()),
                    ("duration_s", r.duration_s.is_some()),
                ])?;
                let b = r
                    .bytes_per_min
                    .ok_or_else(|| bad("kind `leak` needs `bytes_per_min`".into()))?;
                if b == 0 {
                    return Err(bad("`bytes_per_min` must be at least 1".into()));
                }
                FaultKind::Leak { bytes_per_min: b }
            }
            "reboot_loop" => {
                unused(&[
                    ("bytes_per_min", r.bytes_per_min.is_some()),
                    ("duration_s", r.duration_s.is_some()),
                ])?;
                let every_s = seconds(
                    "every_s",
                    r.every_s
                        .ok_or_else(|| bad("kind `reboot_loop` needs `every_s`".into()))?,
                )?;
                if every_s < 1.0 {
                    return Err(bad("`every_s` must be at least 1".into()));
                }
                let count = r.count.unwrap_or(3);
                if !(1..=1_000).contains(&count) {
                    return Err(bad(format!("`count` must be 1 to 1000 (got {count})")));
                }
                FaultKind::RebootLoop { every_s, count }
            }
            "partition" => {
                unused(&[
                    ("bytes_per_min", r.bytes_per_min.is_some()),
                    ("every_s", r.every_s.is_some()),
                    ("count", r.count.is_some()),
                ])?;
                let d = seconds(
                    "duration_s",
                    r.duration_s
                        .ok_or_else(|| bad("kind `partition` needs `duration_s`".into()))?,
                )?;
                FaultKind::Partition { duration_s: d }
            }
            "death" => {
                unused(&[
                    ("bytes_per_min", r.bytes_per_min.is_some()),
                    ("every_s", r.every_s.is_some()),
                    ("count", r.count.is_some()),
                    ("duration_s", r.duration_s.is_some()),
                ])?;
                FaultKind::Death
            }
            other => {
                return Err(bad(format!(
                    "unknown kind `{other}` (leak, reboot_loop, partition, death)"
                )))
            }
        };
        out.push(Fault {
            at_s: r.at_s,
            node: r.node,
            kind,
        });
    }
    out.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_default_script_parses_with_one_fault_of_each_kind() {
        let f = parse_faults(DEFAULT_FAULTS).unwrap();
        let kinds: Vec<_> = f.iter().map(|f| f.kind.label()).collect();
        assert_eq!(kinds, ["leak", "reboot_loop", "partition", "death"]);
        assert!(f.windows(2).all(|w| w[0].at_s <= w[1].at_s));
    }

    #[test]
    fn bad_scripts_say_what_is_wrong() {
        let e = parse_faults("[[fault]]\nat_s = 1\nnode = 1\nkind = \"death\"\n").unwrap_err();
        assert!(e.to_string().contains("gateway"), "{e}");
        let e = parse_faults("[[fault]]\nat_s = 1\nnode = 3\nkind = \"leak\"\n").unwrap_err();
        assert!(e.to_string().contains("bytes_per_min"), "{e}");
        let e = parse_faults("[[fault]]\nat_s = 1\nnode = 3\nkind = \"melt\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");
        let e = parse_faults("[[fault]]\nat_s = -1\nnode = 3\nkind = \"death\"\n").unwrap_err();
        assert!(e.to_string().contains("at_s"), "{e}");
        let e = parse_faults("[[fault]]\nat_s = 1\nnode = 3\nkind = \"death\"\nduration_s = 4\n")
            .unwrap_err();
        assert!(e.to_string().contains("not used"), "{e}");
        let e = parse_faults("[[fault]]\nat = 1\n").unwrap_err();
        assert!(matches!(e, FaultsError::Toml(_)), "{e}");
    }
}
