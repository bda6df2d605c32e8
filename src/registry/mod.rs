//! The registries the policy reads and the admin surface writes: physicians, terminals,
//! consents ([`model`]), kept in sled ([`store`]), with ids parsed once ([`ids`]).

pub(crate) mod ids;
pub mod model;
pub mod store;
