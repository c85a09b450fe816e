//! `meshfleet ota`: distribute firmware over the mesh (`ota offer`).
//!
//! The receiving side lives in [`receiver`] and is switched on by `meshfleet node
//! --ota-dir`; [`offer`] is the sending side.

mod offer;
pub(crate) mod receiver;

use crate::context::Context;

const LONG_ABOUT: &str = "\
Distribute firmware over the mesh.

`meshfleet ota offer FILE.mfw` joins the mesh as a node that offers the artefact until it \
is stopped (SIGINT, SIGTERM) or, with --exit-when-idle, until nobody has fetched anything \
for a while. Nodes receive with `meshfleet node --ota-dir DIR --ota-role R --ota-hardware H` \
(meshfleet nodes) or with the painlessMesh library's own OTA receiver (ESP nodes).";

/// Distribute firmware over the mesh (the receiving side is `meshfleet node --ota-dir`).
#[derive(clap::Args, Debug)]
#[command(long_about = LONG_ABOUT)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: OtaCommand,
}

#[derive(clap::Subcommand, Debug)]
enum OtaCommand {
    Offer(offer::OfferArgs),
}

pub(crate) fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        OtaCommand::Offer(a) => offer::run(a, ctx),
    }
}
