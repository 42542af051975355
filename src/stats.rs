//! Figures every worker publishes for `wsgi_status`, in a shared memory zone, and worker
//! recycling (`wsgi_max_requests`, `wsgi_max_rss`, `wsgi_max_lifetime`).
//!
//! Layout: the zone (`noslab`, created at configuration time and kept across reloads) holds
//! one `Board`: a count of recycled workers and a fixed array of `Slot`s. A worker claims a
//! free slot at start (a slot whose process is gone is free) and clears it at exit. Every
//! field is an atomic that only its worker writes; any worker reads them all, so any worker
//! answers `wsgi_status` for all.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const SLOTS: usize = 128;
pub const BUCKETS: usize = 128;
const MAGIC: u64 = 0x6e67_782d_7773_6731; // "ngx-wsg1"

#[repr(C)]
pub struct Slot {
    pub pid: AtomicI32,
    pub started: AtomicU64,
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub threads: AtomicU64,
    pub busy: AtomicU64,
    pub queue: AtomicU64,
    pub rss: AtomicU64,
    /// Application time histogram: bucket `b` counts times up to `2^((b+1)/4)` µs.
    pub hist: [AtomicU64; BUCKETS],
}

#[repr(C)]
pub struct Board {
    magic: AtomicU64,
    pub recycled: AtomicU64,
    pub slots: [Slot; SLOTS],
}

pub const BOARD_SIZE: usize = std::mem::size_of::<Board>();

static BOARD: AtomicPtr<Board> = AtomicPtr::new(std::ptr::null_mut());
static SLOT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
static RECYCLING: AtomicBool = AtomicBool::new(false);

/// Prepares fresh zone memory (all zero) as a board; a board kept from before a reload is
/// used as it is.
///
/// # Safety
/// `addr` points at `BOARD_SIZE` bytes of shared memory, zeroed when new.
pub unsafe fn init_board(addr: *mut u8) {
    // SAFETY: the caller's contract; atomics are valid for any bit pattern of zeros.
    let board = unsafe { &*(addr as *const Board) };
    if board.magic.load(Ordering::Acquire) != MAGIC {
        board.recycled.store(0, Ordering::Relaxed);
        for s in &board.slots {
            s.pid.store(0, Ordering::Relaxed);
        }
        board.magic.store(MAGIC, Ordering::Release);
    }
}

/// Uses the board at `addr` in this worker.
///
/// # Safety
/// `addr` is a board prepared by `init_board`, mapped for the life of the process.
pub unsafe fn attach(addr: *mut u8) {
    BOARD.store(addr as *mut Board, Ordering::Release);
}

pub fn board() -> Option<&'static Board> {
    let p = BOARD.load(Ordering::Acquire);
    // SAFETY: set once from a mapping that lives as long as the process.
    unsafe { p.as_ref() }
}

fn slot() -> Option<&'static Slot> {
    let p = SLOT.load(Ordering::Acquire);
    // SAFETY: points into the board.
    unsafe { p.as_ref() }
}

pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims a slot for this worker.
pub fn claim(threads: usize) {
    let Some(board) = board() else { return };
    let me = std::process::id() as i32;
    for s in &board.slots {
        let old = s.pid.load(Ordering::Acquire);
        if (old == 0 || (old != me && !alive(old)))
            && s.pid
                .compare_exchange(old, me, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            s.started.store(unix_now(), Ordering::Relaxed);
            for f in [&s.requests, &s.in_flight, &s.busy, &s.queue, &s.rss] {
                f.store(0, Ordering::Relaxed);
            }
            s.threads.store(threads as u64, Ordering::Relaxed);
            for h in &s.hist {
                h.store(0, Ordering::Relaxed);
            }
            SLOT.store(s as *const Slot as *mut Slot, Ordering::Release);
            return;
        }
    }
}

pub fn release() {
    if let Some(s) = slot() {
        s.pid.store(0, Ordering::Release);
    }
    SLOT.store(std::ptr::null_mut(), Ordering::Release);
}

pub fn bucket(d: Duration) -> usize {
    let us = d.as_micros().max(1) as f64;
    ((us.log2() * 4.0) as usize).min(BUCKETS - 1)
}

/// Upper bound of a bucket, in milliseconds.
pub fn bucket_ms(b: usize) -> f64 {
    2f64.powf((b + 1) as f64 / 4.0) / 1000.0
}

/// The `q` quantile (0..1) of a histogram, in ms; None when empty.
pub fn quantile(hist: &[u64], q: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (b, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(bucket_ms(b));
        }
    }
    Some(bucket_ms(hist.len() - 1))
}

