//! The plugin's process: started in a process group of its own with nothing but
//! stdin, stdout and stderr open, stopped as a group, and its stderr relayed with a
//! cap on each line.
//!
//! A plugin is a program the playbook names; what it starts (a helper, a shell
//! pipeline) belongs to it. Killing only the plugin would leave its helpers running
//! with whatever they hold, so the plugin leads a process group and the whole
//! group is killed: on a timeout, on a protocol error and when rekey is done with
//! it. Descriptors rekey itself inherited without close-on-exec (a shell's `exec
//! 7<file`, a CI runner's sockets) are not the plugin's business either.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Longest stderr line relayed to the log; the rest of the line is dropped and
/// counted. One line of a plugin's log is never this long unless something is
/// wrong, and rekey must not hold (or print) megabytes of it.
pub const MAX_STDERR_LINE: usize = 4096;

/// Makes `cmd` start its process as the leader of a new process group, with
/// every descriptor above 2 closed at exec.
pub fn isolate(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, and only makes
    // system calls that are async-signal-safe (close_range, getrlimit, fcntl); it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            close_on_exec_from(3);
            Ok(())
        });
    }
}

/// Marks every descriptor from `first` up close-on-exec. Marked, not closed:
/// the pipe through which the standard library reports a failed exec must stay
/// open until the exec. Async-signal-safe.
fn close_on_exec_from(first: libc::c_int) {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC changes descriptor flags
    // only; on kernels before 5.11 it fails and nothing changed.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct it is given.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 16) as libc::c_int
    } else {
        1024
    };
    for fd in first..max {
        // SAFETY: fcntl(2) on a descriptor number; a closed one fails with EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Kills the process group `child` leads (the plugin and whatever it started).
/// The child itself is reaped by tokio (`kill_on_drop`).
pub fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals the process group whose id
        // is the plugin's pid; the group exists while any member does, and Linux
        // does not hand that number to a new process meanwhile.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// Reads `stream` line by line, each cut at [`MAX_STDERR_LINE`] bytes, and hands
/// every line to `each` (the cut said at its end). Holds at most one capped line.
pub async fn relay_lines(stream: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::with_capacity(256);
    let mut cut = 0usize;
    // A read error ends the relay like the end of the stream.
    while let Ok(chunk) = reader.fill_buf().await {
        if chunk.is_empty() {
            if !line.is_empty() || cut > 0 {
                emit(&line, cut, &mut each);
            }
            break;
        }
        let (part, ends) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        let room = MAX_STDERR_LINE.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        cut += part.len().saturating_sub(room);
        let used = ends.unwrap_or(chunk.len());
        reader.consume(used);
        if ends.is_some() {
            emit(&line, cut, &mut each);
            line.clear();
            cut = 0;
        }
    }
}

fn emit(line: &[u8], cut: usize, each: &mut impl FnMut(&str)) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    if cut == 0 {
        each(text);
    } else {
        each(&format!("{text}... ({cut} bytes cut)"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_short_ones_pass_whole() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_STDERR_LINE + 10));
        input.extend_from_slice(b"\nlast without newline");
        let mut lines = Vec::new();
        relay_lines(&input[..], |l| lines.push(l.to_owned())).await;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "short");
        assert!(lines[1].ends_with("... (10 bytes cut)"));
        assert_eq!(lines[1].len(), MAX_STDERR_LINE + "... (10 bytes cut)".len());
        assert_eq!(lines[2], "last without newline");
    }
}
