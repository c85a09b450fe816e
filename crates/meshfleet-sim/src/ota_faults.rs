//! meshfleet OTA campaigns under the faults of issue 15, one seeded run at a time: reboot
//! storms during and right after a campaign, every node (relays included) rebooting seconds
//! after it commits (as an ESP does), send queues so short that control messages are
//! dropped, 25% segment loss, and a source that crashes and returns.
//!
//! [`run_fault`] runs one fault with one seed and reports whether every node ended on the
//! verified new image and when the last one got it. `tests/ota_fault_sweep.rs` runs a few
//! seeds of each in CI; `examples/ota_faults.rs` sweeps 20 or more seeds per fault and prints
//! the spread of completion times (`docs/benchmarks.md`).
//!
//! The campaigns are small (64 KiB image, 20 nodes in a random tree of at most 3 children per
//! node) and paced at 8 KB/s per link, so that an undisturbed run ([`OtaFault::None`]) takes
//! ~6 s and the faults land mid-transfer.

use meshfleet_channel::{LinkChange, LinkParams};
use meshfleet_mesh::{Duration, Instant};

use crate::ota::{synthetic_image, OtaCampaign, OtaStrategy};
use crate::scenario::{Scenario, SimEvent};
use crate::sim::Simulation;
use crate::topology::Topology;

/// When the campaign starts (virtual seconds): the 20-node mesh has formed by then.
pub const START_S: u64 = 20;
/// The longest a run may take (virtual seconds after the start) before it counts as stuck.
pub const LIMIT_S: u64 = 1_800;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtaFault {
    /// 30% of the receivers reboot at random times during the first 25 s of the campaign
    /// (some twice), every node reboots 1-5 s after it commits, and two nodes join late (as
    /// in [`OtaFault::RebootAfterCommit`]).
    RebootStorm,
    /// Every node reboots 1-5 s after it commits (relays included: their subtrees are
    /// mid-transfer then), and two nodes join 45-90 s into the campaign, when the nodes they
    /// join have committed and rebooted.
    RebootAfterCommit,
    /// Send queues of 2,000 bytes per link direction (the default is 256 KiB): one chunk
    /// frame fills them, and any CAPS, OFFER, NAK, STATUS or chunk queued behind it is dropped
    /// (node-sync frames are high priority and never dropped).
    QueueFull,
    /// 25% segment loss on every link from the start of the campaign.
    Loss25,
    /// The source loses power 1-5 s into the campaign (before anyone holds the whole image)
    /// and comes back 10-40 s later.
    SourceCrashReturn,
    /// No fault: the baseline.
    None,
}

impl OtaFault {
    /// Every fault (not the baseline).
    pub const ALL: [Self; 5] = [
        Self::RebootStorm,
        Self::RebootAfterCommit,
        Self::QueueFull,
        Self::Loss25,
        Self::SourceCrashReturn,
    ];

