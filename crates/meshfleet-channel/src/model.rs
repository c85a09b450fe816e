//! How transmissions share the radio.

/// How transmissions share the radio. See the crate docs.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ChannelModel {
    /// Every link direction transmits independently of all others.
    Independent,
    /// One transmitter per node shared by all its links.
    Airtime,
    /// One transmitter per node, and a transmission silences every node within
    /// `interference_range_m` of the sender. Needs a topology with positions.
    Geometric {
        /// Distance within which a transmission blocks others, in metres.
        interference_range_m: f64,
    },
}

impl ChannelModel {
    /// A short name for reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Independent => "independent",
            Self::Airtime => "airtime",
            Self::Geometric { .. } => "geometric",
        }
    }
}
