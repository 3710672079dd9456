//! Output buffers: allocated zeroed by the allocator (fresh pages come zeroed from the OS, so nothing is
//! written twice), and an error instead of an abort when memory runs out.

use crate::error::{Error, Result};

/// Plain numbers whose all-zero bit pattern is the value zero, and for which every bit pattern is a valid
/// value (so memory holding numbers of one such type may be read as another, see `fill_together_in`).
///
/// # Safety
/// Implement only for types of alignment at most 8 for which every byte pattern is a valid value.
pub unsafe trait Zeroable: Copy {}
// SAFETY: zero bytes are 0 / 0.0 for each of these, any bytes are some value, alignment <= 8.
unsafe impl Zeroable for u32 {}
// SAFETY: as above.
unsafe impl Zeroable for u8 {}
// SAFETY: as above.
unsafe impl Zeroable for i32 {}
// SAFETY: as above.
unsafe impl Zeroable for u64 {}
// SAFETY: as above.
unsafe impl Zeroable for i64 {}
// SAFETY: as above.
unsafe impl Zeroable for f32 {}
// SAFETY: as above.
unsafe impl Zeroable for f64 {}

/// A zeroed table read and written at random places (the samplers' maps of ids seen). Large tables are
/// aligned to 2 MiB and, on Linux, offered to the kernel for transparent huge pages before their first
/// touch: random accesses over a 1 MiB table then need one TLB entry instead of 256, which matters most in
/// a call that follows other work (each 4 KiB page's translation must then be walked again, and under
/// virtualisation a walk costs hundreds of cycles). Elsewhere, or when the kernel declines, it is an
/// ordinary zeroed allocation.
pub struct Table<T: Zeroable> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: a Table owns its memory like a Box<[T]>; T is a plain number type.
unsafe impl<T: Zeroable + Send> Send for Table<T> {}
// SAFETY: as above (shared access only reads).
unsafe impl<T: Zeroable + Sync> Sync for Table<T> {}

/// Tables of at least this many bytes get huge-page alignment.
const HUGE_MIN_BYTES: usize = 256 << 10;
const HUGE_PAGE: usize = 2 << 20;

impl<T: Zeroable> Default for Table<T> {
    fn default() -> Self {
        Table { ptr: std::ptr::NonNull::dangling(), len: 0, layout: std::alloc::Layout::new::<()>() }
    }
}

impl<T: Zeroable> Table<T> {
    /// `len` zeros, or an error naming `arg` when they cannot be allocated.
    pub fn zeroed(arg: &'static str, len: usize) -> Result<Self> {
        let fail = || Error::too_large(arg, format!("cannot allocate a table of {len} elements"));
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(fail)?;
        if bytes == 0 {
            return Ok(Self::default());
        }
        let huge = bytes >= HUGE_MIN_BYTES;
        let (size, align) = if huge {
            (bytes.checked_next_multiple_of(HUGE_PAGE).ok_or_else(fail)?, HUGE_PAGE)
        } else {
            (bytes, std::mem::align_of::<T>())
        };
        let layout = std::alloc::Layout::from_size_align(size, align).map_err(|_| fail())?;
        // SAFETY: the layout has non-zero size; a null pointer is handled as an error.
        let raw = unsafe { std::alloc::alloc(layout) };
        let ptr = std::ptr::NonNull::new(raw as *mut T).ok_or_else(fail)?;
        #[cfg(target_os = "linux")]
        if huge {
            // SAFETY: madvise only advises on the pages of the allocation (aligned to 2 MiB, `size` bytes);
            // a refusal changes nothing but the page size, so its result is ignored.
            unsafe { libc::madvise(raw as *mut libc::c_void, size, libc::MADV_HUGEPAGE) };
        }
        // SAFETY: the allocation holds `size >= bytes` bytes; zero bytes are valid values of T (`Zeroable`).
        unsafe { std::ptr::write_bytes(raw, 0, size) };
        Ok(Table { ptr, len, layout })
    }
}

