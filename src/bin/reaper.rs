//! `reaper`: a tiny PID 1. std + libc only; never imports the `reaper` library.
fn main() {
    eprintln!("reaper: not implemented yet");
    std::process::exit(2);
}
