//! Sweeps the OTA fault scenarios of issue 15 over many seeds and prints, per fault, how many
//! runs ended with every node on the verified new image and the spread of completion times
//! (campaign start to the last commit, virtual seconds).
//!
//! ```text
//! cargo run -p meshfleet-sim --release --example ota_faults -- [--seeds 20] [--nodes 20] \
//!     [--fault none,reboot_storm,reboot_after_commit,queue_full,loss_25,source_crash_return]
//! ```
//!
//! Exits non-zero if any run left a node not updated.

use meshfleet_sim::ota_faults::{run_fault, OtaFault};

fn main() {
    let mut seeds = 20u64;
    let mut nodes = 20u32;
    let mut faults: Vec<OtaFault> = [OtaFault::None].into_iter().chain(OtaFault::ALL).collect();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match a.as_str() {
            "--seeds" => seeds = v.parse().unwrap_or(seeds),
            "--nodes" => nodes = v.parse().unwrap_or(nodes),
            "--fault" => {
                faults = v
                    .split(',')
                    .filter_map(|s| {
                        [OtaFault::None]
                            .into_iter()
                            .chain(OtaFault::ALL)
                            .find(|f| f.label() == s)
                    })
                    .collect();
            }
            _ => {
                eprintln!("unknown argument {a}");
                std::process::exit(2);
            }
        }
    }
    println!("| fault | runs | all updated | min s | median s | p90 s | max s | reboots/run | queue-full drops/run |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut failed = false;
    for fault in faults {
        let mut times = Vec::new();
        let (mut ok, mut reboots, mut drops) = (0, 0u64, 0u64);
        for seed in 1..=seeds {
            let r = run_fault(fault, seed, nodes);
            if std::env::var_os("OTA_FAULTS_VERBOSE").is_some() {
                eprintln!("{}: seed {seed}: {:?} s", fault.label(), r.completion_s);
            }
            if r.all_updated() {
                ok += 1;
            } else {
                failed = true;
                eprintln!("{}: seed {seed}: {r:?}", fault.label());
            }
            if let Some(t) = r.completion_s {
                times.push(t);
            }
            reboots += u64::from(r.reboots);
            drops += r.queue_full_drops;
        }
        times.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if times.is_empty() {
                f64::NAN
            } else {
                times[((times.len() - 1) as f64 * p).round() as usize]
            }
        };
        println!(
            "| {} | {seeds} | {ok} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            fault.label(),
            q(0.0),
            q(0.5),
            q(0.9),
            q(1.0),
            reboots as f64 / seeds as f64,
            drops as f64 / seeds as f64
        );
    }
    if failed {
        std::process::exit(1);
    }
}
