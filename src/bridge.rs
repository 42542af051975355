//! The only place that sees both Python threads and the event loop.
//!
//! Python threads report through `wake` (an exchange has news) and `log_later` (a log line
//! with no request). Both write to an eventfd of the module's own, registered with the
//! worker's event loop as an nginx connection; `ngx_notify` is not used because nginx's
//! thread pools own its single handler. On the loop, `on_wake` drains the eventfd and pumps
//! every exchange with news into its request: headers and body through nginx's filters, as
//! fast as the client takes them (see `exchange.rs` for the backpressure).
//!
//! Request lifetime while a thread runs its application: the body-reading reference keeps
//! the request alive until we finalize it once, on `Done` (or at the timeout); and
//! `r->main->blocked` makes nginx defer a termination (client gone) until then. A cleanup
//! handler marks the exchange cancelled if nginx terminates the request first. `LoopState`
//! is freed by whichever of the cleanup handler or the final step comes last.
//!
//! Inline mode (`wsgi_threads 0`) uses the same `LoopState` when a response has to wait for
//! the client: the paused body (`wsgi::Running`) is resumed on the loop from write events,
//! and a termination meanwhile closes it from the cleanup handler (nothing else holds it).
//!
//! Waiting for the client follows `ngx_http_writer`: a write event delayed by `limit_rate`
//! is the write filter's (its timer is left alone), otherwise `send_timeout` watches it.

use core::ffi::c_void;
use core::ptr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ngx::ffi::{
    ngx_add_timer, ngx_connection_t, ngx_cycle_t, ngx_del_timer, ngx_event_t, ngx_get_connection,
    ngx_handle_read_event, ngx_handle_write_event, ngx_http_cleanup_add, ngx_http_finalize_request,
    ngx_http_output_filter, ngx_http_request_empty_handler, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_http_test_reading, ngx_int_t, ngx_msec_t, NGX_ERROR, NGX_HTTP_BAD_GATEWAY, NGX_HTTP_GATEWAY_TIME_OUT,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use pyo3::Python;
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::exchange::{Event, Exchange};
use crate::log::Log;
use crate::output::{self, output_busy, NgxSink};
use crate::response::Sink;
use crate::wsgi::{Outcome, Running, Step};

struct Shared {
    /// -1 once the bridge is stopped.
    efd: AtomicI32,
    /// Exchanges with news, and log lines from threads.
    inbox: Mutex<(Vec<Arc<Exchange>>, Vec<(u32, String)>)>,
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
pub fn wake(ex: Arc<Exchange>) {
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
pub fn log_later(level: u32, msg: &str) -> bool {
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
            return Err(format!("eventfd() failed: {}", std::io::Error::last_os_error()));
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
        let _ = SHARED.set(Shared { efd: AtomicI32::new(efd), inbox: Mutex::new((Vec::new(), Vec::new())) });
        CONN.store(c, Ordering::Release);
    }
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
    unsafe { libc::read(s.efd.load(Ordering::Acquire), &mut count as *mut u64 as *mut c_void, 8) };
    let (exchanges, logs) = {
        let mut inbox = s.inbox.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut inbox.0), std::mem::take(&mut inbox.1))
    };
    for (level, msg) in logs {
        Log::cycle().write_direct(level, &msg);
    }
    for ex in exchanges {
        ex.unschedule();
        let ls = ex.loop_state.load(Ordering::Acquire) as *mut LoopState;
        if ls.is_null() {
            // The request is over (timed out): drain what the thread still sends.
            while let Some(ev) = ex.pop() {
                if let Event::Log(level, msg) = ev {
                    Log::cycle().write_direct(level, &format!("{msg} (after {} ended)", ex.what));
                }
            }
        } else {
            // SAFETY: a non-null loop state is live until the request's last step (below)
            // or its cleanup clears it, both on this thread. Requests posted meanwhile (a
            // termination) run here, as nginx's own event handlers do.
            unsafe {
                let c = (*(*ls).r).connection;
                pump(ls);
                ngx_http_run_posted_requests(c);
            }
        }
    }
    // SAFETY: the read event of our eventfd connection.
    unsafe { ngx_handle_read_event(ev, 0) };
}

/// Body bytes sent through the filters in one pass at most.
const COALESCE_LIMIT: usize = 256 * 1024;

/// Who produces the response.
enum Work {
    /// A Python thread, through the exchange; the loop writes into the request with `sink`.
    Thread { ex: Arc<Exchange>, sink: NgxSink },
    /// The loop itself (inline mode): a paused body, resumed when the client drained.
    Inline { running: Option<Running>, app_time: std::time::Duration },
}

