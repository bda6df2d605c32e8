//! # seibo-gate
//!
//! A zero-trust gateway for Seibo Net (せい坊ネット), the regional medical network of Seiyo
//! City: it stands in each site's DMZ in front of the web EMR and lets a physician's
//! **registered terminal** view a **consented patient's** records, and nothing else.
//!
//! ## The request path
//!
//! ```text
//! ingress ─────────▶ policy ──────────────────────▶ audit ─────▶ egress ──────▶ outcome
//! (mTLS or          (framing, terminal + physician, (durable      (the private  (status,
//!  WireGuard:        session, route → patient +      before        EMR only)     bytes,
//!  a Peer)           category, consent window)       forwarding)                 duration)
//! ```
//!
//! [`service::handle`] reads top to bottom as that path: one [`exchange::Exchange`] per
//! request, [`policy::check`] answers with a [`policy::Plan`], the audit record is written, the
//! request is forwarded or answered, and [`outcome`] writes how it ended.
//!
//! ## Layout
//!
//! The folders follow the request path; no module uses one that uses it back.
//!
//! * [`ingress`]: the connection layer — the mutual-TLS [`ingress::listener`], the
//!   [`ingress::wireguard`] ingress and the TLS [`ingress::tunnel`] inside it, what both share
//!   ([`ingress::connection`]: handshake budget, refusals, serving a connection), the
//!   connection's identity ([`ingress::peer`]), [`ingress::tls`], [`ingress::handshake`],
//!   [`ingress::slots`], [`ingress::backoff`]; the read-only [`ingress::peer_api`] other site
//!   gateways of the network ask for audit rows.
//! * [`service`]: the request path in one function; [`gate`]: what every request shares (and
//!   the reloadable configuration); [`exchange`]: one request's context; [`outcome`]: every
//!   request's outcome line, client-closed requests, refusal responses; [`pages`]: every page
//!   the gateway answers with (Japanese first, English second).
//! * [`policy`]: every refusal check in order — [`policy::identity`] (credential → terminal →
//!   physician), [`policy::session`] and [`policy::signin`] (the second factor, with
//!   [`policy::auth`], [`policy::hashing`], [`policy::signin_rate`]), [`policy::route`] (URL →
//!   patient + record category), [`policy::consent`] (the viewing window),
//!   [`policy::decision`] (the typed decision and refusals); the gateway's own pages
//!   ([`policy::own_paths`], [`policy::whoami`]) and the start page ([`policy::start`]).
//! * [`egress`]: [`egress::forward`], the pooled client to the EMR in the private segment.
//! * [`audit`]: the hash-chained, append-only audit log with group commit, its index, verify
//!   and query, and the rate limit of refusal records ([`audit::limiter`]).
//! * [`registry`]: the registries in sled ([`registry::store`]), their value types
//!   ([`registry::model`]) and ids ([`registry::ids`]).
//! * [`admin`]: admin requests over the gateway's Unix socket or directly, and a terminal's
//!   credential ([`admin::terminal_issue`]); [`cli`]: what each `seibo-gate` subcommand does
//!   (`main.rs` parses and dispatches).
//! * [`site`]: a site's files — [`site::config`] (TOML → validated types), [`site::init`],
//!   [`site::pki`], [`site::network`] (the regional CA, site bundles, joining a site),
//!   [`site::firewall`], [`site::filecheck`], [`site::fsmode`].
//! * [`office`]: the liaison office's console (issue 15) — its listener, staff sign-in,
//!   sessions and CSRF, the pages (minijinja templates), all changes through [`admin`].
//! * [`ops`]: [`ops::server`] (bind, serve, reload, drain), [`ops::metrics`],
//!   [`ops::shutdown`], [`ops::clock`] (Japan time), [`ops::exit`], [`ops::dates`],
//!   [`ops::errors`], [`ops::demo`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cli;
pub(crate) mod egress;
pub(crate) mod exchange;
pub(crate) mod gate;
pub mod ingress;
pub mod office;
pub mod ops;
pub(crate) mod outcome;
pub mod pages;
pub mod policy;
pub mod registry;
pub(crate) mod service;
pub mod site;
