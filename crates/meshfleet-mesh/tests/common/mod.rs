//! The shared virtual-time harness (`meshfleet-testkit`).
#![allow(unused_imports)]

pub use meshfleet_testkit::Net;
