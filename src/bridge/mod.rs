//! The only code that sees both Python threads and the event loop.
//!
//! Python threads report through the wake-up channel (`wake.rs`): an exchange has news, or
//! a log line has no request. On the loop, every exchange with news is pumped into its
//! request (`deliver`, `pump`): headers and body through nginx's filters, as fast as the
//! client takes them (see `python/exchange.rs` for the backpressure). The loop finds a
//! request's state from its exchange's id; the Python side holds no pointer of the loop's.
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
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_event_t, ngx_http_cleanup_add, ngx_http_finalize_request,
    ngx_http_request_empty_handler, ngx_http_request_t, ngx_http_run_posted_requests,
    ngx_http_test_reading, ngx_int_t, ngx_msec_t, NGX_ERROR, NGX_HTTP_BAD_GATEWAY,
    NGX_HTTP_GATEWAY_TIME_OUT, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ERR, NGX_LOG_INFO,
};
use pyo3::Python;

use crate::log::Log;
use crate::nginx::output::{self, output_busy, NgxSink};
use crate::nginx::writer::{self, Drain};
use crate::python::exchange::{Event, Exchange};
use crate::python::response::{Sink, SinkError};
use crate::python::wsgi::{Outcome, Running, Step};

pub mod wake;

pub use wake::{start, stop};

thread_local! {
    /// Requests whose application runs on a Python thread, by exchange id (loop thread only).
    static STATES: RefCell<HashMap<u64, *mut LoopState>> = RefCell::new(HashMap::new());
}

/// An exchange has news: pump it into its request, or drain it if the request is over.
fn deliver(ex: &Arc<Exchange>) {
    let ls = STATES.with(|m| m.borrow().get(&ex.id).copied());
    match ls {
        None => {
            // The request is over (timed out): drain what the thread still sends.
            while let Some(ev) = ex.pop() {
                if let Event::Log(level, msg) = ev {
                    Log::cycle().write_direct(level, &format!("{msg} (after {} ended)", ex.what));
                }
            }
        }
        // SAFETY: a registered loop state is live until the request's last step or its
        // cleanup removes it, both on this thread. Requests posted meanwhile (a termination)
        // run here, as nginx's own event handlers do.
        Some(ls) => unsafe {
            let c = (*(*ls).r).connection;
            pump(ls);
            ngx_http_run_posted_requests(c);
        },
    }
}

/// Body bytes sent through the filters in one pass at most.
const COALESCE_LIMIT: usize = 256 * 1024;

/// Who produces the response.
enum Work {
    /// A Python thread, through the exchange; the loop writes into the request with `sink`.
    Thread { ex: Arc<Exchange>, sink: NgxSink },
    /// The loop itself (inline mode): a paused body, resumed when the client drained.
    Inline {
        running: Option<Running>,
        app_time: std::time::Duration,
    },
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
    /// nginx answers with this status instead of the application (`SinkError::Answered`):
    /// the thread's events are dropped, the request is finalized with it.
    answered: Option<u16>,
}

fn log_of(r: *mut ngx_http_request_t) -> *mut ngx::ffi::ngx_log_t {
    // SAFETY: called with live requests only.
    unsafe { (*(*r).connection).log }
}

fn request_log(r: *mut ngx_http_request_t) -> Log {
    // SAFETY: called with live requests only; the log lives as long as the connection.
    unsafe { Log::from_ptr((*(*r).connection).log) }
}

impl LoopState {
    fn new(
        r: *mut ngx_http_request_t,
        work: Work,
        app_name: &'static str,
        timeout: ngx_msec_t,
    ) -> *mut LoopState {
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
            answered: None,
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
    job: crate::python::pool::Job,
    app_name: &'static str,
    timeout: ngx_msec_t,
) -> Option<ngx_int_t> {
    let Some(pool) = crate::python::pool::get() else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let ex = job.ex.clone();
    let log = request_log(r);
    let work = Work::Thread {
        ex: ex.clone(),
        // SAFETY: the sink lives in the loop state, used on this thread while `r` lives.
        sink: unsafe { NgxSink::new(r) },
    };
    let ls = LoopState::new(r, work, app_name, timeout);
    // SAFETY: the caller's contract.
    if !unsafe { attach(r, ls) } {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    }
    STATES.with(|m| m.borrow_mut().insert(ex.id, ls));

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
        STATES.with(|m| m.borrow_mut().remove(&ex.id));
        return Some(ngx::ffi::NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t);
    }

