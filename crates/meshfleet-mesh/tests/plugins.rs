//! The package-type registry: one owner per package type and binary tag, refused
//! overlaps, dispatch to the owner, typed handles instead of downcasting in plugins.
#![allow(clippy::unwrap_used)]

mod common;

use common::Net;
use meshfleet_mesh::wire::{Package, Routing};
use meshfleet_mesh::{
    AddPluginError, Claims, Config, Ctx, DropReason, Duration, Event, LinkId, Node, NodeId, Plugin,
    PluginHandle,
};

/// Counts the packages it receives.
#[derive(Default)]
struct Counter {
    name: &'static str,
    claims: Claims,
    got: Vec<(i64, NodeId)>,
}

impl Counter {
    fn new(name: &'static str, claims: Claims) -> Self {
        Self {
            name,
            claims,
            got: Vec::new(),
        }
    }
}

impl Plugin for Counter {
    fn name(&self) -> &'static str {
        self.name
    }

    fn claims(&self) -> Claims {
        self.claims.clone()
    }

    fn handle_package(&mut self, _: &mut Ctx<'_>, _: LinkId, _: Routing, pkg: &Package) {
        self.got.push((pkg.ty(), pkg.from()));
    }
}

/// Another plugin type, so that lookups by type are tested too.
struct Other(Counter);

impl Plugin for Other {
    fn name(&self) -> &'static str {
        self.0.name
    }

    fn claims(&self) -> Claims {
        self.0.claims()
    }

    fn handle_package(&mut self, ctx: &mut Ctx<'_>, link: LinkId, r: Routing, pkg: &Package) {
        self.0.handle_package(ctx, link, r, pkg);
    }
}

#[test]
fn overlapping_claims_are_refused_with_the_owner_named() {
    let mut node = Node::new(Config::new(NodeId(2)));
    node.add_plugin(Box::new(Counter::new(
        "a",
        Claims::none().types(900..=905).tag(900),
    )))
    .unwrap();
    // A range that overlaps at its start: the first shared type is named.
    let err = node
        .add_plugin(Box::new(Other(Counter::new(
            "b",
            Claims::none().types(903..=910),
        ))))
        .unwrap_err();
    assert_eq!(
        err,
        AddPluginError::TypeClaimed {
            plugin: "b",
            ty: 903,
            owner: "a"
        }
    );
    // A binary tag taken.
    let err = node
        .add_plugin(Box::new(Other(Counter::new("c", Claims::none().tag(900)))))
        .unwrap_err();
    assert_eq!(
        err,
        AddPluginError::TagClaimed {
            plugin: "c",
            tag: 900,
            owner: "a"
        }
    );
    assert!(err.to_string().contains("already handles"), "{err}");
    // Refused plugins are not on the node; a disjoint one is.
    assert!(node.plugin::<Other>().is_none());
    node.add_plugin(Box::new(Other(Counter::new("d", Claims::none().ty(906)))))
        .unwrap();
    assert!(node.plugin::<Other>().is_some());
}

#[test]
fn packages_go_to_their_owner_through_the_registry_and_the_rest_is_reported() {
    let mut net = Net::new(Duration::from_millis(2));
    let a = net.add_id(1);
    let mut node = Node::new(Config::new(NodeId(2)));
    let first = node
        .add_plugin(Box::new(Counter::new(
            "first",
            Claims::none().types(900..=901),
        )))
        .unwrap();
    let second = node
        .add_plugin(Box::new(Counter::new("second", Claims::none().ty(902))))
        .unwrap();
    let b = net.add(node);
    net.connect(b, a);
    net.run_for(Duration::from_secs(1));
    let now = net.now;
    for ty in [900, 902, 901, 950] {
        let text = format!(r#"{{"from":1,"routing":1,"type":{ty},"dest":2}}"#);
        let pkg = Package::from_text(text).unwrap();
        net.nodes[a].send_package(now, &pkg).unwrap();
    }
    net.drain(a);
    net.run_for(Duration::from_millis(100));
    // Two plugins of one type: each handle reaches its own.
    let got = |net: &Net, h: PluginHandle<Counter>| net.nodes[b].plugin_at(h).unwrap().got.clone();
    assert_eq!(got(&net, first), vec![(900, NodeId(1)), (901, NodeId(1))]);
    assert_eq!(got(&net, second), vec![(902, NodeId(1))]);
    let unhandled: Vec<_> = net.events[b]
        .iter()
        .filter_map(|e| match e {
            Event::FrameDropped {
                reason: DropReason::Unhandled(ty),
                ..
            } => Some(*ty),
            _ => None,
        })
        .collect();
    assert_eq!(unhandled, vec![950]);
    // `with_plugin_at` runs the handle's plugin with a context.
    let id = net.nodes[b].with_plugin_at(second, now, |p, ctx| {
        p.got.clear();
        ctx.node_id()
    });
    assert_eq!(id, Some(NodeId(2)));
    assert!(got(&net, second).is_empty());
}
