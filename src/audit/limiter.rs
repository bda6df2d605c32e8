//! Refusals written to the audit at a bounded rate (issue 11 items 8 and 11): one mechanism
//! for refused requests and refused connections.
//!
//! A refused client can repeat its refusal as fast as the network allows; written one by one
//! (with `fdatasync`) they would fill the disk, and a full audit disk fails the gateway closed
//! for everyone. So each refusal takes a token from its terminal's bucket (the credential's
//! fingerprint, when one is known) and from its source address's bucket (IPv4 address or IPv6
//! /64); both buckets refill at `refusal_audit_rate` per second up to `refusal_audit_burst`.
//! With a token from each, the refusal is written as usual; without, it is **counted**: per
//! (kind, ingress, source, terminal, reason) the count and the first and last time, written as
//! one `suppressed` record every `refusal_summary_interval` (and at shutdown). Nothing is lost
//! silently: every refusal is either a line of its own or part of a summary's count.
//!
//! Memory is bounded too: at most [`MAX_KEYS`] buckets and [`MAX_KEYS`] tallies; beyond, a
//! flood from more sources than that shares one overflow bucket and one overflow tally
//! (source `*`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use time::OffsetDateTime;

use crate::audit::SuppressedRecord;
use crate::ingress::handshake::SourceKey;
use crate::site::config::FloodLimits;

/// Buckets (and tallies) tracked at most; beyond, the overflow key is shared.
pub const MAX_KEYS: usize = 10_000;

/// What a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A refused request (its `request` line).
    Request,
    /// A refused connection (its `connection` line).
    Connection,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Connection => "connection",
        }
    }
}

/// Who was refused, as far as known.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub ingress: &'a str,
    pub source: IpAddr,
    /// The credential's fingerprint (the terminal's bucket), when one was presented.
    pub fingerprint: Option<&'a str>,
    /// The registered terminal's name and the certificate's CN, for the summary.
    pub terminal: Option<&'a str>,
    pub cn: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Terminal(String),
    Source(SourceKey),
    Overflow,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TallyKey {
    kind: Kind,
    ingress: String,
    /// `None`: the overflow tally.
    source: Option<SourceKey>,
    fingerprint: Option<String>,
    reason: String,
}

#[derive(Debug, Clone)]
struct Tally {
    terminal: Option<String>,
    cn: Option<String>,
    count: u64,
    first: OffsetDateTime,
    last: OffsetDateTime,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<BucketKey, Bucket>,
    tallies: HashMap<TallyKey, Tally>,
}

/// The per-terminal and per-source refusal buckets, and the tallies of what they held back.
#[derive(Debug)]
pub struct RefusalLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

impl RefusalLimiter {
    pub fn new(limits: &FloodLimits) -> RefusalLimiter {
        RefusalLimiter {
            rate: limits.refusal_audit_rate.max(1e-6),
            burst: f64::from(limits.refusal_audit_burst.max(1)),
            state: Mutex::default(),
        }
    }

    /// True: write this refusal's record (and log it). False: it was counted for the next
    /// summary instead. `now` is the wall-clock time of the refusal.
    pub fn admit(&self, kind: Kind, who: &Subject<'_>, reason: &str, now: OffsetDateTime) -> bool {
        let at = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let source = SourceKey::of(who.source);
        let mut keys = vec![st.key_for(BucketKey::Source(source), self, at)];
        if let Some(fp) = who.fingerprint {
            keys.push(st.key_for(BucketKey::Terminal(fp.to_string()), self, at));
        }
        let (rate, burst) = (self.rate, self.burst);
        let all = keys.iter().all(|k| {
            st.buckets
                .get_mut(k)
                .is_some_and(|b| refill(b, at, rate, burst) >= 1.0)
        });
        if all {
            for k in &keys {
                if let Some(b) = st.buckets.get_mut(k) {
                    b.tokens -= 1.0;
                }
            }
            return true;
        }
        let mut key = TallyKey {
            kind,
            ingress: who.ingress.to_string(),
            source: Some(source),
            fingerprint: who.fingerprint.map(str::to_string),
            reason: reason.to_string(),
        };
        if !st.tallies.contains_key(&key) && st.tallies.len() >= MAX_KEYS - 1 {
            key.source = None;
            key.fingerprint = None;
        }
        let overflow = key.source.is_none();
        let t = st.tallies.entry(key).or_insert_with(|| Tally {
            terminal: if overflow {
                None
            } else {
                who.terminal.map(str::to_string)
            },
            cn: if overflow {
                None
            } else {
                who.cn.map(str::to_string)
            },
            count: 0,
            first: now,
            last: now,
        });
        t.count += 1;
        t.last = now;
        false
    }

    /// Takes every tally as a summary record (for the periodic writer and for shutdown).
    pub fn drain(&self, site: &str, now: OffsetDateTime) -> Vec<SuppressedRecord> {
        let tallies = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut st.tallies)
        };
        let time = crate::audit::format_time(now);
        let mut out: Vec<SuppressedRecord> = tallies
            .into_iter()
            .map(|(k, t)| SuppressedRecord {
                time: time.clone(),
                site: site.to_string(),
                of: k.kind.as_str().to_string(),
                ingress: k.ingress,
                source: k.source.map_or_else(|| "*".into(), |s| s.ip().to_string()),
                terminal: t.terminal,
                cn: t.cn,
                reason: k.reason,
                count: t.count,
                first: crate::audit::format_time(t.first),
                last: crate::audit::format_time(t.last),
            })
            .collect();
        out.sort_by(|a, b| a.first.cmp(&b.first));
        out
    }

    /// Refusals counted and not yet summarised.
    pub fn pending(&self) -> u64 {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.tallies.values().map(|t| t.count).sum()
    }
}

