//! Measuring: latency histograms, the generator's own CPU use, and the broker's CPU
//! time and memory read from `/proc/PID/stat` and `/proc/PID/status`.

use super::BenchError;
use hdrhistogram::Histogram;

/// A histogram of ns values from 1 ns to one hour at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant bounds are valid")
}

/// CPU time consumed so far by the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Time the calling thread has spent runnable but waiting for a core, in ns, from
/// `/proc/thread-self/schedstat`; `None` where the kernel does not keep it. CPU time
/// alone hides a generator that shares its core with a busy process (a broker worker
/// pinned there): it then runs half the time and waits the other half, saturated.
pub fn thread_wait_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    parse_schedstat(&s).map(|(_, wait)| wait)
}

/// `/proc/.../schedstat`: time on a CPU and time waiting on a run queue (ns), then
/// the number of time slices.
pub fn parse_schedstat(s: &str) -> Option<(u64, u64)> {
    let mut f = s.split_whitespace();
    let on_cpu = f.next()?.parse().ok()?;
    let waiting = f.next()?.parse().ok()?;
    Some((on_cpu, waiting))
}

/// Raises the soft open-file limit to the hard limit (as the broker does) and
/// returns the soft limit now in force, or `None` if it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            let mut new = lim;
            new.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 {
                tracing::debug!(from = old, to = new.rlim_cur, "raised open-file limit");
                lim = new;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Some(lim.rlim_cur as u64)
}

/// One sample of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    /// utime + stime, ns.
    pub cpu_ns: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads the CPU time and RSS of process `pid`.
pub fn sample_process(pid: u32) -> Result<ProcSample, BenchError> {
    let read = |what: &str| {
        let path = format!("/proc/{pid}/{what}");
        std::fs::read_to_string(&path).map_err(|e| BenchError::Proc(format!("{path}: {e}")))
    };
    let stat = read("stat")?;
    let status = read("status")?;
    let ticks = parse_stat_ticks(&stat)
        .ok_or_else(|| BenchError::Proc(format!("cannot parse /proc/{pid}/stat")))?;
    let rss_kb = parse_vmrss_kb(&status)
        .ok_or_else(|| BenchError::Proc(format!("no VmRSS in /proc/{pid}/status")))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(ProcSample {
        cpu_ns: ticks.saturating_mul(1_000_000_000) / hz,
        rss_bytes: rss_kb * 1024,
    })
}

/// utime + stime (fields 14 and 15) in clock ticks. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The `VmRSS:` line of `/proc/PID/status`, in kB.
pub fn parse_vmrss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 5000 0 0 0 \
                    250 75 0 0 20 0 3 0 100 123456 789 ...";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmRSS:\t  5120 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss_kb(status), Some(5120));
        assert_eq!(parse_vmrss_kb("Name: x\n"), None);
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(
            parse_schedstat("2510000 770000 12\n"),
            Some((2_510_000, 770_000))
        );
        assert_eq!(parse_schedstat("12"), None);
    }

    #[test]
    fn reads_its_own_wait() {
        // Kernels built without scheduler statistics have no such file, and the
        // report then leaves the wait out; where it exists it must be read.
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            assert!(thread_wait_ns().is_some());
        }
    }

    #[test]
    fn samples_itself() {
        let s = sample_process(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        let mut h = new_histogram();
        h.saturating_record(1_500);
        assert_eq!(h.len(), 1);
    }
}