/// The loop's side of a request whose response is still being produced.
#[repr(C)]
pub struct LoopState {
    /// `wsgi_timeout` (threaded mode). First field: `on_timeout` finds the state from it.
    timer: ngx_event_t,
    r: *mut ngx_http_request_t,
    work: Work,
    app_name: &'static str,
    timeout: ngx_msec_t,
    headers_sent: bool,
    /// False once the head went out for a response without a body (HEAD, 204, 304, a
    /// header-only subrequest such as `auth_request`'s): body events are dropped.
    body_allowed: bool,
    /// nginx still holds unsent output: take no more events until it drains.
    waiting_write: bool,
    /// The client is gone or sending failed: discard events until `Done`.
    aborted: bool,
    /// The request has been finalized (or is being): the cleanup handler frees us.
    finished: bool,
    /// nginx ran our cleanup handler (terminated the request) before we finished.
    cleaned: bool,
}

fn request_log(r: *mut ngx_http_request_t) -> Log {
    // SAFETY: called with live requests only; the log lives as long as the connection.
    unsafe { Log::from_ptr((*(*r).connection).log) }
}

impl LoopState {
    fn new(r: *mut ngx_http_request_t, work: Work, app_name: &'static str, timeout: ngx_msec_t) -> *mut LoopState {
        Box::into_raw(Box::new(LoopState {
            // SAFETY: an all-zero event is nginx's idea of an unused event.
            timer: unsafe { core::mem::zeroed() },
            r,
            work,
            app_name,
            timeout,
            headers_sent: false,
            body_allowed: true,
            waiting_write: false,
            aborted: false,
            finished: false,
            cleaned: false,
        }))
    }
}

/// Registers the cleanup handler and the module context of a new loop state. False (and
/// the state freed) when the request pool is exhausted.
///
/// # Safety
/// `r` is a live request on its loop thread; `ls` was just made by `LoopState::new`.
unsafe fn attach(r: *mut ngx_http_request_t, ls: *mut LoopState) -> bool {
    // SAFETY: the caller's contract; the cleanup entry is freed with the request pool.
    unsafe {
        let cln = ngx_http_cleanup_add(r, 0);
        if cln.is_null() {
            drop(Box::from_raw(ls));
            return false;
        }
        (*cln).handler = Some(cleanup);
        (*cln).data = ls as *mut c_void;
        set_ctx(r, ls);
        // Notice a client that goes away while the application runs.
        (*r).read_event_handler = Some(ngx_http_test_reading);
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
    }
    true
}