pub fn request_started(queue: usize) {
    if let Some(s) = slot() {
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        s.queue.store(queue as u64, Ordering::Relaxed);
    }
}

/// A request ended; `app_time` is how long the application ran. Returns the number of
/// requests this worker has finished.
pub fn request_done(app_time: Option<Duration>, busy: usize, queue: usize) -> u64 {
    let Some(s) = slot() else { return 0 };
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
    s.busy.store(busy as u64, Ordering::Relaxed);
    s.queue.store(queue as u64, Ordering::Relaxed);
    if let Some(t) = app_time {
        s.hist[bucket(t)].fetch_add(1, Ordering::Relaxed);
    }
    s.requests.fetch_add(1, Ordering::Relaxed) + 1
}

/// Python threads running a request, and requests waiting for one (written by the threads
/// as they take and finish jobs).
pub fn set_load(busy: usize, queue: usize) {
    if let Some(s) = slot() {
        s.busy.store(busy as u64, Ordering::Relaxed);
        s.queue.store(queue as u64, Ordering::Relaxed);
    }
}

pub fn set_rss(rss: u64) {
    if let Some(s) = slot() {
        s.rss.store(rss, Ordering::Relaxed);
    }
}

/// This process's resident set size, from /proc/self/statm.
pub fn current_rss() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// Marks the worker as recycling; true the first time (the caller then starts the graceful
/// exit and logs why).
pub fn begin_recycling() -> bool {
    if RECYCLING.swap(true, Ordering::AcqRel) {
        return false;
    }
    if let Some(b) = board() {
        b.recycled.fetch_add(1, Ordering::Relaxed);
    }
    true
}

pub fn recycling() -> bool {
    RECYCLING.load(Ordering::Acquire)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}"))
        .unwrap_or_else(|| "null".into())
}

/// The `wsgi_status` document.
pub fn status_json(server: &str) -> String {
    let mut workers = Vec::new();
    let now = unix_now();
    let recycled = board()
        .map(|b| b.recycled.load(Ordering::Relaxed))
        .unwrap_or(0);
    if let Some(board) = board() {
        for s in &board.slots {
            let pid = s.pid.load(Ordering::Acquire);
            if pid == 0 || !alive(pid) {
                continue;
            }
            let hist: Vec<u64> = s.hist.iter().map(|h| h.load(Ordering::Relaxed)).collect();
            let threads = s.threads.load(Ordering::Relaxed);
            let busy = s.busy.load(Ordering::Relaxed).min(threads);
            let started = s.started.load(Ordering::Relaxed);
            workers.push(format!(
                concat!(
                    "{{\"pid\":{},\"started\":{},\"uptime_s\":{},\"requests\":{},\"in_flight\":{},",
                    "\"threads\":{},\"busy_threads\":{},\"idle_threads\":{},\"queue\":{},",
                    "\"app_time_ms\":{{\"p50\":{},\"p99\":{}}},\"rss_bytes\":{}}}"
                ),
                pid,
                started,
                now.saturating_sub(started),
                s.requests.load(Ordering::Relaxed),
                s.in_flight.load(Ordering::Relaxed),
                threads,
                busy,
                threads - busy,
                s.queue.load(Ordering::Relaxed),
                opt(quantile(&hist, 0.5)),
                opt(quantile(&hist, 0.99)),
                s.rss.load(Ordering::Relaxed),
            ));
        }
    }
    format!(
        "{{\"server\":{},\"module\":{},\"time\":{},\"workers_recycled\":{},\"workers\":[{}]}}\n",
        json_str(server),
        json_str(concat!("ngx-wsgi/", env!("CARGO_PKG_VERSION"))),
        now,
        recycled,
        workers.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        assert_eq!(bucket(Duration::from_micros(1)), 0);
        let b = bucket(Duration::from_millis(10));
        assert!(
            bucket_ms(b) >= 10.0 && bucket_ms(b) < 12.0,
            "{}",
            bucket_ms(b)
        );
        let mut hist = vec![0u64; BUCKETS];
        hist[bucket(Duration::from_micros(100))] = 98;
        hist[bucket(Duration::from_millis(50))] = 2;
        let slow = bucket(Duration::from_secs(300));
        assert!(
            bucket_ms(slow) >= 300_000.0 && bucket_ms(slow) < 360_000.0,
            "{}",
            bucket_ms(slow)
        );
        let p50 = quantile(&hist, 0.5).unwrap();
        let p99 = quantile(&hist, 0.99).unwrap();
        assert!((0.1..0.12).contains(&p50), "{p50}");
        assert!((50.0..60.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&vec![0; BUCKETS], 0.5), None);
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