impl<T: Zeroable> std::ops::Deref for Table<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised values of T that this table owns (or is dangling with
        // len 0, which a slice allows).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> std::ops::DerefMut for Table<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Zeroable> Drop for Table<T> {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this layout, not freed before.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, self.layout) };
        }
    }
}

/// Large work buffers kept from call to call: a fresh allocation of tens of MiB costs a page fault and a
/// zeroing per 4 KiB page on first touch, a noticeable part of a loss step that a training loop would pay
/// at every call with the same sizes. One implementation for every cache of the crate (see [`Caches`]),
/// each with its policy: a *pool* keeps any number of buffers up to a total size; a *one-block* cache keeps
/// a single block, the largest that fits its limit, and frees it before a larger one is allocated. The
/// contents of a taken buffer are stale: callers overwrite every element before reading it. Never waits
/// for the lock (a call that finds it held allocates afresh), so a process forked while another thread
/// held it cannot deadlock in the child.
pub struct Scratch<T> {
    bufs: std::sync::Mutex<Vec<Vec<T>>>,
    one_block: bool,
}

/// The caches of one float type (`Float::caches`): `tiles` is the sampled losses' pool of logit blocks
/// and product pieces, `logits` InfoNCE's one block of kept logits. Two instances, so that neither use
/// evicts the other's buffers in a process that runs both losses.
pub struct Caches<T> {
    /// The sampled losses' pool of logit blocks and product pieces.
    pub tiles: Scratch<T>,
    /// InfoNCE's one block of kept logits.
    pub logits: Scratch<T>,
}

impl<T> Caches<T> {
    /// Empty caches (nothing allocated until a call asks).
    pub const fn new() -> Self {
        Caches { tiles: Scratch::pool(), logits: Scratch::one_block() }
    }
}

impl<T> Default for Caches<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Scratch<T> {
    /// A pool of any number of buffers (up to the byte limit given back with each).
    pub const fn pool() -> Self {
        Scratch { bufs: std::sync::Mutex::new(Vec::new()), one_block: false }
    }

    /// A cache of one block.
    pub const fn one_block() -> Self {
        Scratch { bufs: std::sync::Mutex::new(Vec::new()), one_block: true }
    }

