//! `--install DEST`: copy this binary into a volume (the init container of a FROM-scratch image).
//!
//! Atomic and durable: a temp file in the destination directory, fsync, chmod 0555, rename, fsync
//! of the directory. A reader of DEST never sees a half-written binary.

use std::ffi::{CStr, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::log::Part::{Bytes, Errno, Str};
use crate::log::say;
use crate::status;
use crate::sys;

/// Copies the running binary to `dest` (a directory means `dest/reaper`); returns the exit code.
#[inline(never)]
pub fn run(dest: &CStr, argv0: Option<&CStr>, verbosity: u8) -> u8 {
    let dest = Path::new(OsStr::from_bytes(dest.to_bytes()));
    match install(dest, argv0) {
        Ok(path) => {
            if verbosity >= 1 {
                say(&[Str("installed "), Bytes(path.as_os_str().as_bytes())]);
            }
            0
        }
        Err((what, path, err)) => {
            let reason = match err.raw_os_error() {
                Some(e) => Errno(e),
                None => Str("unexpected end of file"),
            };
            say(&[
                Str("--install: "),
                Str(what),
                Str(" "),
                Bytes(path.as_os_str().as_bytes()),
                Str(": "),
                reason,
                Str(" (DEST must be a writable directory or a file path in one)"),
            ]);
            status::FAILURE
        }
    }
}

type Failure = (&'static str, PathBuf, io::Error);

fn install(dest: &Path, argv0: Option<&CStr>) -> Result<PathBuf, Failure> {
    let target = if dest.is_dir() {
        dest.join("reaper")
    } else {
        dest.to_path_buf()
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut source = open_self(argv0)?;
    let mut tmp_name = target
        .file_name()
        .unwrap_or(OsStr::new("reaper"))
        .to_os_string();
    tmp_name.push(".tmp-");
    tmp_name.push(pid_text(sys::getpid()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| ("cannot create", tmp.clone(), e))?;
        io::copy(&mut source, &mut out).map_err(|e| ("cannot write", tmp.clone(), e))?;
        out.sync_all()
            .map_err(|e| ("cannot fsync", tmp.clone(), e))?;
        out.set_permissions(fs::Permissions::from_mode(0o555))
            .map_err(|e| ("cannot chmod", tmp.clone(), e))?;
        fs::rename(&tmp, &target).map_err(|e| ("cannot rename into", target.clone(), e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(target)
}

/// The running binary: /proc/self/exe, or argv\[0\] when /proc is not mounted.
fn open_self(argv0: Option<&CStr>) -> Result<File, Failure> {
    let proc_exe = Path::new("/proc/self/exe");
    match File::open(proc_exe) {
        Ok(f) => Ok(f),
        Err(e) => match argv0.map(|a| a.to_bytes()).filter(|a| a.contains(&b'/')) {
            Some(a) => {
                let p = Path::new(OsStr::from_bytes(a));
                File::open(p).map_err(|e| ("cannot read", p.to_path_buf(), e))
            }
            None => Err(("cannot read", proc_exe.to_path_buf(), e)),
        },
    }
}

fn pid_text(pid: libc::pid_t) -> String {
    let mut digits = Vec::new();
    let mut v = pid.unsigned_abs();
    loop {
        digits.push(b'0' + (v % 10) as u8);
        v /= 10;
        if v == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_into_a_directory_and_a_file_path() {
        let dir = tempfile::tempdir().unwrap();
        // In tests the "binary" is the test executable: any file proves the copy.
        let into_dir = install(dir.path(), None).unwrap();
        assert_eq!(into_dir, dir.path().join("reaper"));
        let meta = fs::metadata(&into_dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o555);
        assert_eq!(meta.len(), fs::metadata("/proc/self/exe").unwrap().len());
        let file = dir.path().join("init");
        assert_eq!(install(&file, None).unwrap(), file);
        // Replacing an existing (read-only) file works: rename over it.
        assert_eq!(install(&file, None).unwrap(), file);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn reports_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (what, path, err) = install(&dir.path().join("nope/reaper"), None).unwrap_err();
        assert_eq!(what, "cannot create");
        assert!(path.starts_with(dir.path().join("nope")));
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn pid_texts() {
        assert_eq!(pid_text(0), "0");
        assert_eq!(pid_text(1234), "1234");
    }
}