    crate::stats::request_started(pool.waiting());
    crate::debug!(
        log_of(r),
        "wsgi dispatch: exchange {} to the python threads, {} waiting",
        ex.id,
        pool.waiting()
    );
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
    let ls = LoopState::new(
        r,
        Work::Inline {
            running: Some(running),
            app_time,
        },
        app_name,
        0,
    );
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
        // SAFETY: the caller's live loop state, passed on.
        Work::Thread { .. } => unsafe { pump(ls) },
        // SAFETY: as above.
        Work::Inline { .. } => unsafe { step_inline(ls) },
    }
}

/// Inline mode: pulls more of the paused body, on the loop.
unsafe fn step_inline(ls: *mut LoopState) {
    // SAFETY: a live loop state whose request is live.
    let s = unsafe { &mut *ls };
    let Work::Inline { running, app_time } = &mut s.work else {
        return;
    };
    let Some(mut run) = running.take() else {
        return;
    };
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
    crate::debug!(log_of(s.r), "wsgi inline step: {step:?}");
    match step {
        Step::Pause => {
            s.waiting_write = true;
            // SAFETY: the live request.
            unsafe { arm_write(s) };
        }
        Step::Done(outcome) => {
            let t = *app_time;
            // SAFETY: the live request.
            if let Some(vars) = unsafe { crate::nginx::vars::get_or_make(s.r) } {
                vars.app_time = Some(t);
                vars.queue_time = Some(std::time::Duration::ZERO);
            }
            crate::nginx::recycle::request_done(Some(t));
            // SAFETY: the final step; `ls` must not be used after it.
            unsafe { complete(ls, outcome) };
        }
    }
}

/// Applies the exchange's events to the request, until nginx cannot take more output.
unsafe fn pump(ls: *mut LoopState) {
    // SAFETY: the caller passes a live loop state whose request is live.
    let s = unsafe { &mut *ls };
    let Work::Thread { ex, sink } = &mut s.work else {
        return;
    };
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
                crate::debug!(
                    log_of(s.r),
                    "wsgi head: status {}, {} headers",
                    head.status,
                    head.headers.len()
                );
                // SAFETY: see `sink` above.
                match unsafe { (*sink).start(&head) } {
                    Ok(body) => {
                        s.headers_sent = true;
                        s.body_allowed = body;
                    }
                    Err(SinkError::Answered(status)) => {
                        // Not a lost client: nginx answers. The application stops (its next
                        // write fails) and its close() runs; the answer waits for Done.
                        s.answered = Some(status);
                        s.body_allowed = false;
                        if let Work::Thread { ex, .. } = &s.work {
                            ex.cancel();
                        }
                    }
                    Err(SinkError::Closed) => abort(s),
                }
                progress(s);
            }
            Event::Body(data) => {
                if s.aborted || !s.body_allowed {
                    continue;
                }
                // Pieces that are already waiting go out together: one write, not one each.
                let mut size = data.len();
                let mut pieces = vec![data];
                while size < COALESCE_LIMIT {
                    match ex.pop_body() {
                        Some(more) => {
                            size += more.len();
                            pieces.push(more);
                        }
                        None => break,
                    }
                }
                crate::debug!(
                    log_of(s.r),
                    "wsgi body: {size} bytes in {} pieces",
                    pieces.len()
                );
                // SAFETY: see `sink` above.
                let sent = unsafe { (*sink).body_chunks(pieces) };
                if sent_and_busy(s, sent) {
                    return;
                }
            }
            Event::File(file) => {
                if s.aborted || !s.body_allowed {
                    continue;
                }
                crate::debug!(log_of(s.r), "wsgi body: {} bytes of a file", file.len);
                // SAFETY: see `sink` above.
                let sent = unsafe { (*sink).file_body(file) };
                if sent_and_busy(s, sent) {
                    return;
                }
            }
            Event::LogVars(vars) => {
                // SAFETY: see `sink` above.
                unsafe { (*sink).log_vars(vars) };
            }
            Event::Done(outcome, app_time, queue_time) => {
                // SAFETY: the live request.
                if let Some(vars) = unsafe { crate::nginx::vars::get_or_make(s.r) } {
                    vars.app_time = Some(app_time);
                    vars.queue_time = Some(queue_time);
                }
                crate::nginx::recycle::request_done(Some(app_time));
                // SAFETY: the final step; `ls` must not be used after it.
                unsafe { complete(ls, outcome) };
                return;
            }
        }
    }
}