    /// The buffers, unless another call holds the lock right now. A poisoned lock is taken regardless:
    /// the guarded value is a list of plain buffers that a panic cannot leave half-updated.
    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Vec<Vec<T>>>> {
        match self.bufs.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

impl<T: Zeroable + Default> Scratch<T> {
    /// A buffer of `len` elements (stale contents: a kept buffer of at least that capacity, else fresh
    /// zeros), or an error naming `arg` if memory runs out.
    pub fn take(&self, arg: &'static str, len: usize) -> Result<Vec<T>> {
        let cached = self.lock().and_then(|mut bufs| {
            match bufs.iter().position(|v| v.capacity() >= len) {
                Some(i) => Some(bufs.swap_remove(i)),
                None => {
                    if self.one_block {
                        bufs.clear(); // free the old block before the new one is allocated
                    }
                    None
                }
            }
        });
        match cached {
            Some(mut v) => {
                v.truncate(len);
                v.resize(len, T::default());
                Ok(v)
            }
            None => zeroed(arg, len),
        }
    }

    /// Give a buffer back (or none, to apply the limit alone). A pool keeps it if all it would then hold
    /// takes at most `keep_bytes`; a one-block cache keeps it in place of its block if it takes at most
    /// `keep_bytes` and is at least as large, and drops a block above `keep_bytes`.
    pub fn give(&self, v: Option<Vec<T>>, keep_bytes: usize) {
        let Some(mut bufs) = self.lock() else {
            return;
        };
        let bytes = |x: &Vec<T>| x.capacity().saturating_mul(std::mem::size_of::<T>());
        if self.one_block {
            let held = bufs.pop().unwrap_or_default();
            bufs.clear();
            match v {
                Some(v) if bytes(&v) <= keep_bytes && v.capacity() >= held.capacity() => bufs.push(v),
                _ if bytes(&held) <= keep_bytes && held.capacity() > 0 => bufs.push(held),
                _ => {}
            }
        } else if let Some(v) = v {
            let held: usize = bufs.iter().map(bytes).sum();
            if held.saturating_add(bytes(&v)) <= keep_bytes {
                bufs.push(v);
            }
        }
    }
}

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

/// Output buffers handed back by the Python binding when the array that held them dies, for the next call
/// of the same size to reuse.
///
/// A fresh output of a few MiB costs a page fault per 4 KiB page when first written (the allocator gets
/// such blocks from the system afresh each time, or trims them back to it once other work, a NumPy
/// temporary say, frees memory next to them): for 10^6 draws, 12 MiB of ids and counts, 3,000 faults,
/// several milliseconds on a virtual machine, as long as the draws themselves. A kept buffer is already
/// mapped. Outputs below [`POOL_MIN_BYTES`] are not kept (the allocator reuses such blocks itself), and
/// the pool holds at most [`POOL_KEEP`] buffers and [`POOL_KEEP_BYTES`] in all, the oldest dropped
/// first. Never waits for its lock (a call that finds it held allocates afresh), so a process forked while
/// another thread held it cannot deadlock in the child.
pub struct OutPool<T> {
    bufs: std::sync::Mutex<Vec<Vec<T>>>,
}

/// Outputs of fewer bytes than this are not kept by an [`OutPool`].
pub const POOL_MIN_BYTES: usize = 64 << 10;
/// The most buffers an [`OutPool`] keeps.
pub const POOL_KEEP: usize = 4;
/// The most bytes an [`OutPool`] keeps (each element type has its pool).
pub const POOL_KEEP_BYTES: usize = 32 << 20;

impl<T> OutPool<T> {
    /// An empty pool.
    pub const fn new() -> Self {
        OutPool { bufs: std::sync::Mutex::new(Vec::new()) }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Vec<Vec<T>>>> {
        match self.bufs.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// A kept buffer of capacity `n..=2n` (the smallest), emptied; None when there is none.
    fn take(&self, n: usize) -> Option<Vec<T>> {
        if n.saturating_mul(std::mem::size_of::<T>()) < POOL_MIN_BYTES / 2 {
            return None;
        }
        let mut bufs = self.lock()?;
        let fits = |v: &Vec<T>| v.capacity() >= n && v.capacity() / 2 <= n;
        let i = (0..bufs.len()).filter(|&i| fits(&bufs[i])).min_by_key(|&i| bufs[i].capacity())?;
        let mut v = bufs.remove(i);
        v.clear();
        Some(v)
    }

    /// Keep `v` for a later call (if it is large enough; the oldest buffers go when the pool is full).
    pub fn give(&self, v: Vec<T>) {
        let bytes = |x: &Vec<T>| x.capacity().saturating_mul(std::mem::size_of::<T>());
        if bytes(&v) < POOL_MIN_BYTES || bytes(&v) > POOL_KEEP_BYTES {
            return;
        }
        let Some(mut bufs) = self.lock() else {
            return;
        };
        bufs.push(v);
        let mut total: usize = bufs.iter().map(bytes).sum();
        while bufs.len() > POOL_KEEP || total > POOL_KEEP_BYTES {
            total -= bytes(&bufs[0]);
            drop(bufs.remove(0));
        }
    }
}

impl<T> Default for OutPool<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Element types whose outputs are pooled (see [`OutPool`]).
pub trait Pooled: Zeroable + Send + 'static {
    /// The pool of this type's outputs.
    fn out_pool() -> &'static OutPool<Self>;
}

static POOL_I64: OutPool<i64> = OutPool::new();
static POOL_F32: OutPool<f32> = OutPool::new();

impl Pooled for i64 {
    fn out_pool() -> &'static OutPool<i64> {
        &POOL_I64
    }
}

impl Pooled for f32 {
    fn out_pool() -> &'static OutPool<f32> {
        &POOL_F32
    }
}

/// An empty vector with room for `n` elements, for an output: a kept buffer (see [`OutPool`]) when there is
/// one of about that size, else a new allocation; an error naming `arg` when memory runs out.
pub fn out_vec<T: Pooled>(arg: &'static str, n: usize) -> Result<Vec<T>> {
    if let Some(v) = T::out_pool().take(n) {
        return Ok(v);
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::too_large(arg, format!("cannot allocate {n} elements")))?;
    Ok(v)
}

/// `n` elements for an output that the caller overwrites whole: a kept buffer (stale values) when there
/// is one, else zeros (see [`zeroed`]).
pub fn out_filled<T: Pooled>(arg: &'static str, n: usize) -> Result<Vec<T>> {
    match T::out_pool().take(n) {
        Some(mut v) => {
            // SAFETY: capacity >= n (`take`), and every byte pattern is a valid T (`Zeroable`): the stale
            // elements are values, which the caller overwrites.
            unsafe { v.set_len(n) };
            Ok(v)
        }
        None => zeroed(arg, n),
    }
}

/// Hand an output whose array has died back to its pool (see [`OutPool`]).
pub fn recycle<T: Pooled>(v: Vec<T>) {
    T::out_pool().give(v)
}

/// Requests below this many bytes are not checked: reading the system's limits costs a few system calls.
const CHECK_ABOVE: u128 = 1 << 28;

/// An error naming `arg` when a call would need `bytes` of new memory and the system cannot give that much.
///
/// Allocating first and failing later is not enough: Linux overcommits, so a large allocation usually
/// succeeds and the process is killed (OOM) while the pages are being written, or an infallible allocation
/// deep inside aborts. The limit is the smallest of: `MemAvailable + SwapFree` (/proc/meminfo), the free
/// room under a cgroup memory limit, and the environment variable `ZIPFNCE_MAX_MEMORY` (bytes, or with a
/// K/M/G/T suffix, powers of 1024), and the room under `ulimit -v`. Where none is known, nothing is checked.
pub fn ensure_memory(arg: &'static str, bytes: u128) -> Result<()> {
    if bytes < CHECK_ABOVE {
        return Ok(());
    }
    match available_memory() {
        Some(avail) if bytes > avail as u128 => Err(Error::too_large(
            arg,
            format!(
                "the result needs {} MiB of memory but only {} MiB is available",
                bytes >> 20,
                avail >> 20
            ),
        )),
        _ => Ok(()),
    }
}

/// A byte count with an optional binary suffix: "1048576", "512M", "4g".
fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, shift) = match t.chars().last()?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    digits.trim().parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// The memory a call may still take, if anything is known about it (see [`ensure_memory`]).
pub fn available_memory() -> Option<u64> {
    let mut limit: Option<u64> = std::env::var("ZIPFNCE_MAX_MEMORY").ok().and_then(|v| parse_bytes(&v));
    let mut tighten = |x: Option<u64>| {
        if let Some(x) = x {
            limit = Some(limit.map_or(x, |l| l.min(x)));
        }
    };
    tighten(system_available());
    tighten(cgroup_room());
    tighten(address_space_room());
    limit
}

