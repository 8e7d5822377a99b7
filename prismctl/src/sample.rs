//! CPU and memory samples of processes and of the whole machine, from `/proc` (Linux).
//!
//! The benches report CPU time per operation and how busy the machine was, so that a ratio
//! measured on a loaded machine can be read for what it is. Every function returns `None`
//! (or nothing) where `/proc` cannot be read — another OS, a process that has exited, a
//! MySQL server in a container this process cannot see — and the figure is left out of the
//! report instead of failing the bench.

use procfs::process::Process;
use procfs::{CurrentSI, KernelStats};

/// Clock ticks per second (`USER_HZ`), the unit of every tick count here.
pub fn ticks_per_second() -> f64 {
    procfs::ticks_per_second() as f64
}

/// The machine's (busy, total) CPU ticks since boot, all CPUs together.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let cpu = KernelStats::current().ok()?.total;
    let iowait = cpu.iowait.unwrap_or(0);
    let total = cpu.user
        + cpu.nice
        + cpu.system
        + cpu.idle
        + iowait
        + cpu.irq.unwrap_or(0)
        + cpu.softirq.unwrap_or(0)
        + cpu.steal.unwrap_or(0);
    // Waiting for I/O is idle time too: the CPU could have run something else.
    Some((total.saturating_sub(cpu.idle + iowait), total))
}

/// Busy share of the machine since `since` (a [`machine_jiffies`] sample).
pub fn busy_since(since: Option<(u64, u64)>) -> Option<f64> {
    let (b0, t0) = since?;
    let (b1, t1) = machine_jiffies()?;
    let total = t1.saturating_sub(t0);
    (total > 0).then(|| b1.saturating_sub(b0) as f64 / total as f64)
}

/// User + system CPU time of this process, in clock ticks.
pub fn own_ticks() -> Option<u64> {
    let stat = Process::myself().ok()?.stat().ok()?;
    Some(stat.utime + stat.stime)
}

/// User + system CPU time of `pid`, in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some(stat.utime + stat.stime)
}

/// Summed user + system ticks of `pids` (`None` if there are none or one cannot be read).
pub fn ticks_of(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| process_ticks(*p)).sum()
}

/// `VmRSS` and `VmHWM` (the peak resident set) of `pid`, in KiB.
pub fn memory_kib(pid: u32) -> (Option<u64>, Option<u64>) {
    let status = i32::try_from(pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok())
        .and_then(|process| process.status().ok());
    match status {
        Some(status) => (status.vmrss, status.vmhwm),
        None => (None, None),
    }
}

/// Processes of a MySQL server on this machine (`mariadbd`, `mysqld`), for the CPU
/// figures; empty when MySQL runs elsewhere (or in a container this process cannot see).
pub fn mysql_server_pids() -> Vec<u32> {
    server_pids(&["mariadbd", "mysqld"])
}

/// Processes of a Redis server on this machine, likewise.
pub fn redis_server_pids() -> Vec<u32> {
    server_pids(&["redis-server"])
}

/// The processes on this machine whose command name is one of `names`.
fn server_pids(names: &[&str]) -> Vec<u32> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    processes
        .filter_map(|process| {
            let stat = process.ok()?.stat().ok()?;
            names
                .contains(&stat.comm.as_str())
                .then(|| u32::try_from(stat.pid).ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_the_machine_can_be_sampled() {
        // Burn some CPU so that this process's ticks and the machine's busy ticks move.
        let before = machine_jiffies().expect("machine ticks");
        let own = own_ticks().expect("own ticks");
        let began = std::time::Instant::now();
        let mut x = 0u64;
        while began.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let (busy, total) = machine_jiffies().expect("machine ticks");
        assert!(busy >= before.0 && total > before.1 && busy <= total);
        assert!(own_ticks().expect("own ticks") > own);
        let share = busy_since(Some(before)).expect("busy share");
        assert!((0.0..=1.0).contains(&share), "{share}");
        assert_eq!(process_ticks(std::process::id()).map(|t| t > 0), Some(true));
        let (rss, hwm) = memory_kib(std::process::id());
        assert!(rss.expect("rss") > 0 && hwm.expect("hwm") >= rss.expect("rss"));
        assert!(ticks_per_second() > 0.0);
    }
}
