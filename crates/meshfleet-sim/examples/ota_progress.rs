//! OTA progress per strategy on one scenario, as one plot: stock painlessMesh OTA, its
//! `broadcasted` mode and the meshfleet protocol, each a fresh run of the same mesh, with
//! the lower bound of the tree as markers.
//!
//! ```text
//! cargo run -p meshfleet-sim --example ota_progress -- [OUT.svg] [NODES] [IMAGE_KIB]
//! ```
//!
//! Defaults: `docs/img/sim-ota-progress-strategies.svg`, 20 nodes, a 128 KiB synthetic
//! image; a random tree of ESP8266 nodes (at most 4 stations per access point) on the
//! independent channel, seed 1, the campaign from node 1 at 30 s, 15 virtual minutes.

use meshfleet_mesh::Duration;
use meshfleet_sim::ota::{progress_plot, synthetic_image, OtaCampaign, OtaStrategy};
use meshfleet_sim::{run_scenario, Scenario, Topology, ESP8266_MAX_CONN};

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .unwrap_or_else(|| "docs/img/sim-ota-progress-strategies.svg".into());
    let nodes: u32 = args.next().and_then(|v| v.parse().ok()).unwrap_or(20);
    let kib: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(128);
    let image = synthetic_image(kib * 1024, 1);
    let mut reports = Vec::new();
    for strategy in OtaStrategy::ALL {
        let campaign = match OtaCampaign::new(strategy, image.clone()) {
            Ok(c) => c.start_at(Duration::from_secs(30)),
            Err(e) => {
                eprintln!("ota_progress: {e}");
                std::process::exit(1);
            }
        };
        let scenario = Scenario::new(Topology::RandomTree {
            nodes,
            max_children: ESP8266_MAX_CONN,
        })
        .name("ota_progress")
        .seed(1)
        .duration(Duration::from_secs(900))
        .ota(campaign);
        match run_scenario(scenario, None, |_| {}) {
            Ok(r) => {
                if let Some(o) = r.ota {
                    println!(
                        "{}: {}/{} updated, makespan {:?} s",
                        o.strategy, o.updated, o.receivers, o.makespan_s
                    );
                    reports.push(o);
                }
            }
            Err(e) => {
                eprintln!("ota_progress: {e}");
                std::process::exit(1);
            }
        }
    }
    let Some(svg) = progress_plot(&reports) else {
        eprintln!("ota_progress: no campaign started");
        std::process::exit(1);
    };
    if let Err(e) = std::fs::write(&out, svg) {
        eprintln!("ota_progress: cannot write {out}: {e}");
        std::process::exit(1);
    }
    println!("wrote {out}");
}
