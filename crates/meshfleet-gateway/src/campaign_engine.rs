//! The campaign engine: runs the `running` campaigns on the gateway's own node.
//!
//! (This commit: the task exists and follows the service's changes; the OTA driving lands
//! in the next commit.)

use std::sync::Arc;

use tokio::sync::watch;

use crate::Shared;

/// Runs until `shutdown` turns true.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = shared.campaigns.changed() => {}
        }
    }
}
