//! How a sampler's seed becomes the keys of its calls' random streams, and how streams are copied,
//! spawned and handed to worker processes.
//!
//! A sampler holds a `base` key (from the user's seed, or from the OS when there is none) and two counters:
//! call `i` that draws from the sampler's own stream uses the key `derive(base, i)`; a call given an explicit
//! seed is stateless and uses [`stateless_key`]. Children made by [`Keys::spawn`] get bases derived from the
//! parent's base and a running child index (the model is NumPy's `SeedSequence.spawn`), so the j-th child of
//! a sampler seeded with s draws the same stream in every run, and no two children share one. A worker
//! process (a PyTorch DataLoader worker) continues from [`Keys::for_worker`]: the base is mixed with the
//! sampler's position and the worker's seed.
//!
//! The policy lives here, in the core, so that a Rust caller reproduces the Python API's streams exactly
//! (`tests/value_stability.rs` pins them).

use crate::rng::{derive, mix64, os_seed};
use std::sync::atomic::{AtomicU64, Ordering};

/// Domain tags: the same seed must give unrelated keys for the different uses.
const STREAM_TAG: u64 = 0x1319_8a2e_0370_7344;
const STATELESS_TAG: u64 = 0x243f_6a88_85a3_08d3;
const SPAWN_TAG: u64 = 0xa409_3822_299f_31d0;
const WORKER_TAG: u64 = 0x082e_fa98_ec4e_6c89;

/// The key of a stateless call with an explicit `seed` (the same key whatever the sampler's state).
pub fn stateless_key(seed: u64) -> u64 {
    derive(mix64(seed ^ STATELESS_TAG), 0)
}

/// The state of a sampler's random stream, as plain numbers (what a pickle carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyState {
    /// The key that the call keys are derived from.
    pub base: u64,
    /// How many calls have drawn from the stream.
    pub calls: u64,
    /// How many children [`Keys::spawn`] has made.
    pub spawned: u64,
    /// Whether the stream comes from a user's seed (else from the OS's entropy).
    pub seeded: bool,
}

/// A sampler's stream: its base key and its counters. Calls from several threads may share it: each call
/// takes the next index atomically.
#[derive(Debug)]
pub struct Keys {
    base: u64,
    seeded: bool,
    calls: AtomicU64,
    spawned: AtomicU64,
}

impl Keys {
    /// The stream of a sampler built with `seed` (any u64), or with fresh OS entropy when `seed` is None.
    pub fn new(seed: Option<u64>) -> Self {
        Self::from_state(KeyState {
            base: mix64(seed.unwrap_or_else(os_seed) ^ STREAM_TAG),
            calls: 0,
            spawned: 0,
            seeded: seed.is_some(),
        })
    }

    /// The stream in the state `s` (as [`Keys::state`] returned it).
    pub fn from_state(s: KeyState) -> Self {
        Keys {
            base: s.base,
            seeded: s.seeded,
            calls: AtomicU64::new(s.calls),
            spawned: AtomicU64::new(s.spawned),
        }
    }

    /// The current state: a stream built from it continues with the same keys.
    pub fn state(&self) -> KeyState {
        KeyState {
            base: self.base,
            calls: self.calls.load(Ordering::Relaxed),
            spawned: self.spawned.load(Ordering::Relaxed),
            seeded: self.seeded,
        }
    }

    /// Whether the stream comes from a user's seed.
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// The key of the next call that draws from this stream (`derive(base, i)` for call i).
    pub fn next_key(&self) -> u64 {
        derive(self.base, self.calls.fetch_add(1, Ordering::Relaxed))
    }

    /// The key of a call: the stateless key of `seed` when there is one, else the stream's next key.
    pub fn key(&self, seed: Option<u64>) -> u64 {
        seed.map_or_else(|| self.next_key(), stateless_key)
    }

