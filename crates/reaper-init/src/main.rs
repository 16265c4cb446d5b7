//! The `reaper` binary: only the C entry point (see the library for everything else).
// Under `cargo test --bins` the test harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[allow(unsafe_code)] // the C entry point, and the call into `sys`, which holds all other unsafe
#[unsafe(no_mangle)]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: the C runtime passes main `argc` NUL-terminated strings that live until exit.
    unsafe { reaper_init::sys::entry(argc, argv) }
}
