//! # seibo-gate
//!
//! A zero-trust gateway for Seibo Net (せい坊ネット), the regional medical network of Seiyo
//! City: it stands in each site's DMZ in front of the web EMR and lets a physician's
//! **registered terminal** view a **consented patient's** records, and nothing else.
//!
//! ## The request path
//!
//! ```text
//! listener ──▶ peer identity ──▶ decision ────────────────▶ audit ──▶ forward ──▶ outcome
//! (mTLS,       (certificate      (terminal + physician,     (durable   (private   (status,
//!  allow-list)  fingerprint)      route → patient+category,  before     EMR only)  bytes,
//!                                 consent window)            forward)             duration)
//! ```
//!
//! ## Layout
//!
//! * [`listener`]: accept, source allow-list, TLS handshake, HTTP/1.1 + HTTP/2 serving.
//! * [`ingress_backoff`]: exponential backoff (5 ms → 1 s) of accept loops after errors such as EMFILE.
//! * [`handshake`]: the budget of handshakes in progress (apart from the connection slots).
//! * [`refusals`]: refusals written to the audit at a bounded rate, the rest summarised.
//! * [`tls`]: the mutual-TLS server configuration and the peer's certificate identity.
//! * [`wireguard`]: the WireGuard ingress: one UDP socket, boringtun per peer, smoltcp TCP →
//!   streams that carry the peer's identity; only the gateway's tunnel address and ports answer;
//!   `wireguard::conf`: a terminal's wg-quick configuration.
//! * [`service`]: the request path above, in one function.
//! * [`identity`]: fingerprint → registered terminal → active physician.
//! * [`route`]: path normalisation and the route table (URL → patient + record category).
//! * [`consent`]: the consent window (999 days, 2 years back, extension, withdrawal).
//! * [`decision`]: identity, route and consent combined into allow or a typed refusal.
//! * [`forward`]: the pooled client to the EMR, restricted to the private segment.
//! * [`audit`]: the hash-chained, append-only audit log with group commit.
//! * [`pages`]: every page the gateway answers with (Japanese first, English second).
//! * [`start`]: the site's start page (`[site] home`), where `/` and sign-in lead.
//! * [`whoami`]: the "who am I" page (physician, terminal, ingress, session end).
//! * [`store`]: the registries in sled; [`model`]: their value types.
//! * [`admin`]: admin requests, over the gateway's Unix socket or directly.
//! * [`config`]: TOML → validated [`config::Config`]; [`init`]: a new site's files;
//!   [`filecheck`]: can the service user read every file the config names (`check-config`).
//! * [`dates`]: dates typed by an admin, checked against today.
//! * [`exit`]: the command's exit statuses (sysexits) and the error → status map.
//! * [`hashing`]: Argon2 on a fixed pool with bounded slots and memory; [`signin_rate`]:
//!   password tries per terminal.
//! * [`pki`]: the terminal CA, server and client certificates, PKCS#12.
//! * [`server`]: `bind` (every socket from the config) and `serve` (a bound gateway on a clock
//!   until a shutdown signal) — everything wired together; [`metrics`]: Prometheus.
//! * [`cli`]: what each `seibo-gate` subcommand does (`main.rs` parses and dispatches);
//!   [`terminal_issue`]: a terminal's credential files and registry record.
//! * [`fsmode`]: the state directory's file modes (umask 0077, nothing open to others).
//! * [`demo`]: the sample EMR and the one-command demo.

#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn_slots;
pub mod connection;
pub mod consent;
pub mod dates;
pub mod decision;
pub mod demo;
pub mod errors;
pub mod exchange;
pub mod exit;
pub mod filecheck;
pub mod firewall;
pub mod forward;
pub mod fsmode;
pub mod gate;
pub mod handshake;
pub mod hashing;
pub mod identity;
pub mod ids;
pub mod ingress_backoff;
pub mod init;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod outcome;
pub mod own_paths;
pub mod pages;
pub mod peer;
pub mod pki;
pub mod policy;
pub mod refusals;
pub mod route;
pub mod server;
pub mod service;
pub mod session;
pub mod shutdown;
pub mod signin;
pub mod signin_rate;
pub mod start;
pub mod store;
pub mod terminal_issue;
pub mod tls;
pub mod tunnel;
pub mod whoami;
pub mod wireguard;