    /// `n` children with independent streams: child j of all those ever spawned from this stream has the
    /// base `derive(mix64(base ^ SPAWN_TAG), j)` and no calls yet. They are seeded when this stream is.
    pub fn spawn(&self, n: u64) -> Vec<Keys> {
        let first = self.spawned.fetch_add(n, Ordering::Relaxed);
        let root = mix64(self.base ^ SPAWN_TAG);
        (0..n)
            .map(|j| {
                Self::from_state(KeyState {
                    base: derive(root, first.wrapping_add(j)),
                    calls: 0,
                    spawned: 0,
                    seeded: self.seeded,
                })
            })
            .collect()
    }

    /// The stream a worker process continues with: a function of this stream's base, its position (calls
    /// made) and the worker's seed, so that workers with different seeds draw unrelated streams and the same
    /// worker seed gives the same stream again.
    pub fn for_worker(&self, worker_seed: u64) -> Keys {
        let s = self.state();
        let here = derive(mix64(s.base ^ WORKER_TAG), s.calls);
        Self::from_state(KeyState { base: derive(here, worker_seed), calls: 0, spawned: 0, seeded: s.seeded })
    }

    /// The stream of a copy of the sampler (pickled, or copied): a seeded stream continues from its state;
    /// an unseeded one gets fresh OS entropy, so that no two copies (often in other processes) share it.
    pub fn copy(&self) -> Keys {
        let s = self.state();
        if s.seeded {
            Keys::from_state(s)
        } else {
            Keys::new(None)
        }
    }

    /// The stream to use in a freshly forked child process: new OS entropy for an unseeded stream (parent
    /// and child must never share it), None for a seeded one (it continues where the parent was).
    pub fn after_fork(&self) -> Option<Keys> {
        (!self.seeded).then(|| Keys::new(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_advance_and_restore() {
        let k = Keys::new(Some(11));
        let a = k.next_key();
        let copy = Keys::from_state(k.state());
        assert_eq!(copy.next_key(), k.next_key());
        assert_ne!(a, copy.next_key());
        assert_eq!(Keys::new(Some(11)).next_key(), a);
        assert_eq!(k.key(Some(3)), stateless_key(3));
        assert_eq!(k.state().calls, 2, "a stateless call does not advance the stream");
    }

    #[test]
    fn children_are_reproducible_and_distinct() {
        let a = Keys::new(Some(11)).spawn(3);
        let b = Keys::new(Some(11)).spawn(3);
        let ka: Vec<u64> = a.iter().map(Keys::next_key).collect();
        let kb: Vec<u64> = b.iter().map(Keys::next_key).collect();
        assert_eq!(ka, kb);
        let p = Keys::new(Some(11));
        let mut all: Vec<u64> = ka.clone();
        all.push(p.next_key());
        // A second spawn continues the child index: no child repeats.
        all.extend(p.spawn(3).iter().map(Keys::next_key));
        all.extend(Keys::new(Some(11)).spawn(6)[3..].iter().map(Keys::next_key));
        let distinct: std::collections::HashSet<u64> = all.iter().copied().collect();
        assert_eq!(distinct.len(), 3 + 1 + 3, "the 2nd spawn of 3 is children 3..6 of a spawn of 6");
        assert!(a.iter().all(Keys::seeded));
        assert!(Keys::new(None).spawn(2).iter().all(|k| !k.seeded()));
    }

    #[test]
    fn workers_differ_and_repeat() {
        let k = Keys::new(Some(5));
        let w0 = k.for_worker(100).next_key();
        let w1 = k.for_worker(101).next_key();
        assert_ne!(w0, w1);
        assert_eq!(Keys::new(Some(5)).for_worker(100).next_key(), w0);
        k.next_key();
        assert_ne!(k.for_worker(100).next_key(), w0, "the worker stream depends on the parent's position");
    }

    #[test]
    fn copies_continue_only_seeded_streams() {
        let k = Keys::new(Some(4));
        k.next_key();
        assert_eq!(k.copy().next_key(), k.next_key());
        let u = Keys::new(None);
        assert_ne!(u.copy().next_key(), u.next_key());
    }

    #[test]
    fn fork_reseeds_only_unseeded_streams() {
        assert!(Keys::new(Some(1)).after_fork().is_none());
        let k = Keys::new(None);
        let child = k.after_fork().map(|c| c.next_key());
        assert!(child.is_some());
        assert_ne!(child, Some(k.next_key()));
    }
}
