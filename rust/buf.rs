//! Output buffers: allocated zeroed by the allocator (fresh pages come zeroed from the OS, so nothing is
//! written twice), and an error instead of an abort when memory runs out.

use crate::error::{Error, Result};

/// Plain numbers whose all-zero bit pattern is the value zero.
///
/// # Safety
/// Implement only for types for which every all-zero byte pattern is a valid value.
pub unsafe trait Zeroable: Copy {}
// SAFETY: zero bytes are 0 / 0.0 for each of these.
unsafe impl Zeroable for u32 {}
unsafe impl Zeroable for i32 {}
unsafe impl Zeroable for u64 {}
unsafe impl Zeroable for i64 {}
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for f64 {}

/// A vector of `n` zeros, or an error naming `arg` when it cannot be allocated.
pub fn zeroed<T: Zeroable>(arg: &'static str, n: usize) -> Result<Vec<T>> {
    let fail = || Error::too_large(arg, format!("cannot allocate {n} elements"));
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| fail())?;
    // SAFETY: the layout has non-zero size (checked above); a null pointer is handled as an error.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(fail());
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `n` values of T (so capacity n and
    // matching alignment), and all n values are initialised: zero bytes are a valid T (`Zeroable`).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_vectors() {
        let v: Vec<f32> = zeroed("x", 1000).unwrap();
        assert_eq!(v.len(), 1000);
        assert!(v.iter().all(|&x| x == 0.0));
        let e: Vec<u64> = zeroed("x", 0).unwrap();
        assert!(e.is_empty());
        assert!(zeroed::<u64>("x", usize::MAX / 4).is_err());
    }
}

/// A vector whose elements are written chunk by chunk, possibly from several threads, without first
/// zeroing it all: each chunk is zeroed just before its writer gets it, while its cache lines are hot,
/// which saves a full pass over memory on large outputs.
pub struct ChunkedVec<T: Zeroable> {
    vec: Vec<T>,
    n: usize,
}

/// A raw pointer that may cross threads: the chunks handed out through it never overlap.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used by `ChunkedVec::fill`, which gives each thread a disjoint range of the allocation.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; shared references to `SendPtr` only copy the pointer.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T: Zeroable + Send> ChunkedVec<T> {
    pub fn new(arg: &'static str, n: usize) -> Result<Self> {
        let mut vec = Vec::new();
        vec.try_reserve_exact(n)
            .map_err(|_| Error::too_large(arg, format!("cannot allocate {n} elements")))?;
        Ok(ChunkedVec { vec, n })
    }

    /// The pointer and length of chunk `c` of length `len` (the last may be shorter).
    fn chunk(&mut self, c: usize, len: usize) -> (SendPtr<T>, usize) {
        let start = (c * len).min(self.n);
        let end = (start + len).min(self.n);
        // SAFETY: start <= n <= capacity, so the offset stays inside the allocation.
        (SendPtr(unsafe { self.vec.as_mut_ptr().add(start) }), end - start)
    }

    /// Number of chunks of length `len`.
    pub fn chunks(&self, len: usize) -> usize {
        self.n.div_ceil(len.max(1))
    }

    /// Raw access for `fill_together`.
    fn parts(&mut self, len: usize) -> Vec<(SendPtr<T>, usize)> {
        (0..self.chunks(len)).map(|c| self.chunk(c, len)).collect()
    }

    /// # Safety
    /// Every element must have been initialised.
    unsafe fn finish(mut self) -> Vec<T> {
        // SAFETY: the caller guarantees all n elements were written; n <= capacity.
        unsafe { self.vec.set_len(self.n) };
        self.vec
    }
}

/// Fill two vectors of `n` elements chunk by chunk: `f(c, a, b)` gets chunk `c` of each (zeroed, length `len`,
/// the last shorter), on the library's threads when `parallel` (then call it inside `threads::install`).
pub fn fill_together<A, B, F>(
    arg: &'static str,
    n: usize,
    len: usize,
    parallel: bool,
    f: F,
) -> Result<(Vec<A>, Vec<B>)>
where
    A: Zeroable + Send,
    B: Zeroable + Send,
    F: Fn(usize, &mut [A], &mut [B]) + Sync,
{
    use rayon::prelude::*;
    let mut a = ChunkedVec::<A>::new(arg, n)?;
    let mut b = ChunkedVec::<B>::new(arg, n)?;
    let len = len.max(1);
    let parts: Vec<_> = a.parts(len).into_iter().zip(b.parts(len)).collect();
    let one = |(c, ((pa, la), (pb, lb))): (usize, &((SendPtr<A>, usize), (SendPtr<B>, usize)))| {
        // SAFETY: chunk c covers [c*len, c*len + la) of `a` (likewise `b`), inside the allocation, and no
        // two chunks overlap, so each slice is exclusively this closure's. Zeroing first initialises it.
        let (sa, sb) = unsafe {
            std::ptr::write_bytes(pa.0, 0, *la);
            std::ptr::write_bytes(pb.0, 0, *lb);
            (std::slice::from_raw_parts_mut(pa.0, *la), std::slice::from_raw_parts_mut(pb.0, *lb))
        };
        f(c, sa, sb);
    };
    if parallel {
        parts.par_iter().enumerate().for_each(one);
    } else {
        parts.iter().enumerate().for_each(one);
    }
    // SAFETY: the chunks cover 0..n of both vectors and each was zeroed, then written by `f`.
    Ok(unsafe { (a.finish(), b.finish()) })
}
