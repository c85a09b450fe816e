//! The sending side of the node as shipped: a node that offers one verified artefact to
//! the mesh (`meshfleet ota offer`, a gateway handed a new build).
//!
//! [`Source::equip`] puts the sending plugins on a node: [`MeshfleetOta::source`] for the
//! meshfleet protocol and a [`StockSender`] for stock nodes, as the [`Strategy`] says.
//! [`Source::start`] starts them once the node runs.

use meshfleet_firmware::{Artefact, Intent, Manifest};
use meshfleet_mesh::{Instant, Node};
use meshfleet_ota::proto::Layout;
use meshfleet_ota::{
    ImageInfo, MemStore, MeshfleetConfig, MeshfleetOta, OfferError, StockOffer, StockSender,
    StockSenderConfig, StockStyle,
};

/// How the artefact is distributed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// The library's stock OTA sender only.
    Stock,
    /// The meshfleet protocol only.
    Broadcast,
    /// Both on the same node.
    Auto,
}

impl Strategy {
    /// `stock`, `broadcast` or `auto`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::Broadcast => "broadcast",
            Self::Auto => "auto",
        }
    }

    /// Whether the stock flow runs.
    pub fn stock(self) -> bool {
        matches!(self, Self::Stock | Self::Auto)
    }

    /// Whether the meshfleet protocol runs.
    pub fn meshfleet(self) -> bool {
        matches!(self, Self::Broadcast | Self::Auto)
    }
}

/// How a source is configured.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// Which protocols.
    pub strategy: Strategy,
    /// Stock flow only: stock nodes install the image even if it is the MD5 they run (the
    /// library's unsigned flag). meshfleet nodes ignore it.
    pub forced: bool,
    /// The operator's signed intent for the image (meshfleet nodes): lets nodes in its
    /// scope install it although it is not newer, or they rolled it back.
    pub intent: Option<Intent>,
    /// The stock sender's packaging.
    pub style: StockStyle,
    /// The stock sender's timers.
    pub stock_sender: StockSenderConfig,
    /// Pacing of the meshfleet source, bytes per second per link (default: the engine's).
    pub link_rate: Option<u64>,
}

impl SourceConfig {
    /// Defaults for `strategy`: not forced, Alteriom stock style, the library's timers.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            forced: false,
            intent: None,
            style: StockStyle::ALTERIOM,
            stock_sender: StockSenderConfig::default(),
            link_rate: None,
        }
    }
}

/// What is offered, in the units every report uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offering {
    /// The artefact's manifest.
    pub manifest: Manifest,
    /// Chunks of the payload (the manifest's `chunk_count`, as `firmware inspect` shows).
    pub chunks: u32,
    /// Transfer units of the meshfleet protocol: the chunks plus the hash pages of the
    /// chunk table sent with them. Meshfleet progress counts these.
    pub units: u32,
    /// Parts of the stock flow (0 without it).
    pub parts: u32,
    /// Raw bytes per stock part.
    pub part_size: u32,
    /// Raw image bytes.
    pub image_len: u64,
    /// The stock flow runs too: it serves nodes that cannot decode the artefact.
    pub stock_flow: bool,
    /// The meshfleet protocol runs.
    pub meshfleet: bool,
}

impl Offering {
    /// Hash pages sent with the chunks.
    pub fn hash_pages(&self) -> u32 {
        self.units.saturating_sub(self.chunks)
    }
}

/// The sending plugins of a node.
#[derive(Debug)]
pub struct Source;

impl Source {
    /// Adds the sending plugins for `artefact` (verified by the caller; `image` is its
    /// decoded image, for the stock flow) to `node`.
    pub fn equip(
        node: &mut Node,
        artefact: Artefact,
        image: Vec<u8>,
        config: &SourceConfig,
    ) -> Result<Offering, OfferError> {
        let m = artefact.manifest().clone();
        let image_len = image.len() as u64;
        // The stock offer first: it is the one that can refuse the image.
        let stock = Self::stock_sender(&m, image, config)?;
        if config.strategy.meshfleet() {
            let mut cfg = MeshfleetConfig::new(m.role.clone(), m.hardware.clone());
            // Advertised in our CAPS: receivers that hold the campaign then never offer it
            // back to us.
            cfg.running = Some(Self::image_info(&m));
            // A source takes no update while it offers: the engine refuses a neighbour's
            // campaign with `Refusal::Source` and keeps serving its own.
            if let Some(rate) = config.link_rate {
                cfg.link_rate = rate;
            }
            // The source never stores anything: its chunks come from the artefact.
            node.add_plugin(Box::new(MeshfleetOta::source(
                cfg,
                Box::new(MemStore::new()),
                artefact,
                config.intent.clone(),
            )))?;
        }
        let offering = Self::offering(m, image_len, stock.as_ref(), config);
        if let Some(s) = stock {
            node.add_plugin(Box::new(s))?;
        }
        Ok(offering)
    }

    /// The stock sender for `image` (the decoded image of the artefact of manifest `m`),
    /// or `None` when the strategy has no stock flow. For a driver that holds the sending
    /// plugins itself (a gateway whose node already runs, `meshfleet-gateway`'s campaigns);
    /// [`Source::equip`] uses it too.
    pub fn stock_sender(
        m: &Manifest,
        image: Vec<u8>,
        config: &SourceConfig,
    ) -> Result<Option<StockSender>, OfferError> {
        if !config.strategy.stock() {
            return Ok(None);
        }
        let offer = StockOffer::new(image, m.role.clone(), m.hardware.clone(), config.style)?
            .forced(config.forced);
        Ok(Some(StockSender::new(offer, config.stock_sender.clone())))
    }

    /// What a source of manifest `m` offers, in the units the reports use (`image_len`:
    /// the decoded image's length; `stock`: its stock sender, if any).
    pub fn offering(
        m: Manifest,
        image_len: u64,
        stock: Option<&StockSender>,
        config: &SourceConfig,
    ) -> Offering {
        Offering {
            chunks: m.chunk_count,
            units: Layout::of(&m).units(),
            parts: stock.map_or(0, |s| s.offer().no_part()),
            part_size: config.style.raw_part_size(),
            image_len,
            stock_flow: config.strategy.stock(),
            meshfleet: config.strategy.meshfleet(),
            manifest: m,
        }
    }

    /// The running image a source of manifest `m` advertises in its CAPS.
    pub fn image_info(m: &Manifest) -> ImageInfo {
        ImageInfo {
            version: m.version.to_string(),
            sha256: m.sha256.to_hex(),
            md5: m.md5.to_hex(),
            size: m.size,
        }
    }

    /// Starts offering (announces, offers to the neighbours already there).
    pub fn start(node: &mut Node, now: Instant) {
        node.with_plugin::<MeshfleetOta, _>(now, |m, ctx| m.start(ctx));
        node.with_plugin::<StockSender, _>(now, |s, ctx| s.start(ctx));
    }
}
