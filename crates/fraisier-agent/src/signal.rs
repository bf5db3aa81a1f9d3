//! The agent's only calls into libc: signalling process groups and holding the state
//! directory's lock. Each `unsafe` block is a plain syscall on integers the kernel validates.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// The signals the supervisor sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

// === impl Signal ===

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// Sends `signal` to every process of the group `pgid` (an instance and whatever it forked).
/// A group that no longer exists is not an error.
pub fn signal_group(pgid: u32, signal: Signal) -> io::Result<()> {
    let pgid = checked_pid(pgid)?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours; a negative pid
    // addresses a process group, and `checked_pid` refuses 0 and values that would wrap to
    // -1 (which would mean "every process we may signal").
    let rc = unsafe { libc::kill(-pgid, signal.raw()) };
    ignore_missing(rc)
}

/// Sends `signal` to the single process `pid`.
pub fn signal_process(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = checked_pid(pid)?;
    // SAFETY: as in `signal_group`; a positive pid addresses exactly one process.
    let rc = unsafe { libc::kill(pid, signal.raw()) };
    ignore_missing(rc)
}

/// Takes an exclusive, non-blocking `flock` on `file`. The kernel drops it when the holder
/// dies, which is what makes it a reliable "one agent per state directory" guard.
/// Returns `Ok(false)` when another open file description holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) takes a descriptor we own for the duration of the call and flags.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn checked_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 1 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        )),
    }
}

fn ignore_missing(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_pids_that_would_mean_everyone() {
        assert!(signal_group(0, Signal::Term).is_err());
        assert!(signal_group(1, Signal::Term).is_err());
        assert!(signal_group(u32::MAX, Signal::Term).is_err());
    }
}
