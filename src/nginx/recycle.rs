//! Worker recycling (`wsgi_max_requests`, `wsgi_max_rss`, `wsgi_max_lifetime`) and the
//! housekeeping timer that watches memory and age.
//!
//! A worker past a limit first drains for a second: every response it sends says
//! `Connection: close` (a header filter), so keep-alive clients close their connections
//! themselves instead of racing a close with their next request. Then it sets nginx's own
//! `ngx_quit`, so it shuts down exactly as on `nginx -s quit`: it stops accepting, finishes the
//! requests in flight, and exits with code 0; the master starts a fresh worker in its place.

use core::ffi::c_void;
use core::ptr;
use std::sync::OnceLock;
use std::time::Duration;

use ngx::ffi::{
    ngx_add_timer, ngx_cycle_t, ngx_event_t, ngx_http_output_header_filter_pt, ngx_http_request_t,
    ngx_http_top_header_filter, ngx_int_t, ngx_quit, NGX_LOG_NOTICE, NGX_OK,
};

use crate::conf::MainConf;
use crate::log::Log;
use crate::stats;

struct Limits {
    max_requests: Option<u64>,
    max_rss: Option<u64>,
    max_lifetime: Option<Duration>,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();
static STARTED: OnceLock<std::time::Instant> = OnceLock::new();

/// The housekeeping timer: event loop thread only.
// SAFETY: an all-zero event is nginx's idea of an unused one.
static mut HOUSEKEEPING: ngx_event_t = unsafe { core::mem::zeroed() };
const HOUSEKEEPING_MS: usize = 1000;

/// Joins the status board, picks this worker's request limit, starts housekeeping.
///
/// # Safety
/// Call from `init_process`, on the event loop thread.
pub unsafe fn start(cycle: &ngx_cycle_t, mcf: &MainConf) {
    if let Some(zone) = mcf.zone {
        // SAFETY: the zone was mapped and initialised by nginx before the workers forked.
        unsafe { stats::attach((*zone.as_ptr()).data as *mut u8) };
        stats::claim(mcf.threads());
    }
    let max_requests = mcf.max_requests.map(|(n, jitter)| {
        if jitter == 0 {
            return n;
        }
        // Spread recycling so that workers do not restart together.
        let seed =
            std::process::id() as u64 ^ stats::unix_now().wrapping_mul(0x9e37_79b9_7f4a_7c15);
        n + seed % (jitter + 1)
    });
    let _ = STARTED.set(std::time::Instant::now());
    let _ = LIMITS.set(Limits {
        max_requests,
        max_rss: mcf.max_rss,
        max_lifetime: mcf.max_lifetime_ms.map(Duration::from_millis),
    });
    // SAFETY: the static event is used by this thread only; it is cancelable, so it never
    // delays a graceful exit.
    unsafe {
        let ev = &raw mut HOUSEKEEPING;
        (*ev).handler = Some(housekeeping);
        (*ev).log = cycle.log;
        // nginx's debug logging reads a timer's `data` as a connection; its own standalone
        // timers point it at the cycle, which starts the same way.
        (*ev).data = cycle as *const ngx_cycle_t as *mut c_void;
        (*ev).set_cancelable(1);
        ngx_add_timer(ev, HOUSEKEEPING_MS as _);
    }
    stats::set_rss(stats::current_rss());
}

/// Records the worker's memory now (after Python started and imported the applications).
pub fn update_rss() {
    stats::set_rss(stats::current_rss());
}

/// Leaves the status board (at worker exit).
pub fn stop() {
    stats::release();
}

extern "C" fn housekeeping(ev: *mut ngx_event_t) {
    let rss = stats::current_rss();
    stats::set_rss(rss);
    if let Some(limits) = LIMITS.get() {
        if let Some(max) = limits.max_rss.filter(|&m| rss > m) {
            recycle(&format!(
                "its memory ({} MB) passed wsgi_max_rss ({} MB)",
                rss >> 20,
                max >> 20
            ));
        }
        if let (Some(max), Some(started)) = (limits.max_lifetime, STARTED.get()) {
            let age = started.elapsed();
            if age >= max {
                recycle(&format!(
                    "it has run for {}s (wsgi_max_lifetime {}s)",
                    age.as_secs(),
                    max.as_secs()
                ));
            }
        }
    }
    if !stats::recycling() {
        // SAFETY: re-arming our own timer on the loop thread.
        unsafe { ngx_add_timer(ev, HOUSEKEEPING_MS as _) };
    }
}

/// Requests this worker has finished (kept here, not only on the status board: recycling
/// must work whether or not the worker got a board slot).
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A request of this worker ended.
pub fn request_done(app_time: Option<Duration>) {
    let (busy, queue) = crate::pool::get()
        .map(|p| {
            (
                p.busy.load(std::sync::atomic::Ordering::Relaxed),
                p.waiting(),
            )
        })
        .unwrap_or((0, 0));
    stats::request_done(app_time, busy, queue);
    let served = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if let Some(max) = LIMITS.get().and_then(|l| l.max_requests) {
        if served >= max {
            recycle(&format!("it served {served} requests (wsgi_max_requests)"));
        }
    }
}

/// How long a recycling worker answers with `Connection: close` before it quits.
const DRAIN_MS: usize = 1000;
// SAFETY: as for `HOUSEKEEPING`.
static mut DRAIN_TIMER: ngx_event_t = unsafe { core::mem::zeroed() };
static mut NEXT_HEADER_FILTER: ngx_http_output_header_filter_pt = None;

/// Starts this worker's graceful exit, once.
fn recycle(reason: &str) {
    if !stats::begin_recycling() {
        return;
    }
    let log = Log::cycle();
    log.write_direct(
        NGX_LOG_NOTICE,
        &format!("wsgi: recycling worker {}: {reason}", std::process::id()),
    );
    // SAFETY: the static drain timer is used on this thread only.
    unsafe {
        let ev = &raw mut DRAIN_TIMER;
        (*ev).handler = Some(quit);
        (*ev).log = log.as_ptr();
        (*ev).data = ngx::ffi::ngx_cycle as *mut c_void;
        (*ev).set_cancelable(1);
        ngx_add_timer(ev, DRAIN_MS as _);
    }
}

extern "C" fn quit(_ev: *mut ngx_event_t) {
    // SAFETY: the worker's own quit flag, read by its process cycle after this event
    // handler returns, on this same thread.
    unsafe { ptr::write_volatile(&raw mut ngx_quit, 1) };
}

/// Installs the header filter that closes keep-alive connections while draining.
///
/// # Safety
/// Call from `postconfiguration`, while nginx builds its filter chain.
pub unsafe fn install_header_filter() {
    // SAFETY: the documented way to join the header filter chain.
    unsafe {
        NEXT_HEADER_FILTER = ngx_http_top_header_filter;
        ngx_http_top_header_filter = Some(header_filter);
    }
}

extern "C" fn header_filter(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls header filters with a live request on its loop thread; the next
    // filter was recorded at configuration time.
    unsafe {
        if stats::recycling() {
            (*r).set_keepalive(0);
        }
        match NEXT_HEADER_FILTER {
            Some(next) => next(r),
            None => NGX_OK as ngx_int_t,
        }
    }
}
