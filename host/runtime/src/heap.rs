//! Tuning of the C allocator (glibc malloc) the host runs on.
//!
//! glibc gives threads their own arenas (up to eight per CPU) and keeps what
//! they freed. `taskflow serve` compiles plugins in a child process for that
//! reason (see [`crate::compiler`]); these two measures bound what
//! is left: loading artifacts, and compiling in-process where there is no
//! child (an embedding program, or a child that could not be started).

/// Caps the number of malloc arenas at one per CPU. Call first thing in
/// `main`, before threads exist. Threads beyond that share arenas: a little
/// lock contention on allocation, which this host does little of per task.
#[allow(unsafe_code)]
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cpus = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let arenas = libc::c_int::try_from(cpus).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator settings; called before
        // other threads allocate.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Hands heap pages freed by the compiler back to the OS.
#[allow(unsafe_code)]
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS; it has no
    // preconditions and does not touch allocated blocks.
    unsafe {
        libc::malloc_trim(0);
    }
}
