//! NAT lab toolkit (see issue 3).