impl State {
    /// `key`, or the overflow key when the table is full (after dropping full, i.e. idle,
    /// buckets); the bucket exists afterwards.
    fn key_for(&mut self, key: BucketKey, l: &RefusalLimiter, at: Instant) -> BucketKey {
        if self.buckets.contains_key(&key) {
            return key;
        }
        // One place is kept for the overflow bucket.
        if self.buckets.len() >= MAX_KEYS - 1 {
            let (rate, burst) = (l.rate, l.burst);
            self.buckets
                .retain(|k, b| *k == BucketKey::Overflow || refill(b, at, rate, burst) < burst);
        }
        let key = if self.buckets.len() >= MAX_KEYS - 1 {
            BucketKey::Overflow
        } else {
            key
        };
        self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: l.burst,
            at,
        });
        key
    }
}

/// Adds the tokens earned since the bucket's last look; returns what it holds now.
fn refill(b: &mut Bucket, at: Instant, rate: f64, burst: f64) -> f64 {
    let earned = at.saturating_duration_since(b.at).as_secs_f64() * rate;
    b.tokens = (b.tokens + earned).min(burst);
    b.at = at;
    b.tokens
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32) -> RefusalLimiter {
        RefusalLimiter::new(&FloodLimits {
            refusal_audit_rate: rate,
            refusal_audit_burst: burst,
            ..FloodLimits::default()
        })
    }

    fn who<'a>(source: &str, fp: Option<&'a str>) -> Subject<'a> {
        Subject {
            ingress: "mtls",
            source: source.parse().unwrap(),
            fingerprint: fp,
            terminal: fp,
            cn: None,
        }
    }

    /// Art 12.8 / item 8: the burst is written, the rest is counted, and the summary carries
    /// the exact count with its first and last time; nothing is lost.
    #[test]
    fn art_12_8_beyond_the_burst_refusals_are_counted_into_one_summary() {
        let l = limiter(0.001, 5);
        let t0 = OffsetDateTime::now_utc();
        let written = (0..100)
            .filter(|i| {
                let now = t0 + time::Duration::milliseconds(*i);
                l.admit(
                    Kind::Request,
                    &who("192.0.2.7", Some("fp1")),
                    "terminal-revoked",
                    now,
                )
            })
            .count();
        assert_eq!(written, 5);
        assert_eq!(l.pending(), 95);
        let s = l.drain("site", t0);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].count, 95);
        assert_eq!(s[0].of, "request");
        assert_eq!(s[0].source, "192.0.2.7");
        assert_eq!(s[0].terminal.as_deref(), Some("fp1"));
        assert_eq!(
            s[0].first,
            crate::audit::format_time(t0 + time::Duration::milliseconds(5))
        );
        assert_eq!(
            s[0].last,
            crate::audit::format_time(t0 + time::Duration::milliseconds(99))
        );
        assert_eq!(l.pending(), 0, "drained");
        assert!(l.drain("site", t0).is_empty());
    }

    /// A terminal's bucket holds across source addresses, and a source's across terminals.
    #[test]
    fn terminal_and_source_buckets_each_limit() {
        let l = limiter(0.001, 3);
        let now = OffsetDateTime::now_utc();
        let by_terminal = (0..10)
            .filter(|i| {
                let src = format!("192.0.2.{i}");
                l.admit(Kind::Request, &who(&src, Some("fp")), "x", now)
            })
            .count();
        assert_eq!(by_terminal, 3, "one terminal from ten addresses");
        let by_source = (0..10)
            .filter(|i| {
                let fp = format!("fp-{i}");
                l.admit(Kind::Connection, &who("198.51.100.1", Some(&fp)), "x", now)
            })
            .count();
        assert_eq!(by_source, 3, "ten credentials from one address");
    }

    /// The bucket refills at the configured rate.
    #[test]
    fn tokens_come_back_at_the_rate() {
        let l = limiter(50.0, 1);
        let now = OffsetDateTime::now_utc();
        let w = who("192.0.2.1", None);
        assert!(l.admit(Kind::Connection, &w, "x", now));
        assert!(!l.admit(Kind::Connection, &w, "x", now));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(l.admit(Kind::Connection, &w, "x", now));
    }

    /// Memory stays bounded under a flood from more sources than tracked: the excess shares
    /// the overflow bucket and the overflow tally, still counted.
    #[test]
    fn a_flood_from_many_sources_stays_bounded_and_counted() {
        let l = limiter(0.001, 1);
        let now = OffsetDateTime::now_utc();
        let n = MAX_KEYS + 500;
        let mut written = 0;
        for i in 0..n {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000_u32 + i as u32));
            let w = Subject {
                source: ip,
                ..who("0.0.0.0", None)
            };
            // Two refusals each: the first may be written, the second is counted.
            for _ in 0..2 {
                if l.admit(Kind::Connection, &w, "x", now) {
                    written += 1;
                }
            }
        }
        let st = l.state.lock().unwrap();
        assert!(st.buckets.len() <= MAX_KEYS);
        assert!(st.tallies.len() <= MAX_KEYS);
        drop(st);
        let summaries = l.drain("site", now);
        let counted: u64 = summaries.iter().map(|s| s.count).sum();
        assert_eq!(
            written as u64 + counted,
            2 * n as u64,
            "every refusal is accounted for"
        );
        assert!(summaries.iter().any(|s| s.source == "*"));
    }
}