/// Room left under `ulimit -v` (RLIMIT_AS): its limit minus the address space in use.
#[cfg(target_os = "linux")]
fn address_space_room() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    let max: u64 = line["Max address space".len()..].split_whitespace().next()?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let used_kib: u64 = line["VmSize:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(max.saturating_sub(used_kib.saturating_mul(1024)))
}

#[cfg(not(target_os = "linux"))]
fn address_space_room() -> Option<u64> {
    None
}

#[cfg(target_os = "linux")]
fn system_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        kib.checked_mul(1024)
    };
    Some(field("MemAvailable:")?.saturating_add(field("SwapFree:").unwrap_or(0)))
}

#[cfg(target_os = "linux")]
fn cgroup_room() -> Option<u64> {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|t| t.trim().parse::<u64>().ok());
    // cgroup v2 ("max" when unlimited, which does not parse), then v1 (a huge number when unlimited).
    let (max, used) = match read("/sys/fs/cgroup/memory.max") {
        Some(max) => (max, read("/sys/fs/cgroup/memory.current")?),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes")?,
        ),
    };
    Some(max.saturating_sub(used))
}

#[cfg(not(target_os = "linux"))]
fn system_available() -> Option<u64> {
    None
}

#[cfg(not(target_os = "linux"))]
fn cgroup_room() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes(" 512M "), Some(512 << 20));
        assert_eq!(parse_bytes("4g"), Some(4 << 30));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("99999999999T"), None);
    }

    #[test]
    fn impossible_requests_are_refused() {
        assert!(ensure_memory("x", 1000).is_ok());
        if cfg!(target_os = "linux") {
            assert!(available_memory().is_some());
            let e = ensure_memory("num_sampled", 1 << 80).unwrap_err();
            assert_eq!(e.arg(), "num_sampled");
            assert!(e.to_string().contains("memory"), "{e}");
        }
    }

    #[test]
    fn tables_are_zeroed_writable_and_sized() {
        for len in [0usize, 1, 1000, HUGE_MIN_BYTES - 1, HUGE_MIN_BYTES, 3 << 20] {
            let mut t: Table<u8> = Table::zeroed("x", len).unwrap();
            assert_eq!(t.len(), len);
            assert!(t.iter().all(|&b| b == 0));
            if len > 0 {
                t[len - 1] = 7;
                t[0] = 9;
                assert_eq!((t[0], t[len - 1]), (9, if len == 1 { 9 } else { 7 }));
            }
            if len >= HUGE_MIN_BYTES {
                assert_eq!(t.as_ptr() as usize % HUGE_PAGE, 0, "len {len}");
            }
        }
        let w: Table<u64> = Table::zeroed("x", 40_000).unwrap();
        assert!(w.len() == 40_000 && w.iter().all(|&x| x == 0));
        assert!(Table::<u64>::zeroed("x", usize::MAX / 4).is_err());
    }

    #[test]
    fn scratch_policies() {
        // A pool keeps buffers up to its byte limit and hands back one large enough.
        let pool = Scratch::<f32>::pool();
        let mut a = pool.take("x", 100).unwrap();
        assert!(a.len() == 100 && a.iter().all(|&v| v == 0.0));
        a[0] = 7.0;
        let p = a.as_ptr();
        pool.give(Some(a), 1000);
        let b = pool.take("x", 50).unwrap();
        assert_eq!((b.as_ptr(), b.len()), (p, 50)); // reused, stale contents
        pool.give(Some(b), 1000);
        pool.give(Some(vec![0.0; 300]), 1000); // 400 + 1200 bytes > 1000: dropped
        assert_eq!(pool.lock().unwrap().len(), 1);
        // A one-block cache keeps the largest block within its limit and frees it before a larger one.
        let one = Scratch::<f64>::one_block();
        one.give(Some(vec![1.0; 10]), 1000);
        one.give(Some(vec![1.0; 5]), 1000); // smaller: the larger stays
        assert_eq!(one.lock().unwrap()[0].capacity(), 10);
        let big = one.take("x", 20).unwrap();
        assert!(one.lock().unwrap().is_empty() && big.iter().all(|&v| v == 0.0));
        one.give(Some(big), 100); // 160 bytes > 100: dropped
        assert!(one.lock().unwrap().is_empty());
        one.give(Some(vec![0.0; 10]), 1000);
        one.give(None, 40); // a smaller limit drops the block
        assert!(one.lock().unwrap().is_empty());
    }

    #[test]
    fn out_pool_policy() {
        let pool = OutPool::<f32>::new();
        let n = POOL_MIN_BYTES / 4; // the smallest output kept
        assert!(pool.take(n).is_none());
        // Too small to keep, then kept.
        pool.give(vec![1.0; n - 1]);
        assert!(pool.lock().unwrap().is_empty());
        let v = vec![2.0f32; n];
        let p = v.as_ptr();
        pool.give(v);
        // Handed out emptied, for requests of n/2..=n elements only.
        assert!(pool.take(n + 1).is_none() && pool.take(n / 2 - 1).is_none());
        let v = pool.take(n / 2).unwrap();
        assert!(v.is_empty() && v.capacity() >= n && v.as_ptr() == p);
        assert!(pool.take(n / 2).is_none());
        // The smallest that fits is taken; at most POOL_KEEP buffers, the oldest dropped first.
        for k in 1..=POOL_KEEP + 2 {
            pool.give(Vec::with_capacity(n * (POOL_KEEP + 3 - k)));
        }
        let caps: Vec<usize> = pool.lock().unwrap().iter().map(|v| v.capacity()).collect();
        assert_eq!(caps.len(), POOL_KEEP);
        assert_eq!(caps[POOL_KEEP - 1], n);
        assert_eq!(pool.take(n).unwrap().capacity(), n);
        assert_eq!(pool.take(2 * n).unwrap().capacity(), 2 * n);
        // And at most POOL_KEEP_BYTES in all.
        let big = POOL_KEEP_BYTES / 4 / 2 + 1;
        pool.give(Vec::with_capacity(big));
        pool.give(Vec::with_capacity(big));
        let held: usize = pool.lock().unwrap().iter().map(|v| v.capacity() * 4).sum();
        assert!(held <= POOL_KEEP_BYTES);
        assert_eq!(pool.lock().unwrap().last().unwrap().capacity(), big);
        // `out_filled` gives n elements, `out_vec` room for n.
        assert_eq!(out_filled::<f32>("x", 10).unwrap(), vec![0.0; 10]);
        assert!(out_vec::<i64>("x", 10).unwrap().capacity() >= 10);
        assert!(out_vec::<i64>("x", usize::MAX / 4).is_err());
    }

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

