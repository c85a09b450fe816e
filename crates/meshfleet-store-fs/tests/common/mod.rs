//! The shared virtual-time harness (`meshfleet-testkit`).
#![allow(unused_imports, unreachable_pub)]

pub use meshfleet_testkit::Net;
