//! Giving the heap's free pages back to the kernel.
//!
//! glibc's malloc keeps memory that the daemon has freed mapped, in case it
//! is wanted again; it returns only a large free block at the top of the heap
//! on its own. A daemon's heap breathes with the interval: an interval's
//! offers, gossip records and attestations are allocated through it and
//! freed after finality, scattered across the heap. Without a trim those
//! pages stay resident; in `dharti bench mesh` (50 daemons, 1,000 offers per
//! interval) trimming once per interval takes the median daemon from about
//! 25.0 to 23.8 MB resident (docs/operations.md, "Memory").
//!
//! The only `unsafe` in the workspace is here: one call into the C library.

/// Returns the free pages of every malloc arena to the kernel
/// (`malloc_trim(0)`), and says how long that took. Memory still in use is
/// untouched; the next allocation that needs a page faults it back in.
///
/// Elsewhere than Linux with glibc (musl, macOS) this does nothing: their
/// allocators return memory on their own terms.
pub fn release_free() -> std::time::Duration {
    let start = std::time::Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointer and touches only glibc's own
    // arenas, each under its lock, so it is safe from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    start.elapsed()
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// Resident bytes of this process, from /proc/self/statm.
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse().ok())
            .expect("resident pages");
        pages * 4_096
    }

    #[test]
    fn freed_pages_in_the_middle_of_the_heap_go_back() {
        // 32 MiB in 16 KiB blocks (below malloc's mmap threshold, so they
        // come from an arena), each page touched. Keep every 16th block: the
        // freed ones sit between live ones, where malloc keeps them.
        let fill = |i: usize| u8::try_from(i % 251).unwrap_or(0) + 1;
        let mut blocks: Vec<Box<[u8]>> = (0..2_048)
            .map(|i| vec![fill(i); 16 * 1_024].into_boxed_slice())
            .collect();
        let mut kept = Vec::new();
        for (i, b) in blocks.drain(..).enumerate() {
            if i % 16 == 0 {
                kept.push(b);
            }
        }
        let before = resident();
        super::release_free();
        let after = resident();
        assert!(
            before.saturating_sub(after) >= 16 << 20,
            "trim gave back {} KiB of about 30 MiB freed",
            before.saturating_sub(after) >> 10
        );
        // The kept blocks are intact.
        for (j, b) in kept.iter().enumerate() {
            assert!(b.iter().all(|&x| x == fill(j * 16)));
        }
    }
}