    /// A short name.
    pub fn label(self) -> &'static str {
        match self {
            Self::RebootStorm => "reboot_storm",
            Self::RebootAfterCommit => "reboot_after_commit",
            Self::QueueFull => "queue_full",
            Self::Loss25 => "loss_25",
            Self::SourceCrashReturn => "source_crash_return",
            Self::None => "none",
        }
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRun {
    /// The fault.
    pub fault: OtaFault,
    /// The scenario seed.
    pub seed: u64,
    /// Receivers (every node but the source).
    pub receivers: u32,
    /// Receivers that committed the new image.
    pub updated: u32,
    /// Receivers whose flash boots the new image at the end.
    pub final_new: u32,
    /// Receivers whose flash holds an image that is neither old nor new (must be 0).
    pub final_broken: u32,
    /// Campaign start to the last commit, virtual seconds, if every receiver committed.
    pub completion_s: Option<f64>,
    /// Reboots and crashes injected.
    pub reboots: u32,
    /// Frames dropped by full send queues (all kinds).
    pub queue_full_drops: u64,
    /// Chunks or pages that failed verification, and images that failed it (must be 0).
    pub verify_failed: u64,
}

impl FaultRun {
    /// Every receiver committed the new image and boots it, none broken.
    pub fn all_updated(&self) -> bool {
        self.updated == self.receivers
            && self.final_new == self.receivers
            && self.final_broken == 0
            && self.verify_failed == 0
    }
}

/// A small deterministic generator for the fault times (xorshift64*).
struct Dice(u64);

impl Dice {
    fn new(seed: u64, fault: OtaFault) -> Self {
        // splitmix64 of the pair, so that neighbouring seeds give unrelated fault times.
        let mut z = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(fault as u64 + 1);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[a, b)` seconds.
    fn secs(&mut self, a: f64, b: f64) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_micros(((a + u * (b - a)) * 1e6) as u64)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Runs `fault` with `seed` on `nodes` nodes (the source is node 1).
pub fn run_fault(fault: OtaFault, seed: u64, nodes: u32) -> FaultRun {
    let start = Duration::from_secs(START_S);
    let mut campaign = match OtaCampaign::new(OtaStrategy::Meshfleet, synthetic_image(64 * 1024, 9))
    {
        Ok(c) => c.start_at(start),
        // The synthetic image always packs; a failure here is a bug in the packer.
        Err(e) => panic!("the fault campaign's image does not pack: {e}"),
    };
    campaign.meshfleet.link_rate = 8_000;
    let mut scenario = Scenario::new(Topology::RandomTree {
        nodes,
        max_children: 3,
    })
    .seed(seed)
    .duration(start + Duration::from_secs(LIMIT_S));
    let mut dice = Dice::new(seed, fault);
    let at = |d: Duration| start + d;
    let mut reboots = 0u32;
    match fault {
        OtaFault::RebootStorm => {
            let storm = (nodes.saturating_sub(1) * 3).div_ceil(10);
            for _ in 0..storm {
                let node = 2 + dice.below(u64::from(nodes.saturating_sub(1))) as u32;
                scenario = scenario.event(at(dice.secs(1.0, 25.0)), SimEvent::Reboot { node });
                reboots += 1;
            }
        }
        OtaFault::QueueFull => {
            scenario = scenario.link(LinkParams {
                queue_cap_bytes: 2_000,
                ..LinkParams::default()
            });
        }
        OtaFault::Loss25 => {
            scenario = scenario.event(
                start,
                SimEvent::SetLink {
                    between: None,
                    change: LinkChange::loss(0.25),
                },
            );
        }
        OtaFault::SourceCrashReturn => {
            let crash = dice.secs(1.0, 5.0);
            let back = crash + dice.secs(10.0, 40.0);
            scenario = scenario
                .event(at(crash), SimEvent::Crash { node: 1 })
                .event(at(back), SimEvent::Reboot { node: 1 });
            reboots += 1;
        }
        OtaFault::RebootAfterCommit | OtaFault::None => {}
    }
    let reboot_after_commit = matches!(fault, OtaFault::RebootStorm | OtaFault::RebootAfterCommit);
    if reboot_after_commit {
        // Two nodes join once their neighbours have committed and rebooted: the relays they
        // join run the new image by then and must still hold the campaign to offer it.
        let a = 2 + dice.below(u64::from(nodes.saturating_sub(1))) as u32;
        let b = 2 + dice.below(u64::from(nodes.saturating_sub(1))) as u32;
        for node in [a, b] {
            scenario = scenario.event(
                at(dice.secs(45.0, 90.0)),
                SimEvent::Join { node, parent: None },
            );
        }
    }
    let (scenario, run) = campaign.attach(scenario);
    let mut sim = Simulation::new(scenario);
    run.install(&mut sim);
    let end = Instant::ZERO + start + Duration::from_secs(LIMIT_S);
    let mut rebooted = std::collections::BTreeSet::new();
    let mut last_reboot = Instant::ZERO;
    let step = Duration::from_millis(500);
    while sim.now() < end {
        sim.run_for(step);
        if reboot_after_commit {
            for (node, t) in run.updated_at() {
                if rebooted.insert(node) {
                    let when = t + dice.secs(1.0, 5.0);
                    last_reboot = last_reboot.max(when);
                    sim.schedule(when, SimEvent::Reboot { node });
                    reboots += 1;
                }
            }
        }
        // Done once everyone committed and the last reboot had time to boot and confirm.
        if run.all_updated() && sim.now() > last_reboot + Duration::from_secs(10) {
            break;
        }
    }
    let r = run.report(&sim);
    let drops = sim.report().drops.get("queue_full").copied().unwrap_or(0);
    FaultRun {
        fault,
        seed,
        receivers: r.receivers,
        updated: r.updated,
        final_new: r.final_new,
        final_broken: r.final_broken,
        completion_s: r.makespan_s,
        reboots,
        queue_full_drops: drops,
        verify_failed: r.counters.verify_failed + r.counters.store_errors,
    }
}
