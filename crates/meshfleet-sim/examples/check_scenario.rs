//! Loads and validates scenario files, printing the first error of each:
//!
//! ```text
//! cargo run -p meshfleet-sim --example check_scenario -- FILE...
//! ```

fn main() {
    let mut failed = false;
    for arg in std::env::args().skip(1) {
        match meshfleet_sim::load_scenario(std::path::Path::new(&arg)) {
            Ok(s) => println!(
                "{arg}: ok ({} nodes, {} s)",
                s.topology.node_count(),
                s.duration.as_secs_f64()
            ),
            Err(e) => {
                failed = true;
                eprintln!("{e}");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}
