//! The block of kept logits reused from call to call (a training loop repeats the same sizes).

use super::Kernel;
use std::sync::{MutexGuard, TryLockError};

/// The spare block, unless another call holds it right now. Never waits: a process forked while another
/// thread held the lock would otherwise wait forever in the child.
fn lock_spare<T: Kernel>() -> Option<MutexGuard<'static, Vec<T>>> {
    match T::spare_block().try_lock() {
        Ok(g) => Some(g),
        // The guarded value is a plain buffer that a panic cannot leave half-updated: take it regardless.
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// A block of `n` elements for the kept logits. A training loop calls with the same sizes again and again,
/// and a fresh block of tens of MiB costs a page fault per 4 KiB on first touch (a fifth of the whole call
/// at B = 4096), so the block of the previous call is reused when it is large enough. Its contents are
/// stale: every element is written before it is read.
pub(super) fn take_spare<T: Kernel>(n: usize) -> Vec<T> {
    let mut v = lock_spare::<T>().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default();
    if v.capacity() < n {
        v = Vec::new(); // free the old block before the new one is allocated
    }
    v.resize(n, T::ZERO);
    v
}

/// Keep `v` for the next call if it fits `budget` bytes; drop the spare block if it does not.
pub(super) fn give_back<T: Kernel>(v: Option<Vec<T>>, budget: usize) {
    let Some(mut spare) = lock_spare::<T>() else {
        return;
    };
    let fits = |x: &Vec<T>| x.capacity().saturating_mul(std::mem::size_of::<T>()) <= budget;
    match v {
        Some(v) if fits(&v) && v.capacity() >= spare.capacity() => *spare = v,
        _ if !fits(&spare) => *spare = Vec::new(),
        _ => {}
    }
}
