//! The wake-up channel from Python threads to the event loop: an eventfd of the module's
//! own, registered with the worker's event loop as an nginx connection (`ngx_notify` is not
//! used: nginx's thread pools own its single handler), and an inbox of exchanges with news
//! and log lines. Threads only push and signal; the loop drains (`on_wake`).

use core::ffi::c_void;
use core::ptr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ngx::ffi::{
    ngx_connection_t, ngx_cycle_t, ngx_event_t, ngx_get_connection, ngx_handle_read_event,
};

use crate::log::Log;
use crate::python::exchange::Exchange;

/// Exchanges with news, and log lines (level, text) from threads.
type Inbox = (Vec<Arc<Exchange>>, Vec<(u32, String)>);

struct Shared {
    /// -1 once the bridge is stopped.
    efd: AtomicI32,
    /// Exchanges with news, and log lines from threads.
    inbox: Mutex<Inbox>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The eventfd's nginx connection (event loop thread only).
static CONN: AtomicPtr<ngx_connection_t> = AtomicPtr::new(ptr::null_mut());

fn signal(efd: RawFd) {
    if efd < 0 {
        return;
    }
    let one: u64 = 1;
    // SAFETY: writing 8 bytes to our eventfd; a full counter (EAGAIN) already means "wake".
    unsafe { libc::write(efd, &one as *const u64 as *const c_void, 8) };
}

/// Thread side: `ex` has events for the loop.
pub(super) fn wake(ex: Arc<Exchange>) {
    let Some(s) = SHARED.get() else { return };
    let mut inbox = s.inbox.lock().unwrap_or_else(|e| e.into_inner());
    let first = inbox.0.is_empty() && inbox.1.is_empty();
    inbox.0.push(ex);
    drop(inbox);
    if first {
        signal(s.efd.load(Ordering::Acquire));
    }
}

/// Thread side: a message for the worker's log. False when there is no bridge (the caller
/// then writes it itself).
fn log_later(level: u32, msg: &str) -> bool {
    let Some(s) = SHARED.get() else { return false };
    let mut inbox = s.inbox.lock().unwrap_or_else(|e| e.into_inner());
    let first = inbox.0.is_empty() && inbox.1.is_empty();
    inbox.1.push((level, msg.to_string()));
    drop(inbox);
    if first {
        signal(s.efd.load(Ordering::Acquire));
    }
    true
}

/// Registers the eventfd with this worker's event loop.
///
/// # Safety
/// Call once, from `init_process`, on the worker's event loop thread.
pub unsafe fn start(cycle: *mut ngx_cycle_t) -> Result<(), String> {
    // SAFETY: plain syscalls, then nginx's own connection and event calls on its loop thread.
    unsafe {
        let efd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        if efd < 0 {
            return Err(format!(
                "eventfd() failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let c = ngx_get_connection(efd, (*cycle).log);
        if c.is_null() {
            libc::close(efd);
            return Err("no free connection for the wake-up eventfd".into());
        }
        let rev = (*c).read;
        (*rev).handler = Some(on_wake);
        (*rev).log = (*cycle).log;
        (*(*c).write).log = (*cycle).log;
        (*c).log = (*cycle).log;
        if ngx_handle_read_event(rev, 0) != 0 {
            return Err("cannot add the wake-up eventfd to the event loop".into());
        }
        let _ = SHARED.set(Shared {
            efd: AtomicI32::new(efd),
            inbox: Mutex::new((Vec::new(), Vec::new())),
        });
        CONN.store(c, Ordering::Release);
    }
    // From here on, exchanges and log lines of other threads come through the channel.
    crate::python::exchange::set_waker(Box::new(wake));
    crate::log::set_forwarder(log_later);
    Ok(())
}

/// Closes the eventfd connection (at worker exit, after the threads stopped), so nginx
/// does not find it open; messages still queued are logged.
pub fn stop() {
    let c = CONN.swap(ptr::null_mut(), Ordering::AcqRel);
    if c.is_null() {
        return;
    }
    if let Some(s) = SHARED.get() {
        s.efd.store(-1, Ordering::Release);
        let logs = std::mem::take(&mut s.inbox.lock().unwrap_or_else(|e| e.into_inner()).1);
        for (level, msg) in logs {
            Log::cycle().write_direct(level, &msg);
        }
    }
    // SAFETY: our own connection, on the loop thread; closing it also closes the eventfd.
    unsafe { ngx::ffi::ngx_close_connection(c) };
}

extern "C" fn on_wake(ev: *mut ngx_event_t) {
    let Some(s) = SHARED.get() else { return };
    let mut count: u64 = 0;
    // SAFETY: draining our nonblocking eventfd.
    unsafe {
        libc::read(
            s.efd.load(Ordering::Acquire),
            &mut count as *mut u64 as *mut c_void,
            8,
        )
    };
    let (exchanges, logs) = {
        let mut inbox = s.inbox.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut inbox.0), std::mem::take(&mut inbox.1))
    };
    for (level, msg) in logs {
        Log::cycle().write_direct(level, &msg);
    }
    for ex in exchanges {
        ex.unschedule();
        super::deliver(&ex);
    }
    // SAFETY: the read event of our eventfd connection.
    unsafe { ngx_handle_read_event(ev, 0) };
}
