//! Runs the `meshfleet sim --demo` scenario and writes its outputs:
//!
//! ```text
//! cargo run -p meshfleet-sim --release --example demo -- [OUT_DIR]
//! ```

use std::path::PathBuf;

use meshfleet_sim::{demo_scenario, run_scenario};

fn main() {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "sim-demo".into()));
    let started = std::time::Instant::now();
    match run_scenario(demo_scenario(), Some(&out), |_| {}) {
        Ok(r) => {
            println!(
                "{} nodes, {:.0} virtual s in {:.1} wall s; formed after {:?} s; {} of {} broadcasts complete; latency p50 {:.1} ms p99 {:.1} ms; outputs in {}",
                r.nodes,
                r.virtual_time_s,
                started.elapsed().as_secs_f64(),
                r.convergence.formation_converged_s,
                r.app.broadcasts_complete,
                r.app.broadcasts,
                r.app.latency.p50_ms,
                r.app.latency.p99_ms,
                out.display()
            );
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
