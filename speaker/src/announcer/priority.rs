//! CPU priority of the announcer's reader threads: the announcer's only unsafe code.
//!
//! A reader needs a few microseconds of CPU per request, but on a busy node it can wait
//! milliseconds for a CPU (see BENCHMARKS.md); a lower nice value for just these threads cuts
//! that wait. Lowering nice needs CAP_SYS_NICE; without it the call fails and the threads keep
//! the default priority.
#![allow(unsafe_code)]

use std::io;

/// Sets the nice value of the calling thread.
pub(crate) fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority only takes integers and touches no memory of ours. On Linux, nice
    // values belong to threads, and PRIO_PROCESS with who = 0 names the calling thread alone.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_nice_needs_no_privilege() {
        let thread = std::thread::spawn(|| {
            set_current_thread_nice(5).unwrap();
            std::fs::read_to_string("/proc/thread-self/stat").unwrap()
        });
        let stat = thread.join().unwrap();
        // Field 19 of stat is the nice value; fields after the ")" of the command name.
        let after_name = stat.rsplit(')').next().unwrap();
        let nice: i32 = after_name.split_whitespace().nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 5);
    }
}