/// Hands the request to the Python threads. Returns the code to finalize the request with
/// now (a 503 when the queue is full), or `None` when the request continues in the loop
/// state and is finalized later.
///
/// # Safety
/// `r` is a live request in its body-read post handler, on the event loop thread.
pub unsafe fn dispatch(
    r: *mut ngx_http_request_t,
    job: crate::pool::Job,
    app_name: &'static str,
    timeout: ngx_msec_t,
) -> Option<ngx_int_t> {
    let Some(pool) = crate::pool::get() else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let ex = job.ex.clone();
    let log = request_log(r);
    // SAFETY: the sink lives in the loop state, used on this thread while `r` lives.
    let work = Work::Thread { ex: ex.clone(), sink: unsafe { NgxSink::new(r) } };
    let ls = LoopState::new(r, work, app_name, timeout);
    // SAFETY: the caller's contract.
    if !unsafe { attach(r, ls) } {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    ex.loop_state.store(ls as *mut c_void, Ordering::Release);

    if let Err(_job) = pool.try_submit(job) {
        log.write_direct(
            NGX_LOG_ERR,
            &format!(
                "wsgi queue is full ({} requests waiting for a python thread), request refused with 503",
                pool.waiting()
            ),
        );
        // SAFETY: our own loop state; the request is finalized by the caller, and the
        // cleanup handler frees the state.
        unsafe {
            (*ls).finished = true;
            set_ctx(r, ptr::null_mut());
        }
        ex.loop_state.store(ptr::null_mut(), Ordering::Release);
        return Some(ngx::ffi::NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }

    crate::stats::request_started(pool.waiting());
    // SAFETY: the live main request; `blocked` defers nginx's termination of it while the
    // application runs. We hold it until the final step.
    unsafe {
        let main = &mut *(*r).main;
        main.set_blocked(main.blocked() + 1);
    }
    if timeout > 0 {
        // SAFETY: the timer event lives in the loop state, removed before it is freed; its
        // `data` is the connection, which nginx's debug logging reads as one.
        unsafe {
            let t = &mut (*ls).timer;
            t.handler = Some(on_timeout);
            t.data = (*r).connection as *mut c_void;
            t.log = (*(*r).connection).log;
            ngx_add_timer(t, timeout);
        }
    }
    None
}

/// Inline mode: the body of `running` waits for the client. Returns the code to finalize
/// with now, or `None` when the request continues from write events.
///
/// # Safety
/// `r` is a live request in its body-read post handler, on the event loop thread; its
/// header has been sent.
pub unsafe fn park(
    r: *mut ngx_http_request_t,
    running: Running,
    app_name: &'static str,
    app_time: std::time::Duration,
) -> Option<ngx_int_t> {
    let ls = LoopState::new(r, Work::Inline { running: Some(running), app_time }, app_name, 0);
    // SAFETY: the caller's contract.
    if !unsafe { attach(r, ls) } {
        return Some(NGX_ERROR as ngx_int_t);
    }
    // SAFETY: the new, attached loop state of the live request.
    unsafe {
        (*ls).headers_sent = true;
        (*ls).waiting_write = true;
        arm_write(&mut *ls);
    }
    None
}

unsafe fn set_ctx(r: *mut ngx_http_request_t, ls: *mut LoopState) {
    let idx = <crate::Module as ngx::http::HttpModule>::module().ctx_index;
    // SAFETY: `r->ctx` has a slot per HTTP module.
    unsafe { *(*r).ctx.add(idx) = ls as *mut c_void };
}

unsafe fn get_ctx(r: *mut ngx_http_request_t) -> *mut LoopState {
    let idx = <crate::Module as ngx::http::HttpModule>::module().ctx_index;
    // SAFETY: as in `set_ctx`.
    unsafe { *(*r).ctx.add(idx) as *mut LoopState }
}

/// Moves the response on: the thread's events, or the paused inline body.
unsafe fn resume(ls: *mut LoopState) {
    // SAFETY: the caller passes a live loop state.
    match unsafe { &(*ls).work } {
        Work::Thread { .. } => unsafe { pump(ls) },
        Work::Inline { .. } => unsafe { step_inline(ls) },
    }
}

/// Inline mode: pulls more of the paused body, on the loop.
unsafe fn step_inline(ls: *mut LoopState) {
    // SAFETY: a live loop state whose request is live.
    let s = unsafe { &mut *ls };
    let Work::Inline { running, app_time } = &mut s.work else { return };
    let Some(mut run) = running.take() else { return };
    let step = if s.aborted {
        Python::attach(|py| run.abandon(py));
        Step::Done(Outcome::ClientGone)
    } else {
        let t0 = std::time::Instant::now();
        // A finished body is dropped with the interpreter held.
        let (run, step) = Python::attach(move |py| {
            let step = run.resume(py);
            (if step == Step::Pause { Some(run) } else { None }, step)
        });
        *app_time += t0.elapsed();
        *running = run;
        step
    };
    match step {
        Step::Pause => {
            s.waiting_write = true;
            // SAFETY: the live request.
            unsafe { arm_write(s) };
        }
        Step::Done(outcome) => {
            let t = *app_time;
            crate::worker::request_done(Some(t));
            // SAFETY: the final step; `ls` must not be used after it.
            unsafe { complete(ls, outcome) };
        }
    }
}

/// Applies the exchange's events to the request, until nginx cannot take more output.
unsafe fn pump(ls: *mut LoopState) {
    // SAFETY: the caller passes a live loop state whose request is live.
    let s = unsafe { &mut *ls };
    let Work::Thread { ex, sink } = &mut s.work else { return };
    let ex = ex.clone();
    // The sink lives in the loop state, apart from the flags `abort`/`progress` touch.
    let sink: *mut NgxSink = sink;
    loop {
        if s.waiting_write && !s.aborted {
            return;
        }
        let Some(ev) = ex.pop() else { return };
        match ev {
            Event::Log(level, msg) => request_log(s.r).write_direct(level, &msg),
            Event::Head(head) => {
                if s.aborted {
                    continue;
                }
                // SAFETY: see `sink` above.
                match unsafe { (*sink).start(&head) } {
                    Ok(body) => {
                        s.headers_sent = true;
                        s.body_allowed = body;
                    }
                    Err(_) => abort(s),
                }
                progress(s);
            }
            Event::Body(data) => {
                if s.aborted || !s.body_allowed {
                    continue;
                }
                // Pieces that are already waiting go out together: one write, not one each.
                let mut pieces = vec![data];
                let mut size = pieces[0].len();
                while size < COALESCE_LIMIT {
                    match ex.pop_body() {
                        Some(more) => {
                            size += more.len();
                            pieces.push(more);
                        }
                        None => break,
                    }
                }
                let slices: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
                // SAFETY: see `sink` above.
                if unsafe { (*sink).body_pieces(&slices) }.is_err() {
                    abort(s);
                    continue;
                }
                progress(s);
                // SAFETY: the live request.
                if unsafe { output_busy(s.r) } {
                    // Now the client is the slow side: send_timeout watches it, and the
                    // application's timeout waits until output flows again.
                    s.waiting_write = true;
                    // SAFETY: the loop state's own timer; the live request.
                    unsafe {
                        if s.timer.timer_set() != 0 {
                            ngx_del_timer(&mut s.timer);
                        }
                        arm_write(s);
                    }
                    return;
                }
            }
            Event::Done(outcome, app_time) => {
                crate::worker::request_done(Some(app_time));
                // SAFETY: the final step; `ls` must not be used after it.
                unsafe { complete(ls, outcome) };
                return;
            }
        }
    }
}

/// The application produced output: `wsgi_timeout` counts from here again (like
/// `proxy_read_timeout`, it bounds the time between two pieces of output, so a long stream
/// that keeps producing is not cut). Not after an abort: the request waits only for the
/// thread to notice.
fn progress(s: &mut LoopState) {
    if s.timeout > 0 && !s.aborted && s.timer.handler.is_some() {
        // SAFETY: the loop state's own timer event, set up in `dispatch`.
        unsafe { ngx_add_timer(&mut s.timer, s.timeout) };
    }
}

fn send_conf(r: &ngx_http_request_t) -> (usize, ngx_msec_t) {
    NgxHttpCoreModule::location_conf(r).map(|c| (c.send_lowat, c.send_timeout)).unwrap_or((0, 60000))
}

/// Waits for the connection to drain, as `ngx_http_set_write_handler` does.
unsafe fn arm_write(s: &mut LoopState) {
    // SAFETY: the live request and its connection's write event.
    unsafe {
        let r = &mut *s.r;
        r.write_event_handler = Some(on_write);
        let wev = (*r.connection).write;
        if (*wev).ready() != 0 && (*wev).delayed() != 0 {
            return;
        }
        let (lowat, send_timeout) = send_conf(r);
        if (*wev).delayed() == 0 {
            ngx_add_timer(wev, send_timeout);
        }
        if ngx_handle_write_event(wev, lowat) != 0 {
            abort(s);
        }
    }
}

fn abort(s: &mut LoopState) {
    s.aborted = true;
    if let Work::Thread { ex, .. } = &s.work {
        ex.cancel();
    }
}

/// `r->write_event_handler` while output waits, modelled on `ngx_http_writer`: flush, and
/// once nginx holds nothing more, move the response on.
extern "C" fn on_write(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with the live request whose ctx we set.
    unsafe {
        let ls = get_ctx(r);
        if ls.is_null() {
            return;
        }
        let s = &mut *ls;
        let c = (*r).connection;
        let wev = (*c).write;
        if (*wev).timedout() != 0 {
            request_log(r).write_direct(NGX_LOG_INFO, "client timed out while sending wsgi response");
            (*c).set_timedout(1);
            abort(s);
            s.waiting_write = false;
            resume(ls);
            return;
        }
        let (lowat, send_timeout) = send_conf(&*r);
        if (*wev).delayed() != 0 || (*r).aio() != 0 {
            // limit_rate (or aio) holds the output: its own timer resumes it.
            if (*wev).delayed() == 0 {
                ngx_add_timer(wev, send_timeout);
            }
            if ngx_handle_write_event(wev, lowat) != 0 {
                abort(s);
                s.waiting_write = false;
                resume(ls);
            }
            return;
        }
        let rc = ngx_http_output_filter(r, ptr::null_mut());
        if rc == NGX_ERROR as ngx_int_t || (*c).error() != 0 {
            abort(s);
            s.waiting_write = false;
            resume(ls);
            return;
        }
        if output_busy(r) {
            if (*wev).delayed() == 0 {
                ngx_add_timer(wev, send_timeout);
            }
            if ngx_handle_write_event(wev, lowat) != 0 {
                abort(s);
                s.waiting_write = false;
                resume(ls);
            }
            return;
        }
        if (*wev).timer_set() != 0 && (*wev).delayed() == 0 {
            ngx_del_timer(wev);
        }
        s.waiting_write = false;
        (*r).write_event_handler = Some(ngx_http_request_empty_handler);
        progress(s);
        resume(ls);
    }
}

/// The response is over: end it and finalize the request.
unsafe fn complete(ls: *mut LoopState, outcome: Outcome) {
    // SAFETY: the caller's contract; after finalizing, only `cleaned` decides who frees.
    unsafe {
        let s = &mut *ls;
        let r = s.r;
        release(s);
        let c = (*r).connection;
        let rc = if s.cleaned || s.aborted || (*c).error() != 0 {
            NGX_ERROR as ngx_int_t
        } else {
            match outcome {
                // What nginx could not send yet, its own writer sends after finalize.
                Outcome::Complete { short } => output::finish(r, short),
                Outcome::FailedEarly if !s.headers_sent => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
                Outcome::Refused if !s.headers_sent => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
                _ => NGX_ERROR as ngx_int_t,
            }
        };
        let free_now = s.cleaned;
        ngx_http_finalize_request(r, rc);
        if free_now {
            drop(Box::from_raw(ls));
        }
    }
}

/// Leaves the request: timer off, `blocked` released, the exchange forgets us.
unsafe fn release(s: &mut LoopState) {
    // SAFETY: the live request (or one nginx keeps for us through `blocked`).
    unsafe {
        if s.timer.timer_set() != 0 {
            ngx_del_timer(&mut s.timer);
        }
        s.finished = true;
        if let Work::Thread { ex, .. } = &s.work {
            ex.loop_state.store(ptr::null_mut(), Ordering::Release);
            let main = &mut *(*s.r).main;
            main.set_blocked(main.blocked().saturating_sub(1));
        }
        set_ctx(s.r, ptr::null_mut());
    }
}

/// `wsgi_timeout` expired: the client gets 504 (or a cut response), the application's
/// thread gets an exception.
extern "C" fn on_timeout(ev: *mut ngx_event_t) {
    // SAFETY: the timer is the first field of its live loop state (removed before the
    // state is freed).
    unsafe {
        let ls = ev as *mut LoopState;
        let s = &mut *ls;
        let r = s.r;
        let Work::Thread { ex, .. } = &s.work else { return };
        let ex = ex.clone();
        let secs = s.timeout as f64 / 1000.0;
        let message = format!(
            "wsgi app \"{}\" timed out after {secs}s while handling \"{}\"",
            s.app_name, ex.what
        );
        let answer = if s.headers_sent { "response cut" } else { "answered with 504" };
        request_log(r).write_direct(NGX_LOG_ERR, &format!("{message}, {answer}"));
        ex.cancel();
        if let Some(pool) = crate::pool::get() {
            pool.interrupt(ex.clone(), message);
        }
        crate::worker::request_done(None);
        let rc = if s.headers_sent || s.cleaned || s.aborted {
            NGX_ERROR as ngx_int_t
        } else {
            NGX_HTTP_GATEWAY_TIME_OUT as ngx_int_t
        };
        release(s);
        let free_now = s.cleaned;
        let c = (*r).connection;
        ngx_http_finalize_request(r, rc);
        if free_now {
            drop(Box::from_raw(ls));
        }
        ngx_http_run_posted_requests(c);
    }
}

/// Request cleanup: frees the loop state once finished. If nginx ends the request first
/// (client gone): a thread's application is cancelled and the final step frees the state;
/// a paused inline body is closed here and the state freed.
extern "C" fn cleanup(data: *mut c_void) {
    let ls = data as *mut LoopState;
    // SAFETY: our loop state, live until freed here or in the final step.
    unsafe {
        let s = &mut *ls;
        if s.finished {
            drop(Box::from_raw(ls));
            return;
        }
        s.cleaned = true;
        s.aborted = true;
        match &mut s.work {
            Work::Thread { ex, .. } => ex.cancel(),
            Work::Inline { running, .. } => {
                if let Some(run) = running.take() {
                    Python::attach(|py| run.abandon(py));
                }
                crate::worker::request_done(None);
                set_ctx(s.r, ptr::null_mut());
                drop(Box::from_raw(ls));
            }
        }
    }
}