/// After a piece of body went to nginx: a failure aborts; output that waits for the client
/// makes the request wait for write events (true: stop pumping).
fn sent_and_busy(s: &mut LoopState, sent: Result<(), SinkError>) -> bool {
    if sent.is_err() {
        abort(s);
        return false;
    }
    progress(s);
    // SAFETY: the live request of a live loop state.
    if !unsafe { output_busy(s.r) } {
        return false;
    }
    // Now the client is the slow side: send_timeout watches it, and the application's
    // timeout waits until output flows again.
    s.waiting_write = true;
    if s.timer.timer_set() != 0 {
        // SAFETY: the loop state's own timer, in the event tree.
        unsafe { ngx_del_timer(&mut s.timer) };
    }
    // SAFETY: as above.
    unsafe { arm_write(s) };
    true
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

/// Waits for the connection to drain (`nginx/writer.rs`).
unsafe fn arm_write(s: &mut LoopState) {
    // SAFETY: the live request of a live loop state.
    if !unsafe { writer::wait(s.r, on_write) } {
        abort(s);
    }
}

fn abort(s: &mut LoopState) {
    s.aborted = true;
    if let Work::Thread { ex, .. } = &s.work {
        ex.cancel();
    }
}

/// `r->write_event_handler` while output waits: once nginx holds nothing more, move the
/// response on.
unsafe extern "C" fn on_write(r: *mut ngx_http_request_t) {
    // SAFETY: nginx calls this with the live request whose ctx we set.
    unsafe {
        let ls = get_ctx(r);
        if ls.is_null() {
            return;
        }
        let s = &mut *ls;
        match writer::on_event(r) {
            Drain::Waiting => return,
            Drain::Drained => {
                (*r).write_event_handler = Some(ngx_http_request_empty_handler);
                progress(s);
            }
            Drain::TimedOut => {
                request_log(r)
                    .write_direct(NGX_LOG_INFO, "client timed out while sending wsgi response");
                abort(s);
            }
            Drain::Failed => abort(s),
        }
        s.waiting_write = false;
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
        } else if let Some(status) = s.answered.or(match outcome {
            Outcome::Answered(status) => Some(status),
            _ => None,
        }) {
            if status == output::REDIRECT {
                output::redirect(r)
            } else {
                status as ngx_int_t
            }
        } else {
            match outcome {
                // What nginx could not send yet, its own writer sends after finalize.
                Outcome::Complete { short } => output::finish(r, short),
                Outcome::FailedEarly if !s.headers_sent => {
                    NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
                }
                Outcome::Refused if !s.headers_sent => NGX_HTTP_BAD_GATEWAY as ngx_int_t,
                _ => NGX_ERROR as ngx_int_t,
            }
        };
        let free_now = s.cleaned;
        crate::debug!((*c).log, "wsgi finalize: {outcome:?}, rc {rc}");
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
            STATES.with(|m| m.borrow_mut().remove(&ex.id));
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
        let Work::Thread { ex, .. } = &s.work else {
            return;
        };
        let ex = ex.clone();
        let secs = s.timeout as f64 / 1000.0;
        let message = format!(
            "wsgi app \"{}\" timed out after {secs}s while handling \"{}\"",
            s.app_name, ex.what
        );
        let answer = if s.headers_sent {
            "response cut"
        } else {
            "answered with 504"
        };
        request_log(r).write_direct(NGX_LOG_ERR, &format!("{message}, {answer}"));
        ex.cancel();
        if let Some(pool) = crate::python::pool::get() {
            pool.interrupt(ex.clone(), message);
        }
        crate::nginx::recycle::request_done(None);
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
            Work::Thread { ex, .. } => {
                ex.cancel();
                // Events may wait while output waited for the client (even the thread's
                // Done): pump them on the next loop turn, not here inside nginx's
                // termination, so the request is finalized (nginx keeps it for us through
                // `blocked`).
                wake::wake(ex.clone());
            }
            Work::Inline { running, .. } => {
                if let Some(run) = running.take() {
                    Python::attach(|py| run.abandon(py));
                }
                crate::nginx::recycle::request_done(None);
                set_ctx(s.r, ptr::null_mut());
                drop(Box::from_raw(ls));
            }
        }
    }
}
