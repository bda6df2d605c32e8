//! A site's files: its configuration ([`config`]), created by [`init`] with its PKI ([`pki`]),
//! the host firewall derived from it ([`firewall`]), and the checks that the service user can
//! read what it names ([`filecheck`]) and that nothing in the state is open to others
//! ([`fsmode`]); a network of sites sharing one regional CA and registry ([`network`]).

pub mod config;
pub(crate) mod filecheck;
pub mod firewall;
pub mod fsmode;
pub mod init;
pub mod network;
pub mod pki;
