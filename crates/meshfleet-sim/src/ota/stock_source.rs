//! The stock source: the library's sender as `offerOTA` runs it, started again at boot.

use meshfleet_mesh::{Ctx, Instant, LinkId, MeshChange, Plugin};
use meshfleet_ota::StockSender;
use meshfleet_wire::{Package, Routing};

/// A [`StockSender`] that starts by itself after a reboot (the library's `offerOTA` runs in
/// `setup()`), where the first start is the campaign's.
pub(super) struct StockSource {
    pub(super) sender: StockSender,
    pub(super) start_pending: bool,
}

impl Plugin for StockSource {
    fn name(&self) -> &'static str {
        self.sender.name()
    }
    fn claims(&self) -> meshfleet_mesh::Claims {
        self.sender.claims()
    }
    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, routing: Routing, pkg: &Package) {
        self.sender.handle_package(ctx, link, routing, pkg);
    }
    fn handle_change(&mut self, ctx: &mut Ctx<'_>, change: &MeshChange) {
        self.sender.handle_change(ctx, change);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        // "As soon as possible": the driver clamps a past deadline to now.
        if self.start_pending {
            return Some(Instant::ZERO);
        }
        self.sender.poll_timeout()
    }
    fn handle_timeout(&mut self, ctx: &mut Ctx<'_>) {
        if self.start_pending {
            self.start_pending = false;
            self.sender.start(ctx);
            return;
        }
        self.sender.handle_timeout(ctx);
    }
}
