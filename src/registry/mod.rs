//! The registries the policy reads and the admin surface writes: physicians, terminals,
//! consents ([`model`]), kept by [`store`] over one of two backends ([`backend`]: sled
//! embedded, or the regional registry on etcd), with ids parsed once ([`ids`]).

pub(crate) mod backend;
pub(crate) mod ids;
pub mod model;
pub mod relation;
pub mod store;

pub use backend::{KvError, RegistryHealth, RegistryStatus};
