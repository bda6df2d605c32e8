//! Argon2 with bounded memory (issue 11 item 6).
//!
//! Argon2id is memory-hard on purpose: each password check fills `m_cost` KiB (19 MiB with the
//! crate's defaults). Run on the blocking pool, a few hundred concurrent sign-in attempts ran a
//! few hundred checks at once and took the gateway past 4 GiB, and the allocator kept most of it
//! afterwards. Here every hash and check runs on a fixed pool of worker threads, one per core,
//! each with **one** memory buffer that it allocates at its first use and reuses for every later
//! check: the gateway's Argon2 memory is at most `workers × m_cost`, whatever the load.
//!
//! A request takes a [`Slot`] first ([`Hasher::try_slot`]): there are `workers ×
//! SLOTS_PER_WORKER` of them, so at most that many checks run or wait (a short queue, a few
//! hash times long). Without a free slot the caller is refused at once ([`Busy`], a 429 page)
//! instead of piling up work and memory.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::Rng;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::policy::auth::AuthError;

/// Checks that may wait behind each worker's current one (slots = workers × this).
pub const SLOTS_PER_WORKER: usize = 4;

/// Largest Argon2 memory a stored hash may ask for (KiB): a hash with more is never checked,
/// so a worker's buffer never grows past this (64 MiB).
pub const MAX_M_COST_KIB: u32 = 64 * 1024;

/// All slots are taken: refuse the attempt (429), nothing was hashed or counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all password-hashing slots are busy")]
pub struct Busy;

/// A computation for a worker. It holds its slot's permit until the worker is done with it, so
/// a caller that goes away (the client disconnected) frees no slot while its job still waits
/// or runs: queued and running work never exceeds the slots.
enum Job {
    Verify {
        password: String,
        hash: String,
        reply: oneshot::Sender<bool>,
        _permit: Arc<OwnedSemaphorePermit>,
    },
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, AuthError>>,
        _permit: Arc<OwnedSemaphorePermit>,
    },
}

/// The bounded Argon2 worker pool. Cheap to share (`Arc` inside).
#[derive(Debug, Clone)]
pub struct Hasher {
    slots: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Verify { .. } => "Job::Verify",
            Job::Hash { .. } => "Job::Hash",
        })
    }
}

impl Hasher {
    /// One worker per core the process may use (`available_parallelism`, which honours CPU
    /// affinity and cgroup quotas).
    pub fn for_this_machine() -> Hasher {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Hasher::new(cores, cores * SLOTS_PER_WORKER)
    }

    /// `workers` threads (at least 1) and `slots` checks running or waiting (at least
    /// `workers`).
    pub fn new(workers: usize, slots: usize) -> Hasher {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing worker");
            }
        }
        Hasher {
            slots: Arc::new(Semaphore::new(slots.max(workers))),
            jobs: tx,
        }
    }

    /// A slot for one check or hash, or [`Busy`] when all are taken (never waits).
    pub fn try_slot(&self) -> Result<Slot, Busy> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| Busy)?;
        Ok(Slot {
            permit: Arc::new(permit),
            jobs: self.jobs.clone(),
        })
    }
}

/// The right to run one Argon2 computation; held until it is done.
#[derive(Debug)]
pub struct Slot {
    permit: Arc<OwnedSemaphorePermit>,
    jobs: mpsc::Sender<Job>,
}

impl Slot {
    /// True when `password` matches the stored PHC `hash`. A malformed hash, or one asking
    /// for more than [`MAX_M_COST_KIB`], never matches.
    pub async fn verify(&self, password: String, hash: String) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .jobs
            .send(Job::Verify {
                password,
                hash,
                reply,
                _permit: self.permit.clone(),
            })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A new Argon2id hash of `password` (PHC string), with the crate's default parameters.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Hash {
                password,
                reply,
                _permit: self.permit.clone(),
            })
            .map_err(|_| AuthError::Hash("the hashing workers have stopped".into()))?;
        rx.await
            .map_err(|_| AuthError::Hash("the hashing worker stopped".into()))?
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    // This worker's Argon2 memory: grown once to the largest cost seen, then reused.
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        match job {
            Job::Verify {
                password,
                hash,
                reply,
                _permit,
            } => {
                let ok = verify_with(&mut memory, &password, &hash);
                // The slot is free before the caller hears back.
                drop(_permit);
                let _ = reply.send(ok);
            }
            Job::Hash {
                password,
                reply,
                _permit,
            } => {
                let hashed = hash_with(&mut memory, &password);
                drop(_permit);
                let _ = reply.send(hashed);
            }
        }
    }
}

