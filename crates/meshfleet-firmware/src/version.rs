//! Firmware version numbers: semver-ish strings with a total order.

#[allow(unused_imports)]
use crate::prelude::*;

use core::cmp::Ordering;
use core::fmt;
use core::str::FromStr;

/// Longest accepted version string, in bytes. Versions travel in status packages on small
/// devices; anything longer is not a version number.
pub const MAX_VERSION_LEN: usize = 64;

/// A parsed, normalised firmware version.
///
/// Grammar (a superset of SemVer 2.0.0 that firmware projects actually use):
///
/// ```text
/// version  = ["v" | "V"] number ["." number ["." number]] ["-" pre] ["+" build]
/// number   = "0" | nonzero digit*          (fits in a u64; no leading zeros)
/// pre      = ident ("." ident)*            ident: [0-9A-Za-z-]+, numeric ones without leading zeros
/// build    = bident ("." bident)*          bident: [0-9A-Za-z-]+
/// ```
///
/// A missing minor or patch number is 0, and the value is kept normalised: `"v1.2"` parses to
/// `1.2.0` and is displayed (and stored in manifests) as `"1.2.0"`. Nodes report versions in
/// whatever form their firmware prints, so normalising at parse time is what makes
/// "is the node's version older than the artefact's?" a plain comparison.
///
/// Ordering follows SemVer precedence: numbers compare numerically (`1.2.10 > 1.2.9`), a
/// pre-release is lower than its release (`1.0.0-rc.1 < 1.0.0`), pre-release identifiers compare
/// numerically when numeric and as ASCII otherwise, numeric below alphanumeric. SemVer says build
/// metadata has no precedence; here it only breaks ties, so that `Ord` agrees with `Eq` (two
/// versions differing only in build metadata are not equal, so they must not compare `Equal`).
/// Use [`Version::cmp_precedence`] to ignore it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Identifier>,
    build: Option<String>,
}

/// One dot-separated pre-release identifier. Variant order is the precedence order: numeric
/// identifiers sort below alphanumeric ones.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Identifier {
    Numeric(u64),
    Alpha(String),
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Numeric(n) => write!(f, "{n}"),
            Self::Alpha(s) => f.write_str(s),
        }
    }
}

/// Why a version string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid version {input:?}: {kind}; expected MAJOR[.MINOR[.PATCH]][-PRE][+BUILD] with decimal numbers, e.g. \"1.2.10\"")]
pub struct VersionError {
    input: String,
    kind: VersionErrorKind,
}

impl VersionError {
    /// The refused input (truncated to [`MAX_VERSION_LEN`] + a few characters for display).
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What exactly was wrong.
    pub fn kind(&self) -> &VersionErrorKind {
        &self.kind
    }
}

/// The specific defect in a refused version string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionErrorKind {
    /// The string is empty (or only a `v`).
    #[error("it is empty")]
    Empty,
    /// Longer than [`MAX_VERSION_LEN`].
    #[error("it is longer than {MAX_VERSION_LEN} bytes")]
    TooLong,
    /// A numeric component is missing or has non-digits, e.g. `1..2` or `1.x`.
    #[error("component {0} is not a decimal number")]
    NotANumber(usize),
    /// A numeric component has a leading zero, e.g. `1.02`, which would make two spellings of
    /// one version.
    #[error("component {0} has a leading zero")]
    LeadingZero(usize),
    /// A numeric component does not fit in 64 bits.
    #[error("component {0} is too large")]
    Overflow(usize),
    /// More than three numeric components, e.g. `1.2.3.4`.
    #[error("it has more than three numeric components")]
    TooManyComponents,
    /// An empty or malformed pre-release identifier, e.g. `1.0-` or `1.0-rc..1`.
    #[error("the pre-release part has an empty or invalid identifier")]
    BadPreRelease,
    /// An empty or malformed build metadata identifier, e.g. `1.0+`.
    #[error("the build metadata has an empty or invalid identifier")]
    BadBuild,
}

impl Version {
    /// `major.minor.patch`, a release (no pre-release, no build metadata).
    pub const fn new(major: u64, minor: u64, patch: u64) -> Self {
        Self {
            major,
            minor,
            patch,
            pre: Vec::new(),
            build: None,
        }
    }

    /// The major number.
    pub const fn major(&self) -> u64 {
        self.major
    }

    /// The minor number (0 when the input had none).
    pub const fn minor(&self) -> u64 {
        self.minor
    }

    /// The patch number (0 when the input had none).
    pub const fn patch(&self) -> u64 {
        self.patch
    }

    /// True for a pre-release such as `1.0.0-rc.1`.
    pub fn is_prerelease(&self) -> bool {
        !self.pre.is_empty()
    }

    /// Build metadata after `+`, if any.
    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    /// SemVer precedence: like [`Ord::cmp`] but ignoring build metadata.
    pub fn cmp_precedence(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                // A release outranks any of its pre-releases.
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }

