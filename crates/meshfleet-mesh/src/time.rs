//! Integer-microsecond time, supplied by the driver (the core never reads a clock): the
//! workspace's one pair of time types, [`meshfleet_time`], which every core crate shares.

pub use meshfleet_time::{Duration, Instant};
