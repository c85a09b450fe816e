//! Integer-microsecond time supplied by the driver: the controller never reads a clock.
//! The same types as the mesh node's ([`meshfleet_time`]), so a driver passes one `now`
//! to both.

pub use meshfleet_time::{Duration, Instant};