    /// Parses `s`; see [`Version`] for the grammar.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        parse(s).map_err(|kind| VersionError {
            // Keep the error small even for a megabyte of garbage.
            input: s.chars().take(MAX_VERSION_LEN + 8).collect(),
            kind,
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_precedence(other)
            .then_with(|| self.build.cmp(&other.build))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        for (i, id) in self.pre.iter().enumerate() {
            f.write_str(if i == 0 { "-" } else { "." })?;
            write!(f, "{id}")?;
        }
        if let Some(build) = &self.build {
            write!(f, "+{build}")?;
        }
        Ok(())
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a version string such as \"1.2.10\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Version, E> {
                Version::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// A decimal number without leading zeros. `component` is 1-based, for error messages.
fn number(s: &str, component: usize) -> Result<u64, VersionErrorKind> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(VersionErrorKind::NotANumber(component));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(VersionErrorKind::LeadingZero(component));
    }
    s.parse().map_err(|_| VersionErrorKind::Overflow(component))
}

fn parse(s: &str) -> Result<Version, VersionErrorKind> {
    if s.len() > MAX_VERSION_LEN {
        return Err(VersionErrorKind::TooLong);
    }
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    if s.is_empty() {
        return Err(VersionErrorKind::Empty);
    }
    let (rest, build) = match s.split_once('+') {
        Some((rest, build)) => {
            if build
                .split('.')
                .any(|id| id.is_empty() || !id.bytes().all(is_ident_char))
            {
                return Err(VersionErrorKind::BadBuild);
            }
            (rest, Some(build.to_owned()))
        }
        None => (s, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => {
            let ids = pre
                .split('.')
                .map(|id| {
                    if id.is_empty() || !id.bytes().all(is_ident_char) {
                        Err(VersionErrorKind::BadPreRelease)
                    } else if id.bytes().all(|c| c.is_ascii_digit()) {
                        if id.len() > 1 && id.starts_with('0') {
                            Err(VersionErrorKind::BadPreRelease)
                        } else {
                            id.parse()
                                .map(Identifier::Numeric)
                                .map_err(|_| VersionErrorKind::BadPreRelease)
                        }
                    } else {
                        Ok(Identifier::Alpha(id.to_owned()))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            (core, ids)
        }
        None => (rest, Vec::new()),
    };
    let mut numbers = [0u64; 3];
    for (i, part) in core.split('.').enumerate() {
        let slot = numbers
            .get_mut(i)
            .ok_or(VersionErrorKind::TooManyComponents)?;
        *slot = number(part, i + 1)?;
    }
    let [major, minor, patch] = numbers;
    Ok(Version {
        major,
        minor,
        patch,
        pre,
        build,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn numeric_not_lexical_order() {
        assert!(v("1.2.10") > v("1.2.9"));
        assert!(v("1.10.0") > v("1.9.99"));
        assert!(v("10.0.0") > v("9.0.0"));
    }

    #[test]
    fn normalises_short_forms_and_prefix() {
        assert_eq!(v("v1.2"), v("1.2.0"));
        assert_eq!(v("V2").to_string(), "2.0.0");
        assert_eq!(v("1.2.3-rc.1+git.abc").to_string(), "1.2.3-rc.1+git.abc");
    }

    #[test]
    fn semver_precedence() {
        let ordered = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn build_metadata_only_breaks_ties() {
        assert_eq!(v("1.0.0+a").cmp_precedence(&v("1.0.0+b")), Ordering::Equal);
        assert_ne!(v("1.0.0+a"), v("1.0.0+b"));
        assert!(v("1.0.0+a") < v("1.0.0+b"));
        assert!(v("1.0.0+zzz") < v("1.0.1"));
    }

    #[test]
    fn rejects_garbage_with_reason() {
        let cases = [
            ("", VersionErrorKind::Empty),
            ("v", VersionErrorKind::Empty),
            ("1..2", VersionErrorKind::NotANumber(2)),
            ("1.x", VersionErrorKind::NotANumber(2)),
            ("latest", VersionErrorKind::NotANumber(1)),
            ("1.02", VersionErrorKind::LeadingZero(2)),
            ("1.2.3.4", VersionErrorKind::TooManyComponents),
            ("99999999999999999999", VersionErrorKind::Overflow(1)),
            ("1.0-", VersionErrorKind::BadPreRelease),
            ("1.0-rc..1", VersionErrorKind::BadPreRelease),
            ("1.0-01", VersionErrorKind::BadPreRelease),
            ("1.0+", VersionErrorKind::BadBuild),
            (" 1.0", VersionErrorKind::NotANumber(1)),
            ("-1.0", VersionErrorKind::NotANumber(1)),
        ];
        for (input, kind) in cases {
            let err = Version::parse(input).expect_err(input);
            assert_eq!(err.kind(), &kind, "{input:?}");
            assert!(err.to_string().contains("1.2.10"), "{err}");
        }
        let long = "1".repeat(MAX_VERSION_LEN + 1);
        assert_eq!(
            Version::parse(&long).map_err(|e| e.kind().clone()),
            Err(VersionErrorKind::TooLong)
        );
    }

    #[test]
    fn serde_round_trip() {
        let json = serde_json::to_string(&v("v1.2")).unwrap_or_default();
        assert_eq!(json, "\"1.2.0\"");
        let back: Version = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, v("1.2.0"));
        assert!(serde_json::from_str::<Version>("\"1.x\"").is_err());
        assert!(serde_json::from_str::<Version>("12").is_err());
    }
}
