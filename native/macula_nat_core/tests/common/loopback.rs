//! Nodes and in-process rendezvous on 127.0.0.1, for the loopback tests of
//! signalling across rendezvous (reach, several homes).

use macula_nat_core::{Identity, Node, NodeConfig, Rendezvous};
use macula_nat_proto::record::Contact;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn node() -> Arc<Node> {
    Node::open(NodeConfig { bind: "127.0.0.1:0".parse().unwrap() }, Identity::generate()).unwrap()
}

/// A rendezvous in this process (it does not die while the test holds it).
pub struct Rdv {
    pub node: Arc<Node>,
    _rv: Rendezvous,
}

impl Rdv {
    pub fn start() -> Rdv {
        let node = node();
        let _rv = Rendezvous::serve(node.clone()).unwrap();
        Rdv { node, _rv }
    }

    pub fn addr(&self) -> SocketAddr {
        self.node.local_addr().unwrap()
    }

    pub fn contact(&self) -> Contact {
        Contact { node_id: self.node.node_id(), addr: self.addr() }
    }
}
