//! The `reaper` binary: only the C entry point (see the library for everything else).
#![no_main]

use libc::{c_char, c_int};

#[allow(unsafe_code)] // the C entry point, and the call into `sys`, which holds all other unsafe
#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: the C runtime passes main `argc` NUL-terminated strings that live until exit.
    unsafe { reaper_init::sys::entry(argc, argv) }
}
