//! The seam between the gateway and the mesh node it runs on.
//!
//! The gateway needs little from the node: its events, its view of the tree, and whether it
//! runs. [`MeshPort`] is that; [`join`] builds today's node (a `meshfleet-runtime` node with
//! the [`StatusPlugin`], like `meshfleet node`). When the shipped node (the agent crate)
//! exists, it implements [`MeshPort`] and replaces [`join`]; nothing else changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use meshfleet_mesh::{Config, Instant, Node, NodeId, NodeTree};
use meshfleet_runtime::{
    MeshHandle, Runtime, RuntimeConfig, RuntimeEvent, SendError, StartError, Stopped,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::status::StatusPlugin;

/// A job run in the task that owns the node, with the current (mesh-runtime or virtual) time.
pub type NodeJob = Box<dyn FnOnce(&mut Node, Instant) + Send>;

/// The clock of a mesh whose time is not the wall clock's: a simulated mesh paced faster
/// than real time (`meshfleet demo`). The gateway's monitor runs on it, so that uptimes,
/// report periods and rates agree with what the nodes report.
pub trait MeshClock: Send + Sync {
    /// The mesh's time now (never goes back).
    fn now(&self) -> Instant;
    /// Mesh seconds per wall-clock second (at least 1).
    fn speed(&self) -> f64;
}

/// What the gateway uses of the mesh node.
pub trait MeshPort: Send + Sync + 'static {
    /// The gateway's own node id.
    fn node_id(&self) -> NodeId;
    /// Events from now on (see [`MeshHandle::subscribe`]).
    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent>;
    /// The node's view of the mesh.
    fn topology(&self) -> Pin<Box<dyn Future<Output = Result<NodeTree, Stopped>> + Send + '_>>;
    /// Every other node reachable now.
    fn nodes(&self) -> Pin<Box<dyn Future<Output = Result<Vec<NodeId>, Stopped>> + Send + '_>>;
    /// Sends `text` to `dest` (SINGLE): the monitor's on-demand queries.
    fn send_single(
        &self,
        dest: NodeId,
        text: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>>;
    /// Starts a TIME_DELAY probe to `dest` (the answer arrives as an event).
    fn probe_delay(
        &self,
        dest: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>>;
    /// Whether the node still runs.
    fn is_running(&self) -> bool;
    /// Stops the node (closes every link).
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Runs `job` on the gateway's own node between two inputs ([`MeshHandle::with_node`]
    /// for the TCP runtime; the simulated gateway node for `meshfleet demo`). Frames and
    /// plugin events it produces go out as usual; plugin events arrive through
    /// [`MeshPort::subscribe`] as `RuntimeEvent::Plugin { .. }`. Resolves once the job ran.
    fn run_on_node(
        &self,
        job: NodeJob,
    ) -> Pin<Box<dyn Future<Output = Result<(), Stopped>> + Send + '_>>;
    /// The mesh's own clock, if it is not the wall clock (the default: `None`).
    fn clock(&self) -> Option<Arc<dyn MeshClock>> {
        None
    }
}

impl MeshPort for MeshHandle {
    fn node_id(&self) -> NodeId {
        Self::node_id(self)
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        Self::subscribe(self)
    }

    fn topology(&self) -> Pin<Box<dyn Future<Output = Result<NodeTree, Stopped>> + Send + '_>> {
        Box::pin(Self::topology(self))
    }

    fn nodes(&self) -> Pin<Box<dyn Future<Output = Result<Vec<NodeId>, Stopped>> + Send + '_>> {
        Box::pin(Self::nodes(self))
    }

    fn send_single(
        &self,
        dest: NodeId,
        text: String,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
        Box::pin(Self::send_single(self, dest, text))
    }

    fn probe_delay(
        &self,
        dest: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
        Box::pin(Self::start_delay_measurement(self, dest))
    }

    fn is_running(&self) -> bool {
        !self.is_stopped()
    }

    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Self::shutdown(self))
    }

    fn run_on_node(
        &self,
        job: NodeJob,
    ) -> Pin<Box<dyn Future<Output = Result<(), Stopped>> + Send + '_>> {
        Box::pin(self.with_node(job))
    }
}

/// Starts the gateway's mesh node: `node` with the status plugin and the campaign plugin
/// ([`crate::campaign_engine::equip`]), on `runtime`'s sockets.
pub async fn join(
    node: Config,
    runtime: RuntimeConfig,
) -> Result<(MeshHandle, JoinHandle<()>), StartError> {
    let mut node = Node::new(node);
    node.add_plugin(Box::new(StatusPlugin))?;
    crate::campaign_engine::equip(&mut node)?;
    Runtime::start(node, runtime).await
}