fn blocks(memory: &mut Vec<Block>, n: usize) -> &mut [Block] {
    if memory.len() < n {
        memory.resize(n, Block::default());
    }
    &mut memory[..n]
}

/// [`argon2::PasswordVerifier::verify_password`], in caller-provided memory.
pub fn verify_with(memory: &mut Vec<Block>, password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let n = argon.params().block_count();
    let computed = Output::init_with(expected.len(), |out| {
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, out, blocks(memory, n))
            .map_err(|_| argon2::password_hash::Error::Password)
    });
    // `Output`'s equality is constant-time.
    computed.is_ok_and(|c| c == expected)
}

/// [`crate::policy::auth::hash_password`], in caller-provided memory.
fn hash_with(memory: &mut Vec<Block>, password: &str) -> Result<String, AuthError> {
    let err = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
    let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>()).map_err(|e| err(&e))?;
    let params = Params::default();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let n = argon.params().block_count();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|e| err(&e))?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt_bytes, out, blocks(memory, n))
            .map_err(|_| argon2::password_hash::Error::Password)
    })
    .map_err(|e| err(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's hashes and checks agree with the crate's own, both ways.
    #[test]
    fn pool_hashes_and_checks_agree_with_the_argon2_crate() {
        let mut memory = Vec::new();
        let ours = hash_with(&mut memory, "Ishizuchi-1982").unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(crate::policy::auth::verify_password(
            "Ishizuchi-1982",
            &ours
        ));
        assert!(!crate::policy::auth::verify_password(
            "Ishizuchi-1983",
            &ours
        ));
        let theirs = crate::policy::auth::hash_password("Shimanto-River-2").unwrap();
        assert!(verify_with(&mut memory, "Shimanto-River-2", &theirs));
        assert!(!verify_with(&mut memory, "Shimanto-River-3", &theirs));
        assert!(!verify_with(&mut memory, "x", "not a hash"));
        assert!(!verify_with(
            &mut memory,
            "x",
            "$argon2id$v=19$m=19456,t=2,p=1$"
        ));
        // The buffer was allocated once, at the default cost.
        assert_eq!(memory.len(), Params::default().block_count());
    }

    /// A stored hash that asks for more memory than the bound is never computed.
    #[test]
    fn hashes_asking_for_more_than_the_bound_never_match() {
        let big = Params::new(MAX_M_COST_KIB + 8, 1, 1, None).unwrap();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, big);
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        use argon2::PasswordHasher;
        let h = argon
            .hash_password(b"pw-123456", &salt)
            .unwrap()
            .to_string();
        let mut memory = Vec::new();
        assert!(!verify_with(&mut memory, "pw-123456", &h));
        assert!(memory.is_empty());
    }

    /// Slots bound what runs and waits: beyond them, `Busy` at once; a freed slot is reusable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_bound_concurrent_checks() {
        let h = Hasher::new(1, 2);
        let a = h.try_slot().unwrap();
        let b = h.try_slot().unwrap();
        assert_eq!(h.try_slot().unwrap_err(), Busy);
        let hash = a.hash("Tanuki-2026!".into()).await.unwrap();
        assert!(b.verify("Tanuki-2026!".into(), hash.clone()).await);
        drop(a);
        let c = h.try_slot().unwrap();
        assert!(!c.verify("Tanuki-2027!".into(), hash).await);
    }

    /// A caller that gives up (its future dropped: the client went away) frees its slot only
    /// when its job is done, so queued work never exceeds the slots.
    #[tokio::test]
    async fn a_job_keeps_its_slot_after_its_caller_gives_up() {
        // No worker: a sent job waits in the queue for good.
        let (tx, rx) = mpsc::channel::<Job>();
        let h = Hasher {
            slots: Arc::new(Semaphore::new(1)),
            jobs: tx,
        };
        let d = h.try_slot().unwrap();
        // Polled once (the job is sent), then dropped.
        let gave_up = tokio::time::timeout(
            std::time::Duration::ZERO,
            d.verify("pw".into(), "hash".into()),
        )
        .await;
        assert!(gave_up.is_err());
        drop(d);
        assert_eq!(
            h.try_slot().unwrap_err(),
            Busy,
            "the queued job holds the slot"
        );
        // The job done (here: taken off the queue and dropped), the slot is free again.
        drop(rx.try_recv().unwrap());
        assert!(h.try_slot().is_ok());
    }
}
