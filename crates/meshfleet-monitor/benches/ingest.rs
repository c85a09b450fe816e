//! Placeholder until the ingest bench lands.
fn main() {}