/// A vector whose elements are written chunk by chunk, possibly from several threads, each chunk once: its
/// writer fills a scratch buffer that stays in cache and streams it to the chunk's place.
pub struct ChunkedVec<T: Zeroable> {
    vec: Vec<T>,
    n: usize,
}

/// A raw pointer that may cross threads: the chunks handed out through it never overlap.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: only used by `fill_together_in`, which gives each thread a disjoint range of the allocation.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; shared references to `SendPtr` only copy the pointer.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T: Zeroable + Send> ChunkedVec<T> {
    /// `n` elements to be written; `arg` names the argument whose size it is, for the error when memory is
    /// short.
    pub fn new(arg: &'static str, n: usize) -> Result<Self> {
        let mut vec = Vec::new();
        vec.try_reserve_exact(n)
            .map_err(|_| Error::too_large(arg, format!("cannot allocate {n} elements")))?;
        Ok(ChunkedVec { vec, n })
    }

    /// `n` elements to be written, in the allocation of `vec` (whose contents are dropped), or in a new one
    /// when its capacity is short.
    pub fn reuse(arg: &'static str, mut vec: Vec<T>, n: usize) -> Result<Self> {
        vec.clear();
        if vec.capacity() < n {
            return Self::new(arg, n);
        }
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

    /// Raw access for `fill_together_in`.
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

/// Copy `src` to `dst`, which must be valid for `src.len()` writes and not overlap it, with non-temporal
/// stores where the platform has them: a large output is then written to memory once, instead of first being
/// read into the cache (and evicting what is there) only to be overwritten.
///
/// # Safety
/// `dst` must be valid for writes of `src.len()` elements of T and must not overlap `src`.
unsafe fn stream_copy<T: Copy>(src: &[T], dst: *mut T) {
    let bytes = std::mem::size_of_val(src);
    let (s, d) = (src.as_ptr() as *const u8, dst as *mut u8);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let head = d.align_offset(16).min(bytes);
        let body = (bytes - head) / 16 * 16;
        // SAFETY: all offsets stay within the `bytes` bytes of `src` and `dst` (the caller's contract); the
        // streamed addresses are 16-byte aligned (after `head`), as `_mm_stream_si128` requires, and SSE2
        // is part of x86_64's baseline. The fence orders the streamed stores before any later store, so a
        // thread that sees this call finish sees its data.
        unsafe {
            std::ptr::copy_nonoverlapping(s, d, head);
            for off in (head..head + body).step_by(16) {
                _mm_stream_si128(d.add(off) as *mut __m128i, _mm_loadu_si128(s.add(off) as *const __m128i));
            }
            std::ptr::copy_nonoverlapping(s.add(head + body), d.add(head + body), bytes - head - body);
            _mm_sfence();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(s, d, bytes)
    };
}

thread_local! {
    /// The scratch of `fill_together_in`, as plain words, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The u64 words that hold `n` values of T.
fn words_for<T>(n: usize) -> usize {
    (n * std::mem::size_of::<T>()).div_ceil(8)
}

/// Outputs at least this large are written with non-temporal stores (`stream_copy`): they would not stay in
/// the cache anyway. Smaller ones are copied normally, so that the caller finds them in the cache.
const STREAM_MIN_BYTES: usize = 4 << 20;

/// Fill two vectors of `n` elements chunk by chunk, in the allocations of `into` (output buffers kept from
/// earlier calls, say; new ones where their capacity is short, or for empty vectors): `f(c, a, b)` fills
/// chunk `c` of each (length `len`, the last shorter) in scratch buffers, from which it is copied into
/// place (streamed past the cache when the outputs are large, see `STREAM_MIN_BYTES`). On the library's
/// threads (see `threads::run`) when `parallel`. The scratch is the thread's own and is reused: `f` must
/// write every element of its chunk.
pub fn fill_together_in<A, B, F>(
    arg: &'static str,
    into: (Vec<A>, Vec<B>),
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
    let mut a = ChunkedVec::<A>::reuse(arg, into.0, n)?;
    let mut b = ChunkedVec::<B>::reuse(arg, into.1, n)?;
    let len = len.max(1);
    let parts: Vec<_> = a.parts(len).into_iter().zip(b.parts(len)).collect();
    let stream = n * (std::mem::size_of::<A>() + std::mem::size_of::<B>()) >= STREAM_MIN_BYTES;
    let one = |c: usize| {
        let ((pa, la), (pb, lb)) = parts[c];
        let fill = |sa: &mut [A], sb: &mut [B]| {
            f(c, sa, sb);
            // SAFETY: chunk c covers [c*len, c*len + la) of `a` (likewise `b`) inside the allocation, and no
            // two chunks overlap, so these places are this closure's alone.
            unsafe {
                if stream {
                    stream_copy(sa, pa.0);
                    stream_copy(sb, pb.0);
                } else {
                    std::ptr::copy_nonoverlapping(sa.as_ptr(), pa.0, la);
                    std::ptr::copy_nonoverlapping(sb.as_ptr(), pb.0, lb);
                }
            }
        };
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut words) => {
                let (wa, wb) = (words_for::<A>(la), words_for::<B>(lb));
                if words.len() < wa + wb {
                    words.resize(wa + wb, 0);
                }
                let (ha, hb) = words.split_at_mut(wa);
                // SAFETY: `ha` holds wa >= la * size_of::<A>() / 8 initialised u64 words, aligned for A
                // (alignment <= 8), and every byte pattern is an A (`Zeroable`); likewise `hb` for B. The
                // two slices do not overlap and live as long as the borrow of `words`.
                let (sa, sb) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(ha.as_mut_ptr() as *mut A, la),
                        std::slice::from_raw_parts_mut(hb.as_mut_ptr() as *mut B, lb),
                    )
                };
                fill(sa, sb);
            }
            // Re-entered on this thread (cannot happen today): write in place, zeroing first so that the
            // slices are initialised.
            Err(_) => {
                // SAFETY: as above, the chunk's places are this closure's alone; zeroing initialises them.
                let (da, db) = unsafe {
                    std::ptr::write_bytes(pa.0, 0, la);
                    std::ptr::write_bytes(pb.0, 0, lb);
                    (std::slice::from_raw_parts_mut(pa.0, la), std::slice::from_raw_parts_mut(pb.0, lb))
                };
                f(c, da, db);
            }
        });
    };
    if parallel {
        crate::threads::run(parts.len(), one);
    } else {
        (0..parts.len()).for_each(one);
    }
    // SAFETY: the chunks cover 0..n of both vectors and each was written whole.
    Ok(unsafe { (a.finish(), b.finish()) })
}
