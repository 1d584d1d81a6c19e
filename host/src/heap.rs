//! Tuning of the C allocator (glibc malloc) the host runs on.
//!
//! Compiling a large component (an 18 MB Python plugin) churns through
//! hundreds of megabytes on cranelift's compiler threads. glibc gives threads
//! their own arenas (up to eight per CPU) and keeps what they freed, so
//! without these two measures the host would idle at roughly three times the
//! memory it uses.

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
