//! Running the gateway: [`server`] wires every stage together (bind, serve, reload, drain),
//! [`metrics`] for Prometheus, [`shutdown`], the Japan-time [`clock`], the command's
//! [`exit`] statuses, admin [`dates`], error chains for logs ([`errors`]), and the [`demo`].

pub mod clock;
pub(crate) mod dates;
pub mod demo;
pub mod demo_network;
pub(crate) mod errors;
pub mod exit;
pub mod metrics;
pub mod server;
pub mod shutdown;
